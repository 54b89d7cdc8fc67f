"""ONNX export of a PANNs model (log-mel front end included) and an ONNX Runtime backend.

Why: on a CPU the same Cnn14 graph runs faster in ONNX Runtime than in eager torch (its fused,
layout-optimised convolutions); the README's "ONNX / fast CPU inference" section has the figures.

* :func:`export_onnx` writes ``model(waveform)`` as an ONNX file with dynamic batch and length
  axes: input ``waveform`` (B, samples) float32 at the model's sample rate; outputs named as the
  model's output dict (``clipwise_output`` (B, K), ``embedding`` (B, D), ``framewise_output``
  (B, frames, K)), raw (log-softmax models stay log-softmax). The label list, front-end settings
  and model type are stored in the file's metadata (``panns.*`` keys, JSON values).
* :func:`cached_backend` exports once per (weights content, config, export settings, exporter
  versions) into one folder, ``$PANNS_CACHE/onnx/`` (``~/.cache/panns/onnx/`` when unset or
  unwritable), whatever the checkpoint's file name, in a child process (:func:`export_in_child`: the
  exporter's memory never adds to the job's), atomically, with a one-line notice, and reuses the
  file; a stale or unreadable
  cache file is rebuilt with a one-line warning; a failed export is remembered so that the
  ``auto`` backend (runtime.py) falls back to torch at once next time.
* :class:`OnnxBackend` runs such a file: ``backend(batch (B, T) float32) -> {name: array}``, the
  backend interface of ``runtime.py``.

    python3 pytorch/inference.py export --checkpoint_path Cnn14_mAP=0.431.pth --model_type Cnn14 \
        --output Cnn14.onnx [--opset 18]
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from panns.errors import PannsError
from panns.frontend import FRONTEND_KEYS
from panns.utilities import atomic_path, atomic_write, atomic_write_text, check_output_path, remove_stale_temps

logger = logging.getLogger(__name__)

# The torch.export-based exporter writes opset 18 natively; converting its graph down to 17 fails
# (ONNX has no Pad adapter from 18 to 17), and the older TorchScript exporter mis-exports these
# models (outputs off by up to 100 %, measured), so 18 is the lowest opset we can write correctly.
DEFAULT_OPSET = 18
MIN_OPSET = 18
INPUT_NAME = "waveform"
OUTPUT_ORDER = ("clipwise_output", "embedding", "framewise_output")
# Bumped when the exported graph changes for the same weights (invalidates cached files).
EXPORT_FORMAT = 1


class ExportError(PannsError):
    """The exporter cannot handle the model (not a file-system problem): worth remembering."""


def available() -> bool:
    """True when onnxruntime and the exporter's packages are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))


def _require_onnx():
    try:
        import onnxruntime  # noqa: F401  (only needed by this optional backend)
    except ImportError as e:
        raise PannsError("the ONNX backend needs onnxruntime: pip install onnxruntime "
                         f"(or use --backend torch) [{e}]")


class _Outputs(torch.nn.Module):
    """Wraps a PANNs model so its output dict becomes a tuple in OUTPUT_ORDER (ONNX outputs are
    positional)."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, waveform: torch.Tensor):
        out = self.model(waveform)
        return tuple(out[k] for k in self.names)


def _example_input(model: torch.nn.Module, sample_rate: int) -> torch.Tensor:
    """Batch of 2 (batch 1 would be specialised as a constant) random clips, a little over one
    second and at least the model's minimum length."""
    n = max(int(getattr(model, "min_samples", 0) or 0), sample_rate) + 1234
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(2, n, generator=g)


def output_names(model: torch.nn.Module, sample_rate: int) -> List[str]:
    """The tensor outputs the model returns, in OUTPUT_ORDER."""
    with torch.inference_mode():
        out = model(_example_input(model, sample_rate)[:1])
    return [k for k in OUTPUT_ORDER if isinstance(out.get(k), torch.Tensor)]


