"""Which device a process runs on, how torch.distributed is set up, and which precision a device wants.

The one owner of device choice for training, fine-tuning, extraction and inference:

* :func:`select_device` - ``--cuda`` + the local rank (torchrun's LOCAL_RANK, srun's SLURM_LOCALID) ->
  ``torch.device('cuda', i)`` or CPU; ``cuda:0`` when CUDA_VISIBLE_DEVICES gives the process one GPU of its
  own; one-line errors for ranks beyond the GPUs this process can see (``CUDA_VISIBLE_DEVICES``).
* :func:`init_distributed` / :func:`teardown` / :func:`exit_process` - rank and world size from the launcher
  (torchrun, Kubernetes operators that set RANK/WORLD_SIZE, or ``srun`` tasks), ``set_device`` before the
  process group (nccl on CUDA, gloo on CPU; a 30-min timeout), its destruction, and a clean exit of a
  process that had one.
* :func:`map_location` - where ``torch.load`` puts tensors for a device.
* :func:`native_bf16`, :func:`resolve_precision` - the precision rule: 'auto' is bf16 where the
  hardware computes bf16 natively (CUDA sm80+, CPUs with AMX-BF16/AVX512-BF16); on sm70/sm75 GPUs
  (V100, T4) fp16 for inference and fp32 for training (bf16 is emulated there and fp16 training needs
  a loss scaler the official recipe never tuned); training on CPUs stays fp32; fp32 everywhere else.
* :func:`configure_backends` - cuDNN autotuning and deterministic algorithms for training.

Nothing here needs a GPU to be tested: every CUDA call goes through ``torch.cuda`` functions that
tests replace (``is_available``, ``device_count``, ``set_device``, ``get_device_capability``).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import FrozenSet, List, Optional, Tuple, Union

import torch
import torch.distributed as dist

from panns.errors import PannsError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DeviceLike = Union[str, torch.device]


# ------------------------------------------------------------------------------------------ ranks
@dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise PannsError(f"environment variable {name}={raw!r} is not an integer") from None


def launcher() -> str:
    """Who started this process: 'torchrun' (or any launcher that sets RANK/WORLD_SIZE: Kubeflow's
    PyTorchJob, torch.multiprocessing scripts), 'slurm' (a task of ``srun`` without torchrun) or 'single'.

    SLURM is recognised by ``SLURM_STEP_NUM_TASKS``, which only ``srun`` sets: an ``sbatch`` script also
    carries SLURM_PROCID/SLURM_NTASKS, and a plain ``python`` in it must stay one process."""
    if os.environ.get("WORLD_SIZE", "").strip() or os.environ.get("RANK", "").strip():
        return "torchrun"
    if os.environ.get("SLURM_STEP_NUM_TASKS", "").strip():
        return "slurm"
    return "single"


def dist_env() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process: from torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else from
    an ``srun`` task's SLURM_PROCID/SLURM_STEP_NUM_TASKS/SLURM_LOCALID; (0, 1, 0) for a lone process."""
    if launcher() == "slurm":
        world, rank, local_rank = (_env_int("SLURM_STEP_NUM_TASKS", 1), _env_int("SLURM_PROCID", 0),
                                   _env_int("SLURM_LOCALID", 0))
        names = "SLURM_PROCID / SLURM_STEP_NUM_TASKS"
    else:
        world, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
        names = "RANK / WORLD_SIZE"
    if world < 1 or not 0 <= rank < world:
        raise PannsError(f"{names} = {rank} / {world} from the environment are inconsistent")
    if local_rank < 0:
        raise PannsError(f"local rank {local_rank} (LOCAL_RANK / SLURM_LOCALID) must be >= 0")
    return rank, world, local_rank


