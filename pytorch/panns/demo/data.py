"""Generate a small AudioSet-layout data set of distinct synthetic sound classes (offline demo/tests).

Layout written under ``--dataset_dir`` (the same as ``scripts/1_download_dataset.sh`` produces):

    metadata/class_labels_indices.csv                  index,mid,display_name
    metadata/{eval,balanced_train,unbalanced_train}_segments.csv   3 '#' header lines, then
        <YTID>, <start>, <end>, "<mid>,<mid>"
    metadata/unbalanced_partial_csvs/unbalanced_train_segments_partNN.csv
    audios/eval_segments/Y<YTID>.wav, audios/balanced_train_segments/Y<YTID>.wav,
    audios/unbalanced_train_segments/unbalanced_train_segments_partNN/Y<YTID>.wav

Each clip is quiet noise with one or two sound events of its classes at random times, so clip
tagging and sound event detection both have something to find. Deterministic for a given seed.
"""
from __future__ import annotations

import argparse
import csv
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from panns.errors import PannsError, run_cli
from panns.utilities import atomic_write, atomic_write_text

Synth = Callable[[np.random.RandomState, int, int], np.ndarray]


def _tone(freq_lo: float, freq_hi: float) -> Synth:
    def f(rs, n, sr):
        t = np.arange(n) / sr
        return np.sin(2 * np.pi * rs.uniform(freq_lo, freq_hi) * t)
    return f


def _chirp(f0: float, f1: float) -> Synth:
    def f(rs, n, sr):
        k = rs.uniform(0.8, 1.2)
        inst = np.linspace(f0 * k, f1 * k, n)
        return np.sin(2 * np.pi * np.cumsum(inst) / sr)
    return f


def _noise_band(lo: float, hi: float) -> Synth:
    def f(rs, n, sr):
        spec = np.fft.rfft(rs.randn(n))
        freqs = np.fft.rfftfreq(n, 1 / sr)
        spec[(freqs < lo) | (freqs > hi)] = 0
        y = np.fft.irfft(spec, n)
        return y / (np.abs(y).max() + 1e-9)
    return f


def _clicks(rate_lo: float, rate_hi: float) -> Synth:
    def f(rs, n, sr):
        y = np.zeros(n)
        period = int(sr / rs.uniform(rate_lo, rate_hi))
        decay = np.exp(-np.arange(200) / 30.0)
        for s in range(0, n - 200, max(period, 1)):
            y[s:s + 200] += decay * rs.choice([-1, 1])
        return y
    return f


def _harmonic(f0_lo: float, f0_hi: float, n_harm: int) -> Synth:
    def f(rs, n, sr):
        t = np.arange(n) / sr
        f0 = rs.uniform(f0_lo, f0_hi)
        y = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, n_harm + 1) if f0 * h < sr / 2)
        return y / (np.abs(y).max() + 1e-9)
    return f


def _tremolo(freq: float, mod: float) -> Synth:
    def f(rs, n, sr):
        t = np.arange(n) / sr
        return np.sin(2 * np.pi * freq * rs.uniform(0.9, 1.1) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * mod * t))
    return f


# (mid, display name, generator). Names are descriptive so demo printouts read naturally.
CLASSES: List[Tuple[str, str, Synth]] = [
    ("/m/demo00", "Low tone", _tone(200, 300)),
    ("/m/demo01", "High tone", _tone(3000, 4000)),
    ("/m/demo02", "Rising chirp", _chirp(300, 6000)),
    ("/m/demo03", "Falling chirp", _chirp(6000, 300)),
    ("/m/demo04", "Hiss", _noise_band(6000, 12000)),
    ("/m/demo05", "Rumble", _noise_band(40, 250)),
    ("/m/demo06", "Clicks", _clicks(8, 15)),
    ("/m/demo07", "Buzz", _harmonic(90, 130, 25)),
    ("/m/demo08", "Tremolo", _tremolo(1000, 6)),
    ("/m/demo09", "Mid-band noise", _noise_band(1000, 2500)),
]

SPLITS = ("balanced_train", "eval", "unbalanced_train")