def export_metadata(config, labels: Optional[Sequence[str]] = None, opset: int = DEFAULT_OPSET,
                    min_samples: int = 0, key: str = "") -> Dict[str, str]:
    """``panns.*`` metadata entries (JSON strings) describing an exported model."""
    fe = {k: getattr(config, k) for k in FRONTEND_KEYS}
    labels = list(labels) if labels is not None else list(getattr(config, "labels", None) or [])
    meta = {"model_type": config.model_type, "frontend": fe, "classes_num": int(config.classes_num),
            "output": getattr(config, "output", "sigmoid"), "labels": labels, "min_samples": int(min_samples),
            "input": f"{INPUT_NAME}: (batch, samples) float32 at {fe['sample_rate']} Hz", "opset": int(opset),
            "cache_key": key}
    return {f"panns.{k}": json.dumps(v) for k, v in meta.items()}


def read_metadata(path: str) -> Dict[str, object]:
    """The ``panns.*`` metadata of an exported file, decoded ({} for files without it)."""
    _require_onnx()
    import onnxruntime as ort  # heavy optional dependency: imported only when the backend is used

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    props = sess.get_modelmeta().custom_metadata_map
    return {k[6:]: json.loads(v) for k, v in props.items() if k.startswith("panns.")}


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter cannot write (below MIN_OPSET) or the installed onnx does not know (an opset
    from the future failed deep inside the export with a traceback)."""
    if opset < MIN_OPSET:
        raise PannsError(f"--opset {opset} is not supported: the exporter writes opset {MIN_OPSET} or newer")
    import onnx  # optional dependency, only for exports

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise PannsError(f"--opset {opset} is newer than the installed onnx {onnx.__version__} knows (at most "
                         f"{newest}); pass --opset {MIN_OPSET}..{newest}")


def export_onnx(model: torch.nn.Module, config, path: str, opset: int = DEFAULT_OPSET,
                labels: Optional[Sequence[str]] = None, key: str = "") -> List[str]:
    """Export ``model`` (eval mode, fp32, CPU copy) to ``path`` atomically, one self-contained file.

    Returns the output names. Raises ExportError (one line) when the model cannot be exported."""
    check_opset(opset)
    check_output_path(path, what="ONNX output")   # before the export: 15-40 s for Cnn14
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError as e:
        raise PannsError(f"ONNX export needs onnx and onnxscript: pip install onnx onnxscript [{e}]")
    sr = int(config.sample_rate)
    p0 = next(model.parameters())
    cpu_model = model.eval() if (p0.device.type, p0.dtype) == ("cpu", torch.float32) else \
        copy.deepcopy(model).float().cpu().eval()
    names = output_names(cpu_model, sr)
    x = _example_input(cpu_model, sr)
    dims = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    remove_stale_temps(path)
    try:
        # The exporter prints progress lines on stdout, which would break audio_tagging's printout.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(_Outputs(cpu_model, names), (x,), input_names=[INPUT_NAME],
                                     output_names=names, dynamic_shapes=({0: dims[0], 1: dims[1]},),
                                     opset_version=opset, dynamo=True, external_data=False, verbose=False)
    except PannsError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"cannot export {config.model_type} to ONNX: {type(e).__name__}: {first[:300]}")
    meta = export_metadata(config, labels, opset, getattr(cpu_model, "min_samples", 0) or 0, key)
    for k, v in meta.items():
        prog.model.metadata_props[k] = v
    with atomic_write(path, suffix=".onnx") as tmp:
        prog.save(tmp, external_data=False)
    return names



def export_in_child(model: torch.nn.Module, config, path: str, opset: int = DEFAULT_OPSET,
                    key: str = "") -> List[str]:
    """:func:`export_onnx` in a child Python process, so that the exporter's memory (the traced
    program, the ONNX graph and its serialisation: ~1.9 GB for Cnn14, measured) never adds to this
    process's peak and is all returned when the child exits. The model travels as a pickled module in
    a temporary file beside ``path`` (loaded there memory-mapped). Where the child cannot rebuild the
    model (a class defined in a script) the export runs here, after one line saying so."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _remove_stale_export_dirs(folder)
    p0 = next(model.parameters())
    cpu_model = model if (p0.device.type, p0.dtype) == ("cpu", torch.float32) else copy.deepcopy(model).float().cpu()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".panns_export_") as tmp:
        model_file, result_file = os.path.join(tmp, "model.pt"), os.path.join(tmp, "result.json")
        try:
            torch.save({"model": cpu_model.eval(), "config": config}, model_file)
        except (pickle.PicklingError, AttributeError, TypeError) as e:   # an unpicklable module
            logger.info("exporting in this process (%s cannot be handed to a child: %s)", config.model_type, e)
            return export_onnx(model, config, path, opset=opset, key=key)
        src_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the folder holding panns/
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src_root, os.environ.get("PYTHONPATH")) if p))
        cmd = [sys.executable, "-c", "from panns.onnx_backend import _export_child; _export_child()",
               model_file, path, str(opset), key, result_file]
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            with open(result_file, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError):
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise ExportError(f"cannot export {config.model_type} to ONNX: the export process failed: {tail[0][:300]}")
    if "names" in result:
        return list(result["names"])
    if "export_error" in result:
        raise ExportError(result["export_error"])
    if "os_error" in result:
        raise OSError(int(result.get("errno") or 0), result["os_error"])
    if "load_error" in result:
        logger.info("exporting in this process (the export process cannot rebuild %s: %s)", config.model_type,
                    result["load_error"])
        return export_onnx(model, config, path, opset=opset, key=key)
    raise PannsError(result.get("error", f"cannot export {config.model_type} to ONNX"))


