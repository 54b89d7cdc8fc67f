"""Live audio: clip tags every hop and sound events reported once, from chunks of any size.

::

    s = panns.load("Cnn14_DecisionLevelMax").stream(hop_seconds=1.0, window_seconds=10.0)
    for chunk in source:                        # any length, rate and channel count
        for item in s.push(chunk, 44100):       # what became known with this chunk
            print(item)   # {"time": 3.0, "tags": [("Speech", 0.91), ...]}
                          # {"event": "Speech", "onset": 0.52, "offset": 2.31, "score": 0.97, "index": 0}
    s.close()                                   # the rest: a last partial hop, events still open
    s.stats()                                   # {"real_time_factor": ..., "latency_seconds": ..., ...}

How (every step depends on sample positions of the resampled stream, never on chunk edges, so any
chunking gives the same items):

* chunks are downmixed (channel mean, as ``audio_io.to_mono``) and, at another rate than the
  model's, resampled by one soxr stream (the HQ quality ``audio_io.resample`` uses) fed in blocks of
  exactly 10 ms of input, so the resampler sees the same calls whatever the chunking;
* every ``hop`` samples a window ending there (``window`` samples; the whole stream so far while it
  is shorter) runs through the shared :class:`runtime.Runtime` alone (batch 1: a batch's shape can
  change a forward's rounding) and its clip-level output gives the tags of that hop;
* SED models: a frame is final once it lies ``lookahead`` samples before a window's right edge; it
  takes the values of the first window that puts it there (each frame comes from exactly one
  window) and goes, in order, to the same :class:`postprocess.EventTracker` offline sound event
  detection uses, so an event is reported once, when its end is final;
* :meth:`Stream.close` runs a last window ending at the end of the stream (when the end is not a
  hop), finalises the remaining frames and closes open events as offline detection does.

Accounting: ``compute`` is the wall time spent inside push/close; a reported item's delay is the
time its call finishes on a live clock (a chunk arrives when its last sample was recorded, i.e. at
the stream position, and waits for the previous call) minus the item's time (a hop's window end, a
final frame's centre): the delay a live source would see, whatever speed the audio is fed at.

The ``stream`` sub-command of ``pytorch/inference.py`` (:func:`add_arguments`, :func:`run`) prints
the items as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import soxr

from panns import audio_io
from panns import runtime
from panns import validate
from panns.validate import as_given
from panns.errors import AudioDecodeError, PannsError
from panns.frontend import frontend_overrides
from panns.postprocess import DEFAULT_MIN_DURATION, DEFAULT_THRESHOLD, Event, EventTracker, top_indexes
from panns.runtime import Runtime

logger = logging.getLogger(__name__)

Item = dict   # {"time", "tags"} per hop, {"event", "onset", "offset", "score", "index"} per event


# ----------------------------------------------------------------------------- input side
# More channels than this and than samples: a (channels, samples) chunk, not a block of a multichannel
# interface's frames (which may be shorter than its channel count: 64-channel MADI gives (10, 64) blocks)
MAX_CHUNK_CHANNELS = 256
# Up to MAX_CHUNK_CHANNELS, a (channels, samples) chunk of few samples - stereo 10-ms frames (2, 160) - cannot be told
# from a block of a many-channel interface by its shape: it is taken as channels-last (C samples of N channels). A
# stream keeps the channel count of its first chunk and refuses another (the frames' last, shorter chunk gives it away,
# and no interface changes its channel count mid-stream), and says once, as a warning, when a chunk has more than this
# many channels and fewer samples than channels, which is how a (channels, samples) chunk is usually read.
WARN_CHUNK_CHANNELS = 8


def as_mono(samples, sample_rate: Optional[int] = None, start_seconds: Optional[float] = None) -> np.ndarray:
    """One chunk -> mono float32 (n,). Accepts (n,) or (n, channels) (soundfile's and sounddevice's
    layout) arrays or tensors; dtypes as every front door takes them (``validate.as_float``: integer PCM
    scaled as soundfile reads it) and non-finite samples refused, named by their time in the stream
    when ``start_seconds`` (the chunk's start) and ``sample_rate`` are given. Channels are always last
    here: a chunk may be shorter than its channel count, so the layout is not guessed from the shape; only
    more than MAX_CHUNK_CHANNELS channels in fewer samples, a (channels, samples) array, is refused (a
    stream also keeps one channel count: :meth:`Stream._check_layout`)."""
    x = validate.as_float(samples, "audio chunk")
    if x.ndim == 2 and x.shape[1] > max(x.shape[0], MAX_CHUNK_CHANNELS):
        # (2, n) from torchaudio.load / librosa mono=False was averaged over n "channels" into 2 samples
        raise PannsError(f"audio chunk of shape {tuple(x.shape)} reads as {x.shape[0]} sample(s) of {x.shape[1]} "
                         "channels; chunks are (samples,) or (samples, channels): pass chunk.T for a (channels, "
                         "samples) array")
    if x.ndim == 2 and x.shape[1] == 0:   # x[:, 0] below was an IndexError traceback
        raise PannsError(f"audio chunk of shape {tuple(x.shape)} has no channels; chunks are (samples,) or "
                         "(samples, channels)")
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    elif x.ndim != 1:
        raise PannsError(f"audio chunks must be (samples,) or (samples, channels), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    validate.check_finite(x, "audio chunk", sample_rate, start_seconds)
    return x


class ChunkResampler:
    """Mono float32 chunks at ``rate`` -> samples at ``target``, identical for any chunking.

    One soxr stream (``audio_io.resample``'s HQ quality) is fed in blocks of exactly ``rate // 100``
    input samples; the remainder waits for the next chunk, or for :meth:`flush` at the end. soxr's
    stream matched its one-shot output on every chunking tried, but the fixed blocks make the
    equality hold by construction, at the cost of at most 10 ms of delay."""

    def __init__(self, rate: int, target: int):
        self.rate, self.target = int(rate), int(target)
        self.block = max(1, self.rate // 100)
        self._pending = np.zeros(0, np.float32)
        self._soxr = None if self.rate == self.target else soxr.ResampleStream(
            self.rate, self.target, 1, dtype="float32", quality="HQ")

    def feed(self, x: np.ndarray) -> np.ndarray:
        """(n,) float32 at ``rate`` -> the samples at ``target`` that became available."""
        if self._soxr is None:
            return x
        x = np.concatenate([self._pending, x]) if len(self._pending) else x
        full = len(x) // self.block * self.block
        out = [self._soxr.resample_chunk(x[s:s + self.block], last=False) for s in range(0, full, self.block)]
        self._pending = x[full:].copy()
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """The rest at the end of the stream (the resampler's tail included)."""
        if self._soxr is None:
            return np.zeros(0, np.float32)
        out = self._soxr.resample_chunk(self._pending, last=True)
        self._pending = np.zeros(0, np.float32)
        return np.asarray(out, dtype=np.float32)


def _to_grid(seconds: float, sample_rate: int, step: int) -> int:
    """Seconds (checked by :func:`check_options`) -> samples, a whole number of model hops (frames stay
    on one grid); at least one."""
    return max(step, int(round(seconds * sample_rate)) // step * step)


# ----------------------------------------------------------------------------- the stream
# Defaults of the options that act on frames and events only (SED models); None in the signatures and
# the parser means "not given", so that one given with a clip-level model can be refused (check_event_options).
DEFAULT_LOOKAHEAD_SECONDS = 1.0   # threshold and min_duration: postprocess's, as offline detection


# The longest a window may be, and so the hop and look-ahead inside it: each window is one forward of the model,
# and no command runs a longer input in one forward (inference windows recordings over this; one forward of an
# hour needs tens of GB). A chunk too is read whole in one call before it is pushed (1e300 s overflowed there).
MAX_SECONDS = runtime.AUTO_WINDOW_SECONDS


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _seconds(value, name: str, why: str, zero: bool = False) -> float:
    """A number of seconds: finite, > 0 (>= 0 with ``zero``), at most MAX_SECONDS (``why`` says why)."""
    v, finite = math.nan, False
    if _is_number(value):
        try:
            v = float(value)
            finite = math.isfinite(v)
        except OverflowError:   # finite, but too large for a float (10 ** 400): over the maximum
            v, finite = (math.inf if value > 0 else -math.inf), True
    if not finite or (v < 0 if zero else v <= 0):
        raise PannsError(f"{name} must be {'0 or more' if zero else 'a positive number of'} seconds, got "
                         f"{as_given(value)}")
    if v > MAX_SECONDS:
        raise PannsError(f"{name} {as_given(value)} is over {MAX_SECONDS:g} s: {why}")
    return v


def check_options(hop_seconds, window_seconds, lookahead_seconds=None, chunk_seconds=None, prefix: str = "") -> None:
    """The checks of :class:`Stream`'s seconds that need no model, which the ``stream`` sub-command runs
    before anything loads (with ``chunk_seconds``, its own flag): each a finite number, > 0 (the look-ahead
    >= 0; None: not given), at most MAX_SECONDS; the window no shorter than the hop. ``prefix``: '--' on
    the command line. The checks that need the model are in :func:`check_model_options`."""
    window = (f"each hop's window is one forward of the model, and nothing here runs more than {MAX_SECONDS:g} s "
              "in one forward (one of an hour of audio needs tens of GB)")
    hop = _seconds(hop_seconds, prefix + "hop_seconds", f"a hop must fit in the window, of at most {MAX_SECONDS:g} s")
    win = _seconds(window_seconds, prefix + "window_seconds", window)
    if lookahead_seconds is not None:
        _seconds(lookahead_seconds, prefix + "lookahead_seconds",
                 f"the look-ahead must fit in the window, of at most {MAX_SECONDS:g} s", zero=True)
    if chunk_seconds is not None:
        _seconds(chunk_seconds, prefix + "chunk_seconds", "a chunk is read whole before it is pushed, and it sets "
                 "only how often the stream is fed, not what the model sees (the window): a second or less is usual")
    if win < hop:
        raise PannsError(f"{prefix}window_seconds ({as_given(window_seconds)}) must be at least {prefix}hop_seconds "
                         f"({as_given(hop_seconds)})")


def check_event_options(config, lookahead_seconds: Optional[float] = None, threshold: Optional[float] = None,
                        min_duration: Optional[float] = None, prefix: str = "") -> None:
    """The one rule for :class:`Stream` (``panns.load(...).stream``) and the ``stream`` sub-command:
    ``lookahead_seconds``, ``threshold`` and ``min_duration`` act on framewise output and events, so
    given (None: not given; a default is not an option given, as in ``runtime.check_window_options``)
    with a clip-level model they would change nothing: refused in one line naming them. ``config``:
    the checkpoint's (known before a backend is made); ``prefix``: '--' on the command line."""
    given = [(name, value) for name, value in (("lookahead_seconds", lookahead_seconds), ("threshold", threshold),
                                               ("min_duration", min_duration)) if value is not None]
    if not given or runtime.config_is_sed(config):
        return
    named = " and ".join(f"{prefix}{name} {as_given(value)}" for name, value in given)
    one = len(given) == 1
    raise PannsError(f"{named} {'has' if one else 'have'} no effect with {config.model_type}: a clip-level model has "
                     "no framewise output, so its stream reports tags per hop and no events (look-ahead, threshold "
                     f"and minimum duration act on frames and events); drop {'it' if one else 'them'} or stream a "
                     "decision-level model such as Cnn14_DecisionLevelMax")


def check_model_options(config, min_samples: int, hop_seconds: float, window_seconds: float,
                        lookahead_seconds: Optional[float] = None, threshold: Optional[float] = None,
                        min_duration: Optional[float] = None, prefix: str = "") -> Tuple[int, int, int]:
    """The checks that need the model, after :func:`check_options`: known from the checkpoint's ``config``
    and the model's shortest input ``min_samples`` alone, so the ``stream`` sub-command runs them before a
    backend is made (auto may export and calibrate). Event options with a clip-level model
    (:func:`check_event_options`); a window shorter than the shortest input (it ran mostly zero padding
    every hop, as segment_seconds once did); for SED models, a look-ahead (default
    DEFAULT_LOOKAHEAD_SECONDS) and hop that do not fit in the window. Returns (hop, window, look-ahead)
    in samples, on the model's hop grid."""
    check_event_options(config, lookahead_seconds, threshold, min_duration, prefix)
    sr, h = int(config.sample_rate), int(config.hop_size)
    hop, window = _to_grid(hop_seconds, sr, h), _to_grid(window_seconds, sr, h)
    if window < min_samples:
        need = -(-min_samples // h) * h / sr   # the shortest window on the grid that holds it
        raise PannsError(f"{prefix}window_seconds {as_given(window_seconds)} is shorter than the shortest input "
                         f"{config.model_type} runs on ({min_samples} samples at {sr} Hz); use at least {need:g} "
                         "seconds")
    ahead = DEFAULT_LOOKAHEAD_SECONDS if lookahead_seconds is None else lookahead_seconds
    lookahead = int(round(ahead * sr)) // h * h
    if runtime.config_is_sed(config) and lookahead + hop > window:
        # a frame must still be inside the first window that puts it `lookahead` before the edge
        raise PannsError(f"{prefix}lookahead_seconds + {prefix}hop_seconds ({as_given(ahead)} + "
                         f"{as_given(hop_seconds)}) must not exceed {prefix}window_seconds "
                         f"({as_given(window_seconds)})")
    return hop, window, lookahead


class Stream:
    """Tags every hop and events once each, from audio pushed in chunks (see the module docstring).

    rt: the shared runtime the model runs through. labels: class names (rt.classes_num of them).
    hop_seconds: how often a window runs and tags are reported. window_seconds: the window's
    length (the model's context). top_k: tags per hop. SED models only (None: the default; given
    with a clip-level model, refused by :func:`check_event_options`): lookahead_seconds (default
    1.0), how far before a window's right edge a frame must lie to be final (lookahead + hop must
    fit in the window); threshold (0.5), min_duration (0.0): the event post-processing of offline
    sound event detection. Hop, window and look-ahead are rounded to the model's hop (10 ms for the
    32-kHz models); none may exceed MAX_SECONDS (600), and the window must hold the model's shortest
    input (:func:`check_options`, :func:`check_model_options`). prefix: '--' when the options come
    from the command line (messages name the flags)."""

    def __init__(self, rt: Runtime, labels: Sequence[str], hop_seconds: float = 1.0, window_seconds: float = 10.0,
                 lookahead_seconds: Optional[float] = None, top_k: int = 10, threshold: Optional[float] = None,
                 min_duration: Optional[float] = None, prefix: str = ""):
        if len(labels) != rt.classes_num:
            raise PannsError(f"the model has {rt.classes_num} classes but {len(labels)} labels were given")
        top_k = validate.positive_int(top_k, prefix + "top_k")   # 2.5 was truncated, '3' a TypeError
        validate.options(threshold_=threshold, min_duration=min_duration, prefix=prefix)
        check_options(hop_seconds, window_seconds, lookahead_seconds, prefix=prefix)
        self.hop, self.window, self.lookahead = check_model_options(
            rt.config, rt.min_samples, hop_seconds, window_seconds, lookahead_seconds, threshold, min_duration, prefix)
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        min_duration = DEFAULT_MIN_DURATION if min_duration is None else min_duration
        sr, h = rt.sample_rate, rt.hop_size
        self.rt, self.labels, self.top_k = rt, list(labels), int(top_k)
        self.tracker = EventTracker(self.labels, sr / h, threshold, min_duration)
        self._resampler: Optional[ChunkResampler] = None
        self._layout: Optional[Tuple[int, Tuple[int, ...]]] = None   # (channels, shape) of the first chunk taken
        self._warned_layout = False
        self._buf = np.zeros(0, np.float32)   # resampled samples from _buf_start on
        self._buf_start = 0
        self._total = 0                       # resampled samples received
        self._next_end = self.hop             # right edge of the next window
        self._last_end = 0                    # right edge of the last window run (0: none yet)
        self._last_fw: Optional[Tuple[int, np.ndarray]] = None   # (first frame, (frames, classes)) of it
        self._done = 0                        # frames final so far
        self._closed = False
        self._received = 0.0                  # seconds of input received
        self._compute = 0.0                   # wall seconds inside push/close
        self._cpu = 0.0                       # CPU seconds of this process (all threads) inside them
        self._latency = 0.0
        self._clock = 0.0                     # live-clock seconds at which the last call finished
        self._windows = 0
        self._times: List[float] = []         # item times of the current call, for the latency

    # -- facts ----------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.rt.sample_rate

    @property
    def seconds(self) -> float:
        """Seconds of (resampled) audio received so far."""
        return self._total / self.rt.sample_rate

    def stats(self) -> dict:
        """real_time_factor (compute seconds per second of audio), latency_seconds (the worst delay
        from a tag's window end or a final frame's time to its report), audio_seconds,
        compute_seconds, cpu_seconds (the process's CPU time inside push/close, all threads: on a
        shared machine wall time also counts other jobs' turns), windows (forwards run), backend."""
        return {"real_time_factor": self._compute / self._received if self._received else 0.0,
                "latency_seconds": self._latency, "audio_seconds": self._received,
                "compute_seconds": self._compute, "cpu_seconds": self._cpu, "windows": self._windows,
                "backend": self.rt.backend_name}

    # -- input ----------------------------------------------------------------------------------
    def push(self, samples, sample_rate: Optional[int] = None) -> List[Item]:
        """Add a chunk ((n,) or (n, channels) array or tensor at ``sample_rate``, default the model's;
        the rate cannot change within a stream) and return the items it made known: per hop
        ``{"time": window end in seconds, "tags": [(label, probability), ...]}`` (top_k, most
        probable first), then, for SED models, ``{"event", "onset", "offset", "score", "index"}`` per
        event whose end became final. Every chunk has the channel count of the first one."""
        self._check_open()
        # validate's rule, as every front door: 44.1 (kHz for Hz) ran as 44 Hz, 22050.5 as 22050
        rate = self.rt.sample_rate if sample_rate is None else validate.sample_rate(sample_rate)
        return self._push(samples, rate)

    def _push(self, samples, rate: int) -> List[Item]:
        """:meth:`push` at a rate that needs no check: the ``stream`` command's, a decoded file's own rate (which
        may be outside validate's range, e.g. a 100-Hz file, that offline tagging resamples: validate's range is
        there to catch kHz or seconds given for Hz, which a file header does not do) or a --sample_rate checked."""
        t0 = (time.perf_counter(), time.process_time())
        self._check_open()
        if self._resampler is not None and rate != self._resampler.rate:
            raise PannsError(f"sample rate changed within the stream ({self._resampler.rate} -> {rate} Hz); "
                             "start a new stream")
        arr = validate.as_float(samples, "audio chunk")
        x = as_mono(arr, rate, self._received)   # NaN named by its time in the stream, not in the chunk
        self._check_layout(arr.shape)
        if self._resampler is None:   # only once a chunk is taken: a refused first chunk fixed the rate
            self._resampler = ChunkResampler(rate, self.rt.sample_rate)
        self._received += len(x) / rate
        self._append(self._resampler.feed(x))
        items = self._advance()
        self._account(t0)
        return items

    def _check_open(self) -> None:
        if self._closed:
            raise PannsError("push() after close(): start a new stream")

    def _check_layout(self, shape: Tuple[int, ...]) -> None:
        """Every chunk with samples has the first one's channel count ((n,) is one channel, as (n, 1)), so a
        (channels, samples) chunk read as samples of channels shows itself when its length changes (see
        WARN_CHUNK_CHANNELS); said once, as a warning, when the channels outnumber the samples. Called only once
        a chunk passed every other check, so a refused chunk fixes nothing."""
        if not shape[0]:   # no samples: no layout to compare, (0,) after stereo chunks is fine
            return
        channels = shape[1] if len(shape) == 2 else 1
        if self._layout is None:
            self._layout = (channels, shape)
        elif channels != self._layout[0]:
            raise PannsError(f"audio chunk of shape {shape} has {channels} channel(s), the stream's first chunk "
                             f"{self._layout[1]} had {self._layout[0]}; chunks are (samples,) or (samples, channels) "
                             "with one channel count per stream: pass chunk.T for a (channels, samples) array")
        if channels > max(shape[0], WARN_CHUNK_CHANNELS) and not self._warned_layout:
            self._warned_layout = True
            logger.warning("audio chunk of shape %s reads as %d sample(s) of %d channels (chunks are (samples,) or "
                           "(samples, channels)); if it is (channels, samples), pass chunk.T", shape, shape[0],
                           channels)

    def close(self) -> List[Item]:
        """End of stream: a last window ending at the end (when the end is not a hop edge; also for a
        stream shorter than one hop), the remaining frames, and the events still open (offsets
        clipped to the stream's length, as offline). Items as :meth:`push`; [] for an empty stream."""
        t0 = (time.perf_counter(), time.process_time())
        if self._closed:
            return []
        self._closed = True
        if self._resampler is not None:
            self._append(self._resampler.flush())
        items = self._advance()
        if self._total == 0:
            self._account(t0)
            return items
        h = self.rt.hop_size
        if self._total > self._last_end:
            start = max(0, (self._total - self.window) // h * h)   # on the frame grid, like the hops
            items += self._run_window(start, self._total, final=True)
        elif self._last_fw is not None:
            items += self._finalise(self._total // h + 1)
        items += [self._event_item(e) for e in self.tracker.events(self._total / self.rt.sample_rate)]
        self._account(t0)
        return items

    # -- work -----------------------------------------------------------------------------------
    def _append(self, y: np.ndarray) -> None:
        if len(y):
            # a copy even when the buffer is empty: y may be the caller's array, which it may reuse
            self._buf = np.concatenate([self._buf, y]) if len(self._buf) else y.copy()
            self._total += len(y)

    def _advance(self) -> List[Item]:
        """Run every window whose right edge has been reached."""
        items: List[Item] = []
        while self._next_end <= self._total:
            end = self._next_end
            items += self._run_window(max(0, end - self.window), end)
            self._next_end += self.hop
        return items

    def _run_window(self, start: int, end: int, final: bool = False) -> List[Item]:
        """Forward samples [start, end): the tags of this hop, and the frames it makes final."""
        x = self._buf[start - self._buf_start:end - self._buf_start]
        out = self.rt.forward(x)
        self._windows += 1
        self._last_end = end
        # later windows start at or after this one (the final one too: its start is >= end - window)
        self._buf, self._buf_start = self._buf[start - self._buf_start:], start
        probs = out["clipwise_output"][0]
        sr, h = self.rt.sample_rate, self.rt.hop_size
        items: List[Item] = [{"time": end / sr,
                              "tags": [(self.labels[i], float(probs[i])) for i in top_indexes(probs, self.top_k)]}]
        self._times.append(end / sr)
        fw = out.get("framewise_output")
        if fw is not None:
            self._last_fw = (start // h, fw[0])
            upto = end // h + 1 if final else (end - self.lookahead) // h + 1
            items += self._finalise(upto)
        return items

    def _finalise(self, upto: int) -> List[Item]:
        """Frames [done, upto) from the last window go to the event tracker; the events they end."""
        if upto <= self._done or self._last_fw is None:
            return []
        f0, fw = self._last_fw
        if self._done < f0:   # cannot happen while lookahead + hop <= window (checked in __init__)
            raise PannsError(f"frame {self._done} is outside the window starting at frame {f0}")
        self.tracker.update(fw[self._done - f0:upto - f0])
        self._times.append(self._done * self.rt.hop_size / self.rt.sample_rate)   # the oldest frame made final
        self._done = upto
        return [self._event_item(e) for e in self.tracker.closed()]

    @staticmethod
    def _event_item(e: Event) -> Item:
        return {"event": e.label, "onset": float(e.onset), "offset": float(e.offset), "score": float(e.score),
                "index": int(e.index)}

    def _account(self, t0: Tuple[float, float]) -> None:
        """Add this call's compute; the delays of its items on a live clock: the chunk arrives when its
        last sample was recorded (the stream position) and is processed once the previous call is done
        (a model slower than real time falls further behind with every chunk)."""
        spent = time.perf_counter() - t0[0]
        self._compute += spent
        self._cpu += time.process_time() - t0[1]
        self._clock = max(self._clock, self._received) + spent
        for t in self._times:
            self._latency = max(self._latency, self._clock - t)
        self._times = []


# ----------------------------------------------------------------------------- command line
class _OneSource(argparse.Action):
    """``--audio_path`` of ``stream``: one value, given once (a second is an argparse error, not the last kept)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"stream takes one --audio_path (a file, a URL or -); got {getattr(namespace, self.dest)} "
                         f"and {values}")
        setattr(namespace, self.dest, values)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of the ``stream`` sub-command beyond the shared inference ones."""
    # The shared --audio_path is required; here --microphone replaces it. The shared front-end flag
    # --sample_rate names the rate of the raw PCM on stdin / of the microphone (the model's rate is
    # the checkpoint's; the stream resamples).
    shared = p._option_string_actions   # the flags _add_common added (argparse has no public handle on them)
    # One source, one value: the shared --audio_path takes several (nargs '+', extending a list); here it
    # takes one, in place (--help shows one AUDIO_PATH; argparse refuses a second value, _OneSource a
    # repeated flag; args.audio_path is that one string, or None).
    source = shared["--audio_path"]
    source.__class__ = _OneSource
    source.nargs, source.required, source.default = None, False, None
    source.help = (
        "one source: an audio file or URL (any format ffmpeg reads), or - for stdin: a WAV stream (its header "
        "gives rate, channels and sample format) or raw 16-bit little-endian mono PCM at --sample_rate")
    shared["--batch_size"].help = "not taken: a stream runs one window at a time (batch 1); refused if given"
    p.set_defaults(batch_size=None)   # so that a --batch_size given is told apart, and refused in run
    shared["--sample_rate"].help = (
        "sample rate of the raw PCM on stdin (--audio_path -) and of the microphone (default: the model's); "
        "refused with a file or URL, which carry their own")
    p.add_argument("--chunk_seconds", type=float, default=0.1,
                   help=f"audio read (or recorded) per push (default: %(default)s; at most {MAX_SECONDS:g})")
    p.add_argument("--hop_seconds", type=float, default=1.0,
                   help="tags (and newly final frames) every this many seconds (default: %(default)s; at most "
                        "--window_seconds)")
    p.add_argument("--window_seconds", type=float, default=10.0,
                   help="seconds of audio each hop's window sees (default: %(default)s; at most "
                        f"{MAX_SECONDS:g}, the longest input run in one forward)")
    # The three SED-only flags default to None ("not given") so that one given with a clip-level model is
    # refused (check_event_options); the Stream fills in the defaults the help names.
    p.add_argument("--lookahead_seconds", type=float, default=None,
                   help="SED models: a frame is final this far before a window's right edge (default: "
                        f"{DEFAULT_LOOKAHEAD_SECONDS}; refused with a clip-level model)")
    p.add_argument("--top_k", type=int, default=10, help="tags per hop (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None,
                   help="SED models: framewise probability at or above which a class is active (default: "
                        f"{DEFAULT_THRESHOLD}; refused with a clip-level model)")
    p.add_argument("--min_duration", type=float, default=None,
                   help="SED models: drop events shorter than this many seconds (default: "
                        f"{DEFAULT_MIN_DURATION}; refused with a clip-level model)")
    p.add_argument("--class_labels_csv", type=str, default=None,
                   help="label CSV when the checkpoint carries no labels (default: the repository's AudioSet list)")
    p.add_argument("--microphone", action="store_true",
                   help="stream the default input device instead of --audio_path (needs the sounddevice package; "
                        "stop with Ctrl-C)")
    p.set_defaults(segment_seconds=None)


def run(args) -> int:
    """Stream one source through the model, printing JSON lines: tags per hop, events once each, and
    a last line with the real-time factor and the latency."""
    # every flag before anything loads (auto may export and calibrate, writing the cache)
    check_options(args.hop_seconds, args.window_seconds, args.lookahead_seconds, args.chunk_seconds, prefix="--")
    if args.batch_size is not None:
        raise PannsError(f"--batch_size {args.batch_size} has no effect on a stream: it runs one window per hop")
    # one path (the parser's _OneSource); a list from a caller that built args by other means is taken too
    given = args.audio_path
    paths = [given] if isinstance(given, str) else list(given or [])
    if args.microphone == bool(paths):
        raise PannsError("give one --audio_path (a file, a URL or -) or --microphone")
    if len(paths) > 1:
        raise PannsError(f"stream takes one --audio_path, got {len(paths)}")
    source = None if args.microphone else paths[0]
    if source is None:
        _sounddevice()   # before the model loads: a missing package is one line, at once
    if source == "-":
        _stdin_buffer()   # likewise: stdin closed (<&-) was an AttributeError traceback once the model had loaded
    pcm_rate = args.sample_rate
    args.sample_rate = None   # see add_arguments: not a front-end setting here
    if pcm_rate is not None:   # push()'s rule (Stream checks it too, under the API's name), before the model loads
        validate.sample_rate(pcm_rate, "--sample_rate")
    if pcm_rate is not None and source not in (None, "-"):
        # it would be ignored: a file or URL is decoded at its own rate (the model's rate is the checkpoint's)
        raise PannsError(f"--sample_rate {pcm_rate} applies only to raw PCM on stdin (--audio_path -) and to "
                         f"--microphone; {source} carries its own rate: drop --sample_rate")
    if source not in (None, "-") and "://" not in source and not os.path.isfile(source):
        raise AudioDecodeError(f"stream takes one audio file, URL or -, got a folder: {source}"
                               if os.path.isdir(source) else f"audio file not found: {source}")
    model, cfg, checkpoint_path = runtime.load_model(args.checkpoint_path, args.model_type,
                                                     frontend_overrides(args) or None)
    # before the backend is made (auto may calibrate or export): the checks that need the model (SED-only flags
    # with a clip-level model, a window shorter than the model's shortest input, a look-ahead outside the window)
    check_model_options(cfg, runtime.model_min_samples(cfg, model), args.hop_seconds, args.window_seconds,
                        args.lookahead_seconds, args.threshold, args.min_duration, prefix="--")
    rt = Runtime(model, cfg, device=bool(args.cuda), precision=args.precision, backend=args.backend,
                 checkpoint_path=checkpoint_path, **_auto_options(args, source))
    labels = runtime.resolve_labels(rt.config, args.class_labels_csv)[0]
    stream = Stream(rt, labels, args.hop_seconds, args.window_seconds, args.lookahead_seconds,
                    min(args.top_k, len(labels)), args.threshold, args.min_duration, prefix="--")
    chunks = _microphone(pcm_rate or rt.sample_rate, args.chunk_seconds) if source is None else \
        _read_source(source, args.chunk_seconds, pcm_rate or rt.sample_rate, pcm_rate)
    out = sys.stdout
    try:
        for chunk, rate in chunks:
            # _push: the rate is a file's own (which may be under validate's 1000 Hz: offline tagging resamples
            # a 100-Hz file, so does this) or --sample_rate, checked above
            _print_items(out, stream._push(chunk, rate))
    except KeyboardInterrupt:   # the way a microphone stream ends
        logger.info("interrupted: closing the stream")
    _print_items(out, stream.close())
    if stream.seconds == 0:
        raise AudioDecodeError(f"no audio samples in {source or 'the microphone input'}")
    stats = stream.stats()
    for key, digits in (("real_time_factor", 4), ("latency_seconds", 3), ("audio_seconds", 3), ("compute_seconds", 3),
                        ("cpu_seconds", 3)):
        stats[key] = round(stats[key], digits)
    print(json.dumps(stats), file=out, flush=True)
    return 0


def _auto_options(args, source: Optional[str]) -> dict:
    """Backend ``auto`` weighs the job: a file's length times the windows each second of it runs
    (window / hop), its log line saying both; a live source, or a file whose header gives no length,
    has no known length (None: auto's long-running choice), and its log line says which it is."""
    if args.backend != "auto":
        return {}
    if source is None:
        return {"unknown_job": "the microphone is a stream of unknown length"}
    if source == "-":
        return {"unknown_job": "stdin is a stream of unknown length"}
    if "://" in source:
        return {"unknown_job": "a URL is read as a stream of unknown length"}
    seconds = audio_io.probe_seconds(source)
    if seconds is None:
        return {"unknown_job": f"the length of {os.path.basename(source)} is not in its header"}
    per_second = max(1.0, args.window_seconds / args.hop_seconds)
    text = runtime.seconds_text(seconds) + " of audio"
    if per_second > 1.0:
        text += (f" in {args.window_seconds:g}-s windows every {args.hop_seconds:g} s "
                 f"({runtime.seconds_text(seconds * per_second)} of model input)")
    return {"job_seconds": runtime.JobSize(seconds * per_second, text)}


def json_line(item: Item) -> str:
    """One output line: tags with probabilities to 6 decimals, events as offline (3 / 4 decimals)."""
    if "tags" in item:
        return json.dumps({"time": round(item["time"], 3), "tags": [[lb, round(p, 6)] for lb, p in item["tags"]]})
    return json.dumps({"event": item["event"], "onset": round(item["onset"], 3), "offset": round(item["offset"], 3),
                       "score": round(item["score"], 4), "index": item["index"]})


def _print_items(out: IO[str], items: List[Item]) -> None:
    for item in items:
        out.write(json_line(item) + "\n")
    if items:
        out.flush()


def _read_source(source: str, chunk_seconds: float, pcm_rate: int,
                 rate_given: Optional[int] = None) -> Iterator[Tuple[np.ndarray, int]]:
    """(chunk, rate) pairs of ``chunk_seconds`` from stdin ('-': a WAV stream, else s16le mono at
    ``pcm_rate``), a file soundfile reads, or anything else through ffmpeg (other formats, URLs).
    ``rate_given``: --sample_rate as the user gave it (None: not given), checked against a WAV header."""
    if source == "-":
        yield from _stdin_chunks(_stdin_buffer(), pcm_rate, chunk_seconds, rate_given)
        return
    if "://" not in source:
        try:
            f = sf.SoundFile(source)
        except Exception:
            f = None
        if f is not None:
            yield from _soundfile_chunks(f, source, chunk_seconds)
            return
    yield from _ffmpeg_chunks(source, chunk_seconds)


def _stdin_buffer() -> IO[bytes]:
    """Stdin's bytes, or one line when there is no stdin (``<&-`` leaves sys.stdin None)."""
    buffer = getattr(sys.stdin, "buffer", None) if sys.stdin is not None else None
    if buffer is None:
        raise PannsError("stdin is closed: --audio_path - reads the audio from stdin; pipe it in (e.g. arecord -f "
                         "S16_LE -r 32000 -c 1 | ...) or give the file itself")
    return buffer


def _soundfile_chunks(f: sf.SoundFile, source: str, chunk_seconds: float) -> Iterator[Tuple[np.ndarray, int]]:
    """A file soundfile opened, ``chunk_seconds`` at a time, with the outcome of offline decoding
    (``audio_io.read_audio``): a file that fails part-way (a cut FLAC: 'flac decoder lost sync', a traceback
    here before) goes on through ffmpeg from the first sample not yet given (offline decodes the whole file
    with ffmpeg then; lossless, its samples up to there are soundfile's), and a file shorter than its header
    says is a logged warning, as offline. Without ffmpeg, the failure is one line after the chunks given."""
    done, failure, rate = 0, None, int(f.samplerate)
    with f:
        declared = audio_io.declared_frames(f)
        try:
            for block in f.blocks(blocksize=max(1, int(round(chunk_seconds * rate))), dtype="float32",
                                  always_2d=True):
                done += len(block)
                yield block, rate
        except audio_io.SOUNDFILE_ERRORS as e:
            failure = e
            declared = int(f.frames) if audio_io.cut_short(e) else None   # as read_audio
    if failure is not None:
        if audio_io.ffmpeg_exe() is None:
            raise AudioDecodeError(f"cannot decode {source}: {failure} after {done / rate:.2f} s (the rest needs "
                                   "ffmpeg: pip install imageio-ffmpeg)")
        for block, r in _ffmpeg_chunks(source, chunk_seconds, skip=done):
            if r != rate:   # not seen: ffmpeg decodes at the file's own rate
                raise AudioDecodeError(f"cannot decode {source}: soundfile read it at {rate} Hz, ffmpeg at {r} Hz")
            done += len(block)
            yield block, rate
    if declared is not None and done < declared:
        logger.warning("%s; using what is there", audio_io.TruncatedAudioError(source, declared / rate, done / rate))


# Containers that are neither WAV nor raw PCM, by their first bytes: read as PCM they are loud noise.
# RIFX is big-endian WAV; 'riff' opens Sony Wave64 (a GUID follows); MP4/M4A has 'ftyp' after its box size.
_OTHER_FORMATS = ((b"fLaC", "FLAC"), (b"OggS", "Ogg"), (b"ID3", "MP3"), (b"\x1aE\xdf\xa3", "Matroska/WebM"),
                  (b"FORM", "AIFF"), (b".snd", "AU"), (b"RIFX", "big-endian WAV (RIFX)"), (b"riff", "Wave64"),
                  (b"caff", "CAF"))


def _container(head: bytes) -> Optional[str]:
    """The container ``head`` (a stream's first 12 bytes) opens by its magic number or MP4's 'ftyp' box,
    if it is not WAV; None otherwise (raw PCM, or an MP3/AAC frame header: :func:`_frame_header`)."""
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return name
    return "MP4/M4A" if head[4:8] == b"ftyp" else None


# kbit/s by bitrate index (1..14) for (MPEG-1?, layer): layer 1, 2, 3; MPEG-2 and 2.5 share theirs, 2 and 3 too
_MPEG_KBPS = {(True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
              (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
              (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
              (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
              (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}   # by version bits


def _frame_header(head: bytes) -> Optional[Tuple[str, int]]:
    """(codec, frame length in bytes) when ``head`` opens with an MPEG audio frame header (an MP3 without
    ID3 tag) or an ADTS one (raw AAC), every field valid; else None. Raw PCM may start with the sync bits
    by chance (0xFF 0xEx: a first sample of -7937..-1), so the caller also looks for the next frame's
    header one frame length on (:func:`_next_frame_agrees`); silence at -1 (FF FF ..) has bitrate index 15."""
    if len(head) < 6 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    if head[1] & 0xF6 == 0xF0:   # ADTS: 12 sync bits, layer 00; the frame length (header included) is in it
        length = (head[3] & 3) << 11 | head[4] << 3 | head[5] >> 5
        return ("AAC (ADTS)", length) if (head[2] >> 2) & 0xF <= 12 and length >= 7 else None
    version, layer_bits = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate, pad = head[2] >> 4, (head[2] >> 2) & 3, (head[2] >> 1) & 1
    if version == 1 or layer_bits == 0 or not 0 < bitrate < 15 or rate == 3 or head[3] & 3 == 2:   # reserved
        return None
    layer, mpeg1 = 4 - layer_bits, version == 3
    bps = 1000 * _MPEG_KBPS[mpeg1, min(layer, 2) if not mpeg1 else layer][bitrate - 1]
    hz = _MPEG_RATES[version][rate]
    length = (12 * bps // hz + pad) * 4 if layer == 1 else \
        (72 if layer == 3 and not mpeg1 else 144) * bps // hz + pad
    return "MPEG audio (MP3)", length


def _next_frame_agrees(head: bytes, nxt: bytes) -> bool:
    """Whether ``nxt``, the bytes one frame length after ``head``, open a frame header of the same stream
    (same sync, version and layer; the CRC flag aside)."""
    return len(nxt) >= 2 and nxt[0] == 0xFF and nxt[1] & 0xFE == head[1] & 0xFE


def _read_upto(f: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the stream (a raw file object may return less)."""
    out = b""
    while len(out) < n:
        data = f.read(n - len(out))
        if not data:
            break
        out += data
    return out


def _stdin_chunks(f: IO[bytes], rate: int, chunk_seconds: float,
                  rate_given: Optional[int] = None) -> Iterator[Tuple[np.ndarray, int]]:
    """Stdin: a WAV stream (``arecord`` without ``-t raw``, ``ffmpeg -f wav -``, ``cat x.wav``) is read
    by its header, which was taken for samples before (a click, then noise at the wrong rate if the
    format differed); other containers are refused; anything else is raw s16le mono at ``rate``."""
    head = f.read(12)
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        fmt = _wav_format(f, head, "stdin")
        if rate_given is not None and rate_given != fmt.rate:
            raise PannsError(f"--sample_rate {rate_given} contradicts the WAV header on stdin ({fmt.rate} Hz); "
                             "drop --sample_rate (a WAV stream carries its rate)")
        yield from _wav_chunks(f, fmt, chunk_seconds)
        return
    name, sync = _container(head), None
    if name is None:
        sync = _frame_header(head)
    if sync is not None:
        # one frame on, the next header: raw PCM that starts like one (rare, see _frame_header) has none there;
        # a stream that ends before is refused on the one header (a frame or less: nothing lost either way)
        name, length = sync
        head += _read_upto(f, length + 2 - len(head))
        nxt = head[length:length + 2]
        if len(nxt) == 2 and not _next_frame_agrees(head, nxt):
            name = None
    if name is not None:
        raise AudioDecodeError(
            f"stdin holds {name} data; --audio_path - reads a WAV stream or raw 16-bit little-endian mono PCM (at "
            "--sample_rate): decode it first (e.g. ffmpeg -i x -f wav -) or pass the file itself" +
            ("; raw PCM that starts like an MPEG/AAC frame header is taken for one: send it as a WAV stream (e.g. "
             "arecord without -t raw)" if sync else ""))
    yield from _pcm_chunks(f, rate, chunk_seconds, head)


def _pcm_chunks(f: IO[bytes], rate: int, chunk_seconds: float, head: bytes = b"") -> Iterator[Tuple[np.ndarray, int]]:
    """Raw 16-bit little-endian mono PCM, ``chunk_seconds`` at a time (an odd trailing byte is dropped);
    ``head``: bytes already read from ``f`` (to look for a header), the first samples."""
    want = 2 * max(1, int(round(chunk_seconds * rate)))
    rest, data = b"", head
    while True:
        data = rest + data
        even = len(data) // 2 * 2
        rest = data[even:]
        if even:
            yield np.frombuffer(data[:even], dtype="<i2"), rate
        data = f.read(want)
        if not data:
            break


class _StderrTail:
    """A child's stderr drained on a daemon thread while its stdout is read, keeping the last KEEP bytes
    (the error message needs only its last line). Read after stdout, a damaged file's warnings filled the
    pipe (~64 KB): ffmpeg blocked writing them while this process blocked reading samples, for ever."""
    KEEP = 16384

    def __init__(self, pipe: IO[bytes]):
        self._pipe, self._tail = pipe, b""
        self._thread = threading.Thread(target=self._drain, name="ffmpeg-stderr", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while True:
                data = os.read(self._pipe.fileno(), 65536)   # what is there, not a full buffer's worth
                if not data:
                    break
                self._tail = (self._tail + data)[-self.KEEP:]
        except (OSError, ValueError):   # the pipe went away: nothing more to keep
            pass
        finally:
            self._pipe.close()

    def last_line(self) -> str:
        """The last line written, once the child has exited (its end of the pipe is closed then)."""
        self._thread.join(timeout=10)
        return _last_line(self._tail)


def _ffmpeg_chunks(source: str, chunk_seconds: float, skip: int = 0) -> Iterator[Tuple[np.ndarray, int]]:
    """Decode with ffmpeg (any format or URL it reads) at the source's own rate and channels, as a
    float32 WAV on a pipe, read ``chunk_seconds`` at a time (the same samples ``audio_io`` decodes);
    ``skip``: frames already given from elsewhere (soundfile, before the file failed), left out."""
    exe = audio_io.ffmpeg_exe()
    if exe is None:
        raise AudioDecodeError(f"cannot decode {source}: needs ffmpeg (pip install imageio-ffmpeg)")
    proc = subprocess.Popen([exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", source, "-vn",
                             "-map_metadata", "-1", "-fflags", "+bitexact", "-f", "wav", "-acodec", "pcm_f32le", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None   # both PIPE
    err = _StderrTail(proc.stderr)
    try:
        head = proc.stdout.read(12)
        if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            proc.wait()
            raise AudioDecodeError(f"cannot decode {source}: {err.last_line()}")
        try:
            fmt = _wav_format(proc.stdout, head, source)
        except AudioDecodeError:
            proc.wait()
            raise AudioDecodeError(f"cannot decode {source}: {err.last_line()}") from None
        for block, rate in _wav_chunks(proc.stdout, fmt, chunk_seconds):
            if skip:
                cut = min(skip, len(block))
                block, skip = block[cut:], skip - cut
            if len(block):
                yield block, rate
        if proc.wait() != 0:
            raise AudioDecodeError(f"cannot decode {source}: {err.last_line()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


class WavFormat(NamedTuple):
    """What a streamed WAV header says: channels, rate, the samples' numpy dtype ('<i3': packed
    24-bit PCM), bytes per frame, and the data length (None: unknown, as in a pipe's header)."""
    channels: int
    rate: int
    dtype: str
    frame: int
    data_bytes: Optional[int]


# (format tag, bits per sample) -> numpy dtype. Tag 1: integer PCM (8-bit unsigned), 3: IEEE float.
_WAV_DTYPES = {(1, 8): "u1", (1, 16): "<i2", (1, 24): "<i3", (1, 32): "<i4", (3, 32): "<f4", (3, 64): "<f8"}


def _wav_format(f: IO[bytes], head: bytes, name: str) -> WavFormat:
    """Parse a streamed WAV header after its first 12 bytes ``head`` (RIFF/RF64 ... WAVE), leaving
    ``f`` at the first sample; AudioDecodeError (one line) for a header cut short or a sample format
    other than 8/16/24/32-bit PCM and 32/64-bit float (e.g. A-law, ADPCM)."""
    fmt = None
    while True:
        hdr = f.read(8)
        if len(hdr) < 8:
            raise AudioDecodeError(f"{name}: the WAV header ends before its data")
        cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
        if cid == b"data":
            break
        body = f.read(size + (size & 1))
        if cid == b"fmt ":
            if len(body) < 16:
                raise AudioDecodeError(f"{name}: the WAV header's fmt chunk is cut short")
            tag, channels, rate = struct.unpack("<HHI", body[:8])
            bits = struct.unpack("<H", body[14:16])[0]
            if tag == 0xFFFE and len(body) >= 26:   # WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
    if fmt is None:
        raise AudioDecodeError(f"{name}: the WAV header has no fmt chunk")
    tag, channels, rate, bits = fmt
    dtype = _WAV_DTYPES.get((tag, bits))
    if dtype is None or channels < 1:
        raise AudioDecodeError(f"{name}: WAV sample format {tag} with {bits} bits and {channels} channel(s) is not "
                               "read here (8/16/24/32-bit PCM or 32/64-bit float are); convert it first (e.g. "
                               "ffmpeg -i x -f wav -acodec pcm_s16le -)")
    if rate < 1:   # any other rate is the file's own, resampled as offline does (validate's range is for a rate typed)
        raise AudioDecodeError(f"{name}: the WAV header's sample rate is 0")
    # A pipe's writer cannot know the length: 0 or 0xFFFFFFFF-ish (arecord, ffmpeg) mean "until the end".
    data_bytes = size if 0 < size < audio_io.WAV_UNKNOWN_SIZE and head[:4] == b"RIFF" else None
    return WavFormat(channels, rate, dtype, channels * bits // 8, data_bytes)


def _wav_samples(data: bytes, fmt: WavFormat) -> np.ndarray:
    """Whole frames of ``data`` -> (frames, channels) in the file's sample type (24-bit as int32)."""
    if fmt.dtype == "<i3":   # packed 24-bit: the three bytes become the top of an int32 (scaled as int32 PCM)
        b = np.frombuffer(data, np.uint8).reshape(-1, 3)
        x = np.zeros((len(b), 4), np.uint8)
        x[:, 1:] = b
        return x.view("<i4").reshape(-1, fmt.channels)
    return np.frombuffer(data, dtype=fmt.dtype).reshape(-1, fmt.channels)


def _wav_chunks(f: IO[bytes], fmt: WavFormat, chunk_seconds: float) -> Iterator[Tuple[np.ndarray, int]]:
    """The samples after a WAV header, ``chunk_seconds`` at a time, up to the data length when the
    header gives one (chunks after the data, e.g. LIST, are not samples), else to the end."""
    want = fmt.frame * max(1, int(round(chunk_seconds * fmt.rate)))
    left = fmt.data_bytes
    rest = b""
    while left is None or left > 0:
        data = f.read(want if left is None else min(want, left))
        if not data:
            break
        if left is not None:
            left -= len(data)
        data = rest + data
        whole = len(data) // fmt.frame * fmt.frame
        rest = data[whole:]
        if whole:
            yield _wav_samples(data[:whole], fmt), fmt.rate


def _last_line(err: bytes) -> str:
    text = err.decode("utf-8", "replace").strip()
    return text.splitlines()[-1] if text else "unknown error"


def _sounddevice():
    """The optional ``sounddevice`` module, or a one-line error."""
    try:
        import sounddevice  # pyright: ignore[reportMissingImports]  (optional: only for --microphone)
    except Exception as e:   # ImportError, or OSError when PortAudio itself is missing
        raise PannsError(f"--microphone needs the sounddevice package (pip install sounddevice): {e}") from None
    return sounddevice


def _microphone(rate: int, chunk_seconds: float) -> Iterator[Tuple[np.ndarray, int]]:
    """Chunks from the default input device until Ctrl-C (the optional ``sounddevice`` package)."""
    sounddevice = _sounddevice()
    frames = max(1, int(round(chunk_seconds * rate)))
    try:
        with sounddevice.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=frames) as mic:
            logger.info("listening on %s at %d Hz; Ctrl-C stops", sounddevice.query_devices(kind="input")["name"], rate)
            while True:
                block, overflowed = mic.read(frames)
                if overflowed:
                    logger.warning("input overflow: audio was dropped (the model runs slower than real time)")
                yield block, rate
    except sounddevice.PortAudioError as e:
        raise PannsError(f"--microphone: {e}") from None
