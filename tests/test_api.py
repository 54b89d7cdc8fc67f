"""The Python API (panns.load, panns_inference-compatible classes) and the shared runtime.

Checkpoints are generated here: real random weights for the small models whose numbers are
compared, and for the registry-wide test stand-in weights stored as one broadcast value per
tensor (a few KB per file, loaded strictly like any checkpoint).
"""
import logging
import types

import numpy as np
import pytest
import soundfile as sf
import torch

import panns
from panns import audio_io, checkpoint, models, runtime
from panns.errors import PannsError
from panns.postprocess import detect_events
from panns.runtime import Runtime

SR = 32000


def _tiny_checkpoint(path, name: str) -> str:
    """Our checkpoint format for ``name`` with every tensor a broadcast constant (tiny on disk)."""
    with models.skip_init():
        model = models.create_model(name)
    sd = {k: torch.full((), 0.01, dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}
    torch.save({"model": sd, "config": checkpoint.ModelConfig.from_registry(name).to_dict()}, str(path))
    return str(path)


def _random_checkpoint(tmp_path, name: str, official: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = models.create_model(name).eval()
    path = tmp_path / f"{name}.pth"
    obj = {"model": model.state_dict()}
    if not official:
        obj["config"] = checkpoint.ModelConfig.from_registry(name).to_dict()
    torch.save(obj, str(path))
    return model, str(path)


def _clip(seconds, sr=SR, seed=0):
    rs = np.random.RandomState(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rs.randn(len(t))).astype(np.float32)


@pytest.mark.parametrize("name", models.model_names())
def test_every_registered_model_loads_and_runs_through_the_api(tmp_path, name):
    m = panns.load(_tiny_checkpoint(tmp_path / f"{name}.pth", name), device="cpu", backend="torch")
    spec = models.get_model_spec(name)
    clip = np.zeros(max(spec.min_samples, spec.sample_rate // 10), np.float32)
    pred = m.predict(clip, framewise=spec.is_sed)
    assert pred.clipwise.shape == (527,) and 0.0 <= pred.clipwise.min() <= pred.clipwise.max() <= 1.0
    if spec.is_sed:
        assert pred.framewise.shape == (len(clip) // spec.hop_size + 1, 527) and pred.embedding is None
    else:
        assert pred.embedding.shape == (spec.embedding_dim,)


def test_registry_has_the_official_zoo():
    assert set(models.OFFICIAL_NAMES) <= set(models.model_names()) and len(models.OFFICIAL_NAMES) == 30


def test_arrays_paths_batches_and_resampling_agree(tmp_path):
    model, path = _random_checkpoint(tmp_path, "Cnn6")
    m = panns.load(path, backend="torch")
    a, b = _clip(1.0, seed=1), _clip(0.6, seed=2)
    with torch.no_grad():
        ref = model(torch.from_numpy(a[None]))
    np.testing.assert_allclose(m.embed(a), ref["embedding"][0].numpy(), rtol=1e-4, atol=1e-5)
    # one input -> one answer; several (any lengths) -> a list / stacked rows in input order
    emb = m.embed([a, b])
    assert emb.shape == (2, 512)
    np.testing.assert_allclose(emb[0], m.embed(a), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(emb[1], m.embed(torch.from_numpy(b)), rtol=1e-4, atol=1e-6)
    # files and arrays at another rate are resampled to the model's rate
    a16 = audio_io.resample(a, SR, 16000)
    sf.write(str(tmp_path / "a16.wav"), a16, 16000, subtype="FLOAT")
    from_file = m.clipwise(str(tmp_path / "a16.wav"))
    from_array = m.clipwise(a16, sample_rate=16000)
    np.testing.assert_allclose(from_file, from_array, rtol=1e-5, atol=1e-6)
    tags = m.tag([str(tmp_path / "a16.wav"), a16], sample_rate=16000, top_k=2)
    assert len(tags) == 2 and [t[0] for t in tags[0]] == [t[0] for t in tags[1]]
    assert tags[0][0][0] == panns.labels[int(np.argmax(from_file))]
    for files in (str(tmp_path / "a16.wav"), [tmp_path / "a16.wav"]):   # a rate that would be ignored: refused
        with pytest.raises(PannsError, match="sample_rate=8000 applies to arrays; files are read at the rate"):
            m.tag(files, sample_rate=8000)
    with pytest.raises(PannsError, match="decision-level"):
        m.framewise(a)
    with pytest.raises(PannsError, match="neither a checkpoint file nor a published model"):
        panns.load("no_such_model")


def test_panns_inference_port_gives_the_same_arrays(tmp_path, capsys):
    model, path = _random_checkpoint(tmp_path, "Cnn6", official=True)
    audio = _clip(1.0, seed=3)[None]
    at = panns.AudioTagging(model=models.Cnn6(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64,
                                              fmin=50, fmax=14000, classes_num=527),
                            checkpoint_path=path, device="cpu")
    clipwise_output, embedding = at.inference(audio)
    assert capsys.readouterr().out.splitlines() == [f"Checkpoint path: {path}", "Using CPU."]
    with torch.no_grad():
        ref = model(torch.from_numpy(audio))
    np.testing.assert_allclose(clipwise_output, ref["clipwise_output"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedding, ref["embedding"].numpy(), rtol=1e-5, atol=1e-6)
    assert at.labels == panns.labels and at.classes_num == 527
    sed_model, sed_path = _random_checkpoint(tmp_path, "MobileNetV1_DecisionLevelMax")
    sed = panns.SoundEventDetection(checkpoint_path=sed_path, device="cuda")   # falls back to the CPU
    framewise_output = sed.inference(audio)
    with torch.no_grad():
        ref = sed_model(torch.from_numpy(audio))["framewise_output"].numpy()
    assert framewise_output.shape == ref.shape == (1, 101, 527)
    np.testing.assert_allclose(framewise_output, ref, rtol=1e-5, atol=1e-6)
    # detect_events of the API = events of the framewise output
    m = panns.load(sed_path, backend="torch")
    events = m.detect_events(audio[0], threshold=0.5)
    expected = detect_events(ref[0], panns.labels, 100.0, 0.5, 0.0, 1.0)
    assert events == [e.to_dict() for e in expected]


def test_streamed_windows_equal_one_array_and_window_count(tmp_path):
    model, path = _random_checkpoint(tmp_path, "MobileNetV1_DecisionLevelMax")
    rt = Runtime.load(path)
    wav = _clip(3.3, seed=4)
    whole = rt.predict_windows(wav, 1.0, 0.6, "max", batch_size=3, framewise=True)
    starts = runtime.window_starts(len(wav), 32000, 19200, 320)
    assert whole.windows == len(starts) and whole.framewise.shape == (len(wav) // 320 + 1, 527)
    for block in (1000, 7777, 40000):
        pieces = []
        res = rt.predict_windows((wav[i:i + block] for i in range(0, len(wav), block)), 1.0, 0.6, "max", 3,
                                 framewise_sink=pieces.append)
        assert res.windows == whole.windows and res.framewise is None
        np.testing.assert_allclose(np.concatenate(pieces), whole.framewise, atol=1e-6)
        np.testing.assert_allclose(res.clipwise, whole.clipwise, atol=1e-6)
    # the max over windows is the max over separate forwards of each window
    ref = np.max([rt.forward(wav[s:s + 32000][None])["clipwise_output"][0] for s in starts], axis=0)
    np.testing.assert_allclose(whole.clipwise, ref, atol=1e-6)


def test_auto_backend_on_a_gpu_is_torch_without_a_line(monkeypatch, caplog):
    """auto = torch on GPUs (the intended choice there, not a fallback: nothing logged)."""
    rt = types.SimpleNamespace(device=torch.device("cuda", 0), precision="fp32", backend_name="auto")
    monkeypatch.setitem(runtime._BACKENDS, "torch", lambda rt, **options: "torch backend")
    monkeypatch.setitem(runtime._BACKENDS, "onnxruntime", lambda rt, **options: pytest.fail("ONNX Runtime on a GPU"))
    with caplog.at_level(logging.INFO):
        assert runtime._BACKENDS["auto"](rt) == "torch backend"
    assert rt.backend_name == "torch" and "backend auto" not in caplog.text