def synth_event(rs: np.random.RandomState, class_id: int, length: int, sample_rate: int) -> np.ndarray:
    """One sound event of ``class_id``: ``length`` samples at a random level, 20-ms fade in/out."""
    env = np.ones(length)
    ramp = min(int(0.02 * sample_rate), length // 4)
    if ramp > 0:
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
    return rs.uniform(0.2, 0.4) * CLASSES[class_id][2](rs, length, sample_rate) * env


def synth_clip(rs: np.random.RandomState, class_ids: List[int], seconds: float, sample_rate: int,
               event_seconds: Tuple[float, float] = (0.3, 0.8)) -> np.ndarray:
    """One clip: noise floor plus one event per class, each covering a random span of the clip.

    An event lasts ``event_seconds`` of the clip length (fractions), at a random onset.
    """
    n = int(round(seconds * sample_rate))
    y = 0.003 * rs.randn(n)
    for c in class_ids:
        length = int(n * rs.uniform(*event_seconds))
        onset = rs.randint(0, n - length + 1)
        y[onset:onset + length] += synth_event(rs, c, length, sample_rate)
    return np.clip(y, -1, 1).astype(np.float32)


# The example clip of the README and the demo: (class name, onset s, offset s). Two events overlap
# for half a second, as in the training clips with two labels. The sounds are ones the demo's
# 60-step models tell apart (they still take a rising chirp for the high tone it sweeps through).
EXAMPLE_EVENTS: Tuple[Tuple[str, float, float], ...] = (
    ("Clicks", 0.5, 2.5), ("Low tone", 2.0, 4.0), ("Hiss", 4.5, 6.5))


def make_example_clip(wav_path: str, events: Sequence[Tuple[str, float, float]] = EXAMPLE_EVENTS,
                      seconds: float = 7.0, sample_rate: int = 32000, seed: int = 7) -> str:
    """Write a clip with the given events and, next to it, ``<stem>_truth.csv`` (``onset,offset,label``
    rows: the ground truth the demo checks tagging and sound event detection against). Returns the
    truth CSV path."""
    names = [c[1] for c in CLASSES]
    rs = np.random.RandomState(seed)
    n = int(round(seconds * sample_rate))
    y = 0.003 * rs.randn(n)
    for label, onset, offset in events:
        if label not in names:
            raise PannsError(f"unknown demo class {label!r}; classes: {', '.join(names)}")
        a, b = int(round(onset * sample_rate)), int(round(offset * sample_rate))
        if not 0 <= a < b <= n:
            raise PannsError(f"event {label} {onset}-{offset} s does not fit in a {seconds}-s clip")
        y[a:b] += synth_event(rs, names.index(label), b - a, sample_rate)
    folder = os.path.dirname(os.path.abspath(wav_path))
    os.makedirs(folder, exist_ok=True)
    with atomic_write(wav_path, suffix=".wav") as tmp:
        sf.write(tmp, np.clip(y, -1, 1).astype(np.float32), sample_rate, subtype="PCM_16")
    truth = os.path.splitext(wav_path)[0] + "_truth.csv"
    atomic_write_text(truth, "onset,offset,label\n" + "".join(f"{a:.3f},{b:.3f},{lb}\n" for lb, a, b in events))
    return truth


def write_label_csv(path: str, classes_num: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        w.writerow(["index", "mid", "display_name"])
        for i in range(classes_num):
            w.writerow([i, CLASSES[i][0], CLASSES[i][1]])


def write_segments_csv(path: str, rows: List[Tuple[str, float, float, List[str]]]) -> None:
    """AudioSet segment CSV: three '#' header lines, then ``YTID, start, end, "mid,mid"``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n_labels = sum(len(r[3]) for r in rows)
    with open(path, "w") as f:
        f.write("# Segments csv created by utils/make_demo_dataset.py\n")
        f.write(f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={len({m for r in rows for m in r[3]})}, "
                f"num_positive_labels={n_labels}\n")
        f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
        for ytid, start, end, mids in rows:
            f.write(f'{ytid}, {start:.3f}, {end:.3f}, "{",".join(mids)}"\n')


def make_demo_dataset(dataset_dir: str, classes_num: int = 10, clips_per_class: Dict[str, int] | None = None,
                      clip_seconds: float = 10.0, sample_rate: int = 32000, multi_label_fraction: float = 0.2,
                      unbalanced_parts: int = 2, seed: int = 0,
                      event_seconds: Tuple[float, float] = (0.3, 0.8)) -> Dict[str, List[str]]:
    """Write the data set; returns {split: [audio paths]}. Existing identical files are rewritten."""
    if not 1 <= classes_num <= len(CLASSES):
        raise ValueError(f"classes_num must be in 1..{len(CLASSES)}")
    clips_per_class = clips_per_class or {"balanced_train": 6, "eval": 4, "unbalanced_train": 6}
    rs = np.random.RandomState(seed)
    meta = os.path.join(dataset_dir, "metadata")
    write_label_csv(os.path.join(meta, "class_labels_indices.csv"), classes_num)
    written: Dict[str, List[str]] = {}
    for s_ix, split in enumerate(SPLITS):
        per_class = clips_per_class.get(split, 0)
        rows, clips = [], []
        for c in range(classes_num):
            for i in range(per_class):
                ids = [c]
                if classes_num > 1 and rs.rand() < multi_label_fraction:
                    ids.append(int(rs.choice([k for k in range(classes_num) if k != c])))
                ytid = f"d{s_ix}{c:02d}{i:04d}xyzw"[:11]
                start = float(rs.randint(0, 30))
                rows.append((ytid, start, start + clip_seconds, [CLASSES[k][0] for k in ids]))
                clips.append(synth_clip(rs, ids, clip_seconds, sample_rate, event_seconds))
        written[split] = []
        if split == "unbalanced_train":
            write_segments_csv(os.path.join(meta, "unbalanced_train_segments.csv"), rows)
            parts = np.array_split(np.arange(len(rows)), max(unbalanced_parts, 1))
            for p, idx in enumerate(parts):
                part = f"unbalanced_train_segments_part{p:02d}"
                write_segments_csv(os.path.join(meta, "unbalanced_partial_csvs", part + ".csv"), [rows[i] for i in idx])
                for i in idx:
                    written[split].append(_write_wav(os.path.join(dataset_dir, "audios", "unbalanced_train_segments", part),
                                                     rows[i][0], clips[i], sample_rate))
        else:
            write_segments_csv(os.path.join(meta, f"{split}_segments.csv"), rows)
            for (ytid, *_), clip in zip(rows, clips):
                written[split].append(_write_wav(os.path.join(dataset_dir, "audios", f"{split}_segments"), ytid, clip, sample_rate))
    return written


def make_class_folders(out_dir: str, classes_num: int = 4, clips_per_class: int = 10, clip_seconds: float = 3.0,
                       sample_rate: int = 32000, seed: int = 1,
                       event_seconds: Tuple[float, float] = (0.3, 0.8)) -> Dict[str, List[str]]:
    """A single-label data set as one sub-folder per class (``<out_dir>/<label>/<n>.wav``), the
    layout ``pytorch/finetune_template.py --dataset_dir`` reads. Returns {label: [paths]}."""
    rs = np.random.RandomState(seed)
    out: Dict[str, List[str]] = {}
    for c in range(classes_num):
        label = CLASSES[c][1]
        folder = os.path.join(out_dir, label.replace(" ", "_"))
        os.makedirs(folder, exist_ok=True)
        out[label] = []
        for i in range(clips_per_class):
            path = os.path.join(folder, f"{i:04d}.wav")
            sf.write(path, synth_clip(rs, [c], clip_seconds, sample_rate, event_seconds), sample_rate,
                     subtype="PCM_16")
            out[label].append(path)
    return out


def _write_wav(folder: str, ytid: str, clip: np.ndarray, sample_rate: int) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"Y{ytid}.wav")
    sf.write(path, clip, sample_rate, subtype="PCM_16")
    return path


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--dataset_dir", help="output folder (AudioSet layout)")
    p.add_argument("--classes_num", type=int, default=10, help=f"number of synthetic classes (1..{len(CLASSES)})")
    p.add_argument("--balanced_per_class", type=int, default=6, help="balanced_train clips per class")
    p.add_argument("--eval_per_class", type=int, default=4, help="eval clips per class")
    p.add_argument("--unbalanced_per_class", type=int, default=6, help="unbalanced_train clips per class")
    p.add_argument("--unbalanced_parts", type=int, default=2, help="number of unbalanced part CSVs/folders")
    p.add_argument("--clip_seconds", type=float, default=10.0, help="clip length in seconds")
    p.add_argument("--sample_rate", type=int, default=32000, help="sample rate of the written wavs")
    p.add_argument("--multi_label_fraction", type=float, default=0.2, help="share of clips with a second class")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--event_fraction", type=float, nargs=2, default=(0.3, 0.8), metavar=("MIN", "MAX"),
                   help="each event lasts this fraction of the clip (uniform between MIN and MAX)")
    p.add_argument("--class_folders_dir", default=None,
                   help="instead: write a single-label class-folder data set (<dir>/<label>/*.wav) for fine-tuning")
    p.add_argument("--folder_clips_per_class", type=int, default=10, help="clips per class with --class_folders_dir")
    p.add_argument("--example_clip", default=None, metavar="WAV",
                   help="instead: write the 7-s example clip (" + ", ".join(f"{lb} {a}-{b} s" for lb, a, b in EXAMPLE_EVENTS)
                        + ") and its ground truth <stem>_truth.csv")
    a = p.parse_args(argv)
    if a.example_clip:
        truth = make_example_clip(a.example_clip, sample_rate=a.sample_rate)
        print(f"Wrote {a.example_clip} and its ground truth {truth}")
        return
    if a.class_folders_dir:
        out = make_class_folders(a.class_folders_dir, a.classes_num, a.folder_clips_per_class, a.clip_seconds,
                                 a.sample_rate, a.seed, tuple(a.event_fraction))
        print(f"Wrote {sum(len(v) for v in out.values())} clips of {len(out)} classes to {a.class_folders_dir}")
        return
    if not a.dataset_dir:
        p.error("--dataset_dir or --class_folders_dir is required")
    out = make_demo_dataset(a.dataset_dir, a.classes_num,
                            {"balanced_train": a.balanced_per_class, "eval": a.eval_per_class,
                             "unbalanced_train": a.unbalanced_per_class},
                            a.clip_seconds, a.sample_rate, a.multi_label_fraction, a.unbalanced_parts, a.seed,
                            tuple(a.event_fraction))
    print(f"Wrote {sum(len(v) for v in out.values())} clips ({', '.join(f'{k}: {len(v)}' for k, v in out.items())}) "
          f"of {a.classes_num} classes to {a.dataset_dir}")


if __name__ == "__main__":
    run_cli(main)
