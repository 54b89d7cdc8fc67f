"""One prepared check of the GPU paths; prints one Markdown table (run through ``benchmarks/gpu_check.sh``).

Stages (each reported as a row; a failing stage is a FAIL row with its one-line error, the others still run):

1. device: name, torch / CUDA versions, compute capability, native bf16, what ``--precision auto`` picks.
2. golden: official models (deterministic weights, tests/golden) on the device: max error relative to the
   official outputs with TF32 globally off and on (within 2e-4 with it off), and the front end alone against
   the same modules on the CPU (fp32, like the golden outputs): within 2e-4 in both modes, since it switches
   TF32 off inside itself (also shown: the modules called without that guard, and the log-mel error in dB).
   specaugment: torchlibrosa's per-example SpecAugment loop vs the one-mask version: same output and RNG
   state, and the time per call on a training batch.
3. loader: int16 batches -> to_device are bit-identical to the float path on the device.
4. workspace: 10-s 32 kHz clips made by the project's demo data generator, packed and indexed.
   ceiling: the model-only training step (bf16, fused Adam, synthetic batch already on the GPU) eager vs compiled,
   each with and without channels_last: what the GPU can do with this model, examples/s (run before the training
   runs, with the workspace's classes: its compiled channels_last step is the default run's graph, which then
   can come from inductor's on-disk cache: not yet seen on a GPU); and the evaluation forward alone (compiled,
   eval batch, on the device): what an evaluation could reach without its loader. Both also as TFLOP/s of the
   model's own arithmetic (FLOPs counted on the meta device), to hold against the card's matrix rate.
   graph breaks: the compiled training step as the trainer sets it up (``graph breaks: 0``).
5. train: ``pytorch/main.py train`` for --steps steps: the default configuration of ``scripts/4_train.sh``
   (``--precision auto --compile auto``), bf16 eager and fp32 (IEEE): it/s, examples/s, data wait and peak GPU
   memory from the run's last log line. On H100/H200-class GPUs the default FAILs below 1,900 examples/s and bf16
   eager below 1,250 (a speed row that passes at any speed checks nothing).
   profile: one real eager bf16 step split into loader wait, host->device, front end, body forward+backward,
   optimizer (each phase timed to completion).
   eval: the default run's own last evaluation (the workspace's eval set repeated to >= 2,048 clips; compiled
   forward, cuFFT spectrogram, batches copied a batch ahead, rows kept in host memory since the first
   evaluation on CUDA): clips/s, the first evaluation's beside it, and an AudioSet round's share of wall time
   at the official cadence (2,000 steps between evaluations of ~39k clips) at the default's speed (goal <= 10 %),
   with the forward rate (clips/s, TFLOP/s) that 10 % takes at that speed.
6. resume: 2N steps straight (saving at N) vs resumed from that step-N checkpoint, ``--deterministic``, eager: weights
   and optimizer bit-equal?
7. inference: ``inference.py audio_tagging`` / ``sound_event_detection`` / ``extract_embeddings`` on the
   device vs the CPU (max abs difference of the outputs).
   extract: ``extract_embeddings`` on the GPU over >= 1,000 clips, clips/s with start-up excluded (two runs of
   different sizes, their difference).
8. fine-tune: ``finetune_template.py train`` for 20 steps in fp16 (the GradScaler path).
9. total: the whole check's seconds (goal <= 6 minutes on an H100/H200: one device lease holds a run and a rerun).

``--dry-run`` runs every stage on the CPU at toy size (Cnn6, 1-s clips, a few steps; fp32 training only, the
compiled variants captured with the eager backend, inference's commands run once and compared with themselves) - the test suite runs it so the script is known to work before a GPU ever sees it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "pytorch"))  # the `panns` package in a checkout
sys.path.insert(0, os.path.join(REPO, "tests", "golden"))  # deterministic official weights (fill.py, specs.py)

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from panns import checkpoint  # noqa: E402
from panns import data_generator as dg  # noqa: E402
from panns import devices  # noqa: E402
from panns import models  # noqa: E402
from panns.create_indexes import create_indexes  # noqa: E402
from panns.dataset import pack_waveforms_to_hdf5  # noqa: E402
from panns.demo.data import make_demo_dataset  # noqa: E402

EVAL_LINE = re.compile(r"Validate (bal|test) mAP: .*?; (\d+) clips in ([\d.]+) s, \S+ clips/s, metrics ([\d.]+) s\)")
LOG_LINE = re.compile(r"iteration: (\d+), loss: ([\d.na]+), ([\d.]+) it/s, ([\d.]+) examples/s, data wait (\d+)%"
                      r"(?:, peak memory ([\d.]+) GiB)?")


class Check:
    """Collects the table rows; ``stage`` runs one stage and records OK/FAIL with its elapsed time."""

    def __init__(self, out_dir: str, only=frozenset(), deadline: float = 0.0):
        self.rows: List[Dict[str, str]] = []
        self.out_dir = out_dir
        self.started = time.perf_counter()
        self.deadline = deadline   # seconds after which no stage starts (0: none)
        self.only = set(only)   # stages to run (empty: all); the workspace runs whenever one of them needs it
        self.speeds: Dict[str, float] = {}   # train variant -> examples/s (read by the eval stage)
        # the default run's last evaluation: set -> (clips, seconds, metrics seconds) (read by the eval stage)
        self.evaluation: Dict[str, tuple] = {}
        self.first_evaluation: Dict[str, tuple] = {}   # its first (compiles, reads the files)
        self.eval_kept = False   # the run kept the evaluation sets in host memory after that first read
        self.eval_ceiling = float("nan")   # clips/s of the evaluation forward alone (ceiling stage)
        self.flops: Dict[str, float] = {}   # model_flops() of the ceiling stage's model (read by the eval stage)
        self.stage_seconds: Dict[str, float] = {}   # stage -> seconds (the total row lists them: what to trim)

    def add(self, stage: str, item: str, result: str, ok: bool = True, seconds: float = float("nan")) -> None:
        self.rows.append({"stage": stage, "item": item, "result": result, "status": "ok" if ok else "FAIL",
                          "seconds": "" if seconds != seconds else f"{seconds:.0f}"})
        print(f"[{stage}] {item}: {result} ({'ok' if ok else 'FAIL'})", flush=True)

    def stage(self, name: str, fn: Callable[[], None]) -> None:
        needs_data = {"loader", "train", "eval", "profile", "resume", "inference", "extract", "fine-tune"}
        if self.only and name not in self.only and not (name == "workspace" and self.only & needs_data):
            return
        t0 = time.perf_counter()
        if self.deadline and t0 - self.started > self.deadline:
            self.add(name, "stage", f"not run: {t0 - self.started:.0f} s had passed (--deadline {self.deadline:.0f})",
                     ok=False)
            return
        try:
            fn()
        except Exception as e:  # a failing stage is reported, the next stages still run
            detail = " ".join(str(e).split())[:300]
            self.add(name, "stage", f"{type(e).__name__}: {detail}", ok=False, seconds=time.perf_counter() - t0)
            with open(os.path.join(self.out_dir, f"{name}.traceback.txt"), "w") as f:
                f.write(traceback.format_exc())
        finally:
            self.stage_seconds[name] = time.perf_counter() - t0

    def table(self) -> str:
        lines = ["| stage | item | result | status | s |", "|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['item']} | {r['result']} | {r['status']} | {r['seconds']} |" for r in self.rows]
        return "\n".join(lines)

    @property
    def failed(self) -> int:
        return sum(r["status"] != "ok" for r in self.rows)


def run(cmd: List[str], log_path: str, timeout: float, env: Optional[dict] = None) -> str:
    """Run ``cmd``; stdout+stderr go to ``log_path``; raise with the last error line on failure."""
    t0 = time.perf_counter()
    with open(log_path, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO,
                           env={**os.environ, **(env or {})})
    text = open(log_path).read()
    if r.returncode != 0:
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"{os.path.basename(cmd[1])} exited {r.returncode} after {time.perf_counter() - t0:.0f} s: "
                           f"{last[0][:200]} (log {log_path})")
    return text


# ------------------------------------------------------------------------------------------- stages
def stage_device(c: Check, device: torch.device) -> None:
    cuda = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    c.add("device", "device", devices.describe(device))
    c.add("device", "versions", f"torch {torch.__version__}, CUDA {cuda}, cuDNN {cudnn}, python {sys.version.split()[0]}")
    c.add("device", "--precision auto", f"inference {devices.resolve_precision('auto', device)}, "
                                        f"training {devices.resolve_precision('auto', device, training=True)}")


@contextlib.contextmanager
def _reduced_fp32(on: bool, device: torch.device):
    """Global reduced-precision fp32 switches set the way users set them (TF32 for cuDNN and cuBLAS on CUDA; oneDNN
    bf16 for fp32 convs/matmuls on CPUs); every legacy and per-operator setting is put back on exit."""
    ops = [("cuda", "conv"), ("cuda", "rnn"), ("cuda", "matmul"), ("mkldnn", "conv"), ("mkldnn", "matmul")]
    before = [(b, o, torch._C._get_fp32_precision_getter(b, o)) for b, o in ops]
    legacy = (torch._C._get_cudnn_allow_tf32(), torch._C._get_float32_matmul_precision())
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
        else:
            torch.backends.mkldnn.conv.fp32_precision = torch.backends.mkldnn.matmul.fp32_precision = \
                "bf16" if on else "none"
        yield
    finally:
        torch._C._set_cudnn_allow_tf32(legacy[0])
        torch._C._set_float32_matmul_precision(legacy[1])
        for b, o, value in before:
            torch._C._set_fp32_precision_setter(b, o, value)


def _logmel_with_db(model: torch.nn.Module, x: torch.Tensor):
    """(normalised log-mel from ``model._logmel``, the log-mel in dB before bn0 seen on the way)."""
    seen = []
    hook = model.logmel_extractor.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            return model._logmel(x), seen[0]
    finally:
        hook.remove()


def _front_end_errors(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> Dict[str, float]:
    """The model's front end on the device against the same modules on the CPU in fp32 (where the golden outputs
    come from): max error of the normalised log-mel relative to its largest value ('guarded': through ``_logmel``
    and its true-fp32 region; 'unguarded': the same modules called directly, under the global switches), and the
    largest log-mel difference in dB (before bn0) of both."""
    ref, ref_db = _logmel_with_db(copy.deepcopy(model).cpu(), x.cpu())
    guarded, db = _logmel_with_db(model, x.to(device))
    with torch.no_grad():
        raw_db = model.logmel_extractor(model.spectrogram_extractor(x.to(device)))
        unguarded = model.bn0(raw_db.transpose(1, 3)).transpose(1, 3)
    scale = float(ref.abs().max())
    rel = lambda t: float((t.float().cpu() - ref).abs().max()) / scale  # noqa: E731
    db_err = lambda t: float((t.float().cpu() - ref_db).abs().max())  # noqa: E731
    return {"guarded": rel(guarded), "unguarded": rel(unguarded), "db": db_err(db), "raw_db": db_err(raw_db)}


def stage_golden(c: Check, device: torch.device, names: List[str]) -> None:
    """Official outputs (relative error, limit 2e-4) with reduced-precision fp32 globally off and on, and the front
    end alone against the CPU's: within 2e-4 in both modes (it switches TF32 off inside; the unguarded numbers show
    what it would be otherwise)."""
    from fill import fill_state_dict, test_waveform
    from specs import SPECS

    reduced = "TF32" if device.type == "cuda" else "oneDNN bf16 for fp32"
    for name in names:
        ref = np.load(os.path.join(REPO, "tests", "golden", name + ".npz"))
        kw = {k: v for k, v in SPECS[name].items() if k != "cls"}
        model = models.MODELS[name].cls(**kw)
        fill_state_dict(model, str(ref["head"]), float(ref["head_scale"]))
        model = model.to(device).eval()
        x = test_waveform(kw["sample_rate"])
        model_parts, front_parts = [], []
        model_ok = front_ok = True
        for on in (False, True):
            with _reduced_fp32(on, device):
                with torch.no_grad():
                    out = model(x.to(device))
                front = _front_end_errors(model, x, device)
            err = max(float(np.abs(out[k].float().cpu().numpy() - ref["out_" + k]).max() /
                            (np.abs(ref["out_" + k]).max() + 1e-8)) for k in out)
            mode = f"{reduced} {'on' if on else 'off'}"
            model_parts.append(f"{mode}: {err:.1e}")
            front_parts.append(f"{mode}: {front['guarded']:.1e}, max {front['db']:.2g} dB (unguarded "
                               f"{front['unguarded']:.1e}, {front['raw_db']:.2g} dB)")
            model_ok = model_ok and (on or err < 2e-4)
            front_ok = front_ok and front["guarded"] < 2e-4
        c.add("golden", name, "max rel. error " + ", ".join(model_parts) + f" (limit 2e-4 with {reduced} off)",
              ok=model_ok)
        c.add("golden", f"{name} front end", "vs the CPU, max rel. error " + ", ".join(front_parts) +
              " (limit 2e-4 in both)", ok=front_ok)
        del model


def stage_specaugment(c: Check, device: torch.device, dry: bool) -> None:
    """SpecAugment on the device: torchlibrosa's per-example loop vs the one-mask version (panns.spec_augment), same
    seed: identical output and RNG state, and the time per call on a training batch of log-mels."""
    from torchlibrosa.augmentation import SpecAugmentation as LoopSpecAugmentation

    from panns.spec_augment import SpecAugmentation

    shape = (4, 1, 101, 64) if dry else (32, 1, 1001, 64)   # batch of 1-s (dry) or 10-s clips, 64 mel bins
    x = torch.randn(shape, device=device)
    kinds = {"loop (torchlibrosa)": LoopSpecAugmentation(64, 2, 8, 2), "one mask": SpecAugmentation(64, 2, 8, 2)}
    outs, states = [], []
    for module in kinds.values():
        torch.manual_seed(0)
        outs.append(module(x.clone()))
        states.append(torch.get_rng_state())
    same = torch.equal(outs[0], outs[1]) and torch.equal(states[0], states[1])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    reps, rounds = (3, 2) if dry else (50, 3)
    best = {k: float("inf") for k in kinds}
    for _ in range(rounds):   # interleaved rounds, best of each: both see the same load
        for k, module in kinds.items():
            xs = [x.clone() for _ in range(reps)]
            sync()
            t0 = time.perf_counter()
            for xi in xs:
                module(xi)
            sync()
            best[k] = min(best[k], (time.perf_counter() - t0) / reps)
    loop, mask = best.values()
    c.add("specaugment", f"batch {shape[0]} x {shape[2]} frames x {shape[3]} mel",
          f"same output and RNG state: {same}; per call: loop {loop * 1e3:.2f} ms, one mask {mask * 1e3:.2f} ms "
          f"({loop / mask:.1f}x)", ok=same)


def stage_loader(c: Check, device: torch.device, ws: Dict[str, str]) -> None:
    metas = next(iter(dg.EvaluateSampler(ws["eval_index"], batch_size=4)))
    raw = dg.collate_fn(dg.AudioSetDataset(sample_rate=ws["sample_rate"], raw=True).__getitems__(metas))
    flt = dg.collate_fn(dg.AudioSetDataset(sample_rate=ws["sample_rate"]).__getitems__(metas))
    if device.type == "cuda":
        raw = raw.pin_memory()
    a, b = dg.to_device(raw, device), dg.to_device(flt, device)
    same = all(torch.equal(a[k], b[k]) for k in ("waveform", "target"))
    allv = np.arange(-32768, 32768, dtype=np.int16)
    every = dg.to_device({"waveform": allv[None]}, device)["waveform"].cpu().numpy()[0]
    exact = bool(np.array_equal(every, (allv / 32767.0).astype(np.float32)))
    c.add("loader", "int16 -> float on the device", f"batch identical to the float path: {same}; "
                                                    f"all 65,536 int16 values exact: {exact}", ok=same and exact)
    # A real training loader batch (worker + pin-memory thread): page-locked, so its copy is asynchronous.
    sampler = dg.EvaluateSampler(ws["eval_index"], batch_size=4)
    loader = dg.train_loader(ws["sample_rate"], sampler, 1, device, seed=0)
    batch = next(iter(loader))
    pinned = {k: bool(v.is_pinned()) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    want = device.type == "cuda"
    c.add("loader", "loader batch page-locked", f"{pinned} (torch {torch.__version__})",
          ok=all(v == want for v in pinned.values()) and bool(pinned) == want)



def _train_step_fn(model: torch.nn.Module, device: torch.device, batch: int, samples: int, compiled: bool,
                   backend: str):
    """A model-only training step as the trainer runs it (bf16 autocast on CUDA, mixup, fused Adam amsgrad on
    CUDA), on a synthetic batch already on the device; returns step()."""
    from panns.losses import clip_bce
    from panns.training.config import train_step
    from panns.training.core import external_spec_augment

    cuda = device.type == "cuda"
    precision = "bf16" if cuda else "fp32"
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, amsgrad=True,
                           **({"fused": True} if cuda else {}))
    x = 0.1 * torch.randn(2 * batch, samples, device=device)
    y = (torch.rand(2 * batch, model.fc_audioset.out_features, device=device) < 0.02).float()
    half = torch.rand(batch, device=device)
    lam = torch.stack([half, 1 - half], dim=1).reshape(-1)   # (2B,) pairs (l, 1 - l), as Mixup gives
    run_model = model
    if compiled:   # as the trainer sets it up
        external_spec_augment(model, True)
        models.prepare_fft(model)
        run_model = torch.compile(model, backend=backend)

    def step():
        if compiled:
            model.stage_spec_augment(2 * batch, samples, True)
        return train_step(run_model, {"waveform": x, "target": y}, opt, clip_bce, precision=precision, mixup_lambda=lam)
    return step


def _timed(step, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per step after ``warmup`` steps."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def model_flops(model_type: str, classes_num: int, samples: int, batch: int) -> Dict[str, float]:
    """FLOPs per example of one training step's forward + backward (``2 * batch`` clips mixed into ``batch``
    examples, as the recipe) and per clip of an evaluation forward, counted by ``torch.utils.flop_counter`` on
    the meta device (shapes only, no arithmetic): a rate's TFLOP/s is then the model's useful work per second, the
    figure to hold against the card's matrix rate."""
    from torch.utils.flop_counter import FlopCounterMode

    model = models.create_model(model_type, classes_num=classes_num).to("meta")
    x = torch.empty(2 * batch, samples, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = model.train()(x, torch.full((2 * batch,), 0.5, device="meta"))["clipwise_output"]
        out.sum().backward()
    train = counter.get_total_flops() / batch
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x[:batch])
    return {"train": train, "eval": counter.get_total_flops() / batch}


