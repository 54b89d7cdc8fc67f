"""How a waveform HDF5 stores its clips: ``pcm16`` (the official layout) or ``flac`` (compact).

Both layouts hold the same ``audio_name`` (N,) S20, ``target`` (N, classes) bool and attributes
(``sample_rate``, ``clip_samples``, ``class_ids``, ``class_labels``), plus ``storage``:

* ``pcm16``: ``waveform`` int16 (N, clip_samples), one row per chunk (the official format).
* ``flac``: ``waveform_flac`` variable-length uint8 (N,); row i is a mono FLAC stream of exactly
  ``clip_samples`` 16-bit samples at ``sample_rate``. FLAC is lossless, so a decoded row equals the
  pcm16 row bit for bit; speech and music take about half the bytes. The official code cannot read
  this layout (its dataset is named differently on purpose, so it fails instead of reading bytes as
  samples); this project's loader decodes rows in its workers (:class:`FlacRowReader`).
"""
from __future__ import annotations

import io
import os
import struct
from typing import Optional

import h5py
import numpy as np
import soundfile as sf

from panns import audio_io
from panns.errors import PannsError

try:  # optional: without it (or in a version without the dr_flac functions) libsndfile decodes
    import miniaudio
except ImportError:
    miniaudio = None

STORAGES = ("pcm16", "flac")
PCM_KEY = "waveform"
FLAC_KEY = "waveform_flac"
_FLAC_ROWS_PER_CHUNK = 64  # row references per HDF5 chunk of the vlen dataset (the bytes live in the heap)
_DR_FLAC = getattr(miniaudio, "lib", None)
if not hasattr(_DR_FLAC, "ma_dr_flac_open_memory"):
    _DR_FLAC = None
# Names accepted by decode_flac_into(decoder=...), fastest first; the first is the default.
FLAC_DECODERS = ("miniaudio", "soundfile") if _DR_FLAC is not None else ("soundfile",)


