"""Clips per second the balanced training loader delivers from a packed 10-s 32-kHz waveform HDF5.

Compares utils/data_generator.AudioSetDataset (HDF5 handle opened once per worker and kept) with a
baseline in the official design (``h5py.File`` opened and closed in every ``__getitem__``, float64
int16->float32 conversion), both behind the same BalancedTrainSampler / collate_fn / DataLoader, with
0, 1 and 2 loader workers. The HDF5 is generated (random int16 "audio", random labels) and is in the
page cache, so the figures measure the loader, not the disk.

    python3 benchmarks/bench_loader.py [--clips 500] [--batch_size 32] [--batches 30] [--workers 0 1 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

import torch  # noqa: E402

from panns.create_indexes import create_indexes
from panns.data_generator import AudioSetDataset, BalancedTrainSampler, collate_fn, worker_init_fn

SR = 32000
CLIP = SR * 10


class PerClipOpenDataset(object):
    """The official AudioSetDataset.__getitem__: open the file for every clip, float64 conversion, close."""

    def __getitem__(self, meta: dict) -> dict:
        with h5py.File(meta["hdf5_path"], "r") as hf:
            i = meta["index_in_hdf5"]
            name = hf["audio_name"][i].decode()
            waveform = (hf["waveform"][i] / 32767.0).astype(np.float32)
            target = hf["target"][i].astype(np.float32)
        return {"audio_name": name, "waveform": waveform, "target": target}


def make_hdf5(path: str, clips: int, classes: int, layout: str) -> None:
    """A waveform HDF5 like the packer writes (layout 'chunked': one chunk per row) or official ('contiguous')."""
    rs = np.random.RandomState(0)
    with h5py.File(path, "w") as hf:
        kw = {"chunks": (1, CLIP)} if layout == "chunked" else {}
        wav = hf.create_dataset("waveform", shape=(clips, CLIP), dtype=np.int16, **kw)
        block = 50
        for s in range(0, clips, block):
            n = min(block, clips - s)
            wav[s:s + n] = (rs.randn(n, CLIP) * 3000).astype(np.int16)
        hf.create_dataset("audio_name", data=[f"Y{i:011d}.wav".encode() for i in range(clips)], dtype="S20")
        target = np.zeros((clips, classes), bool)
        target[np.arange(clips), rs.randint(0, classes, clips)] = True
        target[rs.rand(clips, classes) < 1.0 / classes] = True
        hf.create_dataset("target", data=target)
        hf.attrs.create("sample_rate", data=SR, dtype=np.int32)


def measure(dataset, index_path: str, batch_size: int, batches: int, workers: int) -> float:
    sampler = BalancedTrainSampler(index_path, batch_size=batch_size, random_seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=workers,
                                         worker_init_fn=worker_init_fn if workers else None,
                                         persistent_workers=False)
    it = iter(loader)
    warm = 2 + 2 * workers  # worker start-up and first prefetch are not part of the steady state
    for _ in range(warm):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        assert b["waveform"].shape == (batch_size, CLIP)
    dt = time.perf_counter() - t0
    del it
    return batches * batch_size / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=500, help="clips in the generated HDF5")
    p.add_argument("--classes", type=int, default=50, help="classes of the random labels")
    p.add_argument("--batch_size", type=int, default=32, help="loader batch size")
    p.add_argument("--batches", type=int, default=30, help="timed batches per configuration")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader num_workers values")
    p.add_argument("--layout", choices=("chunked", "contiguous"), default="chunked",
                   help="waveform dataset layout: ours (one chunk per row) or the official contiguous one")
    p.add_argument("--dir", type=str, default=None, help="where to write the HDF5 (default: a temp folder)")
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        wav, idx = os.path.join(tmp, "waveforms.h5"), os.path.join(tmp, "index.h5")
        t0 = time.perf_counter()
        make_hdf5(wav, a.clips, a.classes, a.layout)
        create_indexes(wav, idx)
        print(f"generated {a.clips} clips of 10 s ({os.path.getsize(wav) / 2**20:.0f} MiB, {a.layout}) "
              f"in {time.perf_counter() - t0:.1f} s; batch_size={a.batch_size}, {a.batches} timed batches, "
              f"{os.cpu_count()} CPUs")
        print(f"{'workers':>7} {'ours clips/s':>13} {'per-clip open clips/s':>22} {'speed-up':>9}")
        for w in a.workers:
            ours = measure(AudioSetDataset(sample_rate=SR), idx, a.batch_size, a.batches, w)
            base = measure(PerClipOpenDataset(), idx, a.batch_size, a.batches, w)
            print(f"{w:>7} {ours:>13.0f} {base:>22.0f} {ours / base:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
