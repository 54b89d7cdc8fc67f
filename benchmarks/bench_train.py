"""Training throughput: ms per iteration and training examples/s of one train_step.

The official setting is Cnn14, 10-s 32-kHz clips, batch 32 with mixup (the model's front end sees 64
clips, the CNN body 32 mixed examples). On a CPU use small batches:

    python3 benchmarks/bench_train.py --batch_sizes 4 8 --precisions fp32 bf16
    python3 benchmarks/bench_train.py --batch_sizes 8 --loader --num_workers 2     # + real data loader
    python3 benchmarks/bench_train.py --cuda --batch_sizes 32 --precisions fp32 bf16 bf16+compile

Modes: in-memory batches (model step only: forward, fp32 loss, backward, Adam step), or ``--loader``:
the same step fed by the real pipeline (HDF5 of synthetic clips -> balanced sampler -> AudioSetDataset
-> DataLoader), reporting the share of time spent waiting for data. Precision names: fp32, bf16, fp16,
each optionally with "+compile" (torch.compile). Prints a Markdown table; ``--json`` saves the rows.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "pytorch"))  # the `panns` package in a checkout

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from panns import data_generator as dg  # noqa: E402
from panns import devices  # noqa: E402
from panns import models  # noqa: E402
from panns.training import config as tl  # noqa: E402
from panns.create_indexes import create_indexes  # noqa: E402
from panns.losses import clip_bce  # noqa: E402
from panns.utilities import Mixup  # noqa: E402


def make_loader_workspace(root: str, clips: int, clip_samples: int, sample_rate: int, classes_num: int) -> str:
    """A waveform HDF5 of noise clips with random labels and its index; returns the index path."""
    rs = np.random.RandomState(0)
    wav = os.path.join(root, "waveforms.h5")
    with h5py.File(wav, "w") as hf:
        hf.create_dataset("audio_name", data=np.array([f"Y{i:011d}.wav".encode() for i in range(clips)], dtype="S20"))
        hf.create_dataset("waveform", data=(rs.randn(clips, clip_samples) * 3000).astype(np.int16),
                          chunks=(1, clip_samples))
        target = np.zeros((clips, classes_num), dtype=bool)
        target[np.arange(clips), rs.randint(0, classes_num, clips)] = True
        hf.create_dataset("target", data=target)
        hf.attrs["sample_rate"] = np.int32(sample_rate)
    index = os.path.join(root, "index.h5")
    with contextlib.redirect_stdout(io.StringIO()):
        create_indexes(wav, index)
    return index


def bench(args, batch_size: int, precision_name: str, device: torch.device) -> dict:
    precision, compiled = precision_name.split("+")[0], precision_name.endswith("+compile")
    torch.manual_seed(0)
    spec = models.get_model_spec(args.model_type)
    model = models.create_model(args.model_type, classes_num=args.classes_num).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, amsgrad=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step_model = torch.compile(model) if compiled else model
    mixup = Mixup(1.0) if args.mixup else None
    clips = batch_size * (2 if mixup else 1)
    clip_samples = int(args.clip_seconds * spec.sample_rate)

    if args.loader:
        tmp = tempfile.TemporaryDirectory()
        index = make_loader_workspace(tmp.name, max(4 * clips, 64), clip_samples, spec.sample_rate, args.classes_num)
        sampler = dg.BalancedTrainSampler(index, batch_size=clips, random_seed=0)
        # The training path itself (main.py train): same loader, same host-to-device conversion.
        it = iter(dg.train_loader(spec.sample_rate, sampler, args.num_workers, device, seed=0))

        def next_batch():
            return dg.to_device(next(it), device)
    else:
        fixed = {"waveform": torch.randn(clips, clip_samples, device=device) * 0.1,
                 "target": (torch.rand(clips, args.classes_num, device=device) < 0.02).float()}

        def next_batch():
            return fixed

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def one_step():
        t0 = time.perf_counter()
        batch = next_batch()
        wait = time.perf_counter() - t0
        lam = None
        if mixup is not None:
            lam = torch.as_tensor(mixup.get_lambda(clips), dtype=torch.float32, device=device)
        out = tl.train_step(step_model, batch, optimizer, clip_bce, precision=precision, mixup_lambda=lam,
                            scaler=scaler)
        out["loss"].item()  # synchronises
        return wait

    for _ in range(args.warmup):
        one_step()
    sync()
    waits, t0 = 0.0, time.perf_counter()
    for _ in range(args.steps):
        waits += one_step()
    sync()
    total = time.perf_counter() - t0
    row = {"model": args.model_type, "device": str(device), "precision": precision_name, "batch": batch_size,
           "clips_read": clips, "ms_per_iter": 1000 * total / args.steps,
           "examples_per_s": batch_size * args.steps / total, "data_wait": waits / total if args.loader else None,
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        row["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="Cnn14", help="registry model (its default front end is used)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=None,
                   help="training examples per step (default: 4 8 on CPU, 32 on GPU)")
    p.add_argument("--precisions", nargs="+", default=None,
                   help="fp32 | bf16 | fp16, optionally +compile (default: fp32 bf16 on CPU, "
                        "fp32 bf16 bf16+compile on GPU)")
    p.add_argument("--clip_seconds", type=float, default=10.0, help="clip length")
    p.add_argument("--classes_num", type=int, default=527, help="output classes")
    p.add_argument("--no_mixup", dest="mixup", action="store_false", help="no mixup (loader batch = batch size)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile happens here)")
    p.add_argument("--loader", action="store_true", help="feed the step from the real HDF5 data loader")
    p.add_argument("--num_workers", type=int, default=2, help="loader workers with --loader")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--cuda", action="store_true", help="run on the GPU")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions in fp32 on the GPU")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    logging.getLogger("data_generator").setLevel(logging.ERROR)  # 'classes without clips' of the random labels
    if args.threads:
        torch.set_num_threads(args.threads)
    device = devices.select_device(args.cuda)
    if args.batch_sizes is None:
        args.batch_sizes = [32] if device.type == "cuda" else [4, 8]
    if args.precisions is None:
        args.precisions = ["fp32", "bf16", "bf16+compile"] if device.type == "cuda" else ["fp32", "bf16"]
    if device.type == "cuda":
        devices.configure_backends(device)  # cudnn.benchmark, as main.py train
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    rows = []
    print("| model | device | precision | batch (clips read) | ms/iter | examples/s | data wait |")
    print("|---|---|---|---|---|---|---|")
    for bs in args.batch_sizes:
        for prec in args.precisions:
            r = bench(args, bs, prec, device)
            rows.append(r)
            wait = "-" if r["data_wait"] is None else f"{100 * r['data_wait']:.0f}%"
            print(f"| {r['model']} | {r['device']} | {r['precision']} | {r['batch']} ({r['clips_read']}) | "
                  f"{r['ms_per_iter']:.0f} | {r['examples_per_s']:.2f} | {wait} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
