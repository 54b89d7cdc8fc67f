"""Fast model construction for tests: random init of 80M-parameter models costs seconds of
single-threaded torch RNG, so tests build without it and fill weights from numpy's faster RNG."""
import contextlib

import numpy as np
import torch

FRONT_END = ("spectrogram_extractor.", "logmel_extractor.")


@contextlib.contextmanager
def skip_weight_init():
    """Build modules without random init (every tensor is overwritten afterwards)."""
    names = ("xavier_uniform_", "kaiming_uniform_", "uniform_", "normal_", "constant_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda t, *a, **k: t)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def quick_fill(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """He-scaled uniform weights, plausible BN statistics; STFT/mel matrices left as built."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if ".spectrogram_extractor." in "." + key or ".logmel_extractor." in "." + key \
                    or not t.is_floating_point():
                continue
            u = torch.from_numpy(rng.random(t.numel(), dtype=np.float32)).reshape(t.shape) * 2 - 1
            if key.endswith("running_var"):
                t.copy_(1.0 + 0.25 * u.abs())
            elif key.endswith("running_mean"):
                t.copy_(0.05 * u)
            elif t.dim() == 1:   # BN scale / biases
                t.copy_((1.0 if key.endswith("weight") else 0.0) + 0.1 * u)
            else:
                fan_in = t[0].numel()
                t.copy_(u * (6.0 / fan_in) ** 0.5)
    return model
