"""What the command lines and logs say: crops of extract_embeddings, backend auto's account of a job,
stream's one --audio_path, plain-float events, the evaluated set a constant-output warning names, and
finetune_template's --help examples."""
import argparse
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from panns import checkpoint
from panns import extract
from panns import inference
from panns import onnx_backend
from panns import runtime
from panns import stream
from panns.postprocess import detect_events

from data_helpers import FixedScores, seeded_checkpoint

SR = 32000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("messages")
    ckpt = str(d / "cnn6.pth")
    model = seeded_checkpoint(ckpt)
    cfg = checkpoint.ModelConfig.from_registry("Cnn6")
    rs = np.random.RandomState(0)
    clips = d / "clips"
    clips.mkdir()
    for name, sec in (("long3.wav", 3.0), ("long2.5.wav", 2.5), ("short1.wav", 1.0)):
        sf.write(str(clips / name), (0.1 * rs.randn(int(sec * SR))).astype(np.float32), SR)
    seven = d / "seven.wav"
    sf.write(str(seven), (0.1 * rs.randn(7 * SR)).astype(np.float32), SR)
    junk = d / "junk.wav"
    junk.write_bytes(b"junk!")
    return {"dir": d, "model": model, "cfg": cfg, "ckpt": ckpt, "clips": clips, "seven": str(seven),
            "junk": str(junk)}


def _messages(caplog, start=""):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


# ----------------------------------------------------------------------------- extract_embeddings --segment_seconds
def test_extract_segment_seconds_says_what_was_cut(env, tmp_path, caplog, capsys, audioset_labels_csv):
    argv = ["extract_embeddings", "--backend=torch", f"--checkpoint_path={env['ckpt']}",
            f"--audio_path={env['clips']}", f"--class_labels_csv={audioset_labels_csv}", "--num_workers=0",
            "--precision=fp32", "--quiet"]
    with caplog.at_level(logging.INFO):
        inference.main(argv + ["--segment_seconds=2", f"--output_path={tmp_path / 'cut.h5'}"])
    assert ("2 of 3 files are longer than --segment_seconds 2: their first 2 s are embedded, 1.5 s of audio "
            "dropped; omit --segment_seconds to embed whole files") in _messages(caplog)
    caplog.clear()
    with caplog.at_level(logging.INFO):   # whole files, or a segment no file exceeds: nothing cut, nothing said
        inference.main(argv + [f"--output_path={tmp_path / 'whole.h5'}"])
        inference.main(argv + ["--segment_seconds=5", f"--output_path={tmp_path / 'long.h5'}"])
    assert not [m for m in _messages(caplog) if "longer than" in m]
    capsys.readouterr()
    # the Python API says it too, naming its argument
    ex = extract.Extractor(env["model"], env["cfg"], segment_seconds=2.0, progress=False, num_workers=0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="panns.extract"):
        ex.embed_waveforms([np.zeros(3 * SR, np.float32), np.zeros(SR, np.float32)])
    assert ("1 of 2 waveforms are longer than segment_seconds 2: their first 2 s are embedded, 1 s of audio "
            "dropped; omit segment_seconds to embed whole waveforms") in _messages(caplog)


def test_extract_help_says_segment_seconds_cuts():
    p = inference.build_parser()._subparsers._group_actions[0].choices["extract_embeddings"]
    text = " ".join(p.format_help().split())
    assert "embed only the first this many seconds of each file: longer files are cut" in text
    assert "no sliding windows" in text


def test_extract_job_with_segment_seconds_counts_segments():
    args = argparse.Namespace(segment_seconds=10.0)
    job = extract._job_seconds(args, ["a.wav", "b.wav", "c.wav"])   # no header read: none of them exists
    assert job == 30.0 and runtime.job_text(job) == "30 s of audio (3 files of --segment_seconds 10)"


# ----------------------------------------------------------------------------- backend auto's account of the job
def test_job_seconds_text_counts_unknown_files_apart(env):
    job = runtime.job_seconds([env["seven"], env["junk"]])
    assert job == pytest.approx(17.0)                              # the decision's figure is unchanged
    assert job.text == "7 s of audio (+1 file of unknown length)"
    assert runtime.job_seconds([env["junk"]] * 2).text == "2 files of unknown length"
    assert runtime.job_seconds([env["seven"]]).text == "7 s of audio"
    capped = runtime.job_seconds([env["seven"]] * 5, cap=10.0)
    assert capped == pytest.approx(14.0) and capped.text == "at least 14 s of audio (headers of 3 files not read)"
    assert runtime.job_text(30.0) == "30 s of audio"               # a plain float, as the Python API may pass


@pytest.fixture
def no_calibration(tmp_path, monkeypatch):
    """Backend auto with ONNX Runtime a candidate, no verdict cached and no export cached."""
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    monkeypatch.delenv(runtime.BACKEND_ENV, raising=False)
    monkeypatch.setattr(onnx_backend, "available", lambda: True)
    monkeypatch.setattr(onnx_backend, "cached_export_key", lambda *a, **k: None)


def _auto_line(env, caplog, **options):
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rt = runtime.Runtime(env["model"], env["cfg"], backend="auto", **options)
    assert rt.backend_name == "torch"
    lines = _messages(caplog, "backend auto")
    assert len(lines) == 1
    return lines[0]


