"""inference.py outputs and bad inputs: --no_plot, --framewise_output (.npy/.h5, written as
computed), long files streamed window by window, checks before the model loads, truncated wavs,
text files given as checkpoints, full disks and unwritable outputs (one line, no temp files)."""
import csv
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
    inference.main(["sound_event_detection", TORCH, f"--checkpoint_path={sed['ckpt']}",
                    f"--class_labels_csv={sed['csv']}", *[str(x) for x in extra]])


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
        inference.main(["audio_tagging", TORCH, "--model_type=Cnn6", f"--checkpoint_path={text}",
                        f"--audio_path={sed['a']}", f"--class_labels_csv={sed['csv']}"])


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


def test_figure_names_stay_unique_when_a_numbered_name_is_another_inputs_stem(sed, tmp_path):
    """c1/a.wav c2/a.wav c1/a_1.wav: the repeat of a must not take a_1.png, the third input's own name
    (its figure was overwritten and the JSON named a_1.png twice)."""
    wavs = [tmp_path / "c1" / "a.wav", tmp_path / "c2" / "a.wav", tmp_path / "c1" / "a_1.wav"]
    for k, w in enumerate(wavs):
        w.parent.mkdir(exist_ok=True)
        sf.write(str(w), _noise(1.0, 10 + k), SR)
    js = tmp_path / "res.json"
    _sed(sed, "--audio_path", *wavs, f"--output_dir={tmp_path / 'figs'}", f"--output={js}")
    figures = [r["figure"] for r in json.loads(js.read_text())["results"]]
    assert figures == [str(tmp_path / "figs" / n) for n in ("a.png", "a_2.png", "a_1.png")]
    assert sorted(os.listdir(tmp_path / "figs")) == ["a.png", "a_1.png", "a_2.png"]
    # case-folded: A.png and a.png are one file on macOS and Windows
    assert inference._figure_paths(["x/A.wav", "y/a.wav", "z/a.flac"], "f") == ["f/A.png", "f/a_1.png", "f/a_2.png"]


def test_failed_files_have_a_row_in_both_csvs(sed, tmp_path):
    """One of two inputs undecodable: the events CSV keeps its audio_path column (it depended on how many
    files succeeded) and both CSVs name the failed file with its error, as the JSON does; the rows of the
    decoded file are the same as without the failure."""
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not really a wav file")
    ev, ev_ref = tmp_path / "ev.csv", tmp_path / "ev_ref.csv"
    _sed(sed, "--audio_path", sed["a"], sed["b"], "--no_plot", "--threshold=0.05", f"--events_csv={ev_ref}")
    with pytest.raises(SystemExit) as exit_info:
        _sed(sed, "--audio_path", sed["a"], bad, "--no_plot", "--threshold=0.05", f"--events_csv={ev}")
    assert exit_info.value.code == 1
    rows = list(csv.reader(open(ev, newline="")))
    assert rows[0] == ["audio_path", "onset", "offset", "label", "score", "error"]
    good = [r for r in rows[1:] if r[0] == sed["a"]]
    assert good and good == [r for r in list(csv.reader(open(ev_ref, newline="")))[1:] if r[0] == sed["a"]]
    assert all(r[5] == "" for r in good)
    failed = [r for r in rows[1:] if r[0] == str(bad)]
    assert len(failed) == 1 and failed[0][1:5] == ["", "", "", ""] and "bad.wav" in failed[0][5]

    out, out_ref = tmp_path / "tags.csv", tmp_path / "tags_ref.csv"
    tagging = ["audio_tagging", TORCH, f"--checkpoint_path={sed['ckpt']}", f"--class_labels_csv={sed['csv']}",
               "--top_k=3"]
    inference.main(tagging + ["--audio_path", sed["a"], f"--output={out_ref}"])
    with pytest.raises(SystemExit) as exit_info:
        inference.main(tagging + ["--audio_path", sed["a"], str(bad), f"--output={out}"])
    assert exit_info.value.code == 1
    rows = list(csv.DictReader(open(out, newline="")))
    assert rows[:3] == list(csv.DictReader(open(out_ref, newline="")))
    assert [r["error"] for r in rows[:3]] == ["", "", ""] and rows[0]["label"]
    assert len(rows) == 4 and rows[3]["audio_path"] == str(bad) and "bad.wav" in rows[3]["error"]
    assert rows[3]["rank"] == rows[3]["label"] == rows[3]["probability"] == ""


def test_long_sed_figure_ticks_are_round_seconds(tmp_path, monkeypatch):
    """A 1500-s figure had 20 ticks every 76 s labelled 0.0 76.0 152.0 ... that ran into each other."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {}

    def record(path, *a, **k):
        ax = plt.gcf().axes[1]
        seen["labels"] = [t.get_text() for t in ax.get_xticklabels()]
        seen["ticks"] = list(ax.get_xticks())
        open(path, "wb").close()

    monkeypatch.setattr(plt, "savefig", record)
    labels = [f"class {i}" for i in range(12)]
    cps = 100 / 38   # a streamed 1500-s recording's pooled columns
    cols = int(1500 * cps) + 1
    inference.draw_sed(np.zeros((8, cols)), np.random.RandomState(0).rand(cols, 12), labels, cps,
                       str(tmp_path / "long.png"))
    assert seen["labels"] == [str(s) for s in range(0, 1500, 120)]
    np.testing.assert_allclose(seen["ticks"], np.arange(0, 1500, 120) * cps)
    # up to 30 s: the official ticks, every second labelled 0.0, 1.0, ...
    inference.draw_sed(np.zeros((8, 701)), np.random.RandomState(0).rand(701, 12), labels, 100.0,
                       str(tmp_path / "short.png"))
    assert seen["labels"] == [f"{s}.0" for s in range(8)] and seen["ticks"] == [100.0 * s for s in range(8)]


def test_a_long_file_of_unknown_length_runs_as_streamed_ones_do(sed, tmp_path, monkeypatch, capsys, caplog):
    """A file whose header gives no length (m4a, opus: probe_seconds None) was run whole past the streaming limit:
    the whole-file figure and framewise matrix took 7 GB at 25 minutes. Once decoded, it runs as streamed files
    do (the windows line, the pooled figure); its outputs are those of the same samples streamed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inference, "AUTO_WINDOW_SECONDS", 3.0)   # b.wav (5.3 s) is "long"
    args = [f"--audio_path={sed['b']}", "--segment_seconds=1", "--threshold=0.2"]
    _sed(sed, *args, f"--framewise_output={tmp_path / 'known.npy'}", f"--output_dir={tmp_path / 'known'}")
    monkeypatch.setattr(inference.audio_io, "probe_seconds", lambda path: None)
    monkeypatch.setattr(inference, "plot_sed", lambda *a, **k: pytest.fail("the whole-file figure was drawn"))
    with caplog.at_level(logging.INFO):
        _sed(sed, *args, f"--framewise_output={tmp_path / 'unknown.npy'}", f"--output_dir={tmp_path / 'unknown'}")
    assert "b.wav is 5 s long; running it in 1-s windows" in caplog.text
    np.testing.assert_allclose(np.load(tmp_path / "unknown.npy"), np.load(tmp_path / "known.npy"), atol=1e-6)
    assert (tmp_path / "unknown" / "b.png").stat().st_size > 5_000
