"""Training losses (official ``pytorch/losses.py``: ``clip_bce``), safe under mixed precision.

``F.binary_cross_entropy`` refuses to run under CUDA autocast and is numerically poor in 16-bit, so
the loss is always computed in fp32 with autocast switched off: the model may run its body in
bf16/fp16, the probabilities are cast to float32 before the loss.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F

from panns.errors import PannsError

LossFunc = Callable[[Dict[str, torch.Tensor], Dict[str, torch.Tensor]], torch.Tensor]


def clip_bce(output_dict: Dict[str, torch.Tensor], target_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy of clip-level probabilities, mean over batch x classes.

    output_dict['clipwise_output']: (B, C) sigmoid probabilities; target_dict['target']: (B, C) in [0, 1]
    (soft after mixup). Returns a 0-dim float32 tensor.
    """
    output = output_dict["clipwise_output"]
    target = target_dict["target"]
    with torch.autocast(device_type=output.device.type, enabled=False):
        return F.binary_cross_entropy(output.float(), target.float())


LOSSES: Dict[str, LossFunc] = {"clip_bce": clip_bce}


def get_loss_func(loss_type: str) -> LossFunc:
    """Loss function by name (official: returned None for unknown names; here a clear error)."""
    try:
        return LOSSES[loss_type]
    except KeyError:
        raise PannsError(f"unknown loss_type {loss_type!r}; choose from {', '.join(LOSSES)}") from None
