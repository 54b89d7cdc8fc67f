"""Shared builders for the data-pipeline tests: a tiny AudioSet-layout data set with awkward extras,
a packed/indexed workspace, and an independent copy of the official packing numerics."""
from __future__ import annotations

import os
import shutil
import sys
from typing import Dict

import numpy as np
import pytest
import soundfile as sf
import torch

from panns.errors import run_cli

CLIP_SECONDS = 1.0
SR = 32000


def official_pack_row(path: str, clip_samples: int) -> np.ndarray:
    """What the official packer writes for one file, re-implemented from its description (spec 4.1/4.3):
    librosa.load(sr=32000, mono=True) -> pad with float64 zeros / truncate -> assert |x|<=1.2, clip,
    * 32767.0, cast to int16."""
    import librosa

    audio, _ = librosa.load(path, sr=32000, mono=True)
    if len(audio) <= clip_samples:
        audio = np.concatenate((audio, np.zeros(clip_samples - len(audio))), axis=0)
    else:
        audio = audio[0:clip_samples]
    assert np.max(np.abs(audio)) <= 1.2
    audio = np.clip(audio, -1, 1)
    return (audio * 32767.0).astype(np.int16)


def append_segment(csv_path: str, ytid: str, mids, start: float = 0.0, end: float = CLIP_SECONDS) -> None:
    with open(csv_path, "a") as f:
        f.write(f'{ytid}, {start:.3f}, {end:.3f}, "{",".join(mids)}"\n')


def make_dataset(root: str, extras: bool = True, multi_label_fraction: float = 0.2, classes_num: int = 5,
                 per_class: Dict[str, int] | None = None) -> dict:
    """Demo data set (1-s clips) plus, in balanced_train, extras: a missing clip, a corrupt file, a 44.1 kHz
    wav, a stereo flac, a too-long and a too-short 32 kHz wav, and a hot (out of range) float wav."""
    from panns.demo.data import CLASSES, make_demo_dataset

    per_class = per_class or {"balanced_train": 3, "eval": 2, "unbalanced_train": 3}
    make_demo_dataset(root, classes_num=classes_num, clips_per_class=per_class, clip_seconds=CLIP_SECONDS,
                      sample_rate=SR, multi_label_fraction=multi_label_fraction, unbalanced_parts=2, seed=0)
    info = {"root": root, "labels_csv": os.path.join(root, "metadata", "class_labels_indices.csv"),
            "bal_csv": os.path.join(root, "metadata", "balanced_train_segments.csv"),
            "eval_csv": os.path.join(root, "metadata", "eval_segments.csv"),
            "bal_dir": os.path.join(root, "audios", "balanced_train_segments"),
            "eval_dir": os.path.join(root, "audios", "eval_segments")}
    if not extras:
        return info
    rs = np.random.RandomState(1)
    mid = CLASSES[0][0]
    d, csv = info["bal_dir"], info["bal_csv"]
    append_segment(csv, "xmissing000", [mid])                      # no file at all
    append_segment(csv, "xcorrupt000", [mid])
    with open(os.path.join(d, "Yxcorrupt000.wav"), "wb") as f:     # not audio
        f.write(b"RIFF\x00\x00garbage" * 10)
    append_segment(csv, "x44k1000000", [mid])
    sf.write(os.path.join(d, "Yx44k1000000.wav"), 0.3 * rs.randn(44100).clip(-3, 3) / 3, 44100, subtype="PCM_16")
    append_segment(csv, "xstereo0000", [CLASSES[1][0]])
    st = 0.2 * rs.randn(int(SR * 0.8), 2)
    sf.write(os.path.join(d, "Yxstereo0000.flac"), st, SR)
    append_segment(csv, "xlong000000", [mid])
    sf.write(os.path.join(d, "Yxlong000000.wav"), 0.5 * np.sin(np.arange(int(SR * 1.5)) / 7.0), SR, subtype="PCM_16")
    append_segment(csv, "xshort00000", [mid])
    sf.write(os.path.join(d, "Yxshort00000.wav"), 0.5 * np.sin(np.arange(int(SR * 0.5)) / 5.0), SR, subtype="PCM_16")
    append_segment(csv, "xhot0000000", [mid])
    sf.write(os.path.join(d, "Yxhot0000000.wav"), 1.5 * np.sin(np.arange(SR) / 3.0), SR, subtype="FLOAT")
    info["extras"] = {"missing": "Yxmissing000.wav", "corrupt": "Yxcorrupt000.wav", "44k": "Yx44k1000000.wav",
                      "stereo": "Yxstereo0000.wav", "stereo_file": os.path.join(d, "Yxstereo0000.flac"),
                      "long": "Yxlong000000.wav", "short": "Yxshort00000.wav", "hot": "Yxhot0000000.wav"}
    return info


