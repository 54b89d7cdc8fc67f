"""Checkpoints: self-describing save, safe load, and model rebuild with clear errors.

Our files are ``torch.save`` dicts ``{'model': state_dict, 'config': ModelConfig.to_dict() + extra
keys, ...}``; official files are ``{'model': state_dict, 'iteration': int, 'sampler': {...numpy...}}``.
Both load with ``weights_only=True`` (no arbitrary code): the numpy types such files contain are
allow-listed. ``load_model`` rebuilds the model from the checkpoint's config (official files: from
the registry defaults of ``model_type``) and refuses front-end values that contradict it.
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional, Tuple

import librosa  # already loaded by the models (torchlibrosa): no extra start-up cost
import numpy as np
import torch

from panns import models
from panns.errors import CheckpointError
from panns.frontend import FRONT_END_32K, FRONTEND_KEYS, FrontEnd
from panns.utilities import atomic_write

logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")   # DataParallel/DDP and torch.compile wrappers


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and name its outputs."""
    model_type: str
    sample_rate: int = FRONT_END_32K.sample_rate   # the FrontEnd fields, flat as saved in checkpoints
    window_size: int = FRONT_END_32K.window_size
    hop_size: int = FRONT_END_32K.hop_size
    mel_bins: int = FRONT_END_32K.mel_bins
    fmin: int = FRONT_END_32K.fmin
    fmax: int = FRONT_END_32K.fmax
    classes_num: int = 527
    labels: Optional[List[str]] = None
    ids: Optional[List[str]] = None
    base_model_type: Optional[str] = None   # Transfer_<Base> models
    output: str = "sigmoid"                 # 'sigmoid' | 'log_softmax'

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict, ignoring keys that are not fields (checkpoints carry extra keys)."""
        names = {f.name for f in fields(cls)}
        if "model_type" not in d:
            raise CheckpointError("checkpoint config has no 'model_type'")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_registry(cls, model_type: str, classes_num: int = 527, **frontend) -> "ModelConfig":
        spec = models.get_model_spec(model_type)
        fe = {**spec.frontend(), **{k: v for k, v in frontend.items() if v is not None}}
        return cls(model_type=model_type, classes_num=classes_num, base_model_type=spec.base,
                   output=spec.output, **fe)

    def frontend(self) -> dict:
        return {k: getattr(self, k) for k in FRONTEND_KEYS}

    @property
    def front_end(self) -> FrontEnd:
        return FrontEnd.from_dict(self.frontend())


# ------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------
_PLAIN = (str, bytes, int, float, complex, bool, type(None), torch.Tensor, np.ndarray, np.generic,
          np.dtype, torch.Size, torch.dtype)


def _check_saveable(obj, where: str = "checkpoint") -> None:
    """Only tensors, numpy and plain python data, so that load_checkpoint (weights_only) can read
    the file back; fail before writing, naming the offending entry."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_saveable(k, f"{where} key {k!r}")
            _check_saveable(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            _check_saveable(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints hold only tensors, numpy "
                        f"and plain python data (convert it, e.g. vars(args) or .state_dict())")


def save_checkpoint(path: str, obj: dict) -> None:
    """torch.save ``obj`` atomically: write a temp sibling, then rename (a crash never leaves a
    half-written checkpoint under ``path``). ``obj`` must hold only tensors, numpy and python data."""
    _check_saveable(obj)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        # Through a Python file object a full disk raises OSError(ENOSPC), which atomic_write turns into
        # one line naming the checkpoint; torch.save(obj, <path>) raised an opaque RuntimeError instead.
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def _numpy_safe_globals() -> list:
    """numpy types found in official/our checkpoints (sampler states, scalars), under both the
    numpy 2 (``numpy._core``) and numpy 1 (``numpy.core``) module names."""
    core = np._core if hasattr(np, "_core") else np.core
    safe: list = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    for fn in (core.multiarray._reconstruct, core.multiarray.scalar):
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            safe.append((fn, f"{mod}.{fn.__name__}"))
    safe += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return safe


def _looks_like_text(path: str) -> bool:
    """True when the file starts with printable UTF-8 text (no NUL bytes), unlike any torch file."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
        return b"\0" not in head and bool(head.decode("utf-8", errors="strict").strip())
    except (OSError, UnicodeDecodeError):
        return False


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """``torch.load(weights_only=True)`` with the numpy types allow-listed; CUDA-saved files load on
    CPU. Raises CheckpointError (one line) for a missing, unreadable, unsafe or non-dict file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        if "Unsupported global" in detail:
            raise CheckpointError(f"checkpoint {path} contains objects that are not plain tensors/"
                                  f"numpy/python data ({detail[:160]}); refusing to unpickle it")
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file ({detail[:160]})")
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        msg = " ".join(str(e).split())[:160]
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file ({msg})")
    except Exception as e:   # the unpickler fails in many ways on files that are not checkpoints at all
        what = "a text file" if _looks_like_text(path) else "corrupt or not a PyTorch file"
        raise CheckpointError(f"checkpoint {path} is {what} ({type(e).__name__}: {' '.join(str(e).split())[:80]})")
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict "
                              f"with a 'model' state_dict")
    return obj


