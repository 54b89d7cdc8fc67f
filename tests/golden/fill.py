# Copied unchanged from the project's conformance kit (shared/golden/fill.py): facts about the official
# PANNs models (qiuqiangkong/audioset_tagging_cnn, MIT); used by tests/test_golden.py.
"""Deterministic, implementation-independent weights for a PANNs-style state_dict.

Every tensor is filled from a generator seeded by the CRC32 of its key, so any
implementation with the same key names and shapes gets the same numbers.
Front-end buffers (STFT kernels, mel matrix) are left as the model builds them:
comparing outputs then also checks the front end.
"""
import math
import zlib

import torch

FRONT_END = ("spectrogram_extractor.", "logmel_extractor.")


def fill_state_dict(model, head=None, head_scale=1.0):
    """head: key prefix of the output layer, whose weights are scaled by head_scale
    so that sigmoid outputs stay away from 0 and 1 (no saturation hides errors)."""
    sd = model.state_dict()
    new = {}
    for key, t in sd.items():
        if key.startswith(FRONT_END) or ".spectrogram_extractor." in key or ".logmel_extractor." in key:
            new[key] = t
            continue
        if key.endswith("num_batches_tracked"):
            new[key] = torch.zeros_like(t)
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("running_var"):
            v = torch.rand(t.shape, generator=g) * 0.5 + 0.75
        elif key.endswith("running_mean"):
            v = torch.randn(t.shape, generator=g) * 0.05
        elif t.dim() == 1 and key.endswith("weight"):   # norm scale
            v = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        elif key.endswith("bias"):
            v = 0.05 * torch.randn(t.shape, generator=g)
        else:                                           # conv / linear weight
            fan_in = t[0].numel() if t.dim() > 1 else t.numel()
            v = torch.randn(t.shape, generator=g) * math.sqrt(2.0 / fan_in)
        if head and key.startswith(head) and not key.endswith(("running_var", "running_mean")):
            v = v * head_scale
        new[key] = v.to(t.dtype)
    model.load_state_dict(new, strict=True)
    return model


def test_waveform(sample_rate, seconds=3.0, batch=2):
    """Two clips: a chord with a chirp, and noise bursts; deterministic."""
    n = int(sample_rate * seconds)
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    g = torch.Generator().manual_seed(1234)
    a = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.sin(2 * math.pi * 660 * t)
    a += 0.2 * torch.sin(2 * math.pi * (200 + 600 * t) * t)
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    env = (torch.sin(2 * math.pi * 2 * t) > 0.3).double()
    b = 0.3 * noise * env + 0.05 * torch.sin(2 * math.pi * 3000 * t)
    x = torch.stack([a, b])[:batch]
    return x.float()
