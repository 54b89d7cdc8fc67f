"""Evaluation sets held in host memory between evaluations (``main.py train --eval_cache``).

A training run evaluates the same two sets (~39k AudioSet clips) every ``--eval_every`` steps. On a fast GPU
the loader bounds a round (an H200 run read 911 clips/s with 8 workers: ~43 s of a round), so
:class:`ResidentBatches` keeps the batches of its first pass (the loader's own arrays: int16 waveforms and
bool targets on the GPU path, ~25 GB for AudioSet) and later passes hand out the same rows in the same
batches without starting a loader worker. Scores cannot change: the model sees identical batches.

The memory is taken only where it is free: the set is kept when its rows fit in ``share`` of the memory
available when its first pass starts (the smaller of the kernel's MemAvailable and the cgroup's room, so a
container's limit counts), otherwise it streams from the loader every time, as before, with one log line.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

EVAL_CACHE_MODES = ("auto", "on", "off")


def use_cache(mode: str, device: torch.device) -> bool:
    """``--eval_cache`` resolved: auto keeps evaluation sets in memory on CUDA (where the loader bounds an
    evaluation), not on the CPU (where the forward does and the float32 rows would take twice the memory)."""
    if mode not in EVAL_CACHE_MODES:
        raise ValueError(f"eval cache mode must be one of {EVAL_CACHE_MODES}, got {mode!r}")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None   # 'max' (no limit) and anything odd: None


def memory_available(root: str = "/") -> Optional[int]:
    """Bytes this process could still take: the kernel's MemAvailable, lowered to the room left under the
    cgroup's memory limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) where there is one; None where
    neither can be read. ``root``: where ``proc`` and ``sys`` are (tests)."""
    avail: Optional[int] = None
    try:
        with open(os.path.join(root, "proc", "meminfo")) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    cgroup = os.path.join(root, "sys", "fs", "cgroup")
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read_int(os.path.join(cgroup, limit_file))
        usage = _read_int(os.path.join(cgroup, usage_file))
        if limit is not None and usage is not None and limit < 2**60:   # v1 writes ~2**63 for "no limit"
            room = max(0, limit - usage)
            avail = room if avail is None else min(avail, room)
            break
    return avail


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


# Rows are held in blocks of at most this many bytes, each a whole number of batches. A power of two: PyTorch's
# page-locked allocator rounds every block up to one (a single 12.1 GB block would take 16 GiB of locked memory,
# 1 GiB blocks of 13 x 128 clips lose 0.7 %).
BLOCK_BYTES = 2**30


class ResidentBatches:
    """An evaluation loader whose batches stay in host memory after the first full pass.

    ``loader``: a finite iterable of collated batches (dicts of (B, ...) arrays or tensors, and per-clip
    names), the same batches on every pass (an :class:`~panns.data_generator.EvaluateSampler` loader: every
    batch but the last of one size); ``rows``: the clips of one pass. The first pass yields the loader's batches
    and copies each into blocks of rows (page-locked when the loader's batches were, so that later copies to the
    GPU are asynchronous and need no staging copy); once a pass completes, later passes yield views of those
    blocks with the same batch boundaries. ``share``: the fraction of :func:`memory_available` the rows may take
    (callers divide it among the processes of a node). A pass that turns out different from the first (another
    batch shape, more rows) drops the copy and streams from then on.
    """

    def __init__(self, loader: Iterable[Dict[str, object]], rows: int, name: str = "evaluation set",
                 share: float = 0.5):
        self.loader = loader
        self.rows = int(rows)
        self.name = name
        self.share = float(share)
        self.blocks: Optional[Dict[str, List[torch.Tensor]]] = None   # key -> blocks of block_rows rows
        self.names: Dict[str, np.ndarray] = {}   # non-numeric keys (clip names): key -> (rows,) object array
        self.layout: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = {}   # key -> (row shape, dtype)
        self.block_rows = 0
        self.bounds: List[Tuple[int, int]] = []   # (start, stop) of each batch of the pass kept
        self.pinned = False           # the loader's tensors were page-locked
        self.given_up = False         # too large, or a pass differed: stream from now on
        self.nbytes = 0

    @property
    def kept(self) -> bool:
        """True once a whole pass is held in memory (its batches' bounds are set only then; release clears them)."""
        return bool(self.bounds)

    def __len__(self) -> int:
        return len(self.bounds) if self.kept else len(self.loader)   # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Dict[str, object]]:
        if self.kept:
            yield from self._replay()
        elif self.given_up:
            yield from self.loader
        else:
            yield from self._fill()

    def release(self) -> None:
        """Drop the held rows (the process keeps streaming)."""
        had_locked = self.pinned and bool(self.blocks) and any(self.blocks.values())
        self.blocks, self.names, self.bounds, self.given_up, self.nbytes = None, {}, [], True, 0
        if had_locked:
            _return_locked_memory()

    # ------------------------------------------------------------------------------------------ passes
    def _replay(self) -> Iterator[Dict[str, object]]:
        assert self.blocks is not None
        for start, stop in self.bounds:
            b, off = divmod(start, self.block_rows)
            batch: Dict[str, object] = {k: blocks[b][off:off + stop - start] for k, blocks in self.blocks.items()}
            for k, names in self.names.items():
                batch[k] = np.array(list(names[start:stop]))   # as the loader gives them (a str array)
            yield batch

    def _fill(self) -> Iterator[Dict[str, object]]:
        pos, bounds = 0, []
        for batch in self.loader:
            if not self.given_up:
                try:
                    n = self._keep(batch, pos)
                except _Mismatch as e:
                    logger.warning("%s: not kept in memory (%s); evaluations read it from the files", self.name, e)
                    self.release()
                else:
                    bounds.append((pos, pos + n))
                    pos += n
            yield batch
        if self.given_up or self.blocks is None:
            return
        if pos != self.rows:
            logger.warning("%s: not kept in memory (a pass gave %d clips, expected %d)", self.name, pos, self.rows)
            self.release()
            return
        self.bounds = bounds
        logger.info("%s: %d clips kept in %shost memory (%s) for the next evaluations", self.name, pos,
                    "page-locked " if self.pinned else "", _gb(self.nbytes))

    def _keep(self, batch: Dict[str, object], pos: int) -> int:
        """Copy ``batch`` into the blocks at row ``pos`` (sizing them at the first batch); its length."""
        lengths = {len(v) for v in batch.values()}   # type: ignore[arg-type]
        if len(lengths) != 1:
            raise _Mismatch("batch keys of different lengths")
        n = lengths.pop()
        if self.blocks is None:
            self._plan(batch)
            if self.blocks is None:
                return n
        if set(batch) != set(self.blocks) | set(self.names) or pos + n > self.rows:
            raise _Mismatch("the batches changed")
        b, off = divmod(pos, self.block_rows)
        if off + n > self.block_rows:
            raise _Mismatch("a batch longer than the first")
        for k, v in batch.items():
            if k in self.names:
                self.names[k][pos:pos + n] = np.asarray(v)
                continue
            src = torch.as_tensor(v)
            shape, dtype = self.layout[k]
            if tuple(src.shape[1:]) != shape or src.dtype != dtype:
                raise _Mismatch(f"'{k}' changed shape or type")
            blocks = self.blocks[k]
            if b == len(blocks):   # a block's memory is taken when its first row arrives
                rows = min(self.block_rows, self.rows - pos)
                try:
                    blocks.append(_block((rows,) + shape, dtype, self.pinned))
                except (RuntimeError, MemoryError) as e:   # e.g. page-locked memory refused
                    raise _Mismatch(f"no memory for another block: {' '.join(str(e).split())[:120]}") from None
            blocks[b][off:off + n].copy_(src)
        return n

    def _plan(self, first: Dict[str, object]) -> None:
        """Check the budget and size the blocks from the first batch (or give up, with one log line)."""
        per_row, widest = 0, 1
        for k, v in first.items():
            if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
                v = torch.from_numpy(v)
            if isinstance(v, torch.Tensor):
                row = v[0].numel() * v.element_size() if len(v) else 0
                per_row, widest = per_row + row, max(widest, row)
                self.layout[k] = (tuple(v.shape[1:]), v.dtype)
                self.pinned = self.pinned or v.is_pinned()
        need = per_row * self.rows
        avail = memory_available()
        budget = None if avail is None else int(avail * self.share)
        if budget is None or need > budget:
            why = "free memory unknown" if budget is None else \
                f"needs {_gb(need)}, may take {_gb(budget)} ({self.share:.0%} of the {_gb(avail or 0)} available)"
            logger.info("%s: not kept in memory (%s); evaluations read it from the files", self.name, why)
            self.release()
            return
        batch = max(1, len(next(iter(first.values()))))   # type: ignore[arg-type]
        self.block_rows = batch * max(1, BLOCK_BYTES // (batch * widest))
        self.blocks = {k: [] for k in self.layout}
        self.names = {k: np.empty(self.rows, dtype=object) for k in first if k not in self.layout}
        self.nbytes = need


def _block(shape: Tuple[int, ...], dtype: torch.dtype, pinned: bool) -> torch.Tensor:
    """One block of rows; page-locked for a CUDA run's batches (copied to the GPU without staging)."""
    return torch.empty(shape, dtype=dtype, pin_memory=pinned)


def _return_locked_memory() -> None:
    """Give PyTorch's cached page-locked blocks back to the system (they would stay locked for the run)."""
    empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None) or \
        getattr(torch._C, "_host_emptyCache", None)
    if empty is not None:
        try:
            empty()
        except Exception:  # noqa: BLE001 - best effort; the memory is still reused by later batches
            pass


class _Mismatch(Exception):
    """A pass's batch does not fit the first pass's layout."""
