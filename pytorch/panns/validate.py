"""One validation layer for audio arrays and run options, shared by every front door: the Python
API (``panns.load``), the panns_inference-compatible classes, the HEAR API and the command lines.

Arrays come in from soundfile, scipy, librosa, torchaudio or a user's own code in every shape and
dtype; a model needs mono float32 in [-1, 1]. What a user means is taken where it is unambiguous,
and refused in one line (``PannsError``) where it is not, so nothing runs on garbage silently:

* dtype: float16/32/64 as they are; integer PCM scaled like ``soundfile.read`` does (int8 / 2**7,
  int16 / 2**15, int32 / 2**31; uint8 centred on 128, as in 8-bit WAV files); bool, complex, object
  and the other integer types (int64 has no PCM scale) refused.
* shape: ``(samples,)`` one clip; ``(batch, samples)`` a batch; ``(samples, channels)`` with a few
  channels (``MAX_CHANNELS``) and more samples than channels - what ``soundfile.read`` returns for a
  stereo file - one clip, averaged to mono (a batch of 2-sample clips means nothing);
  ``(batch, samples, channels)`` likewise per clip. One clip of a list may also be ``(channels,
  samples)`` (librosa, torchaudio), since a list item is always one clip.
* values: NaN or inf refused, naming the clip, the sample and its time; empty inputs refused; float
  audio peaking far above 1 (integer PCM cast to float) warned about once (``check_scale``).
* options: ``threshold`` in [0, 1], ``top_k``/``batch_size`` >= 1, ``segment_seconds``/
  ``hop_seconds`` finite and > 0 (hop <= segment where framewise output is stitched: a larger hop
  leaves frames no window analysed), ``aggregate`` max or mean, ``min_duration`` >= 0; a segment
  no shorter than the model's shortest input (``segment_fits``, once the model is known).
* output files (``output_paths``): refused before any model loads when they cannot be written, are
  folders, are an input, or are the same file as another output.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from panns import argtypes
from panns.errors import PannsError
from panns.utilities import check_output_path

logger = logging.getLogger(__name__)

MAX_CHANNELS = 8          # (samples, channels) with at most this many channels reads as one multichannel clip
AGGREGATES = ("max", "mean")
# soundfile's scale for integer PCM (``sf.read(dtype='float32')`` of a file of that subtype).
PCM_SCALE = {np.dtype(np.int8): 2.0 ** 7, np.dtype(np.int16): 2.0 ** 15, np.dtype(np.int32): 2.0 ** 31}


# ----------------------------------------------------------------------------- audio
def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bfloat16:
            x = x.float()
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # ragged nested lists and the like
        raise PannsError(f"{name} is not an array of samples ({type(x).__name__}: {e})") from None


def as_float(x, name: str = "audio") -> np.ndarray:
    """Any array/tensor of samples -> float32 in the same shape: integer PCM scaled to [-1, 1]
    like soundfile; bool, complex and non-PCM integer types refused."""
    a = _to_numpy(x, name)
    if a.dtype.byteorder == (">" if np.little_endian else "<"):   # '>i2' (AIFF/network PCM) is int16 all the same
        a = a.astype(a.dtype.newbyteorder("="))
    dt = a.dtype
    if dt.kind == "f":
        return a.astype(np.float32, copy=False)
    if dt in PCM_SCALE:
        return (a.astype(np.float32) / np.float32(PCM_SCALE[dt])).astype(np.float32, copy=False)
    if dt == np.uint8:   # 8-bit WAV: unsigned, silence at 128
        return ((a.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if dt.kind == "b":
        raise PannsError(f"{name} is a bool array; audio must be float samples in [-1, 1] or integer PCM "
                         "(int16, int32, uint8)")
    if dt.kind == "c":
        raise PannsError(f"{name} is complex ({dt}); audio must be real: pass the waveform, not its spectrum")
    if dt.kind in "iu":
        raise PannsError(f"{name} has dtype {dt}, which has no PCM scale; pass float samples in [-1, 1] or "
                         "int16/int32/uint8 PCM (e.g. x.astype(np.float32) / full_scale)")
    raise PannsError(f"{name} has dtype {dt}; audio must be float samples or integer PCM")


def check_finite(x: np.ndarray, name: str = "audio", sample_rate: Optional[int] = None,
                 start_seconds: Optional[float] = None) -> None:
    """Refuse NaN/inf, naming where the first one is (clip and sample, for (B, T) arrays).
    ``start_seconds``: where ``x`` starts in a longer stream (a chunk of live audio), so the
    position is given in stream time, which the user can find, not as an offset into the chunk."""
    ok = np.isfinite(x)
    if ok.all():
        return
    bad = np.argwhere(~ok)[0]
    count = int(x.size - np.count_nonzero(ok))
    sample = int(bad[-1])
    if start_seconds is not None and sample_rate:
        where = f"{start_seconds + sample / sample_rate:.3f} s into the stream (sample {sample} of this chunk)"
    else:
        where = f"sample {sample}" + (f" ({sample / sample_rate:.3f} s)" if sample_rate else "")
    if x.ndim >= 2:
        where = f"clip {int(bad[0])}, " + where
    raise PannsError(f"{name} holds {count} non-finite value(s) (NaN or inf), the first at {where}; "
                     "clean or drop that audio (e.g. np.nan_to_num) before running the model")



# Float audio far above full scale is almost always integer PCM cast to float (x.astype(np.float32) of
# an int16 array): every output saturates. Legitimate float audio may exceed 1 a little (mixing,
# filtering), so this is a warning, given once per process, not a refusal.
SCALE_WARN_PEAK = 4.0
_scale_warned = False


def check_scale(x: np.ndarray, name: str = "audio") -> None:
    """Warn once when ``x`` peaks above SCALE_WARN_PEAK (a model expects float audio in [-1, 1])."""
    global _scale_warned
    if _scale_warned or x.size == 0:
        return
    peak = float(np.abs(x).max())
    if peak > SCALE_WARN_PEAK:
        _scale_warned = True
        logger.warning("%s peaks at %.3g, but float audio is expected in [-1, 1]: integer PCM cast to float? "
                       "Pass the integer array itself (scaled as soundfile does) or divide by 32768 for 16-bit",
                       name, peak)

def _downmix(a: np.ndarray, axis: int, name: str) -> np.ndarray:
    logger.debug("%s: %d channels averaged to mono", name, a.shape[axis])
    return a.mean(axis=axis, dtype=np.float32)


def _is_channel_last(shape: Tuple[int, ...]) -> bool:
    """(..., samples, channels) with 1..MAX_CHANNELS channels. Zero channels is no layout at all:
    (B, 0) is an empty batch, and averaging its 0 "channels" gave NaN and numpy warnings."""
    return 1 <= shape[-1] <= MAX_CHANNELS and shape[-2] > shape[-1]


def clip(x, name: str = "audio", sample_rate: Optional[int] = None) -> np.ndarray:
    """One clip -> mono float32 (samples,). Accepts (samples,), (samples, channels) and
    (channels, samples) with up to MAX_CHANNELS channels (averaged)."""
    a = as_float(x, name)
    if a.size == 0:   # before any downmix: the mean of nothing is NaN, which would be reported as such
        raise PannsError(f"{name} is empty (shape {tuple(a.shape)})")
    if a.ndim == 2 and min(a.shape) <= MAX_CHANNELS and max(a.shape) > min(a.shape):
        a = _downmix(a, 1 if _is_channel_last(a.shape) else 0, name)
    if a.ndim != 1:
        raise PannsError(f"{name}: one clip must be (samples,) or (samples, channels) with at most {MAX_CHANNELS} "
                         f"channels, got shape {tuple(a.shape)}")
    if a.size == 0:
        raise PannsError(f"{name} is empty (0 samples)")
    check_finite(a, name, sample_rate)
    check_scale(a, name)
    return np.ascontiguousarray(a)


def ragged_lengths(x) -> List[int]:
    """The distinct lengths (last axis) of the clips of a list/tuple given as one batch; more than one means
    no (batch, samples) array (numpy's words for it: 'an inhomogeneous shape after 1 dimensions')."""
    if not isinstance(x, (list, tuple)):
        return []
    return list(dict.fromkeys(np.shape(item)[-1] for item in x if np.ndim(item) >= 1))


def batch(x, name: str = "audio", sample_rate: Optional[int] = None,
          allow_empty_batch: bool = False, sounds_of: str = "") -> Tuple[np.ndarray, bool]:
    """An array/tensor -> (float32 (B, samples), whether it was one clip).

    (samples,) and channel-last (samples, channels) are one clip; (B, samples) a batch;
    (B, samples, channels) a batch of multichannel clips. ``allow_empty_batch``: (0, samples) is
    returned as it is (HEAR hands out empty batches); otherwise refused. ``sounds_of``: the API (HEAR) whose
    input is always (n_sounds, n_samples), one row a clip however short: a (16, 8) batch is 16 sounds, not one
    8-channel clip, and any other rank is refused."""
    lengths = ragged_lengths(x)
    if len(lengths) > 1:
        raise PannsError(f"{sounds_of + ' ' if sounds_of else ''}{name} must be one (n_sounds, n_samples) array, but "
                         f"the sounds given have different lengths ({', '.join(map(str, lengths))} samples); pad "
                         "them to one length")
    a = as_float(x, name)
    if sounds_of and a.ndim != 2:
        hint = f" (one sound: {name}[None])" if a.ndim == 1 else ""
        raise PannsError(f"{sounds_of} {name} must be (n_sounds, n_samples) at {sample_rate} Hz, got shape "
                         f"{tuple(a.shape)}{hint}")
    if a.size == 0 and not (allow_empty_batch and a.ndim in (2, 3) and a.shape[0] == 0):
        # before any downmix: the mean of nothing is NaN, which would be reported as such
        raise PannsError(f"{name} is empty (shape {tuple(a.shape)})")
    single = False
    if a.ndim == 1:
        a, single = a[None], True
    elif a.ndim == 2 and _is_channel_last(a.shape) and not sounds_of:
        a, single = _downmix(a, 1, name)[None], True
    elif a.ndim == 3 and _is_channel_last(a.shape):
        a = _downmix(a, 2, name)
    if a.ndim != 2:
        raise PannsError(f"{name} must be (samples,), (samples, channels), (batch, samples) or (batch, samples, "
                         f"channels) with at most {MAX_CHANNELS} channels, got shape {tuple(_to_numpy(x, name).shape)}")
    if a.shape[0] == 0 and allow_empty_batch:
        return np.ascontiguousarray(a), single
    if a.size == 0:
        raise PannsError(f"{name} is empty (shape {tuple(a.shape)})")
    check_finite(a, name, sample_rate)
    check_scale(a, name)
    return np.ascontiguousarray(a), single


def clips(items: Sequence, name: str = "audio", sample_rate: Optional[int] = None) -> List[np.ndarray]:
    """A list of clips (arrays/tensors of any supported shape and dtype) -> mono float32 arrays."""
    items = list(items)
    if not items:
        raise PannsError(f"{name}: no audio given (an empty list)")
    return [clip(item, f"{name}[{i}]", sample_rate) for i, item in enumerate(items)]


# ----------------------------------------------------------------------------- options
def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PannsError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise PannsError(f"{name} must be finite, got {value!r}")
    return v


def positive_int(value, name: str) -> int:
    """An integer >= 1 (top_k, batch_size, num_workers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PannsError(f"{name} must be an integer >= 1, got {value!r}")
    if int(value) < 1:
        raise PannsError(f"{name} must be at least 1, got {value}")
    return int(value)


def positive_seconds(value, name: str) -> float:
    v = _number(value, name)
    if v <= 0:
        raise PannsError(f"{name} must be positive, got {value}")
    return v


def threshold(value, name: str = "threshold") -> float:
    """A probability threshold in [0, 1] (model outputs are probabilities)."""
    v = _number(value, name)
    if not 0.0 <= v <= 1.0:
        raise PannsError(f"{name} must be a probability in [0, 1], got {value}")
    return v


def aggregate(value, name: str = "aggregate") -> str:
    if value not in AGGREGATES:
        raise PannsError(f"{name} must be one of {', '.join(AGGREGATES)}, got {value!r}")
    return value


def windows(segment_seconds, hop_seconds, framewise: bool = False, prefix: str = "") -> None:
    """segment/hop seconds: each None or finite > 0; a hop needs a segment; where framewise output
    is stitched a hop above the segment is refused (frames between windows would never be analysed)."""
    seg = None if segment_seconds is None else positive_seconds(segment_seconds, prefix + "segment_seconds")
    hop = None if hop_seconds is None else positive_seconds(hop_seconds, prefix + "hop_seconds")
    if framewise and seg is not None and hop is not None and hop > seg:
        raise PannsError(f"{prefix}hop_seconds {hop:g} is longer than {prefix}segment_seconds {seg:g}: the audio "
                         "between windows would never be analysed; use a hop at most the segment length")
    if seg is not None and hop is not None and hop > seg:
        logger.warning("%shop_seconds %g > %ssegment_seconds %g: %.0f%% of the audio is skipped", prefix, hop, prefix,
                       seg, 100 * (1 - seg / hop))


def options(top_k=None, batch_size=None, segment_seconds=None, hop_seconds=None, aggregate_=None, threshold_=None,
            min_duration=None, framewise: bool = False, prefix: str = "") -> None:
    """Check the options every front door shares (None = not given); ``prefix`` is ``--`` on the
    command line so messages name the flag the user typed."""
    if top_k is not None:
        positive_int(top_k, prefix + "top_k")
    if batch_size is not None:
        positive_int(batch_size, prefix + "batch_size")
    windows(segment_seconds, hop_seconds, framewise, prefix)
    if aggregate_ is not None:
        aggregate(aggregate_, prefix + "aggregate")
    if threshold_ is not None:
        threshold(threshold_, prefix + "threshold")
    if min_duration is not None and _number(min_duration, prefix + "min_duration") < 0:
        raise PannsError(f"{prefix}min_duration must be >= 0, got {min_duration}")


def as_given(value) -> str:
    """A value as the user gave it, for a message: ``:g`` where that reads back as the same number (1.0 -> '1'),
    else repr (``:g`` alone printed 0.1499999 as 0.15, a limit the value did not break)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            short = f"{value:g}"
            if float(short) == value:
                return short
        except (OverflowError, ValueError):   # an int too large for a float
            pass
    return repr(value)


def segment_fits(segment_seconds: Optional[float], min_samples: int, sample_rate: int, model_type: str,
                 flag: str = "--segment_seconds") -> None:
    """Refuse a window shorter than the shortest input the model runs on (``min_samples``): such a
    window was silently rounded up to one model hop and zero-padded to the minimum, so the result
    said little about the audio (``0.001`` ran 32 samples in 4,800 of padding)."""
    if segment_seconds is None or min_samples <= 0:
        return
    if int(round(segment_seconds * sample_rate)) < min_samples:
        need = math.ceil(min_samples / sample_rate * 1000) / 1000
        raise PannsError(f"{flag} {as_given(segment_seconds)} is shorter than the shortest input {model_type} runs on "
                         f"({min_samples} samples at {sample_rate} Hz); use at least {need:g} seconds")


def sample_rate(value, name: str = "sample_rate") -> int:
    """A sample rate: a whole number of Hz in the range of ``argtypes`` (8000 and 44100.0 fine; 0, -1,
    22050.5 and 32 - seconds or kHz given for Hz - not)."""
    v = _number(value, name)
    low, high = argtypes.MIN_SAMPLE_RATE, argtypes.MAX_SAMPLE_RATE
    if v != int(v) or not low <= v <= high:
        raise PannsError(f"{name} must be a whole number of Hz from {low} to {high}, got {value!r}")
    return int(v)


# ----------------------------------------------------------------------------- output files
def output_paths(outputs: Sequence[Tuple[str, Optional[str]]], inputs: Sequence[str] = (),
                 files: Sequence[str] = ()) -> None:
    """Refuse, before any model is loaded, output files that cannot be written or would destroy data.

    ``outputs``: (flag, path) pairs (path None: not asked for). Each is refused when it is a folder,
    when its nearest existing ancestor is a file or cannot be written (a real probe: permission bits
    say nothing for root or on read-only mounts), when it is the same file as another output (one
    would overwrite the other) or as an input. ``inputs``: the few files named on the command line
    (checkpoint, label CSV, --audio_path entries), each compared in full; ``files``: the gathered audio
    files, possibly millions, compared only where their base name matches an output's (a stat each
    would be slow on network file systems)."""
    seen: dict = {}
    for flag, path in outputs:
        if not path:
            continue
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            other_flag, other = seen[key]
            raise PannsError(f"{flag} {path} is the same file as {other_flag} {other}; one would overwrite the "
                             "other: give them different paths")
        seen[key] = (flag, path)
        base = os.path.normcase(os.path.basename(path))
        same_name = [f for f in files if os.path.normcase(os.path.basename(f)) == base]
        check_output_path(path, [p for p in inputs if p] + same_name, flag)


# ----------------------------------------------------------------------------- model type of a file
def model_type_for(checkpoint_path, model_type: Optional[str], flag: str = "--model_type") -> Optional[str]:
    """The model type to load ``checkpoint_path`` with: ``model_type`` as given, else the one an
    official file's published name says (``Cnn14_mAP=0.431.pth`` -> Cnn14, as ``panns.load`` does).

    A given type that contradicts the published name is warned about: official files carry no
    config, and e.g. Cnn14_DecisionLevelMax loads Cnn14's weights without complaint (same layout)
    but runs another head and prints other tags."""
    if not checkpoint_path:
        return model_type
    from panns import pretrained  # the catalogue (plain data, no torch)

    name = os.path.basename(os.fspath(checkpoint_path))
    try:
        named = pretrained.lookup(name).model_type
    except PannsError:
        return model_type
    if model_type is None:
        logger.info("%s is the published %s checkpoint; loading it as %s", name, named, named)
        return named
    if model_type != named:
        logger.warning("%s %s, but %s is the published name of the %s checkpoint: if the file is what its name "
                       "says, its weights run as %s give other outputs; drop %s or pass %s %s", flag, model_type, name,
                       named, model_type, flag, flag, named)
    return model_type
