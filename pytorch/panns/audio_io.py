"""Decoding audio files of any common format into mono float32 at a requested sample rate.

One function, :func:`load_audio`, used by packing, inference, feature extraction and fine-tuning.
It matches ``librosa.load(path, sr=sr, mono=True)`` (what the official code calls): channels are
averaged, samples are float32 in [-1, 1), and a file whose rate differs is resampled with soxr
at librosa's default quality (``soxr_hq``). soundfile decodes wav/flac/ogg/mp3 directly; anything it
cannot read (m4a/aac, webm/opus, video containers) goes through ffmpeg (system binary, or the one
shipped by the ``imageio-ffmpeg`` wheel). Every failure is an :class:`AudioDecodeError` whose
message names the file and the reason.

Encoded bytes (a member of a tar shard, a Parquet cell) decode through :func:`load_audio_bytes`, the
same numerics as a file. A file shorter than its header says (an interrupted download or copy) is
a :class:`TruncatedAudioError` when ``on_truncated='raise'`` (packing), a logged warning by default.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import re
import shutil
import subprocess
from typing import Iterator, Optional, Tuple

import numpy as np
import soundfile as sf
import soxr

from panns.errors import AudioDecodeError

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".webm", ".aiff", ".aif", ".mp4")


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> Optional[str]:
    """Path of an ffmpeg binary: $FFMPEG, the system one, or imageio-ffmpeg's; None if none."""
    exe = os.environ.get("FFMPEG") or shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg  # optional dependency: only when no system ffmpeg is found

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        return None


class TruncatedAudioError(AudioDecodeError):
    """The file holds fewer samples than its header declares (``declared_s``, ``read_s`` in seconds)."""

    def __init__(self, name: str, declared_s: float, read_s: float):
        super().__init__(f"truncated file {name}: header says {declared_s:.2f} s, only {read_s:.2f} s present")
        self.declared_s, self.read_s = declared_s, read_s


# What soundfile raises on a file it opened but cannot decode (every reader here catches this list), and the
# words of libsndfile for a FLAC stream cut short, whose samples up to the cut are the file (with a warning).
SOUNDFILE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)


def cut_short(error: Exception) -> bool:
    """Whether a soundfile error is a FLAC stream cut short ('decoder lost sync')."""
    return "lost sync" in str(error)


# A pipe's writer cannot know the length when it writes the header: ffmpeg and sox put 0xFFFFFFFF, others
# 0x7FFFFFFF or 0x7FFFF000 (and arecord 0). A WAV data size of 0 or at least this means "until the end".
WAV_UNKNOWN_SIZE = 0x7FFF0000
_SAMPLE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
_WAV_DATA_RE = re.compile(r"\ndata : (\d+) \(should be (\d+)\)")


def declared_frames(f: "sf.SoundFile") -> Optional[int]:
    """Frames the header promises, where the format states it exactly (WAV data size, FLAC STREAMINFO).

    libsndfile silently shortens a WAV whose data chunk runs past the end of the file and only says so
    in its log (``data : 192000 (should be 39680)``). A size that means "unknown" (a WAV written to a pipe,
    WAV_UNKNOWN_SIZE) promises nothing: such files were refused as truncated."""
    if f.format == "WAV":
        m = _WAV_DATA_RE.search(f.extra_info or "")
        width = _SAMPLE_BYTES.get(f.subtype)
        if not (m and width) or not 0 < int(m.group(1)) < WAV_UNKNOWN_SIZE:
            return None
        return int(m.group(1)) // (width * f.channels)
    if f.format == "FLAC" and f.frames > 0:
        return int(f.frames)
    return None


def is_truncated(path: str) -> bool:
    """True when a WAV/FLAC file is shorter than its header says (an interrupted download or copy)."""
    try:
        with sf.SoundFile(path) as f:
            declared = declared_frames(f)
            return declared is not None and declared > f.frames
    except Exception:
        return False


def _decode_soundfile(src) -> Tuple[np.ndarray, int, Optional[int]]:
    """(float32 (channels, samples), rate, frames the header declares or None) of a path or file object."""
    with sf.SoundFile(src) as f:
        declared = declared_frames(f)
        data = f.read(dtype="float32", always_2d=True)  # (samples, channels)
        return data.T, f.samplerate, declared


def _decode_ffmpeg(path: str, data: Optional[bytes] = None) -> Tuple[np.ndarray, int]:
    exe = ffmpeg_exe()
    if exe is None:
        raise AudioDecodeError(f"cannot decode {path}: format needs ffmpeg (pip install imageio-ffmpeg)")
    # Bytes go through stdin ("pipe:0"); a file is read by name and stdin stays closed (-nostdin).
    src = ["-i", "pipe:0"] if data is not None else ["-nostdin", "-i", path]
    proc = subprocess.run([exe, "-hide_banner"] + src + ["-vn", "-f", "f32le", "-acodec", "pcm_f32le", "-"],
                          input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = proc.stderr.decode("utf-8", "replace")
    m = re.search(r"Audio: [^\n]*?(\d+) Hz, ([^,\n]+)", err)
    if proc.returncode != 0 or m is None:
        last = err.strip().splitlines()[-1] if err.strip() else "unknown error"
        raise AudioDecodeError(f"cannot decode {path}: {last}")
    sr = int(m.group(1))
    layout = m.group(2).strip()
    channels = {"mono": 1, "stereo": 2}.get(layout)
    if channels is None:
        cm = re.match(r"(\d+) channels", layout)
        named = {"2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "7.1": 8}
        channels = int(cm.group(1)) if cm else named.get(layout.split("(")[0], 1)
    data = np.frombuffer(proc.stdout, dtype=np.float32)
    data = data[: len(data) // channels * channels].reshape(-1, channels).T
    return data, sr


def _check(data: np.ndarray, sr: int, declared: Optional[int], name: str, on_truncated: str) -> None:
    if data.shape[-1] == 0:
        raise AudioDecodeError(f"cannot decode {name}: no audio samples")
    if not np.all(np.isfinite(data)):
        raise AudioDecodeError(f"cannot decode {name}: contains NaN or infinite samples")
    if declared is not None and data.shape[-1] < declared and on_truncated != "ignore":
        err = TruncatedAudioError(name, declared / sr, data.shape[-1] / sr)
        if on_truncated == "raise":
            raise err
        logger.warning("%s; using what is there", err)


def read_audio(path: str, on_truncated: str = "warn") -> Tuple[np.ndarray, int]:
    """Decode ``path`` at its own rate: returns (float32 array (channels, samples), sample_rate).

    ``on_truncated``: 'warn' (log, use the samples present), 'raise' (TruncatedAudioError) or 'ignore'."""
    if not os.path.exists(path):
        raise AudioDecodeError(f"audio file not found: {path}")
    if os.path.isdir(path):
        raise AudioDecodeError(f"expected an audio file, got a folder: {path}")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(f"cannot decode {path}: file is empty")
    declared = None
    try:
        data, sr, declared = _decode_soundfile(path)
    except SOUNDFILE_ERRORS as e:
        try:
            declared = sf.info(path).frames if cut_short(e) else None
        except Exception:
            declared = None
        data, sr = _decode_ffmpeg(path)
    _check(data, sr, declared, path, on_truncated)
    return data, sr


def read_audio_bytes(data: bytes, name: str = "<bytes>", on_truncated: str = "warn") -> Tuple[np.ndarray, int]:
    """:func:`read_audio` for encoded bytes in memory (``name`` is only used in messages)."""
    if len(data) == 0:
        raise AudioDecodeError(f"cannot decode {name}: empty")
    declared = None
    try:
        audio, sr, declared = _decode_soundfile(io.BytesIO(data))
    except SOUNDFILE_ERRORS as e:
        try:
            declared = sf.info(io.BytesIO(data)).frames if cut_short(e) else None
        except Exception:
            declared = None
        audio, sr = _decode_ffmpeg(name, data)
    _check(audio, sr, declared, name, on_truncated)
    return audio, sr


def to_mono(data: np.ndarray) -> np.ndarray:
    """(channels, samples) -> (samples,) by averaging channels, as librosa does."""
    return data[0] if data.shape[0] == 1 else data.mean(axis=0).astype(np.float32)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr, librosa's default 'soxr_hq'); identity when rates agree."""
    if orig_sr == target_sr:
        return y
    return soxr.resample(y, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str, sample_rate: int, mono: bool = True, on_truncated: str = "warn") -> np.ndarray:
    """Decode, downmix and resample a file. Returns float32 (samples,) (or (channels, samples))."""
    return _downmix_resample(*read_audio(path, on_truncated), sample_rate, mono, path)


def load_audio_bytes(data: bytes, sample_rate: int, mono: bool = True, name: str = "<bytes>",
                     on_truncated: str = "warn") -> np.ndarray:
    """:func:`load_audio` for encoded bytes (same decoder, downmix and resampler, so equal output)."""
    return _downmix_resample(*read_audio_bytes(data, name, on_truncated), sample_rate, mono, name)


def _downmix_resample(data: np.ndarray, sr: int, sample_rate: int, mono: bool, name: str) -> np.ndarray:
    if mono:
        # writable: ffmpeg's samples are a view of its output bytes, and torch.from_numpy warns on a read-only array
        out = np.require(resample(to_mono(data), sr, sample_rate), np.float32, ["C_CONTIGUOUS", "WRITEABLE"])
    else:
        out = np.stack([resample(c, sr, sample_rate) for c in data]).astype(np.float32)
    if out.shape[-1] == 0:   # decoded samples, none left after resampling (1 sample at 96 kHz is none at 32 kHz):
        # every caller would have run zero padding alone and reported the result of silence
        raise AudioDecodeError(f"{name} is too short: no sample is left at {sample_rate} Hz")
    return out


def is_audio_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def probe_seconds(path: str) -> Optional[float]:
    """Duration from the header without decoding (soundfile formats), None where unknown."""
    try:
        info = sf.info(path)
        return info.frames / info.samplerate if info.frames > 0 else None
    except Exception:
        return None


def stream_audio(path: str, sample_rate: int, block_seconds: float = 30.0) -> Iterator[np.ndarray]:
    """:func:`load_audio` piece by piece: mono float32 blocks at ``sample_rate`` whose concatenation
    is the decoded file (resampled by one soxr stream), so an hour-long file never sits in memory.
    Formats soundfile cannot read are decoded whole (ffmpeg) and yielded as one block; a truncated
    file is warned about with the length actually read."""
    try:
        f = sf.SoundFile(path)
    except Exception:
        yield load_audio(path, sample_rate)
        return
    with f:
        declared, sr = declared_frames(f), f.samplerate
        stream = None if sr == sample_rate else soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ")
        read = 0
        blocks = f.blocks(blocksize=max(1, int(block_seconds * sr)), dtype="float32", always_2d=True)
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                break
            except SOUNDFILE_ERRORS as e:
                # A file that fails part-way (a FLAC cut short: 'decoder lost sync') aborted a whole multi-file
                # run with a traceback; as read_audio does, what came before is the file, with the warning below
                if not cut_short(e) or read == 0:
                    raise AudioDecodeError(f"cannot decode {path}: {' '.join(str(e).split())} after "
                                           f"{read / sr:.2f} s") from None
                declared = max(declared or 0, int(f.frames))
                break
            if not np.all(np.isfinite(block)):
                raise AudioDecodeError(f"cannot decode {path}: contains NaN or infinite samples")
            read += len(block)
            mono = np.ascontiguousarray(to_mono(block.T))
            yield mono if stream is None else stream.resample_chunk(mono, last=False)
        if read == 0:
            raise AudioDecodeError(f"cannot decode {path}: no audio samples")
        if stream is not None:
            yield stream.resample_chunk(np.zeros(0, np.float32), last=True)
        if declared is not None and read < declared:
            logger.warning("%s; using what is there", TruncatedAudioError(path, declared / sr, read / sr))