def check_storage(storage: str, sample_rate: Optional[int] = None) -> str:
    """``storage`` if it is one of STORAGES and, for flac with ``sample_rate`` given, the encoder takes that
    rate (FLAC stops at 655,350 Hz: each clip was decoded, then listed as a decode error)."""
    if storage not in STORAGES:
        raise PannsError(f"--storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if storage == "flac" and sample_rate is not None:
        try:   # the library's own limit, asked once: a short silent row
            encode_flac(np.zeros(16, np.int16), sample_rate)
        except Exception:   # soundfile's words name a BytesIO object, not the cause
            raise PannsError(f"--storage flac cannot hold audio at {sample_rate} Hz (FLAC stops at 655,350 Hz); "
                             "use --storage pcm16 or a lower --sample_rate") from None
    return storage


def storage_of(hf: h5py.File) -> str:
    """'flac' or 'pcm16' for an open waveform HDF5; PannsError when it has neither layout."""
    if FLAC_KEY in hf:
        return "flac"
    if PCM_KEY in hf:
        return "pcm16"
    raise PannsError(f"{hf.filename} is not a waveform HDF5 (no '{PCM_KEY}' or '{FLAC_KEY}' dataset)")


def clip_samples_of(hf: h5py.File) -> int:
    """Samples per clip (at the file's ``sample_rate``) in either layout."""
    if storage_of(hf) == "pcm16":
        return int(hf[PCM_KEY].shape[1])
    if "clip_samples" not in hf.attrs:
        raise PannsError(f"{hf.filename}: flac layout without a 'clip_samples' attribute")
    return int(hf.attrs["clip_samples"])


def waveform_rows(hf: h5py.File) -> int:
    """Number of clips stored (length of the waveform dataset of either layout)."""
    return int(hf[FLAC_KEY if storage_of(hf) == "flac" else PCM_KEY].shape[0])


def encode_flac(row: np.ndarray, sample_rate: int) -> np.ndarray:
    """int16 (clip_samples,) -> FLAC stream as uint8 (nbytes,)."""
    buf = io.BytesIO()
    row = np.asarray(row, dtype=np.int16)
    try:
        # Level 0 (fixed predictors) decodes 10-15 % faster than the default for 1-3 % more bytes
        # (benchmarks/bench_storage.py); decoding is what the loader workers pay for on every epoch.
        sf.write(buf, row, int(sample_rate), format="FLAC", subtype="PCM_16", compression_level=0.0)
    except TypeError:  # soundfile < 0.12 has no compression_level
        buf = io.BytesIO()
        sf.write(buf, row, int(sample_rate), format="FLAC", subtype="PCM_16")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def _decode_soundfile(data: np.ndarray, out: np.ndarray, name: str) -> None:
    """libsndfile through soundfile's virtual IO (Python callbacks, but the FLAC decoding dominates)."""
    try:
        with sf.SoundFile(io.BytesIO(memoryview(np.ascontiguousarray(data)))) as f:
            if f.channels != 1:
                raise PannsError(f"FLAC {name} has {f.channels} channels, expected 1")
            n = f.read(frames=len(out), dtype="int16", out=out)
            n = len(n) if isinstance(n, np.ndarray) else int(n)
    except audio_io.SOUNDFILE_ERRORS as e:
        raise PannsError(f"cannot decode FLAC {name}: {e}") from None
    if n != len(out):
        raise PannsError(f"FLAC {name} holds {n} samples, expected {len(out)}")


def _decode_dr_flac(data: np.ndarray, out: np.ndarray, name: str) -> None:
    """dr_flac (miniaudio's C library through its cffi module) straight from the bytes into ``out``."""
    ffi = miniaudio.ffi
    src = ffi.from_buffer(np.ascontiguousarray(data))  # kept alive: dr_flac reads from it until closed
    flac = _DR_FLAC.ma_dr_flac_open_memory(src, len(src), ffi.NULL)
    if flac == ffi.NULL:
        raise PannsError(f"cannot decode FLAC {name}: not a FLAC stream")
    try:
        if flac.channels != 1 or flac.bitsPerSample != 16:
            raise PannsError(f"FLAC {name} is {flac.channels} channel(s) of {flac.bitsPerSample} bits, "
                             "expected mono 16-bit")
        total = int(flac.totalPCMFrameCount)  # 0: not in the header; then n below is all we know
        if total not in (0, len(out)):
            raise PannsError(f"FLAC {name} holds {total} samples, expected {len(out)}")
        n = int(_DR_FLAC.ma_dr_flac_read_pcm_frames_s16(flac, len(out), ffi.from_buffer("short[]", out, True)))
    finally:
        _DR_FLAC.ma_dr_flac_close(flac)
    if n != len(out):  # dr_flac skips frames whose CRC fails, so corruption ends here too
        raise PannsError(f"cannot decode FLAC {name}: {n} of {len(out)} samples decoded (corrupt or truncated)")


_DECODE = {"soundfile": _decode_soundfile, "miniaudio": _decode_dr_flac}


def decode_flac_into(data: np.ndarray, out: np.ndarray, name: str = "row", decoder: Optional[str] = None) -> None:
    """FLAC bytes uint8 (nbytes,) -> ``out`` int16 (clip_samples,), which must be filled exactly.

    ``decoder``: one of :data:`FLAC_DECODERS` (default: the first, the fastest installed)."""
    decoder = decoder or FLAC_DECODERS[0]
    if decoder not in FLAC_DECODERS:
        raise PannsError(f"FLAC decoder must be one of {', '.join(FLAC_DECODERS)}, got {decoder!r}")
    if out.dtype != np.int16 or out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writable C-contiguous int16 (clip_samples,) array")
    _DECODE[decoder](data, out, name)


def encode_row(row: np.ndarray, storage: str, sample_rate: int) -> np.ndarray:
    """What a packer stores for one clip: the int16 row itself (pcm16) or its FLAC bytes."""
    return encode_flac(row, sample_rate) if storage == "flac" else row


class WaveformWriter(object):
    """Appends rows to a new waveform dataset of either layout in an open (writable) HDF5.

    ``capacity`` rows are reserved; :meth:`finish` shrinks the dataset to the rows written (clips that
    failed to decode leave no gap) and sets the ``storage``/``clip_samples`` attributes."""

    def __init__(self, hf: h5py.File, capacity: int, clip_samples: int, storage: str):
        self.hf, self.storage, self.clip_samples = hf, check_storage(storage), int(clip_samples)
        self.rows, self.nbytes = 0, 0
        if storage == "pcm16":
            # One row per chunk: rows are read one at a time, and the dataset can shrink at the end.
            self.ds = hf.create_dataset(PCM_KEY, shape=(capacity, clip_samples), maxshape=(None, clip_samples),
                                        dtype=np.int16, chunks=(1, clip_samples))
        else:
            rows_per_chunk = min(_FLAC_ROWS_PER_CHUNK, capacity) if capacity else _FLAC_ROWS_PER_CHUNK
            self.ds = hf.create_dataset(FLAC_KEY, shape=(capacity,), maxshape=(None,),
                                        dtype=h5py.vlen_dtype(np.uint8), chunks=(rows_per_chunk,))

    def append(self, encoded: np.ndarray) -> None:
        """Write the next row: an int16 (clip_samples,) row (pcm16) or uint8 FLAC bytes (flac)."""
        if self.rows >= self.ds.shape[0]:  # unknown count (tar stream): grow geometrically, finish() trims
            self.ds.resize((max(64, 2 * self.ds.shape[0]),) + self.ds.shape[1:])
        self.ds[self.rows] = encoded
        self.rows += 1
        self.nbytes += int(encoded.nbytes)

    def finish(self) -> None:
        self.ds.resize((self.rows,) + self.ds.shape[1:])
        self.hf.attrs["storage"] = self.storage
        self.hf.attrs["clip_samples"] = np.int64(self.clip_samples)


class _HeapRows(object):
    """Reads the bytes of row i of a variable-length uint8 dataset straight from the file with ``os.pread``.

    h5py's vlen read costs 300-400 us per 10-s FLAC row (HDF5 reads the heap object, copies it into a
    zeroed buffer, h5py copies that into a new array): 15 % of a loader worker's time per clip next to the
    ~2 ms decode. Here: one 16-byte read of the row's heap reference (the chunk offsets are known once),
    one read of the heap collection holding the bytes into a reused buffer. Used only for files open
    read-only, chunked without filters, through the default (sec2) driver; :meth:`rows_match` checks a
    row against h5py once, and anything unexpected raises ``ValueError`` for the caller to fall back.
    """

    def __init__(self, ds: h5py.Dataset):
        f = ds.file
        if f.mode != "r" or f.driver != "sec2" or ds.chunks is None or ds.id.get_create_plist().get_nfilters():
            raise ValueError("not a plain read-only chunked dataset")
        self.fd = f.id.get_vfd_handle()  # HDF5's own descriptor: pread leaves its position alone
        fcpl = f.id.get_create_plist()
        self.addr_size, self.size_size = fcpl.get_sizes()
        self.base = fcpl.get_userblock()  # heap addresses are relative to the end of the user block
        self.ref = struct.Struct(f"<I{self._int(self.addr_size)}I")  # length, collection address, index
        self.obj = struct.Struct(f"<HH4x{self._int(self.size_size)}")  # index, references, size
        self.head = 8 + self.size_size  # "GCOL", version, reserved, collection size
        self.per_chunk = ds.chunks[0]
        self.chunks = np.full(-(-ds.shape[0] // self.per_chunk), -1, dtype=np.int64)

        def visit(info):
            self.chunks[info.chunk_offset[0] // self.per_chunk] = info.byte_offset

        ds.id.chunk_iter(visit)
        self.buf = bytearray(0)

    @staticmethod
    def _int(nbytes: int) -> str:
        if nbytes not in (4, 8):
            raise ValueError(f"{nbytes}-byte file addresses")
        return "I" if nbytes == 4 else "Q"

    def _pread(self, n: int, offset: int, exact: bool = True) -> memoryview:
        """n bytes at ``offset`` (fewer at the end of the file unless ``exact``)."""
        if len(self.buf) < n:
            self.buf = bytearray(max(n, 2 * len(self.buf)))
        view = memoryview(self.buf)[:n]
        done = 0
        while done < n:
            k = os.preadv(self.fd, [view[done:]], offset + done)
            if k <= 0:
                if exact:
                    raise ValueError("end of file")
                break
            done += k
        return view[:done]

    def row(self, i: int) -> memoryview:
        """The bytes of row i (a view into a buffer reused by the next call)."""
        chunk = int(self.chunks[i // self.per_chunk])
        if chunk < 0:
            raise ValueError("chunk not written")
        length, addr, index = self.ref.unpack(self._pread(self.ref.size, chunk + (i % self.per_chunk) * self.ref.size))
        if length == 0:
            return memoryview(b"")
        # A row of a 10-s clip fills a collection of its own: this first read usually holds it all.
        view = self._pread(self.head + self.obj.size + length, self.base + addr, exact=False)
        if len(view) < self.head or bytes(view[:5]) != b"GCOL\x01":
            raise ValueError("not a global heap collection")
        size = int.from_bytes(view[8:self.head], "little")
        pos = self.head
        while pos + self.obj.size <= size:
            if len(view) < size and pos + self.obj.size + length > len(view):
                view = self._pread(size, self.base + addr)  # a collection shared by smaller rows
            k, _refs, n = self.obj.unpack(view[pos:pos + self.obj.size])
            if k == 0:  # free space: the rest of the collection
                break
            start = pos + self.obj.size
            if k == index:
                if n != length or start + n > len(view):
                    raise ValueError("heap object size differs from the row length")
                return view[start:start + n]
            pos = start + (n + 7) // 8 * 8
        raise ValueError("heap object not found")

    def rows_match(self, ds: h5py.Dataset, i: int = 0) -> bool:
        return ds.shape[0] == 0 or bytes(self.row(i)) == ds[i].tobytes()


class FlacRowReader(object):
    """Row reader of the flac layout with the interface of the pcm16 row reader of the data loader:
    ``row_shape`` (clip_samples,), ``dtype`` int16, ``read_into(i, out)``, ``read(i)``. ``decoder``: see
    :func:`decode_flac_into`. Rows are read with :class:`_HeapRows` where it applies, else through h5py."""

    def __init__(self, ds: h5py.Dataset, clip_samples: int, decoder: Optional[str] = None):
        self.ds = ds
        self.row_shape = (int(clip_samples),)
        self.dtype = np.dtype(np.int16)
        self.decoder = decoder
        try:
            self.heap: Optional[_HeapRows] = _HeapRows(ds)
            if not self.heap.rows_match(ds):
                self.heap = None
        except (ValueError, OSError, AttributeError, struct.error):  # AttributeError: h5py without chunk_iter
            self.heap = None

    def _bytes(self, i: int):
        if self.heap is not None:
            try:
                return self.heap.row(i)
            except (ValueError, OSError, struct.error):
                pass  # h5py below reads it, or says why it cannot
        return self.ds[i]

    def read_into(self, i: int, out: np.ndarray) -> None:
        if not 0 <= i < self.ds.shape[0]:
            raise PannsError(f"row {i} out of range for {self.ds.name} ({self.ds.shape[0]} rows) "
                             f"in {self.ds.file.filename}")
        decode_flac_into(self._bytes(i), out, f"row {i} of {self.ds.file.filename}", self.decoder)

    def read(self, i: int) -> np.ndarray:
        out = np.empty(self.row_shape, self.dtype)
        self.read_into(i, out)
        return out


def read_waveform(hf: h5py.File, i: int) -> np.ndarray:
    """Row ``i`` as int16 (clip_samples,) from either layout (convenience for tests and tools)."""
    if storage_of(hf) == "pcm16":
        return hf[PCM_KEY][i]
    return FlacRowReader(hf[FLAC_KEY], clip_samples_of(hf)).read(i)


def estimate_bytes(rows: int, clip_samples: int, storage: str) -> int:
    """Bytes a packed file will need: exact for pcm16; for flac the pcm16 size (FLAC is never much
    larger and usually about half, so this is a safe upper bound for the free-space check)."""
    return int(rows) * int(clip_samples) * 2 + (1 << 20)

