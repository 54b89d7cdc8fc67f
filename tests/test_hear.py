"""panns.hear: the HEAR 2021 API (timestamps in milliseconds, centred, <= 50 ms apart).

The public validator (``hearvalidator``, if installed) imports TensorFlow at the top but only
uses its torch path for torch models; a stub ``tensorflow`` module stands in for it here.
"""
import sys
import types

import numpy as np
import pytest
import torch

from panns import checkpoint, hear, models

HEAR_RATES = (16000, 22050, 44100, 48000)


def _checkpoint(tmp_path, name: str, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = models.create_model(name).eval()
    path = tmp_path / f"{name}.pth"
    torch.save({"model": model.state_dict(), "config": checkpoint.ModelConfig.from_registry(name).to_dict()},
               str(path))
    return str(path)


def _check_api(model, module=hear):
    """What the HEAR validator checks, on shorter audio."""
    assert model.sample_rate in HEAR_RATES and isinstance(model, torch.nn.Module)
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    audio = torch.rand(3, int(1.3 * model.sample_rate)) * 2 - 1
    emb, ts = module.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and emb.shape[0] == 3 and emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size
    diff = torch.diff(ts)
    assert torch.all(diff <= 50.0) and torch.all(torch.abs(diff - diff.mean()) < 1e-3)
    scene = module.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (3, model.scene_embedding_size)


def test_tone_burst_shows_between_3000_and_4000_ms(tmp_path):
    model = hear.load_model(_checkpoint(tmp_path, "Cnn6"))
    assert model.sample_rate == 48000 and model.timestamp_embedding_size == 512   # 32-kHz model, resampled
    assert isinstance(model, torch.nn.Module) and model.runtime.backend_name == "torch"   # never auto's ONNX
    sr = model.sample_rate
    audio = np.zeros(int(6.5 * sr), np.float32)
    t = np.arange(sr) / sr
    audio[3 * sr:4 * sr] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    emb, ts = hear.get_timestamp_embeddings(torch.from_numpy(audio)[None], model)
    ts = ts[0].numpy()
    np.testing.assert_allclose(ts, np.arange(len(ts)) * 50.0)          # milliseconds, from 0, 50 ms apart
    assert ts[-1] <= 6500.0 < ts[-1] + 50.0
    silence = emb[0, 0]
    dev = (emb[0] - silence).norm(dim=1).numpy()
    assert 3000.0 <= ts[int(np.argmax(dev))] <= 4000.0
    inside = (ts >= 3000) & (ts <= 4000)
    assert dev[inside].min() > 1e-3 * dev.max()
    # 1-s windows centred on the timestamps: nothing of the burst more than 0.5 s away from it
    far = (ts < 3000 - 550) | (ts > 4000 + 550)
    assert dev[far].max() <= 1e-4 * dev.max()
    _check_api(model)


def test_sed_model_frames_and_16k_model_rate(tmp_path):
    model = hear.load_model(_checkpoint(tmp_path, "MobileNetV1_DecisionLevelMax"))
    assert model.timestamp_embedding_size == model.scene_embedding_size == 527
    emb, ts = hear.get_timestamp_embeddings(torch.zeros(2, 48000), model)
    np.testing.assert_allclose(ts[0].numpy(), np.arange(101) * 10.0)   # one per 10-ms frame, frame centres
    _check_api(model)
    assert hear.hear_rate(16000) == 16000 and hear.hear_rate(8000) == 16000 and hear.hear_rate(32000) == 48000


def test_public_hear_validator(tmp_path, monkeypatch, capsys):
    tf_stub = types.ModuleType("tensorflow")
    tf_stub.Module = type("Module", (), {})
    monkeypatch.setitem(sys.modules, "tensorflow", tf_stub)
    validate = pytest.importorskip("hearvalidator.validate")
    # a decision-level model keeps it quick (one forward per sound); clip-level models pass _check_api above
    validate.ValidateModel("panns.hear", _checkpoint(tmp_path, "MobileNetV1_DecisionLevelMax"), device="cpu")()
    out = capsys.readouterr().out
    assert "Model sample rate is: 48000" in out and "Interval between timestamps is 10.0ms" in out