def model_state_dict(ckpt: dict, path: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint dict: ``ckpt['model']``, or ``ckpt`` itself when it is
    a bare state_dict."""
    sd = ckpt.get("model")
    if sd is None and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} has no 'model' state_dict (keys: {sorted(ckpt)[:6]})")
    return sd


def strip_prefixes(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove 'module.' (DataParallel/DDP) and '_orig_mod.' (torch.compile) key prefixes."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------
# Diagnosis of mismatched checkpoints
# ------------------------------------------------------------------------------------------------
def _shape(t) -> Tuple[int, ...]:
    return tuple(t.shape)


# (key, test of its tensor or None, family): the first entry whose key is present and passes names the
# family, so the more specific keys come first (e.g. Res1dNet has 1-D conv blocks like LeeNet).
_FAMILY_HINTS = (
    ("att_block.att.weight", None, "Cnn14_DecisionLevelAtt"),
    ("features.18.0.weight", None, "MobileNetV2"),
    ("features.13.0.weight", None, "MobileNetV1"),
    ("resnet.layer7.0.conv1.weight", None, "Res1dNet31/51"),
    ("resnet.layer1.0.conv3.weight", None, "ResNet54"),
    ("resnet.layer1.0.conv1.weight", None, "ResNet22/38"),
    ("conv0.weight", None, "DaiNet19"),
    ("conv_block1.conv1.weight", lambda w: w.dim() == 3, "LeeNet11/24"),
    ("conv_block6.conv1.weight", None, "a Cnn14-family model"),
    ("conv_block4.conv1.weight", lambda w: w.shape[-1] == 5, "Cnn6"),
    ("conv_block4.conv1.weight", None, "Cnn10"),
)


def describe_state_dict(sd: Dict[str, torch.Tensor]) -> str:
    """A short guess of what model/front end produced ``sd`` (for error hints)."""
    base = "base." if any(k.startswith("base.") for k in sd) else ""
    hints = []
    if base:
        head = sd.get("fc_transfer.weight")
        hints.append("a Transfer_* model" + (f" with {_shape(head)[0]} classes" if head is not None else ""))
    has = lambda k: base + k in sd  # noqa: E731
    if has("pre_conv0.weight"):
        hints.append("a Wavegram model" + ("" if has("spectrogram_extractor.stft.conv_real.weight")
                                           else " without log-mel (Wavegram_Cnn14)"))
    else:
        family = next((name for key, test, name in _FAMILY_HINTS
                       if has(key) and (test is None or test(sd[base + key]))), None)
        if family:
            hints.append(family)
    mel = sd.get(base + "logmel_extractor.melW")
    if mel is not None:
        n_fft = 2 * (mel.shape[0] - 1)
        guess = _frontend_from_mel(mel)
        hints.append(f"front end window_size={n_fft}, mel_bins={mel.shape[1]}"
                     + (f" ({guess})" if guess else ""))
    fc1 = sd.get(base + "fc1.weight")
    if fc1 is not None:
        hints.append(f"embedding {fc1.shape[0]}")
    return ", ".join(hints) if hints else "no known PANNs model"


def _frontend_from_mel(melW: torch.Tensor) -> Optional[str]:
    """Name the registry front end whose mel matrix equals ``melW`` (sample rate, fmin, fmax are
    not visible in shapes but are in the filter values)."""
    seen = set()
    for spec in models.MODELS.values():
        fe = spec.frontend()
        key = (fe["sample_rate"], fe["window_size"], fe["mel_bins"], fe["fmin"], fe["fmax"])
        if key in seen or fe["window_size"] != 2 * (melW.shape[0] - 1) or fe["mel_bins"] != melW.shape[1]:
            continue
        seen.add(key)
        if torch.allclose(_mel_matrix(*key), melW.float().cpu(), atol=1e-6):
            return f"sample_rate={key[0]}, fmin={key[3]}, fmax={key[4]}, as {spec.name}"
    return None


def _mel_matrix(sample_rate, window_size, mel_bins, fmin, fmax) -> torch.Tensor:
    return torch.tensor(librosa.filters.mel(sr=sample_rate, n_fft=window_size, n_mels=mel_bins,
                                            fmin=fmin, fmax=fmax).T, dtype=torch.float32)


def check_state_dict(model: torch.nn.Module, sd: Dict[str, torch.Tensor], path: str,
                     model_type: str) -> None:
    """Raise one-line CheckpointError unless ``sd`` fits ``model`` exactly (keys and shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and _shape(own[k]) != _shape(sd[k])]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:3]}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:3]}"
                     + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""))
    for k in shapes[:2]:
        parts.append(f"{k}: checkpoint {_shape(sd[k])} vs model {_shape(own[k])}")
    raise CheckpointError(f"checkpoint {path} does not fit {model_type}: {'; '.join(parts)}; "
                          f"its weights look like {describe_state_dict(sd)}")


def _check_frontend_weights(sd: Dict[str, torch.Tensor], path: str, cfg: ModelConfig) -> None:
    """Official files carry no config, but their mel matrix reveals window size, mel bins, sample
    rate, fmin and fmax: refuse e.g. 16-kHz weights with 32-kHz settings (checked before building
    the model, so a wrong guess fails fast)."""
    prefix = "base." if any(k.startswith("base.") for k in sd) else ""
    theirs = sd.get(prefix + "logmel_extractor.melW")
    spec = models.get_model_spec(cfg.model_type)
    cls = models.get_model_spec(spec.base).cls if spec.base else spec.cls
    uses_logmel = cls.bn_bins is not None and getattr(cls, "wavegram", None) != "only"
    if theirs is None or theirs.dim() != 2 or not uses_logmel:
        return   # nothing to compare; the strict key check below reports a wrong model type
    mine = _mel_matrix(cfg.sample_rate, cfg.window_size, cfg.mel_bins, cfg.fmin, cfg.fmax)
    if _shape(mine) == _shape(theirs) and torch.allclose(mine, theirs.float().cpu(), atol=1e-5):
        return
    fe = ", ".join(f"{k}={v}" for k, v in cfg.frontend().items() if k != "hop_size")
    guess = _frontend_from_mel(theirs)
    raise CheckpointError(
        f"checkpoint {path} was trained with another front end than {fe} (its mel filterbank "
        f"{_shape(theirs)} differs{'; it matches ' + guess if guess else ''}); pass the matching "
        f"--model_type/--sample_rate/--window_size/--mel_bins/--fmin/--fmax")


def _classes_in(sd: Dict[str, torch.Tensor]) -> Optional[int]:
    for k in ("fc_transfer.weight", "fc_audioset.weight", "att_block.cla.weight"):
        if k in sd:
            return int(sd[k].shape[0])
    return None


