"""Building blocks of training (``main.py train`` and fine-tuning, through ``training.core``).

Everything the loop needs but is not the loop: the typed :class:`TrainConfig` of ``main.py train``
(defaults = the official recipe) with the official workspace layout and its value checks, the
torch.distributed helpers (barrier, gather, buffer broadcast, weight digests), the single
:func:`train_step`, the RNG states a checkpoint holds, and the run record written next to the logs.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import platform
import random
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import h5py
import numpy as np
import sklearn
import torch
import torch.distributed as dist

from panns import amp
from panns.devices import DistInfo
from panns.errors import PannsError
from panns.frontend import FRONT_END_32K, FRONTEND_KEYS, FrontEnd
from panns.utilities import atomic_write_text, create_folder

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # <repo>/pytorch/panns/
DATA_TYPES = ("balanced_train", "full_train")
BALANCED = ("none", "balanced", "alternate")
AUGMENTATIONS = ("none", "mixup")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
COMPILE_MODES = ("auto", "on", "off")


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
    black_list_csv: Optional[str] = None
    class_labels_csv: Optional[str] = None
    log_every: int = 10
    mixup_alpha: float = 1.0
    grad_clip: float = 0.0          # 0 = off (official: no clipping)
    deterministic: bool = False     # deterministic kernels: bit-exact resume on CUDA (slower)
    per_rank_batch_size: int = 0    # 0: batch_size is the global batch, split over the processes
    sync_bn: bool = False           # DDP: BatchNorm statistics over all processes (CUDA only)
    filename: str = "main"          # official path level (script name)

    # Official workspace layout: results of earlier official runs are found where users expect them.
    @property
    def feature_dir(self) -> str:
        return (f"sample_rate={self.sample_rate},window_size={self.window_size},hop_size={self.hop_size},"
                f"mel_bins={self.mel_bins},fmin={self.fmin},fmax={self.fmax}")

    @property
    def run_subpath(self) -> str:
        return os.path.join(self.filename, self.feature_dir, f"data_type={self.data_type}", self.model_type,
                            f"loss_type={self.loss_type}", f"balanced={self.balanced}",
                            f"augmentation={self.augmentation}", f"batch_size={self.batch_size}")

    @property
    def checkpoints_dir(self) -> str:
        return os.path.join(self.workspace, "checkpoints", self.run_subpath)

    @property
    def statistics_path(self) -> str:
        return os.path.join(self.workspace, "statistics", self.run_subpath, "statistics.pkl")

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.workspace, "logs", self.run_subpath)

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
                                     ("compile", self.compile, COMPILE_MODES)):
            if value not in choices:
                raise PannsError(f"--{name} {value!r} is not one of {', '.join(choices)}")
        if self.eval_batch_size < 0:
            raise PannsError(f"--eval_batch_size must be >= 0 (got {self.eval_batch_size})")
        if self.per_rank_batch_size < 0:
            raise PannsError(f"--per_rank_batch_size must be >= 0 (got {self.per_rank_batch_size})")
        for name in ("batch_size", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise PannsError(f"--{name} must be >= 1 (got {getattr(self, name)})")
        if self.early_stop < 0 or self.resume_iteration < 0:
            raise PannsError("--early_stop and --resume_iteration must be >= 0")
        if self.resume_iteration > self.early_stop:
            raise PannsError(f"--resume_iteration {self.resume_iteration} is past --early_stop {self.early_stop}")
        if self.learning_rate <= 0:
            raise PannsError(f"--learning_rate must be > 0 (got {self.learning_rate})")


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


def state_digest(model: torch.nn.Module) -> str:
    """Short hash of a model's state_dict (names, dtypes and bytes), to compare weights across ranks."""
    h = hashlib.blake2b(digest_size=8)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
            "h5py": h5py.__version__, "sklearn": sklearn.__version__}


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically (a full disk is a one-line DiskFullError)."""
    create_folder(os.path.dirname(os.path.abspath(path)))
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def write_run_record(cfg: TrainConfig, model_config: Dict[str, Any], parameters: int, info: DistInfo,
                     precision: str) -> str:
    """``<logs dir>/config.json``: resolved config, model config, parameter count, versions, git commit."""
    mc = {k: v for k, v in model_config.items() if k not in ("labels", "ids")}
    record = {"train": cfg.to_dict(), "model": mc, "parameters": parameters, "versions": versions(),
              "git_commit": git_commit(), "world_size": info.world_size, "device": str(info.device),
              "precision": precision, "argv": sys.argv, "started": datetime.datetime.now().isoformat(timespec="seconds")}
    path = os.path.join(cfg.logs_dir, "config.json")
    write_json(path, record)
    return path
