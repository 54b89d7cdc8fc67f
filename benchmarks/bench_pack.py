"""Clips per second packed by ``utils/dataset.py pack_waveforms_to_hdf5`` for 10-s clips.

Two inputs: 32 kHz mono 16-bit WAV (what download_wavs writes; no resampling) and 44.1 kHz stereo FLAC
(decoded, down-mixed and resampled to 32 kHz with soxr), each packed with 1 and 2 decoding processes.
The clips are generated first and are in the page cache, so the figures measure decoding + writing.

    python3 benchmarks/bench_pack.py [--clips 60] [--workers 1 2] [--storage pcm16|flac]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

from panns.dataset import pack_waveforms_to_hdf5
from panns.demo.data import write_label_csv, write_segments_csv


def make_clips(folder: str, clips: int, fmt: str) -> str:
    """Write ``clips`` 10-s files and their segment CSV; returns the CSV path."""
    os.makedirs(folder, exist_ok=True)
    rs = np.random.RandomState(0)
    rows = []
    for i in range(clips):
        ytid = f"bench{i:06d}"
        if fmt == "wav32k":
            y = 0.1 * rs.randn(320000)
            sf.write(os.path.join(folder, f"Y{ytid}.wav"), y, 32000, subtype="PCM_16")
        else:
            y = 0.1 * rs.randn(441000, 2)
            sf.write(os.path.join(folder, f"Y{ytid}.flac"), y, 44100, subtype="PCM_16")
        rows.append((ytid, 0.0, 10.0, ["/m/demo00"]))
    csv_path = os.path.join(folder, "segments.csv")
    write_segments_csv(csv_path, rows)
    return csv_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=60, help="clips per input format")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="decoding process counts")
    p.add_argument("--storage", choices=("pcm16", "flac"), default="pcm16",
                   help="storage layout of the output (flac also encodes every row in the workers)")
    p.add_argument("--dir", type=str, default=None, help="scratch folder (default: a temp folder)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        labels = os.path.join(tmp, "labels.csv")
        write_label_csv(labels, 1)
        print(f"{a.clips} clips of 10 s per format, {a.storage} output, {os.cpu_count()} CPUs")
        print(f"{'input':<22} {'workers':>7} {'clips/s':>8} {'MB/s out':>9}")
        for fmt, desc in (("wav32k", "32 kHz mono wav"), ("flac44k", "44.1 kHz stereo flac")):
            folder = os.path.join(tmp, fmt)
            t0 = time.perf_counter()
            csv_path = make_clips(folder, a.clips, fmt)
            gen = time.perf_counter() - t0
            for w in a.workers:
                out = os.path.join(tmp, f"{fmt}_{w}.h5")
                t0 = time.perf_counter()
                rep = pack_waveforms_to_hdf5(csv_path, folder, out, num_workers=w, class_labels_csv=labels,
                                             progress=False, storage=a.storage)
                dt = time.perf_counter() - t0
                assert rep.rows == a.clips and not rep.missing
                print(f"{desc:<22} {w:>7} {a.clips / dt:>8.1f} {os.path.getsize(out) / dt / 1e6:>9.1f}"
                      f"   (generating the files took {gen:.1f} s)" if w == a.workers[0] else
                      f"{desc:<22} {w:>7} {a.clips / dt:>8.1f} {os.path.getsize(out) / dt / 1e6:>9.1f}", flush=True)
                os.remove(out)


if __name__ == "__main__":
    main()