def build_workspace(dataset: dict, ws: str) -> dict:
    """Pack eval, balanced_train and the unbalanced parts; index them and combine full_train."""
    from panns import create_indexes
    from panns import dataset as ds

    root = dataset["root"]
    wav_dir = os.path.join(ws, "hdf5s", "waveforms")
    idx_dir = os.path.join(ws, "hdf5s", "indexes")
    kw = dict(clip_seconds=CLIP_SECONDS, class_labels_csv=dataset["labels_csv"], progress=False, num_workers=1)
    jobs = [(dataset["eval_csv"], dataset["eval_dir"], "eval.h5"),
            (dataset["bal_csv"], dataset["bal_dir"], "balanced_train.h5")]
    for p in range(2):
        part = f"unbalanced_train_segments_part{p:02d}"
        jobs.append((os.path.join(root, "metadata", "unbalanced_partial_csvs", part + ".csv"),
                     os.path.join(root, "audios", "unbalanced_train_segments", part),
                     os.path.join("unbalanced_train", f"unbalanced_train_part{p:02d}.h5")))
    for csv_path, audios_dir, rel in jobs:
        ds.pack_waveforms_to_hdf5(csv_path, audios_dir, os.path.join(wav_dir, rel), **kw)
        create_indexes.create_indexes(os.path.join(wav_dir, rel), os.path.join(idx_dir, rel))
    full = os.path.join(idx_dir, "full_train.h5")
    create_indexes.combine_full_indexes(idx_dir, full)
    return {"ws": ws, "waveforms": wav_dir, "indexes": idx_dir, "full": full,
            "bal_index": os.path.join(idx_dir, "balanced_train.h5"), "eval_index": os.path.join(idx_dir, "eval.h5")}