def test_auto_line_says_the_audio_and_what_the_numbers_are(env, caplog, no_calibration):
    line = _auto_line(env, caplog, job_seconds=runtime.job_seconds([env["seven"], env["junk"]]))
    assert line == ("backend auto: running torch fp32 (7 s of audio (+1 file of unknown length) does not repay a "
                    "calibration (from 1 min it does, 5 min while ONNX Runtime's export is not cached): no "
                    "calibration of Cnn6 on this CPU yet)")
    # a stream's file: its length, and the windows it runs as
    args = argparse.Namespace(backend="auto", window_seconds=10.0, hop_seconds=1.0)
    line = _auto_line(env, caplog, **stream._auto_options(args, env["seven"]))
    assert "(7 s of audio in 10-s windows every 1 s (70 s of model input) does not repay a calibration" in line
    # stdin, the microphone, a URL, a file without a length: of unknown length, not the Python API
    for source, says in (("-", "stdin is a stream of unknown length"),
                         (None, "the microphone is a stream of unknown length"),
                         ("http://host/x.mp3", "a URL is read as a stream of unknown length"),
                         (env["junk"], "the length of junk.wav is not in its header")):
        line = _auto_line(env, caplog, **stream._auto_options(args, source))
        assert line == f"backend auto: running torch fp32 ({says}: no calibration of Cnn6 on this CPU yet)"
    assert "Python API" in _auto_line(env, caplog)
    assert stream._auto_options(argparse.Namespace(backend="torch"), "-") == {}


# ----------------------------------------------------------------------------- stream: one --audio_path
def test_stream_takes_one_audio_path(capsys):
    parser = inference.build_parser()
    sub = parser._subparsers._group_actions[0].choices
    usage = " ".join(sub["stream"].format_usage().split())
    assert "[--audio_path AUDIO_PATH]" in usage and "AUDIO_PATH ..." not in usage
    assert "AUDIO_PATH [AUDIO_PATH ...]" in " ".join(sub["audio_tagging"].format_usage().split())   # unchanged
    assert parser.parse_args(["stream", "--audio_path", "x.wav"]).audio_path == "x.wav"
    assert parser.parse_args(["stream", "--microphone"]).audio_path is None
    for argv in (["--audio_path", "a.wav", "b.wav"], ["--audio_path", "a.wav", "--audio_path", "b.wav"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["stream", *argv])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: b.wav" in err and "stream takes one --audio_path" in err


# ----------------------------------------------------------------------------- events: plain floats
def test_detect_events_gives_plain_floats():
    fw = np.zeros((100, 2), np.float32)
    fw[10:20, 0] = fw[30:40, 0] = fw[50:100, 1] = 0.9    # two closed runs, one open at the end
    for duration in (None, 0.95, np.float64(0.95)):
        events = detect_events(fw, ["a", "b"], 100.0, duration=duration)
        assert len(events) == 3
        for e in events:
            assert all(type(v) is float for v in (e.onset, e.offset, e.score)) and type(e.index) is int
        json.dumps([vars(e) for e in events])


# ----------------------------------------------------------------------------- evaluation: which set


class _Named(list):
    name = "Evaluation set balanced_train"


def test_constant_output_warning_names_the_set(caplog):
    from panns.evaluate import Evaluator, compute_metrics

    rs = np.random.RandomState(3)
    n, c = 12, 4
    target = (rs.rand(n, c) > 0.5).astype(np.float32)
    constant = np.tile(rs.rand(1, c), (n, 1))
    batches = [{"audio_name": np.array([f"Y{i}.wav" for i in idx]),
                "waveform": np.stack([np.full(8, i, np.float32) for i in idx]), "target": target[idx]}
               for idx in (np.arange(0, 6), np.arange(6, 12))]
    with caplog.at_level(logging.WARNING, logger="panns.evaluate"):
        compute_metrics(target, constant)
        compute_metrics(target, constant, name="eval")
        Evaluator(FixedScores(constant)).evaluate(batches, name="balanced_train")
        Evaluator(FixedScores(constant)).evaluate(_Named(batches))   # a cached set's own name
    warned = [m for m in _messages(caplog) if "constant" in m]
    assert len(warned) == 4
    assert warned[0].startswith("model scores are (nearly) constant across the 12 evaluated clips")
    assert warned[1].startswith("model scores on eval are (nearly) constant")
    assert warned[2].startswith("model scores on balanced_train are (nearly) constant")
    assert warned[3].startswith("model scores on evaluation set balanced_train are (nearly) constant")


# ----------------------------------------------------------------------------- finetune_template --help
def test_finetune_help_keeps_the_example_lines():
    out = subprocess.run([sys.executable, os.path.join(REPO, "pytorch", "finetune_template.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert ("train --sample_rate 32000 --window_size 1024 --hop_size 320 \\\n"
            "        --mel_bins 64 --fmin 50 --fmax 14000 --model_type Transfer_Cnn14 \\\n") in out
    assert "--model_type Transfer_Cnn14 \\\n        --pretrained_checkpoint_path" in out
    description = out.split("positional arguments")[0]
    assert not [line for line in description.splitlines() if "  " in line.strip()]   # no runs of spaces in a line