def flop_rate(flops_per_s: float) -> str:
    """``flops_per_s`` in TFLOP/s, or GFLOP/s below one (a CPU dry run)."""
    return f"{flops_per_s / 1e12:,.0f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:,.1f} GFLOP/s"


def stage_ceiling(c: Check, device: torch.device, a, classes_num: int = 527) -> Dict[str, float]:
    """Model-only training step, eager vs compiled x NCHW vs channels_last: examples/s (batch = --batch_size mixed
    examples from 2x clips, as the recipe). With the workspace's ``classes_num`` the compiled channels_last model
    is the graph the default training run compiles next (which can then come from inductor's on-disk cache)."""
    from panns import amp

    samples = 32000 if a.dry_run else 320000
    warm, steps = (1, 2) if a.dry_run else (5, 30)
    backend = "eager" if a.dry_run else "inductor"
    rates = {}
    amp.pin_ieee_fp32()
    try:
        for compiled in (False, True):
            for cl in (False, True):
                torch.manual_seed(0)
                model = models.create_model(a.model_type, classes_num=classes_num).to(device).train()
                if cl:
                    model = model.to(memory_format=torch.channels_last)
                step = _train_step_fn(model, device, a.batch_size, samples, compiled, backend)
                sec = _timed(step, device, warm + (2 if compiled else 0), steps)
                name = f"{'compile' if compiled else 'eager'}{' + channels_last' if cl else ''}"
                rates[name] = a.batch_size / sec
                del model, step
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        amp.unpin_ieee_fp32()
        torch._dynamo.reset()
    best = max(rates.values())
    c.flops = model_flops(a.model_type, classes_num, samples, a.batch_size)
    c.add("ceiling", f"{a.model_type} model-only step, batch {a.batch_size}, {classes_num} classes, "
                     f"{'bf16' if device.type == 'cuda' else 'fp32'}",
          ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()) + f" examples/s (ceiling {best:,.0f} = "
          f"{flop_rate(best * c.flops['train'])} of the model's {c.flops['train'] / 1e9:,.1f} GFLOP per "
          f"example, forward + backward)")
    _eval_ceiling(c, device, a, classes_num, samples, warm, steps, backend)
    return rates


