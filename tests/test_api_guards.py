"""Bad input at the Python API, the HEAR API, ONNX export, the backend calibration cache and the small
utilities (plot_statistics, create_black_list): one clear error, no traceback in a CLI, no lost data."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from panns import calibration, checkpoint, hear, models, onnx_backend
from panns.errors import PannsError, run_cli
from panns.utilities import DiskFullError


def _tiny_checkpoint(path, name: str = "Cnn6") -> str:
    """Our checkpoint format with every tensor a broadcast constant (a few KB on disk, loads strictly)."""
    with models.skip_init():
        model = models.create_model(name)
    sd = {k: torch.full((), 0.01, dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}
    torch.save({"model": sd, "config": checkpoint.ModelConfig.from_registry(name).to_dict()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def cnn6_path(tmp_path_factory) -> str:
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn6.pth")


@pytest.fixture(scope="module")
def hear_model(cnn6_path):
    return hear.load_model(cnn6_path)


# ----------------------------------------------------------------------------- HEAR
@pytest.mark.parametrize("option", [dict(hop_ms=0), dict(hop_ms=float("nan")), dict(window_seconds=0),
                                    dict(window_seconds=-1.0), dict(batch_size=0), dict(batch_size=2.5)])
def test_hear_options_out_of_range_are_refused_at_load(cnn6_path, option):
    name = next(iter(option))
    with pytest.raises(PannsError, match=name):
        hear.load_model(cnn6_path, **option)


def test_hear_accepts_arrays_and_lists_like_tensors(hear_model):
    sr = hear_model.sample_rate
    ref = hear.get_scene_embeddings(torch.zeros(1, sr), hear_model)
    for audio in (np.zeros((1, sr), np.float32), [[0.0] * sr]):
        assert torch.equal(hear.get_scene_embeddings(audio, hear_model), ref)
        emb, ts = hear.get_timestamp_embeddings(audio, hear_model)
        assert emb.device.type == "cpu" and emb.shape[:2] == ts.shape and ts.shape[0] == 1


def test_hear_empty_batch_keeps_the_timestamp_axis(hear_model):
    """(0, n) gives the same number of timestamps per sound as (k, n), not none."""
    sr = hear_model.sample_rate
    emb1, ts1 = hear.get_timestamp_embeddings(torch.zeros(1, sr), hear_model)
    emb0, ts0 = hear.get_timestamp_embeddings(torch.zeros(0, sr), hear_model)
    assert emb0.shape == (0,) + tuple(emb1.shape[1:]) and ts0.shape == (0, ts1.shape[1])
    assert hear.get_scene_embeddings(torch.zeros(0, sr), hear_model).shape == (0, hear_model.scene_embedding_size)


# ----------------------------------------------------------------------------- ONNX export
def test_failed_export_check_keeps_the_file_already_there(tmp_path, monkeypatch):
    """A checked export that differs from torch is not installed, and the earlier file stays."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the export that works")

    def fake_export(model, config, path, **kw):
        with open(path, "wb") as f:
            f.write(b"a wrong export")
        return ["clipwise_output"]

    monkeypatch.setattr(onnx_backend, "export_onnx", fake_export)
    monkeypatch.setattr(onnx_backend, "OnnxBackend", lambda path: None)
    monkeypatch.setattr(onnx_backend, "max_relative_difference", lambda *a: 0.5)
    cfg = checkpoint.ModelConfig.from_registry("Cnn6")
    with pytest.raises(PannsError, match="differs from torch"):
        onnx_backend.export_checked(torch.nn.Linear(1, 1), cfg, str(out))
    assert out.read_bytes() == b"the export that works"
    assert os.listdir(tmp_path) == ["model.onnx"]   # no temporary left
    monkeypatch.setattr(onnx_backend, "max_relative_difference", lambda *a: 0.0)
    onnx_backend.export_checked(torch.nn.Linear(1, 1), cfg, str(out))
    assert out.read_bytes() == b"a wrong export" and os.listdir(tmp_path) == ["model.onnx"]


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_export_to_an_unusable_path_fails_before_exporting(tmp_path, monkeypatch, where):
    pytest.importorskip("onnx")
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "folder" if where == "folder" else tmp_path / "afile" / "m.onnx"
    monkeypatch.setattr(onnx_backend, "output_names", lambda *a: pytest.fail("the export started"))
    cfg = checkpoint.ModelConfig.from_registry("Cnn6")
    with pytest.raises(PannsError, match="ONNX output"):
        onnx_backend.export_onnx(torch.nn.Linear(1, 1), cfg, str(path))
    assert (tmp_path / "afile").read_text() == "x"


# ----------------------------------------------------------------------------- calibration cache
def _key():
    return {"format": calibration.FORMAT, "model_type": "Cnn6", "paths": ["torch fp32", "onnxruntime fp32"]}


@pytest.mark.parametrize("seconds", [{"torch fp32": float("nan"), "onnxruntime fp32": 1.0},
                                     {"torch fp32": -1.0}, {"torch fp32": float("inf")}])
def test_damaged_calibration_verdict_is_measured_again(tmp_path, monkeypatch, seconds):
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    path = calibration.verdict_path(_key())
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"key": _key(), "seconds": seconds}, f)   # json writes NaN/Infinity, and reads them back
    assert calibration.load_verdict(_key()) is None


def test_calibration_cache_on_a_full_disk_does_not_end_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))

    def full(path, text):
        raise DiskFullError(f"disk full while writing {path}")

    monkeypatch.setattr(calibration, "atomic_write_text", full)
    v = calibration.save_verdict(_key(), calibration.Verdict({"torch fp32": 1.0}))
    assert v.file == "" and v.winner == ("torch", "fp32")


# ----------------------------------------------------------------------------- small CLIs
def _cli(main, argv, monkeypatch, capsys):
    """Run an entry point under run_cli with ``argv``; (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["prog"] + list(argv))
    with pytest.raises(SystemExit) as ei:
        run_cli(main)
    return ei.value.code, capsys.readouterr().err.strip()