def _visible_devices() -> Optional[List[str]]:
    """The entries of CUDA_VISIBLE_DEVICES, or None when it is unset."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [d for d in raw.split(",") if d.strip()]


def select_device(cuda: bool, local_rank: Optional[int] = None) -> torch.device:
    """The device of this process: with ``cuda`` and a GPU visible, ``cuda:<local rank>`` - or ``cuda:0``
    whatever the local rank when CUDA_VISIBLE_DEVICES names exactly one GPU (SLURM ``--gpus-per-task=1``, a
    scheduler that binds one GPU per process); else CPU. ``local_rank`` given explicitly is used as is.

    Always an indexed CUDA device (``torch.cuda.set_device`` refuses a bare 'cuda'). A local rank with
    no GPU of its own is a one-line error naming ``CUDA_VISIBLE_DEVICES``, not a CUDA traceback.
    """
    if not cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        logger.warning("CUDA asked for (--cuda, device='cuda') but CUDA is not available; running on the CPU")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    visible = _visible_devices()
    if local_rank is None:
        if count == 1 and visible is not None and len(visible) == 1:
            # The launcher gave this process its own GPU; its local rank numbers processes, not GPUs.
            return torch.device("cuda", 0)
        local_rank = dist_env()[2]
    if local_rank >= count:
        raw = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise PannsError(f"local rank {local_rank} needs GPU {local_rank} but this process sees {count} GPU(s)"
                         + (f" (CUDA_VISIBLE_DEVICES={raw})" if raw is not None else "")
                         + "; start at most one process per visible GPU (torchrun --nproc_per_node), or give each "
                           "process one GPU of its own (srun --gpus-per-task=1)")
    return torch.device("cuda", local_rank)


DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def init_distributed(cuda: bool, timeout: Optional[datetime.timedelta] = None) -> DistInfo:
    """Rank/world from the launcher's environment (:func:`dist_env`), this process's device (``set_device``
    on CUDA) and, with more than one process, the process group: nccl on CUDA, gloo on CPU.

    ``timeout`` (default :data:`DEFAULT_TIMEOUT`, 30 min): how long a collective waits before the run fails.
    Long enough for what one rank does while the others wait (evaluation is sharded; rank 0 writes
    checkpoints in seconds), short enough that a stuck rank does not idle every GPU for hours: PyTorch's
    watchdog then ends the process with an error naming its rank and the collective it waited in.
    ``srun`` tasks need MASTER_ADDR and MASTER_PORT (one line of the README's recipe)."""
    rank, world, local_rank = dist_env()
    device = select_device(cuda)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v, "").strip()]
        if missing:
            raise PannsError(f"{launcher()} started {world} processes but {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not set; export MASTER_ADDR=<first node's "
                             "host name> MASTER_PORT=<free port> on every node (see README 'Several nodes')")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=timeout or DEFAULT_TIMEOUT)
    return DistInfo(rank, world, local_rank, device)


def hostname() -> str:
    """This node's name, for messages that say where something went wrong."""
    return socket.gethostname()


def teardown(info: Optional[DistInfo] = None) -> None:
    """Destroy the process group made by :func:`init_distributed` (a no-op without one)."""
    global _GROUP_USED
    if (info is None or info.distributed) and dist.is_available() and dist.is_initialized():
        _GROUP_USED = True
        dist.destroy_process_group()


_GROUP_USED = False


