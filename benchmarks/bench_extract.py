"""Clips/s of embedding extraction: every path side by side with the one ``auto`` picks, and the
official one-file-at-a-time loop.

Generates ``--num_clips`` synthetic 10-s 32-kHz clips and a Cnn14 checkpoint (random weights,
official ``{'model': ...}`` format), then times, each as a whole fresh process (interpreter start,
imports, model load, decoding, forward passes, output), in ONE invocation:

* plain:   the official way: build the model, ``torch.load`` the checkpoint, then for every file
           ``librosa.load(sr=32000, mono=True)`` and ``model(waveform[None])`` under no_grad;
* default: ``python3 pytorch/inference.py extract_embeddings ...`` with no --backend/--precision
           (``auto`` for both: the path the cached calibration found fastest on this CPU; the log
           line saying which is printed);
* every explicit path: ``--backend torch --precision fp32``, ``--backend onnxruntime`` and, where the
           CPU computes bf16 natively, ``--backend torch --precision bf16``.

Second runs are what is timed: a first default run on the first 32 clips (320 s of audio, enough to
repay a calibration and an export) into an empty cache ($PANNS_CACHE under the work folder) is timed
apart (calibration + export + the run). The script prints each path's seconds and clips/s, its ratio
to the plain loop (each path's fastest of ``--rounds`` rounds run in alternating order), the
default's ratio to the fastest explicit path, and the embeddings' cosine
similarity (mean and min over clips) against the torch fp32 extractor and the plain loop.

    python3 benchmarks/bench_extract.py                    # 40 clips
    python3 benchmarks/bench_extract.py --num_clips 160    # the issue-25 figure
    python3 benchmarks/bench_extract.py --paths default torch-fp32
    python3 benchmarks/bench_extract.py --workdir /tmp/bx --keep_cache   # again, verdict and export kept
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "pytorch"))  # the `panns` package in a checkout


def make_clips(folder: str, n: int, seconds: float, sample_rate: int = 32000) -> list:
    import soundfile as sf

    from panns.demo.data import CLASSES, synth_clip

    os.makedirs(folder, exist_ok=True)
    rs = np.random.RandomState(0)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"clip{i:04d}.wav")
        if not os.path.exists(path):
            classes = list(rs.choice(len(CLASSES), size=1 + i % 2, replace=False))
            sf.write(path, synth_clip(rs, classes, seconds, sample_rate), sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths


def make_checkpoint(path: str, model_type: str) -> None:
    import torch

    from panns import models

    if os.path.exists(path):
        return
    torch.manual_seed(0)
    model = models.create_model(model_type)
    torch.save({"model": model.state_dict()}, path)


def child_plain(files: list, checkpoint_path: str, model_type: str, out: str) -> None:
    """The official inference.py recipe, looped over files (one process)."""
    import librosa
    import torch

    from panns import models

    spec = models.get_model_spec(model_type)
    model = spec.cls(**spec.frontend(), classes_num=527)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    embs = []
    for f in files:
        waveform, _ = librosa.core.load(f, sr=spec.sample_rate, mono=True)
        x = torch.from_numpy(waveform[None, :])
        with torch.no_grad():
            embs.append(model(x, None)["embedding"].numpy()[0])
    np.save(out, np.stack(embs))


def timed(cmd: list, env=None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return time.perf_counter() - t0


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


PATHS = {   # name -> extra flags of the extract_embeddings command
    "default": [],
    "torch-fp32": ["--backend=torch", "--precision=fp32"],
    "onnxruntime": ["--backend=onnxruntime", "--precision=fp32"],
    "torch-bf16": ["--backend=torch", "--precision=bf16"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_clips", type=int, default=40, help="number of clips (default 40; issue 25 uses 160)")
    p.add_argument("--clip_seconds", type=float, default=10.0, help="clip length (default 10 s)")
    p.add_argument("--model_type", default="Cnn14", help="model (default Cnn14)")
    p.add_argument("--batch_size", type=int, default=8, help="extractor batch size (default 8)")
    p.add_argument("--num_workers", type=int, default=None, help="extractor decoding workers (default: its own)")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS),
                   help="paths to time (default: all; torch-bf16 only where the CPU computes bf16 natively)")
    p.add_argument("--workdir", default=None, help="folder for clips/checkpoint/outputs (default: a temp dir)")
    p.add_argument("--rounds", type=int, default=2,
                   help="timed rounds over the paths, in alternating order; each path's fastest round is "
                        "reported (default 2: a shared machine's load drifts within a run)")
    p.add_argument("--keep_cache", action="store_true",
                   help="keep the work folder's cache (verdict, export) from an earlier run and skip the first run")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_files", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_ckpt", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child == "plain":
        child_plain(open(args._files).read().split("\n"), args._ckpt, args.model_type, args._out)
        return

    import shutil

    import torch

    from panns import calibration, devices
    from panns.extract import read_features

    work = args.workdir or tempfile.mkdtemp(prefix="bench_extract_")
    files = make_clips(os.path.join(work, "clips"), args.num_clips, args.clip_seconds)
    ckpt = os.path.join(work, f"{args.model_type}_random.pth")
    make_checkpoint(ckpt, args.model_type)
    listing = os.path.join(work, "files.txt")
    with open(listing, "w") as f:
        f.write("\n".join(files))
    plain_npy = os.path.join(work, "plain.npy")
    native = devices.cpu_has_fast_bf16()
    paths = [q for q in args.paths if q != "torch-bf16" or native]
    print(f"{args.num_clips} clips of {args.clip_seconds:g} s, {args.model_type}, torch {torch.__version__}, "
          f"CPU {calibration.cpu_model()} ({os.cpu_count()} cores, native bf16: {native}), "
          f"torch threads {torch.get_num_threads()}", flush=True)
    if "torch-bf16" in args.paths and not native:
        print("torch-bf16 skipped: this CPU has no native bf16 (emulated, slower than fp32)", flush=True)

    env = dict(os.environ, PANNS_CACHE=os.path.join(work, "cache"))   # a fresh export + calibration cache
    env.pop("PANNS_BACKEND", None)
    if not args.keep_cache:
        shutil.rmtree(env["PANNS_CACHE"], ignore_errors=True)

    def cmd(listing_path, out, flags):
        c = [sys.executable, "pytorch/inference.py", "extract_embeddings", f"--model_type={args.model_type}",
             f"--checkpoint_path={ckpt}", f"--audio_path={listing_path}", f"--output_path={out}", "--overwrite",
             f"--batch_size={args.batch_size}", "--quiet"] + flags
        return c + ([f"--num_workers={args.num_workers}"] if args.num_workers is not None else [])

    result = {"clips": args.num_clips}
    if not args.keep_cache and ("default" in paths or "onnxruntime" in paths):   # first run, timed apart
        first = os.path.join(work, "first.txt")
        with open(first, "w") as f:
            f.write("\n".join(files[:32]))
        t_first, log = timed_logged(cmd(first, os.path.join(work, "first.h5"), []), env)
        result["default_first_run_s"] = round(t_first, 2)
        print(f"default, first run on {min(32, len(files))} clips (empty cache: calibration + export + run): "
              f"{t_first:7.1f} s; {auto_line(log)}", flush=True)

    t_plain = timed([sys.executable, os.path.abspath(__file__), "--_child", "plain", "--_files", listing,
                     "--_ckpt", ckpt, "--_out", plain_npy, "--model_type", args.model_type])
    plain = np.load(plain_npy)
    n = args.num_clips
    print(f"{'plain loop (official, librosa + batch 1)':44s}: {t_plain:7.1f} s  {n / t_plain:6.2f} clips/s", flush=True)
    result.update(plain_s=round(t_plain, 2), plain_clips_per_s=round(n / t_plain, 3))
    embs, secs, logs = {}, {}, {}
    for r in range(max(1, args.rounds)):
        for name in (paths if r % 2 == 0 else paths[::-1]):
            h5 = os.path.join(work, f"features_{name}.h5")
            t_ext, logs[name] = timed_logged(cmd(listing, h5, PATHS[name]), env)
            print(f"  round {r + 1}: {name:12s} {t_ext:7.1f} s", flush=True)
            secs[name] = min(t_ext, secs.get(name, float("inf")))
            feats = read_features(h5)
            row = {nm: i for i, nm in enumerate(feats.audio_names)}
            embs[name] = np.stack([feats.embedding[row[os.path.normpath(f)]] for f in files])
    for name in paths:
        t_ext = secs[name]
        cos = cosine(embs[name], plain)
        result.update({f"{name}_s": round(t_ext, 2), f"{name}_clips_per_s": round(n / t_ext, 3),
                       f"{name}_vs_plain": round(t_plain / t_ext, 2), f"{name}_cosine_plain_min": float(cos.min())})
        label = "default (auto)" if name == "default" else name
        print(f"{label:44s}: {t_ext:7.1f} s  {n / t_ext:6.2f} clips/s  {t_plain / t_ext:.2f}x the plain loop; "
              f"cosine vs plain mean {cos.mean():.6f} min {cos.min():.6f}"
              + (f"; {auto_line(logs[name])}" if name == "default" else ""), flush=True)
    if "torch-fp32" in embs:
        for name in embs:
            cos = cosine(embs[name], embs["torch-fp32"])
            result[f"{name}_cosine_torch_fp32_min"] = float(cos.min())
            print(f"{name:44s}: embedding cosine vs torch fp32 mean {cos.mean():.6f} min {cos.min():.6f}")
    explicit = {k: v for k, v in secs.items() if k != "default"}
    if "default" in secs and explicit:
        fastest = min(explicit, key=explicit.get)
        ratio = secs["default"] / explicit[fastest]
        result.update(fastest_explicit=fastest, default_vs_fastest=round(ratio, 3))
        print(f"default takes {ratio:.3f}x the fastest explicit path ({fastest}); "
              f"{t_plain / secs['default']:.2f}x the plain loop's speed")
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print("load average (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(json.dumps(result))


def timed_logged(cmd: list, env) -> tuple:
    """(seconds, stderr) of a command run to completion (stderr kept for auto's log line)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return dt, proc.stderr


def auto_line(log: str) -> str:
    """auto's one line ('backend auto: ...') from a command's stderr, shortened."""
    lines = [ln.split(": ", 1)[1] for ln in log.splitlines() if "backend auto:" in ln]
    return lines[-1][:300] if lines else "(no auto line)"


if __name__ == "__main__":
    main()