def _remove_stale_export_dirs(folder: str, age_s: float = 6 * 3600) -> None:
    """Remove the temporary folders (a pickled model each) of exports whose parent process died before it
    could clean up (e.g. a script that ended while panns.load's background export ran), once they are old."""
    now = time.time()
    for name in os.listdir(folder):
        p = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if name.startswith(".panns_export_") and now - os.path.getmtime(p) > age_s:
                shutil.rmtree(p, ignore_errors=True)


def _export_child() -> None:
    """Entry of the child process of :func:`export_in_child` (argv: model file, output path, opset, key,
    result file): exports and writes a one-key JSON result."""
    model_file, path, opset, key, result_file = sys.argv[1:6]
    try:
        obj = torch.load(model_file, map_location="cpu", weights_only=False, mmap=True)
        model, config = obj["model"], obj["config"]
    except Exception as e:  # a class this process cannot import: the parent exports itself
        result = {"load_error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
    else:
        try:
            result = {"names": export_onnx(model, config, path, opset=int(opset), key=key)}
        except ExportError as e:
            result = {"export_error": str(e)}
        except OSError as e:
            result = {"os_error": e.strerror or str(e), "errno": e.errno or 0}
        except PannsError as e:
            result = {"error": str(e)}
    atomic_write_text(result_file, json.dumps(result))


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_loggers(names=("onnx_ir", "onnxscript", "torch.onnx", "torch.onnx._internal.exporter._registration",
                          "torch.export", "torch._dynamo", "torch.fx", "torch._export")):
    """The exporter's libraries log every graph pass (and absent optional packages); keep errors.
    A filter, not only a level: torch resets its loggers' levels when the exporter starts."""
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
        lg.addFilter(_errors_only)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)
            lg.removeFilter(_errors_only)


# ----------------------------------------------------------------------------- cache
def weights_hash(model: torch.nn.Module) -> str:
    """sha1 over every state_dict tensor (name, shape, dtype, all bytes): the identity of the
    exported weights, whatever file they came from. Hashing Cnn14 reads 320 MB: callers that need the
    key twice pass it on (see :func:`cached_export_key`)."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():   # the tensor's own bytes, not a copy (half the time of .tobytes() on Cnn14)
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def cache_key(model: torch.nn.Module, config, opset: int = DEFAULT_OPSET) -> str:
    """Key of an export: weights, model config, opset, format and exporter versions."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    # The exporter's version from its package metadata: importing onnxscript takes seconds and a
    # cached export never needs it.
    parts = [weights_hash(model), json.dumps(cfg, sort_keys=True, default=str), f"opset={opset}",
             f"format={EXPORT_FORMAT}", f"torch={torch.__version__}", f"onnxscript={_version('onnxscript')}"]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


USER_CACHE = os.path.join("~", ".cache", "panns", "onnx")


def cache_path(config, key: str, checkpoint_path: Optional[str] = None) -> str:
    """Where the export of ``key`` lives: ``$PANNS_CACHE/onnx/<model>-<key>.onnx`` (PANNS_CACHE unset:
    ``~/.cache/panns/onnx/``). One folder for every checkpoint: the key is the weights' content, so the
    same weights under several file names share one export. ``checkpoint_path`` is not used (kept for
    callers of the time when exports sat beside their checkpoints)."""
    env = os.environ.get("PANNS_CACHE")
    if env:
        return os.path.join(os.path.abspath(os.path.expanduser(env)), "onnx", f"{config.model_type}-{key}.onnx")
    return user_cache_path(config, key)


