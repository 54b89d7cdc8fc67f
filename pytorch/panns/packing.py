"""The machinery both packers share (``dataset.pack_waveforms_to_hdf5`` from audio files,
``shards.pack_from_shards`` from tar/Parquet shards).

* :func:`decode_row`: the official packing numerics (decode, mono, soxr resample, pad/truncate,
  int16), then the storage encoding (see ``storage.py``). Files and in-memory bytes go through the
  same decoder and resampler, so the same audio gives the same row whichever way it arrives.
* :class:`OrderedPool`: decoding in forked worker processes, results in job order. Workers ignore
  Ctrl-C and own no lock the parent could wait on; on Ctrl-C or any error the parent kills them,
  so an interrupted pack stops at once (a ``multiprocessing.Pool`` can hang in ``terminate`` when
  a worker holds its queue lock).
* :func:`catch_ctrl_c` / :func:`check_ctrl_c`: Ctrl-C that cannot be lost. Python raises KeyboardInterrupt
  wherever the main thread is, and one raised inside a weakref callback or ``__del__`` (an HDF5 or
  pipe object collected mid-pack) is printed as "Exception ignored in: ..." and dropped: the packer
  went on and wrote the whole output. The packing commands' handler also records it (and keeps that
  drop off stderr), and the pool, every row, the missing list and the rename ask again.
* :class:`PackedFile`: writes one waveform HDF5 under a temporary name and renames it when
  complete. It removes temporaries of dead runs first, checks free space before and while writing
  (h5py can crash the process when the disk fills mid-write), and turns a full disk into a
  one-line ``DiskFullError`` naming the file and the bytes needed.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from panns import argtypes, config, storage
from panns.audio_io import load_audio, load_audio_bytes
from panns.errors import PannsError
from panns.utilities import (atomic_write, atomic_write_text, check_free_space, check_hdf5_output, check_output_path,
                             die_with_parent, disk_full_error, float32_to_int16, pad_or_truncate, remove_stale_temps)

logger = logging.getLogger(__name__)

SHORT_FRACTION = 0.5  # clips shorter than this fraction of the clip length are counted in the summary
# How to re-pack an output --skip_existing keeps, for the command line and for the scripts, which pass the flag
# themselves and take SKIP_EXISTING=0 instead.
REPACK_HINT = "drop --skip_existing (SKIP_EXISTING=0 in scripts/2_*.sh) to re-pack it"


def name_paths(paths: Sequence[str], folder: str, shown: int = 5) -> str:
    """The first ``shown`` of ``paths``, relative to ``folder``, for a one-line message ('a, b and 3 more')."""
    names = [os.path.relpath(p, folder) for p in paths]
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


# Set by on_ctrl_c: a Ctrl-C stays seen even when its KeyboardInterrupt was dropped. A plain flag, not an Event,
# whose lock a second Ctrl-C arriving inside set() would wait on forever.
_ctrl_c = {"seen": False}


def on_ctrl_c(signum: int, frame: object) -> None:
    """SIGINT handler of the packing commands (:func:`catch_ctrl_c`): raise KeyboardInterrupt, as Python's
    default does, and record it for :func:`check_ctrl_c`."""
    _ctrl_c["seen"] = True
    raise KeyboardInterrupt


def _unraisable(hook_args) -> None:
    """``sys.unraisablehook``: a KeyboardInterrupt :func:`on_ctrl_c` raised inside a finalizer, where Python can only
    drop it, is not printed as a traceback (:func:`check_ctrl_c` raises it again); anything else is, as before."""
    if isinstance(hook_args.exc_value, KeyboardInterrupt) and _ctrl_c["seen"]:
        return
    sys.__unraisablehook__(hook_args)


@contextlib.contextmanager
def catch_ctrl_c() -> Iterator[None]:
    """Around a packing command (``dataset.main``): Ctrl-C stops it reliably. SIGINT raises and is recorded
    (:func:`on_ctrl_c`); one dropped inside a finalizer is neither printed nor lost (raised again at the end, or
    earlier where :func:`check_ctrl_c` asks). On the way out the SIGINT handler, ``sys.unraisablehook`` and the
    record are what they were: a caller that runs ``main`` in its own process (a notebook, a test session) keeps
    its Ctrl-C, and a Ctrl-C seen here cannot stop its later packing. Off the main thread, where no handler can
    be installed, Python's own behaviour stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _ctrl_c["seen"] = False
    handler, hook = signal.signal(signal.SIGINT, on_ctrl_c), sys.unraisablehook
    sys.unraisablehook = _unraisable
    try:
        yield
        check_ctrl_c()   # a Ctrl-C dropped after the last check: the output is whole, but the run was stopped
    finally:
        signal.signal(signal.SIGINT, handler)
        sys.unraisablehook = hook
        _ctrl_c["seen"] = False


