"""The log-mel front-end settings, in one frozen dataclass used by the model registry, checkpoint
configs, the training config and every command line.

``FrontEnd()`` holds the official 32 kHz recipe (32000 Hz, 1024-sample window, 320-sample hop,
64 mel bins, 50-14000 Hz); ``FRONT_END_16K`` and ``FRONT_END_8K`` are the settings of the
``Cnn14_16k`` and ``Cnn14_8k`` models. :func:`add_frontend_args` adds the six flags to a parser;
:func:`FrontEnd.from_args` / :func:`frontend_overrides` read them back.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Dict, Optional, Union

import numpy as np

from panns import argtypes
from panns.errors import PannsError
from panns.filterbanks import fft_frequencies, mel_frequencies


@dataclass(frozen=True)
class FrontEnd:
    """STFT and mel settings: sample rate (Hz), window (n_fft) and hop (samples), mel bins, mel range (Hz)."""

    sample_rate: int = 32000
    window_size: int = 1024
    hop_size: int = 320
    mel_bins: int = 64
    fmin: int = 50
    fmax: int = 14000

    def to_dict(self) -> Dict[str, int]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Optional[int]) -> "FrontEnd":
        """A copy with the given (non-None) settings changed; unknown names are a PannsError."""
        bad = set(changes) - set(FRONTEND_KEYS)
        if bad:
            raise PannsError(f"unknown front-end setting(s) {sorted(bad)}; known: {', '.join(FRONTEND_KEYS)}")
        return dataclasses.replace(self, **{k: int(v) for k, v in changes.items() if v is not None})

    @classmethod
    def from_dict(cls, d: Dict[str, object], base: Optional["FrontEnd"] = None) -> "FrontEnd":
        """Settings from a dict (other keys ignored, None values keep ``base``'s value)."""
        return (base or cls()).replace(**{k: d[k] for k in FRONTEND_KEYS if d.get(k) is not None})

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: Optional["FrontEnd"] = None) -> "FrontEnd":
        """Settings from parsed flags (see add_frontend_args); flags left at None keep ``base``'s value."""
        return cls.from_dict(vars(args), base)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_size

    def frames(self, samples: int) -> int:
        """Frames the (centred) STFT gives for ``samples`` input samples."""
        return samples // self.hop_size + 1

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_dict().items())

    def check(self, prefix: str = "--") -> "FrontEnd":
        """Refuse settings no model can run (one line naming the setting): a value that is not a whole, finite
        number (a checkpoint's config is a plain dict, not typed by argparse: 'abc', NaN or 1024.5 crashed deep
        in the STFT or the resampler), a rate outside validate's range, non-positive window, hop or mel bins, a
        window past MAX_WINDOW (the STFT's DFT matrices alone would take gigabytes), and a mel range that is
        not 0 <= fmin < fmax <= sample_rate / 2 (above Nyquist the mel filters are empty).

        prefix: how a setting is named, after it: '--' for the flags (``--fmax``), '' for a saved config
        (``fmax``, the caller says whose). Returns self, or a copy with ints (32000.0 from a config is 32000)."""
        from panns import validate   # the one sample-rate rule of every front door

        flags = prefix == "--"
        whole = {key: whole_number(getattr(self, key), prefix + key) for key in FRONTEND_KEYS}
        fe = self if all(type(getattr(self, k)) is int for k in FRONTEND_KEYS) else dataclasses.replace(self, **whole)

        def n(key: str) -> str:
            return prefix + key

        sr = fe.sample_rate
        validate.sample_rate(sr, n("sample_rate"))
        for key in ("window_size", "hop_size", "mel_bins"):
            if getattr(fe, key) < 1:
                raise PannsError(f"{n(key)} must be >= 1 (got {getattr(fe, key)})")
        if fe.window_size > MAX_WINDOW:
            raise PannsError(f"{n('window_size')} {fe.window_size} is too large: at most {MAX_WINDOW} samples "
                             f"({MAX_WINDOW / sr:.2f} s at {sr} Hz)")
        if fe.fmin < 0:
            raise PannsError(f"{n('fmin')} must be >= 0 Hz (got {fe.fmin})")
        if fe.fmin >= fe.fmax:
            raise PannsError(f"{n('fmin')} {fe.fmin} must be below {n('fmax')} {fe.fmax}")
        if fe.fmax * 2 > sr:
            fix = f"; use {n('fmax')} <= {sr // 2}" if flags else ""
            raise PannsError(f"{n('fmax')} {fe.fmax} is above the Nyquist frequency of {n('sample_rate')} {sr} "
                             f"({sr // 2} Hz): those mel bands would be empty{fix}")
        empty = fe.empty_mel_bands()
        if empty:
            raise PannsError(fe._empty_bands_error(empty, prefix))
        return fe

    def empty_mel_bands(self) -> int:
        """How many rows of the model's mel filterbank (``filterbanks.mel_filterbank``, librosa's) are all
        zero: a band takes weight only from FFT bins strictly inside its span, mel points i to i + 2, so a
        band narrower than the FFT's bin spacing (a small window, many mel bins, a low fmin) can hold none.
        Such a bin is the log of ``amin`` in every frame: a constant the model trains on as if it were sound.
        Counted from the filterbank's own mel and FFT frequencies, not from its "Empty filters" warning. Settings
        must already satisfy 0 <= fmin < fmax <= sample_rate / 2 (``check``)."""
        bins = self.window_size // 2 + 1
        if self.mel_bins > 2 * bins:   # bands i and i + 2 share no bin: at most 2 * bins bands can hold one
            return self.mel_bins - 2 * bins   # a lower bound; no mel points worth computing for the rest
        edges = mel_frequencies(self.mel_bins + 2, self.fmin, self.fmax)
        fft = fft_frequencies(self.sample_rate, self.window_size)
        # FFT bins strictly above each band's lower edge and strictly below its upper edge
        inside = np.searchsorted(fft, edges[2:], side="left") - np.searchsorted(fft, edges[:-2], side="right")
        return int(np.count_nonzero(inside <= 0))

    def _empty_bands_error(self, empty: int, prefix: str) -> str:
        """The one line for settings that leave ``empty`` mel bands empty; with flags, the nearest settings that
        leave none: the smallest power-of-two window, else the most mel bins at this window."""
        def n(key: str) -> str:
            return f"{prefix}{key} {getattr(self, key)}"

        bins = self.window_size // 2 + 1
        count = f"at least {empty}" if self.mel_bins > 2 * bins else str(empty)
        line = (f"{n('window_size')} with {n('mel_bins')} ({n('fmin')} to {n('fmax')} Hz at {n('sample_rate')}) "
                f"leaves {count} of the {self.mel_bins} mel bands empty: the FFT's bins are "
                f"{self.sample_rate / self.window_size:.4g} Hz apart, wider than those bands")
        if prefix != "--":
            return line
        fixes = []
        window = 1 << self.window_size.bit_length()   # the next power of two (the official windows are)
        while window <= MAX_WINDOW and dataclasses.replace(self, window_size=window).empty_mel_bands():
            window *= 2
        if window <= MAX_WINDOW:
            fixes.append(f"--window_size {window}")
        mel_bins = min(self.mel_bins - 1, 2 * bins)
        while mel_bins >= 1 and dataclasses.replace(self, mel_bins=mel_bins).empty_mel_bands():
            mel_bins -= 1
        if mel_bins >= 1:
            fixes.append(f"--mel_bins {mel_bins}")
        return line + (f"; use {' or '.join(fixes)}" if fixes else f"; raise {prefix}fmax or lower {prefix}fmin")


