"""The official ``pytorch_utils`` names: device moves, parameter/FLOP counts and ``forward`` (a model
over batches, through ``runtime.run_batches``). The tensor ops the models use (``do_mixup``,
``interpolate``, ``pad_framewise_output``) live in ``models.py``, below this module, and are
re-exported here under their official names."""
from __future__ import annotations

import logging
from typing import Dict, Iterable, Tuple

import numpy as np
import torch
import torch.nn as nn

from panns import models
from panns import runtime
from panns.models import do_mixup, interpolate, pad_framewise_output  # noqa: F401  (official names)

logger = logging.getLogger(__name__)


def move_data_to_device(x, device):
    """numpy/tensor -> tensor on ``device``: floats become float32, ints int64; other inputs
    (e.g. lists of names) are returned unchanged."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    dtype = str(getattr(x, "dtype", ""))
    if "float" in dtype:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    elif "int" in dtype:
        x = torch.as_tensor(np.asarray(x), dtype=torch.int64)
    else:
        return x
    return x.to(device)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (frozen STFT/mel matrices excluded), as the official counter."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, audio_length: int) -> int:
    """FLOPs of one forward pass on a (1, audio_length) input, counted like the official counter:
    hooks on leaf Conv1d/Conv2d/Linear/BatchNorm/ReLU/pooling modules, a multiply-add = 2 FLOPs,
    BN and ReLU = 2 per element;
    functional ops (F.relu, F.avg_pool2d, the mel matmul) are not counted. Cnn14 @ 10 s: 42.22e9."""
    total = [0]

    def conv_hook(m, inp, out):
        kernel_ops = int(np.prod(m.kernel_size)) * (m.in_channels // m.groups) * 2
        total[0] += out.numel() * (kernel_ops + (1 if m.bias is not None else 0))

    def linear_hook(m, inp, out):
        batch = inp[0].size(0) if inp[0].dim() == 2 else 1
        total[0] += batch * (m.weight.numel() * 2 + (m.bias.numel() if m.bias is not None else 0))

    def bn_hook(m, inp, out):   # scale and shift
        total[0] += 2 * inp[0].numel()

    def relu_hook(m, inp, out):
        total[0] += 2 * inp[0].numel()

    def pool_hook(m, inp, out):
        k = m.kernel_size if isinstance(m.kernel_size, int) else int(np.prod(m.kernel_size))
        k = k * k if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) and isinstance(m.kernel_size, int) else k
        total[0] += out.numel() * k

    hooks = []
    for m in model.modules():
        if list(m.children()):
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            hooks.append(m.register_forward_hook(bn_hook))
        elif isinstance(m, nn.ReLU):   # the official counter ignores ReLU6 (MobileNetV2)
            hooks.append(m.register_forward_hook(relu_hook))
        elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d)):
            hooks.append(m.register_forward_hook(pool_hook))
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.rand(1, audio_length, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total[0]


def model_counts(name: str, seconds: float = 10.0) -> Tuple[int, int]:
    """(trainable parameters, forward FLOPs by :func:`count_flops`) of registered model ``name`` on a
    ``seconds``-long clip at its own sample rate. Shapes are all the counter needs, so the model is built
    without initialisation and runs on PyTorch's "meta" device (no arithmetic; about a second a model)."""
    spec = models.get_model_spec(name)
    with models.skip_init():   # values do not matter, only shapes
        model = models.create_model(name)
    return count_parameters(model), count_flops(model.to("meta"), int(seconds * spec.sample_rate))


def append_to_dict(d: dict, key, value) -> None:
    """Official helper: append ``value`` to the list ``d[key]``, starting the list on first use."""
    d.setdefault(key, []).append(value)


def forward(model: nn.Module, generator: Iterable[dict], return_input: bool = False,
            return_target: bool = False) -> Dict[str, np.ndarray]:
    """Run ``model`` (eval, no grad) over batches {'audio_name', 'waveform'(, 'target')} and
    concatenate 'audio_name', 'clipwise_output' (and 'framewise_output', 'waveform', 'target')."""
    carry = ("audio_name",) + (("waveform",) if return_input else ()) + (("target",) if return_target else ())
    out = runtime.run_batches(model, generator, outputs=("clipwise_output", "segmentwise_output", "framewise_output"),
                              carry=carry)
    model.eval()   # official forward leaves the model in eval mode
    return out
