"""Training/evaluation data loading: samplers over index HDF5s and a dataset reading waveform HDF5s.

Same contract as the official ``utils/data_generator.py``: a sampler (used as ``batch_sampler``) yields
lists of meta dicts ``{'hdf5_path', 'index_in_hdf5'}``; :class:`AudioSetDataset` turns one meta dict
into ``{'audio_name': str, 'waveform': float32 (clip_samples,), 'target': float32 (classes_num,)}``;
:func:`collate_fn` stacks a list of those into numpy arrays ``waveform (B, T)``, ``target (B, C)``.

Sampler semantics follow the official ones:

* :class:`TrainSampler` - random order, every clip once per epoch, reshuffled every epoch.
* :class:`BalancedTrainSampler` - class slots cycle through a random permutation of the classes
  (one clip per class slot, every class equally often); within a class, clips are drawn without
  replacement, reshuffled each time the class's clips are exhausted.
* :class:`AlternateTrainSampler` - batch 0 balanced, batch 1 random, batch 2 balanced, ...
* :class:`EvaluateSampler` - every row once, file order, finite.
* With mixup the caller passes ``batch_size * 2`` (official: the loader batch is doubled).

Differences on purpose (fixes):

* **Exact, cheap resume.** The sample order is a pure function of ``(seed, position)``: epoch ``e`` of
  the random sampler is ``default_rng([seed, 2, e]).permutation``; round ``r`` of the balanced sampler
  orders the classes by ``default_rng([seed, 0, r])``; class ``c``'s ``j``-th draw is element
  ``j % n_c`` of ``default_rng([seed, 1, c, j // n_c]).permutation(n_c)`` (every round draws each class
  once, so ``j == r``). ``state_dict(batches_consumed)`` is a few integers plus a fingerprint of the
  index; ``load_state_dict`` validates them and jumps to the position in O(1), no I/O. The training
  loop passes the number of batches it actually consumed, so batches prefetched by loader workers
  are not skipped on resume.
* **DDP.** Samplers take ``rank``/``world_size``: there is one global stream of batches and global
  batch ``b`` goes to rank ``b % world_size`` (disjoint, together exactly the single-process stream).
  :class:`EvaluateSampler` shards contiguously: rank ``r`` gets the ``r``-th of ``world_size`` nearly
  equal consecutive blocks of rows (``np.array_split``), so concatenating ranks' outputs in rank order
  restores file order.
* Classes with no clip are skipped (official: IndexError). Rows without a clip (empty ``audio_name``
  in official files) are never sampled.
* The black list (``black_list_csv`` rows of YTIDs, or ``black_list`` names) is filtered out when the
  index is loaded, so a listed clip no longer consumes a balanced class slot.
* Targets are kept as bool and only as long as needed (official: float32 copy of the whole matrix).
* HDF5 files are opened lazily once per worker process and kept open (official: one open per clip).
  Rows of uncompressed datasets are read with one ``preadv`` at a precomputed offset, a whole batch
  at a time (``__getitems__``) into one array that :func:`collate_fn` passes on without copying; in
  DataLoader workers that array lives in recycled shared memory, so batches reach the main process
  without pickling 80 MB through a pipe (``benchmarks/bench_loader.py``). Batches are still numpy.
* When the training rate differs from the file's ``sample_rate`` attribute the waveform is resampled
  properly with soxr (``resample='soxr'``, default); ``resample='decimate'`` gives the official
  ``[::2]``/``[::4]`` for exact reproduction.
* ``hdf5_path`` values in index files are resolved relative to the index file (see create_indexes.py).
* Waveform files of either storage layout are read (``pcm16``, or ``flac``: see storage.py); FLAC rows
  are decoded into the same int16 rows by ``storage.FlacRowReader``, i.e. in the loader workers.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import time
import weakref
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

import h5py
import numpy as np
import soxr
import torch
from torch.utils.data import DataLoader, get_worker_info

from panns import config, storage
from panns.create_indexes import IndexTable, open_waveform_hdf5, read_index, resolve_hdf5_path
from panns.errors import PannsError
from panns.utilities import INT16_SCALE, int16_to_float32

logger = logging.getLogger(__name__)

STATE_VERSION = 1
# Stream tags of the seed sequences, so the different random streams never coincide.
_TAG_CLASS_ROUND, _TAG_CLASS_CLIPS, _TAG_EPOCH = 0, 1, 2


# ------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------

def _in_loader_worker() -> bool:
    return get_worker_info() is not None


class _SharedArray(np.ndarray):
    """A numpy batch array living in torch shared memory (made inside DataLoader workers).

    Pickling it (worker -> main process) sends the shared-memory handle instead of the bytes, the way
    torch tensors travel; the main process gets a plain ``np.ndarray`` on the same memory. Sending a
    (64, 320000) float32 batch by value costs ~80 MB of pipe traffic and copies per batch.
    """

    def __reduce_ex__(self, protocol):
        slot = getattr(self, "_slot", None)
        if slot is None:  # a view made from the batch array: send by value
            return np.asarray(self).__reduce_ex__(protocol)
        return _array_from_slot, slot


def _release_slot(flags, k: int) -> None:
    flags.numpy()[k] = 0


def _array_from_slot(buffer, flags, k: int, shape: tuple, dtype: str) -> np.ndarray:
    """Main-process side: an ndarray on the worker's shared buffer. The slot is handed back to the worker
    when the array and every view of it are gone (all views keep the np.frombuffer array alive)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    owner = np.frombuffer(memoryview(buffer.numpy()), dtype=dtype, count=count)
    owner.flags.writeable = True
    if flags is not None:
        weakref.finalize(owner, _release_slot, flags, k)
    return owner.reshape(shape)