def whole_number(value, name: str, minimum: Optional[int] = None) -> int:
    """``value`` as an int when it is a whole, finite number (32000 or 32000.0) of at least ``minimum``, else a
    PannsError naming it: a saved config is a plain dict, not typed by argparse."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value) or (minimum is not None and value < minimum):
        raise PannsError(f"{name} must be a whole number{'' if minimum is None else f' >= {minimum}'}, "
                         f"got {value!r}")
    return int(value)


FRONTEND_KEYS = tuple(f.name for f in dataclasses.fields(FrontEnd))
MAX_WINDOW = 8192   # samples (0.26 s at 32 kHz; the official windows are 256-1024): building its STFT takes ~3 GB
FRONT_END_32K = FrontEnd()
FRONT_END_16K = FrontEnd(16000, 512, 160, 64, 50, 8000)
FRONT_END_8K = FrontEnd(8000, 256, 80, 64, 50, 4000)

# The front ends of the model zoo, each with the first model that uses it: filled by models.py as it
# registers its classes, read by state_dicts to name the front end a checkpoint's mel matrix shows.
KNOWN: Dict[FrontEnd, str] = {}

_HELP = {"sample_rate": "sample rate the model runs at (Hz)", "window_size": "STFT window (n_fft, samples)",
         "hop_size": "STFT hop (samples)", "mel_bins": "number of mel bins",
         "fmin": "lowest mel frequency (Hz)", "fmax": "highest mel frequency (Hz)"}


def add_frontend_args(parser: Union[argparse.ArgumentParser, argparse._ArgumentGroup],
                      defaults: Optional[FrontEnd] = None) -> None:
    """Add --sample_rate --window_size --hop_size --mel_bins --fmin --fmax.

    defaults: the values the flags default to (training); None: every flag defaults to None,
    meaning "the checkpoint's setting" (inference), and the help names the official values.
    Each flag is a whole number (>= 1; fmin >= 0); how they fit together is :meth:`FrontEnd.check`."""
    for key in FRONTEND_KEYS:
        kind = argtypes.int_in(0 if key == "fmin" else 1)   # a zero rate or hop crashed deep in the STFT
        if defaults is None:
            text = f"{_HELP[key]} (default: the checkpoint's; official {getattr(FRONT_END_32K, key)})"
            parser.add_argument(f"--{key}", type=kind, default=None, help=text)
        else:
            parser.add_argument(f"--{key}", type=kind, default=getattr(defaults, key),
                                help=f"{_HELP[key]} (default: %(default)s)")


CHECKPOINT_FLAGS_TITLE = "model (front-end flags only for official checkpoints, which carry no config)"


def add_model_args(parser: argparse.ArgumentParser, title: str = CHECKPOINT_FLAGS_TITLE) -> argparse._ArgumentGroup:
    """The flags that name the model of a command that loads a checkpoint, as one group: the front-end flags
    (default: the checkpoint's), ``--model_type`` and ``--checkpoint_path`` (default: the official file of
    ``--model_type``). Returns the group, for a command's own model flags (e.g. inference's --backend)."""
    g = parser.add_argument_group(title)
    add_frontend_args(g)
    g.add_argument("--model_type", type=str, default=None,
                   help="model class (e.g. Cnn14); needed for official checkpoints that lost their published name "
                        "(Cnn14_mAP=0.431.pth says Cnn14) and without --checkpoint_path")
    g.add_argument("--checkpoint_path", type=str, default=None,
                   help="checkpoint file: an official one, a training run's <N>_iterations.pth or a fine-tune's "
                        "(default: the official pretrained file of --model_type, downloaded once into $PANNS_CACHE "
                        "or ~/.cache/panns)")
    return g


def frontend_overrides(args: argparse.Namespace) -> Dict[str, int]:
    """The front-end flags the user actually gave (not None), e.g. to check against a checkpoint."""
    return {k: int(getattr(args, k)) for k in FRONTEND_KEYS if getattr(args, k, None) is not None}
