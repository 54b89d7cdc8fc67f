"""pytorch/inference.py: official printout, inputs of any shape/format, outputs, SED, errors.

Checkpoints are built here (random weights, official ``{'model': ...}`` format or ours with a
config); expected numbers come from a direct forward of the model on the decoded audio.
"""
import csv
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from panns import audio_io
from panns import checkpoint
from panns import config
from panns import inference
from panns import models
from panns.errors import CheckpointError, PannsError
from panns import runtime
from panns.runtime import Runtime

SR = 32000
# These tests are about the command line, not the backend: they run torch (--backend auto, the
# default, would export each model to ONNX first; tests/test_onnx.py tests auto and onnxruntime).
TORCH = "--backend=torch"


def _tone(seconds, sr=SR, seed=0, channels=1):
    rs = np.random.RandomState(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rs.randn(len(t))
    y[len(t) // 2:] += 0.3 * np.sin(2 * np.pi * 1500 * t[len(t) // 2:])
    if channels == 2:
        return np.stack([y, 0.5 * y[::-1]], axis=1).astype(np.float32)
    return y.astype(np.float32)


@pytest.fixture(scope="module")
def env(tmp_path_factory, audioset_labels_csv):
    d = tmp_path_factory.mktemp("inference")
    torch.manual_seed(0)
    model = models.create_model("Cnn6").eval()
    ckpt = str(d / "Cnn6_official.pth")
    torch.save({"model": model.state_dict(), "iteration": 0}, ckpt)
    audio = d / "audio"
    audio.mkdir()
    sf.write(str(audio / "a.wav"), _tone(2.0, seed=1), SR)
    sf.write(str(audio / "b.flac"), _tone(1.5, seed=2), SR)
    sf.write(str(d / "stereo44k.wav"), _tone(1.2, 44100, seed=3, channels=2), 44100)
    sf.write(str(d / "short.wav"), _tone(0.05, seed=4), SR)
    sf.write(str(d / "long.wav"), _tone(5.0, seed=5), SR)
    return {"dir": d, "model": model, "ckpt": ckpt, "labels_csv": audioset_labels_csv,
            "labels": config.read_class_labels(audioset_labels_csv).labels}


def _direct(model, waveform):
    with torch.no_grad():
        out = model(torch.from_numpy(waveform[None]))
    return {k: v[0].numpy() for k, v in out.items()}


def _official_lines(probs, labels, embedding=None, k=10):
    order = np.argsort(probs)[::-1]
    lines = ["{}: {:.3f}".format(np.array(labels)[order[i]], probs[order[i]]) for i in range(k)]
    if embedding is not None:
        lines.append("embedding: {}".format(embedding.shape))
    return lines


def _run(capsys, *argv):
    inference.main([str(a) for a in argv] + [TORCH])
    return capsys.readouterr().out.splitlines()


def test_audio_tagging_prints_official_output(env, capsys):
    wav = str(env["dir"] / "audio" / "a.wav")
    out = _run(capsys, "audio_tagging", "--model_type=Cnn6", f"--checkpoint_path={env['ckpt']}",
               f"--audio_path={wav}", f"--class_labels_csv={env['labels_csv']}")
    import librosa

    waveform, _ = librosa.load(wav, sr=SR, mono=True)          # what the official script decodes with
    ref = _direct(env["model"], waveform)
    assert out == ["Using CPU."] + _official_lines(ref["clipwise_output"], env["labels"], ref["embedding"])
    assert out[-1] == "embedding: (512,)"


def test_short_stereo_and_44k_inputs(env, capsys):
    for name in ("short.wav", "stereo44k.wav"):
        path = str(env["dir"] / name)
        out = _run(capsys, "audio_tagging", "--model_type=Cnn6", f"--checkpoint_path={env['ckpt']}",
                   f"--audio_path={path}", f"--class_labels_csv={env['labels_csv']}", "--top_k=5")
        wav = audio_io.load_audio(path, SR)
        if name == "short.wav":    # shorter than the model's minimum: zero-padded, not a crash
            assert len(wav) < env["model"].min_samples
            wav = np.concatenate([wav, np.zeros(env["model"].min_samples - len(wav), np.float32)])
        ref = _direct(env["model"], wav)
        assert out == ["Using CPU."] + _official_lines(ref["clipwise_output"], env["labels"], ref["embedding"], 5)


def test_many_inputs_json_csv_and_sliding_windows(env, capsys, tmp_path):
    d = env["dir"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# clips\n{d / 'long.wav'}\n\n{d / 'short.wav'}\n")
    js, cs = tmp_path / "out.json", tmp_path / "out.csv"
    args = ["audio_tagging", "--model_type=Cnn6", f"--checkpoint_path={env['ckpt']}",
            f"--class_labels_csv={env['labels_csv']}", "--top_k=3", "--segment_seconds=2", "--hop_seconds=1",
            "--aggregate=max", "--audio_path", str(d / "audio"), str(lst), "--audio_path", str(d / "audio" / "*.wav")]
    out = _run(capsys, *args, f"--output={js}")
    expected_paths = [str(d / "audio" / "a.wav"), str(d / "audio" / "b.flac"), str(d / "long.wav"), str(d / "short.wav")]
    assert [l[4:-4] for l in out if l.startswith("==> ")] == expected_paths
    res = json.loads(js.read_text())
    assert [r["audio_path"] for r in res["results"]] == expected_paths
    # long.wav (5 s) in 2-s windows with 1-s hop: starts 0,1,2,3 s; clip result = max over windows
    wav = audio_io.load_audio(str(d / "long.wav"), SR)
    probs = np.max([_direct(env["model"], wav[s * SR:(s + 2) * SR])["clipwise_output"] for s in range(4)], axis=0)
    rec = res["results"][2]
    assert rec["windows"] == 4
    top = np.argsort(probs)[::-1][:3]
    assert [t["index"] for t in rec["tags"]] == list(top)
    np.testing.assert_allclose([t["probability"] for t in rec["tags"]], probs[top], rtol=1e-5, atol=1e-6)
    assert rec["tags"][0]["label"] == env["labels"][top[0]] and rec["tags"][0]["mid"].startswith("/m/")
    inference.write_results(str(cs), res["results"], {})
    rows = list(csv.DictReader(open(cs)))
    assert len(rows) == 4 * 3 and rows[6]["audio_path"] == expected_paths[2]
    assert float(rows[6]["probability"]) == pytest.approx(float(probs[top[0]]), abs=1e-6)


def test_finetuned_checkpoint_prints_probabilities(tmp_path, capsys, env):
    torch.manual_seed(1)
    model = models.make_transfer_model("Cnn6", classes_num=4).eval()
    cfg = checkpoint.ModelConfig.from_registry("Transfer_Cnn6", classes_num=4)
    cfg.labels, cfg.ids = ["dog", "cat", "bird", "cow"], ["d", "c", "b", "w"]
    assert cfg.output == "log_softmax"
    path = str(tmp_path / "ft.pth")
    checkpoint.save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict()})
    wav_path = str(env["dir"] / "audio" / "a.wav")
    out = _run(capsys, "audio_tagging", f"--checkpoint_path={path}", f"--audio_path={wav_path}")
    ref = _direct(model, audio_io.load_audio(wav_path, SR))
    probs = np.exp(ref["clipwise_output"])
    assert out == ["Using CPU."] + _official_lines(probs, cfg.labels, ref["embedding"], k=4)
    assert sum(float(l.split(": ")[1]) for l in out[1:5]) == pytest.approx(1.0, abs=3e-3)


def test_checkpoint_config_vs_command_line(tmp_path, env):
    cfg = checkpoint.ModelConfig.from_registry("Cnn6")
    path = str(tmp_path / "ours.pth")
    checkpoint.save_checkpoint(path, {"model": env["model"].state_dict(), "config": cfg.to_dict()})
    wav = str(env["dir"] / "audio" / "a.wav")
    with pytest.raises(CheckpointError, match="sample_rate=16000"):
        inference.main(["audio_tagging", TORCH, f"--checkpoint_path={path}", f"--audio_path={wav}", "--sample_rate=16000",
                        f"--class_labels_csv={env['labels_csv']}"])
    with pytest.raises(CheckpointError, match="Cnn10"):
        inference.main(["audio_tagging", TORCH, "--model_type=Cnn10", f"--checkpoint_path={path}", f"--audio_path={wav}",
                        f"--class_labels_csv={env['labels_csv']}"])


def test_errors_are_clear(env, tmp_path, monkeypatch, caplog, capsys):
    wav = str(env["dir"] / "audio" / "a.wav")
    base = ["--model_type=Cnn6", f"--checkpoint_path={env['ckpt']}"]
    # SED of a clip-level model names the SED models
    with pytest.raises(PannsError, match="Cnn14_DecisionLevelMax"):
        inference.main(["sound_event_detection", TORCH, *base, f"--audio_path={wav}", f"--class_labels_csv={env['labels_csv']}"])
    # no label CSV anywhere: says how to fetch it
    monkeypatch.setattr(config, "DEFAULT_LABELS_CSV", str(tmp_path / "none" / "class_labels_indices.csv"))
    with pytest.raises(PannsError, match="fetch_metadata.sh"):
        inference.main(["audio_tagging", TORCH, *base, f"--audio_path={wav}"])
    with pytest.raises(PannsError, match="audio file not found"):
        inference.main(["audio_tagging", TORCH, *base, f"--audio_path={tmp_path / 'nope.wav'}"])
    # --cuda without CUDA: a warning, then CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        out = _run(capsys, "audio_tagging", *base, f"--audio_path={wav}", f"--class_labels_csv={env['labels_csv']}",
                   "--cuda", "--top_k=1")
    assert out[0] == "Using CPU." and "CUDA is not available" in caplog.text


