"""Bad input at the inference front doors: one-line errors up front, nothing computed on garbage,
nothing lost (tests/test_inference.py, test_extract.py and test_stream.py cover the normal paths).

Checkpoints are tiny random Cnn6 / Cnn6_DecisionLevelAvg files with their config; nothing is downloaded."""
import io
import json
import os
import sys
import warnings

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from panns import checkpoint
from panns import inference
from panns import models
from panns import stream
from panns import utilities
from panns import validate
from panns.errors import PannsError

SR = 32000
TORCH = "--backend=torch"   # the guards, not the backend, are under test


@pytest.fixture(scope="module")
def env(tmp_path_factory, audioset_labels_csv):
    d = tmp_path_factory.mktemp("guards")
    torch.manual_seed(0)
    paths = {}
    for name in ("Cnn6", "Cnn6_DecisionLevelAvg"):
        model = models.create_model(name).eval()
        paths[name] = str(d / f"{name}.pth")
        checkpoint.save_checkpoint(paths[name], {"model": model.state_dict(),
                                                 "config": checkpoint.ModelConfig.from_registry(name).to_dict()})
    rs = np.random.RandomState(0)
    for name, sec in (("a.wav", 1.0), ("b.wav", 1.5)):
        sf.write(str(d / name), (0.2 * rs.randn(int(sec * SR))).astype(np.float32), SR)
    (d / "broken.wav").write_bytes(b"RIFF....not really a wav file")
    return {"dir": d, "ckpt": paths["Cnn6"], "sed": paths["Cnn6_DecisionLevelAvg"], "a": str(d / "a.wav"),
            "b": str(d / "b.wav"), "broken": str(d / "broken.wav"), "labels": audioset_labels_csv}


def _loads_no_model(monkeypatch):
    """Make loading a model fail loudly: an up-front check must refuse before it."""
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the bad option was refused")
    monkeypatch.setattr(inference.runtime.Runtime, "load", boom)
    monkeypatch.setattr(inference.runtime, "load_model", boom)


# ----------------------------------------------------------------------------- validate: empty arrays
@pytest.mark.parametrize("shape", [(3, 0), (2, 0), (3, 5, 0)])
def test_empty_batch_is_reported_empty_not_nan(shape):
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no "Mean of empty slice" on the way
        with pytest.raises(PannsError, match="empty"):
            validate.batch(np.zeros(shape, np.float32))
        with pytest.raises(PannsError, match="empty"):
            validate.clip(np.zeros(shape, np.float32))
    # HEAR's empty batch still passes through
    assert validate.batch(np.zeros((0, 100), np.float32), allow_empty_batch=True)[0].shape == (0, 100)


# ----------------------------------------------------------------------------- outputs, checked up front
def test_output_folder_problems_are_refused_before_the_model_loads(env, tmp_path, monkeypatch):
    _loads_no_model(monkeypatch)
    base = ["audio_tagging", TORCH, f"--checkpoint_path={env['ckpt']}", f"--audio_path={env['a']}"]
    # the nearest existing ancestor of the output's folder is a file
    with pytest.raises(PannsError, match="is a file"):
        inference.main(base + [f"--output={env['a']}/sub/x.json"])
    # the nearest existing ancestor cannot be written (a probe: permission bits say nothing for root)
    with pytest.raises(PannsError, match="cannot write --output"):
        inference.main(base + ["--output=/proc/no_such_folder/x.json"])
    # an output that is a folder
    (tmp_path / "out.json").mkdir()
    with pytest.raises(PannsError, match="is a folder"):
        inference.main(base + [f"--output={tmp_path / 'out.json'}"])
    sed = ["sound_event_detection", TORCH, f"--checkpoint_path={env['sed']}", f"--audio_path={env['a']}"]
    # --output_dir under a file
    with pytest.raises(PannsError, match="--output_dir.*is a file"):
        inference.main(sed + [f"--output_dir={env['a']}"])
    # two outputs that are one file (the events CSV would replace the results CSV)
    with pytest.raises(PannsError, match="same file"):
        inference.main(sed + ["--no_plot", f"--output={tmp_path / 'o.csv'}",
                              f"--events_csv={tmp_path / '.' / 'o.csv'}"])
    # an output that is an input: the label CSV
    labels = tmp_path / "labels.csv"
    labels.write_bytes(open(env["labels"], "rb").read())
    with pytest.raises(PannsError, match="is the input"):
        inference.main(sed + ["--no_plot", f"--class_labels_csv={labels}", f"--events_csv={labels}"])
    assert labels.read_bytes() == open(env["labels"], "rb").read()


