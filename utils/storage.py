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
from typing import Optional

import h5py
import numpy as np
import soundfile as sf

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


def check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise PannsError(f"--storage must be one of {', '.join(STORAGES)}, got {storage!r}")
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
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
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


class FlacRowReader(object):
    """Row reader of the flac layout with the interface of the pcm16 row reader of the data loader:
    ``row_shape`` (clip_samples,), ``dtype`` int16, ``read_into(i, out)``, ``read(i)``. ``decoder``: see
    :func:`decode_flac_into`."""

    def __init__(self, ds: h5py.Dataset, clip_samples: int, decoder: Optional[str] = None):
        self.ds = ds
        self.row_shape = (int(clip_samples),)
        self.dtype = np.dtype(np.int16)
        self.decoder = decoder

    def read_into(self, i: int, out: np.ndarray) -> None:
        if not 0 <= i < self.ds.shape[0]:
            raise PannsError(f"row {i} out of range for {self.ds.name} ({self.ds.shape[0]} rows) "
                             f"in {self.ds.file.filename}")
        decode_flac_into(self.ds[i], out, f"row {i} of {self.ds.file.filename}", self.decoder)

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

