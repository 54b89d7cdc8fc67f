"""pcm16 vs flac storage of packed waveforms: bytes per clip, FLAC decode rate, training-loader rate.

Generates 10-s 32-kHz clips of two kinds (not pure tones, which compress unrealistically well):
speech-like (syllable bursts of resonant noise with pauses, over quiet background noise) and
music-like (notes with harmonics and envelopes, percussive noise hits), packs them with
``utils/dataset.py pack_waveforms_to_hdf5`` in both layouts and prints

* bytes per clip of each layout and kind (file size / clips),
* FLAC decode rate of one process (``storage.FlacRowReader``: HDF5 row read + decode, clips/s by wall
  clock and by CPU time; the CPU figure is what one loader worker manages when it has a core to itself)
  for every installed decoder (``storage.FLAC_DECODERS``) and for the earlier path (``h5py+soundfile``:
  rows through h5py's vlen read, libsndfile), timed in alternating rounds on the same rows so the
  ratios hold under a varying load,
* clips/s through the training path of a GPU run (``data_generator.train_loader`` as ``main.py train``
  builds it, int16 rows (``raw=True``), ``BalancedTrainSampler``, batch 32) with ``--workers`` loader
  workers, both layouts (flac with the default decoder).

The load average is printed before and after: figures from a loaded machine are low.

    python3 benchmarks/bench_storage.py [--clips 48] [--workers 2] [--batches 20]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from typing import List, Optional

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

import h5py  # noqa: E402
import torch  # noqa: E402

from panns import config  # noqa: E402
from panns import data_generator as dg  # noqa: E402
from panns import storage  # noqa: E402
from panns.create_indexes import create_indexes  # noqa: E402
from panns.dataset import pack_waveforms_to_hdf5  # noqa: E402
from panns.demo.data import write_label_csv, write_segments_csv  # noqa: E402
from panns.shards import join_packed_files  # noqa: E402

SR = 32000


def speech_like(rs: np.random.RandomState, clip: int) -> np.ndarray:
    t = np.arange(clip) / SR
    y = np.zeros(clip)
    pos = 0
    while pos < clip:  # syllables of 80-300 ms separated by 50-400 ms pauses
        n = int(rs.uniform(0.08, 0.3) * SR)
        a1 = -2 * 0.97 * np.cos(2 * np.pi * rs.uniform(300, 900) / SR)  # a formant resonance
        src = lfilter([1.0], [1.0, a1, 0.97 ** 2], rs.randn(n))
        pitch = np.sign(np.sin(2 * np.pi * rs.uniform(90, 220) * t[:n])) * 0.5 + 0.5  # voicing buzz
        env = np.hanning(n)
        end = min(clip, pos + n)
        y[pos:end] += (src * (0.4 + 0.6 * pitch) * env)[: end - pos]
        pos = end + int(rs.uniform(0.05, 0.4) * SR)
    y = 0.3 * y / (np.abs(y).max() + 1e-9)
    return y + 0.003 * rs.randn(clip)


def music_like(rs: np.random.RandomState, clip: int) -> np.ndarray:
    t = np.arange(clip) / SR
    y = np.zeros(clip)
    beat = rs.uniform(0.25, 0.5)
    for start in np.arange(0, clip / SR, beat):  # a note (3 voices, 6 harmonics, decaying) on every beat
        s = int(start * SR)
        n = min(clip - s, int(rs.uniform(1, 3) * beat * SR))
        tt = t[:n]
        env = np.exp(-tt * rs.uniform(2, 6)) * np.minimum(1, tt * 200)
        for _voice in range(3):
            f0 = 110 * 2 ** (rs.randint(0, 36) / 12)
            note = sum(np.sin(2 * np.pi * f0 * h * tt + rs.rand() * 6) / h ** 1.2 for h in range(1, 7))
            y[s:s + n] += note * env
        if rs.rand() < 0.5:  # a drum hit
            m = min(clip - s, int(0.15 * SR))
            y[s:s + m] += 2 * rs.randn(m) * np.exp(-np.arange(m) / (0.02 * SR))
    return 0.3 * y / (np.abs(y).max() + 1e-9) + 0.002 * rs.randn(clip)


def make_set(folder: str, kind: str, clips: int, seed: int, clip: int) -> str:
    """``clips`` 32-kHz 16-bit wav files of ``clip`` samples of one kind and their segment CSV; returns the
    CSV path."""
    os.makedirs(folder, exist_ok=True)
    rs = np.random.RandomState(seed)
    rows = []
    for i in range(clips):
        ytid = f"{kind[:2]}{i:09d}"
        y = speech_like(rs, clip) if kind == "speech" else music_like(rs, clip)
        sf.write(os.path.join(folder, f"Y{ytid}.wav"), y, SR, subtype="PCM_16")
        rows.append((ytid, 0.0, clip / SR, [f"/m/demo{i % 4:02d}"]))
    csv_path = os.path.join(folder, "segments.csv")
    write_segments_csv(csv_path, rows)
    return csv_path


def decode_rates(path: str, min_seconds: float = 3.0, rounds: int = 3) -> dict:
    """{variant: (wall clips/s, CPU clips/s)} of reading and decoding every row of a flac-layout file in this
    process, for every installed decoder and for the way rows were read before (h5py's vlen read, then
    libsndfile); the variants take turns, ``rounds`` times, for ``min_seconds`` in all each."""
    with h5py.File(path, "r") as hf:
        ds = hf[storage.FLAC_KEY]
        rows, clip = ds.shape[0], storage.clip_samples_of(hf)
        readers = {d: storage.FlacRowReader(ds, clip, decoder=d) for d in storage.FLAC_DECODERS}
        readers["h5py+soundfile"] = old = storage.FlacRowReader(ds, clip, decoder="soundfile")
        old.heap = None  # rows through h5py, as before the direct heap read
        done = {name: [0, 0.0, 0.0] for name in readers}
        out = np.empty(clip, np.int16)
        for _ in range(rounds):
            for name, reader in readers.items():
                t0, c0, n = time.perf_counter(), time.process_time(), 0
                while time.perf_counter() - t0 < min_seconds / rounds:
                    for i in range(rows):
                        reader.read_into(i, out)
                    n += rows
                done[name][0] += n
                done[name][1] += time.perf_counter() - t0
                done[name][2] += time.process_time() - c0
    return {name: (n / wall, n / cpu) for name, (n, wall, cpu) in done.items()}


def loader_rate(index_path: str, clip: int, workers: int, batches: int, batch_size: int = 32) -> float:
    """Clips/s through the training loader (steady state, after the workers' start-up)."""
    sampler = dg.BalancedTrainSampler(index_path, batch_size=batch_size, random_seed=0)
    # As main.py train builds it for a GPU: int16 rows in shared memory, made float on the device.
    loader = dg.train_loader(SR, sampler, workers, torch.device("cpu"), seed=0, raw=True)
    it = iter(loader)
    for _ in range(2 + 2 * workers):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        assert b["waveform"].shape == (batch_size, clip) and b["waveform"].dtype == np.int16
    dt = time.perf_counter() - t0
    del it
    return batches * batch_size / dt


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=48, help="clips of each kind (speech-like, music-like)")
    p.add_argument("--workers", type=int, default=2, help="loader workers for the loader rate")
    p.add_argument("--batches", type=int, default=20, help="timed loader batches per layout")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--decode_seconds", type=float, default=6.0, help="decode timing per decoder and kind")
    p.add_argument("--clip_seconds", type=float, default=10.0)
    p.add_argument("--dir", type=str, default=None, help="where to write the data (default: a temp folder)")
    a = p.parse_args(argv)
    clip = int(round(a.clip_seconds * SR))
    torch.set_num_threads(1)
    print(f"{a.clips} clips of each kind, {a.clip_seconds:g} s at 32 kHz; {os.cpu_count()} CPUs; {load()}", flush=True)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        labels = os.path.join(tmp, "labels.csv")
        write_label_csv(labels, 4)
        files = {}
        for k, kind in enumerate(("speech", "music")):
            csv_path = make_set(os.path.join(tmp, kind), kind, a.clips, seed=k, clip=clip)
            for layout in storage.STORAGES:
                out = os.path.join(tmp, f"{kind}_{layout}.h5")
                pack_waveforms_to_hdf5(csv_path, os.path.join(tmp, kind), out, clip_seconds=a.clip_seconds,
                                       num_workers=2, class_labels_csv=labels, progress=False, storage=layout)
                files[kind, layout] = out
        print(f"{'kind':>7} {'pcm16 bytes/clip':>17} {'flac bytes/clip':>16} {'ratio':>6}   "
              "flac read + decode, one process, clips/s of CPU time (wall clock)")
        for kind in ("speech", "music"):
            b = {lay: os.path.getsize(files[kind, lay]) / a.clips for lay in storage.STORAGES}
            rates = decode_rates(files[kind, "flac"], a.decode_seconds)
            cells = "   ".join(f"{d} {cpu:.0f} ({wall:.0f})" for d, (wall, cpu) in rates.items())
            print(f"{kind:>7} {b['pcm16']:>17,.0f} {b['flac']:>16,.0f} {b['flac'] / b['pcm16']:>6.2f}   {cells}",
                  flush=True)
        # The loader reads one file holding both kinds (half speech, half music).
        print(f"loader (train path, int16 rows, BalancedTrainSampler, batch {a.batch_size}, {a.workers} workers; "
              f"flac decoder {storage.FLAC_DECODERS[0]}):")
        for layout in storage.STORAGES:
            both = os.path.join(tmp, f"both_{layout}.h5")
            join_packed_files([files["speech", layout], files["music", layout]], both,
                              config.read_class_labels(labels), SR)
            idx = os.path.join(tmp, f"index_{layout}.h5")
            with contextlib.redirect_stdout(io.StringIO()):  # its "Write to ..." line would split the table
                create_indexes(both, idx)
            print(f"{layout:>7}: {loader_rate(idx, clip, a.workers, a.batches, a.batch_size):.0f} clips/s", flush=True)
    print(load())


if __name__ == "__main__":
    main()
