"""The official Python API of ``pytorch/inference.py``: scripts that ``import inference`` (``pytorch/`` on the path)
and call ``audio_tagging(args)`` / ``sound_event_detection(args)`` with a Namespace of the official fields only get
the official ``(output, labels)`` tuples, print what the command line prints, and the command line keeps its exit
statuses. Tiny random official-format checkpoints (Cnn6, Cnn6_DecisionLevelMax); nothing is downloaded."""
import argparse
from typing import List

import numpy as np
import pytest
import soundfile as sf
import torch

import inference   # pytorch/inference.py, as the official scripts import it
from panns import audio_io
from panns import checkpoint
from panns import config
from panns import inference as panns_inference
from panns import models
from panns.errors import PannsError
from panns.runtime import Runtime

SR = 32000
HOP = 320


def _noise(seconds: float, seed: int) -> np.ndarray:
    rs = np.random.RandomState(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (300 + 200 * seed) * t) + 0.05 * rs.randn(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("official_api")
    out = {"dir": d}
    for name in ("Cnn6", "Cnn6_DecisionLevelMax"):
        torch.manual_seed(0)
        model = models.create_model(name).eval()
        path = str(d / f"{name}.pth")
        torch.save({"model": model.state_dict()}, path)   # the official {'model': ...} format
        out[name] = (model, path)
    folder = d / "clips"
    folder.mkdir()
    sf.write(str(folder / "a.wav"), _noise(1.5, 1), SR)
    sf.write(str(folder / "b.wav"), _noise(1.0, 2), SR)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    sf.write(str(d / "long.wav"), _noise(3.3, 3), SR)
    out.update(a=str(folder / "a.wav"), b=str(folder / "b.wav"), folder=str(folder), long=str(d / "long.wav"))
    return out


@pytest.fixture(autouse=True)
def _setup(monkeypatch, audioset_labels_csv):
    """Torch (not an ONNX export that --backend auto could pick) and a synthetic 527-label CSV as the default."""
    monkeypatch.setenv("PANNS_BACKEND", "torch")
    monkeypatch.setattr(config, "DEFAULT_LABELS_CSV", audioset_labels_csv)


def _official_args(model_type: str, checkpoint_path: str, audio_path, **extra) -> argparse.Namespace:
    """What the official script's parser makes: its fields only (its defaults, front end included)."""
    return argparse.Namespace(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000,
                              model_type=model_type, checkpoint_path=checkpoint_path, audio_path=audio_path,
                              cuda=False, **extra)


def _direct(model, waveform: np.ndarray) -> dict:
    with torch.no_grad():
        out = model(torch.from_numpy(waveform[None]))
    return {k: v[0].numpy() for k, v in out.items()}


def _cli(capsys, *argv: str) -> List[str]:
    inference.main(list(argv))
    return capsys.readouterr().out.splitlines()


def test_audio_tagging_returns_the_official_tuple(env, capsys):
    model, ckpt = env["Cnn6"]
    args = _official_args("Cnn6", ckpt, env["a"])
    given = dict(vars(args))
    clipwise, labels = inference.audio_tagging(args)
    printed = capsys.readouterr().out.splitlines()
    assert vars(args) == given                       # the caller's Namespace is left as it was
    assert isinstance(clipwise, np.ndarray) and clipwise.shape == (527,) and clipwise.dtype == np.float32
    assert isinstance(labels, list) and labels == config.read_class_labels().labels and len(labels) == 527
    ref = _direct(model, audio_io.load_audio(env["a"], SR))["clipwise_output"]
    np.testing.assert_allclose(clipwise, ref, atol=1e-5)
    # the lines printed are the command line's, and their numbers are the array returned
    assert printed == _cli(capsys, "audio_tagging", "--model_type=Cnn6", f"--checkpoint_path={ckpt}",
                           f"--audio_path={env['a']}")
    top = np.argsort(clipwise)[::-1][:10]
    assert printed == ["Using CPU."] + [f"{labels[i]}: {clipwise[i]:.3f}" for i in top] + ["embedding: (512,)"]
    # a field of ours given is used; the missing ones took the parser's defaults (top_k 10 above)
    inference.audio_tagging(_official_args("Cnn6", ckpt, env["a"], top_k=3))
    assert len(capsys.readouterr().out.splitlines()) == 1 + 3 + 1


def test_sound_event_detection_returns_the_framewise_matrix(env, capsys, tmp_path, monkeypatch):
    model, ckpt = env["Cnn6_DecisionLevelMax"]
    monkeypatch.chdir(tmp_path)                      # the official figure goes to results/<stem>.png
    framewise, labels = inference.sound_event_detection(_official_args("Cnn6_DecisionLevelMax", ckpt, env["a"]))
    printed = capsys.readouterr().out.splitlines()
    samples = len(audio_io.load_audio(env["a"], SR))
    assert isinstance(framewise, np.ndarray) and framewise.dtype == np.float32
    assert framewise.shape == (samples // HOP + 1, 527) == (151, 527) and len(labels) == 527
    ref = _direct(model, audio_io.load_audio(env["a"], SR))["framewise_output"]
    np.testing.assert_allclose(framewise, ref[:len(framewise)], atol=1e-5)
    assert printed == ["Using CPU.", "Sound event detection result (time_steps x classes_num): (151, 527)",
                       "Save sound event detection visualization to results/a.png"]
    assert (tmp_path / "results" / "a.png").is_file()
    assert printed == _cli(capsys, "sound_event_detection", "--model_type=Cnn6_DecisionLevelMax",
                           f"--checkpoint_path={ckpt}", f"--audio_path={env['a']}")


def test_several_inputs_give_a_list_and_the_cli_keeps_its_exit_status(env, capsys):
    model, ckpt = env["Cnn6"]
    outputs, labels = inference.audio_tagging(_official_args("Cnn6", ckpt, env["folder"]))
    assert len(labels) == 527 and isinstance(outputs, list) and len(outputs) == 3
    a, b, broken = outputs                           # sorted folder order: a.wav, b.wav, broken.wav
    assert broken is None and a is not None and b is not None
    for got, path in ((a, env["a"]), (b, env["b"])):
        np.testing.assert_allclose(got, _direct(model, audio_io.load_audio(path, SR))["clipwise_output"], atol=1e-5)
    # a list of files keeps its order (and stays a list, one array per file)
    outputs, _ = inference.audio_tagging(_official_args("Cnn6", ckpt, [env["b"], env["a"]]))
    assert isinstance(outputs, list)
    np.testing.assert_allclose(outputs[0], b, atol=1e-6)
    np.testing.assert_allclose(outputs[1], a, atol=1e-6)
    capsys.readouterr()
    # the command line: status 1 when some of several files fail, no exit (0) otherwise
    with pytest.raises(SystemExit) as exit_info:
        inference.main(["audio_tagging", "--model_type=Cnn6", f"--checkpoint_path={ckpt}",
                        f"--audio_path={env['folder']}"])
    assert exit_info.value.code == 1
    inference.main(["audio_tagging", "--model_type=Cnn6", f"--checkpoint_path={ckpt}", "--audio_path", env["a"],
                    env["b"]])


def test_a_missing_required_field_is_one_line(env):
    _, ckpt = env["Cnn6"]
    args = _official_args("Cnn6", ckpt, env["a"])
    del args.audio_path
    with pytest.raises(PannsError, match="audio_path"):
        inference.audio_tagging(args)


def test_streamed_sed_returns_the_whole_matrix_and_the_cli_keeps_none(env, capsys, monkeypatch):
    """A recording over AUTO_WINDOW_SECONDS (made 1 s here) is decoded and run window by window; the API
    still returns its (frames, classes) matrix, the command line keeps none of it."""
    model, ckpt = env["Cnn6_DecisionLevelMax"]
    monkeypatch.setattr(panns_inference, "AUTO_WINDOW_SECONDS", 1.0)
    monkeypatch.setattr(panns_inference, "AUTO_SEGMENT_SECONDS", 1.0)
    streamed, kept = [], []
    stream_audio, predict_windows = audio_io.stream_audio, Runtime.predict_windows

    def spy_stream(*a, **k):
        streamed.append(a[0])
        return stream_audio(*a, **k)

    def spy_predict(self, *a, **k):
        kept.append(k["framewise"])
        return predict_windows(self, *a, **k)

    monkeypatch.setattr(audio_io, "stream_audio", spy_stream)
    monkeypatch.setattr(Runtime, "predict_windows", spy_predict)
    framewise, _ = inference.sound_event_detection(_official_args("Cnn6_DecisionLevelMax", ckpt, env["long"],
                                                                  no_plot=True))
    wav = audio_io.load_audio(env["long"], SR)
    assert streamed == [env["long"]] and kept == [True]
    assert framewise.shape == (len(wav) // HOP + 1, 527)
    rt = Runtime(model, checkpoint.ModelConfig.from_registry("Cnn6_DecisionLevelMax"))
    whole = panns_inference.run_clip(rt, wav, segment_seconds=1.0, need_framewise=True).framewise
    np.testing.assert_allclose(framewise, whole, atol=1e-5)
    del streamed[:], kept[:]
    out = _cli(capsys, "sound_event_detection", "--model_type=Cnn6_DecisionLevelMax", f"--checkpoint_path={ckpt}",
               f"--audio_path={env['long']}", "--no_plot")
    assert out[-1] == f"Sound event detection result (time_steps x classes_num): ({len(wav) // HOP + 1}, 527)"
    assert streamed == [env["long"]] and kept == [False]
