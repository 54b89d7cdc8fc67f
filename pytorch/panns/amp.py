"""Numeric precision mechanics for training and inference: autocast, true-fp32 regions, channels_last,
BatchNorm folding.

Models keep their front end (STFT, log-mel, bn0, SpecAugment) and final sigmoid/softmax in float32
inside autocast, so only the CNN body runs in bf16/fp16; the front end also runs with TF32 (and oneDNN's
reduced fp32 modes) off (:func:`ieee_fp32`), whatever the global settings. Which precision a device should use
('auto') is decided by :func:`panns.devices.resolve_precision`.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import sys
import threading
from typing import Callable, Union

import torch
import torch.nn as nn

# The precision *choice* (which precision a device wants) lives in devices.py; re-exported here for callers
# that already use amp.resolve_precision.
from panns.devices import PRECISIONS, cpu_has_fast_bf16, resolve_precision  # noqa: F401
from panns.errors import PannsError

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def eager_only(fn: Callable) -> Callable:
    """``torch.compiler.disable(fn)`` without importing torch._dynamo at start-up: the decorator imports it
    at once, which took 1.5-3 s here, half of every command's start-up, while only torch.compile needs it.
    The disabled function is made on the first call after torch._dynamo has been imported; before that
    nothing can be compiling, so calls go straight to ``fn``."""
    disabled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            if "torch._dynamo" not in sys.modules:
                return fn(*args, **kwargs)
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call


# torch's per-operator fp32 precision settings (torch >= 2.9) that govern the front end: its STFT conv1d and
# mel matmul on CUDA (cuDNN conv, cuBLAS matmul) and on CPUs (oneDNN); cuDNN's rnn entry goes along with conv.
_FP32_OPS = (("cuda", "conv"), ("cuda", "rnn"), ("cuda", "matmul"), ("mkldnn", "conv"), ("mkldnn", "matmul"))
_HAS_FP32_PRECISION = hasattr(torch._C, "_get_fp32_precision_getter")
# The legacy switches stored beside them, as (getter, setter, value with reduced precision off). torch checks
# that legacy and new settings agree whenever something reads a legacy flag (torch.backends.cudnn.allow_tf32
# in inductor's conv lowering, torch.backends.cuda.matmul.allow_tf32 in the profiler), so they are switched
# together; their setters rewrite the per-operator entries, which are restored after them.
_LEGACY = (("_get_cudnn_allow_tf32", "_set_cudnn_allow_tf32", False),
           ("_get_float32_matmul_precision", "_set_float32_matmul_precision", "highest"))


def _switch_off() -> tuple:
    """Switch reduced-precision fp32 math off; returns the previous settings for :func:`_switch_back`."""
    if not _HAS_FP32_PRECISION:
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        return saved
    # The raw per-operator entries: the legacy getters raise on settings made through the new API alone.
    saved = tuple(torch._C._get_fp32_precision_getter(b, o) for b, o in _FP32_OPS)
    legacy = []
    for get, set_, off in _LEGACY:
        try:
            value = getattr(torch._C, get)()
        except RuntimeError:  # legacy and new settings already disagree: leave this legacy one alone
            value = off
        if value != off:
            getattr(torch._C, set_)(off)
        legacy.append(value)
    for b, o in _FP32_OPS:
        torch._C._set_fp32_precision_setter(b, o, "ieee")
    return tuple(legacy), saved


def _switch_back(state: tuple) -> None:
    if not _HAS_FP32_PRECISION:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = state
        return
    legacy, saved = state
    for (_get, set_, off), value in zip(_LEGACY, legacy):
        if value != off:
            getattr(torch._C, set_)(value)
    for (b, o), value in zip(_FP32_OPS, saved):
        torch._C._set_fp32_precision_setter(b, o, value)


# The switches are process-wide, so regions that overlap (threads running models, nesting) share one: the first
# to enter saves the caller's settings, the last to leave restores them. Inside, every thread's float32 math is
# full fp32 - the cost of overlap is speed, never the caller's settings.
_region_lock = threading.Lock()
_region = {"depth": 0, "saved": None}


@eager_only  # global switches: set eagerly, between compiled graphs
def _ieee_enter() -> None:
    with _region_lock:
        if _region["depth"] == 0:
            _region["saved"] = _switch_off()
        _region["depth"] += 1


@eager_only
def _ieee_exit() -> None:
    with _region_lock:
        _region["depth"] -= 1
        if _region["depth"] == 0:
            saved, _region["saved"] = _region["saved"], None
            _switch_back(saved)


class _IeeeRegion:
    """The true-fp32 region of :func:`ieee_fp32` (switches set on enter, the caller's back on exit)."""

    def __enter__(self) -> "_IeeeRegion":
        _ieee_enter()
        return self

    def __exit__(self, *exc) -> None:
        _ieee_exit()


# A training run pins IEEE fp32 for its whole process (:func:`pin_ieee_fp32`): regions then have nothing to switch,
# and a compiled training step keeps the front end in its graph instead of leaving it for the switches.
_pinned: dict = {"on": False, "saved": None}


def ieee_fp32():
    """Context: float32 convolutions and matmuls inside run in full IEEE fp32 - TF32 off for cuDNN and cuBLAS,
    oneDNN's bf16/tf32 modes for fp32 off; the previous settings (however the user set them) come back on exit.
    PyTorch lets cuDNN convolutions use TF32 by default, which rounds the STFT's inputs to 10 mantissa bits. A
    dozen flag reads and writes per call; under torch.compile the switches run eagerly between graphs (two graph
    breaks) - unless the process has pinned IEEE fp32 (:func:`pin_ieee_fp32`), when this is a no-op."""
    return contextlib.nullcontext() if _pinned["on"] else _IeeeRegion()


def pin_ieee_fp32() -> None:
    """Switch reduced-precision fp32 math off for the whole process until :func:`unpin_ieee_fp32` (a training run:
    ``--precision fp32`` then means IEEE fp32 everywhere, and bf16/fp16 runs lose nothing, their fp32 ops being the
    front end, which must be IEEE anyway, and the loss). Idempotent."""
    with _region_lock:
        if not _pinned["on"]:
            _pinned["saved"] = _switch_off()
            _pinned["on"] = True


def unpin_ieee_fp32() -> None:
    """Put back the fp32 settings :func:`pin_ieee_fp32` found."""
    with _region_lock:
        if _pinned["on"]:
            _switch_back(_pinned["saved"])
            _pinned["on"], _pinned["saved"] = False, None


def _device_type(device: Union[str, torch.device]) -> str:
    return torch.device(device).type


def autocast(precision: str, device: Union[str, torch.device]):
    """Autocast context for a resolved precision; a no-op for fp32."""
    if precision == "auto":
        precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise PannsError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=_device_type(device), dtype=_DTYPES[precision])


