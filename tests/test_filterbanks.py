"""The front end's weights without librosa (panns.filterbanks, panns.frontend_modules) are bit for bit
torchlibrosa's, which computes them with librosa and scipy; and building a model no longer imports those."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torchlibrosa.stft as tl_stft

from panns import filterbanks, frontend_modules, models
from test_train import REPO

ZOO_FRONT_ENDS = sorted((fe.sample_rate, fe.window_size, fe.hop_size, fe.mel_bins, fe.fmin, fe.fmax)
                        for fe in models.KNOWN_FRONT_ENDS)   # every front end of the registered models
# Beyond the zoo: a window shorter than the FFT, an odd FFT size, fmax None, 128 mel bins at 44.1 kHz, fmin 0,
# and a 16 kHz front end with the 32 kHz fmax (empty filters: librosa's warning).
OTHERS = [(32000, 1024, 320, 64, 50, 14000, 800), (22050, 1000, 250, 40, 20, None, None),
          (44100, 2048, 441, 128, 0, 22050, None), (16000, 1024, 320, 64, 50, 14000, None),
          (16000, 512, 160, 229, 30, 8000, None)]


def _build(mod, sr, n_fft, hop, mels, fmin, fmax, win):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        spec = mod.Spectrogram(n_fft=n_fft, hop_length=hop, win_length=win or n_fft, window="hann", center=True,
                               pad_mode="reflect", freeze_parameters=True)
        mel = mod.LogmelFilterBank(sr=sr, n_fft=n_fft, n_mels=mels, fmin=fmin, fmax=fmax, ref=1.0, amin=1e-10,
                                   top_db=None, freeze_parameters=True)
    return spec, mel, [str(w.message) for w in seen]


@pytest.mark.parametrize("cfg", [c + (None,) for c in ZOO_FRONT_ENDS] + OTHERS, ids=str)
def test_weights_attributes_and_warnings_are_torchlibrosas(cfg):
    spec, mel, warned = _build(frontend_modules, *cfg)
    ref_spec, ref_mel, ref_warned = _build(tl_stft, *cfg)
    assert isinstance(spec, tl_stft.Spectrogram) and isinstance(mel, tl_stft.LogmelFilterBank)
    for ours, theirs in ((spec, ref_spec), (mel, ref_mel)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        assert repr(ours) == repr(theirs)
        assert all(not p.requires_grad for p in ours.parameters())
    for attr in ("n_fft", "hop_length", "win_length", "window", "center", "pad_mode"):
        assert getattr(spec.stft, attr) == getattr(ref_spec.stft, attr), attr
    assert (spec.power, mel.is_log, mel.ref, mel.amin, mel.top_db) == \
        (ref_spec.power, ref_mel.is_log, ref_mel.ref, ref_mel.amin, ref_mel.top_db)
    assert warned == ref_warned
    x = torch.randn(2, 8000)
    assert torch.equal(mel(spec(x)), ref_mel(ref_spec(x)))


def test_window_and_mel_scale_are_scipys_and_librosas():
    import librosa
    import scipy.signal

    for n in (0, 1, 2, 7, 256, 1000, 1024):
        assert np.array_equal(filterbanks.hann_window(n), scipy.signal.get_window("hann", n, fftbins=True)) if n \
            else filterbanks.hann_window(0).shape == (0,)
    hz = np.array([0.0, 50, 999.9, 1000, 1000.1, 8000, 14000, 22050])
    assert np.array_equal(filterbanks.hz_to_mel(hz), librosa.hz_to_mel(hz))
    assert filterbanks.hz_to_mel(2000) == librosa.hz_to_mel(2000)
    assert filterbanks.mel_to_hz(20.0) == librosa.mel_to_hz(20.0)
    assert np.array_equal(filterbanks.mel_frequencies(66, 50, 14000),
                          librosa.mel_frequencies(n_mels=66, fmin=50, fmax=14000, htk=False))
    assert np.array_equal(filterbanks.fft_frequencies(32000, 1024), librosa.fft_frequencies(sr=32000, n_fft=1024))


def test_building_a_model_imports_neither_librosa_filters_nor_scipy_signal():
    """Those imports (numba's compiles included) were ~3 s of every command that builds a model."""
    code = ("import sys; from panns import models; m = models.create_model('Cnn14', classes_num=527); "
            "print(sorted(k for k in ('librosa.filters', 'librosa.util', 'scipy.signal', 'numba') "
            "if k in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "pytorch")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