def _eval_ceiling(c: Check, device: torch.device, a, classes_num: int, samples: int, warm: int, steps: int,
                  backend: str) -> None:
    """The evaluation forward alone, as a compiled CUDA run evaluates (eval mode, compiled at one shape,
    channels_last and the cuFFT spectrogram on CUDA, the eval batch, no grad), on a batch already on the device:
    the clips/s an evaluation could reach without its loader (the eval row shows what it reaches with it)."""
    from panns import amp

    from panns.training.audioset import eval_batch_size
    from panns.training.core import prepare_model

    cuda = device.type == "cuda"
    batch = eval_batch_size(0, a.batch_size, a.batch_size, device)   # the training run's, one process
    model = models.create_model(a.model_type, classes_num=classes_num).to(device)
    prepare_model(model, device)
    run_model = torch.compile(model.eval(), backend=backend, dynamic=False)
    x = 0.1 * torch.randn(batch, samples, device=device)
    precision = "bf16" if cuda else "fp32"

    def forward():
        with torch.no_grad(), amp.autocast(precision, device):
            return run_model(x)

    amp.pin_ieee_fp32()
    try:
        sec = _timed(forward, device, warm + 2, steps)
    finally:
        amp.unpin_ieee_fp32()
        torch._dynamo.reset()
    c.eval_ceiling = batch / sec
    c.add("ceiling", f"{a.model_type} evaluation forward, batch {batch}, compiled"
                     f"{' + channels_last, cuFFT spectrogram' if cuda else ''}, {precision}",
          f"{c.eval_ceiling:,.0f} clips/s = {flop_rate(c.eval_ceiling * c.flops['eval'])} of "
          f"{c.flops['eval'] / 1e9:,.1f} GFLOP per clip: an AudioSet round's forward alone "
          f"~{AUDIOSET_EVAL_CLIPS / c.eval_ceiling:.1f} s")


