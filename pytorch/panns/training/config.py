"""Building blocks of training (``main.py train`` and fine-tuning, through ``training.core``).

Everything the loop needs but is not the loop: the typed :class:`TrainConfig` of ``main.py train``
(defaults = the official recipe) with the official workspace layout and its value checks, the
torch.distributed helpers (barrier, gather, buffer broadcast, weight digests), the single
:func:`train_step`, the RNG states a checkpoint holds, and the run record written next to the logs.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import h5py
import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from panns import amp, argtypes
from panns import data_generator as dg
from panns import devices
from panns.devices import DistInfo
from panns.eval_cache import EVAL_CACHE_MODES
from panns.state_dicts import state_digest  # noqa: F401  (re-exported: compared across ranks here)
from panns.errors import PannsError
from panns.frontend import FRONT_END_32K, FRONTEND_KEYS, FrontEnd
from panns.training import layout
from panns.utilities import atomic_write_text, create_folder

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # <repo>/pytorch/panns/
DATA_TYPES = ("balanced_train", "full_train")
BALANCED = ("none", "balanced", "alternate")
AUGMENTATIONS = ("none", "mixup")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
COMPILE_MODES = ("auto", "on", "off")
GRAD_COMMS = ("fp32", "bf16", "fp16")
MAX_SEED = 2**32 - 1   # numpy's RandomState (sampler, Mixup) takes 0 .. 2**32 - 1


# ------------------------------------------------------------------------------------ flag types
seed_arg = argtypes.int_in(0, MAX_SEED)   # -1 failed only at the first evaluation


# ----------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Resolved training configuration; defaults are the official ``scripts/4_train.sh`` recipe."""

    workspace: str
    model_type: str = "Cnn14"
    data_type: str = "full_train"
    sample_rate: int = FRONT_END_32K.sample_rate   # the FrontEnd fields (flat: CLI flags, saved config)
    window_size: int = FRONT_END_32K.window_size
    hop_size: int = FRONT_END_32K.hop_size
    mel_bins: int = FRONT_END_32K.mel_bins
    fmin: int = FRONT_END_32K.fmin
    fmax: int = FRONT_END_32K.fmax
    loss_type: str = "clip_bce"
    balanced: str = "balanced"
    augmentation: str = "mixup"
    batch_size: int = 32            # mixed examples per optimizer step (the loader yields 2x with mixup)
    learning_rate: float = 1e-3
    resume_iteration: int = 0
    early_stop: int = 1_000_000     # number of optimizer steps (official did one more)
    cuda: bool = False
    # Additions (defaults keep the official behaviour).
    eval_every: int = 2000
    save_every: int = 100_000
    num_workers: int = 8
    seed: int = 1234                # official sampler and Mixup seed
    precision: str = "fp32"
    compile: str = "auto"           # auto: torch.compile on CUDA where Triton is installed; on | off
    eval_batch_size: int = 0        # 0: 4x the per-process batch on CUDA, the batch size elsewhere
    eval_cache: str = "auto"        # keep the evaluation sets in host memory after their first read (auto: on CUDA)
    black_list_csv: Optional[str] = None
    class_labels_csv: Optional[str] = None
    log_every: int = 10
    mixup_alpha: float = 1.0
    grad_clip: float = 0.0          # 0 = off (official: no clipping)
    deterministic: bool = False     # deterministic kernels: bit-exact resume on CUDA (slower)
    per_rank_batch_size: int = 0    # 0: batch_size is the global batch, split over the processes
    sync_bn: Optional[bool] = None  # DDP on CUDA: BatchNorm over all processes; None: when per-rank batch < 16
    dist_timeout: float = 30.0      # minutes a collective waits for a stalled rank before the run fails
    grad_comm: str = "fp32"         # DDP gradient all-reduce in fp32 (exact), or compressed to bf16/fp16 (opt-in)
    overwrite: bool = False         # replace an earlier run in the run folder (its checkpoints and statistics)
    filename: str = "main"          # official path level (script name)
    world_size: int = 1             # processes of the run (set from the launcher by main.train, not a flag)

    # One batch semantic: ``per_rank_batch`` examples per process per step, ``global_batch`` per step in all.
    @property
    def per_rank_batch(self) -> int:
        if self.per_rank_batch_size > 0:
            return self.per_rank_batch_size
        return self.batch_size // self.world_size

    @property
    def global_batch(self) -> int:
        return self.per_rank_batch * self.world_size

    # Official workspace layout: results of earlier official runs are found where users expect them.
    @property
    def feature_dir(self) -> str:
        return (f"sample_rate={self.sample_rate},window_size={self.window_size},hop_size={self.hop_size},"
                f"mel_bins={self.mel_bins},fmin={self.fmin},fmax={self.fmax}")

    @property
    def run_subpath(self) -> str:
        return os.path.join(self.filename, self.feature_dir, f"data_type={self.data_type}", self.model_type,
                            f"loss_type={self.loss_type}", f"balanced={self.balanced}",
                            f"augmentation={self.augmentation}", self.batch_folder)

    @property
    def batch_folder(self) -> str:
        """The official ``batch_size=<B>`` level, with B the global batch; runs of several processes also name
        their count (``batch_size=32,world_size=8``): BatchNorm, the data order and Mixup's draws depend on
        it, so they neither overwrite nor resume one another's checkpoints. One process: the official name."""
        name = f"batch_size={self.global_batch}"
        return name if self.world_size == 1 else f"{name},world_size={self.world_size}"

    @property
    def checkpoints_dir(self) -> str:
        return layout.checkpoints_dir(self.workspace, self.run_subpath)

    @property
    def statistics_path(self) -> str:
        return layout.statistics_path(self.workspace, self.run_subpath)

    @property
    def logs_dir(self) -> str:
        return layout.logs_dir(self.workspace, self.run_subpath)

    def indexes_path(self, name: str) -> str:
        return os.path.join(self.workspace, "hdf5s", "indexes", f"{name}.h5")

    def checkpoint_path(self, iteration: int) -> str:
        return os.path.join(self.checkpoints_dir, f"{iteration}_iterations.pth")

    @property
    def frontend(self) -> Dict[str, int]:
        return {k: getattr(self, k) for k in FRONTEND_KEYS}

    @property
    def front_end(self) -> FrontEnd:
        return FrontEnd.from_dict(self.frontend)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Value checks (argparse covers the CLI; this covers programmatic use)."""
        for name, value, choices in (("data_type", self.data_type, DATA_TYPES), ("balanced", self.balanced, BALANCED),
                                     ("augmentation", self.augmentation, AUGMENTATIONS),
                                     ("precision", self.precision, PRECISIONS),
                                     ("compile", self.compile, COMPILE_MODES),
                                     ("eval_cache", self.eval_cache, EVAL_CACHE_MODES),
                                     ("grad_comm", self.grad_comm, GRAD_COMMS)):
            if value not in choices:
                raise PannsError(f"--{name} {value!r} is not one of {', '.join(choices)}")
        if self.eval_batch_size < 0:
            raise PannsError(f"--eval_batch_size must be >= 0 (got {self.eval_batch_size})")
        if self.per_rank_batch_size < 0:
            raise PannsError(f"--per_rank_batch_size must be >= 0 (got {self.per_rank_batch_size})")
        if self.world_size < 1:
            raise PannsError(f"world_size must be >= 1 (got {self.world_size})")
        if self.per_rank_batch_size == 0 and self.batch_size % self.world_size:
            raise PannsError(f"--batch_size {self.batch_size} (the global batch) is not divisible by the "
                             f"{self.world_size} processes; pass a divisible --batch_size, or "
                             f"--per_rank_batch_size {max(1, self.batch_size // self.world_size)}")
        if not (math.isfinite(self.dist_timeout) and self.dist_timeout > 0):
            raise PannsError(f"--dist_timeout must be a finite number of minutes > 0 (got {self.dist_timeout})")
        for name in ("batch_size", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise PannsError(f"--{name} must be >= 1 (got {getattr(self, name)})")
        if self.log_every < 0:   # 0: no loss lines (distributed ranks then agree on a stop at evaluations)
            raise PannsError(f"--log_every must be >= 0 (got {self.log_every}; 0: no loss lines)")
        if self.early_stop < 0 or self.resume_iteration < 0:
            raise PannsError("--early_stop and --resume_iteration must be >= 0")
        if self.resume_iteration > 0 and self.resume_iteration >= self.early_stop:
            # equal: the run would load everything, take no step, evaluate and save nothing, and say it finished
            where = "is past" if self.resume_iteration > self.early_stop else "is already"
            raise PannsError(f"--resume_iteration {self.resume_iteration} {where} --early_stop {self.early_stop}: "
                             "nothing left to train; raise --early_stop to train on")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise PannsError(f"--learning_rate must be a finite number > 0 (got {self.learning_rate})")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise PannsError(f"--grad_clip must be a finite number >= 0 (0: off; got {self.grad_clip})")
        if self.num_workers < 0:
            raise PannsError(f"--num_workers must be >= 0 (got {self.num_workers})")
        # Every rank seeds numpy with seed + rank.
        if not 0 <= self.seed <= MAX_SEED - (self.world_size - 1):
            raise PannsError(f"--seed must be from 0 to {MAX_SEED - (self.world_size - 1)} (got {self.seed})")
        self.front_end.check()


# ------------------------------------------------------------------------------------ distributed
def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_object(info: DistInfo, obj: Any) -> List[Any]:
    if not info.distributed:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def from_main(info: DistInfo, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` run on rank 0 alone, its result sent to every rank (pickled, through the
    process group): what only rank 0's disk holds - the checkpoint to resume from, the saved iterations -
    reaches nodes that share no filesystem with it. An error on rank 0 is raised there as it is and on every
    other rank as one line (nobody waits for a result that never comes)."""
    if not info.distributed:
        return fn(*args, **kwargs)
    box: List[Any] = [None]
    error: Optional[BaseException] = None
    if info.is_main:
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except Exception as e:  # sent on, then raised here as it is
            error, box[0] = e, ("error", f"{type(e).__name__}: {e}" if not isinstance(e, PannsError) else str(e))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise PannsError(f"rank 0 failed: {value}")
    return value