def exit_process(code: int = 0) -> None:
    """End a command line: after a process group, flush the logs and output and leave with
    ``os._exit``; otherwise return (the interpreter exits as usual).

    Why: DistributedDataParallel's C++ reducer keeps the process group alive after
    ``destroy_process_group`` (its gloo/NCCL threads keep running), and the interpreter's
    shutdown then races those threads: now and then a rank aborted with "terminate called without
    an active exception" after a run that had finished and saved everything, and torchrun
    reported the run as failed. Everything a run writes is closed and renamed into place before
    this point, so nothing is left for the interpreter's shutdown to do."""
    if not _GROUP_USED:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def map_location(device: DeviceLike) -> torch.device:
    """``torch.load(map_location=...)`` for weights used on ``device``: straight onto that GPU, or CPU.
    RNG states and other small state must be loaded with ``'cpu'`` whatever the device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# -------------------------------------------------------------------------------------- precision
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> FrozenSet[str]:
    """The CPU's instruction-set flags (``/proc/cpuinfo``; empty where that file is missing)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_capability() -> str:
    """What torch's CPU kernels were dispatched for, e.g. 'AVX2', 'AVX512' ('' on a torch without the query)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch without the query
        return ""


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    if cpu_flags(cpuinfo) & {"amx_bf16", "avx512_bf16"}:
        return True
    cap = cpu_capability()   # e.g. 'AVX2', 'AVX512', 'AVX512_BF16', 'AMX'
    return "AMX" in cap or "BF16" in cap


def capability(device: DeviceLike) -> Optional[Tuple[int, int]]:
    """CUDA compute capability (major, minor) of ``device``; None for CPUs or when CUDA is absent."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def native_bf16(device: DeviceLike) -> bool:
    """bf16 computed by the hardware (not emulated): CUDA sm80+ (A100, H100, RTX 30xx/40xx), or a CPU with
    AMX/AVX512-BF16. ``torch.cuda.is_bf16_supported()`` also counts emulation on V100/T4, hence this rule."""
    device = torch.device(device)
    if device.type == "cuda":
        cap = capability(device)
        return cap is not None and cap >= (8, 0)
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def resolve_precision(precision: str, device: DeviceLike, training: bool = False) -> str:
    """'fp32' | 'bf16' | 'fp16' | 'auto' -> the precision to use on ``device``.

    'auto': bf16 on GPUs with :func:`native_bf16`; on CUDA sm70-sm75 fp16 for inference and fp32 for
    training; on CPUs bf16 for inference where :func:`native_bf16` and fp32 for training (the official
    numerics; bf16 training on CPUs was never measured to pay off); fp32 otherwise. Explicit choices are
    kept, with a warning where they will be slow.
    """
    if precision not in PRECISIONS:
        raise PannsError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    dev = torch.device(device).type
    if precision == "auto":
        if dev == "cpu" and training:
            return "fp32"
        if native_bf16(device):
            return "bf16"
        cap = capability(device) if dev == "cuda" else None
        if cap is not None and cap >= (7, 0) and not training:
            return "fp16"
        return "fp32"
    if precision == "fp16" and dev == "cpu":
        logger.warning("fp16 on CPU is emulated and slow; bf16 or fp32 are better choices")
    if precision == "bf16" and not native_bf16(device):
        where = "this CPU has no AMX/AVX512-BF16" if dev == "cpu" else f"this GPU (sm{_sm(device)}) has no native bf16"
        logger.warning("%s: bf16 is emulated and will be slower than fp32", where)
    return precision


def _sm(device: DeviceLike) -> str:
    cap = capability(device)
    return f"{cap[0]}{cap[1]}" if cap else "?"


# ---------------------------------------------------------------------------------------- backends
def configure_backends(device: DeviceLike, deterministic: bool = False) -> None:
    """Training-wide backend switches. Fixed-shape training steps let cuDNN pick its fastest
    convolution once (``benchmark``); ``deterministic`` instead asks for reproducible kernels (bit-exact
    resume on CUDA, slower) - cuDNN's default backward convolutions are not deterministic."""
    if torch.device(device).type != "cuda":
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before the first matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def describe(device: DeviceLike) -> str:
    """One line about ``device`` for logs: name, capability and native bf16."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            name = torch.cuda.get_device_name(device)
        except Exception:  # faked or unusual devices: the name is cosmetic
            name = "GPU"
        return f"{name} ({device}, sm{_sm(device)}, native bf16: {native_bf16(device)})"
    return f"CPU ({cpu_capability()}, native bf16: {cpu_has_fast_bf16()})" \
        if device.type == "cpu" else str(device)