def test_detect_events():
    fw = np.zeros((100, 3), np.float32)
    fw[10:30, 0] = 0.9
    fw[20:22, 1] = 0.6          # 20 ms: dropped by min_duration
    fw[50:100, 2] = np.linspace(0.5, 0.8, 50)
    ev = inference.detect_events(fw, ["a", "b", "c"], 100.0, threshold=0.5, min_duration=0.05, duration=0.995)
    assert [(e.label, e.onset, e.offset) for e in ev] == [("a", 0.1, 0.3), ("c", 0.5, 0.995)]
    assert ev[1].score == pytest.approx(0.8)
    assert runtime.window_starts(1000, 400, 300, align=10) == [0, 300, 600]
    assert runtime.window_starts(300, 400, 300) == [0]


@pytest.fixture(scope="module")
def sed_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create_model("Cnn14_DecisionLevelMax").eval()
    path = str(tmp_path_factory.mktemp("sed") / "sed.pth")
    torch.save({"model": model.state_dict()}, path)
    return model, path


def test_sound_event_detection_figure_events_and_windows(sed_ckpt, env, tmp_path, capsys, monkeypatch):
    model, path = sed_ckpt
    wav_path = str(env["dir"] / "audio" / "b.flac")     # 1.5 s -> 151 frames
    monkeypatch.chdir(tmp_path)
    events_csv = tmp_path / "events.csv"
    out = _run(capsys, "sound_event_detection", "--model_type=Cnn14_DecisionLevelMax", f"--checkpoint_path={path}",
               f"--audio_path={wav_path}", f"--class_labels_csv={env['labels_csv']}", f"--events_csv={events_csv}",
               "--threshold=0.3")
    assert out == ["Using CPU.", "Sound event detection result (time_steps x classes_num): (151, 527)",
                   "Save sound event detection visualization to results/b.png"]
    assert (tmp_path / "results" / "b.png").stat().st_size > 10_000
    wav = audio_io.load_audio(wav_path, SR)
    ref = _direct(model, wav)["framewise_output"]
    expected = inference.detect_events(ref, env["labels"], 100.0, 0.3, 0.0, 1.5)
    rows = list(csv.reader(open(events_csv)))
    assert rows[0] == ["onset", "offset", "label", "score"]
    assert rows[1:] == [[f"{e.onset:.3f}", f"{e.offset:.3f}", e.label, f"{e.score:.4f}"] for e in expected]
    assert len(expected) > 0
    # windowed SED: 1-s windows (starts 0 and 0.5 s); framewise output stitched on the full grid
    js = tmp_path / "sed.json"
    out = _run(capsys, "sound_event_detection", "--model_type=Cnn14_DecisionLevelMax", f"--checkpoint_path={path}",
               f"--audio_path={wav_path}", f"--class_labels_csv={env['labels_csv']}", "--segment_seconds=1",
               f"--output_dir={tmp_path / 'figs'}", f"--output={js}")
    assert out[1] == "Sound event detection result (time_steps x classes_num): (151, 527)"
    rec = json.loads(js.read_text())["results"][0]
    assert rec["windows"] == 2 and rec["figure"] == str(tmp_path / "figs" / "b.png")
    first, second = _direct(model, wav[:SR]), _direct(model, wav[SR // 2:])
    assert rec["tags"][0]["probability"] == pytest.approx(
        float(max(first["clipwise_output"].max(), second["clipwise_output"].max())), abs=1e-6)
    assert rec["frames"] == 151
    # stitching: frames one window covers come from it alone; overlapping frames are the max of both
    rt = Runtime(model, checkpoint.ModelConfig.from_registry("Cnn14_DecisionLevelMax"))
    fw = inference.run_clip(rt, wav, segment_seconds=1.0, need_framewise=True).framewise
    a, b = first["framewise_output"], second["framewise_output"]
    np.testing.assert_allclose(fw[:50], a[:50], atol=1e-6)
    np.testing.assert_allclose(fw[101:], b[51:], atol=1e-6)
    np.testing.assert_allclose(fw[50:101], np.maximum(a[50:], b[:51]), atol=1e-6)