def test_missing_output_folders_are_created(env, tmp_path, capsys):
    out = tmp_path / "new" / "sub" / "x.json"
    inference.main(["audio_tagging", TORCH, f"--checkpoint_path={env['ckpt']}", f"--audio_path={env['a']}",
                    f"--output={out}", f"--class_labels_csv={env['labels']}", "--top_k=1"])
    assert out.is_file()


@pytest.mark.parametrize("command,flag,name", [("audio_tagging", "--output", "x.json"),
                                               ("sound_event_detection", "--framewise_output", "x.npy"),
                                               ("sound_event_detection", "--output_dir", "figs"),
                                               ("extract_embeddings", "--output_path", "x.h5"),
                                               ("export", "--output", "x.onnx")])
def test_output_through_a_missing_folder_and_back_is_refused_before_the_model_loads(env, tmp_path, monkeypatch,
                                                                                    command, flag, name):
    # 'nodir/../x' cannot be opened while nodir does not exist: every front door says so in one line up
    # front (writers used to fail after the work, about a temporary file), and creates nothing
    if command == "export":
        pytest.importorskip("onnx")
    _loads_no_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    ckpt = env["sed"] if command == "sound_event_detection" else env["ckpt"]
    argv = [command, f"--checkpoint_path={ckpt}", f"{flag}=nodir/../{name}"]
    if command != "export":
        argv += [TORCH, f"--audio_path={env['a']}"]
    with pytest.raises(PannsError, match=rf"^{flag} nodir/\.\./{name} goes through nodir, which does not exist.* "
                                         rf"write it as {name}$"):
        inference.main(argv)
    assert os.listdir(tmp_path) == []


def test_output_paths_that_the_file_system_reads_otherwise_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "real" / "d").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "d")
    (tmp_path / "sub").mkdir()
    for path, message in [("new/sub/../../x.h5", "goes through new, which does not exist"),
                          ("sub/new/../x.h5", "goes through sub/new, which does not exist.*write it as sub/x.h5"),
                          ("afile/../x.h5", "goes through afile, which is a file"),
                          ("link/../x.h5", f"after the link link leads to {tmp_path / 'real'}, not {tmp_path}")]:
        with pytest.raises(PannsError, match=message):
            utilities.check_output_path(path)
        with pytest.raises(PannsError, match=message):   # a library writer that skipped the check
            utilities.atomic_write_text(path, "x")
    for path in ["sub/../x.h5", "../x.h5", "new/sub/x.h5", "link/x.h5", "./sub/./x.h5"]:
        utilities.check_output_path(path)   # '..' through a real folder, and folders the writer creates
    utilities.atomic_write_text("sub/../x.txt", "x")
    assert (tmp_path / "x.txt").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["afile", "link", "real", "sub", "x.txt"]
    assert os.listdir(tmp_path / "real") == ["d"] and os.listdir(tmp_path / "sub") == []


