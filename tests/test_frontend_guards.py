"""Front-end settings that leave mel bands empty (a window too small for the mel bins between fmin and fmax) are
refused in one line by the one owner of the front-end settings, ``FrontEnd.check``, at every entry point, before any
model or data work: they used to print librosa's "Empty filters" warning and train on constant mel bins. Every
registered model's own settings still pass. And the fine-tuning clip cache is one of the HDF5 kinds: a file of
another kind at its path is refused, not rebuilt over."""
import hashlib
import os
import re
import subprocess
import sys
import warnings

import h5py
import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from panns import finetune_data as fd
from panns import finetune_template as ft
from panns import inference, models, utilities
from panns.errors import PannsError
from panns.frontend import KNOWN, MAX_WINDOW, FrontEnd
from data_helpers import cli_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


def _librosa_empty_rows(fe: FrontEnd) -> int:
    """All-zero rows of the filterbank the model builds (torchlibrosa calls librosa.filters.mel so)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mel = librosa.filters.mel(sr=fe.sample_rate, n_fft=fe.window_size, n_mels=fe.mel_bins, fmin=fe.fmin,
                                  fmax=fe.fmax)
    return int(np.count_nonzero(mel.max(axis=1) <= 0))


# ----------------------------------------------------------------------------- the count and the check
def test_empty_band_count_is_the_filterbank_s_all_zero_rows():
    rs = np.random.RandomState(0)
    some_empty = 0
    for _ in range(300):
        sr = int(rs.choice([8000, 16000, 22050, 32000, 44100]))
        fmax = int(rs.randint(200, sr // 2 + 1))
        fe = FrontEnd(sr, int(rs.randint(16, 1100)), 160, int(rs.randint(1, 200)), int(rs.randint(0, fmax)), fmax)
        if fe.mel_bins > 2 * (fe.window_size // 2 + 1):   # the shortcut: a lower bound, checked below
            continue
        expected = _librosa_empty_rows(fe)
        assert fe.empty_mel_bands() == expected, fe
        some_empty += expected > 0
    assert some_empty > 20   # the grid reaches both sides
    many = FrontEnd(mel_bins=3000)   # more bands than twice the FFT's 513 bins: at least 3000 - 1026 are empty
    assert 3000 - 1026 <= _librosa_empty_rows(many) and many.empty_mel_bands() == 3000 - 1026


def test_every_registered_model_s_settings_pass():
    assert len(models.MODELS) >= 30 and len(KNOWN) >= 5
    fronts = {FrontEnd.from_dict(spec.frontend()) for spec in models.MODELS.values()} | set(KNOWN)
    for fe in fronts:
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # nor any warning on the way
            assert fe.check() == fe and fe.check(prefix="") == fe
        assert fe.empty_mel_bands() == 0 == _librosa_empty_rows(fe), fe


BAD = {   # settings -> the flags the line must name
    "window_100": (dict(window_size=100), "--window_size 100 with --mel_bins 64"),
    "window_64_at_16k": (dict(sample_rate=16000, window_size=64, hop_size=160, fmax=8000), "--window_size 64"),
    "mel_300": (dict(mel_bins=300), "--mel_bins 300"),
    "mel_5000": (dict(mel_bins=5000), "at least 3974 of the 5000 mel bands"),
    "narrow_range": (dict(fmin=50, fmax=60), "--fmin 50 to --fmax 60 Hz"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_empty_bands_are_one_line_whose_advice_works(case):
    settings, named = BAD[case]
    fe = FrontEnd(**settings)
    with pytest.raises(PannsError) as e:
        fe.check()
    line = str(e.value)
    assert "\n" not in line and named in line and "mel bands empty" in line, line
    fixes = re.findall(r"--(window_size|mel_bins) (\d+)", line.split("; use ")[-1]) if "; use " in line else []
    for key, value in fixes:   # every alternative offered runs
        assert fe.replace(**{key: int(value)}).check().empty_mel_bands() == 0, (key, value)
        assert key != "window_size" or int(value) <= MAX_WINDOW
    if case == "window_100":
        assert line.endswith("; use --window_size 512 or --mel_bins 22"), line
    if case == "narrow_range":
        assert not fixes and "raise --fmax or lower --fmin" in line
    with pytest.raises(PannsError, match=r"^window_size \d+ with mel_bins \d+ .* mel bands empty[^;]*$"):
        fe.check(prefix="")   # a checkpoint's config: named as fields, no flag advice


# ----------------------------------------------------------------------------- at the entry points
def test_main_train_refuses_a_small_window_in_one_line_before_any_work(tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "pytorch", "main.py"), "train", "--workspace", str(ws),
                           "--model_type", "Cnn14", "--window_size", "100"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: --window_size 100 "), proc.stderr
    assert "Traceback" not in proc.stderr and "Empty filters" not in proc.stderr
    assert not ws.exists()


def test_inference_refuses_the_flags_for_an_official_checkpoint(tmp_path, monkeypatch, capsys):
    ckpt, wav = str(tmp_path / "Cnn14_x.pth"), str(tmp_path / "a.wav")
    torch.save({"model": {"fc_audioset.weight": torch.zeros(527, 2048)}}, ckpt)   # official format: no config
    sf.write(wav, np.zeros(32000, np.float32), 32000)

    def no_model(*a, **k):
        raise AssertionError("a model was built before the front end was refused")
    monkeypatch.setattr(models, "create_model", no_model)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, line = cli_error(inference.main, ["audio_tagging", "--model_type", "Cnn14", "--checkpoint_path", ckpt,
                                                "--audio_path", wav, "--mel_bins", "300"], monkeypatch, capsys)
    assert code == 2 and line.startswith("error: --window_size 1024 with --mel_bins 300 "), line
    assert not [w for w in seen if "Empty filters" in str(w.message)]


def _dataset(root) -> str:
    rs = np.random.RandomState(0)
    for c in ("hum", "hiss"):
        os.makedirs(os.path.join(root, c))
        for i in range(2):
            sf.write(os.path.join(root, c, f"clip{i}.wav"), (0.1 * rs.randn(SR)).astype(np.float32), SR)
    return str(root)


def test_finetune_refuses_the_flags_before_the_run_folder_or_the_model(tmp_path, monkeypatch, capsys):
    ds, ws = _dataset(tmp_path / "sounds"), tmp_path / "ws"

    def no_model(*a, **k):
        raise AssertionError("the model was built before the front end was refused")
    monkeypatch.setattr(ft.finetune_task, "make_transfer_model", no_model)
    code, line = cli_error(ft.main, ["train", "--model_type", "Transfer_Cnn14_16k", "--dataset_dir", ds,
                                     "--workspace", str(ws), "--window_size", "128", "--iterations", "1"],
                           monkeypatch, capsys)
    assert code == 2 and line.startswith("error: --window_size 128 with --mel_bins 64 "), line
    assert "--sample_rate 16000" in line and not ws.exists()


# ----------------------------------------------------------------------------- the clip cache's kind
def _digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _paths(tmp_path):
    ds = _dataset(tmp_path / "sounds")
    return sorted(os.path.join(ds, c, f) for c in ("hum", "hiss") for f in os.listdir(os.path.join(ds, c)))


def _official_waveforms(path) -> None:
    with h5py.File(path, "w") as f:   # the official packer's datasets
        f.create_dataset("audio_name", data=np.array([b"Yx.wav"], dtype="S20"))
        f.create_dataset("waveform", data=np.zeros((1, 10), np.int16))
        f.create_dataset("target", data=np.zeros((1, 3), bool))


@pytest.mark.parametrize("other", ["waveforms", "not HDF5"])
def test_a_file_of_another_kind_at_the_cache_path_is_refused_not_rebuilt_over(tmp_path, other):
    paths, cache_dir = _paths(tmp_path), str(tmp_path / "cache")
    target = fd.cache_path(cache_dir, SR, fd.cache_key(paths, SR))
    os.makedirs(cache_dir)
    if other == "waveforms":
        _official_waveforms(target)
    else:
        with open(target, "w") as f:
            f.write("notes\n")
    before = _digest(target)
    with pytest.raises(PannsError) as e:
        fd.build_cache(paths, SR, cache_dir)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"clip cache {target} ") and "--cache_dir" in line, line
    assert ("existing waveform HDF5, not a fine-tuning clip cache" if other == "waveforms"
            else "is not an HDF5 file") in line, line
    assert _digest(target) == before and os.listdir(cache_dir) == [os.path.basename(target)]


def test_the_cache_is_its_own_kind_and_a_cut_short_one_is_still_rebuilt(tmp_path):
    paths, cache_dir = _paths(tmp_path), str(tmp_path / "cache")
    cache = fd.build_cache(paths, SR, cache_dir)
    assert utilities.hdf5_kind(cache.h5_path) == "clips"   # not "waveforms": it holds a 'waveform' too
    with pytest.raises(PannsError, match="is an existing fine-tuning clip cache, not a waveform HDF5; writing there "
                                         "would destroy the decoded clips"):
        utilities.check_hdf5_kind(cache.h5_path, "waveforms", flag="--waveforms_hdf5_path")
    with h5py.File(cache.h5_path, "w") as f:   # an HDF5 without the cache's datasets (one cut short)
        f.create_dataset("x", data=np.zeros(1))
    again = fd.build_cache(paths, SR, cache_dir)
    assert again.paths == paths and utilities.hdf5_kind(again.h5_path) == "clips"
