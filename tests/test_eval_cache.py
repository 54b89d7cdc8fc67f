"""Evaluation sets kept in host memory between evaluations (panns.eval_cache): the same batches on every pass,
the loader read once, and streaming whenever the rows do not fit or the passes differ."""
import logging
import os

import numpy as np
import pytest
import torch

from panns import eval_cache
from panns.eval_cache import ResidentBatches, memory_available, use_cache


class CountingLoader:
    """A finite loader of collated batches (numpy, as the CPU path's workers give them) that counts its passes."""

    def __init__(self, rows=10, batch=4, samples=32, classes=3, seed=0, shapes=None):
        rng = np.random.default_rng(seed)
        self.batches = []
        for i, start in enumerate(range(0, rows, batch)):
            n = min(batch, rows - start)
            t = samples if shapes is None else shapes[i]
            self.batches.append({"audio_name": np.array([f"Y{start + j:04d}.wav" for j in range(n)]),
                                 "waveform": rng.integers(-32768, 32767, (n, t), dtype=np.int16),
                                 "target": rng.random((n, classes)) < 0.5})
        self.passes = 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.passes += 1
        yield from self.batches


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        assert list(x["audio_name"]) == list(y["audio_name"]) and np.asarray(y["audio_name"]).dtype.kind == "U"
        for k in ("waveform", "target"):
            xa, ya = torch.as_tensor(x[k]), torch.as_tensor(y[k])
            assert xa.dtype == ya.dtype and torch.equal(xa, ya), k


@pytest.fixture
def plenty(monkeypatch):
    monkeypatch.setattr(eval_cache, "memory_available", lambda root="/": 10 * 2**30)


def test_later_passes_replay_the_first_without_the_loader(plenty, caplog):
    loader = CountingLoader(rows=10, batch=4)
    cache = ResidentBatches(loader, rows=10, name="Evaluation set eval")
    with caplog.at_level(logging.INFO):
        first = list(cache)
    assert loader.passes == 1 and cache.kept and len(cache) == 3
    assert "Evaluation set eval: 10 clips kept in host memory" in caplog.text
    same_batches(loader.batches, first)
    for _ in range(2):
        same_batches(loader.batches, list(cache))   # same boundaries (4, 4, 2), same rows, same dtypes
    assert loader.passes == 1
    assert cache.nbytes == 10 * (32 * 2 + 3 * 1)   # int16 rows and bool targets as the loader gave them


@pytest.mark.parametrize("block_bytes,blocks", [(2 * 4 * 64 + 100, 2), (4 * 64, 3), (1, 3)])
def test_rows_are_held_in_blocks_of_whole_batches(plenty, monkeypatch, block_bytes, blocks):
    """Blocks of at most BLOCK_BYTES (PyTorch rounds page-locked blocks up to a power of two), each a whole
    number of batches (a batch is a view of one block); the last block only as long as the rows left."""
    monkeypatch.setattr(eval_cache, "BLOCK_BYTES", block_bytes)
    loader = CountingLoader(rows=10, batch=4)   # waveform rows of 64 bytes, the widest key
    cache = ResidentBatches(loader, rows=10)
    list(cache)
    assert [len(b) for b in cache.blocks["waveform"]] == {2: [8, 2], 3: [4, 4, 2]}[blocks]
    assert len(cache.blocks["target"]) == blocks
    same_batches(loader.batches, list(cache))
    assert loader.passes == 1


def test_a_batch_longer_than_the_first_is_not_split_across_blocks(plenty, monkeypatch):
    monkeypatch.setattr(eval_cache, "BLOCK_BYTES", 2 * 4 * 64)   # blocks of 8 rows
    loader = CountingLoader(rows=10, batch=4)
    loader.batches = [loader.batches[0], {k: np.concatenate([loader.batches[1][k], loader.batches[2][k]])
                                          for k in loader.batches[1]}]   # batches of 4 and 6 rows
    cache = ResidentBatches(loader, rows=10)
    same_batches(loader.batches, list(cache))
    assert not cache.kept
    same_batches(loader.batches, list(cache))
    assert loader.passes == 2


def test_an_interrupted_first_pass_is_read_again(plenty):
    loader = CountingLoader(rows=10, batch=4)
    cache = ResidentBatches(loader, rows=10)
    for _ in cache:
        break   # e.g. a compiled evaluation that failed at its first batch (the Evaluator retries eagerly)
    assert not cache.kept
    same_batches(loader.batches, list(cache))
    assert cache.kept and loader.passes == 2
    same_batches(loader.batches, list(cache))
    assert loader.passes == 2


