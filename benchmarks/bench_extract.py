"""Clips/s of embedding extraction: our extractor CLI vs the official one-file-at-a-time loop.

Generates ``--num_clips`` synthetic 10-s 32-kHz clips and a Cnn14 checkpoint (random weights,
official ``{'model': ...}`` format), then times, each as a whole fresh process (interpreter start,
imports, model load, decoding, forward passes, output):

* plain:     the official way: build the model, ``torch.load`` the checkpoint, then for every file
             ``librosa.load(sr=32000, mono=True)`` and ``model(waveform[None])`` under no_grad;
* extractor: ``python3 pytorch/inference.py extract_embeddings ...`` (DataLoader workers decode
             while the model runs batches of equal-length clips; HDF5 output), once per
             ``--backends`` entry (default: torch and onnxruntime). For onnxruntime a first run on
             one clip, with an empty export cache, is timed separately (export + start-up); the
             timed run then uses the cached export.

Both run in ONE invocation, side by side, and the script prints both rates, their ratio and the
agreement of the embeddings (cosine similarity, mean and min over clips).

    python3 benchmarks/bench_extract.py                    # 40 clips
    python3 benchmarks/bench_extract.py --num_clips 160    # issue-8 / issue-17 figure
    python3 benchmarks/bench_extract.py --backends onnxruntime
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_clips", type=int, default=40, help="number of clips (default 40; issue 8 uses 160)")
    p.add_argument("--clip_seconds", type=float, default=10.0, help="clip length (default 10 s)")
    p.add_argument("--model_type", default="Cnn14", help="model (default Cnn14)")
    p.add_argument("--batch_size", type=int, default=8, help="extractor batch size (default 8)")
    p.add_argument("--num_workers", type=int, default=None, help="extractor decoding workers (default: its own)")
    p.add_argument("--precision", default="auto", help="extractor precision (default auto)")
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"],
                   help="extractor backends to time (default: torch onnxruntime)")
    p.add_argument("--workdir", default=None, help="folder for clips/checkpoint/outputs (default: a temp dir)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_files", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_ckpt", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child == "plain":
        child_plain(open(args._files).read().split("\n"), args._ckpt, args.model_type, args._out)
        return

    import torch

    work = args.workdir or tempfile.mkdtemp(prefix="bench_extract_")
    files = make_clips(os.path.join(work, "clips"), args.num_clips, args.clip_seconds)
    ckpt = os.path.join(work, f"{args.model_type}_random.pth")
    make_checkpoint(ckpt, args.model_type)
    listing = os.path.join(work, "files.txt")
    with open(listing, "w") as f:
        f.write("\n".join(files))
    plain_npy = os.path.join(work, "plain.npy")
    print(f"{args.num_clips} clips of {args.clip_seconds:g} s, {args.model_type}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}", flush=True)

    t_plain = timed([sys.executable, os.path.abspath(__file__), "--_child", "plain", "--_files", listing,
                     "--_ckpt", ckpt, "--_out", plain_npy, "--model_type", args.model_type])
    plain = np.load(plain_npy)
    n = args.num_clips
    print(f"plain loop (official, librosa + batch 1): {t_plain:7.1f} s  {n / t_plain:6.2f} clips/s", flush=True)
    result = {"clips": n, "plain_s": round(t_plain, 2), "plain_clips_per_s": round(n / t_plain, 3)}
    from panns.extract import read_features

    env = dict(os.environ, PANNS_CACHE=os.path.join(work, "cache"))   # a fresh export cache
    for backend in args.backends:
        h5 = os.path.join(work, f"features_{backend}.h5")

        prec = args.precision if backend == "torch" else "fp32"   # the ONNX backend runs fp32 only

        def cmd(listing_path, out):
            c = [sys.executable, "pytorch/inference.py", "extract_embeddings", f"--model_type={args.model_type}",
                 f"--checkpoint_path={ckpt}", f"--audio_path={listing_path}", f"--output_path={out}", "--overwrite",
                 f"--batch_size={args.batch_size}", f"--precision={prec}", "--quiet", f"--backend={backend}"]
            return c + ([f"--num_workers={args.num_workers}"] if args.num_workers is not None else [])

        if backend != "torch":
            import shutil

            shutil.rmtree(env["PANNS_CACHE"], ignore_errors=True)
            one = os.path.join(work, "one.txt")
            with open(one, "w") as f:
                f.write(files[0])
            t_first = timed(cmd(one, os.path.join(work, "first.h5")), env=env)
            result[f"{backend}_first_run_1_clip_s"] = round(t_first, 2)
            print(f"{backend}: first run, 1 clip (export into an empty cache + start-up): {t_first:7.1f} s",
                  flush=True)
        t_ext = timed(cmd(listing, h5), env=env)
        feats = read_features(h5)
        row = {name: i for i, name in enumerate(feats.audio_names)}
        ours = np.stack([feats.embedding[row[os.path.normpath(f)]] for f in files])
        cos = cosine(ours, plain)
        result.update({f"{backend}_s": round(t_ext, 2), f"{backend}_clips_per_s": round(n / t_ext, 3),
                       f"{backend}_speedup": round(t_plain / t_ext, 2),
                       f"{backend}_cosine_mean": float(cos.mean()), f"{backend}_cosine_min": float(cos.min())})
        label = f"extractor --backend {backend}"
        print(f"{label:40s}: {t_ext:7.1f} s  {n / t_ext:6.2f} clips/s  {t_plain / t_ext:.2f}x the plain loop; "
              f"embedding cosine mean {cos.mean():.6f} min {cos.min():.6f}", flush=True)
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print("load average (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