def check_everywhere(info: DistInfo, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on every rank (each node checks its own copy of the inputs); an error on any
    rank fails every rank with one line naming the node and rank that saw it, e.g. ``on node gpu07 (rank 9):
    index file .../eval.h5 not found ...``. One process: ``fn``'s errors as they are. Returns this rank's
    result."""
    result, mine = None, None
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # any failure: the other ranks must hear of it, not wait for this one
        if not info.distributed:
            raise
        mine = str(e) if isinstance(e, PannsError) else f"{type(e).__name__}: {' '.join(str(e).split())}"
    if not info.distributed:
        return result
    errors = all_gather_object(info, (devices.hostname(), info.rank, mine))
    failed = [(host, rank, msg) for host, rank, msg in errors if msg is not None]
    if failed:
        host, rank, msg = failed[0]
        more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
        raise PannsError(f"on node {host} (rank {rank}){more}: {msg}")
    return result


def cpu_share(info: DistInfo) -> int:
    """CPUs this rank may give its loader workers: its own CPU set (``sched_getaffinity``: SLURM
    ``--cpus-per-task`` binding, a container's cpuset, taskset) divided among the ranks of its node that
    share that set. Ranks with CPU sets of their own keep them whole; ranks that all see the node's CPUs
    (torchrun) split them. Found by comparing sets across ranks, not by guessing from LOCAL_WORLD_SIZE."""
    cpus = dg.usable_cpu_set()
    if not info.distributed:
        return max(1, len(cpus))
    everyone = all_gather_object(info, (devices.hostname(), sorted(cpus)))
    here = devices.hostname()
    sharing = sum(1 for host, theirs in everyone if host == here and not cpus.isdisjoint(theirs))
    return max(1, len(cpus) // max(sharing, 1))


def ranks_on_this_node(info: DistInfo) -> int:
    """How many ranks of the run share this node (host name): they share its /dev/shm."""
    if not info.distributed:
        return 1
    here = devices.hostname()
    return sum(1 for host in all_gather_object(info, here) if host == here)


def check_shared_memory(need_per_rank: int, ranks: int, available: Optional[int]) -> Optional[str]:
    """A warning line when the node's ``ranks`` loaders need (with a quarter of headroom) more /dev/shm than
    ``available``, else None."""
    need = need_per_rank * ranks
    size = -(-int(need * 1.25) // 2**30)  # a quarter of headroom (NCCL's own segments, late releases), whole GiB
    if available is None or need * 1.25 <= available:
        return None
    return (f"/dev/shm has {available / 2**30:.1f} GiB free but the loader workers of {ranks} process(es) on this "
            f"node need about {need / 2**30:.1f} GiB ({need_per_rank / 2**30:.2f} GiB each): workers will die with "
            f"a bus error. Run the container with --shm-size={size}g (or --ipc=host), or lower --num_workers")


# BatchNorm statistics over fewer examples than this per process are noisy enough to change training
# (GroupNorm paper, Wu & He 2018: ImageNet error grows below 16 per GPU and sharply at 2-8); the
# official recipe normalises over its whole batch of 32.
SYNC_BN_BELOW = 16


def resolve_sync_bn(cfg: TrainConfig, info: DistInfo) -> bool:
    """Whether DDP converts BatchNorm to SyncBatchNorm. ``--sync_bn``/``--no_sync_bn`` decide; by default
    (None) it is on for runs of several CUDA processes with fewer than SYNC_BN_BELOW examples per process, so
    that 8 GPUs x 4 normalise over 32 as the official single-GPU run does. SyncBatchNorm has no CPU
    implementation: asked for there it is an error (the batch log line says what BatchNorm normalises over).
    One process: off (plain BatchNorm is the official recipe)."""
    if not info.distributed:
        return False
    cuda = info.device.type == "cuda"
    if cfg.sync_bn and not cuda:
        raise PannsError("--sync_bn needs CUDA (SyncBatchNorm has no CPU/gloo implementation)")
    if cfg.sync_bn is not None:
        return bool(cfg.sync_bn)
    return cuda and cfg.per_rank_batch < SYNC_BN_BELOW


def batch_line(cfg: TrainConfig, info: DistInfo, sync_bn: bool) -> str:
    """One log line with the batch semantic of the run: global and per-process batch, the learning-rate rule
    (none: the rate is used as given) and what BatchNorm normalises over."""
    procs = f"{cfg.per_rank_batch} per process x {info.world_size} process{'es' if info.world_size > 1 else ''}"
    clips = " (mixup: twice as many clips read)" if cfg.augmentation == "mixup" else ""
    bn = cfg.global_batch if sync_bn else cfg.per_rank_batch
    why = ""
    if info.distributed and not sync_bn and cfg.per_rank_batch < SYNC_BN_BELOW:
        why = " - few for BatchNorm: " + ("add --sync_bn" if info.device.type == "cuda" else "SyncBatchNorm needs CUDA")
    rule = "as given (no scaling rule applied" + \
        ("; the official rate is for a global batch of 32 - scale it yourself, e.g. linearly)"
         if cfg.global_batch != 32 else ")")
    return (f"Batch: global {cfg.global_batch} = {procs}{clips}; learning rate {cfg.learning_rate:g} {rule}; "
            f"BatchNorm over {bn} examples{' (SyncBatchNorm)' if sync_bn else ''}{why}; run folder {cfg.batch_folder}")


def check_grad_comm(kind: str, info: DistInfo) -> None:
    """Refuse at start what :func:`register_grad_comm` cannot do: PyTorch's bf16 hook needs NCCL."""
    if kind == "bf16" and info.distributed and info.device.type != "cuda":
        raise PannsError("--grad_comm bf16 needs CUDA (PyTorch's bf16 hook runs on NCCL); use fp16 or fp32 on the CPU")


def register_grad_comm(model: torch.nn.Module, kind: str) -> None:
    """Opt-in compression of DDP's gradient all-reduce (``--grad_comm``), for the DDP module ``model``
    (anything else: nothing to do). 'fp32' (default) all-reduces the gradients as they are: exact, the recipe.
    'bf16'/'fp16' cast each bucket to 16 bits for the all-reduce and back (PyTorch's ddp_comm_hooks): half the
    bytes on the wire, at the cost of rounding the averaged gradient. Why it can pay: Cnn14's 80 M parameters
    are 320 MB of fp32 gradients per step; between nodes at 100 Gb/s a ring all-reduce of them takes ~50 ms,
    more than the compute of a few examples per GPU - halving it matters there; over NVLink inside a node it
    does not. Not measured here (no GPU): an opt-in, not a default. bf16's hook needs NCCL (CUDA)."""
    if kind == "fp32" or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return
    hook = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}[kind]
    model.register_comm_hook(state=None, hook=hook)


def mean_over_ranks(info: DistInfo, value: float) -> float:
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def broadcast_buffers(info: DistInfo, model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BN running stats differ slightly after DDP's last forward)."""
    if info.distributed:
        for b in model.buffers():
            dist.broadcast(b.data, src=0)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) or isinstance(model, torch.nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ------------------------------------------------------------------------------------- train step
def unused_parameters(model: torch.nn.Module, samples: int) -> List[str]:
    """Names of trainable parameters outside the graph of 'clipwise_output' (what the loss uses), found with
    one forward/backward of a (1, samples) zero waveform in eval mode: BatchNorm statistics, dropout and
    SpecAugment draw nothing, so training state is unchanged."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        out = model(torch.zeros(1, samples, device=device))
        out["clipwise_output"].float().sum().backward()
        return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def mix_targets(target: torch.Tensor, mixup_lambda: torch.Tensor) -> torch.Tensor:
    """(2B, C) targets of adjacent pairs mixed with (2B,) lambdas -> (B, C) (official do_mixup)."""
    return target[0::2] * mixup_lambda[0::2, None] + target[1::2] * mixup_lambda[1::2, None]


def train_step(model: torch.nn.Module, batch: Dict[str, Any], optimizer: torch.optim.Optimizer,
               loss_func, *, precision: str = "fp32", mixup_lambda: Optional[torch.Tensor] = None,
               scaler: Optional[torch.amp.GradScaler] = None, grad_clip: float = 0.0) -> Dict[str, torch.Tensor]:
    """One optimizer step: forward (CNN body under autocast), fp32 loss, backward, (unscale, clip,) step.

    batch: 'waveform' (B', T) float32 and 'target' (B', C) on the model's device; with mixup
    B' = 2B and ``mixup_lambda`` (2B,) mixes adjacent pairs inside the model (after bn0/SpecAugment)
    and here for the targets. Returns detached 0-dim tensors ('loss', and 'grad_norm' when clipping)
    so that the caller decides when to synchronise.
    """
    waveform, target = batch["waveform"], batch["target"]
    model.train()
    with amp.autocast(precision, waveform.device):
        output = model(waveform, mixup_lambda)
    if mixup_lambda is not None:
        target = mix_targets(target, mixup_lambda)
    loss = loss_func(output, {"target": target})
    optimizer.zero_grad(set_to_none=True)
    stats = {"loss": loss.detach()}
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip).detach()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip > 0:
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip).detach()
        optimizer.step()
    return stats


# -------------------------------------------------------------------------------- resumable state
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(legacy=False),
             "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(_as_tuple(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------- records
def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> Dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "sklearn": importlib.metadata.version("scikit-learn")}


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically (a full disk is a one-line DiskFullError)."""
    create_folder(os.path.dirname(os.path.abspath(path)))
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def write_run_record(cfg: TrainConfig, model_config: Dict[str, Any], parameters: int, info: DistInfo,
                     precision: str) -> str:
    """``<logs dir>/config.json``: resolved config, model config, parameter count, versions, git commit. A resumed
    run keeps the records of the runs before it (``earlier_runs``, oldest first): its own settings may differ
    (--learning_rate, --precision, ...), and the first run's command line is the one that made the folder."""
    mc = {k: v for k, v in model_config.items() if k not in ("labels", "ids")}
    record = {"train": cfg.to_dict(), "model": mc, "parameters": parameters, "versions": versions(),
              "git_commit": git_commit(), "world_size": info.world_size, "device": str(info.device),
              "precision": precision, "argv": sys.argv,
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
    path = layout.run_record_path(cfg.workspace, cfg.run_subpath)
    if cfg.resume_iteration > 0 and os.path.isfile(path):
        try:
            with open(path) as f:
                before = json.load(f)
        except (OSError, ValueError):   # unreadable: the history is lost, not the run
            before = None
        if isinstance(before, dict):
            record["earlier_runs"] = list(before.pop("earlier_runs", None) or []) + [before]
    write_json(path, record)
    return path
