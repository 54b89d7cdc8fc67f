"""The front end's fixed weights in numpy, computed without librosa: the periodic Hann window and the Slaney mel
scale and filterbank, bit for bit the values torchlibrosa computes with librosa and scipy (tests/test_filterbanks.py
compares them for every front end in the zoo). ``frontend_modules`` builds the model's front-end modules from them.

Why not librosa itself: building those weights made torchlibrosa import ``librosa.filters`` and ``librosa.util``,
which pull in scipy.signal and numba: ~3 s of every process that builds a model (an ``inference.py`` call, a
training run, each loader of the Python API), most of a short command's time. The formulas are librosa's (ISC
licence) and scipy's (BSD), in the same float64 operations in the same order, so the rounding is the same.
"""
from __future__ import annotations

import warnings

import numpy as np

# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = (_MIN_LOG_HZ - 0.0) / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hann_window(n: int) -> np.ndarray:
    """(n,) float64 periodic Hann window: ``scipy.signal.get_window('hann', n, fftbins=True)``."""
    if n <= 1:
        return np.ones(n, dtype=np.float64)
    fac = np.linspace(-np.pi, np.pi, n + 1, dtype=np.float64)   # one point more, dropped: periodic
    # scipy sums its cosine terms onto zeros: 0 + 0.5 * cos(0) is exactly 0.5, so this is its rounding too
    return (0.5 + 0.5 * np.cos(fac))[:-1]


def hz_to_mel(frequencies) -> np.ndarray:
    """Hz -> Slaney mels (``librosa.hz_to_mel``, htk=False); arrays or scalars."""
    frequencies = np.asanyarray(frequencies)
    mels = (frequencies - 0.0) / _F_SP
    if frequencies.ndim:
        log_t = frequencies >= _MIN_LOG_HZ
        mels[log_t] = _MIN_LOG_MEL + np.log(frequencies[log_t] / _MIN_LOG_HZ) / _LOGSTEP
    elif frequencies >= _MIN_LOG_HZ:
        mels = _MIN_LOG_MEL + np.log(frequencies / _MIN_LOG_HZ) / _LOGSTEP
    return mels


def mel_to_hz(mels) -> np.ndarray:
    """Slaney mels -> Hz (``librosa.mel_to_hz``, htk=False)."""
    mels = np.asanyarray(mels)
    freqs = 0.0 + _F_SP * mels
    if mels.ndim:
        log_t = mels >= _MIN_LOG_MEL
        freqs[log_t] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_t] - _MIN_LOG_MEL))
    elif mels >= _MIN_LOG_MEL:
        freqs = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL))
    return freqs


def mel_frequencies(n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels,) centre frequencies in Hz, evenly spaced in mels (``librosa.mel_frequencies``)."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels))


def fft_frequencies(sr: float, n_fft: int) -> np.ndarray:
    """(n_fft // 2 + 1,) frequencies of the DFT bins in Hz (``librosa.fft_frequencies``)."""
    return np.fft.rfftfreq(n=n_fft, d=1.0 / sr)


def mel_filterbank(sr: float, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 Slaney-normalised triangular filters: ``librosa.filters.mel`` with its
    defaults (htk=False, norm='slaney'), including its "Empty filters" warning."""
    n_mels = int(n_mels)
    weights = np.zeros((n_mels, int(1 + n_fft // 2)), dtype=np.float32)
    fftfreqs = fft_frequencies(sr, n_fft)
    mel_f = mel_frequencies(n_mels + 2, fmin, fmax)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2: n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    if not np.all((mel_f[:-2] == 0) | (weights.max(axis=1) > 0)):
        warnings.warn("Empty filters detected in mel frequency basis. Some channels will produce empty responses. "
                      "Try increasing your sampling rate (and fmax) or reducing n_mels.", stacklevel=2)
    return weights
