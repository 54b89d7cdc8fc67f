"""Decoding audio files of any common format into mono float32 at a requested sample rate.

One function, :func:`load_audio`, used by packing, inference, feature extraction and fine-tuning.
It matches ``librosa.load(path, sr=sr, mono=True)`` (what the official code calls): channels are
averaged, samples are float32 in [-1, 1), and a file whose rate differs is resampled with soxr
at librosa's default quality (``soxr_hq``). soundfile decodes wav/flac/ogg/mp3 directly; anything it
cannot read (m4a/aac, webm/opus, video containers) goes through ffmpeg (system binary, or the one
shipped by the ``imageio-ffmpeg`` wheel). Every failure is an :class:`AudioDecodeError` whose
message names the file and the reason.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from typing import Optional, Tuple

import numpy as np
import soundfile as sf
import soxr

from panns.errors import AudioDecodeError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".webm", ".aiff", ".aif", ".mp4")


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> Optional[str]:
    """Path of an ffmpeg binary: $FFMPEG, the system one, or imageio-ffmpeg's; None if none."""
    exe = os.environ.get("FFMPEG") or shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        return None


def _decode_soundfile(path: str) -> Tuple[np.ndarray, int]:
    data, sr = sf.read(path, dtype="float32", always_2d=True)  # (samples, channels)
    return data.T, sr


def _decode_ffmpeg(path: str) -> Tuple[np.ndarray, int]:
    exe = ffmpeg_exe()
    if exe is None:
        raise AudioDecodeError(f"cannot decode {path}: format needs ffmpeg (pip install imageio-ffmpeg)")
    proc = subprocess.run([exe, "-nostdin", "-hide_banner", "-i", path, "-vn", "-f", "f32le", "-acodec", "pcm_f32le", "-"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
        channels = int(cm.group(1)) if cm else {"2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "7.1": 8}.get(layout.split("(")[0], 1)
    data = np.frombuffer(proc.stdout, dtype=np.float32)
    data = data[: len(data) // channels * channels].reshape(-1, channels).T
    return data, sr


def read_audio(path: str) -> Tuple[np.ndarray, int]:
    """Decode ``path`` at its own rate: returns (float32 array (channels, samples), sample_rate)."""
    if not os.path.exists(path):
        raise AudioDecodeError(f"audio file not found: {path}")
    if os.path.isdir(path):
        raise AudioDecodeError(f"expected an audio file, got a folder: {path}")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(f"cannot decode {path}: file is empty")
    try:
        data, sr = _decode_soundfile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        data, sr = _decode_ffmpeg(path)
    if data.shape[-1] == 0:
        raise AudioDecodeError(f"cannot decode {path}: no audio samples")
    if not np.all(np.isfinite(data)):
        raise AudioDecodeError(f"cannot decode {path}: contains NaN or infinite samples")
    return data, sr


def to_mono(data: np.ndarray) -> np.ndarray:
    """(channels, samples) -> (samples,) by averaging channels, as librosa does."""
    return data[0] if data.shape[0] == 1 else data.mean(axis=0).astype(np.float32)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr, librosa's default 'soxr_hq'); identity when rates agree."""
    if orig_sr == target_sr:
        return y
    return soxr.resample(y, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str, sample_rate: int, mono: bool = True) -> np.ndarray:
    """Decode, downmix and resample a file. Returns float32 (samples,) (or (channels, samples))."""
    data, sr = read_audio(path)
    if mono:
        return np.ascontiguousarray(resample(to_mono(data), sr, sample_rate), dtype=np.float32)
    return np.stack([resample(c, sr, sample_rate) for c in data]).astype(np.float32)


def is_audio_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS
