"""Bad input at the inference front doors: one-line errors up front, nothing computed on garbage,
nothing lost (tests/test_inference.py, test_extract.py and test_stream.py cover the normal paths).

Checkpoints are tiny random Cnn6 / Cnn6_DecisionLevelAvg files with their config; nothing is downloaded."""
import io
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
