"""The one inference runtime: load a model, choose device and precision, pad, batch and predict.

Every inference path goes through here: ``inference.py`` (tagging, SED), ``extract.py``
(embeddings), evaluation, fine-tuning and the Python API (``panns.load``)::

    rt = Runtime.load("Cnn14_mAP=0.431.pth", model_type="Cnn14")   # or Runtime.load(model_type="Cnn14")
    pred = rt.predict(waveforms)          # (T,), (B, T) or a list of 1-D arrays at rt.sample_rate
    pred.clipwise                         # (B, classes) probabilities
    pred.embedding                        # (B, D) or None (decision-level SED models have none)
    pred.framewise                        # (B, frames, classes), a list when lengths differ, or None
    for out in rt.predict_batches(loader):    # batch dicts {'audio_name', 'waveform'(, 'target')}
        ...                               # -> {'audio_name', 'clipwise_output', ...(, 'target')}

Backends: the model runs through a *backend*, a callable ``(B, T) float32 array -> dict of
float32 arrays`` (the model's raw outputs). ``torch`` is built in; other backends (e.g. ONNX
Runtime) register a factory with :func:`register_backend` and are chosen by name
(``Runtime.load(..., backend=name)``, ``--backend`` on the command line). Padding, probabilities
(log-softmax outputs of fine-tuned models become probabilities), batching and windowing happen
here, the same for every backend.
"""
from __future__ import annotations

import copy
import glob
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from panns import amp
from panns import audio_io
from panns import calibration
from panns import devices
from panns.config import DEFAULT_LABELS_CSV, read_class_labels, read_text
from panns.errors import AudioDecodeError, PannsError
from panns.frontend import FrontEnd

logger = logging.getLogger(__name__)

OUTPUT_KEYS = ("clipwise_output", "embedding", "framewise_output")
# Recordings longer than this run in sliding windows of AUTO_SEGMENT_SECONDS unless told otherwise
# (one forward of an hour of audio needs tens of GB).
AUTO_WINDOW_SECONDS = 600.0
AUTO_SEGMENT_SECONDS = 10.0
DEFAULT_AGGREGATE = "max"   # how window outputs combine when no aggregate is given (None: not given)
Waveforms = Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]]
Backend = Callable[[np.ndarray], Dict[str, np.ndarray]]


# ----------------------------------------------------------------------------- small pieces
def resolve_device(device: Union[None, bool, int, str, torch.device] = None) -> torch.device:
    """A device argument of the API or CLIs -> torch.device; the choice is ``devices.select_device``'s.

    None/'auto': CUDA when available, else CPU; True/False: the CLIs' --cuda flag; an int: that GPU;
    'cuda' without a GPU: the CPU, with a warning; other strings/devices as given, and a string torch
    does not know, or a device this machine lacks ('mps' on Linux), is a one-line PannsError."""
    if isinstance(device, torch.device) and device.type != "cuda":
        return _usable(device, device)
    if isinstance(device, bool):
        return devices.select_device(device)
    if device is None or device == "auto":
        return devices.select_device(torch.cuda.is_available())
    if isinstance(device, int):   # a GPU index, as torch.device(0) means on a CUDA build
        if device < 0:
            raise PannsError(f"device {device}: a GPU index is 0 or more")
        return devices.select_device(True, device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):   # torch's message lists every backend it was built for
        raise PannsError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' (or a GPU index) or 'auto'") from None
    if dev.type != "cuda":
        return _usable(dev, device)
    return devices.select_device(True, dev.index) if dev.index is not None else devices.select_device(True)