def test_rows_that_do_not_fit_stream_every_time(monkeypatch, caplog):
    loader = CountingLoader(rows=10, batch=4)
    need = 10 * (32 * 2 + 3)
    monkeypatch.setattr(eval_cache, "memory_available", lambda root="/": need)   # half of it may be taken
    cache = ResidentBatches(loader, rows=10, name="Evaluation set eval", share=0.5)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            same_batches(loader.batches, list(cache))
    assert loader.passes == 3 and not cache.kept and cache.blocks is None
    assert "Evaluation set eval: not kept in memory (needs" in caplog.text
    monkeypatch.setattr(eval_cache, "memory_available", lambda root="/": None)
    cache = ResidentBatches(CountingLoader(), rows=10)
    list(cache)
    assert not cache.kept


@pytest.mark.parametrize("shapes,rows", [((32, 32, 16), 10), ((32, 32, 32), 9)])
def test_a_pass_unlike_the_first_drops_the_copy(plenty, caplog, shapes, rows):
    """A batch of another shape, or more clips than the sampler said: nothing half-kept, every batch still given."""
    loader = CountingLoader(rows=10, batch=4, shapes=shapes)
    cache = ResidentBatches(loader, rows=rows)
    with caplog.at_level(logging.INFO):
        same_batches(loader.batches, list(cache))
    assert not cache.kept and cache.blocks is None and "not kept in memory" in caplog.text
    same_batches(loader.batches, list(cache))
    assert loader.passes == 2


def test_a_refused_block_streams_instead_of_failing(plenty, monkeypatch, caplog):
    """Memory refused half-way through the first pass (page-locked memory is capped on some hosts): the
    evaluation goes on with every batch and later ones read the files, after one log line."""
    monkeypatch.setattr(eval_cache, "BLOCK_BYTES", 4 * 64)   # one block per batch
    made = []

    def block(shape, dtype, pinned):
        if made:
            raise RuntimeError("CUDA error: out of memory\n(page-locked)")
        made.append(shape)
        return torch.empty(shape, dtype=dtype)

    monkeypatch.setattr(eval_cache, "_block", block)
    loader = CountingLoader(rows=10, batch=4)
    cache = ResidentBatches(loader, rows=10, name="Evaluation set eval")
    with caplog.at_level(logging.INFO):
        same_batches(loader.batches, list(cache))
    assert not cache.kept and cache.blocks is None
    assert "Evaluation set eval: not kept in memory (no memory for another block: CUDA error: out of memory " \
           "(page-locked))" in caplog.text
    same_batches(loader.batches, list(cache))
    assert loader.passes == 2


def test_release_gives_page_locked_rows_back(plenty, monkeypatch):
    """A finished run drops its kept rows; page-locked ones go back to the system, not to PyTorch's cache of
    locked blocks (a notebook that trained would otherwise keep ~25 GB locked)."""
    returned = []
    monkeypatch.setattr(eval_cache, "_return_locked_memory", lambda: returned.append(1))
    cache = ResidentBatches(CountingLoader(), rows=10)
    list(cache)
    cache.release()
    assert not cache.kept and cache.blocks is None and returned == []   # pageable rows: nothing to give back
    cache = ResidentBatches(CountingLoader(), rows=10)
    list(cache)
    cache.pinned = True   # as a CUDA run's loader batches make it (page-locked blocks need a GPU)
    cache.release()
    assert returned == [1]


def test_memory_available_counts_the_cgroup_limit(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 100000 kB\nMemAvailable:   50000 kB\n")
    assert memory_available(str(tmp_path)) == 50000 * 1024
    cg = tmp_path / "sys" / "fs" / "cgroup"
    cg.mkdir(parents=True)
    (cg / "memory.max").write_text("max\n")   # no limit
    (cg / "memory.current").write_text("1000\n")
    assert memory_available(str(tmp_path)) == 50000 * 1024
    (cg / "memory.max").write_text(f"{30_000_000}\n")
    assert memory_available(str(tmp_path)) == 30_000_000 - 1000
    (cg / "memory.current").write_text(f"{40_000_000}\n")   # over the limit: no room
    assert memory_available(str(tmp_path)) == 0
    os.remove(tmp_path / "proc" / "meminfo")
    assert memory_available(str(tmp_path)) == 0
    assert memory_available(str(tmp_path / "nothing")) is None


def test_auto_keeps_the_sets_on_cuda_only():
    assert use_cache("auto", torch.device("cuda", 0)) and not use_cache("auto", torch.device("cpu"))
    assert use_cache("on", torch.device("cpu")) and not use_cache("off", torch.device("cuda"))
    with pytest.raises(ValueError):
        use_cache("always", torch.device("cpu"))