def check_ctrl_c() -> None:
    """Raise KeyboardInterrupt again if :func:`on_ctrl_c` saw a Ctrl-C (its own raise may have been dropped inside
    a finalizer). Without that handler (library use) it never raises."""
    if _ctrl_c["seen"]:
        raise KeyboardInterrupt


def clip_samples_for(sample_rate: int, clip_seconds: float) -> int:
    """Samples per packed clip; PannsError for a sample rate out of range or a clip length that is not a
    positive finite number (NaN or inf would crash the packer or allocate without bound)."""
    if not argtypes.MIN_SAMPLE_RATE <= sample_rate <= argtypes.MAX_SAMPLE_RATE:
        raise PannsError(f"--sample_rate must be between {argtypes.MIN_SAMPLE_RATE} and {argtypes.MAX_SAMPLE_RATE} Hz, "
                         f"got {sample_rate}")
    if not (math.isfinite(clip_seconds) and clip_seconds > 0):
        raise PannsError(f"--clip_seconds must be a positive number of seconds, got {clip_seconds}")
    clip_samples = int(round(sample_rate * clip_seconds))
    if clip_samples <= 0:
        raise PannsError(f"clip length must be positive (sample_rate={sample_rate}, clip_seconds={clip_seconds})")
    return clip_samples


# ------------------------------------------------------------------------------------------------
# One clip
# ------------------------------------------------------------------------------------------------

@dataclass
class DecodeJob:
    """One clip to decode: ``source`` is a file path or the encoded bytes; ``n`` its position."""

    n: int
    source: Union[str, bytes]
    name: str
    sample_rate: int
    clip_samples: int
    storage: str = "pcm16"


@dataclass
class Decoded:
    n: int
    row: Optional[np.ndarray]  # int16 (clip_samples,) or uint8 FLAC bytes; None when it failed
    reason: str = ""
    seconds: float = 0.0       # length of the audio before padding/truncation


def decode_row(job: DecodeJob) -> Decoded:
    """Decode one clip with the official numerics; never raises for a bad clip (reason instead)."""
    try:
        if isinstance(job.source, str):
            audio = load_audio(job.source, job.sample_rate, mono=True, on_truncated="raise")
        else:
            audio = load_audio_bytes(job.source, job.sample_rate, mono=True, name=job.name, on_truncated="raise")
        row = float32_to_int16(pad_or_truncate(audio, job.clip_samples))
        return Decoded(job.n, storage.encode_row(row, job.storage, job.sample_rate), "", len(audio) / job.sample_rate)
    except Exception as e:  # one bad clip must not stop the job
        return Decoded(job.n, None, " ".join(str(e).split()) or type(e).__name__)


# ------------------------------------------------------------------------------------------------
# Worker processes
# ------------------------------------------------------------------------------------------------

def _worker(conn, fn: Callable, parent: int, parent_ends: Sequence = ()) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    # The fork copied the parent's ends of this worker's pipe and of the earlier workers' pipes. Held
    # here, they kept a pipe open after a kill -9 of the parent: a worker blocked sending a result never
    # saw the reader go and lived forever. Closed, that send fails (EPIPE) and the worker returns.
    for c in parent_ends:
        c.close()
    die_with_parent()   # elsewhere than Linux: the poll of os.getppid below and the closed pipe
    if os.getppid() != parent:   # the parent died before the line above took effect
        return
    while True:
        if not conn.poll(1.0):
            if os.getppid() != parent:  # parent gone without killing us
                return
            continue
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            conn.send(fn(job))
        except (BrokenPipeError, EOFError, OSError):
            return   # the parent is gone


