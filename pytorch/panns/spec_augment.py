"""SpecAugment stripes: torchlibrosa's ``SpecAugmentation`` with the same random draws, applied as one mask.

torchlibrosa zeroes each stripe with an in-place slice per example (``e[:, bgn:bgn + d] = 0``): on a GPU
that is one kernel launch per stripe per example, and its tensor-valued slice bounds break torch.compile
graphs. Here the stripe bounds are drawn with the very same ``torch.randint`` calls, in the same order, on
the global CPU generator (so the RNG stream - hence exact resume and every later draw - is unchanged), sent
to the input's device in one transfer, and turned into a (B, 1, T, F) mask by broadcast comparisons: one
in-place ``masked_fill_`` per batch. In place like torchlibrosa: autograd then sees the same graph, so
gradients are bit-identical too (an out-of-place fill changed bn0's gradient in the last bits). The module
has no parameters or buffers, so models' state_dict keys do not change.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from panns.amp import eager_only
from panns.errors import PannsError


@eager_only  # RNG draws must come from the global CPU generator in this order; never traced
def _stripe_bounds(batch: int, dims) -> torch.Tensor:
    """For each ``(total, drop_width, stripes_num)`` in ``dims`` (time first, then frequency) and each
    example, draw ``stripes_num`` stripes exactly as torchlibrosa's ``DropStripes.transform_slice`` does:
    ``d = randint(0, drop_width)``, then ``bgn = randint(0, total - d)``. Returns int64 (B, 2 * sum of
    stripes_num) on the CPU: per dimension, the begins of its stripes, then their ends (``bgn + d``)."""
    rows = [[] for _ in range(batch)]   # Python lists: one tensor is built at the end (cheap on a CPU too)
    for total, width, num in dims:
        for n in range(batch):
            begins, ends = [], []
            for _ in range(num):
                distance = int(torch.randint(low=0, high=width, size=(1,))[0])
                if total - distance <= 0:
                    raise PannsError(f"SpecAugment drew a stripe of {distance} steps on an axis of {total}: "
                                     f"training needs at least {width} steps there (use longer clips)")
                bgn = int(torch.randint(low=0, high=total - distance, size=(1,))[0])
                begins.append(bgn)
                ends.append(bgn + distance)
            rows[n] += begins + ends
    return torch.tensor(rows, dtype=torch.int64).reshape(batch, -1)


def _axis_mask(positions: torch.Tensor, bounds: torch.Tensor, num: int) -> torch.Tensor:
    """positions (L,), bounds (B, 2 * num) [begins, ends] -> (B, L) bool, True inside any stripe."""
    mask = torch.zeros(bounds.shape[0], positions.shape[0], dtype=torch.bool, device=positions.device)
    for s in range(num):  # a few (B, L) ops per stripe; a reduction over a stripes axis is slower on CPUs
        mask |= (positions >= bounds[:, s, None]) & (positions < bounds[:, num + s, None])
    return mask


class SpecAugmentation(nn.Module):
    """Drop ``time_stripes_num`` time stripes (each < ``time_drop_width`` frames) and ``freq_stripes_num``
    frequency stripes (each < ``freq_drop_width`` bins) per example, in training only. Same constructor,
    draws and output as torchlibrosa's class; in place (returns ``input``, modified) like it."""

    def __init__(self, time_drop_width: int, time_stripes_num: int, freq_drop_width: int, freq_stripes_num: int):
        super().__init__()
        self.time_drop_width, self.time_stripes_num = time_drop_width, time_stripes_num
        self.freq_drop_width, self.freq_stripes_num = freq_drop_width, freq_stripes_num
        self.external = False   # True: the forward uses the stripes handed over by stage() (compiled training)
        self.register_buffer("staged", torch.zeros(0, 2 * (time_stripes_num + freq_stripes_num), dtype=torch.int64),
                             persistent=False)

    def draw(self, batch: int, frames: int, bins: int) -> torch.Tensor:
        """The stripes of the next forward of a (batch, C, frames, bins) input, drawn now exactly as the forward
        would: int64 (batch, 2 * (time + freq stripes)) on the CPU."""
        return _stripe_bounds(batch, ((frames, self.time_drop_width, self.time_stripes_num),
                                      (bins, self.freq_drop_width, self.freq_stripes_num)))

    def stage(self, bounds: torch.Tensor) -> None:
        """Hand over the stripes the next training forward applies (``external`` mode); copied asynchronously
        (from page-locked memory on CUDA) into the buffer the compiled graph reads."""
        bounds = bounds.pin_memory() if self.staged.device.type == "cuda" else bounds
        if self.staged.shape != bounds.shape:
            self.staged = bounds.to(self.staged.device, non_blocking=True)
        else:
            self.staged.copy_(bounds, non_blocking=True)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input (B, C, T, F) -> input with the stripes zeroed in place; untouched in eval mode."""
        if not self.training:
            return input
        if input.dim() != 4:
            raise ValueError(f"SpecAugmentation expects (batch, channels, time, freq), got shape {tuple(input.shape)}")
        batch, _, frames, bins = input.shape
        nt, nf = self.time_stripes_num, self.freq_stripes_num
        if self.external:
            bounds = self.staged
            if bounds.shape[0] != batch:
                raise PannsError(f"SpecAugment has stripes staged for {bounds.shape[0]} examples, the batch has "
                                 f"{batch}: stage() each training step's draws before its forward")
        else:
            # One host-to-device copy. non_blocking: a blocking copy would wait for the GPU to finish the queued
            # front end (a stream sync every step); from pageable memory the driver stages the 0.5 kB at once.
            bounds = self.draw(batch, frames, bins).to(input.device, non_blocking=True)
        time = _axis_mask(torch.arange(frames, device=input.device), bounds[:, :2 * nt], nt)   # (B, T)
        freq = _axis_mask(torch.arange(bins, device=input.device), bounds[:, 2 * nt:], nf)     # (B, F)
        return input.masked_fill_(time[:, None, :, None] | freq[:, None, None, :], 0)