def user_cache_path(config, key: str) -> str:
    """``~/.cache/panns/onnx/<model>-<key>.onnx``: where an export goes when $PANNS_CACHE cannot be written."""
    return os.path.join(os.path.expanduser(USER_CACHE), f"{config.model_type}-{key}.onnx")


def cached_export_key(model: torch.nn.Module, config, checkpoint_path: Optional[str] = None,
                      opset: int = DEFAULT_OPSET) -> Optional[str]:
    """The cache key of ``model``'s export when a file for it is in the cache (where
    :func:`cached_backend` looks; not read), else None. Hand the key to :func:`cached_backend`
    (``key=``) so that it does not hash the weights again."""
    key = cache_key(model, config, opset)
    paths = (cache_path(config, key, checkpoint_path), user_cache_path(config, key))
    return key if any(os.path.isfile(p) for p in paths) else None


def _failure_marker(path: str) -> str:
    return path + ".failed"


def _failed_before(path: str, key: str) -> Optional[str]:
    """The recorded reason when exporting ``key`` to ``path`` failed before, else None."""
    try:
        with open(_failure_marker(path), encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return str(rec.get("error", "")) if isinstance(rec, dict) and rec.get("cache_key") == key else None


def _record_failure(path: str, key: str, error: str) -> None:
    """Remember a failed export (best effort), so ``auto`` does not spend the export time again."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_text(_failure_marker(path), json.dumps({"cache_key": key, "error": error}))
    except OSError:
        pass


def _reuse_cached(path: str, key: str, threads: Optional[int], what: str) -> Optional["OnnxBackend"]:
    """The backend on the cached file at ``path`` when its key is ``key``; None (with a one-line
    warning when a stale or unreadable file is there) when it must be rebuilt."""
    if not os.path.exists(path):
        return None
    try:
        backend = OnnxBackend(path, threads)
        if backend.metadata.get("cache_key") == key:
            return backend
        reason = "it was made from other weights or settings"
    except PannsError as e:  # a truncated or foreign file: rebuild it
        reason = f"it cannot be read ({str(e)[:120]})"
    logger.warning("rebuilding the %s %s: %s", what, path, reason)
    return None


def cached_backend(model: torch.nn.Module, config, checkpoint_path: Optional[str] = None,
                   opset: int = DEFAULT_OPSET, path: Optional[str] = None,
                   threads: Optional[int] = None, retry_failed: bool = True,
                   key: Optional[str] = None) -> "OnnxBackend":
    """An :class:`OnnxBackend` on a current export of ``model``: the cached file when its key
    matches (the session that checks it is the one returned), else a fresh export with a one-line
    notice (a stale or unreadable file is rebuilt, with a one-line warning).

    The export runs in a child process (:func:`export_in_child`). Where the first-choice folder
    (:func:`cache_path`) cannot be written, the export goes to ``~/.cache/panns/onnx``. A failed export is remembered next to the cache file
    (``<file>.failed``); ``retry_failed=False`` (the ``auto`` backend) then fails at once instead
    of spending the export time again. ``key``: ``cache_key(model, config, opset)`` when the caller
    has it already."""
    _require_onnx()
    key = key or cache_key(model, config, opset)
    paths = [path] if path else list(dict.fromkeys([cache_path(config, key, checkpoint_path),
                                                    user_cache_path(config, key)]))
    for p in paths:
        cached = _reuse_cached(p, key, threads, "ONNX export")
        if cached is not None:
            return cached
    if not retry_failed:
        for p in paths:
            reason = _failed_before(p, key)
            if reason is not None:
                raise PannsError(f"{reason} (an earlier run; delete {_failure_marker(p)} to try again)")
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        try:
            os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
            export_in_child(model, config, p, opset=opset, key=key)
        except ExportError as e:
            _record_failure(p, key, str(e))
            raise
        except OSError as e:  # an unwritable or full cache folder: the next one, else one line
            if i + 1 < len(paths):
                logger.info("cannot write the ONNX export to %s (%s); using %s", p, e.strerror or e, paths[i + 1])
                continue
            raise PannsError(f"cannot write the ONNX export of {config.model_type} to {p}: {e.strerror or e}")
        with contextlib.suppress(OSError):   # an earlier failure that an explicit retry got past
            os.remove(_failure_marker(p))
        logger.info("exported %s to ONNX once (%.1f s); cached at %s", config.model_type,
                    time.perf_counter() - t0, p)
        return OnnxBackend(p, threads)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- int8
INT8_FORMAT = 1   # bumped when the quantisation recipe changes (invalidates cached int8 files)


def calibration_clips(sample_rate: int, n: int = 8, seconds: float = 10.0) -> List[np.ndarray]:
    """Seeded synthetic sound scenes (tones, noise bursts, clicks of the demo data set) used to
    calibrate int8 activation ranges, so quantisation needs no user data."""
    from panns.demo.data import CLASSES, synth_clip  # the demo synthesiser, only for calibration

    rs = np.random.RandomState(0)
    return [synth_clip(rs, list(rs.choice(len(CLASSES), size=1 + i % 2, replace=False)), seconds,
                       sample_rate).astype(np.float32) for i in range(n)]


def quantize_int8(src: str, dst: str, config, key: str = "",
                  calibration: Optional[Sequence[np.ndarray]] = None) -> None:
    """Static int8 quantisation (QDQ, per-channel weights, activation ranges calibrated on
    ``calibration`` waveforms, default :func:`calibration_clips`) of the convolutions of an fp32
    export, written atomically.

    The STFT convolutions, the mel projection and the fully connected head stay fp32: quantising
    the front end too put the Cnn14 embedding cosine at 0.994; without it 0.99993 (measured)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load(src)
    dims = {t.name: list(t.dims) for t in proto.graph.initializer}
    stft = int(config.window_size)
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"
             and (dims.get(n.input[1]) or [0])[-1] != stft]
    meta = {p.key: p.value for p in proto.metadata_props}
    del proto
    clips = list(calibration) if calibration is not None else calibration_clips(int(config.sample_rate))

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{INPUT_NAME: c[None]} for c in clips])

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="panns_int8_") as d, _quiet_loggers(("onnxruntime", "root")):
        pre, out = os.path.join(d, "pre.onnx"), os.path.join(d, "int8.onnx")
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(pre, out, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv"], nodes_to_quantize=convs)
        q = onnx.load(out)
        meta.update({"panns.precision": json.dumps("int8"), "panns.cache_key": json.dumps(key)})
        onnx.helper.set_model_props(q, meta)
        with atomic_write(dst, suffix=".onnx") as tmp:
            onnx.save(q, tmp)


def cached_int8_backend(model: torch.nn.Module, config, checkpoint_path: Optional[str] = None,
                        opset: int = DEFAULT_OPSET, threads: Optional[int] = None) -> "OnnxBackend":
    """Like :func:`cached_backend`, for the int8 quantisation of the fp32 export (both cached)."""
    fp32 = cached_backend(model, config, checkpoint_path, opset, threads=1)
    key = f"{fp32.metadata.get('cache_key', '')}-int8v{INT8_FORMAT}"
    path = fp32.path[:-len(".onnx")] + ".int8.onnx"
    cached = _reuse_cached(path, key, threads, "int8 model")
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    quantize_int8(fp32.path, path, config, key)
    logger.info("quantised %s to int8 once (%.1f s); cached at %s", config.model_type, time.perf_counter() - t0, path)
    return OnnxBackend(path, threads)


# ----------------------------------------------------------------------------- runtime
class OnnxBackend:
    """Runs an exported PANNs file in ONNX Runtime on CPU: ``(B, T) float32 -> {name: (B, ...)}``.

    threads: intra-op threads (default: torch's thread count, so both backends use the same cores)."""

    name = "onnxruntime"
    # One call already uses every intra-op thread; callers should not run several side by side
    # (measured on 2 cores, batch 8 of Cnn14: one 2-thread call 2.30 clips/s, two concurrent
    # half batches 2.14-2.20).
    owns_threads = True

    def __init__(self, path: str, threads: Optional[int] = None):
        _require_onnx()
        import onnxruntime as ort  # optional dependency, see _require_onnx

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # No memory arena: it keeps the largest batch's activations (hundreds of MB for Cnn14) for the
        # session's life; without it a 20-min SED stays bounded, at the same speed (Cnn14, batch 8 of
        # 10 s: 4.05 s a batch without, 3.96 s with, within the noise of a shared 2-core machine).
        so.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise PannsError(f"cannot load ONNX model {path}: {str(e).strip().splitlines()[0][:300]}")
        self.path = path
        self.output_names = [o.name for o in self.session.get_outputs()]
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[6:]: json.loads(v) for k, v in props.items() if k.startswith("panns.")}

    def __call__(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        outs = self.session.run(None, {INPUT_NAME: x})
        return dict(zip(self.output_names, outs))


def backend_factory(rt, optimize: bool = False, opset: int = DEFAULT_OPSET, onnx_path: Optional[str] = None,
                    threads: Optional[int] = None, int8: bool = False, retry_failed: bool = True,
                    cache_key: Optional[str] = None, **_) -> OnnxBackend:
    """``runtime.register_backend`` factory: export (cached) the runtime's model, then run it
    (``int8``: its static int8 quantisation, also cached). retry_failed, cache_key (as ``key``): see
    :func:`cached_backend`."""
    if rt.device.type != "cpu":
        raise PannsError(f"the onnxruntime backend runs on CPU; device {rt.device} asked for (use --backend torch)")
    if rt.precision != "fp32":
        raise PannsError(f"the onnxruntime backend runs in fp32; precision {rt.precision} asked for "
                         "(use --precision fp32 or --backend torch)")
    if onnx_path:
        return OnnxBackend(onnx_path, threads)
    if int8:
        return cached_int8_backend(rt.model, rt.config, getattr(rt, "checkpoint_path", None), opset, threads)
    return cached_backend(rt.model, rt.config, getattr(rt, "checkpoint_path", None), opset, threads=threads,
                          retry_failed=retry_failed, key=cache_key)


# ----------------------------------------------------------------------------- checks
def max_relative_difference(model: torch.nn.Module, backend: "OnnxBackend", waveforms: np.ndarray) -> float:
    """Largest |onnx - torch| over every output, divided by the largest |torch| value of that
    output (the export's accuracy on ``waveforms`` (B, T))."""
    with torch.inference_mode():
        ref = model(torch.from_numpy(np.ascontiguousarray(waveforms, dtype=np.float32)))
    out = backend(waveforms)
    worst = 0.0
    for k, v in out.items():
        r = ref[k].float().numpy()
        worst = max(worst, float(np.abs(v - r).max() / max(float(np.abs(r).max()), 1e-12)))
    return worst


def probe_waveforms(sample_rate: int, min_samples: int, seconds: float = 1.0, batch: int = 2) -> np.ndarray:
    """(batch, samples) of seeded noise, ``seconds`` long but never shorter than ``min_samples``."""
    n = max(int(seconds * sample_rate), int(min_samples))
    return (0.1 * np.random.RandomState(0).randn(batch, n)).astype(np.float32)


def export_checked(model: torch.nn.Module, config, path: str, opset: int = DEFAULT_OPSET,
                   labels: Optional[Sequence[str]] = None, tolerance: float = 1e-4) -> float:
    """Export to ``path`` (see :func:`export_onnx`), then run the file in ONNX Runtime on a probe
    clip and return its largest relative difference to torch; above ``tolerance`` the file is
    removed and PannsError raised (a wrong export must not be deployed). The export is checked under
    a temporary name and renamed only when it passes, so a file already at ``path`` survives a failure."""
    check_output_path(path, what="ONNX output")   # before the export: 15-40 s for Cnn14
    remove_stale_temps(path)   # checked exports of runs that were killed
    tmp = atomic_path(path) + ".onnx"
    try:
        export_onnx(model, config, tmp, opset=opset, labels=labels)
        err = max_relative_difference(model, OnnxBackend(tmp),
                                      probe_waveforms(int(config.sample_rate), getattr(model, "min_samples", 0) or 0))
        if not err <= tolerance:
            raise PannsError(f"the ONNX export of {config.model_type} differs from torch by {err:.2g} of the largest "
                             f"output (more than {tolerance:g}); nothing written")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    return err
