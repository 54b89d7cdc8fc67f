"""Fast model construction for tests. Random init of an 80M-parameter model costs seconds of
single-threaded RNG and every STFT rebuilds a 1024x1024 DFT matrix, so tests build without init
(weights are overwritten right after) and with the DFT matrix cached."""
import contextlib
import functools

import numpy as np
import torch
from torchlibrosa.stft import DFTBase

_POOL_SIZE = 1_000_003   # prime: tiles of the pool do not line up with conv filter boundaries


@contextlib.contextmanager
def skip_weight_init():
    """Build modules without random init and with a cached DFT matrix (values unchanged)."""
    names = ("xavier_uniform_", "kaiming_uniform_", "uniform_", "normal_", "constant_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    saved_dft = DFTBase.dft_matrix
    for n in names:
        setattr(torch.nn.init, n, lambda t, *a, **k: t)
    DFTBase.dft_matrix = lambda self, n: _dft_matrix(saved_dft, n)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)
        DFTBase.dft_matrix = saved_dft


_DFT_CACHE = {}


def _dft_matrix(fn, n):
    if n not in _DFT_CACHE:
        _DFT_CACHE[n] = fn(None, n)
    return _DFT_CACHE[n]


@functools.lru_cache(maxsize=1)
def _pool() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).random(_POOL_SIZE, dtype=np.float32)) * 2 - 1


def quick_fill(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """He-scaled pseudo-random weights (one random pool tiled from a per-tensor offset), plausible
    BN statistics; STFT/mel matrices left as built. Fast: no per-element RNG, no big temporaries."""
    pool = _pool()
    with torch.no_grad():
        for i, (key, t) in enumerate(model.state_dict().items()):
            if ".spectrogram_extractor." in "." + key or ".logmel_extractor." in "." + key \
                    or not t.is_floating_point():
                continue
            flat, n = t.view(-1), t.numel()
            pos, off = 0, (7919 * (i + seed)) % _POOL_SIZE
            while pos < n:
                k = min(n - pos, _POOL_SIZE - off)
                flat[pos:pos + k].copy_(pool[off:off + k])
                pos, off = pos + k, 0
            if key.endswith("running_var"):
                flat.abs_().mul_(0.25).add_(1.0)
            elif key.endswith("running_mean"):
                flat.mul_(0.05)
            elif t.dim() == 1:   # BN scale / biases
                flat.mul_(0.1).add_(1.0 if key.endswith("weight") else 0.0)
            else:
                flat.mul_((3.0 / t[0].numel()) ** 0.5)   # variance 1/fan_in
    return model


def single_thread():
    """Generator for a module-scoped autouse fixture: run the module with one torch thread.
    These tests make many short forward passes; on a busy 2-core machine two OpenMP threads
    stall at every barrier (the whole model test suite ran 5x slower with 2 threads under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
