"""Live audio (issue 26): real-time factor, latency and consistency of ``inference.py stream``.

Generates a ``--seconds`` synthetic 32-kHz clip (the demo generator's sounds) and a checkpoint of
``--model_type`` (random weights, official ``{'model': ...}`` format; speed does not depend on the
weights), then, each as a fresh process with a fresh ONNX export cache in the work folder:

1. ``python3 pytorch/inference.py stream ... --chunk_seconds 0.1`` and ``--chunk_seconds 3`` (hop
   1 s, window 10 s, ``--backend auto`` unless told): are the output lines identical (the last,
   timing line aside)? Prints each run's real_time_factor and latency_seconds;
2. ``audio_tagging`` of the first 10 s (cropped to a file): the same top-10 labels as the stream's
   tags at time 10 s? the largest probability difference;
3. with ``--sweep``: the Python API over the clip for several (hop, look-ahead) pairs with a SED
   model (``--sweep_model``), printing real-time factor and worst latency per pair (the README's
   latency table).

    python3 benchmarks/bench_stream.py                     # Cnn14, 30-s clip, backend auto
    python3 benchmarks/bench_stream.py --backend torch
    python3 benchmarks/bench_stream.py --sweep --seconds 20

The machine this runs on may be shared: the real-time factor is the wall time spent inside
push/close per second of audio, so other jobs on the CPU inflate it; the CPU seconds per audio
second (all threads of the process) are printed beside it (on a quiet machine whose model runs on
all of its N cores, the real-time factor approaches that figure / N).
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


def make_clip(path: str, seconds: float, sample_rate: int = 32000) -> None:
    import soundfile as sf

    from panns.demo.data import CLASSES, synth_clip

    if os.path.exists(path):
        return
    rs = np.random.RandomState(0)
    parts = [synth_clip(rs, list(rs.choice(len(CLASSES), size=2, replace=False)), 10.0, sample_rate)
             for _ in range(int(np.ceil(seconds / 10)))]
    sf.write(path, np.concatenate(parts)[:int(seconds * sample_rate)], sample_rate, subtype="PCM_16")


def make_checkpoint(path: str, model_type: str) -> None:
    import torch

    from panns import models

    if os.path.exists(path):
        return
    torch.manual_seed(0)
    torch.save({"model": models.create_model(model_type).state_dict()}, path)


def run_cli(args: list, env: dict) -> tuple:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, os.path.join(REPO, "pytorch", "inference.py")] + args, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr[-3000:]}")
    backend = [line for line in r.stderr.splitlines() if "backend auto" in line]
    return r.stdout.splitlines(), time.perf_counter() - t, backend


def sweep(work: str, clip: str, model_type: str, backend: str, pairs) -> None:
    import soundfile as sf

    import panns

    ckpt = os.path.join(work, f"{model_type}_random.pth")
    make_checkpoint(ckpt, model_type)
    os.environ["PANNS_CACHE"] = os.path.join(work, "cache")
    m = panns.load(ckpt, model_type=model_type, backend=backend)
    audio, sr = sf.read(clip, dtype="float32")
    print(f"\nsweep: {model_type}, {len(audio) / sr:.0f} s, backend {m.runtime.backend_name}, window 10 s, "
          "chunks of 0.1 s")
    print("| hop (s) | look-ahead (s) | real-time factor | CPU s per audio s | worst latency (s) |")
    print("|---|---|---|---|---|")
    step = int(0.1 * sr)
    for hop, lookahead in pairs:
        s = m.stream(hop_seconds=hop, window_seconds=10.0, lookahead_seconds=lookahead)
        for i in range(0, len(audio), step):
            s.push(audio[i:i + step], sr)
        s.close()
        st = s.stats()
        cpu = st["cpu_seconds"] / st["audio_seconds"]
        print(f"| {hop:g} | {lookahead:g} | {st['real_time_factor']:.2f} | {cpu:.2f} | {st['latency_seconds']:.2f} |",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="clip length (default 30 s)")
    p.add_argument("--model_type", default="Cnn14", help="model of the CLI runs (default Cnn14)")
    p.add_argument("--backend", default="auto", help="backend of every run (default auto)")
    p.add_argument("--hop_seconds", type=float, default=1.0)
    p.add_argument("--window_seconds", type=float, default=10.0)
    p.add_argument("--sweep", action="store_true", help="also the (hop, look-ahead) table through the Python API")
    p.add_argument("--sweep_only", action="store_true", help="only the (hop, look-ahead) table")
    p.add_argument("--sweep_model", default="Cnn14_DecisionLevelMax", help="SED model of the sweep")
    p.add_argument("--workdir", default=None, help="folder for clip/checkpoint/cache (default: a temp dir)")
    args = p.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="bench_stream_")
    os.makedirs(work, exist_ok=True)
    clip = os.path.join(work, f"clip_{args.seconds:g}s.wav")
    make_clip(clip, args.seconds)
    print(f"work folder {work}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the start")
    if not args.sweep_only:
        ckpt = os.path.join(work, f"{args.model_type}_random.pth")
        make_checkpoint(ckpt, args.model_type)
        env = dict(os.environ, PANNS_CACHE=os.path.join(work, "cache"))
        common = ["--model_type", args.model_type, "--checkpoint_path", ckpt, "--backend", args.backend]
        runs = {}
        for chunk in (0.1, 3.0):
            lines, wall, backend = run_cli(["stream"] + common + [
                "--audio_path", clip, "--chunk_seconds", str(chunk), "--hop_seconds", str(args.hop_seconds),
                "--window_seconds", str(args.window_seconds)], env)
            runs[chunk] = lines
            last = json.loads(lines[-1])
            print(f"stream --chunk_seconds {chunk:g}: real_time_factor {last['real_time_factor']:.3f}, "
                  f"latency_seconds {last['latency_seconds']:.2f}, CPU seconds per audio second "
                  f"{last['cpu_seconds'] / last['audio_seconds']:.3f}, {last['windows']} windows, backend "
                  f"{last['backend']} ({wall:.0f} s wall with start-up{'; ' + backend[0] if backend else ''})",
                  flush=True)
        same = runs[0.1][:-1] == runs[3.0][:-1]
        print(f"identical lines for 0.1-s and 3-s chunks: {same} ({len(runs[0.1]) - 1} lines)")
        import soundfile as sf

        audio, sr = sf.read(clip, dtype="int16")
        first = os.path.join(work, "first_window.wav")
        sf.write(first, audio[:int(args.window_seconds * sr)], sr, subtype="PCM_16")
        out = os.path.join(work, "first_window.json")
        run_cli(["audio_tagging"] + common + ["--audio_path", first, "--output", out], env)
        ref = json.load(open(out))["results"][0]["tags"]
        got = next(json.loads(x)["tags"] for x in runs[0.1] if json.loads(x).get("time") == args.window_seconds)
        labels_same = [lb for lb, _ in got] == [t["label"] for t in ref]
        diff = max(abs(pr - t["probability"]) for (_, pr), t in zip(got, ref))
        print(f"tags at time {args.window_seconds:g} s vs audio_tagging of the first {args.window_seconds:g} s: "
              f"same top-10 labels {labels_same}, largest probability difference {diff:.2e}")
    if args.sweep or args.sweep_only:
        sweep(work, clip, args.sweep_model, args.backend,
              [(0.5, 0.5), (1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (2.0, 1.0)])
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