def copy_tree(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def speechlike(rs: np.random.RandomState, n: int, sr: int) -> np.ndarray:
    """Syllable-like bursts of resonant noise with pauses (compresses like speech, unlike a pure tone)."""
    from scipy.signal import lfilter

    x = lfilter([1.0], [1.0, -1.5 + 0.2 * rs.rand(), 0.7], rs.randn(n))
    t = np.arange(n) / sr
    env = np.clip(np.sin(2 * np.pi * rs.uniform(2, 5) * t + rs.rand() * 6), 0, None) ** 2
    return (0.3 * x * env / (np.abs(x).max() + 1e-9)).astype(np.float32)


def make_shard_clips(root: str, labels_csv: str) -> dict:
    """Six clips of awkward formats written both as files (for pack_waveforms_to_hdf5) and as shards.

    Returns {'clips': [(ytid, label value for the shard, mids, encoded bytes, ext)], 'audios_dir', 'csv'} with
    48 kHz 24-bit stereo FLAC, 44.1 kHz FLAC, 32 kHz WAV, 16 kHz OGG; labels given as mids, display names and
    class indices; one unknown label. The segment CSV lists the same clips with their mids."""
    import io

    from panns import config

    labels = config.read_class_labels(labels_csv)
    rs = np.random.RandomState(7)
    specs = [  # ytid, rate, channels, subtype, format, label value, mids
        ("shard00000a", 48000, 2, "PCM_24", "FLAC", [labels.ids[0]], [labels.ids[0]]),
        ("shard00000b", 44100, 1, "PCM_16", "FLAC", [labels.labels[1]], [labels.ids[1]]),
        ("shard00000c", 32000, 1, "PCM_16", "WAV", [2, 0], [labels.ids[0], labels.ids[2]]),
        ("shard00000d", 16000, 1, "VORBIS", "OGG", f"{labels.ids[3]},/m/unknown", [labels.ids[3]]),
        ("shard00000e", 48000, 2, "PCM_24", "FLAC", [labels.ids[4], "Not a class"], [labels.ids[4]]),
        ("shard00000f", 44100, 2, "PCM_16", "FLAC", ["3"], [labels.ids[3]]),
    ]
    audios = os.path.join(root, "audios")
    os.makedirs(audios, exist_ok=True)
    clips, rows = [], []
    for ytid, sr, ch, subtype, fmt, value, mids in specs:
        n = int(sr * 1.2)
        y = np.stack([speechlike(rs, n, sr) for _ in range(ch)], axis=1)
        buf = io.BytesIO()
        sf.write(buf, y, sr, format=fmt, subtype=subtype)
        ext = {"FLAC": ".flac", "WAV": ".wav", "OGG": ".ogg"}[fmt]
        data = buf.getvalue()
        with open(os.path.join(audios, f"Y{ytid}{ext}"), "wb") as f:
            f.write(data)
        clips.append((ytid, value, mids, data, ext))
        rows.append((ytid, 0.0, 1.2, mids))
    from panns.demo.data import write_segments_csv

    csv_path = os.path.join(root, "segments.csv")
    write_segments_csv(csv_path, rows)
    return {"clips": clips, "audios_dir": audios, "csv": csv_path}


def write_tar_shards(folder: str, clips, per_shard: int = 3, corrupt_member: bool = True) -> list:
    """WebDataset tar shards: <ytid>.<ext> + <ytid>.json {'labels': ...}; plus one corrupt audio member."""
    import io
    import json
    import tarfile

    os.makedirs(folder, exist_ok=True)
    paths = []
    for s in range(0, len(clips), per_shard):
        path = os.path.join(folder, f"audioset-{s // per_shard:04d}.tar")
        with tarfile.open(path, "w") as tf:
            members = [(f"{ytid}{ext}", data) for ytid, value, _m, data, ext in clips[s:s + per_shard]]
            metas = [(f"{ytid}.json", json.dumps({"labels": value}).encode()) for ytid, value, *_ in clips[s:s + per_shard]]
            items = [x for pair in zip(members, metas) for x in pair]
            if corrupt_member and s == 0:
                items += [("broken00000.flac", b"fLaC" + b"\x00garbage" * 50),
                          ("broken00000.json", json.dumps({"labels": ["/m/demo00"]}).encode())]
            for name, data in items:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def write_parquet_shards(folder: str, clips, per_shard: int = 3) -> list:
    """Parquet shards as the `datasets` library writes them: video_id, audio {bytes, path}, labels list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    paths = []
    for s in range(0, len(clips), per_shard):
        chunk = clips[s:s + per_shard]
        table = pa.table({
            "video_id": [c[0] for c in chunk],
            "audio": [{"bytes": c[3], "path": f"{c[0]}{c[4]}"} for c in chunk],
            "labels": [c[2] for c in chunk],  # the mids
            "human_labels": [[str(m) for m in c[2]] for c in chunk],
        })
        path = os.path.join(folder, f"train-{s // per_shard:05d}-of-{(len(clips) + per_shard - 1) // per_shard:05d}.parquet")
        pq.write_table(table, path, row_group_size=2)
        paths.append(path)
    return paths


class FixedScores(torch.nn.Module):
    """A model double for evaluation tests: returns stored scores per item (first waveform sample = item id)."""

    def __init__(self, scores):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def forward(self, x, mixup_lambda=None):
        return {"clipwise_output": self.scores[x[:, 0].long()] + 0 * self.w}


def signal_in_step(monkeypatch, step: int, signum: int) -> list:
    """Patch the one training step so that step ``step`` (1-based) sends ``signum`` to this process while it
    runs, as a user's Ctrl-C or a cluster's SIGTERM lands mid-step. Returns the list counting the steps taken."""
    from panns.training import config as tl

    real_step, calls = tl.train_step, []

    def signalling_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(tl, "train_step", signalling_step)
    return calls


def seeded_checkpoint(path: str, model_type: str = "Cnn6") -> torch.nn.Module:
    """Write a checkpoint of ours (weights + config) of a model with seed-0 random weights at ``path``;
    returns the model in eval mode (the reference the tests compare against)."""
    from panns import checkpoint, models

    torch.manual_seed(0)
    model = models.create_model(model_type).eval()
    checkpoint.save_checkpoint(path, {"model": model.state_dict(),
                                      "config": checkpoint.ModelConfig.from_registry(model_type).to_dict()})
    return model


def cli_error(main, argv, monkeypatch, capsys):
    """Run an entry point under ``errors.run_cli`` with ``argv`` that must fail: (exit code, its one error line).
    No traceback, exactly one ``error:`` line; log lines that a logging set up by earlier tests in the same
    process prints beside it are left out."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["prog"] + list(argv))
    with pytest.raises(SystemExit) as ei:
        run_cli(main)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return ei.value.code, lines[0]
