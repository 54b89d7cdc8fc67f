"""Forward-pass speed of Cnn14 on 10-s 32-kHz clips on this machine's CPU (or --device cuda).

Prints the parameter count and, per batch size, clips/s for
  * fp32 in the official memory layout: the official-style baseline (our fp32 model is numerically
    the official one, so this is the official code's speed),
  * fp32 + channels_last, and fp32 + BN folded into the convs + channels_last,
  * bf16 autocast + channels_last,
  * ONNX Runtime fp32: the model exported with ``torch.onnx.export`` (front end included; the
    export time is printed separately) and run by ``--backend onnxruntime``'s backend, and its
    static int8 quantisation (``--backend onnxruntime-int8``; "of peak" is then of the fp32 peak),
each with its fraction of the measured matmul peak of that dtype (Cnn14 = 42.2 GFLOP per 10-s clip
by the official counter). Settings are timed round-robin (best of --repeats) so that load changes
on a shared machine hit them alike.

    python3 benchmarks/bench_models.py                 # batches 1 and 8 (bf16 at batch 1 only)
    python3 benchmarks/bench_models.py --full          # also batch 32, bf16 at every batch
    python3 benchmarks/bench_models.py --batches 8 --no_bf16   # torch vs ONNX Runtime at batch 8
"""
import argparse
import copy
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

from panns import models
from panns import amp
from panns.pytorch_utils import count_parameters

CNN14_GFLOP = 42.22   # per 10-s clip, official counter (spec 7.13)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(dtype, device, n=2048, repeats=5):
    """Best-of-``repeats`` GFLOP/s of an n x n matmul."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def timed_forward(model, x, precision_name, device):
    if precision_name == "onnx":   # an OnnxBackend: numpy in, numpy out
        xn = x.cpu().numpy()
        t = time.perf_counter()
        model(xn)
        return time.perf_counter() - t
    with torch.no_grad(), amp.autocast(precision_name, device):
        t = time.perf_counter()
        model(x)
        _sync(device)
        return time.perf_counter() - t


def onnx_backends_for(model, int8: bool = True):
    """([(label, OnnxBackend)], seconds of export, seconds of int8 quantisation) for ``model``, or
    ([], reason, None). Sessions hold their graphs in memory, so the files are deleted right away."""
    try:
        from panns import onnx_backend
        from panns.checkpoint import ModelConfig
    except ImportError as e:
        return [], str(e), None
    if not onnx_backend.available():
        return [], "onnxruntime/onnx/onnxscript not installed", None
    cfg = ModelConfig.from_registry("Cnn14")
    with tempfile.TemporaryDirectory(prefix="bench_models_") as d:
        path = os.path.join(d, "Cnn14.onnx")
        t = time.perf_counter()
        onnx_backend.export_onnx(model, cfg, path)
        t_export = time.perf_counter() - t
        out = [("ONNX Runtime fp32 (exported, front end included)", onnx_backend.OnnxBackend(path))]
        t_int8 = None
        if int8:
            t = time.perf_counter()
            onnx_backend.quantize_int8(path, os.path.join(d, "Cnn14.int8.onnx"), cfg)
            t_int8 = time.perf_counter() - t
            out.append(("ONNX Runtime int8 convs (onnxruntime-int8)", onnx_backend.OnnxBackend(
                os.path.join(d, "Cnn14.int8.onnx"))))
        return out, t_export, t_int8


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes to time (default: 1 8; with --full: 1 8 32)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the best is kept")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--full", action="store_true",
                   help="add batch 32 and time bf16 at every batch size (slow without native bf16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no_onnx", action="store_true", help="skip the ONNX Runtime rows")
    p.add_argument("--no_bf16", action="store_true", help="skip the bf16 rows")
    p.add_argument("--no_int8", action="store_true", help="skip the ONNX Runtime int8 row")
    p.add_argument("--no_layouts", action="store_true", help="skip the channels_last / BN-folded torch rows")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = args.batches or ([1, 8, 32] if args.full else [1, 8])
    fast_bf16 = device.type == "cuda" or amp.cpu_has_fast_bf16()

    torch.manual_seed(0)
    model = models.create_model("Cnn14").to(device).eval()
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    folded = amp.fold_bn(model).to(memory_format=torch.channels_last)

    # Emulated bf16 matmul is ~100x slower than fp32 on AVX2-only CPUs: time a smaller one there.
    n_bf16 = 2048 if fast_bf16 else 512
    peak = {"fp32": matmul_gflops(torch.float32, device),
            "bf16": matmul_gflops(torch.bfloat16, device, n=n_bf16)}
    print(f"Cnn14: {count_parameters(model):,} trainable parameters, {CNN14_GFLOP} GFLOP per 10-s clip")
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {fast_bf16}")
    print(f"matmul peak: fp32 {peak['fp32']:.1f} GFLOP/s (2048x2048), "
          f"bf16 {peak['bf16']:.1f} GFLOP/s ({n_bf16}x{n_bf16})\n")

    settings = [("fp32, official layout (official-style baseline)", model, "fp32")]
    if not args.no_layouts:
        settings += [("fp32 + channels_last", channels_last, "fp32"),
                     ("fp32 + BN folded + channels_last", folded, "fp32")]
    if not args.no_bf16:
        settings.append(("bf16 autocast + channels_last", channels_last, "bf16"))
    if not args.no_onnx and device.type == "cpu":
        backends, t_export, t_int8 = onnx_backends_for(model, int8=not args.no_int8)
        if not backends:
            print(f"ONNX Runtime rows skipped: {t_export}")
        else:
            print(f"ONNX export (first run only; cached afterwards): {t_export:.1f} s"
                  + (f"; int8 quantisation: {t_int8:.1f} s" if t_int8 is not None else ""))
            settings += [(label, backend, "onnx") for label, backend in backends]
    print(f"{'setting':50s} {'batch':>5s} {'clips/s':>8s} {'GFLOP/s':>8s} {'of peak':>8s} {'vs base':>8s}")
    for b in batches:
        x = 0.1 * torch.randn(b, 320000, device=device)
        active = [s for s in settings if s[2] != "bf16" or fast_bf16 or args.full or b == 1]
        best = {s[0]: float("inf") for s in active}
        for name, m, prec in active:   # warm-up: oneDNN primitives, allocator
            timed_forward(m, x, prec, device)
        for _ in range(args.repeats):
            for name, m, prec in active:
                best[name] = min(best[name], timed_forward(m, x, prec, device))
        for name, m, prec in active:
            cps = b / best[name]
            gf = cps * CNN14_GFLOP
            ratio = f"{cps / (b / best[active[0][0]]):7.2f}x"
            print(f"{name:50s} {b:5d} {cps:8.2f} {gf:8.1f} {gf / peak['bf16' if prec == 'bf16' else 'fp32']:8.1%} "
                  f"{ratio}", flush=True)
    print("load average (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if not fast_bf16:
        print("\nno native bf16 here: the bf16 matmul 'peak' is an emulated one, and bf16 Cnn14 is "
              "slower than fp32 (use fp32; --precision auto picks it)")


if __name__ == "__main__":
    main()
