"""Which inference path is fastest on this machine: a short timed calibration, cached.

``--backend auto`` (runtime.py) used to assume ONNX Runtime beats torch on every CPU. That held on
an AVX2-only host (ONNX Runtime ~2x torch) and not on an AVX512-BF16 one, where oneDNN's bf16
convolutions made torch the fastest. So the choice is measured on the machine at hand:

* :func:`candidates` - the paths a command may take: torch fp32, ONNX Runtime fp32 (installed,
  fp32 allowed) and torch bf16 (the precision was left to ``auto`` and the CPU computes bf16
  natively: ``devices.cpu_has_fast_bf16``);
* :func:`measure` - a few timed batches of each (one warm-up call each, then ``repeats`` rounds in
  alternating order, the fastest round of each path counting; the losers are dropped afterwards);
* :class:`Verdict` - the timings, cached as a small JSON file per machine (CPU model, instruction sets,
  core count), library versions, model type and candidate set under ``$PANNS_CACHE/calibration`` (or
  ``~/.cache/panns/calibration``), written atomically and reused afterwards. Delete the file to
  measure again.

When one is made (``runtime._auto_backend``, its thresholds ``runtime.AUTO_*_SECONDS``): the first
command-line job of a model type on a machine with 1 min of audio or more (a stream: window/hop times
its audio), 5 min or more while ONNX Runtime is a candidate and its export is not cached (the
calibration would make it); shorter jobs and jobs of unknown size (the Python API, a stream from stdin,
the microphone or a URL) run torch without one.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from panns import devices
from panns.utilities import DiskFullError, atomic_write_text

logger = logging.getLogger(__name__)

Path = Tuple[str, str]   # (backend name, precision), e.g. ("torch", "bf16")
FORMAT = 1               # bumped when what is measured changes (invalidates cached verdicts)
# The calibration batch: 4 clips of 5 s (a quarter of the default 8 x 10 s batch, so that three paths
# cost a few seconds in all on a 2-core CPU; the ranking held at batch 8 in bench_extract).
BATCH, SECONDS, REPEATS = 4, 5.0, 3
_clock = time.perf_counter   # the timer of measure() (tests put a fake clock here)


def path_name(path: Path) -> str:
    return f"{path[0]} {path[1]}"


def candidates(requested_precision: str, device: torch.device, onnx_available: bool) -> List[Path]:
    """The paths ``auto`` may choose between on a CPU for a command that asked for ``requested_precision``.

    fp32 asked for (tagging and SED by default, the official numerics): torch and ONNX Runtime in fp32.
    'auto' (extraction by default): the same, plus torch bf16 where the CPU computes bf16 natively.
    bf16/fp16 asked for: torch at that precision only (ONNX Runtime runs fp32)."""
    if device.type != "cpu":
        return [("torch", requested_precision)]
    if requested_precision not in ("fp32", "auto"):
        return [("torch", requested_precision)]
    paths: List[Path] = [("torch", "fp32")]
    if onnx_available:
        paths.append(("onnxruntime", "fp32"))
    if requested_precision == "auto" and devices.cpu_has_fast_bf16():
        paths.append(("torch", "bf16"))
    return paths


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


# The instruction sets that decide which path wins (vector width, bf16/int8 matrix units): part of the key
# because virtual machines often report a generic model name ("Intel(R) Xeon(R) Processor") for CPUs
# from AVX2-only to AMX, and a cache in a home folder shared across a cluster's nodes sees them all.
ISA_FLAGS = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8"})


def machine_key(model_type: str, paths: Sequence[Path], torch_side_by_side: int = 1) -> Dict[str, object]:
    """What a verdict holds for: this CPU (model name, instruction sets, cores, bf16 support), the libraries,
    the model, the paths and how torch runs (``torch_side_by_side``, see :func:`measure`)."""
    key = {"format": FORMAT, "cpu": cpu_model(), "cores": os.cpu_count() or 0, "threads": torch.get_num_threads(),
           "isa": sorted(devices.cpu_flags() & ISA_FLAGS), "torch_cpu": devices.cpu_capability(),
           "native_bf16": devices.cpu_has_fast_bf16(), "torch": torch.__version__,
           "onnxruntime": _version("onnxruntime"), "model_type": model_type,
           "paths": [path_name(p) for p in paths]}
    if torch_side_by_side > 1:
        key["torch_side_by_side"] = int(torch_side_by_side)
    return key


def cache_dir() -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(os.environ.get("PANNS_CACHE") or "~/.cache/panns")),
                        "calibration")


def verdict_path(key: Dict[str, object]) -> str:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_dir(), f"{key['model_type']}-{digest}.json")


@dataclass
class Verdict:
    """Seconds per calibration batch of each path (fastest of ``REPEATS``) and where they are cached."""

    seconds: Dict[str, float]     # path name -> seconds
    file: str = ""

    @property
    def ranking(self) -> List[Path]:
        """Paths, fastest first."""
        names = sorted(self.seconds, key=self.seconds.__getitem__)
        return [tuple(n.split(" ", 1)) for n in names]  # type: ignore[misc]

    @property
    def winner(self) -> Path:
        return self.ranking[0]

    def best(self, allowed: Callable[[Path], bool]) -> Optional[Path]:
        """The fastest path that ``allowed`` accepts."""
        return next((p for p in self.ranking if allowed(p)), None)

    def summary(self) -> str:
        """'torch bf16 0.81 s, onnxruntime fp32 1.02 s (1.26x), torch fp32 ...' (seconds per batch)."""
        order = [path_name(p) for p in self.ranking]
        first = self.seconds[order[0]]
        parts = [f"{order[0]} {first:.2f} s"]
        parts += [f"{n} {self.seconds[n]:.2f} s ({self.seconds[n] / max(first, 1e-9):.2f}x)" for n in order[1:]]
        return ", ".join(parts)


def load_verdict(key: Dict[str, object]) -> Optional[Verdict]:
    """The cached verdict for ``key``, or None (none yet, or an unreadable file)."""
    path = verdict_path(key)
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        seconds = {str(k): float(v) for k, v in rec["seconds"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not all(math.isfinite(v) and v > 0 for v in seconds.values()):
        return None   # a hand-edited or damaged file: NaN would sort anywhere and pick a path at random
    # Paths that could not run when measured are absent: a subset of the key's paths, not none.
    if rec.get("key") != key or not seconds or not set(seconds) <= set(key["paths"]):  # type: ignore[arg-type]
        return None
    return Verdict(seconds, path)


def save_verdict(key: Dict[str, object], verdict: Verdict) -> Verdict:
    """Write ``verdict`` for ``key`` atomically (best effort: an unwritable cache only costs a new calibration)."""
    path = verdict_path(key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, "seconds": verdict.seconds,
                                            "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
        verdict.file = path
    except (OSError, DiskFullError) as e:   # DiskFullError is no OSError; it must not end the command either
        logger.info("cannot cache the backend calibration in %s (%s)", path, getattr(e, "strerror", None) or e)
    return verdict


def calibration_batch(sample_rate: int, min_samples: int = 0) -> np.ndarray:
    """(BATCH, samples) float32 of seeded noise, SECONDS long (never under ``min_samples``)."""
    n = max(int(SECONDS * sample_rate), int(min_samples))
    return (0.1 * np.random.RandomState(0).randn(BATCH, n)).astype(np.float32)


def side_by_side(backend: Callable[[np.ndarray], object], k: int) -> Callable[[np.ndarray], object]:
    """``batch -> k`` single-threaded forwards of it run side by side: how extraction runs torch on a CPU
    (extract.Extractor's compute threads), timed as k batches."""
    def run(batch: np.ndarray) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(k) as pool:
                list(pool.map(backend, [batch] * k))
        finally:
            torch.set_num_threads(before)
    return run


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc's ``malloc_trim``; elsewhere a no-op):
    without it a backend dropped after the calibration still counted in the job's resident memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(paths: Sequence[Path], build: Callable[[Path], Callable[[np.ndarray], object]], batch: np.ndarray,
            repeats: int = REPEATS, timer: Optional[Callable[[], float]] = None,
            keep: Optional[Dict[Path, object]] = None, torch_side_by_side: int = 1) -> Verdict:
    """Seconds of one forward of ``batch`` on each path (``build(path)`` -> the backend).

    Every path is built and warmed up once (first-call allocations, kernel selection), then timed in
    ``repeats`` rounds in alternating order (A B C, C B A, ...), each path's fastest round counting: on a
    shared machine the load drifts within seconds (measured here: the same command 3x slower minutes
    apart), and alternating rounds make it weigh on every path alike. A path whose build or run fails is
    left out (logged). The fastest backend is handed back in ``keep`` ({path: backend}); the others are
    dropped and their memory handed back to the OS. torch_side_by_side: k > 1 times torch paths as k
    single-threaded forwards side by side (seconds per batch = their time / k), the way extraction runs
    them; ONNX Runtime runs one call at a time."""
    timer = timer or _clock
    runs: Dict[Path, Tuple[object, Callable[[np.ndarray], object], int]] = {}

    def left_out(path: Path, e: Exception) -> None:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        logger.info("backend auto: %s left out of the calibration (%s)", path_name(path), first[:200])

    for path in paths:
        try:
            backend = build(path)
            k = torch_side_by_side if path[0] == "torch" and torch_side_by_side > 1 else 1
            run = side_by_side(backend, k) if k > 1 else backend
            run(batch)   # warm-up
        except Exception as e:  # a path that cannot run here is not a candidate
            left_out(path, e)
            continue
        runs[path] = (backend, run, k)
    times: Dict[Path, List[float]] = {p: [] for p in runs}
    order = list(runs)
    for r in range(max(1, repeats)):
        for path in (order if r % 2 == 0 else order[::-1]):
            if path not in times:
                continue
            _, run, k = runs[path]
            try:
                t0 = timer()
                run(batch)
                times[path].append((timer() - t0) / k)
            except Exception as e:
                left_out(path, e)
                del times[path]
    seconds = {p: min(t) for p, t in times.items() if t}
    if keep is not None and seconds:
        best = min(seconds, key=seconds.__getitem__)
        keep[best] = runs[best][0]
    runs.clear()
    release_memory()   # a dropped ONNX Runtime session: hundreds of MB the job's own peak should not carry
    return Verdict({path_name(p): v for p, v in seconds.items()})
