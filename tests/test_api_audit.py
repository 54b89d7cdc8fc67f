"""Defects found auditing the public Python API as a researcher uses it (panns.load, the HEAR API,
live streams): each test here failed before its fix. Checkpoints are generated in tmp_path."""
import numpy as np
import pytest
import soundfile as sf
import torch

import panns
from panns import checkpoint, hear, models
from panns.errors import PannsError

SR = 32000


def _checkpoint(path, name: str, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = models.create_model(name).eval()
    torch.save({"model": model.state_dict(), "config": checkpoint.ModelConfig.from_registry(name).to_dict()},
               str(path))
    return str(path)


@pytest.fixture(scope="module")
def cnn6(tmp_path_factory):
    return panns.load(_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn6.pth", "Cnn6"), device="cpu",
                      backend="torch")


def _noise(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    return (0.1 * np.random.RandomState(seed).randn(int(seconds * sr))).astype(np.float32)


def test_stream_rate_is_not_fixed_by_a_refused_chunk(cnn6):
    """A first chunk refused (NaN, channels first) fixed the stream's rate all the same: the corrected
    chunk at another rate was then refused as 'sample rate changed within the stream'."""
    x = _noise(1.0)
    for bad in (np.full(100, np.nan, np.float32), np.zeros((2, 1000), np.float32)):
        s = cnn6.stream(hop_seconds=0.5, window_seconds=1.0)
        with pytest.raises(PannsError):
            s.push(bad, 44100)
        assert len(s.push(x, SR) + s.close()) == 2
