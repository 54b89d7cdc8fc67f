"""Clips per second the training loader delivers, through exactly the code ``pytorch/main.py train`` runs.

Path measured: BalancedTrainSampler (batch 2 x --batch_size: mixup reads two clips per example) ->
``data_generator.train_loader`` (AudioSetDataset in DataLoader workers: rows read with one ``preadv``
each into recycled shared memory; for a GPU int16 waveforms and bool targets, pinned once by the
pin-memory thread; for the CPU float32 made by the workers) -> ``data_generator.to_device``. The HDF5 (random int16
"audio", random labels, 10-s 32 kHz clips) is generated and sits in the page cache, so the figures
measure the loader, not the disk.

Also printed: the growth of shared memory (RssShmem of the main process and its workers) and of RSS
over the timed batches - recycled buffers must keep both flat - and the rate per worker, to size how
many workers a GPU needs (an H100 training Cnn14 in bf16 wants ~2,000 clips/s).

    python3 benchmarks/bench_loader.py [--batches 2000] [--workers 1 2] [--batch_size 32] [--cuda]

The last line reads ``train-path loader, <W> workers: <N> clips/s, shared-memory growth <M> MB`` for
the last --workers value.

``--eval`` measures an evaluation's loader side instead, as ``main.py train`` builds it (EvaluateSampler at
the CUDA eval batch of 4 x --batch_size, ``train_loader`` with at most 4 workers, the GPU path's int16 rows,
``eval_cache.ResidentBatches`` around it): --rounds passes over the file with the sets read from the files
every time (``--eval_cache off``) and kept in memory after the first (the CUDA default), side by side:

    python3 benchmarks/bench_loader.py --eval [--clips 2000] [--workers 4] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

import torch  # noqa: E402

from panns import data_generator as dg  # noqa: E402
from panns.create_indexes import create_indexes  # noqa: E402
from panns.eval_cache import ResidentBatches  # noqa: E402
from panns.training.audioset import EVAL_WORKERS, eval_batch_size  # noqa: E402

SR = 32000
CLIP = SR * 10


def make_hdf5(path: str, clips: int, classes: int) -> None:
    """A waveform HDF5 as the packer writes it (one chunk per row, int16 waveforms, bool targets)."""
    rs = np.random.RandomState(0)
    with h5py.File(path, "w") as hf:
        wav = hf.create_dataset("waveform", shape=(clips, CLIP), dtype=np.int16, chunks=(1, CLIP))
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


def memory_kb(pids: List[int]) -> Dict[str, int]:
    """Sum of VmRSS and RssShmem (kB) over ``pids`` from /proc (0 where unreadable)."""
    out = {"rss": 0, "shmem": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out["rss"] += int(line.split()[1])
                    elif line.startswith("RssShmem:"):
                        out["shmem"] += int(line.split()[1])
        except OSError:
            pass
    return out


def measure(index_path: str, batch_size: int, batches: int, workers: int, device: torch.device,
            int16: bool = False) -> dict:
    """Run the training loader for ``batches`` timed batches; clips/s and memory growth (MB). ``int16``: the
    GPU path's int16 batches, stopping at the host batch (their float conversion is GPU work)."""
    sampler = dg.BalancedTrainSampler(index_path, batch_size=2 * batch_size, random_seed=0)  # mixup: 2 clips/example
    loader = dg.train_loader(SR, sampler, workers, device, seed=0, raw=True if int16 else None)
    deliver = (lambda b: b) if int16 and device.type == "cpu" else (lambda b: dg.to_device(b, device))
    it = iter(loader)
    warm = 4 + 2 * workers  # worker start-up, first prefetch and buffer allocation are not the steady state
    for k in range(warm):
        deliver(next(it))
        if k == 1:
            time.sleep(2.0)  # let the workers fill their prefetch once: their buffers reach full depth here
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
    t0 = time.perf_counter()
    report = max(1, batches // 10)
    before = None
    for k in range(batches):
        b = deliver(next(it))
        assert b["waveform"].shape == (2 * batch_size, CLIP)
        del b
        if (k + 1) % report == 0:
            mem = memory_kb(pids)
            before = before or mem  # growth is counted from the first report on (buffers allocated by then)
            print(f"  {workers} workers: {k + 1}/{batches} batches, "
                  f"{(k + 1) * 2 * batch_size / (time.perf_counter() - t0):.0f} clips/s, "
                  f"shared memory {mem['shmem'] / 1024:.0f} MB, RSS {mem['rss'] / 1024:.0f} MB", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    after = memory_kb(pids)
    before = before or after
    del it
    return {"clips_s": batches * 2 * batch_size / dt, "shm_mb": (after["shmem"] - before["shmem"]) / 1024,
            "rss_mb": (after["rss"] - before["rss"]) / 1024, "seconds": dt}


def cuda_eval_batch(batch_size: int) -> int:
    """The evaluation batch of a one-process CUDA training run at ``batch_size``."""
    return eval_batch_size(0, batch_size, batch_size, torch.device("cuda"))


def measure_eval(index_path: str, batch_size: int, workers: int, device: torch.device, rounds: int,
                 keep: bool) -> List[float]:
    """Seconds of each of ``rounds`` passes of an evaluation's loader (what the Evaluator consumes: batches on
    ``device``, or the int16 host batches on a CPU), with the rows kept in memory after the first or not."""
    sampler = dg.EvaluateSampler(index_path, batch_size=cuda_eval_batch(batch_size))
    loader = dg.train_loader(SR, sampler, min(workers, EVAL_WORKERS), device, seed=0, raw=True)
    batches = ResidentBatches(loader, sampler.audios_num, name="bench set", share=0.5) if keep else loader
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        clips = 0
        for b in (dg.device_batches(batches, device) if device.type == "cuda" else batches):
            clips += len(b["waveform"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        assert clips == sampler.audios_num
    return times


def main_eval(a, idx: str, device: torch.device) -> None:
    clips = a.clips
    res = {keep: measure_eval(idx, a.batch_size, a.workers[-1], device, a.rounds, keep) for keep in (False, True)}
    for keep, times in res.items():
        print(f"  {'kept in memory' if keep else 'read from the files'}: " +
              ", ".join(f"round {i + 1} {clips / t:,.0f} clips/s" for i, t in enumerate(times)), flush=True)
    files = clips * (a.rounds - 1) / sum(res[False][1:])
    kept = clips * (a.rounds - 1) / sum(res[True][1:])
    print(f"evaluation loader, {clips} clips, batch {cuda_eval_batch(a.batch_size)}, "
          f"{min(a.workers[-1], EVAL_WORKERS)} workers, rounds 2-"
          f"{a.rounds}: read from the files {files:,.0f} clips/s, kept in memory {kept:,.0f} clips/s "
          f"({kept / files:.0f}x); the first round of the kept run {clips / res[True][0]:,.0f} clips/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=500, help="clips in the generated HDF5")
    p.add_argument("--classes", type=int, default=50, help="classes of the random labels")
    p.add_argument("--batch_size", type=int, default=32, help="examples per step (the loader reads 2x with mixup)")
    p.add_argument("--batches", type=int, default=2000, help="timed batches per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader num_workers values")
    p.add_argument("--cuda", action="store_true", help="deliver to cuda:0 (pinned memory, as in GPU training)")
    p.add_argument("--int16", action="store_true",
                   help="on a CPU: the GPU path's int16 batches up to the host (what a GPU's loader must deliver)")
    p.add_argument("--dir", type=str, default=None, help="where to write the HDF5 (default: a temp folder)")
    p.add_argument("--eval", action="store_true",
                   help="an evaluation's loader side instead: read from the files vs kept in memory (see above)")
    p.add_argument("--rounds", type=int, default=3, help="with --eval: passes over the set per mode (>= 2)")
    a = p.parse_args()
    if a.eval and a.rounds < 2:
        p.error("--rounds must be >= 2 (the first pass of the kept run reads the files)")
    torch.set_num_threads(1)
    device = torch.device("cuda", 0) if a.cuda and torch.cuda.is_available() else torch.device("cpu")
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        wav, idx = os.path.join(tmp, "waveforms.h5"), os.path.join(tmp, "index.h5")
        t0 = time.perf_counter()
        make_hdf5(wav, a.clips, a.classes)
        create_indexes(wav, idx)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        what = f"evaluation batch {cuda_eval_batch(a.batch_size)}, {a.rounds} rounds per mode" if a.eval else \
            f"batch {a.batch_size} with mixup ({2 * a.batch_size} clips), {a.batches} timed batches"
        print(f"generated {a.clips} clips of 10 s ({os.path.getsize(wav) / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s; {what}, device {device}, {dg.usable_cpus()} usable CPUs, "
              f"load average {load:.2f}")
        if a.eval:
            main_eval(a, idx, device)
            return
        rows = []
        for w in a.workers:
            r = measure(idx, a.batch_size, a.batches, w, device, a.int16)
            rows.append((w, r))
            per_worker = r["clips_s"] / w if w else float("nan")
            print(f"{w} workers: {r['clips_s']:.0f} clips/s ({per_worker:.0f} per worker), {r['seconds']:.0f} s, "
                  f"shared-memory growth {r['shm_mb']:.1f} MB, RSS growth {r['rss_mb']:.1f} MB", flush=True)
        w, r = rows[-1]
        what = "train-path loader" + (" (GPU int16 batches, to the host)" if a.int16 and device.type == "cpu" else "")
        print(f"{what}, {w} workers: {r['clips_s']:.0f} clips/s, shared-memory growth {r['shm_mb']:.1f} MB")


if __name__ == "__main__":
    main()
