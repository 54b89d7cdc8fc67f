"""Checkpoint save/load: official-format files (with numpy objects) under weights_only, our
self-describing files, front-end contradictions, mismatched and corrupt files, key prefixes."""
import os
import sys
import zipfile

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
from model_helpers import quick_fill, single_thread, skip_weight_init  # noqa: E402

from panns import checkpoint as ck
from panns import models
from panns.errors import CheckpointError, PannsError

FE16 = dict(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000)

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def _model(name, classes_num=527, **fe):
    with skip_weight_init():
        return quick_fill(models.create_model(name, classes_num=classes_num, **fe)).eval()


def _official_file(path, model):
    """What official main.py saves: model, iteration and a numpy sampler state."""
    torch.save({"model": model.state_dict(), "iteration": 0,
                "sampler": {"indexes": np.arange(5), "pointer": np.int64(3),
                            "lambdas": np.array([0.5, 0.5], np.float32), "flag": np.bool_(True)}},
               path)
    return str(path)


def _same_outputs(a, b, length=16000):
    x = 0.1 * torch.randn(1, length, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        oa, ob = a(x), b(x)
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k])


def test_official_file_with_numpy_loads_weights_only(tmp_path):
    model = _model("Cnn6")
    path = _official_file(tmp_path / "official.pth", model)
    raw = ck.load_checkpoint(path)
    assert isinstance(raw["sampler"]["indexes"], np.ndarray) and raw["sampler"]["pointer"] == 3
    loaded, cfg = ck.load_model(path, model_type="Cnn6")
    assert not loaded.training and cfg.model_type == "Cnn6" and cfg.classes_num == 527
    assert cfg.sample_rate == 32000 and cfg.output == "sigmoid" and cfg.labels is None
    _same_outputs(model, loaded)


def test_numpy1_pickles_load(tmp_path):
    """Files written with numpy 1.x name numpy.core.multiarray (numpy 2: numpy._core)."""
    src = _official_file(tmp_path / "np2.pth", _model("LeeNet11", classes_num=3))
    dst = tmp_path / "np1.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(name, data)
    raw = ck.load_checkpoint(str(dst))
    np.testing.assert_array_equal(raw["sampler"]["indexes"], np.arange(5))


def test_our_checkpoint_roundtrip_and_config(tmp_path):
    model = _model("Cnn6", classes_num=4, **FE16)
    cfg = ck.ModelConfig(model_type="Cnn6", classes_num=4, labels=list("abcd"), ids=list("ABCD"), **FE16)
    path = str(tmp_path / "sub" / "ours.pth")
    ck.save_checkpoint(path, {"model": model.state_dict(), "config": {**cfg.to_dict(), "extra": 1},
                              "iteration": 7})
    assert os.listdir(tmp_path / "sub") == ["ours.pth"]        # no temp file left behind
    loaded, got = ck.load_model(path)                           # rebuilt from the config alone
    assert got == cfg and loaded.logmel_extractor.melW.shape == (257, 64)
    _same_outputs(model, loaded)
    ck.load_model(path, model_type="Cnn6", frontend={"sample_rate": 16000, "fmax": None}, classes_num=4)


def test_cli_values_contradicting_the_checkpoint(tmp_path):
    cfg = ck.ModelConfig(model_type="LeeNet11", classes_num=3, **FE16)
    path = str(tmp_path / "c.pth")
    ck.save_checkpoint(path, {"model": _model("LeeNet11", 3).state_dict(), "config": cfg.to_dict()})
    with pytest.raises(CheckpointError, match=r"trained at sample_rate=16000.*--sample_rate=32000"):
        ck.load_model(path, frontend={"sample_rate": 32000})
    with pytest.raises(CheckpointError,
                       match=r"holds a LeeNet11 model but Cnn14 was asked for \(--model_type, model_type=\)"):
        ck.load_model(path, model_type="Cnn14")
    with pytest.raises(CheckpointError, match="3 classes"):
        ck.load_model(path, classes_num=527)


def test_16k_weights_with_32k_settings(tmp_path):
    """An official-format 16-kHz checkpoint run with 32-kHz settings fails in one line that
    names the front end the weights were trained with."""
    path = _official_file(tmp_path / "c16.pth", _model("Cnn6", classes_num=5, **FE16))
    with pytest.raises(CheckpointError) as e:
        ck.load_model(path, model_type="Cnn6")
    msg = str(e.value)
    assert "\n" not in msg and "(257, 64)" in msg and "sample_rate=16000" in msg and "Cnn14_16k" in msg
    model, cfg = ck.load_model(path, model_type="Cnn6", frontend=dict(FE16))
    assert cfg.sample_rate == 16000 and cfg.classes_num == 5      # classes read from the weights
    # Settings no model can run are named as such, not reported as a filterbank mismatch.
    with pytest.raises(PannsError, match="--fmax 14000 is above the Nyquist frequency"):
        ck.load_model(path, model_type="Cnn6", frontend=dict(FE16, fmax=14000))