def test_export_over_its_own_checkpoint_is_refused(env, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    ckpt = tmp_path / "model.onnx"          # a checkpoint with an .onnx name still loads
    ckpt.write_bytes(open(env["ckpt"], "rb").read())
    _loads_no_model(monkeypatch)
    with pytest.raises(PannsError, match="is the input"):
        inference.main(["export", f"--checkpoint_path={ckpt}", f"--output={ckpt}"])
    assert ckpt.read_bytes() == open(env["ckpt"], "rb").read()


def test_extract_output_checks(env, tmp_path, monkeypatch):
    _loads_no_model(monkeypatch)
    base = ["extract_embeddings", TORCH, f"--checkpoint_path={env['ckpt']}", f"--audio_path={env['a']}", "--quiet"]
    # not an HDF5 name
    with pytest.raises(PannsError, match=r"\.h5"):
        inference.main(base + [f"--output_path={tmp_path / 'x.json'}"])
    assert not (tmp_path / "x.json").exists()
    # the checkpoint as output: --overwrite would have deleted it
    ckpt = tmp_path / "ckpt.h5"
    ckpt.write_bytes(open(env["ckpt"], "rb").read())
    with pytest.raises(PannsError, match="is the input"):
        inference.main(["extract_embeddings", TORCH, f"--checkpoint_path={ckpt}", f"--audio_path={env['a']}",
                        f"--output_path={ckpt}", "--overwrite", "--quiet"])
    assert ckpt.read_bytes() == open(env["ckpt"], "rb").read()
    with pytest.raises(PannsError, match="is a file"):
        inference.main(base + [f"--output_path={env['a']}/x.h5"])


# ----------------------------------------------------------------------------- extraction failures
def test_extract_with_undecodable_files_exits_non_zero_and_keeps_the_rows(env, tmp_path, capsys, caplog):
    out = tmp_path / "feats.h5"
    with pytest.raises(SystemExit) as exit_info:
        inference.main(["extract_embeddings", TORCH, f"--checkpoint_path={env['ckpt']}", "--quiet",
                        f"--audio_path={env['a']}", f"--audio_path={env['broken']}", f"--audio_path={env['b']}",
                        f"--output_path={out}", "--num_workers=0", "--precision=fp32"])
    assert exit_info.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "1 files could not be decoded" in errors[0] and "broken.wav" in errors[0]
    assert "\n" not in errors[0]
    with h5py.File(out, "r") as f:
        assert int(f.attrs["num_rows"]) == 2


# ----------------------------------------------------------------------------- options that did nothing
def test_hop_without_segment_is_refused_when_it_changes_nothing(env, monkeypatch):
    _loads_no_model(monkeypatch)
    with pytest.raises(PannsError, match="--hop_seconds 0.5 has no effect without --segment_seconds"):
        inference.main(["audio_tagging", TORCH, f"--checkpoint_path={env['ckpt']}", f"--audio_path={env['a']}",
                        "--hop_seconds=0.5"])


def test_aggregate_without_segment_is_refused_when_it_changes_nothing(env, monkeypatch):
    _loads_no_model(monkeypatch)
    base = ["audio_tagging", TORCH, f"--checkpoint_path={env['ckpt']}", f"--audio_path={env['a']}"]
    with pytest.raises(PannsError, match="--aggregate mean has no effect without --segment_seconds"):
        inference.main(base + ["--aggregate=mean"])
    with pytest.raises(PannsError, match="--hop_seconds 1 and --aggregate max have no effect"):
        inference.main(base + ["--aggregate=max", "--hop_seconds=1"])
    with pytest.raises(AssertionError, match="model was loaded"):   # the default and windowed runs go on
        inference.main(base + ["--segment_seconds=1", "--aggregate=mean"])


def test_output_dir_with_no_plot_is_refused_before_the_model_loads(env, tmp_path, monkeypatch):
    # --output_dir holds the figures only: with --no_plot it was silently ignored
    _loads_no_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    sed = ["sound_event_detection", TORCH, f"--checkpoint_path={env['sed']}", f"--audio_path={env['a']}"]
    with pytest.raises(PannsError, match=r"^--output_dir figs has no effect with --no_plot: it is the folder of "
                                         r"the figures only .*; drop one of the two$"):
        inference.main(sed + ["--no_plot", "--output_dir=figs", f"--output={tmp_path / 'o.json'}"])
    assert os.listdir(tmp_path) == []
    for ok in (["--no_plot"], ["--output_dir=figs"], []):   # the default with --no_plot, a folder for figures
        with pytest.raises(AssertionError, match="model was loaded"):
            inference.main(sed + ok)
    args = inference.build_parser().parse_args(sed[:1] + sed[2:])
    inference.check_figure_options(args)
    assert args.output_dir == inference.FIGURES_DIR == "results"   # the official folder when not given


def test_hop_without_segment_warns_when_only_long_recordings_use_it(env, monkeypatch, caplog):
    real = inference.audio_io.probe_seconds
    monkeypatch.setattr(inference.audio_io, "probe_seconds",
                        lambda p: 700.0 if p == env["b"] else real(p))   # b "is" long: it takes the hop
    _loads_no_model(monkeypatch)
    with pytest.raises(AssertionError, match="model was loaded"):   # not refused: b uses the hop
        inference.main(["audio_tagging", TORCH, f"--checkpoint_path={env['ckpt']}", f"--audio_path={env['a']}",
                        f"--audio_path={env['b']}", "--hop_seconds=5"])
    assert "--hop_seconds 5 applies only to the 1 of 2 recordings" in caplog.text


@pytest.mark.parametrize("command", ["audio_tagging", "extract_embeddings"])
def test_segment_shorter_than_the_model_minimum_is_refused(env, tmp_path, capsys, command):
    extra = [f"--output_path={tmp_path / 'f.h5'}", "--quiet"] if command == "extract_embeddings" else []
    with pytest.raises(PannsError, match=r"--segment_seconds 0.001 is shorter .* at least 0.15 seconds"):
        inference.main([command, TORCH, f"--checkpoint_path={env['ckpt']}", f"--audio_path={env['a']}",
                        "--segment_seconds=0.001", f"--class_labels_csv={env['labels']}", *extra])
    assert ":" not in capsys.readouterr().out   # no tag lines printed
    assert not (tmp_path / "f.h5").exists()


# ----------------------------------------------------------------------------- stream
def _stream_model(env, key="ckpt"):
    from panns import api
    from panns.runtime import Runtime

    ckpt = checkpoint.load_model(env[key])
    return api.Model(Runtime(ckpt[0], ckpt[1]), env["labels"])


def test_stream_nan_is_named_by_its_time_in_the_stream(env):
    s = _stream_model(env).stream(hop_seconds=1.0, window_seconds=2.0)
    for _ in range(5):                         # 2.5 s of silence in 0.5-s chunks of 16 kHz
        s.push(np.zeros(8000, np.float32), 16000)
    chunk = np.zeros(8000, np.float32)
    chunk[4000] = np.nan                       # 0.25 s into this chunk: 2.750 s into the stream
    with pytest.raises(PannsError, match=r"2\.750 s into the stream"):
        s.push(chunk, 16000)


def test_stream_event_options_with_a_clip_level_model_are_refused(env, capsys, monkeypatch):
    # look-ahead, threshold and min_duration act on frames and events, which a clip-level model (Cnn6)
    # has not: they were silently ignored. The API and the CLI refuse them by one rule; defaults pass.
    clip = _stream_model(env)
    why = "no effect with Cnn6: a clip-level model has no framewise output, so its stream reports tags per hop"
    for kw, named in (({"threshold": 0.3}, "threshold 0.3 has"), ({"min_duration": 0.2}, "min_duration 0.2 has"),
                      ({"lookahead_seconds": 0}, "lookahead_seconds 0 has"),
                      ({"threshold": 0.5, "lookahead_seconds": 1.0}, "lookahead_seconds 1 and threshold 0.5 have")):
        with pytest.raises(PannsError, match=f"^{named} {why}.*; drop (it|them) or stream a decision-level model"):
            clip.stream(**kw)
    s = clip.stream(hop_seconds=1.0, window_seconds=1.0)   # the defaults, and a hop as long as the window
    assert [sorted(i) for i in s.push(np.zeros(32000, np.float32), 32000)] == [["tags", "time"]]
    # a decision-level model takes them (and the API now checks their values as the CLI does)
    s = _stream_model(env, "sed").stream(hop_seconds=1.0, window_seconds=2.0, lookahead_seconds=0.5, threshold=0.3,
                                         min_duration=0.2)
    assert (s.lookahead, s.tracker.threshold, s.tracker.min_duration) == (16000, 0.3, 0.2)
    with pytest.raises(PannsError, match=r"threshold must be a probability in \[0, 1\], got 3"):
        _stream_model(env, "sed").stream(threshold=3)
    # the command line: the same rule, named as flags, before a backend is made (auto may calibrate)
    def no_backend(*a, **k):
        raise AssertionError("a backend was made before the flag was refused")
    monkeypatch.setattr(stream, "Runtime", no_backend)
    with pytest.raises(PannsError, match=r"^--min_duration 0.2 has no effect with Cnn6: .*; drop it"):
        _stream_cli(env, capsys, f"--audio_path={env['a']}", "--min_duration=0.2")
    with pytest.raises(PannsError, match=r"^--lookahead_seconds 0.5 and --threshold 0.3 have no effect with Cnn6"):
        _stream_cli(env, capsys, f"--audio_path={env['a']}", "--threshold=0.3", "--lookahead_seconds=0.5")
    with pytest.raises(AssertionError, match="backend was made"):   # defaults: the stream goes on
        _stream_cli(env, capsys, f"--audio_path={env['a']}")
    with pytest.raises(AssertionError, match="backend was made"):   # an SED model: the flags go on
        inference.main(["stream", TORCH, f"--checkpoint_path={env['sed']}", f"--audio_path={env['a']}",
                        "--threshold=0.3", "--lookahead_seconds=0.5", "--min_duration=0.2"])


def _stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": io.BytesIO(data)})())


def _stream_cli(env, capsys, *argv):
    inference.main(["stream", TORCH, f"--checkpoint_path={env['ckpt']}", f"--class_labels_csv={env['labels']}",
                    "--hop_seconds=1", "--window_seconds=2", "--top_k=3", *argv])
    return capsys.readouterr().out.splitlines()[:-1]   # the last line is timing


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT", "PCM_U8"])
def test_stream_reads_a_wav_header_on_stdin(env, tmp_path, capsys, monkeypatch, subtype):
    rs = np.random.RandomState(3)
    wav = tmp_path / "st.wav"
    sf.write(str(wav), (0.3 * rs.randn(3 * 16000, 2)).astype(np.float32), 16000, subtype=subtype)
    from_file = _stream_cli(env, capsys, f"--audio_path={wav}")
    _stdin(monkeypatch, wav.read_bytes())
    from_stdin = _stream_cli(env, capsys, "--audio_path=-")
    assert from_stdin == from_file and [json.loads(x)["time"] for x in from_stdin] == [1.0, 2.0, 3.0]
    # raw PCM still works: the same 16-bit samples without the header, mono, at --sample_rate
    if subtype == "PCM_16":
        mono = sf.read(str(wav), dtype="float32")[0].mean(axis=1)
        sf.write(str(tmp_path / "mono.wav"), mono, 16000, subtype="PCM_16")
        _stdin(monkeypatch, sf.read(str(tmp_path / "mono.wav"), dtype="int16")[0].tobytes())
        raw = _stream_cli(env, capsys, "--audio_path=-", "--sample_rate=16000")
        assert raw == _stream_cli(env, capsys, f"--audio_path={tmp_path / 'mono.wav'}")


def test_stream_stdin_formats_it_cannot_read_are_one_line(env, tmp_path, capsys, monkeypatch):
    rs = np.random.RandomState(4)
    y = (0.3 * rs.randn(16000)).astype(np.float32)
    sf.write(str(tmp_path / "x.wav"), y, 16000, subtype="ULAW")
    sf.write(str(tmp_path / "x.flac"), y, 16000)
    sf.write(str(tmp_path / "ok.wav"), y, 16000)
    for name, match in (("x.wav", "WAV sample format 7"), ("x.flac", "stdin holds FLAC data")):
        _stdin(monkeypatch, (tmp_path / name).read_bytes())
        with pytest.raises(PannsError, match=match):
            _stream_cli(env, capsys, "--audio_path=-")
    # --sample_rate that contradicts the header
    _stdin(monkeypatch, (tmp_path / "ok.wav").read_bytes())
    with pytest.raises(PannsError, match="contradicts the WAV header"):
        _stream_cli(env, capsys, "--audio_path=-", "--sample_rate=32000")


def test_stream_sample_rate_with_a_file_is_refused(env, monkeypatch, capsys):
    _loads_no_model(monkeypatch)
    with pytest.raises(PannsError, match="--sample_rate 16000 applies only to raw PCM on stdin"):
        _stream_cli(env, capsys, f"--audio_path={env['a']}", "--sample_rate=16000")


def test_stream_help_names_stdin_and_wav():
    help_text = " ".join(inference.build_parser()._subparsers._group_actions[0].choices["stream"]
                         .format_help().split())
    assert "or - for stdin: a WAV stream" in help_text


# ----------------------------------------------------------------------------- checkpoint messages
def test_truncated_checkpoint_message_is_whole_and_says_cut_short(env, tmp_path):
    from panns.state_dicts import load_checkpoint

    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(env["ckpt"], "rb").read()[:100_000])
    with pytest.raises(PannsError) as info:
        load_checkpoint(str(cut))
    msg = str(info.value)
    assert "cut short" in msg and "100,000 bytes" in msg
    assert msg.endswith(")") and "If you are seeing this error" not in msg   # not cut mid-sentence


def test_front_end_hint_does_not_name_another_model(tmp_path):
    from panns.state_dicts import describe_state_dict

    hint = describe_state_dict(models.create_model("Cnn14").state_dict())
    assert "Cnn14-family" in hint and "Cnn6" not in hint
    hint16 = describe_state_dict(models.create_model("Cnn14_16k").state_dict())
    assert "as Cnn14_16k" in hint16     # a front end of one model is still named by it


def test_mel_check_at_16_khz_prints_no_librosa_warning(env, tmp_path):
    """--sample_rate 16000 with the 32 kHz defaults: one front-end error, no "Empty filters" warning."""
    ckpt = tmp_path / "official.pth"
    torch.save({"model": models.create_model("Cnn6").state_dict()}, ckpt)
    base = ["audio_tagging", TORCH, "--model_type=Cnn6", f"--checkpoint_path={ckpt}", f"--audio_path={env['a']}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PannsError, match="--fmax 14000 is above the Nyquist frequency"):
            inference.main(base + ["--sample_rate=16000"])
        with pytest.raises(PannsError, match="another front end"):   # runnable settings, not these weights'
            inference.main(base + ["--sample_rate=16000", "--fmax=8000"])