def stage_graph_breaks(c: Check, device: torch.device, a) -> None:
    """The compiled forwards as the trainer sets them up (external SpecAugment draws, IEEE fp32 pinned, the cuFFT
    decision made eagerly): torch._dynamo.explain of the training forward with mixup, and of the evaluation
    forward (eval mode, cuFFT spectrogram on CUDA, no grad)."""
    from panns import amp
    from panns.training.core import external_spec_augment, prepare_model

    samples = 32000 if a.dry_run else 320000
    model = models.create_model(a.model_type).to(device).train()
    prepare_model(model, device)
    external_spec_augment(model, True)
    x = 0.1 * torch.randn(4, samples, device=device)
    lam = torch.rand(4, device=device)
    amp.pin_ieee_fp32()
    try:
        model.stage_spec_augment(4, samples, True)
        with amp.autocast("bf16" if device.type == "cuda" else "fp32", device):
            train_ex = torch._dynamo.explain(model)(x, lam)
            torch._dynamo.reset()
            model.eval()
            with torch.no_grad():
                eval_ex = torch._dynamo.explain(model)(x)
    finally:
        amp.unpin_ieee_fp32()
        torch._dynamo.reset()
    for what, ex in (("training forward (mixup, SpecAugment)", train_ex), ("evaluation forward", eval_ex)):
        reasons = "; ".join(" ".join(str(r.reason).split())[:120] for r in ex.break_reasons[:3])
        c.add("graph breaks", f"{a.model_type} {what}",
              f"graph breaks: {ex.graph_break_count}, graphs {ex.graph_count}" + (f" ({reasons})" if reasons else ""),
              ok=ex.graph_break_count == 0)