class _ShmPool(object):
    """Shared-memory buffers recycled by one loader worker.

    Fresh shared memory for every batch costs page faults (~3 ms per 10-s clip measured here, more than
    reading the clip). A slot is reused only after the main process has dropped every view of the batch
    that used it (flag set back by a finalizer there), so reuse can never overwrite data in use.
    """

    # A batch takes two slots (waveforms, targets); up to four batches are alive at once (one held by the
    # training step, one just received, one queued by the prefetch, one being filled), so 8 slots leave no
    # headroom and a late release would force a one-off buffer. Slots allocate lazily: unused ones cost nothing.
    SLOTS = 12
    # How long a worker waits for one of its buffers to come back before allocating another: releases lag
    # the main process's last use by a moment, and without the wait shared memory grows in steps.
    WAIT_S = 0.05
    PIPELINE, WAIT_FULL_S = 4, 0.5

    def __init__(self):
        self.flags = self._shared(self.SLOTS * 4).view(torch.int32)
        self.flags.zero_()
        self.buffers: List = [None] * self.SLOTS

    def _shared(self, nbytes: int) -> torch.Tensor:
        try:
            storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(nbytes)
            return torch.empty(0, dtype=torch.uint8).new(storage)
        except Exception:  # private API moved
            return torch.empty(nbytes, dtype=torch.uint8).share_memory_()

    def alloc(self, shape: tuple, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        flags = self.flags.numpy()
        big_enough = [k for k in range(self.SLOTS) if self.buffers[k] is not None and self.buffers[k].numel() >= nbytes]
        # Enough buffers for the pipeline (one in use by the training step, the prefetched ones, the one being
        # filled): wait longer before growing; the main process only keeps more when a caller holds batches.
        deadline = time.perf_counter() + (self.WAIT_FULL_S if len(big_enough) >= self.PIPELINE else self.WAIT_S)
        while big_enough and all(flags[k] for k in big_enough) and time.perf_counter() < deadline:
            time.sleep(0.0005)  # a batch the main process is just dropping: wait rather than grow
        free = [k for k in range(self.SLOTS) if flags[k] == 0]
        fits = [k for k in free if k in big_enough]
        if fits:  # best fit: a small target array must not take a waveform-sized buffer
            k = min(fits, key=lambda j: self.buffers[j].numel())
        elif free:  # an empty slot first, else replace the smallest free buffer
            k = min(free, key=lambda j: -1 if self.buffers[j] is None else self.buffers[j].numel())
            self.buffers[k] = self._shared(nbytes)
        else:  # everything still in use by the main process: a one-off buffer
            buf = self._shared(nbytes)
            arr = buf.numpy()[:nbytes].view(dtype).reshape(shape).view(_SharedArray)
            arr._slot = (buf, None, -1, tuple(shape), dtype.str)
            return arr
        flags[k] = 1
        buf = self.buffers[k]
        arr = buf.numpy()[:nbytes].view(dtype).reshape(shape).view(_SharedArray)
        arr._slot = (buf, self.flags, k, tuple(shape), dtype.str)
        return arr


_POOL: Dict[int, _ShmPool] = {}


def _alloc(shape: tuple, dtype) -> np.ndarray:
    """np.empty, in recycled torch shared memory when called inside a DataLoader worker."""
    if not _in_loader_worker():
        return np.empty(shape, dtype)
    pool = _POOL.get(os.getpid())
    if pool is None:
        _POOL.clear()
        pool = _POOL[os.getpid()] = _ShmPool()
    return pool.alloc(shape, dtype)


class _RowReader(object):
    """Reads row i of an uncompressed HDF5 dataset straight from the file with ``preadv``.

    Rows of contiguous datasets (official files, our names/targets) and of datasets chunked one row per
    chunk (our waveforms) sit at offsets computable once; reading them with one system call skips
    h5py's per-call selection machinery (~100-300 us per read, more than copying 640 kB). Anything
    else (compression, other chunking, variable-length types) falls back to plain h5py indexing.
    """

    def __init__(self, ds: h5py.Dataset, fd: Optional[int]):
        self.ds, self.fd = ds, fd
        self.dtype = ds.dtype
        self.row_shape = ds.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.base: Optional[int] = None
        self.offsets: Optional[np.ndarray] = None
        if fd is None or self.dtype.kind in "OV" or self.dtype.hasobject or not hasattr(os, "preadv"):
            return
        try:
            plist = ds.id.get_create_plist()
            if plist.get_nfilters() != 0:
                return
            layout = plist.get_layout()
            if layout == h5py.h5d.CONTIGUOUS:
                self.base = ds.id.get_offset()  # None when never written
            elif layout == h5py.h5d.CHUNKED and ds.chunks == (1,) + tuple(self.row_shape) and hasattr(ds.id, "chunk_iter"):
                offsets = np.full(ds.shape[0], -1, dtype=np.int64)

                def visit(info):
                    offsets[info.chunk_offset[0]] = info.byte_offset

                ds.id.chunk_iter(visit)
                self.offsets = offsets
        except Exception:
            self.base, self.offsets = None, None

    def _offset(self, i: int) -> Optional[int]:
        if self.base is not None:
            return self.base + i * self.row_bytes
        if self.offsets is not None:
            off = int(self.offsets[i])
            return off if off >= 0 else None
        return None

    def read_into(self, i: int, out: np.ndarray) -> None:
        """Row i into ``out`` (C-contiguous, dtype and shape of a row)."""
        if not 0 <= i < self.ds.shape[0]:
            raise PannsError(f"row {i} out of range for {self.ds.name} ({self.ds.shape[0]} rows) in {self.ds.file.filename}")
        off = self._offset(i)
        if off is None:
            out[...] = self.ds[i]
            return
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < self.row_bytes:
            n = os.preadv(self.fd, [view[done:]], off + done)
            if n <= 0:
                raise PannsError(f"unexpected end of file reading {self.ds.file.filename}")
            done += n

    def read(self, i: int) -> np.ndarray:
        out = np.empty(self.row_shape, self.dtype)
        self.read_into(i, out)
        return out


class _OpenFile(object):
    """An open waveform HDF5 with its row readers."""

    def __init__(self, path: str):
        self.hf = open_waveform_hdf5(path)
        layout = storage.storage_of(self.hf)
        try:
            self.fd: Optional[int] = os.open(path, os.O_RDONLY)
        except OSError:
            self.fd = None
        self.sample_rate = int(self.hf.attrs.get("sample_rate", 32000))
        self.names = _RowReader(self.hf["audio_name"], self.fd)
        # flac layout: rows are decoded here, i.e. in the loader worker, into the same int16 rows.
        self.waves = (storage.FlacRowReader(self.hf[storage.FLAC_KEY], storage.clip_samples_of(self.hf))
                      if layout == "flac" else _RowReader(self.hf["waveform"], self.fd))
        self.targets = _RowReader(self.hf["target"], self.fd)

    def close(self) -> None:
        try:
            self.hf.close()
        finally:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


@dataclass
class WaveformInfo:
    """What a waveform HDF5 holds: its sample rate, clip length (samples at that rate), class ids (may be empty)."""
    sample_rate: int
    clip_samples: int
    class_ids: List[str]


def waveform_info(path: str, hint: str = "") -> WaveformInfo:
    """Open and check a waveform HDF5 as the loader does (see ``open_waveform_hdf5``) and describe it."""
    with open_waveform_hdf5(path, hint) as hf:
        ids = [_decode_name(x) for x in hf.attrs.get("class_ids", [])]
        return WaveformInfo(int(hf.attrs.get("sample_rate", 32000)), storage.clip_samples_of(hf), ids)


def _decode_name(x) -> str:
    if isinstance(x, np.ndarray):
        x = x.item()
    return x.decode() if isinstance(x, bytes) else str(x)


class AudioSetDataset(object):
    """Reads one clip per meta dict ``{'hdf5_path': str, 'index_in_hdf5': int}`` (extra keys ignored).

    Args:
        sample_rate: rate of the returned waveform. Files carry their own rate (attribute ``sample_rate``,
            32000 if absent); other rates are resampled.
        resample: 'soxr' (band-limited, default) or 'decimate' (official: keep every k-th sample; needs
            the file rate to be a multiple of ``sample_rate``).
        raw: ``__getitems__`` keeps stored int16 waveforms / bool targets for :func:`to_device` to convert
            on the device (the GPU training path); per-clip ``__getitem__`` always returns float32.
        base_dir: folder that relative ``hdf5_path`` values are relative to (the index file's folder;
            samplers already yield absolute paths). Falls back to the current directory.

    Returns per clip ``{'audio_name': str, 'waveform': float32 (T,), 'target': float32 (C,)}`` where
    ``T = clip_samples_in_file * sample_rate / file_rate``. Files are opened on first use in each process
    and kept open. ``__getitems__`` (used by torch's DataLoader for a whole batch) reads the batch into one
    array, so :func:`collate_fn` can hand it over without copying.
    """

    def __init__(self, sample_rate: int = 32000, resample: str = "soxr", base_dir: Optional[str] = None,
                 raw: bool = False):
        if resample not in ("soxr", "decimate"):
            raise PannsError(f"resample must be 'soxr' or 'decimate', got {resample!r}")
        self.sample_rate = int(sample_rate)
        self.resample_mode = resample
        self.base_dir = base_dir
        self.raw = bool(raw)
        self._files: Dict[str, _OpenFile] = {}
        self._pid = os.getpid()

    # Handles are per process: a forked/spawned worker starts with none and opens its own.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def _open(self, path) -> _OpenFile:
        if self._pid != os.getpid():
            self._files = {}  # inherited from the parent through fork: never use them here
            self._pid = os.getpid()
        if not isinstance(path, str):
            path = path.decode() if isinstance(path, bytes) else str(path)
        f = self._files.get(path)
        if f is None:
            full = path if os.path.isabs(path) else resolve_hdf5_path(path, self.base_dir or os.getcwd())
            f = self._files[path] = _OpenFile(full)
        return f

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:
                pass
        self._files = {}

    def resample(self, waveform: np.ndarray, file_sr: int) -> np.ndarray:
        """float32 (T,) at ``file_sr`` -> float32 (T * sample_rate / file_sr,)."""
        sr = self.sample_rate
        if sr == file_sr:
            return waveform
        if self.resample_mode == "decimate":
            if file_sr % sr:
                raise PannsError(f"resample='decimate' needs the file rate ({file_sr}) to be a multiple of "
                                 f"the training rate ({sr}); use resample='soxr'")
            return waveform[::file_sr // sr]
        n_out = int(round(len(waveform) * sr / file_sr))
        y = soxr.resample(waveform, file_sr, sr, quality="HQ").astype(np.float32, copy=False)
        if len(y) != n_out:
            y = np.pad(y, (0, max(0, n_out - len(y))))[:n_out]
        return y

    def __getitem__(self, meta: dict) -> dict:
        f = self._open(meta["hdf5_path"])
        i = int(meta["index_in_hdf5"])
        return {
            "audio_name": _decode_name(f.names.read(i)),
            "waveform": self.resample(int16_to_float32(f.waves.read(i)), f.sample_rate),
            "target": f.targets.read(i).astype(np.float32),
        }

    def __getitems__(self, metas: List[dict]) -> List[dict]:
        """A whole batch read into one (B, T) array (recycled shared memory inside loader workers).

        With ``raw=True`` (the training path) rows stay as stored, int16 waveforms and bool targets: half
        the bytes through shared memory and the host-to-device copy; :func:`to_device` makes them float
        on the device, bit-identical to ``int16_to_float32``. Otherwise float32 as ``__getitem__``."""
        files = [self._open(m["hdf5_path"]) for m in metas]
        same = all(f.sample_rate == self.sample_rate and f.waves.row_shape == files[0].waves.row_shape
                   and f.waves.dtype == np.int16 and f.targets.row_shape == files[0].targets.row_shape
                   and f.targets.dtype == files[0].targets.dtype for f in files)
        if not metas or not same:
            return [self[m] for m in metas]
        b = len(metas)
        if self.raw:
            waves = _alloc((b,) + files[0].waves.row_shape, np.int16)
            targets = _alloc((b,) + files[0].targets.row_shape, files[0].targets.dtype)
        else:
            waves = np.empty((b,) + files[0].waves.row_shape, np.int16)
            targets = np.empty((b,) + files[0].targets.row_shape, files[0].targets.dtype)
        names = []
        for k, (f, m) in enumerate(zip(files, metas)):
            i = int(m["index_in_hdf5"])
            f.waves.read_into(i, waves[k])
            f.targets.read_into(i, targets[k])
            names.append(_decode_name(f.names.read(i)))
        if not self.raw:
            floats = _alloc(waves.shape, np.float32)
            np.divide(waves, INT16_SCALE, out=floats, dtype=np.float32)
            float_targets = _alloc(targets.shape, np.float32)
            float_targets[...] = targets
            waves, targets = floats, float_targets
        return [{"audio_name": names[k], "waveform": waves[k], "target": targets[k]} for k in range(b)]

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            self.close()


def _stacked_base(values: list) -> Optional[np.ndarray]:
    """The (B, ...) array whose rows 0..B-1 are exactly ``values`` (as __getitems__ returns), else None."""
    first = values[0]
    base = first.base if isinstance(first, np.ndarray) else None
    if not isinstance(base, np.ndarray) or base.ndim != first.ndim + 1 or base.shape[0] != len(values):
        return None
    if not base.flags.c_contiguous or base.shape[1:] != first.shape or base.dtype != first.dtype:
        return None
    ptr, stride = base.__array_interface__["data"][0], base.strides[0]
    for k, v in enumerate(values):
        if not isinstance(v, np.ndarray) or v.base is not base or v.__array_interface__["data"][0] != ptr + k * stride:
            return None
    return base


class Batch(dict):
    """A collated batch: ``{'audio_name': (B,) str, 'waveform': (B, T), 'target': (B, C)}`` numpy arrays.

    A dict (the official contract) that DataLoader's pin-memory thread knows how to pin: it calls
    :meth:`pin_memory`, which copies the numeric arrays once into page-locked tensors. The worker's
    shared-memory arrays are dropped right after that copy, so their slots go back to the worker.
    """

    def pin_memory(self, device=None) -> "Batch":
        return Batch({k: torch.from_numpy(v).pin_memory() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
                      else v for k, v in self.items()})


def collate_fn(list_data_dict: List[dict]) -> Batch:
    """[{'audio_name', 'waveform', 'target'}, ...] -> {'audio_name': (B,), 'waveform': (B, T), 'target': (B, C)}.

    numpy arrays as in the official code (a :class:`Batch`). Batches read by ``AudioSetDataset.__getitems__``
    are handed over without copying; inside a loader worker numeric arrays are stacked into shared memory.
    """
    out = Batch()
    for key in list_data_dict[0].keys():
        values = [d[key] for d in list_data_dict]
        base = _stacked_base(values) if isinstance(values[0], np.ndarray) else None
        if base is not None:
            out[key] = base
            continue
        arr = np.array(values)
        if arr.dtype.kind in "biuf" and arr.size and _in_loader_worker():
            shared = _alloc(arr.shape, arr.dtype)
            shared[...] = arr
            arr = shared
        out[key] = arr
    return out


_SCALES: Dict[torch.device, torch.Tensor] = {}


def _int16_scale(device: torch.device) -> torch.Tensor:
    """32767 as a 0-dim float32 tensor on ``device``. Dividing by a device tensor, not a Python number, keeps
    the division exact: CUDA kernels turn division by a host scalar into multiplication by its reciprocal,
    which differs from ``x / 32767`` in the last bit for some values."""
    t = _SCALES.get(device)
    if t is None:
        t = _SCALES[device] = torch.tensor(float(INT16_SCALE), dtype=torch.float32, device=device)
    return t


def to_device(batch: Dict[str, object], device: torch.device) -> Dict[str, object]:
    """A collated batch on ``device``: 'waveform' float32 (B, T), 'target' float32 (B, C), other numeric
    arrays as float32 / int64 tensors, anything else (names) as it is.

    int16 waveforms (the training path) are copied as int16 and divided by 32767 on the device, which
    gives exactly ``int16_to_float32`` of the same rows. Pinned inputs are copied asynchronously."""
    device = torch.device(device)
    out: Dict[str, object] = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, torch.Tensor):
            non_blocking = device.type == "cuda" and v.is_pinned()
            if k == "waveform" and v.dtype == torch.int16:
                v = v.to(device, non_blocking=non_blocking).to(torch.float32).div_(_int16_scale(device))
            elif v.is_floating_point() or v.dtype == torch.bool:
                v = v.to(device, non_blocking=non_blocking).to(torch.float32)
            else:
                v = v.to(device, non_blocking=non_blocking).to(torch.int64)
        out[k] = v
    return out


class CudaBatches:
    """Batches to a CUDA device a step ahead: each batch is copied on a side stream while the step before it
    computes (from page-locked memory: asynchronous), and the compute stream waits only for that copy. The
    training loop and the evaluations both use it (:func:`device_batches`). Batches that arrive unpinned (a
    torch whose pin-memory thread skipped them) are pinned here, with one warning."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.ahead: Optional[Tuple[Dict[str, object], torch.cuda.Event]] = None
        self.warned = False

    def _pinned(self, batch: Dict[str, object]) -> Dict[str, object]:
        out = {}
        for k, v in batch.items():
            if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
                v = torch.from_numpy(np.ascontiguousarray(v))
            if isinstance(v, torch.Tensor) and not v.is_pinned():
                if not self.warned:
                    logger.warning("loader batches arrive in pageable memory; pinning them before the copy")
                    self.warned = True
                v = v.pin_memory()
            out[k] = v
        return out

    def put(self, batch: Dict[str, object]) -> None:
        """Start copying ``batch`` (the next step's) to the GPU."""
        batch = self._pinned(batch)
        with torch.cuda.stream(self.stream):
            on_device = to_device(batch, self.device)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.ahead = (on_device, done)

    def take(self) -> Dict[str, object]:
        """The batch put last, usable on the current stream."""
        batch, done = self.ahead
        self.ahead = None
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                v.record_stream(current)   # allocated on the copy stream, used on this one
        return batch


def device_batches(loader: Iterable[Dict[str, object]], device: torch.device) -> Iterator[Dict[str, object]]:
    """``loader``'s batches on ``device`` (:func:`to_device`); on CUDA each is copied while the one before it is
    in use (:class:`CudaBatches`), so the copy overlaps the computation."""
    device = torch.device(device)
    if device.type != "cuda":
        for batch in loader:
            yield to_device(batch, device)
        return
    stream = CudaBatches(device)
    for batch in loader:
        current = stream.take() if stream.ahead is not None else None
        stream.put(batch)   # the next batch's copy starts before the current one is handed out
        if current is not None:
            yield current
    if stream.ahead is not None:
        yield stream.take()


def usable_cpu_set() -> Set[int]:
    """The CPUs this process may run on (affinity: taskset, SLURM binding, a container's cpuset)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def usable_cpus() -> int:
    """CPUs this process may run on (affinity / container limits), not the machine's count."""
    return max(1, len(usable_cpu_set()))


def shm_bytes(clips_per_batch: int, clip_samples: int, classes_num: int, workers: int, raw: bool) -> int:
    """Shared memory one loader's workers hold at most: each worker's :class:`_ShmPool` keeps up to
    ``PIPELINE`` batches alive (one in the training step, one received, one prefetched, one being filled),
    each a (B, T) waveform array (int16 on the GPU path, float32 on the CPU path) and its (B, C) targets."""
    per_clip = clip_samples * (2 if raw else 4) + classes_num * (1 if raw else 4)
    return workers * _ShmPool.PIPELINE * clips_per_batch * per_clip


def shm_available(path: str = "/dev/shm") -> Optional[int]:
    """Bytes free in the shared-memory file system (None where there is none to ask, e.g. macOS)."""
    try:
        st = os.statvfs(path)
    except (AttributeError, OSError):
        return None
    return st.f_bavail * st.f_frsize


def train_loader(sample_rate: int, batch_sampler, num_workers: int, device: torch.device, seed: int,
                 persistent_workers: bool = False, raw: Optional[bool] = None,
                 pin_memory: Optional[bool] = None) -> DataLoader:
    """The DataLoader of the training path (``main.py train``, ``bench_loader.py``, ``bench_train.py``).

    Workers read rows with one ``preadv`` each into recycled shared memory. For a GPU (``raw`` None ->
    True on CUDA) they stay int16 waveforms and bool targets - half the bytes - the pin-memory thread copies
    each batch once into page-locked memory and :func:`to_device` makes them float32 on the GPU. For the
    CPU the workers convert to float32 themselves (in parallel; the main process would otherwise do it
    alone, ~100 ms per 64-clip batch on a loaded core). Either way the model sees exactly
    ``int16_to_float32`` of the stored rows. ``seed`` gives the loader its own generator, so creating
    iterators never draws from the global torch RNG (exact resume). ``pin_memory`` (None: on CUDA) can be
    turned off for loaders whose page-locked copies would stay cached for the whole run for little gain
    (evaluation: PyTorch's pinned-memory cache keeps its peak for the rest of the process)."""
    device = torch.device(device)
    if raw is None:
        raw = device.type == "cuda"
    if pin_memory is None:
        pin_memory = device.type == "cuda"
    kwargs = dict(batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=num_workers,
                  pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
    if num_workers > 0:
        kwargs.update(worker_init_fn=worker_init_fn, persistent_workers=persistent_workers)
    return DataLoader(AudioSetDataset(sample_rate=sample_rate, raw=raw), **kwargs)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker init: seed numpy and random from torch's per-worker seed (distinct per worker/epoch);
    stop signals are the parent's (:func:`leave_signals_to_parent`)."""
    seed = torch.initial_seed() % (2 ** 32)
    np.random.seed(seed)
    random.seed(seed)
    leave_signals_to_parent()


def leave_signals_to_parent(worker_id: int = 0) -> None:
    """A training loader's worker ignores Ctrl-C and SIGTERM (a DataLoader ``worker_init_fn``). A terminal's
    Ctrl-C and a cluster's SIGTERM reach every process of the job, and a worker quits on them, so the training
    run, which stops at the next step boundary with a checkpoint, would find its loader dead. The workers end
    with their loader (and notice a parent that died: DataLoader's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ------------------------------------------------------------------------------------------------
# Black list
# ------------------------------------------------------------------------------------------------

def read_black_list(black_list_csv: str) -> Set[str]:
    """Names ('Y<YTID>.wav') from a black-list CSV: one YTID per row (official format), or full names."""
    if not os.path.isfile(black_list_csv):
        raise PannsError(f"black list CSV not found: {black_list_csv}")
    names = set()
    for row in config.read_csv_rows(black_list_csv):   # UTF-8 with or without a BOM, UTF-16, Latin-1: one line
        if not row or not row[0].strip():
            continue
        x = row[0].strip()
        names.add(x if x.endswith(".wav") and x.startswith("Y") else f"Y{x}.wav")
    return names


# ------------------------------------------------------------------------------------------------
# Samplers
# ------------------------------------------------------------------------------------------------

def _fingerprint(table: IndexTable) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(np.int64(len(table)).tobytes())
    h.update(np.ascontiguousarray(table.audio_names).tobytes())
    h.update(np.ascontiguousarray(table.indexes_in_hdf5).tobytes())
    return h.hexdigest()


class _Index(object):
    """An index file loaded for sampling: paths/rows for meta dicts and the pool of usable rows."""

    def __init__(self, indexes_hdf5_path: str, black_list_csv: Optional[str], black_list: Optional[Iterable[str]],
                 load_positives: bool):
        t0 = time.time()
        self.table = read_index(indexes_hdf5_path, load_positives=load_positives)
        self.fingerprint = _fingerprint(self.table)
        names: Set[str] = set(black_list or ())
        if black_list_csv:
            names |= read_black_list(black_list_csv)
        keep = np.ones(len(self.table), dtype=bool)
        if names:
            listed = np.array([n.encode("utf-8") for n in sorted(names)], dtype="S")   # a non-ASCII name matches none
            keep &= ~np.isin(self.table.audio_names, listed)
        self.pool = np.flatnonzero(keep)
        self.black_listed = int(len(self.table) - len(self.pool))
        logger.info("Black list samples: %d", self.black_listed)
        logger.info("Training number: %d", len(self.pool))
        logger.info("Load index time: %.3f s", time.time() - t0)
        if len(self.pool) == 0:
            raise PannsError(f"{indexes_hdf5_path} has no usable clips (empty or all black-listed)")

    def meta(self, row: int) -> dict:
        t = self.table
        return {"hdf5_path": t.hdf5_paths[t.path_codes[row]], "index_in_hdf5": int(t.indexes_in_hdf5[row])}


class _RandomStream(object):
    """Global position p -> row: epoch p // M is a fresh permutation of the M pooled rows."""

    def __init__(self, pool: np.ndarray, seed: int):
        self.pool, self.seed = pool, seed
        self._epoch, self._perm = -1, None

    def rows(self, start: int, count: int) -> List[int]:
        m = len(self.pool)
        out = []
        for p in range(start, start + count):
            e = p // m
            if e != self._epoch:
                self._epoch = e
                self._perm = np.random.default_rng([self.seed, _TAG_EPOCH, e]).permutation(m)
            out.append(int(self.pool[self._perm[p % m]]))
        return out


class _BalancedStream(object):
    """Global class slot s -> row (see module docstring)."""

    def __init__(self, index: _Index, seed: int):
        rows, cols = index.table.positives  # (row, class) of every label; the (N, C) matrix is never held
        classes_num = index.table.classes_num
        if len(index.pool) != len(index.table):  # drop black-listed rows
            usable = np.zeros(len(index.table), dtype=bool)
            usable[index.pool] = True
            keep = usable[rows]
            rows, cols = rows[keep], cols[keep]
        order = np.argsort(cols, kind="stable")  # rows stay ascending within a class
        rows, cols = rows[order], cols[order]
        counts = np.bincount(cols, minlength=classes_num)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self.rows_per_class = [rows[bounds[c]:bounds[c + 1]] for c in range(classes_num)]
        self.samples_num_per_class = counts
        self.classes = np.flatnonzero(counts > 0)
        empty = classes_num - len(self.classes)
        if empty:
            logger.warning("%d of %d classes have no clip and are skipped by the balanced sampler",
                           empty, classes_num)
        if len(self.classes) == 0:
            raise PannsError(f"{index.table.indexes_hdf5_path}: no clip has a positive label; "
                             "the balanced sampler needs labelled clips")
        self.seed = seed
        self._round, self._round_perm = -1, None
        self._class_perm: Dict[int, tuple] = {}

    def rows(self, start: int, count: int) -> List[int]:
        k = len(self.classes)
        out = []
        for s in range(start, start + count):
            r = s // k
            if r != self._round:
                self._round = r
                self._round_perm = self.classes[np.random.default_rng([self.seed, _TAG_CLASS_ROUND, r]).permutation(k)]
            c = int(self._round_perm[s % k])
            clips = self.rows_per_class[c]
            n_c = len(clips)
            cycle = r // n_c  # class c is drawn exactly once per round, so this is its r-th draw
            cached = self._class_perm.get(c)
            if cached is None or cached[0] != cycle:
                cached = (cycle, np.random.default_rng([self.seed, _TAG_CLASS_CLIPS, c, cycle]).permutation(n_c))
                self._class_perm[c] = cached
            out.append(int(clips[cached[1][r % n_c]]))
        return out


def _check_batching(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise PannsError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise PannsError(f"invalid rank/world_size: {rank}/{world_size}")


class ResumableBatchSampler(object):
    """Endless batch sampler whose local batch ``k`` is a pure function of ``k`` (one global stream;
    rank r takes global batches r, r + W, r + 2W, ...), so resuming is setting a counter.

    ``state_dict(batches_consumed)`` is a few integers plus what identifies the data (see ``_identity``);
    ``load_state_dict`` refuses a state saved for other data, seed or batch size and jumps to the
    position in O(1). The one resume mechanism of every training loop (AudioSet and fine-tuning)."""

    def __init__(self, batch_size: int, random_seed: int, rank: int = 0, world_size: int = 1):
        _check_batching(batch_size, rank, world_size)
        self.batch_size = int(batch_size)
        self.random_seed = int(random_seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self._batches = 0  # local batches yielded by this rank

    def _global_batch(self, g: int) -> list:
        """The items of global batch ``g``."""
        raise NotImplementedError

    def _identity(self) -> List[tuple]:
        """(key, value, what differs when it does not match) of the data the stream runs over."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list]:
        while True:
            batch = self._global_batch(self._batches * self.world_size + self.rank)
            self._batches += 1
            yield batch

    def state_dict(self, batches_consumed: Optional[int] = None) -> dict:
        """Small resumable state. ``batches_consumed``: local batches the training loop actually used
        (defaults to the batches this sampler has yielded, which includes loader prefetch)."""
        batches = self._batches if batches_consumed is None else int(batches_consumed)
        if batches < 0:
            raise PannsError(f"batches_consumed must be >= 0, got {batches}")
        return {"sampler": type(self).__name__, "version": STATE_VERSION, "seed": self.random_seed,
                "batch_size": self.batch_size, **{key: value for key, value, _what in self._identity()},
                "rank": self.rank, "world_size": self.world_size, "batches": batches}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken. Raises PannsError if it belongs to another setup."""
        if not isinstance(state, dict) or "batches" not in state:
            if isinstance(state, dict) and ({"indexes", "pointer", "queue", "sampler1"} & set(state)):
                raise PannsError("this sampler state comes from the official code (RandomState snapshot) and "
                                 "cannot be restored exactly; start the sampler fresh instead")
            raise PannsError("not a sampler state dict (no 'batches')")
        name = type(self).__name__
        if state.get("sampler") != name:
            raise PannsError(f"sampler state is for {state.get('sampler')}, this sampler is {name}")
        checks = self._identity() + [("seed", self.random_seed, "a different random seed"),
                                     ("batch_size", self.batch_size, "a different batch size")]
        for key, mine, what in checks:
            if state.get(key) != mine:
                raise PannsError(f"sampler state was saved with {what} ({key}: saved {state.get(key)!r}, "
                                 f"now {mine!r})")
        global_batches = int(state["batches"]) * int(state.get("world_size", 1))
        if global_batches % self.world_size:
            raise PannsError(f"cannot resume {global_batches} global batches on {self.world_size} ranks "
                             f"(saved with world_size={state.get('world_size')})")
        self._batches = global_batches // self.world_size


class _TrainSamplerBase(ResumableBatchSampler):
    """Batches of meta dicts over the clips of an index file (see ResumableBatchSampler)."""

    _needs_targets = False

    def __init__(self, indexes_hdf5_path: str, batch_size: int, black_list_csv: Optional[str] = None,
                 random_seed: int = 1234, rank: int = 0, world_size: int = 1,
                 black_list: Optional[Iterable[str]] = None):
        super().__init__(batch_size, random_seed, rank, world_size)
        self.indexes_hdf5_path = indexes_hdf5_path
        self.index = _Index(indexes_hdf5_path, black_list_csv, black_list, self._needs_targets)
        self._build()
        self.index.table.positives = None  # only needed while building the per-class lists

    def _build(self) -> None:
        """Set ``self._stream`` (or what ``_global_batch_rows`` reads)."""
        raise NotImplementedError

    def _global_batch_rows(self, g: int) -> List[int]:
        return self._stream.rows(g * self.batch_size, self.batch_size)

    def _global_batch(self, g: int) -> List[dict]:
        return [self.index.meta(r) for r in self._global_batch_rows(g)]

    def _identity(self) -> List[tuple]:
        where = f"index {self.indexes_hdf5_path}"
        return [("index_fingerprint", self.index.fingerprint, f"a different index file, {where}"),
                ("num_clips", len(self.index.table), f"a different index file, {where}"),
                ("pool_size", len(self.index.pool), f"a different black list, {where}")]

    @property
    def audios_num(self) -> int:
        return len(self.index.pool)

    def batch_rows(self, k: int) -> List[int]:
        """Index-file rows of this rank's local batch ``k`` (pure function; no state change)."""
        return self._global_batch_rows(k * self.world_size + self.rank)


class TrainSampler(_TrainSamplerBase):
    """Random batches (balanced='none'): each clip once per epoch, new permutation every epoch."""

    def _build(self) -> None:
        self._stream = _RandomStream(self.index.pool, self.random_seed)


class BalancedTrainSampler(_TrainSamplerBase):
    """Class-balanced batches (balanced='balanced'): one clip per class slot, classes cycle in random order."""

    _needs_targets = True

    def _build(self) -> None:
        self._stream = _BalancedStream(self.index, self.random_seed)
        self.samples_num_per_class = self._stream.samples_num_per_class
        logger.info("samples_num_per_class: %s", self.samples_num_per_class.astype(np.int32))


class AlternateTrainSampler(_TrainSamplerBase):
    """balanced='alternate': global batch 0 balanced, 1 random, 2 balanced, ... (official order)."""

    _needs_targets = True

    def _build(self) -> None:
        self._balanced = _BalancedStream(self.index, self.random_seed)
        self._random = _RandomStream(self.index.pool, self.random_seed)

    def _global_batch_rows(self, g: int) -> List[int]:
        stream = self._balanced if g % 2 == 0 else self._random
        return stream.rows((g // 2) * self.batch_size, self.batch_size)


class EvaluateSampler(object):
    """Every row of an index once, in file order, in batches of ``batch_size`` (finite).

    With ``world_size > 1`` rank r gets the r-th contiguous block of rows (np.array_split).
    Meta dicts also carry 'audio_name' and 'target' as in the official code.
    """

    def __init__(self, indexes_hdf5_path: str, batch_size: int, rank: int = 0, world_size: int = 1):
        _check_batching(batch_size, rank, world_size)
        self.batch_size = int(batch_size)
        self.table = read_index(indexes_hdf5_path, load_targets=True)
        self.rows = np.array_split(np.arange(len(self.table)), world_size)[rank]

    @property
    def audios_num(self) -> int:
        return len(self.rows)

    def __len__(self) -> int:
        return (len(self.rows) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[List[dict]]:
        t = self.table
        for start in range(0, len(self.rows), self.batch_size):
            yield [{"audio_name": t.audio_names[r].decode(), "hdf5_path": t.hdf5_paths[t.path_codes[r]],
                    "index_in_hdf5": int(t.indexes_in_hdf5[r]), "target": t.targets[r].astype(np.float32)}
                   for r in self.rows[start:start + self.batch_size]]