# Where channels_last memory format pays off (benchmarks/bench_models.py, Cnn14, 10-s clips):
# on a 2-core AVX2 CPU fp32 batch 8 went from 0.46 to 0.65 clips/s (oneDNN convolutions avoid
# reordering NCHW tensors); bf16 is measured slow there anyway. On CUDA, tensor-core convolutions
# prefer channels_last for bf16/fp16 (not measured here: no GPU), fp32 keeps the default layout.
CHANNELS_LAST = {("cpu", "fp32"): True, ("cpu", "bf16"): True, ("cpu", "fp16"): False,
                 ("cuda", "fp32"): False, ("cuda", "bf16"): True, ("cuda", "fp16"): True}


def prepare_for_inference(model: nn.Module, precision: str, device: Union[str, torch.device],
                          fold: bool = False) -> nn.Module:
    """eval(), move to ``device`` and use channels_last where it was measured to help
    (``CHANNELS_LAST``). ``fold=True`` also folds BatchNorm into the convolutions (a copy; outputs
    within 1e-5 relative, faster on CPU) - for inference only, never for training."""
    model = model.to(device).eval()
    if fold:
        model = fold_bn(model)
    if precision == "auto":
        precision = resolve_precision(precision, device)
    if CHANNELS_LAST.get((_device_type(device), precision), False):
        model = model.to(memory_format=torch.channels_last)
    return model


def fold_bn(model: nn.Module) -> nn.Module:
    """Inference copy of ``model`` with each eval-mode BatchNorm folded into the convolution right
    before it (conv -> BN pairs inside ConvBlock-style modules and nn.Sequential). The original is
    untouched; the copy is for eval only (its BNs become identities)."""
    model = copy.deepcopy(model).eval()
    pairs = []
    for mod in model.modules():
        names = [n for n, _ in mod.named_children()]
        for n in names:
            child = getattr(mod, n)
            if not isinstance(child, (nn.Conv1d, nn.Conv2d)):
                continue
            bn_name = _bn_after(mod, n, names)
            if bn_name is not None:
                pairs.append((mod, n, bn_name))
    for mod, conv_name, bn_name in pairs:
        conv, bn = getattr(mod, conv_name), getattr(mod, bn_name)
        if conv.out_channels != bn.num_features:
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        with torch.no_grad():
            w = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
            b = (conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean))
            b = (b - bn.running_mean) * scale + bn.bias
            conv.weight.copy_(w)
            conv.bias = nn.Parameter(b)
        setattr(mod, bn_name, nn.Identity())
    return model


def _bn_after(mod: nn.Module, conv_name: str, names) -> str | None:
    """Name of the BN that directly follows ``conv_name`` in ``mod``: 'convK' -> 'bnK' in blocks;
    the next child in a Sequential (an AvgPool between them commutes with a per-channel affine)."""
    if conv_name.startswith("conv") and conv_name[4:].isdigit():
        bn = "bn" + conv_name[4:]
        return bn if isinstance(getattr(mod, bn, None), (nn.BatchNorm1d, nn.BatchNorm2d)) else None
    if conv_name == "downsample" and isinstance(getattr(mod, "bn_downsample", None), nn.BatchNorm1d):
        return "bn_downsample"
    if isinstance(mod, nn.Sequential):
        i = names.index(conv_name)
        for nxt in names[i + 1:i + 3]:
            child = getattr(mod, nxt)
            if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                return nxt
            if not isinstance(child, (nn.AvgPool1d, nn.AvgPool2d)):
                return None
    return None