def stage_workspace(root: str, dry: bool, c: Check) -> Dict[str, str]:
    classes, seconds = (3, 1.0) if dry else (10, 10.0)
    per_class = {"balanced_train": 2 if dry else 10, "eval": 1 if dry else 3, "unbalanced_train": 0}
    ds, ws = os.path.join(root, "dataset"), os.path.join(root, "workspace")
    t0 = time.perf_counter()
    make_demo_dataset(ds, classes_num=classes, clips_per_class=per_class, clip_seconds=seconds, sample_rate=32000,
                      unbalanced_parts=1, seed=0, multi_label_fraction=0.2)
    labels = os.path.join(ds, "metadata", "class_labels_indices.csv")
    for split in ("balanced_train", "eval"):
        wav = os.path.join(ws, "hdf5s", "waveforms", f"{split}.h5")
        pack_waveforms_to_hdf5(os.path.join(ds, "metadata", f"{split}_segments.csv"),
                               os.path.join(ds, "audios", f"{split}_segments"), wav, sample_rate=32000,
                               clip_seconds=seconds, class_labels_csv=labels, progress=False)
        create_indexes(wav, os.path.join(ws, "hdf5s", "indexes", f"{split}.h5"))
    with h5py.File(os.path.join(ws, "hdf5s", "waveforms", "balanced_train.h5"), "r") as hf:
        shape = hf["waveform"].shape
    c.add("workspace", "demo data", f"{classes} classes, {sum(per_class.values()) * classes} clips of {seconds:g} s "
                                    f"at 32 kHz (train waveforms {shape})", seconds=time.perf_counter() - t0)
    # The eval index repeats its clips up to >= 2,048 rows: the training runs' evaluations then run many full
    # batches, as on AudioSet, and the eval stage reads a throughput (not a start-up) off the default run's log.
    index = os.path.join(ws, "hdf5s", "indexes", "eval.h5")
    with h5py.File(index, "r") as hf:
        rows = {key: hf[key][()] for key in hf}
        attrs = dict(hf.attrs)
        unique = len(rows["audio_name"])
    repeats = 2 if dry else -(-2048 // unique)
    tmp = index + ".tmp"
    with h5py.File(tmp, "w") as hf:
        hf.attrs.update(attrs)
        for key, value in rows.items():
            hf.create_dataset(key, data=np.concatenate([value] * repeats))
    os.replace(tmp, index)
    eval_clips = unique * repeats
    c.add("workspace", "eval index", f"{unique} clips x {repeats} = {eval_clips} rows")
    return {"dataset": ds, "workspace": ws, "labels": labels, "sample_rate": 32000, "classes": classes,
            "eval_index": os.path.join(ws, "hdf5s", "indexes", "eval.h5"), "eval_clips": eval_clips,
            "train_index": os.path.join(ws, "hdf5s", "indexes", "balanced_train.h5")}


def train_cmd(ws: Dict[str, str], a, steps: int, precision: str, extra: List[str] = ()) -> List[str]:
    cmd = [sys.executable, os.path.join(REPO, "pytorch", "main.py"), "train", "--workspace", ws["workspace"],
           "--model_type", a.model_type, "--data_type", "balanced_train", "--class_labels_csv", ws["labels"],
           "--batch_size", str(a.batch_size), "--early_stop", str(steps), "--eval_every", "1000000",
           "--save_every", "1000000", "--log_every", str(max(1, min(a.log_every, steps))),
           "--num_workers", str(a.num_workers), "--precision", precision,
           "--overwrite"]   # every variant and the resume stage run in one run folder, one after another
    return cmd + (["--cuda"] if a.cuda else []) + list(extra)


def ckpt_dir(ws: Dict[str, str], a) -> str:
    from panns.training.config import TrainConfig

    return TrainConfig(workspace=ws["workspace"], model_type=a.model_type, data_type="balanced_train",
                       batch_size=a.batch_size).checkpoints_dir


# Training variants: (row name, --precision, extra flags). "default" is what scripts/4_train.sh runs.
TRAIN_VARIANTS = {"default": ("auto", []), "bf16 eager": ("bf16", ["--compile", "off"]),
                  "fp32 (IEEE) eager": ("fp32", ["--compile", "off"])}
# Goals on H100/H200-class GPUs (Cnn14, batch 32): below them a row FAILs.
TRAIN_GOALS = {"default": 1900.0, "bf16 eager": 1250.0}
TOTAL_GOAL_S = 360   # the whole check on an H100/H200
AUDIOSET_EVAL_CLIPS = 20550 + 18887   # balanced train + eval sets: what every evaluation of an AudioSet run reads
# Steps at most per variant: IEEE fp32 runs at ~1/7 of the default's speed; two 50-step windows show its rate.
TRAIN_STEPS = {"fp32 (IEEE) eager": 100}


def _goal_applies(device: torch.device, a) -> bool:
    if device.type != "cuda" or a.model_type != "Cnn14" or a.batch_size != 32:
        return False
    name = torch.cuda.get_device_name(device)
    return any(k in name for k in ("H100", "H200", "GH200"))


def stage_train(c: Check, ws: Dict[str, str], a, variants: List[str], device: torch.device) -> Optional[str]:
    """Train per variant; returns a checkpoint of the first successful variant (for the later stages)."""
    kept = None
    goals = _goal_applies(device, a)
    for variant in variants:
        precision, extra = TRAIN_VARIANTS[variant]
        steps = min(a.steps, TRAIN_STEPS.get(variant, a.steps))
        t0 = time.perf_counter()
        try:
            text = run(train_cmd(ws, a, steps, precision, extra), os.path.join(c.out_dir, f"train_{variant.split()[0]}.log"),
                       timeout=a.stage_timeout)
        except Exception as e:
            c.add("train", variant, " ".join(str(e).split())[:300], ok=False, seconds=time.perf_counter() - t0)
            continue
        lines = LOG_LINE.findall(text)
        if not lines:
            c.add("train", variant, "no progress line in the log", ok=False, seconds=time.perf_counter() - t0)
            continue
        it, loss, its, eps, wait, mem = lines[-1]  # the last window: past start-up and compilation
        mem = f", peak memory {mem} GiB" if mem else ""
        chose = re.findall(r"precision (\w+);", text)
        compiled = "compiled" if "torch.compile on" in text and "training eagerly" not in text else "eager"
        goal = TRAIN_GOALS.get(variant) if goals else None
        ok = loss not in ("nan", "inf") and (goal is None or float(eps) >= goal)
        c.add("train", f"{a.model_type} {variant} ({chose[0] if chose else precision}, {compiled}), batch {a.batch_size}",
              f"{its} it/s, {eps} examples/s{f' (goal >= {goal:,.0f})' if goal else ''}, data wait {wait}%{mem} "
              f"(steps {int(it) - a.log_every + 1}-{it}, loss {loss})", ok=ok, seconds=time.perf_counter() - t0)
        c.speeds[variant] = float(eps)
        if variant == "default":   # its evaluations at step 0 (compiles, reads the files) and at the end (measured)
            found = [(k, (int(n), float(t), float(m))) for k, n, t, m in EVAL_LINE.findall(text)]
            c.evaluation = dict(found)   # the last of each set
            c.first_evaluation = dict(reversed(found))
            c.eval_kept = "kept in host memory" in text
        if kept is None:
            kept = os.path.join(c.out_dir, f"{a.model_type}_{variant.split()[0]}.pth")
            shutil.copy(os.path.join(ckpt_dir(ws, a), f"{steps}_iterations.pth"), kept)
    return kept


def stage_profile(c: Check, ws: Dict[str, str], a, device: torch.device) -> None:
    """One real training step (eager, bf16 on CUDA, the workspace's loader and mixup) split into phases, each timed
    to completion (synchronised), averaged over a few steps."""
    from panns import amp
    from panns.losses import clip_bce
    from panns.training.config import mix_targets
    from panns.utilities import Mixup

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    precision = "bf16" if cuda else "fp32"
    model = models.create_model(a.model_type, classes_num=ws["classes"]).to(device).train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True, **({"fused": True} if cuda else {}))
    sampler = dg.TrainSampler(ws["train_index"], batch_size=2 * a.batch_size, random_seed=0)
    loader = dg.train_loader(ws["sample_rate"], sampler, a.num_workers, device, seed=0)
    mixup = Mixup(1.0)
    phases = {k: 0.0 for k in ("loader wait", "host->device", "front end", "body forward+backward", "optimizer")}
    steps, warm = (2, 1) if a.dry_run else (12, 4)
    it = iter(loader)
    amp.pin_ieee_fp32()
    try:
        for i in range(warm + steps):
            t = [time.perf_counter()]
            raw = next(it)
            t.append(time.perf_counter())
            batch = dg.to_device(raw, device)
            lam = torch.from_numpy(mixup.get_lambda(len(batch["waveform"])).astype(np.float32)).to(device)
            sync()
            t.append(time.perf_counter())
            with amp.autocast(precision, device):
                x = model._logmel(batch["waveform"])
                sync()
                t.append(time.perf_counter())
                # the rest of the forward, as models' forward does after the front end (mixup on the log-mel)
                out = model(batch["waveform"], lam)   # includes the front end again: subtract it below
            loss = clip_bce(out, {"target": mix_targets(batch["target"], lam)})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sync()
            t.append(time.perf_counter())
            opt.step()
            sync()
            t.append(time.perf_counter())
            if i >= warm:
                front = t[3] - t[2]
                for k, (u, v) in zip(phases, zip(t[:-1], t[1:])):
                    phases[k] += v - u
                phases["body forward+backward"] -= front   # the full forward ran the front end a second time
            del x
    finally:
        amp.unpin_ieee_fp32()
    total = sum(phases.values())
    c.add("profile", f"{a.model_type} eager {precision} step, batch {a.batch_size} (phases synchronised)",
          f"{1e3 * total / steps:.1f} ms/step: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in phases.items()))


def stage_eval(c: Check, a, device: torch.device) -> None:
    """The default training run's own last evaluation (compiled forward, cuFFT spectrogram, page-locked batches
    copied a batch ahead: what ``4_train.sh`` runs), over the workspace's eval set repeated to >= 2,048 clips,
    scaled to an AudioSet round at the official cadence: ~39k clips (balanced train + eval sets) every 2,000 steps
    of 32 at the default's measured speed, with the metrics of two 20k x 527 sets timed here."""
    from panns.evaluate import compute_metrics

    if "test" not in c.evaluation:
        raise RuntimeError("no evaluation line in the default training run's log (the train stage must run first)")
    clips, seconds, metrics = c.evaluation["test"]
    forward_s = max(seconds - metrics, 1e-9)   # with the loader's start-up where the rows are not kept
    clips_per_s = clips / forward_s
    n = 2000 if a.dry_run else 20000
    rs = np.random.RandomState(0)
    target, scores = rs.rand(n, 527) < 0.01, rs.rand(n, 527).astype(np.float32)
    compute_metrics(target[:64], scores[:64], device=device)   # warm-up (CUDA kernels)
    t0 = time.perf_counter()
    compute_metrics(target, scores, device=device)   # where the training run computes them: the model's device
    metrics_s = (time.perf_counter() - t0) * (20000 / n)
    eval_s = AUDIOSET_EVAL_CLIPS / clips_per_s + 2 * metrics_s
    train_eps = c.speeds["default"]
    share = eval_s / (eval_s + 2000 * 32 / train_eps)
    hours = (1_000_000 * 32 / train_eps + 500 * eval_s) / 3600   # the shipped recipe: 1M steps, 500 evaluations
    goal = _goal_applies(device, a)
    # The goal's share, solved for the forward: an evaluation may take a ninth of the 2,000 steps' time.
    room = 2000 * 32 / train_eps / 9 - 2 * metrics_s
    needed = f"{AUDIOSET_EVAL_CLIPS / room:,.0f} clips/s" if room > 0 else "more time than the metrics leave"
    if room > 0 and c.flops:
        needed += f" = {flop_rate(AUDIOSET_EVAL_CLIPS / room * c.flops['eval'])}"
    bal = c.evaluation.get("bal")
    measured = f"{clips} clips in {seconds:.2f} s" + (f" (+ bal {bal[0]} clips in {bal[1]:.2f} s)" if bal else "")
    alone = f" (the forward alone: {c.eval_ceiling:,.0f})" if c.eval_ceiling == c.eval_ceiling else ""
    first = c.first_evaluation.get("test")
    kept = "rows kept in host memory after the first evaluation" if c.eval_kept else "rows read from the files each time"
    if first is not None:
        kept += f"; the first evaluation: {first[0] / max(first[1] - first[2], 1e-9):,.0f} clips/s"
    c.add("eval", f"{a.model_type}, the default run's last evaluation",
          f"{measured}: {clips_per_s:,.0f} clips/s{alone} ({kept}); metrics {metrics_s:.2f} s per 20k x 527 set on {device.type}; an "
          f"AudioSet round "
          f"~{eval_s:.1f} s = {100 * share:.0f}% of wall time at the official cadence (2,000 steps at "
          f"{train_eps:,.0f} examples/s{', goal <= 10%' if goal else ''}; 10% takes a forward of {needed}); the "
          f"1,000,000-step recipe ~{hours:.1f} h "
          f"on this device", ok=not (goal and share > 0.10))


def stage_extract(c: Check, ws: Dict[str, str], a, ckpt: Optional[str], device: torch.device) -> None:
    """``extract_embeddings`` over N and 10 N clips (symlinks to the workspace's clips); clips/s of the difference,
    so start-up (imports, model load, CUDA context, worker start) is excluded."""
    if ckpt is None:
        raise RuntimeError("no checkpoint from the train stage")
    clips = sorted(glob.glob(os.path.join(ws["dataset"], "audios", "*", "*.wav")))
    small, large = (8, 24) if a.dry_run else (100, 1100)
    folder = os.path.join(c.out_dir, "extract_clips")
    os.makedirs(folder, exist_ok=True)
    for i in range(large):
        dst = os.path.join(folder, f"clip{i:05d}.wav")
        if not os.path.exists(dst):
            try:   # hard links: distinct files to every tool (a symlink could be resolved to a duplicate)
                os.link(clips[i % len(clips)], dst)
            except OSError:
                shutil.copy(clips[i % len(clips)], dst)
    names = sorted(glob.glob(os.path.join(folder, "*.wav")))
    times = {}
    for n in (small, large):
        lst = os.path.join(c.out_dir, f"extract_{n}.txt")
        with open(lst, "w") as f:
            f.write("\n".join(names[:n]) + "\n")
        cmd = [sys.executable, os.path.join(REPO, "pytorch", "inference.py"), "extract_embeddings", "--checkpoint_path",
               ckpt, "--audio_path", lst, "--output_path", os.path.join(c.out_dir, f"extract_{n}.h5"), "--overwrite",
               "--quiet", "--batch_size", "64"] + (["--cuda"] if a.cuda else ["--backend", "torch"])
        t0 = time.perf_counter()
        run(cmd, os.path.join(c.out_dir, f"extract_{n}.log"), a.stage_timeout)
        times[n] = time.perf_counter() - t0
    rate = (large - small) / max(times[large] - times[small], 1e-9)
    c.add("extract", f"extract_embeddings, {a.model_type}, {'GPU' if a.cuda else 'CPU'}",
          f"{rate:,.0f} clips/s with start-up excluded ({large} clips {times[large]:.1f} s, {small} clips "
          f"{times[small]:.1f} s)")

def stage_resume(c: Check, ws: Dict[str, str], a) -> None:
    n = a.resume_steps
    d = ckpt_dir(ws, a)
    precision = devices.resolve_precision("auto", torch.device("cuda" if a.cuda else "cpu"), training=True)
    # Eager: what a resume restores (weights, optimizer, sampler, RNG and Mixup states) does not depend on the
    # compiler, whose step draws the same RNG in the same order (test_train: compiled == eager bit for bit), and
    # two more cold compiles (deterministic kernels are another graph) cost more than the rest of this stage.
    det = ["--deterministic", "--compile", "off"]
    # The straight run saves at step n as a long run saves every --save_every steps; the resume starts from that
    # file (a third run that stops at n would write the same checkpoint, and cost a process start and n steps).
    run(train_cmd(ws, a, 2 * n, precision, det + ["--save_every", str(n)]),
        os.path.join(c.out_dir, "resume_straight.log"), a.stage_timeout)
    straight = os.path.join(c.out_dir, "resume_straight.pth")
    shutil.move(os.path.join(d, f"{2 * n}_iterations.pth"), straight)
    run(train_cmd(ws, a, 2 * n, precision, det + ["--resume_iteration", str(n)]),
        os.path.join(c.out_dir, "resume_second.log"), a.stage_timeout)
    x, y = checkpoint.load_checkpoint(straight), checkpoint.load_checkpoint(os.path.join(d, f"{2 * n}_iterations.pth"))
    diff = [k for k in x["model"] if not torch.equal(x["model"][k], y["model"][k])]
    opt_same = all(torch.equal(torch.as_tensor(x["optimizer"]["state"][k][m]), torch.as_tensor(y["optimizer"]["state"][k][m]))
                   for k in x["optimizer"]["state"] for m in x["optimizer"]["state"][k])
    worst = max((float((x["model"][k].float() - y["model"][k].float()).abs().max()) for k in diff), default=0.0)
    c.add("resume", f"{2 * n} steps straight vs resumed from its step-{n} checkpoint, --deterministic, "
                    f"{precision} eager",
          f"weights bit-equal: {not diff} ({len(diff)} tensors differ, max {worst:.1e}); optimizer equal: {opt_same}; "
          f"sampler equal: {x['sampler'] == y['sampler']}", ok=not diff and opt_same and x["sampler"] == y["sampler"])


def _sed_checkpoint(out_dir: str, ws: Dict[str, str]) -> str:
    """A Cnn14_DecisionLevelMax checkpoint (seeded random weights) for the SED command."""
    from panns import config

    labels = config.read_class_labels(ws["labels"])
    torch.manual_seed(0)
    model = models.create_model("Cnn14_DecisionLevelMax", classes_num=labels.classes_num)
    mc = checkpoint.ModelConfig.from_registry("Cnn14_DecisionLevelMax", classes_num=labels.classes_num)
    mc.labels, mc.ids = list(labels.labels), list(labels.ids)
    path = os.path.join(out_dir, "Cnn14_DecisionLevelMax_seeded.pth")
    checkpoint.save_checkpoint(path, {"model": model.state_dict(), "config": mc.to_dict(), "iteration": 0})
    return path


def stage_inference(c: Check, ws: Dict[str, str], a, tagging_ckpt: Optional[str]) -> None:
    if tagging_ckpt is None:
        raise RuntimeError("no checkpoint from the train stage")
    audio = sorted(glob.glob(os.path.join(ws["dataset"], "audios", "eval_segments", "*.wav")))[:3]
    inf = [sys.executable, os.path.join(REPO, "pytorch", "inference.py")]
    sed_ckpt = _sed_checkpoint(c.out_dir, ws)
    outs = {}

    def commands(dev: str) -> None:
        flag = ["--cuda"] if dev == "cuda" else []
        base = os.path.join(c.out_dir, f"inference_{dev}")
        t0 = time.perf_counter()
        run(inf + ["audio_tagging", "--checkpoint_path", tagging_ckpt, "--audio_path", audio[0], "--precision", "fp32",
                   "--output", base + "_tags.json"] + flag, base + "_tagging.log", a.stage_timeout)
        run(inf + ["sound_event_detection", "--checkpoint_path", sed_ckpt, "--audio_path", audio[0], "--precision",
                   "fp32", "--output_dir", base + "_sed", "--output", base + "_sed.json"] + flag,
            base + "_sed.log", a.stage_timeout)
        run(inf + ["extract_embeddings", "--checkpoint_path", tagging_ckpt, "--audio_path", *audio, "--precision", "fp32",
                   "--output_path", base + "_emb.h5", "--overwrite", "--quiet"] + flag, base + "_emb.log", a.stage_timeout)
        outs[dev] = (base, time.perf_counter() - t0)

    # The dry run's device is the CPU: one run of each command exercises the stage; its comparison is then with
    # itself (a second CPU run cost CI half a minute and could only agree). On a GPU box the CPU's commands run
    # beside the GPU's (separate processes; the box has cores to spare), which halves the stage's time.
    if a.cuda:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            on_cpu = pool.submit(commands, "cpu")
            commands("cuda")
            on_cpu.result()
        outs = {k: outs[k] for k in ("cuda", "cpu")}
    else:
        commands("cpu")
    if len(outs) == 1:
        outs["itself (dry run)"] = outs["cpu"]
    (b1, t1), (b2, t2) = outs.values()

    def numbers(obj) -> np.ndarray:
        vals: List[float] = []

        def walk(o):
            if isinstance(o, dict):
                for v in o.values():
                    walk(v)
            elif isinstance(o, list):
                for v in o:
                    walk(v)
            elif isinstance(o, (int, float)) and not isinstance(o, bool):
                vals.append(float(o))
        walk(obj)
        return np.array(vals)

    for what, suffix in (("audio_tagging", "_tags.json"), ("sound_event_detection", "_sed.json")):
        x, y = numbers(json.load(open(b1 + suffix))), numbers(json.load(open(b2 + suffix)))
        ok = x.shape == y.shape
        diff = float(np.abs(x - y).max()) if ok and x.size else float("nan")
        c.add("inference", what, f"max abs difference {list(outs)[0]} vs {list(outs)[1]}: {diff:.1e} over {x.size} "
                                 "numbers", ok=ok and diff < 1e-3)
    with h5py.File(b1 + "_emb.h5", "r") as f1, h5py.File(b2 + "_emb.h5", "r") as f2:
        keys = [k for k in f1 if isinstance(f1[k], h5py.Dataset) and f1[k].dtype.kind == "f"]
        diff = max(float(np.abs(f1[k][()] - f2[k][()]).max()) for k in keys)
    c.add("inference", "extract_embeddings", f"max abs difference of {', '.join(keys)}: {diff:.1e}; "
                                             f"wall {t1:.0f} s vs {t2:.0f} s for the three commands", ok=diff < 1e-3)


def stage_finetune(c: Check, ws: Dict[str, str], a, base_ckpt: Optional[str]) -> None:
    if base_ckpt is None:
        raise RuntimeError("no checkpoint from the train stage")
    from panns import config

    # Class folders from the demo clips (first label of each clip).
    labels = config.read_class_labels(ws["labels"])
    names = dict(zip(labels.ids, labels.labels))
    folders = os.path.join(c.out_dir, "finetune_data")
    with open(os.path.join(ws["dataset"], "metadata", "balanced_train_segments.csv")) as f:
        for line in f:
            if line.startswith("#"):
                continue
            ytid, _s, _e, mids = line.split(", ", 3)
            cls = re.sub(r"[^A-Za-z0-9_-]+", "_", names[mids.strip().strip('"').split(",")[0]])
            os.makedirs(os.path.join(folders, cls), exist_ok=True)
            src = os.path.join(ws["dataset"], "audios", "balanced_train_segments", f"Y{ytid}.wav")
            dst = os.path.join(folders, cls, f"Y{ytid}.wav")
            if not os.path.lexists(dst):   # a rerun with the same --out keeps the folders it made
                os.symlink(src, dst)
    steps = 1 if a.dry_run else 20
    # A CPU emulates fp16 (16 s for a step of 4 one-second clips): the dry run steps on two half-second clips.
    size = ["--batch_size", "2", "--clip_seconds", "0.5"] if a.dry_run else ["--batch_size", str(a.batch_size)]
    cmd = [sys.executable, os.path.join(REPO, "pytorch", "finetune_template.py"), "train",
           "--model_type", f"Transfer_{a.model_type}", "--pretrained_checkpoint_path", base_ckpt,
           "--dataset_dir", folders, "--workspace", os.path.join(c.out_dir, "finetune_ws"), "--iterations", str(steps),
           "--eval_every", str(steps), *size, "--precision", "fp16", "--num_workers", "0",
           "--overwrite"]   # a rerun with the same --out
    t0 = time.perf_counter()
    text = run(cmd + (["--cuda"] if a.cuda else []), os.path.join(c.out_dir, "finetune.log"), a.stage_timeout)
    last = [line for line in text.splitlines() if line.strip()][-1]
    c.add("fine-tune", f"Transfer_{a.model_type}, fp16 + GradScaler, {steps} steps", " ".join(last.split())[:200],
          seconds=time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="CPU, toy size (what the tests run)")
    p.add_argument("--out", default=None, help="folder for logs, checkpoints and table.md (default: a temp folder)")
    p.add_argument("--steps", type=int, default=200, help="training steps per precision variant")
    p.add_argument("--batch_size", type=int, default=32, help="training batch (the official 32)")
    p.add_argument("--num_workers", type=int, default=8, help="loader workers of the training runs")
    p.add_argument("--stage_timeout", type=float, default=300, help="seconds allowed per command")
    p.add_argument("--only", default="", help="comma-separated stages to run (default: all); 'workspace' is added "
                                              "when a stage needs it, and the default training run (only) for "
                                              "eval, inference, extract and fine-tune")
    p.add_argument("--variants", default="", help=f"comma-separated training variants (default: all of "
                                                  f"{', '.join(TRAIN_VARIANTS)})")
    p.add_argument("--deadline", type=float, default=0.0,
                   help="seconds after which no further stage starts (they are listed as not run, and the table is "
                        "printed): a device lease then always ends with a table (default: no deadline)")
    p.add_argument("--golden", default="", help="comma-separated models for the golden stage (default: five)")
    a = p.parse_args()
    a.cuda = not a.dry_run
    if a.dry_run:
        a.model_type, a.steps, a.batch_size, a.num_workers, a.log_every, a.resume_steps = "Cnn6", 4, 4, 1, 2, 2
        # One variant: on a CPU the default is fp32 eager too, so a second run checked nothing new; the resume
        # stage's runs follow it in the same run folder, as a GPU run's variants follow one another.
        variants, golden = ["default"], ["Cnn6"]
    else:
        a.model_type, a.log_every, a.resume_steps = "Cnn14", 50, 10
        variants = list(TRAIN_VARIANTS)
        golden = ["Cnn14", "Cnn14_16k", "Cnn14_DecisionLevelMax", "Cnn6", "Wavegram_Logmel_Cnn14"]
        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device visible to PyTorch; use --dry-run for the CPU check")
    if a.variants:
        variants = [v.strip() for v in a.variants.split(",")]
        unknown = [v for v in variants if v not in TRAIN_VARIANTS]
        if unknown:
            sys.exit(f"error: unknown --variants {unknown}; choose from {', '.join(TRAIN_VARIANTS)}")
    if a.golden:
        golden = [g.strip() for g in a.golden.split(",")]
    out = a.out or tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(out, exist_ok=True)
    device = torch.device("cuda", 0) if a.cuda else torch.device("cpu")
    devices.configure_backends(device)   # as training does (cuDNN picks its fastest convolutions): ceiling, profile, eval
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    if only & {"eval", "inference", "extract", "fine-tune"} and "train" not in only:
        # they read the default training run's log or use its checkpoint: that run alone is added
        only.add("train")
        variants = variants if a.variants else ["default"]
    c = Check(out, only=only, deadline=a.deadline)
    t0 = c.started
    # The speed rows first (the check's purpose), then fidelity and the other paths.
    c.stage("device", lambda: stage_device(c, device))
    c.stage("graph breaks", lambda: stage_graph_breaks(c, device, a))
    ws: Dict[str, str] = {}
    c.stage("workspace", lambda: ws.update(stage_workspace(os.path.join(out, "data"), a.dry_run, c)))
    kept: List[Optional[str]] = [None]
    # The ceiling first: its compiled channels_last step is the default training run's graph (same classes).
    c.stage("ceiling", lambda: stage_ceiling(c, device, a, ws.get("classes", 527)))
    if ws:
        c.stage("loader", lambda: stage_loader(c, device, ws))
        c.stage("train", lambda: kept.__setitem__(0, stage_train(c, ws, a, variants, device)))
        c.stage("eval", lambda: stage_eval(c, a, device))
        c.stage("profile", lambda: stage_profile(c, ws, a, device))
    c.stage("golden", lambda: stage_golden(c, device, golden))
    c.stage("specaugment", lambda: stage_specaugment(c, device, a.dry_run))
    if ws:
        c.stage("resume", lambda: stage_resume(c, ws, a))
        c.stage("inference", lambda: stage_inference(c, ws, a, kept[0]))
        c.stage("extract", lambda: stage_extract(c, ws, a, kept[0], device))
        c.stage("fine-tune", lambda: stage_finetune(c, ws, a, kept[0]))
    total = time.perf_counter() - t0
    whole = not (c.only or a.variants or a.golden)
    goal = whole and _goal_applies(device, a)
    c.add("total", "the whole check" if whole else "the stages asked for",
          f"{total:.0f} s" + (f" (goal <= {TOTAL_GOAL_S} s on H100/H200-class GPUs: one device lease holds a run and "
                              f"a rerun)" if goal else "") + "; by stage: " +
          ", ".join(f"{k} {v:.0f}" for k, v in c.stage_seconds.items()), ok=not (goal and total > TOTAL_GOAL_S),
          seconds=total)
    table = c.table()
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(f"\ngpu_check ({'dry run, CPU' if a.dry_run else devices.describe(device)}), "
          f"{total:.0f} s, outputs in {out}\n")
    print(table)
    print(f"\n{len(c.rows) - c.failed} ok, {c.failed} failed")
    sys.exit(1 if c.failed else 0)


if __name__ == "__main__":
    main()
