"""The model's front-end modules: torchlibrosa's ``Spectrogram``, ``STFT`` and ``LogmelFilterBank`` (same
attributes, ``state_dict`` keys, ``repr`` and forward), whose constructors take the Hann window and the mel
filterbank from ``filterbanks`` instead of librosa: the same values, without librosa's ~3 s of imports (scipy.signal,
numba) in every process that builds a model.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torchlibrosa.stft as tl_stft

from panns.filterbanks import hann_window, mel_filterbank


def _freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad = False


class STFT(tl_stft.STFT):
    """torchlibrosa's STFT as a frozen Conv1d pair (Hann window only, the front end's): kernels (n_fft // 2 + 1,
    1, n_fft) holding the real and imaginary parts of the windowed DFT."""

    def __init__(self, n_fft: int = 2048, hop_length=None, win_length=None, window: str = "hann",
                 center: bool = True, pad_mode: str = "reflect", freeze_parameters: bool = True):
        tl_stft.DFTBase.__init__(self)
        if window != "hann":
            raise ValueError(f"only the Hann window is built here, got {window!r}")
        assert pad_mode in ["constant", "reflect"]
        self.n_fft, self.window, self.center, self.pad_mode = n_fft, window, center, pad_mode
        self.win_length = n_fft if win_length is None else win_length
        self.hop_length = int(self.win_length // 4) if hop_length is None else hop_length
        fft_window = hann_window(self.win_length)
        lpad = int((n_fft - self.win_length) // 2)   # librosa.util.pad_center: the window centred in n_fft
        fft_window = np.pad(fft_window, (lpad, int(n_fft - self.win_length - lpad)), mode="constant")
        self.W = self.dft_matrix(n_fft)
        out_channels = n_fft // 2 + 1
        self.conv_real = nn.Conv1d(1, out_channels, kernel_size=n_fft, stride=self.hop_length, padding=0,
                                   dilation=1, groups=1, bias=False)
        self.conv_imag = nn.Conv1d(1, out_channels, kernel_size=n_fft, stride=self.hop_length, padding=0,
                                   dilation=1, groups=1, bias=False)
        windowed = self.W[:, 0:out_channels] * fft_window[:, None]   # (n_fft, n_fft // 2 + 1) complex
        self.conv_real.weight.data = torch.Tensor(np.real(windowed).T)[:, None, :]
        self.conv_imag.weight.data = torch.Tensor(np.imag(windowed).T)[:, None, :]
        if freeze_parameters:
            _freeze(self)


class Spectrogram(tl_stft.Spectrogram):
    """(B, samples) -> power spectrogram (B, 1, frames, n_fft // 2 + 1): torchlibrosa's, with :class:`STFT`."""

    def __init__(self, n_fft: int = 2048, hop_length=None, win_length=None, window: str = "hann",
                 center: bool = True, pad_mode: str = "reflect", power: float = 2.0, freeze_parameters: bool = True):
        nn.Module.__init__(self)
        self.power = power
        self.stft = STFT(n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=window, center=center,
                         pad_mode=pad_mode, freeze_parameters=True)


class LogmelFilterBank(tl_stft.LogmelFilterBank):
    """Power spectrogram (B, 1, frames, n_fft // 2 + 1) -> log-mel (B, 1, frames, n_mels): torchlibrosa's, with
    ``melW`` (n_fft // 2 + 1, n_mels) from :func:`mel_filterbank`."""

    def __init__(self, sr: int = 22050, n_fft: int = 2048, n_mels: int = 64, fmin: float = 0.0, fmax=None,
                 is_log: bool = True, ref: float = 1.0, amin: float = 1e-10, top_db=80.0,
                 freeze_parameters: bool = True):
        nn.Module.__init__(self)
        self.is_log, self.ref, self.amin, self.top_db = is_log, ref, amin, top_db
        if fmax is None:
            fmax = sr // 2
        self.melW = nn.Parameter(torch.Tensor(mel_filterbank(sr, n_fft, n_mels, fmin, fmax).T))
        if freeze_parameters:
            _freeze(self)
