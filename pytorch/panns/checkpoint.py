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
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from panns import models
from panns.errors import CheckpointError, PannsError
from panns.state_dicts import (_frontend_from_mel, _mel_matrix, _shape, check_finite, check_state_dict,  # noqa: F401
                               describe_state_dict, load_checkpoint, load_pretrained_base, model_state_dict,
                               state_digest, strip_prefixes)
from panns.frontend import FRONT_END_32K, FRONTEND_KEYS, FrontEnd, whole_number
from panns.utilities import atomic_write

logger = logging.getLogger(__name__)


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

    def check(self, path: str) -> "ModelConfig":
        """Refuse, in one line naming checkpoint ``path`` and the field, a saved config no model can be built
        from or whose outputs cannot be named: a front end :meth:`FrontEnd.check` refuses (a checkpoint's dict
        is not typed by argparse: 'abc', NaN, 1024.5 or a zero hop crashed deep in the resampler or the STFT,
        an fmax above Nyquist ran empty mel bands), a class count that is not a whole number >= 1, labels or
        ids that are not lists of strings of that length, an unknown output. Whole-number floats become ints
        (32000.0). Returns self."""
        try:
            fe = FrontEnd(**self.frontend()).check(prefix="")
            if not isinstance(self.model_type, str) or not self.model_type:
                raise PannsError(f"model_type must be a model name, got {self.model_type!r}")
            classes_num = whole_number(self.classes_num, "classes_num", minimum=1)
            if self.output not in ("sigmoid", "log_softmax"):
                raise PannsError(f"output must be 'sigmoid' or 'log_softmax', got {self.output!r}")
            for key in ("labels", "ids"):
                names = getattr(self, key)
                if names is not None and (not isinstance(names, (list, tuple))
                                          or not all(isinstance(x, str) for x in names)):
                    raise PannsError(f"{key} must be a list of strings, got {_brief(names)}")
                if names and len(names) != classes_num:
                    raise PannsError(f"its {key} list has {len(names)} entries but classes_num is "
                                     f"{self.classes_num} (the model's outputs)")
        except PannsError as e:
            raise CheckpointError(f"checkpoint {path} has an unusable config: {e}") from None
        for k, v in fe.to_dict().items():
            setattr(self, k, v)
        self.classes_num = classes_num
        return self

    @property
    def front_end(self) -> FrontEnd:
        return FrontEnd.from_dict(self.frontend())


def _brief(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


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
            try:
                torch.save(obj, f)
            except RuntimeError as e:
                # torch's zip writer, cleaning up after the failed write, raises "unexpected pos" on top of it
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from None
                raise


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
    check_finite(sd, checkpoint_path)   # a diverged run's NaN weights ran, printing NaN scores
    ref = ckpt.get("base_checkpoint")
    if isinstance(ref, dict):   # a fine-tune on a frozen base: the trained part, and the base by reference
        sd = {**frozen_base_weights(ref, checkpoint_path), **sd}

    if isinstance(ckpt.get("config"), dict):
        cfg = ModelConfig.from_dict(ckpt["config"]).check(checkpoint_path)   # before anything reads its values
        if model_type is not None and model_type != cfg.model_type:
            raise CheckpointError(f"checkpoint {checkpoint_path} holds a {cfg.model_type} model but "
                                  f"{model_type} was asked for (--model_type, model_type=)")
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
        if frontend:   # flags that no model can run (fmax above Nyquist, ...) named as such, not as a mismatch
            FrontEnd.from_dict(cfg.frontend()).check()

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
    if isinstance(ref, dict) and state_digest(model.base) != ref.get("digest"):
        raise CheckpointError(f"{checkpoint_path} was fine-tuned on the frozen base {ref.get('path')} (digest "
                              f"{ref.get('digest')}), which has changed since (digest {state_digest(model.base)}); "
                              "put the original file back")
    model.to(device).eval()
    return model, cfg


def frozen_base_weights(ref: dict, checkpoint_path: str) -> Dict[str, torch.Tensor]:
    """The ``base.*`` weights a fine-tuning checkpoint refers to (``{'path', 'digest'}`` of its frozen base: an
    AudioSet checkpoint, or a fine-tuned Transfer one whose base is taken)."""
    path = ref.get("path")
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"{checkpoint_path} holds the fine-tuned head only; its frozen base {path} is not there. "
                              "Put the base back at that path (or run this where it is and make a self-contained copy "
                              "with `python3 pytorch/finetune_template.py export`)")
    base = strip_prefixes(model_state_dict(load_checkpoint(path), path))
    if any(k.startswith("base.") for k in base):
        base = {k[5:]: v for k, v in base.items() if k.startswith("base.")}
    check_finite(base, path)
    return {"base." + k: v for k, v in base.items()}


def self_contained(checkpoint_path: str, output_path: str) -> str:
    """Write a copy of a fine-tuning checkpoint with its frozen base's weights inside (no reference to another
    file): what to share or archive. Returns ``output_path``."""
    ckpt = load_checkpoint(checkpoint_path)
    if not isinstance(ckpt.get("config"), dict):   # load_model would ask for --model_type, a flag export lacks
        raise CheckpointError(f"checkpoint {checkpoint_path} is in the official format (weights only, no config), "
                              "already self-contained: export takes best.pth or latest.pth of a fine-tuning run")
    model, _ = load_model(checkpoint_path)
    out = {k: v for k, v in ckpt.items() if k != "base_checkpoint"}
    out["model"] = model.state_dict()
    save_checkpoint(output_path, out)
    return output_path