class OrderedPool(object):
    """``imap(fn, jobs)`` over ``num_workers`` forked processes; results come back in job order.

    Each worker has its own pipe and at most one job; the next job goes to the worker whose result was
    just taken, so results arrive in order without a shared queue. Use as a context manager: leaving it
    (normally, by an error or by Ctrl-C) kills the workers."""

    def __init__(self, fn: Callable, num_workers: int):
        self.fn, self.num_workers = fn, max(1, int(num_workers))
        self.procs: list = []
        self.conns: list = []

    def __enter__(self) -> "OrderedPool":
        if self.num_workers > 1:
            self._start()  # now, before the caller opens its output file: children hold no HDF5 handle
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else methods[0])
        for _ in range(self.num_workers):
            mine, theirs = ctx.Pipe(duplex=True)
            p = ctx.Process(target=_worker, args=(theirs, self.fn, os.getpid(), self.conns + [mine]), daemon=True)
            p.start()
            theirs.close()
            self.procs.append(p)
            self.conns.append(mine)

    def imap(self, jobs: Iterable) -> Iterator:
        if self.num_workers <= 1:
            for job in jobs:
                check_ctrl_c()
                yield self.fn(job)
            return
        it = iter(jobs)
        if not self.procs:
            self._start()
        pending: deque = deque()
        for k in range(self.num_workers):
            job = next(it, None)
            if job is None:
                break
            self.conns[k].send(job)
            pending.append(k)
        while pending:
            k = pending.popleft()
            try:
                res = self.conns[k].recv()
            except (EOFError, OSError):
                raise PannsError("a decoding process died (out of memory?); re-run with fewer --num_workers") from None
            check_ctrl_c()
            job = next(it, None)
            if job is not None:
                self.conns[k].send(job)
                pending.append(k)
            yield res

    def close(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(timeout=5)
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []


def check_pack_output(path: str, inputs: Sequence[str]) -> None:
    """Both packers' checks of their outputs, before any decoding: the waveform HDF5 (``utilities.check_hdf5_output``:
    an existing waveform HDF5 is replaced, a file that is not HDF5 or an index, embeddings or framewise file is
    refused) and ``<out>.missing.csv``."""
    check_hdf5_output(path, "waveforms", inputs, flag="--waveforms_hdf5_path")
    check_output_path(path + ".missing.csv", inputs, "list of missing clips")


# ------------------------------------------------------------------------------------------------
# The output file
# ------------------------------------------------------------------------------------------------

def _is_enospc(e: BaseException) -> bool:
    return isinstance(e, OSError) and (e.errno == errno.ENOSPC or "No space left" in str(e))


@dataclass
class PackStats:
    """What a pack did: rows written, failures (name, reason), clips much shorter than the clip length."""

    rows: int = 0
    missing: List[Tuple[str, str]] = field(default_factory=list)
    short: int = 0
    nbytes: int = 0


class PackedFile(object):
    """A waveform HDF5 being written (see module docstring). Use as a context manager::

        with PackedFile(path, capacity, clip_samples, storage) as out:
            out.add(b"Y<id>.wav", target_row, encoded_row)
            out.commit(labels, sample_rate)     # datasets + attributes; renamed on leaving the block
    """

    def __init__(self, path: str, capacity: int, clip_samples: int, storage_name: str):
        self.path, self.capacity, self.clip_samples = path, int(capacity), int(clip_samples)
        self.storage = storage.check_storage(storage_name)
        self.names: List[bytes] = []
        self.targets: List[np.ndarray] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "PackedFile":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for tmp in remove_stale_temps(self.path) + remove_stale_temps(self.path + ".missing.csv"):
            logger.info("Removed %s, left by an interrupted run", tmp)
        # FLAC needs about half of pcm16 on speech/music; ask for a third up front, check while writing.
        full = storage.estimate_bytes(self.capacity, self.clip_samples, self.storage)
        check_free_space(self.path, full if self.storage == "pcm16" else full // 3)
        try:
            self.tmp = self._stack.enter_context(atomic_write(self.path))
            self.hf = self._stack.enter_context(h5py.File(self.tmp, "w"))
            self.writer = storage.WaveformWriter(self.hf, self.capacity, self.clip_samples, self.storage)
        except BaseException as e:
            # Told the exception: atomic_write removes the temp. close() told it nothing, so a Ctrl-C (or an error)
            # here renamed the empty temp over the output, an existing complete one included.
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def add(self, name: bytes, target: np.ndarray, encoded: np.ndarray) -> None:
        """Append one clip (called in output order)."""
        check_ctrl_c()
        # Checked before every row: h5py can crash the process when the disk fills mid-write.
        check_free_space(self.path, int(encoded.nbytes) + len(self.names) * (len(target) + 32))
        self.writer.append(encoded)
        self.names.append(name)
        self.targets.append(target)

    def commit(self, labels: config.ClassLabels, sample_rate: int,
               extra_attrs: Optional[Dict[str, str]] = None) -> None:
        """Write names, targets and attributes (plus ``extra_attrs``, e.g. the shard fields a part was packed
        with); the file is renamed to its final name on leaving the block."""
        check_ctrl_c()
        n = len(self.names)
        self.writer.finish()
        width = max([20] + [len(b) for b in self.names])
        self.hf.create_dataset("audio_name", data=np.array(self.names, dtype=f"S{width}"), shape=(n,),
                               dtype=f"S{width}")
        tg = np.array(self.targets, dtype=bool).reshape(n, labels.classes_num)
        self.hf.create_dataset("target", data=tg, dtype=bool)
        self.hf.attrs.create("sample_rate", data=sample_rate, dtype=np.int32)
        self.hf.attrs["class_ids"] = np.array(labels.ids, dtype=h5py.string_dtype("utf-8"))
        self.hf.attrs["class_labels"] = np.array(labels.labels, dtype=h5py.string_dtype("utf-8"))
        for k, v in (extra_attrs or {}).items():
            self.hf.attrs[k] = v

    @property
    def rows(self) -> int:
        return len(self.names)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None and _ctrl_c["seen"]:   # a Ctrl-C dropped since the last row: no rename
            exc_type, exc, tb = KeyboardInterrupt, KeyboardInterrupt(), None
            self._stack.__exit__(exc_type, exc, tb)   # closes the HDF5 and removes the temp
            raise exc
        try:
            self._stack.__exit__(exc_type, exc, tb)  # closes the HDF5, then renames (or removes) the temp
        except BaseException as e:
            if _is_enospc(e):
                raise disk_full_error(self.path) from e
            raise
        if exc is not None and _is_enospc(exc):
            raise disk_full_error(self.path) from exc
        return False


def write_missing_csv(out_path: str, missing: Sequence[Tuple[str, str]], header=("audio_name", "reason")) -> str:
    """``<out>.missing.csv`` listing clips that were not packed and why (removes a stale list when none)."""
    check_ctrl_c()   # an interrupted pack leaves the list of the output it did not write alone
    path = out_path + ".missing.csv"
    if missing:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(list(header))
        w.writerows(missing)
        atomic_write_text(path, buf.getvalue())
    elif os.path.exists(path):
        os.remove(path)
    return path


def waveform_hdf5_problem(hf: h5py.File) -> str:
    """'' for an open waveform HDF5 whose datasets agree (one name, one 2-D target row and one waveform
    row per clip), else what is wrong: indexing a file that disagrees points at rows that do not exist."""
    for key in ("audio_name", "target"):
        if key not in hf:
            return f"no '{key}' dataset"
    try:
        layout = storage.storage_of(hf)
    except PannsError:
        return f"no '{storage.PCM_KEY}' or '{storage.FLAC_KEY}' dataset"
    wave_key = storage.FLAC_KEY if layout == "flac" else storage.PCM_KEY
    names, target, wave = hf["audio_name"].shape, hf["target"].shape, hf[wave_key].shape
    if len(names) != 1:
        return f"'audio_name' has shape {names}, expected (clips,)"
    if len(target) != 2:
        return f"'target' has shape {target}, expected (clips, classes)"
    if len(wave) != (1 if layout == "flac" else 2):
        return f"'{wave_key}' has shape {wave}"
    if not names[0] == target[0] == wave[0]:
        return f"datasets disagree in length: audio_name {names[0]}, target {target[0]}, waveform rows {wave[0]}"
    return ""


def _is_complete(hf: h5py.File) -> bool:
    return not waveform_hdf5_problem(hf) and "sample_rate" in hf.attrs


def is_complete_waveforms_hdf5(path: str) -> bool:
    """True for a readable waveform HDF5 (either layout) whose datasets agree in length."""
    try:
        with h5py.File(path, "r") as hf:
            return _is_complete(hf)
    except Exception:
        return False


# The digest of the segment rows a waveform HDF5 was packed from (dataset.segments_digest): --skip_existing packs
# an output again when its CSV changed. Files of earlier versions (and of pack_from_shards) have none.
SEGMENTS_DIGEST_ATTR = "segments_sha256"


def _text(value) -> Optional[str]:
    """A scalar attribute as text; None for an array (the label lists)."""
    if isinstance(value, np.ndarray):
        if value.shape != ():
            return None
        value = value[()]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class KeptOutput:
    """An existing complete waveform HDF5 as --skip_existing sees it: what it was packed with, its text
    attributes (the segments digest, the shard fields and source) and, when asked, how many of its rows repeat
    a clip id; all read in one open (:func:`read_kept_output`)."""

    path: str
    sample_rate: int
    clip_samples: int
    storage: str
    class_ids: List[str]
    classes: int
    text_attrs: Dict[str, str]
    repeated: int = 0

    def text_attr(self, name: str) -> Optional[str]:
        """A text attribute of the file; None when it has none of that name."""
        return self.text_attrs.get(name)

    def option_mismatch(self, sample_rate: int, clip_samples: int, storage_name: str,
                        labels: config.ClassLabels) -> List[str]:
        """How the file differs from the options asked for now ([] when it matches): sample rate, clip length,
        storage layout and the label list (``class_ids``; files without it, as the official packer wrote them,
        are compared by class count)."""
        diff = []
        if self.sample_rate != sample_rate:
            diff.append(f"sample rate {self.sample_rate} Hz, not {sample_rate}")
        if self.clip_samples != clip_samples:
            diff.append(f"clip length {self.clip_samples} samples, not {clip_samples}")
        if self.storage != storage_name:
            diff.append(f"storage {self.storage}, not {storage_name}")
        if self.class_ids and self.class_ids != list(labels.ids):
            diff.append("another label list (class_ids differ from the label CSV)")
        elif self.classes != labels.classes_num:
            diff.append(f"{self.classes} classes, not {labels.classes_num}")
        return diff

    def check_reusable(self, sample_rate: int, clip_samples: int, storage_name: str,
                       labels: config.ClassLabels) -> None:
        """PannsError naming what differs when the output (--skip_existing) was packed with other options."""
        diff = self.option_mismatch(sample_rate, clip_samples, storage_name, labels)
        if diff:
            raise PannsError(f"--skip_existing: {self.path} was packed with other options ({'; '.join(diff)}); "
                             f"remove it or {REPACK_HINT}")


def read_kept_output(path: str, count_repeats: bool = False) -> Optional[KeptOutput]:
    """``path`` as a :class:`KeptOutput` when it is a complete waveform HDF5 (:func:`is_complete_waveforms_hdf5`),
    else None (missing, unreadable, cut short: packed again). ``count_repeats``: also count rows whose clip id an
    earlier row has."""
    try:
        hf = h5py.File(path, "r")
    except Exception:
        return None
    with hf:
        try:
            if not _is_complete(hf):
                return None
        except Exception:
            return None
        texts = {k: t for k, t in ((k, _text(v)) for k, v in hf.attrs.items()) if t is not None}
        names = hf["audio_name"][:] if count_repeats else None
        return KeptOutput(
            path, int(hf.attrs["sample_rate"]), storage.clip_samples_of(hf), storage.storage_of(hf),
            [x.decode() if isinstance(x, bytes) else str(x) for x in hf.attrs.get("class_ids", [])],
            int(hf["target"].shape[1]), texts, 0 if names is None else int(len(names) - len(np.unique(names))))