# ------------------------------------------------------------------------------------------------
# Rebuild
# ------------------------------------------------------------------------------------------------
def load_model(checkpoint_path: str, model_type: Optional[str] = None, frontend: Optional[dict] = None,
               classes_num: Optional[int] = None, device="cpu") -> Tuple[torch.nn.Module, ModelConfig]:
    """Rebuild the model of a checkpoint, strictly load its weights, return (model in eval mode,
    ModelConfig).

    With a 'config' in the checkpoint, ``model_type``/``frontend``/``classes_num`` are optional
    checks: a value that contradicts the checkpoint raises CheckpointError naming both. Official
    files (no config) need ``model_type``; the front end comes from the registry defaults
    overridden by ``frontend``, and is checked against the checkpoint's mel filterbank.
    """
    frontend = {k: v for k, v in (frontend or {}).items() if v is not None}
    bad = set(frontend) - set(FRONTEND_KEYS)
    if bad:
        raise CheckpointError(f"unknown front-end option(s) {sorted(bad)}")
    ckpt = load_checkpoint(checkpoint_path, map_location="cpu")
    sd = strip_prefixes(model_state_dict(ckpt, checkpoint_path))

    if isinstance(ckpt.get("config"), dict):
        cfg = ModelConfig.from_dict(ckpt["config"])
        if model_type is not None and model_type != cfg.model_type:
            raise CheckpointError(f"checkpoint {checkpoint_path} holds a {cfg.model_type} model but "
                                  f"--model_type={model_type} was given")
        wrong = {k: v for k, v in frontend.items() if v != getattr(cfg, k)}
        if wrong:
            trained = ", ".join(f"{k}={v}" for k, v in cfg.frontend().items())
            given = " ".join(f"--{k}={v}" for k, v in wrong.items())
            raise CheckpointError(f"checkpoint {checkpoint_path} was trained at {trained} but {given} "
                                  f"was given; drop the option(s) or use the checkpoint's values")
        if classes_num is not None and classes_num != cfg.classes_num:
            raise CheckpointError(f"checkpoint {checkpoint_path} has {cfg.classes_num} classes but "
                                  f"classes_num={classes_num} was given")
    else:
        if model_type is None:
            raise CheckpointError(f"checkpoint {checkpoint_path} has no config (official format); "
                                  f"pass --model_type (its weights look like {describe_state_dict(sd)})")
        if classes_num is None:
            classes_num = _classes_in(sd) or 527
        cfg = ModelConfig.from_registry(model_type, classes_num=classes_num, **frontend)

    if not isinstance(ckpt.get("config"), dict):
        _check_frontend_weights(sd, checkpoint_path, cfg)
    try:
        with models.skip_init():   # every tensor comes from the checkpoint (strict load below)
            extra = {"output": cfg.output} if models.get_model_spec(cfg.model_type).base else {}
            model = models.create_model(cfg.model_type, classes_num=cfg.classes_num, **cfg.frontend(), **extra)
    except models.PannsError as e:
        raise CheckpointError(f"cannot build {cfg.model_type} for checkpoint {checkpoint_path}: {e}")
    check_state_dict(model, sd, checkpoint_path, cfg.model_type)
    model.load_state_dict(sd, strict=True)
    model.to(device).eval()
    return model, cfg


# ------------------------------------------------------------------------------------------------
# Pretrained bases for transfer learning
# ------------------------------------------------------------------------------------------------
_HEAD_KEYS = ("fc_audioset.weight", "fc_audioset.bias")


def load_pretrained_base(base: torch.nn.Module, sd: Dict[str, torch.Tensor], path: str, base_name: str,
                         official: bool = False) -> None:
    """Load ``sd`` into a transfer model's ``base`` strictly, with one-line CheckpointErrors naming
    missing/unexpected/mismatched keys, or (``official`` files carry no config) a mel filterbank
    that shows another front end.

    One exception: a base trained on another class list (e.g. a 10-class one) has a head of another
    size. The transfer model never uses that head (it reads the embedding), so the base keeps its
    527-class head: a standard Transfer_<Base> that inference rebuilds.
    """
    mel = "logmel_extractor.melW"
    own = base.state_dict()
    if official and mel in sd and mel in own:
        mine, theirs = own[mel], sd[mel]
        if mine.shape == theirs.shape and not torch.allclose(mine.float(), theirs.float(), atol=1e-5):
            raise CheckpointError(f"{path} was trained with another front end than {base_name}'s "
                                  f"(sample_rate={getattr(base, 'sample_rate', '?')}, window_size="
                                  f"{getattr(base, 'window_size', '?')}: its mel filterbank differs; its weights "
                                  f"look like {describe_state_dict(sd)}); pass the matching "
                                  "--sample_rate/--window_size/--mel_bins/--fmin/--fmax")
    w = _HEAD_KEYS[0]
    if all(k in sd and k in own for k in _HEAD_KEYS) and sd[w].shape != own[w].shape \
            and sd[w].shape[1:] == own[w].shape[1:]:
        logger.info("The base's own %d-class head is not used by the transfer model and is not loaded",
                    sd[w].shape[0])
        sd = {**sd, **{k: own[k] for k in _HEAD_KEYS}}
    check_state_dict(base, sd, path, base_name)
    base.load_state_dict(sd, strict=True)


def _load_from_pretrain(self, pretrained_checkpoint_path: str) -> None:
    """Load an AudioSet checkpoint (official ``{'model': state_dict}`` or ours) into ``base``."""
    ckpt = load_checkpoint(pretrained_checkpoint_path)
    sd = strip_prefixes(model_state_dict(ckpt, pretrained_checkpoint_path))
    load_pretrained_base(self.base, sd, pretrained_checkpoint_path, self.base_type,
                         official=not isinstance(ckpt.get("config"), dict))


# The official method ``Transfer_Cnn14.load_from_pretrain(path)`` is attached here, next to the loading
# code it uses, so that models.py (which this module builds on) never imports this module.
models._Transfer.load_from_pretrain = _load_from_pretrain
