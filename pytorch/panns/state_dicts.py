"""State dicts and checkpoint files below the model zoo: safe loading, prefix stripping, strict
key/shape checks with one-line errors, and loading an AudioSet base into a transfer model.

Nothing here knows the model registry, so the zoo (``models.py``) builds on this module and
``checkpoint.py`` (which rebuilds models from the registry) builds on both.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import warnings
import zipfile
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from panns.errors import CheckpointError
from panns.filterbanks import mel_filterbank
from panns.frontend import FRONT_END_32K, KNOWN, FrontEnd

logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")   # DataParallel/DDP and torch.compile wrappers


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


def _first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of an error text, at most ``limit`` characters cut at a word (torch's
    messages run on for several sentences; a cut at a fixed length stopped mid-word)."""
    first = text.split(". ")[0].rstrip(".")
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return first


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """``torch.load(weights_only=True)`` with the numpy types allow-listed; CUDA-saved files load on
    CPU. Raises CheckpointError (one line) for a missing, unreadable, unsafe or non-dict file."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder; give the .pth file in it")
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
        text = " ".join(str(e).split())
        if isinstance(e, EOFError) or any(m in text for m in ("central directory", "unexpected EOF", "Ran out of input")):
            # a zip without its directory (which comes last) or a stream that stops: the file was cut short
            raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file: it looks cut short "
                                  f"({os.path.getsize(path):,} bytes; an interrupted download or copy?), fetch or "
                                  f"copy it again ({_first_sentence(text)})")
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file ({_first_sentence(text)})")
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


def known_frontend(melW: torch.Tensor) -> Optional[Tuple[FrontEnd, str]]:
    """(front end, the first model registered with it) of the zoo whose mel matrix equals ``melW`` (sample rate,
    fmin, fmax are not visible in shapes but are in the filter values); ``frontend.KNOWN`` holds them."""
    if melW.dim() != 2:
        return None
    for fe, name in KNOWN.items():
        if fe.window_size != 2 * (melW.shape[0] - 1) or fe.mel_bins != melW.shape[1]:
            continue
        key = (fe.sample_rate, fe.window_size, fe.mel_bins, fe.fmin, fe.fmax)
        if torch.allclose(_mel_matrix(*key), melW.float().cpu(), atol=1e-6):
            return fe, name
    return None


def _frontend_from_mel(melW: torch.Tensor) -> Optional[str]:
    """Name the registered front end whose mel matrix equals ``melW``, for a message."""
    found = known_frontend(melW)
    if found is None:
        return None
    fe, name = found
    # KNOWN names the first model registered with a front end: for the one most models share
    # that was Cnn6, and a Cnn14 file read "a Cnn14-family model ... as Cnn6"
    whose = "the 32 kHz front end of most models" if fe == FRONT_END_32K else f"as {name}"
    return f"sample_rate={fe.sample_rate}, fmin={fe.fmin}, fmax={fe.fmax}, {whose}"


def _mel_matrix(sample_rate, window_size, mel_bins, fmin, fmax) -> torch.Tensor:
    """The mel filterbank of these settings, only to compare with a checkpoint's (it runs no audio).
    librosa's "Empty filters" warning (e.g. --sample_rate 16000 with the 32 kHz fmax 14000) is
    silenced here, where it is benign: when the settings differ from the checkpoint's, the one-line
    front-end error that follows says so (the warning only printed two source lines before it); when
    they match, the model's own filterbank (models.py, frontend_modules) still warns as it always did."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Empty filters detected", category=UserWarning)
        mel = mel_filterbank(sample_rate, window_size, mel_bins, fmin, fmax)
    return torch.tensor(mel.T, dtype=torch.float32)


def state_digest(model: torch.nn.Module) -> str:
    """Short hash of a model's state_dict (names and bytes): to compare weights across ranks, and to check that
    a frozen base referred to by a fine-tuning checkpoint is still the one it was trained on."""
    h = hashlib.blake2b(digest_size=8)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def check_finite(sd: Dict[str, torch.Tensor], path: str) -> None:
    """Raise one-line CheckpointError naming the first floating tensor of ``sd`` with a NaN or inf value:
    what a diverged training run saves, which ran and printed NaN scores.

    One read of each tensor: its sum is finite unless a value is NaN or inf (or finite values overflow,
    which the exact test of that tensor alone then rules out). torch.isfinite(t).all() on every tensor
    makes temporaries the size of the weights: 0.3-0.6 s for Cnn14's 82M weights on two CPU cores, the
    sums 0.015 s."""
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor) or not (v.is_floating_point() or v.is_complex()) \
                or bool(torch.isfinite(v.sum())):
            continue
        finite = torch.isfinite(v)
        if bool(finite.all()):
            continue   # large finite values whose sum overflowed
        what = "NaN" if bool(torch.isnan(v).any()) else "inf"
        raise CheckpointError(f"checkpoint {path} has non-finite weights: {k} holds {int((~finite).sum())} {what} "
                              f"value(s) of {v.numel()}; it looks like a diverged training run (take an earlier "
                              "checkpoint)")


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
    check_finite(sd, path)   # fine-tuning from a diverged base trains on NaN
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
