"""inference.py outputs and bad inputs: --no_plot, --framewise_output (.npy/.h5, written as
computed), long files streamed window by window, checks before the model loads, truncated wavs,
text files given as checkpoints, full disks and unwritable outputs (one line, no temp files)."""
import errno
import glob
import json
import logging
import os

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from panns import checkpoint, inference, models, runtime
from panns.errors import CheckpointError, PannsError
from panns.utilities import DiskFullError

SR = 32000
SED = "MobileNetV1_DecisionLevelMax"

# These tests are about the command line, not the backend: they run torch (--backend auto, the
# default, would export each model to ONNX first; tests/test_onnx.py tests auto and onnxruntime).
TORCH = "--backend=torch"


def _noise(seconds, seed):
    rs = np.random.RandomState(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * np.sin(2 * np.pi * 700 * t) * (t % 1 < 0.5) + 0.05 * rs.randn(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def sed(tmp_path_factory, audioset_labels_csv):
    d = tmp_path_factory.mktemp("sed_io")
    torch.manual_seed(0)
    model = models.create_model(SED).eval()
    ckpt = str(d / "sed.pth")
    torch.save({"model": model.state_dict(), "config": checkpoint.ModelConfig.from_registry(SED).to_dict()}, ckpt)
    a, b = str(d / "a.wav"), str(d / "b.wav")
    sf.write(a, _noise(2.0, 1), SR)
    sf.write(b, _noise(5.3, 2), SR)
    return {"dir": d, "model": model, "ckpt": ckpt, "a": a, "b": b, "csv": audioset_labels_csv}


def _sed(sed, *extra):
    inference.main(["sound_event_detection", TORCH, f"--checkpoint_path={sed['ckpt']}", f"--class_labels_csv={sed['csv']}",
                    *[str(x) for x in extra]])


def _no_temps(folder):
    return [p for p in glob.glob(os.path.join(str(folder), ".*")) if ".tmp" in p]


def test_no_plot_and_framewise_npy_and_h5(sed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    npy = tmp_path / "fw.npy"
    _sed(sed, f"--audio_path={sed['a']}", "--no_plot", f"--framewise_output={npy}")
    out = capsys.readouterr().out.splitlines()
    assert out == ["Using CPU.", "Sound event detection result (time_steps x classes_num): (201, 527)"]
    assert not (tmp_path / "results").exists()
    with torch.no_grad():
        ref = sed["model"](torch.from_numpy(sf.read(sed["a"], dtype="float32")[0][None]))["framewise_output"][0]
    fw = np.load(npy)
    assert fw.shape == (201, 527) and fw.dtype == np.float32
    np.testing.assert_allclose(fw, ref.numpy(), atol=2e-6)
    h5 = tmp_path / "fw.h5"
    _sed(sed, "--audio_path", sed["a"], sed["b"], "--no_plot", f"--framewise_output={h5}", "--segment_seconds=2")
    with h5py.File(h5, "r") as f:
        assert [p.decode() for p in f["audio_path"][:]] == [sed["a"], sed["b"]]
        np.testing.assert_allclose(f["framewise/0"][:], fw, atol=2e-6)
        assert f["framewise/1"].shape == (int(5.3 * SR) // 320 + 1, 527) and f.attrs["frames_per_second"] == 100
        assert len(f["labels"]) == 527
    assert _no_temps(tmp_path) == []
    with pytest.raises(PannsError, match="use a .h5 file"):
        _sed(sed, "--audio_path", sed["a"], sed["b"], f"--framewise_output={npy}")


def test_long_files_stream_window_by_window(sed, tmp_path, monkeypatch, capsys):
    """A file over the streaming limit (lowered here) gives what the in-memory windowed run gives."""
    monkeypatch.chdir(tmp_path)
    args = [f"--audio_path={sed['b']}", "--segment_seconds=1", "--hop_seconds=0.7", "--threshold=0.2"]
    _sed(sed, *args, f"--framewise_output={tmp_path / 'mem.npy'}", f"--output={tmp_path / 'mem.json'}",
         f"--output_dir={tmp_path / 'mem'}")
    monkeypatch.setattr(inference, "AUTO_WINDOW_SECONDS", 3.0)
    _sed(sed, *args, f"--framewise_output={tmp_path / 'str.npy'}", f"--output={tmp_path / 'str.json'}",
         f"--output_dir={tmp_path / 'str'}")
    np.testing.assert_allclose(np.load(tmp_path / "str.npy"), np.load(tmp_path / "mem.npy"), atol=1e-6)
    mem = json.loads((tmp_path / "mem.json").read_text())["results"][0]
    st = json.loads((tmp_path / "str.json").read_text())["results"][0]
    n = len(sf.read(sed["b"])[0])
    assert st["windows"] == mem["windows"] == len(runtime.window_starts(n, SR, 22400, 320)) == 8
    assert st["frames"] == mem["frames"]
    assert [e["label"] for e in st["events"]] == [e["label"] for e in mem["events"]] and st["events"]
    assert (tmp_path / "str" / "b.png").stat().st_size > 5_000
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == out[-5]    # same shape line printed


def test_checks_before_the_model_loads(sed, tmp_path):
    missing = str(tmp_path / "missing.pth")    # would fail if the model were loaded first
    with pytest.raises(PannsError, match="--output must end in .json or .csv"):
        inference.main(["audio_tagging", TORCH, f"--checkpoint_path={missing}", f"--audio_path={sed['a']}",
                        f"--output={tmp_path / 'out.txt'}"])
    with pytest.raises(PannsError, match="--framewise_output must end in .npy or .h5"):
        _sed(sed, f"--audio_path={sed['a']}", f"--framewise_output={tmp_path / 'x.csv'}")
    bad_csv = tmp_path / "labels.csv"
    bad_csv.write_text("no,header\n")
    with pytest.raises(PannsError, match="not a label CSV"):
        inference.main(["audio_tagging", TORCH, f"--checkpoint_path={missing}", f"--audio_path={sed['a']}",
                        f"--class_labels_csv={bad_csv}"])
    text = tmp_path / "model.pth"
    text.write_text("this is not a checkpoint\nsecond line\n")
    with pytest.raises(CheckpointError, match="is a text file"):
        inference.main(["audio_tagging", TORCH, "--model_type=Cnn6", f"--checkpoint_path={text}", f"--audio_path={sed['a']}",
                        f"--class_labels_csv={sed['csv']}"])


def test_truncated_wav_is_warned_with_the_length_read(sed, tmp_path, caplog, capsys):
    full = tmp_path / "full.wav"
    sf.write(str(full), _noise(3.0, 3), SR, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[:44 + int(0.62 * SR) * 2])
    with caplog.at_level(logging.WARNING):
        _sed(sed, f"--audio_path={cut}", "--no_plot")
    assert "header says 3.00 s, only 0.62 s present" in caplog.text
    assert "(63, 527)" in capsys.readouterr().out


def test_full_disk_and_unwritable_outputs_are_one_line_without_temps(sed, tmp_path, monkeypatch):
    out_json = tmp_path / "out" / "res.json"

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inference.json, "dump", no_space)
    with pytest.raises(DiskFullError, match="res.json"):
        _sed(sed, f"--audio_path={sed['a']}", "--no_plot", f"--output={out_json}")
    assert not out_json.exists() and _no_temps(out_json.parent) == []
    monkeypatch.undo()
    # the figure: savefig fails with ENOSPC
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "savefig", no_space)
    figs = tmp_path / "figs"
    with pytest.raises(DiskFullError, match="a.png"):
        _sed(sed, f"--audio_path={sed['a']}", f"--output_dir={figs}")
    assert _no_temps(figs) == [] and not (figs / "a.png").exists()
    monkeypatch.undo()
    # framewise output bigger than the free space: refused before any work, naming the file
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 1000))
    with pytest.raises(DiskFullError, match="fw.h5"):
        _sed(sed, f"--audio_path={sed['a']}", "--no_plot", f"--framewise_output={tmp_path / 'fw.h5'}")
    assert _no_temps(tmp_path) == []
    monkeypatch.undo()


def test_unwritable_output_folder_is_refused_before_inference(sed, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(str(ro), os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(PannsError, match="not writable"):
            _sed(sed, f"--audio_path={sed['a']}", "--no_plot", f"--events_csv={ro / 'ev.csv'}")
    finally:
        os.chmod(ro, 0o700)