def test_wrong_model_type_names_keys(tmp_path):
    path = _official_file(tmp_path / "lee.pth", _model("LeeNet11", classes_num=3))
    with pytest.raises(CheckpointError) as e:
        ck.load_model(path, model_type="DaiNet19")
    msg = str(e.value)
    assert "\n" not in msg and "missing keys" in msg and "unexpected keys" in msg and "LeeNet11/24" in msg
    with pytest.raises(CheckpointError, match="pass --model_type.*LeeNet11/24"):
        ck.load_model(path)


def test_prefixes_are_stripped(tmp_path):
    model = _model("LeeNet11", classes_num=3)
    sd = {("module._orig_mod." if i % 2 else "module.") + k: v for i, (k, v) in enumerate(model.state_dict().items())}
    path = tmp_path / "ddp.pth"
    torch.save({"model": sd}, path)
    loaded, _ = ck.load_model(str(path), model_type="LeeNet11")
    _same_outputs(model, loaded)
    torch.save(model.state_dict(), tmp_path / "bare.pth")          # a bare state_dict also loads
    ck.load_model(str(tmp_path / "bare.pth"), model_type="LeeNet11")


def test_transfer_checkpoint_rebuilds_from_config(tmp_path):
    with skip_weight_init():
        model = quick_fill(models.make_transfer_model("LeeNet11", classes_num=4)).eval()
    cfg = ck.ModelConfig.from_registry("Transfer_LeeNet11", classes_num=4)
    assert cfg.base_model_type == "LeeNet11" and cfg.output == "log_softmax"
    path = str(tmp_path / "t.pth")
    ck.save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict()})
    loaded, got = ck.load_model(path)
    assert type(loaded).__name__ == "Transfer_LeeNet11" and got.output == "log_softmax"
    _same_outputs(model, loaded)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 40, "truncated"])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or not a PyTorch file"):
        ck.load_checkpoint(str(path))


def test_missing_non_dict_and_unsafe_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(str(tmp_path / "nope.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        ck.load_checkpoint(str(tmp_path / "list.pth"))
    torch.save({"model": {}, "obj": zipfile.ZipInfo("x")}, tmp_path / "obj.pth")   # arbitrary class
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        ck.load_checkpoint(str(tmp_path / "obj.pth"))
    torch.save({"iteration": 3, "sampler": {}}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointError, match="no 'model'"):
        ck.load_model(str(tmp_path / "nomodel.pth"), model_type="Cnn6")


def test_atomic_save_failure_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "x.pth"

    def boom(obj, f, *a, **k):
        (open(f, "wb") if isinstance(f, (str, os.PathLike)) else f).write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(str(path), {"model": {}})
    assert os.listdir(tmp_path) == []


def test_save_refuses_objects_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['args'\] is a ZipInfo"):
        ck.save_checkpoint(str(tmp_path / "x.pth"), {"model": {}, "args": zipfile.ZipInfo("x")})
    assert os.listdir(tmp_path) == []


def test_config_from_dict_ignores_unknown_keys():
    cfg = ck.ModelConfig.from_dict({"model_type": "Cnn14", "classes_num": 10, "lr": 1e-3})
    assert cfg.classes_num == 10 and cfg.frontend()["fmax"] == 14000
    with pytest.raises(CheckpointError):
        ck.ModelConfig.from_dict({"classes_num": 10})


def test_a_disk_that_fills_under_torch_save_is_one_line(tmp_path, monkeypatch):
    """A real full disk under torch.save: the write fails with ENOSPC, then torch's zip writer raises
    "unexpected pos" on top of it while cleaning up; the user gets the disk-full line naming the checkpoint,
    and neither the checkpoint nor a temporary file is left."""
    import builtins
    import errno
    import io

    from panns.utilities import DiskFullError

    class Full(io.FileIO):   # a disk with 100 kB left
        def write(self, b):
            if self.tell() + len(b) > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b)

    real_open = builtins.open
    monkeypatch.setattr(ck, "open", lambda p, mode="r", *a, **k: Full(p, mode) if "w" in mode else real_open(p, mode),
                        raising=False)
    path = tmp_path / "1000_iterations.pth"
    with pytest.raises(DiskFullError, match=f"disk full while writing {path}"):
        ck.save_checkpoint(str(path), {"model": {"w": torch.randn(100_000)}, "iteration": 1000})
    assert os.listdir(tmp_path) == []