def _usable(dev: torch.device, given) -> torch.device:
    """``dev`` when this machine can hold tensors there: 'mps' on a Linux build, or 'xpu' without the
    hardware, failed at the model's .to() with torch's message, not one line naming the argument."""
    if dev.type == "cpu":
        return dev
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError):   # torch's message lists every dispatch key it has
        raise PannsError(f"device {str(given)!r} is not available: this PyTorch build or machine has no {dev.type} "
                         "device; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    return dev


def model_min_samples(config, model: Optional[torch.nn.Module] = None) -> int:
    """Shortest input the model accepts (the instance's ``min_samples``, else the registry's)."""
    ms = getattr(model, "min_samples", None) if model is not None else None
    if isinstance(ms, int):
        return ms
    from panns import models  # registry only needed for custom models without min_samples

    for name in (getattr(config, "model_type", None), getattr(config, "base_model_type", None)):
        if not name:
            continue
        try:
            return int(models.get_model_spec(name).min_samples or 0)
        except PannsError:
            continue
    return 0


def pad_to_min(waveform: np.ndarray, min_samples: int) -> np.ndarray:
    """Zero-pad the last axis at the end up to ``min_samples`` (models cannot run on shorter inputs)."""
    n = waveform.shape[-1]
    if n >= min_samples:
        return waveform
    pad = [(0, 0)] * (waveform.ndim - 1) + [(0, min_samples - n)]
    return np.pad(waveform, pad)


def to_probabilities(output: np.ndarray, config) -> np.ndarray:
    """Fine-tuned (log-softmax) outputs -> probabilities; sigmoid outputs unchanged."""
    if getattr(config, "output", "sigmoid") == "log_softmax":
        return np.exp(output)
    return output


def as_batch(waveforms: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """(T,) or (B, T) float array/tensor -> contiguous float32 (B, T)."""
    if isinstance(waveforms, torch.Tensor):
        waveforms = waveforms.detach().float().cpu().numpy()
    x = np.ascontiguousarray(waveforms, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise PannsError(f"expected waveforms of shape (samples,) or (batch, samples), got {x.shape}")
    return x


# ----------------------------------------------------------------------------- backends
class TorchBackend:
    """Runs a torch model under ``inference_mode`` and autocast for ``precision``.

    optimize: run a BN-folded copy (and on CPU in fp32, channels_last), checked on a probe clip
    against the model as given; the original is used if the outputs differ."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str, optimize: bool = False,
                 probe_samples: int = 8000):
        self.device = device
        self.precision = precision
        model = amp.prepare_for_inference(model, precision, device) or model
        self.model = self._optimized(model, probe_samples) if optimize else model
        self.model.eval()

    def _optimized(self, model: torch.nn.Module, probe_samples: int) -> torch.nn.Module:
        try:
            fast = amp.fold_bn(model)
            if self.device.type == "cpu" and self.precision == "fp32":
                fast = fast.to(memory_format=torch.channels_last)
            rs = np.random.RandomState(0)
            probe = torch.from_numpy((0.1 * rs.randn(1, probe_samples)).astype(np.float32)).to(self.device)
            with torch.inference_mode(), amp.autocast(self.precision, self.device):
                a, b = model(probe), fast(probe)
            key = "embedding" if "embedding" in a else "clipwise_output"
            ref = a[key].float()
            err = (ref - b[key].float()).abs().max().item() / max(ref.abs().max().item(), 1e-6)
            if err <= (1e-4 if self.precision == "fp32" else 5e-2):
                return fast
            logger.warning("optimised model differs from the original (relative %.2g); using the original", err)
        except Exception as e:  # unknown module layouts: correctness first
            logger.warning("could not optimise the model for inference (%s); using it as given", e)
        return model

    def __call__(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        # always eval mode: a caller's .train() on the module (HEAR's HearModel, panns.load(...).module) made
        # BatchNorm normalise by the batch and overwrite its running statistics; its mode is given back after
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), amp.autocast(self.precision, self.device):
                out = self.model(x)
        finally:
            self.model.train(was_training)
        return {k: v.float().cpu().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


# name -> factory(runtime, **options) -> Backend. Other modules add theirs with register_backend.
_BACKENDS: Dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make ``backend=name`` available; ``factory(runtime, **options)`` returns the callable."""
    _BACKENDS[name] = factory


def backend_names() -> List[str]:
    return list(_BACKENDS)


register_backend("torch", lambda rt, optimize=False, **_: TorchBackend(rt.model, rt.device, rt.precision, optimize,
                                                                        max(rt.min_samples, rt.sample_rate // 4)))


def _onnxruntime_backend(rt, **options) -> Backend:
    """ONNX Runtime on CPU, fp32: the model exported once (cached) and run there (onnx_backend.py)."""
    from panns import onnx_backend  # optional dependencies (onnxruntime, onnx, onnxscript): only when chosen

    return onnx_backend.backend_factory(rt, **options)


# What `auto` weighs on a CPU. Which path is fastest depends on the CPU: ONNX Runtime ran Cnn14 2.2x torch
# on an AVX2-only host, while on an AVX512-BF16 one torch bf16 beat both fp32 paths. So auto measures
# (calibration.py: a few timed batches of each candidate, cached per CPU, libraries and model type) and
# runs the winner. What a measurement cannot see is start-up: ONNX Runtime costs ~2 s a run (weights hash
# + session) and, the first time, a one-off export (15-40 s); a calibration costs a few seconds once.
# Measured on a 2-core CPU (SED, Cnn14_DecisionLevelMax): a 7-s clip took 3.4 s with ONNX Runtime and
# 2.1 s with torch, so jobs too short to repay them keep the rule below (torch at the precision asked).
# A job's size is the seconds of model input it runs: its audio (file headers, summed), a stream's
# audio times window / hop. The thresholds, stated in words by auto_rule_text and _auto_backend's lines:
AUTO_MIN_SECONDS = 20.0            # ONNX Runtime, where a verdict says it wins, runs no shorter job (its start-up)
AUTO_CALIBRATE_MIN_SECONDS = 60.0  # no verdict cached for this machine and model: a job this long calibrates
AUTO_EXPORT_MIN_SECONDS = 300.0    # ...this long while ONNX Runtime is a candidate and its export is not cached
#                                    (the calibration would export); and ONNX Runtime runs no shorter job then
BACKEND_ENV = "PANNS_BACKEND"      # forces what `auto` runs (e.g. PANNS_BACKEND=torch), as --backend does


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min"


def auto_rule_text() -> str:
    """When backend ``auto`` calibrates and when it runs ONNX Runtime on a CPU, in words (the --backend
    help), from the thresholds above."""
    return (f"with no calibration cached yet, a job of {_minutes(AUTO_CALIBRATE_MIN_SECONDS)} of audio or more "
            f"calibrates ({_minutes(AUTO_EXPORT_MIN_SECONDS)} while ONNX Runtime's export is not cached) and "
            f"shorter ones run torch; ONNX Runtime runs no job under {AUTO_MIN_SECONDS:.0f} s, nor under "
            f"{_minutes(AUTO_EXPORT_MIN_SECONDS)} while its export is not cached (a stream counts window/hop "
            "times its audio)")


def _calibration_repaid(ort_candidate: bool) -> str:
    """The job size from which a calibration is made, in the words of _auto_backend's line."""
    text = f"from {_minutes(AUTO_CALIBRATE_MIN_SECONDS)} it does"
    if ort_candidate:
        text += f", {_minutes(AUTO_EXPORT_MIN_SECONDS)} while ONNX Runtime's export is not cached"
    return text


def seconds_text(seconds: float) -> str:
    """A duration as a log line says it: '0.4 s', '47 s', '12 min', '3.5 h'."""
    seconds = float(seconds)
    if seconds < 9.95:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


class JobSize(float):
    """The seconds of model input a job runs, which backend ``auto`` weighs (a plain float to it), and
    ``text``: what they are, in words its log line can use ('7 s of audio (+1 file of unknown length)',
    '7 s of audio in 10-s windows every 1 s (70 s of model input)')."""

    def __new__(cls, seconds: float, text: Optional[str] = None) -> "JobSize":
        self = super().__new__(cls, seconds)
        self.text = text or f"{seconds_text(seconds)} of audio"
        return self


def job_text(job_seconds: float) -> str:
    """The words for a job of ``job_seconds`` (a :class:`JobSize` says them itself)."""
    return getattr(job_seconds, "text", None) or f"{float(job_seconds):.0f} s of audio"


def job_seconds(paths: Sequence[str], cap: float = AUTO_EXPORT_MIN_SECONDS, unknown: float = 10.0) -> JobSize:
    """Seconds of audio in ``paths`` from the file headers, counting ``unknown`` for a file whose header
    gives none (or that cannot be read); stops reading headers once the sum reaches ``cap`` (a long list
    costs no more). A :class:`JobSize`: its text counts the files of unknown length apart ('7 s of audio
    (+1 file of unknown length)'), as 'at least' when headers were left unread."""
    known, unknown_files, read = 0.0, 0, 0
    for path in paths:
        seconds = audio_io.probe_seconds(path)
        read += 1
        if seconds is None:
            unknown_files += 1
        else:
            known += seconds
        if known + unknown * unknown_files >= cap:
            break
    if unknown_files and not known:
        text = f"{_files(unknown_files)} of unknown length"
    else:
        text = f"{seconds_text(known)} of audio"
        if unknown_files:
            text += f" (+{_files(unknown_files)} of unknown length)"
    if read < len(paths):
        text = f"at least {text} (headers of {_files(len(paths) - read)} not read)"
    return JobSize(known + unknown * unknown_files, text)


def _forced_backend() -> Optional[str]:
    """The backend ``PANNS_BACKEND`` names (None when unset or 'auto'); a PannsError for an unknown name."""
    name = os.environ.get(BACKEND_ENV, "").strip()
    if not name or name == "auto":
        return None
    if name not in _BACKENDS:
        raise PannsError(f"{BACKEND_ENV}={name!r} is not a backend; available: {', '.join(_BACKENDS)}")
    return name


def _auto_backend(rt, job_seconds: Optional[float] = None, torch_side_by_side: int = 1,
                  unknown_job: Optional[str] = None, **options) -> Backend:
    """The fastest path on this machine, measured (see calibration.py), among torch fp32, ONNX Runtime
    fp32 and, when the precision was left to 'auto' and the CPU computes bf16 natively, torch bf16; torch
    on GPUs. ``job_seconds``: the audio a command line is about to run (None in the Python API and for a
    stream of unknown length; a :class:`JobSize` says in words what it counts). ``unknown_job``: with
    ``job_seconds`` None, a clause saying why the size is unknown (default: the Python API's).
    ``torch_side_by_side``: how many single-threaded torch forwards the caller runs side by side (extraction
    on a CPU; calibration times torch that way).

    Job sizes are seconds of model input (see the thresholds' comment; :func:`auto_rule_text` words them):

    * A cached verdict for this CPU, libraries and model type: its winner, except that ONNX Runtime is
      skipped (for the fastest torch path of the verdict) for jobs under ``AUTO_MIN_SECONDS`` (20 s), and
      under ``AUTO_EXPORT_MIN_SECONDS`` (5 min) while its export is not cached. A job of unknown size
      (the Python API, a live stream) where ONNX Runtime wins runs torch until its session is made
      (:class:`Handover`).
    * No verdict yet: a job of ``AUTO_CALIBRATE_MIN_SECONDS`` (1 min) or more calibrates, caches the verdict
      and runs the winner; ``AUTO_EXPORT_MIN_SECONDS`` (5 min) or more while ONNX Runtime is a candidate and
      its export is not cached (the calibration would make it). Shorter jobs and jobs of unknown size run
      torch at the precision asked for, without exporting anything.
    One log line says which path runs and why. ``PANNS_BACKEND`` forces a backend. Where ONNX Runtime
    cannot serve (not installed, an export or session that fails, remembered by onnx_backend) torch runs."""
    from panns import onnx_backend  # see _onnxruntime_backend

    forced = _forced_backend()
    if forced is not None:
        logger.info("backend auto: %s (%s)", forced, BACKEND_ENV)
        rt.backend_name = forced
        return _BACKENDS[forced](rt, **options)
    if rt.device.type != "cpu":   # torch is the choice on GPUs, not a fallback: nothing to say
        return _use(rt, ("torch", rt.precision), options)
    requested = getattr(rt, "requested_precision", rt.precision)
    onnx_ok = onnx_backend.available()
    paths = calibration.candidates(requested, rt.device, onnx_ok)
    if len(paths) == 1:
        why = (f"ONNX Runtime runs fp32 only, {rt.precision} asked for" if requested not in ("fp32", "auto") else
               "onnxruntime, onnx or onnxscript is not installed (pip install onnxruntime onnx onnxscript)")
        logger.info("backend auto: running torch (%s)", why)
        return _use(rt, paths[0], options)
    if not onnx_ok:
        logger.info("backend auto: onnxruntime, onnx or onnxscript is not installed; choosing between torch paths")
    model_type = str(getattr(rt.config, "model_type", type(rt.model).__name__))
    key = calibration.machine_key(model_type, paths, torch_side_by_side)
    verdict = calibration.load_verdict(key)
    state = {"export_key": None, "export_cached": None}   # the ONNX export's cache key, looked up once

    def export_cached() -> bool:
        if state["export_cached"] is None:
            state["export_key"] = onnx_backend.cached_export_key(
                rt.model, rt.config, rt.checkpoint_path, options.get("opset", onnx_backend.DEFAULT_OPSET))
            state["export_cached"] = state["export_key"] is not None
        return bool(state["export_cached"])

    ort = ("onnxruntime", "fp32")
    # Why ONNX Runtime may not run this job even where it is fastest (None: it may).
    def ort_barred() -> Optional[str]:
        if job_seconds is not None and job_seconds < AUTO_MIN_SECONDS:
            return (f"{job_text(job_seconds)}: ONNX Runtime's start-up would cost more than it saves below "
                    f"{AUTO_MIN_SECONDS:.0f} s")
        if job_seconds is not None and job_seconds < AUTO_EXPORT_MIN_SECONDS and not export_cached():
            return (f"{job_text(job_seconds)} does not repay the one-off ONNX export (from "
                    f"{_minutes(AUTO_EXPORT_MIN_SECONDS)} it does; --backend onnxruntime exports now)")
        return None

    default = ("torch", rt.precision)   # today's rule: torch at the precision asked for ('auto' resolved)
    if verdict is None:
        needed = AUTO_CALIBRATE_MIN_SECONDS
        if ort in paths and job_seconds is not None and job_seconds >= needed and not export_cached():
            needed = AUTO_EXPORT_MIN_SECONDS
        if job_seconds is None or job_seconds < needed:
            # one wording of both thresholds, whichever applied; a job refused only for want of the export says so
            exporting = " that would export ONNX Runtime's model first" if needed > AUTO_CALIBRATE_MIN_SECONDS else ""
            why = ((unknown_job or "the Python API does not know the job's size") if job_seconds is None else
                   f"{job_text(job_seconds)} does not repay a calibration{exporting} "
                   f"({_calibration_repaid(ort in paths)})")
            logger.info("backend auto: running %s (%s: no calibration of %s on this CPU yet)",
                        calibration.path_name(default), why, model_type)
            return _use(rt, default, options)
        kept: Dict = {}
        t0 = time.perf_counter()
        verdict = calibration.measure(paths, lambda p: _build_path(rt, p, state, options),
                                      calibration.calibration_batch(rt.sample_rate, rt.min_samples), keep=kept,
                                      torch_side_by_side=torch_side_by_side)
        if not verdict.seconds:
            logger.warning("backend auto: no path ran in the calibration; running torch")
            return _use(rt, default, options)
        verdict = calibration.save_verdict(key, verdict)
        choice = verdict.winner
        logger.info("backend auto: %s, measured on this CPU in %.0f s (seconds per calibration batch: %s; cached in %s)",
                    calibration.path_name(choice), time.perf_counter() - t0, verdict.summary(), verdict.file or "-")
        return _use(rt, choice, options, kept.get(choice))
    choice = verdict.winner
    barred = ort_barred() if choice == ort else None
    if barred:
        choice = verdict.best(lambda p: p != ort) or default
    backend = None
    if choice == ort and job_seconds is None:   # the Python API: load in torch's time, hand over when ready
        now = verdict.best(lambda p: p != ort) or default
        logger.info("backend auto: %s from its first call once its session is ready, %s until then (the fastest "
                    "path; calibrated on this CPU: %s; %s)", calibration.path_name(ort), calibration.path_name(now),
                    verdict.summary(), verdict.file)
        torch_backend = _use(rt, now, options)
        fp32_view = copy.copy(rt)   # the same model, seen at ONNX Runtime's precision by its factory
        fp32_view.precision = "fp32"
        return Handover(rt, torch_backend, lambda: _BACKENDS["onnxruntime"](fp32_view, retry_failed=False, **options),
                        ort, now)
    if choice == ort:
        try:
            backend = _build_path(rt, choice, state, options)
        except Exception as e:  # whatever the exporter or ONNX Runtime raise, torch still runs the model
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            reason = first if isinstance(e, PannsError) else f"{type(e).__name__}: {first}"
            logger.warning("backend auto: running torch (%s)", reason[:400])
            return _use(rt, verdict.best(lambda p: p != ort) or default, options)
    logger.info("backend auto: %s (%s; calibrated on this CPU: %s; %s)", calibration.path_name(choice),
                barred or "the fastest path", verdict.summary(), verdict.file)
    return _use(rt, choice, options, backend)


class Handover:
    """A backend that runs ``first`` until ``build()`` (started on a daemon thread at once) has made the
    faster one, then that one: ``panns.load`` with auto, where ONNX Runtime won the calibration, loads in
    torch's time while the weights hash and the ONNX Runtime session (and the export, once: ~2 s and 15-40
    s for Cnn14) are made in the background. Outputs of the two agree within 1e-6 of the largest value.
    A build that fails leaves ``first`` running, after one line saying why."""

    def __init__(self, rt, first: Backend, build: Callable[[], Backend], target: Tuple[str, str],
                 now: Tuple[str, str]):
        self.rt, self.current, self.target, self.now = rt, first, target, now
        self._result: Dict[str, object] = {}
        self._pending = True
        self._thread = threading.Thread(target=self._build, args=(build,), name="panns-backend", daemon=True)
        self._thread.start()

    @property
    def owns_threads(self) -> bool:
        return bool(getattr(self.current, "owns_threads", False))

    def _build(self, build: Callable[[], Backend]) -> None:
        try:
            self._result["backend"] = build()
        except Exception as e:  # whatever the exporter or ONNX Runtime raise, the first backend goes on
            self._result["error"] = e

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the background build; True when the faster backend runs from the next call on."""
        self._thread.join(timeout)
        self._switch()
        return not self._pending and "backend" in self._result

    def _switch(self) -> None:
        if not self._pending or self._thread.is_alive():
            return
        self._pending = False
        if "backend" in self._result:
            self.current = self._result["backend"]  # type: ignore[assignment]
            self.rt.backend_name, self.rt.precision = self.target
        else:
            e = self._result.get("error") or RuntimeError("no backend built")
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            logger.warning("backend auto: running %s (%s)", " ".join(self.now),
                           (first if isinstance(e, PannsError) else f"{type(e).__name__}: {first}")[:400])

    def __call__(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        self._switch()
        return self.current(batch)


def _build_path(rt, path: Tuple[str, str], state: dict, options: dict) -> Backend:
    """The backend of ``path`` (name, precision) for ``rt``, with ``rt.precision`` set to the path's.
    ONNX Runtime: never retries an export that failed before (see onnx_backend.cached_backend)."""
    name, precision = path
    rt.precision = precision
    if name == "onnxruntime":
        return _BACKENDS[name](rt, retry_failed=False, cache_key=state.get("export_key"), **options)
    return _BACKENDS[name](rt, **options)


def _use(rt, path: Tuple[str, str], options: dict, backend: Optional[Backend] = None) -> Backend:
    """Run ``path`` (built now unless ``backend`` is given); ``rt`` records its name and precision."""
    backend = backend if backend is not None else _build_path(rt, path, {}, options)
    rt.backend_name, rt.precision = path
    return backend


register_backend("onnxruntime", _onnxruntime_backend)
register_backend("onnxruntime-int8", lambda rt, **options: _onnxruntime_backend(rt, int8=True, **options))
register_backend("auto", _auto_backend)


# ----------------------------------------------------------------------------- inputs and labels
# What every inference front door (tagging, SED, extraction) runs on and names its classes with.
LIST_EXTENSIONS = (".txt", ".lst")


def _has_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def _read_list_file(path: str) -> List[str]:
    """One path per line ('#' comments and blank lines skipped; any encoding ``config.read_text`` reads);
    relative paths are taken relative to the current directory if they exist there, else to the list file's
    folder."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for line in read_text(path).splitlines():
        p = line.strip()
        if not p or p.startswith("#"):
            continue
        if not os.path.isabs(p) and not os.path.exists(p) and os.path.exists(os.path.join(base, p)):
            p = os.path.join(base, p)
        out.append(p)
    return out


def _audio_files_under(folder: str) -> List[str]:
    """Audio files below ``folder``, sorted; hidden ones left out (macOS's '._x.wav' AppleDouble files, copied
    beside every clip from a Mac volume, are no audio: each failed to decode and made the run exit 1), as are
    hidden folders (.git, .Trash)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, n) for n in sorted(files)
                     if audio_io.is_audio_file(n) and not n.startswith("."))
    return found


def gather_inputs(specs: Sequence[str]) -> List[str]:
    """Expand input specs (files, folders, .txt/.lst lists, globs: the --audio_path values of the
    command lines) into audio paths.

    Order is kept (folders and globs sorted), duplicates dropped (however spelt: 'a.wav', './a.wav' and
    '/abs/a.wav' are one file, given as first spelt). Missing paths and empty folders/globs are a PannsError;
    a listed file that turns out undecodable fails later.
    """
    out: List[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            files = _audio_files_under(spec)
            if not files:
                raise PannsError(f"no audio files ({', '.join(audio_io.AUDIO_EXTENSIONS)}) under folder {spec}")
            out += files
        elif os.path.isfile(spec) and os.path.splitext(spec)[1].lower() in LIST_EXTENSIONS:
            files = _read_list_file(spec)
            if not files:
                raise PannsError(f"list file {spec} names no audio files")
            out += files
        elif os.path.isfile(spec):
            out.append(spec)
        elif _has_glob(spec):
            files = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not files:
                raise PannsError(f"no files match {spec}")
            out += files
        else:
            raise AudioDecodeError(f"audio file not found: {spec}")
    first: Dict[str, str] = {}   # the file (absolute) -> how it was first given
    for p in out:
        first.setdefault(os.path.abspath(p), os.path.normpath(p) if not os.path.isabs(p) else p)
    return list(first.values())


def resolve_labels(cfg, class_labels_csv: Optional[str],
                   flag: str = "--class_labels_csv") -> Tuple[List[str], List[str]]:
    """(labels, ids): the checkpoint's own list, else ``class_labels_csv`` (``flag``; None: not given),
    else the repository's AudioSet CSV; a count that differs from the model's classes is a PannsError.
    A CSV given for a checkpoint with its own labels is not used, and a warning says so."""
    if getattr(cfg, "labels", None):
        labels = list(cfg.labels)
        ids = list(cfg.ids) if getattr(cfg, "ids", None) else [""] * len(labels)
        if class_labels_csv:
            logger.warning("checkpoint carries its own class labels; %s ignored", flag)
    else:
        cl = read_class_labels(class_labels_csv)
        labels, ids = list(cl.labels), list(cl.ids)
    if len(labels) != cfg.classes_num:
        # name where the labels came from: the checkpoint's own list was reported as the default CSV
        own = bool(getattr(cfg, "labels", None))
        src = "the checkpoint's own label list" if own else f"the label list ({class_labels_csv or DEFAULT_LABELS_CSV})"
        fix = "" if own else f"; give the label CSV of its classes with {flag}"
        raise PannsError(f"the model has {cfg.classes_num} classes but {src} has {len(labels)}{fix}")
    return labels, ids


# ----------------------------------------------------------------------------- runtime
def load_model(checkpoint_path: Optional[str] = None, model_type: Optional[str] = None,
               frontend: Optional[Dict[str, int]] = None, download: bool = True):
    """(model in eval mode on CPU, checkpoint.ModelConfig, checkpoint path) of a checkpoint file, or
    of the official catalogue file of ``model_type`` when no path is given (downloaded once)."""
    from panns import checkpoint  # checkpoint imports the model registry: only needed when loading

    if checkpoint_path is None:
        if not model_type:
            raise PannsError("give a checkpoint path, or a model type to use its official pretrained checkpoint")
        from panns import pretrained  # the catalogue (and its downloader) only when asked for

        checkpoint_path = pretrained.get_checkpoint(model_type, download=download)
    model, cfg = checkpoint.load_model(checkpoint_path, model_type=model_type, frontend=frontend)
    return model, cfg, checkpoint_path


def model_spec(config):
    """The registry entry of a checkpoint's ``config`` (or of its base model), None for unknown types."""
    from panns import models  # registry lookup only

    for name in (config.model_type, getattr(config, "base_model_type", None)):
        if name:
            try:
                return models.get_model_spec(name)
            except PannsError:
                continue
    return None


def config_is_sed(config) -> bool:
    """Whether the model of ``config`` has framewise output (a decision-level model): known from the
    checkpoint alone, before a runtime (and its backend) is made."""
    return bool(getattr(model_spec(config), "is_sed", False))


@dataclass
class Prediction:
    """Outputs of :meth:`Runtime.predict` for B inputs (probabilities, float32)."""

    clipwise: np.ndarray                                    # (B, classes)
    embedding: Optional[np.ndarray]                         # (B, D) or None
    framewise: Union[None, np.ndarray, List[np.ndarray]]    # (B, frames, classes) or [(frames_i, classes)]


class Runtime:
    """A model ready for inference: rebuilt from its checkpoint, on a device, at a precision.

    model: the torch module (kept even when another backend runs it: the config and shapes come
    from it). config: its ``checkpoint.ModelConfig``. precision: 'fp32' (default) | 'bf16' | 'fp16'
    | 'auto' ('auto' = bf16 on a CUDA GPU with bf16 or a CPU with native bf16 instructions, else fp32).
    """

    def __init__(self, model: torch.nn.Module, config, device: Union[None, bool, str, torch.device] = "cpu",
                 precision: str = "fp32", backend: str = "torch", checkpoint_path: Optional[str] = None,
                 optimize: bool = False, **backend_options):
        self.device = resolve_device(device)
        self.requested_precision = precision   # 'auto' lets backend 'auto' weigh torch bf16 too
        self.precision = amp.resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.checkpoint_path = checkpoint_path
        self.min_samples = model_min_samples(config, model)
        if backend not in _BACKENDS:
            raise PannsError(f"unknown backend {backend!r}; available: {', '.join(_BACKENDS)}")
        self.backend_name = backend
        self.backend: Backend = _BACKENDS[backend](self, optimize=optimize, **backend_options)

    @classmethod
    def load(cls, checkpoint_path: Optional[str] = None, model_type: Optional[str] = None,
             frontend: Optional[Dict[str, int]] = None, device: Union[None, bool, str, torch.device] = "cpu",
             precision: str = "fp32", backend: str = "torch", download: bool = True, **options) -> "Runtime":
        """Load a checkpoint (ours, or an official file with ``model_type``); without a path, the
        catalogue checkpoint of ``model_type`` (downloaded once into the cache when ``download``).

        frontend: front-end settings to check against the checkpoint (official files: to use)."""
        model, cfg, checkpoint_path = load_model(checkpoint_path, model_type, frontend, download)
        return cls(model, cfg, device=device, precision=precision, backend=backend,
                   checkpoint_path=checkpoint_path, **options)

    # -- facts about the model ----------------------------------------------------------------
    @property
    def frontend(self) -> FrontEnd:
        return FrontEnd.from_dict(self.config.frontend() if hasattr(self.config, "frontend") else vars(self.config))

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    @property
    def hop_size(self) -> int:
        return int(self.config.hop_size)

    @property
    def classes_num(self) -> int:
        return int(self.config.classes_num)

    @property
    def spec(self):
        """The registry entry of the model (or its base), None for unknown types."""
        return model_spec(self.config)

    @property
    def is_sed(self) -> bool:
        return config_is_sed(self.config)

    # -- running --------------------------------------------------------------------------------
    def forward(self, waveforms: Union[np.ndarray, torch.Tensor]) -> Dict[str, np.ndarray]:
        """One batch: (B, T) or (T,) float -> outputs as float32 arrays, zero-padded to the model's
        minimum length, probabilities for clipwise/framewise output (framewise trimmed to the
        frames of the unpadded input)."""
        x = as_batch(waveforms)
        n = x.shape[1]
        out = self.backend(pad_to_min(x, self.min_samples))
        for key in ("clipwise_output", "framewise_output"):
            if key in out:
                out[key] = to_probabilities(out[key], self.config)
        if "framewise_output" in out and n < self.min_samples:
            out["framewise_output"] = out["framewise_output"][:, : n // self.hop_size + 1]
        return out

    def predict(self, waveforms: Waveforms, batch_size: int = 8) -> Prediction:
        """clipwise, embedding and framewise output of waveforms at ``sample_rate``.

        waveforms: (T,) or (B, T) array/tensor, or a list of 1-D arrays of any lengths (equal
        lengths are batched together, ``batch_size`` at a time; each row equals a forward of
        that clip alone up to float rounding)."""
        if isinstance(waveforms, (np.ndarray, torch.Tensor)):
            x = as_batch(waveforms)
            items = [x[i] for i in range(len(x))]
        else:
            items = [as_batch(w)[0] for w in waveforms]
        if not items:
            raise PannsError("no waveforms given")
        results: List[Optional[Dict[str, np.ndarray]]] = [None] * len(items)
        by_len: Dict[int, List[int]] = {}
        for i, w in enumerate(items):
            by_len.setdefault(len(w), []).append(i)
        for idx in by_len.values():
            for s in range(0, len(idx), max(1, batch_size)):
                chunk = idx[s:s + batch_size]
                out = self.forward(np.stack([items[i] for i in chunk]))
                for k, i in enumerate(chunk):
                    results[i] = {key: v[k] for key, v in out.items()}
        clip = np.stack([r["clipwise_output"] for r in results])
        emb = np.stack([r["embedding"] for r in results]) if "embedding" in results[0] else None
        fw = None
        if "framewise_output" in results[0]:
            frames = [r["framewise_output"] for r in results]
            fw = np.stack(frames) if len({f.shape for f in frames}) == 1 else frames
        return Prediction(clip, emb, fw)

    def predict_batches(self, batches: Iterable[dict]) -> Iterator[Dict[str, np.ndarray]]:
        """Batch dicts (a DataLoader of {'audio_name', 'waveform'(, 'target')}) -> output dicts with
        the model's outputs (probabilities) and the batch's 'audio_name'/'target' carried over."""
        for batch in batches:
            out = self.forward(batch["waveform"])
            for key in ("audio_name", "target"):
                if key in batch:
                    v = batch[key]
                    out[key] = v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            yield out

    def predict_windows(self, audio: Union[np.ndarray, Iterable[np.ndarray]], segment_seconds: Optional[float],
                        hop_seconds: Optional[float] = None, aggregate: Optional[str] = None, batch_size: int = 8,
                        framewise: bool = False, framewise_sink: Optional[Callable[[np.ndarray], None]] = None,
                        on_window: Optional[Callable[[int], None]] = None) -> "WindowedPrediction":
        """One recording, whole or in sliding windows, streamed: ``audio`` is a 1-D array or an
        iterable of consecutive 1-D blocks (a decoder reading a long file), at ``sample_rate``.

        segment_seconds None (or a recording no longer than one window): one forward of the whole
        recording (the official behaviour). Otherwise windows of ``segment_seconds`` every
        ``hop_seconds`` (default: no overlap), both rounded to the model hop, plus a last window
        ending at the end; clipwise output and embedding are the max/mean over windows and the
        framewise output is stitched on the model's frame grid (overlaps max/mean-combined).
        framewise: keep the (frames, classes) matrix in the result; framewise_sink: receive it in
        consecutive pieces as they become final (memory stays bounded for any length).
        on_window(k): called after every k windows (progress). aggregate: max or mean (None: max)."""
        aggregate = DEFAULT_AGGREGATE if aggregate is None else aggregate
        blocks = [np.asarray(audio, dtype=np.float32)] if isinstance(audio, np.ndarray) else audio
        hop_size = self.hop_size
        win = None
        if segment_seconds is not None:
            win = max(hop_size, int(round(segment_seconds * self.sample_rate)) // hop_size * hop_size)
            hop = max(hop_size, int(round((hop_seconds or segment_seconds) * self.sample_rate)) // hop_size * hop_size)
        kept: List[np.ndarray] = []

        def sink(frames: np.ndarray) -> None:
            if framewise:
                kept.append(frames)
            if framewise_sink is not None:
                framewise_sink(frames)

        want_fw = framewise or framewise_sink is not None
        buf = np.zeros(0, np.float32)   # samples from buf_start on
        buf_start = 0
        n = 0
        pending: List[int] = []
        state = {"clip": None, "emb": None, "count": 0}
        stitcher = _Stitcher(aggregate, sink)

        def run(starts: List[int]) -> None:
            batch = np.stack([buf[s - buf_start:s - buf_start + win] for s in starts])
            out = self.forward(batch)
            for key, name in (("clipwise_output", "clip"), ("embedding", "emb")):
                if key not in out:
                    continue
                v = out[key].max(axis=0) if aggregate == "max" else out[key].sum(axis=0)
                cur = state[name]
                state[name] = v if cur is None else (np.maximum(cur, v) if aggregate == "max" else cur + v)
            if want_fw and "framewise_output" in out:
                for k, s in enumerate(starts):
                    stitcher.add(s // hop_size, out["framewise_output"][k])
                stitcher.release(starts[-1] // hop_size)
            state["count"] += len(starts)
            if on_window is not None:
                on_window(len(starts))

        next_start = 0
        last_start = -1
        for block in blocks:
            block = np.asarray(block, dtype=np.float32).reshape(-1)
            n += len(block)
            buf = np.concatenate([buf, block]) if len(buf) else block
            if win is None:
                continue
            while next_start + win <= n:
                pending.append(next_start)
                last_start = next_start
                next_start += hop
                if len(pending) == batch_size:
                    run(pending)
                    pending = []
            keep_from = min(pending[0] if pending else next_start, max(last_start, 0))
            if keep_from > buf_start:
                buf, buf_start = buf[keep_from - buf_start:], keep_from
        if n == 0:
            raise PannsError("no audio samples")
        if win is None or n <= win:   # the whole recording in one forward
            out = self.forward(buf[None])
            fw = out.get("framewise_output")
            if want_fw and fw is not None:
                sink(fw[0][: n // hop_size + 1])
            if on_window is not None:
                on_window(1)
            return WindowedPrediction(out["clipwise_output"][0], out["embedding"][0] if "embedding" in out else None,
                                      np.concatenate(kept) if kept else None, 1, n)
        final = (n - win) // hop_size * hop_size
        if final > last_start:
            pending.append(final)
        if pending:
            run(pending)
        if want_fw:
            stitcher.finish(n // hop_size + 1)
        count = state["count"]
        clip = state["clip"] if aggregate == "max" else state["clip"] / count
        emb = state["emb"]
        if emb is not None and aggregate == "mean":
            emb = emb / count
        return WindowedPrediction(clip, emb, np.concatenate(kept) if kept else None, count, n)


# ----------------------------------------------------------------------------- long recordings
def auto_segment(samples: int, sample_rate: int, segment_seconds: Optional[float]) -> Optional[float]:
    """``segment_seconds``, or AUTO_SEGMENT_SECONDS for a recording over AUTO_WINDOW_SECONDS."""
    if segment_seconds is None and samples > AUTO_WINDOW_SECONDS * sample_rate:
        return AUTO_SEGMENT_SECONDS
    return segment_seconds


def check_window_options(segment_seconds: Optional[float], seconds: Sequence[float],
                         hop_seconds: Optional[float] = None, aggregate: Optional[str] = None,
                         prefix: str = "--") -> None:
    """Window options without a segment (``hop_seconds``, ``aggregate``: as the user gave them, None when
    not given - a default is not an option given, so ``aggregate='max'`` said explicitly is checked while
    the default is not) act only on the automatic windows of recordings over AUTO_WINDOW_SECONDS
    (``auto_segment``); shorter ones run whole. ``seconds``: each input's length (inf when unknown:
    counted as long). Refused when the options change nothing, one warning when they change only some."""
    given = ([] if hop_seconds is None else [f"hop_seconds {hop_seconds:g}"]) + \
            ([] if aggregate is None else [f"aggregate {aggregate}"])
    if not given or segment_seconds is not None:
        return
    named = " and ".join(prefix + g for g in given)
    long = sum(1 for s in seconds if s > AUTO_WINDOW_SECONDS)
    if not long:
        raise PannsError(f"{named} {'has' if len(given) == 1 else 'have'} no effect without {prefix}segment_seconds: "
                         f"recordings up to {AUTO_WINDOW_SECONDS:.0f} s run whole; add {prefix}segment_seconds (e.g. "
                         f"{AUTO_SEGMENT_SECONDS:.0f}) to tag in sliding windows")
    if long < len(seconds):
        logger.warning("%s applies only to the %d of %d recordings over %.0f s (run in %.0f-s windows); "
                       "the other %d run whole: add %ssegment_seconds to window them too", named, long, len(seconds),
                       AUTO_WINDOW_SECONDS, AUTO_SEGMENT_SECONDS, len(seconds) - long, prefix)


def window_starts(n: int, win: int, hop: int, align: int = 1) -> List[int]:
    """Window starts covering ``n`` samples: every ``hop`` while a whole window fits, plus one
    last window ending at the end (its start a multiple of ``align``, the model hop)."""
    if n <= win:
        return [0]
    starts = list(range(0, n - win + 1, hop))
    last = (n - win) // align * align
    if starts[-1] < last:
        starts.append(last)
    return starts


class _Stitcher:
    """Framewise outputs of overlapping windows on one frame grid, released in order.

    Frames that no later window can touch are handed to ``sink`` ((frames, classes) arrays in
    order) as soon as they are final, so a long recording never holds its whole matrix here."""

    def __init__(self, aggregate: str, sink: Callable[[np.ndarray], None]):
        self.aggregate, self.sink = aggregate, sink
        self.base = 0                      # frame index of acc[0]
        self.acc: Optional[np.ndarray] = None
        self.cnt = np.zeros(0, np.int32)
        self.emitted = 0
        self.last: Optional[np.ndarray] = None

    def add(self, f0: int, seg: np.ndarray) -> None:
        if self.acc is None:
            self.acc = np.zeros((0, seg.shape[1]), np.float32)
        end = f0 + len(seg) - self.base
        if end > len(self.acc):
            grow = end - len(self.acc)
            self.acc = np.concatenate([self.acc, np.zeros((grow, self.acc.shape[1]), np.float32)])
            self.cnt = np.concatenate([self.cnt, np.zeros(grow, np.int32)])
        a = f0 - self.base
        if self.aggregate == "max":
            np.maximum(self.acc[a:end], seg, out=self.acc[a:end])
        else:
            self.acc[a:end] += seg
        self.cnt[a:end] += 1

    def release(self, before: int) -> None:
        """Hand over the frames with index < ``before`` (final: every later window starts there or later)."""
        k = min(max(0, before - self.base), len(self.cnt))
        if k == 0 or self.acc is None:
            return
        out = self.acc[:k]
        if self.aggregate == "mean":
            out = out / np.maximum(self.cnt[:k], 1)[:, None]
        self.sink(np.ascontiguousarray(out, dtype=np.float32))
        self.last = out[-1].copy()
        self.emitted += k
        self.acc, self.cnt, self.base = self.acc[k:], self.cnt[k:], self.base + k

    def finish(self, frames_num: int) -> None:
        """Release everything, trimmed to ``frames_num`` frames; frames after the last window's
        (less than one window hop of samples) repeat the last covered frame."""
        covered = np.nonzero(self.cnt)[0]
        keep = min(frames_num - self.base, (covered[-1] + 1) if len(covered) else 0)
        self.acc, self.cnt = self.acc[:max(keep, 0)], self.cnt[:max(keep, 0)]
        self.release(self.base + len(self.cnt))
        missing = frames_num - self.emitted
        if missing > 0 and self.last is not None:
            self.sink(np.repeat(self.last[None], missing, axis=0))
            self.emitted += missing


@dataclass
class WindowedPrediction:
    """Outputs of :meth:`Runtime.predict_windows` for one recording."""

    clipwise: np.ndarray                  # (classes,) max/mean over windows
    embedding: Optional[np.ndarray]       # (D,) max/mean over windows, or None
    framewise: Optional[np.ndarray]       # (frames, classes) when kept, else None (given to the sink)
    windows: int
    samples: int


# ----------------------------------------------------------------------------- bare models
def run_batches(model: torch.nn.Module, batches: Iterable[dict], precision: str = "fp32",
                outputs: Sequence[str] = ("clipwise_output", "segmentwise_output", "framewise_output"),
                carry: Sequence[str] = ("audio_name", "target"), fixed_batch: int = 0) -> Dict[str, np.ndarray]:
    """Run a model being trained (eval mode, no grad, its train/eval mode restored afterwards) over
    batch dicts and concatenate ``outputs`` (float32) and the batch keys in ``carry`` along the
    batch axis. The evaluation path of training; inference uses :class:`Runtime`. Tensors stay on the
    model's device until the end (one transfer, no synchronisation per batch). ``fixed_batch``: batches
    shorter than that are zero-padded to it and the padding's outputs dropped, so a compiled model sees one
    input shape (one graph; in eval mode each clip's output does not depend on the others)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    acc: Dict[str, list] = {}
    try:
        with torch.no_grad():
            for batch in batches:
                x = torch.as_tensor(batch["waveform"], dtype=torch.float32).to(device, non_blocking=True)
                n = len(x)
                if n < fixed_batch:
                    x = torch.cat([x, x.new_zeros((fixed_batch - n,) + tuple(x.shape[1:]))])
                with amp.autocast(precision, device):
                    out = model(x)
                for key in outputs:
                    if key in out:
                        acc.setdefault(key, []).append(out[key][:n].detach().float())
                for key in carry:
                    if key in batch:
                        v = batch[key]
                        acc.setdefault(key, []).append(v.detach() if isinstance(v, torch.Tensor) else np.asarray(v))
    finally:
        model.train(was_training)
    return {k: torch.cat(v).cpu().numpy() if isinstance(v[0], torch.Tensor) else np.concatenate(v, axis=0)
            for k, v in acc.items()}
