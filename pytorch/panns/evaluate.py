"""Evaluation of a tagging model on an index file: per-class AP/AUC, mAP, mAUC, d-prime.

Official ``evaluate.py`` called scikit-learn on all 527 columns. On a small evaluation set a class
without positives gets AP 0 (and AUC NaN) with a warning, which silently dilutes mAP. Here a class
only counts where its metric is defined: AP needs at least one positive, AUC at least one positive
and one negative. Undefined per-class entries are NaN (a marker, not a number to average); the
summary numbers (mAP, mAUC, d-prime) are means over the defined classes, never NaN, and say how
many classes they cover.

AP and AUC are scikit-learn's definitions (``average_precision_score``: precision weighted by the recall
step at each distinct score; ``roc_auc_score``: the area under the ROC curve, ties as a diagonal), computed
for all classes at once: one sort of the (N, C) scores instead of one scikit-learn call per class. On the
AudioSet evaluation set (20k clips x 527 classes) scikit-learn took over a minute per evaluation, longer
than the training between two evaluations on a fast GPU; the results agree to float rounding (tests).

Statistics follow the official pickle (``{'bal': [stat, ...], 'test': [stat, ...]}``, each stat
``{'average_precision': (C,), 'auc': (C,), 'iteration': int}``) and are also written as readable
``statistics.json``; every file is written atomically.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import pickle
import time
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from panns import data_generator as dg
from panns import runtime
from panns.utilities import atomic_path, create_folder, d_prime, read_statistics

logger = logging.getLogger(__name__)

# A class whose scores vary less than this across the evaluated clips (std of probabilities) is
# "degenerate": the model gives every clip the same score, so its AP/AUC only measure ties.
DEGENERATE_STD = 1e-4
CONSTANT_OUTPUT_HINT = ("usual causes: BatchNorm running statistics that do not match the data (too few "
                        "training steps, or a frozen base evaluated in eval mode), a dead head (every ReLU "
                        "before the classifier off), or a learning rate far too high or too low")


def degenerate_classes(scores, std: float = DEGENERATE_STD) -> np.ndarray:
    """(C,) bool: classes whose scores (N, C) (array or tensor) are constant or nearly so across the N clips."""
    scores = torch.as_tensor(scores).to(torch.float64)
    if scores.ndim != 2 or len(scores) < 2:
        return np.zeros(scores.shape[-1] if scores.ndim else 0, dtype=bool)
    return (scores.std(dim=0, correction=0) < std).cpu().numpy()


def check_constant_outputs(scores, what: str = "model", log: Optional[logging.Logger] = None,
                           name: Optional[str] = None) -> int:
    """Count degenerate classes of ``scores`` (N, C); when at least half of them are, warn in one line
    (a model that cannot tell clips apart), naming the evaluated set ``name`` when given (training
    evaluates two sets, whose warnings would otherwise read alike). Returns the count."""
    bad = degenerate_classes(scores)
    n, k = int(bad.sum()), int(bad.size)
    if k and 2 * n >= k:
        where = f" on {_set_name(name)}" if name else ""
        (log or logger).warning("%s scores%s are (nearly) constant across the %d evaluated clips for %d of %d "
                                "classes (std < %g): it gives every clip the same output; %s", what, where,
                                len(scores), n, k, DEGENERATE_STD, CONSTANT_OUTPUT_HINT)
    return n


def _set_name(name: str) -> str:
    """A set's name as it reads mid-sentence ('Evaluation set eval' -> 'evaluation set eval')."""
    name = " ".join(str(name).split())
    return name[:1].lower() + name[1:] if name[:1].isupper() and name[1:2].islower() else name


def _curve_steps(target: torch.Tensor, output: torch.Tensor):
    """The steps of every row's ranking, highest score first (NaN last), one step per run of equal scores (the
    curves' thresholds): (true positives gained, clips gained, true positives before, clips seen after) per step,
    each (C, N) float64 and 0 outside the step ends. target (C, N) bool, output (C, N) float64, rows contiguous."""
    c, n = output.shape
    negated, order = torch.sort(-output, dim=1)   # ascending sort of the negated scores puts NaN last, as numpy
    tps = torch.gather(target, 1, order).to(torch.float64).cumsum(1)
    seen = torch.arange(1, n + 1, dtype=torch.float64, device=output.device).expand(c, n)
    end = torch.ones((c, n), dtype=torch.bool, device=output.device)
    end[:, :-1] = negated[:, 1:] != negated[:, :-1]
    zero = torch.zeros((), dtype=torch.float64, device=output.device)

    def before(values: torch.Tensor) -> torch.Tensor:   # the value at the previous step end (0 before the first)
        last = torch.where(end, values, zero).cummax(dim=1).values
        return torch.cat([torch.zeros((c, 1), dtype=torch.float64, device=output.device), last[:, :-1]], dim=1)

    tps_before, seen_before = before(tps), before(seen)
    return (torch.where(end, tps - tps_before, zero), torch.where(end, seen - seen_before, zero), tps_before,
            torch.where(end, seen, zero))


def average_precision(target: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Per-column AP, scikit-learn's ``average_precision_score``: target (N, C) bool, output (N, C) scores ->
    (C,) float64, NaN for columns without positives. The sum over distinct scores, from the highest, of the
    recall gained there times the precision there."""
    return ap_auc(target, output)[0]


def roc_auc(target: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Per-column ROC AUC, scikit-learn's ``roc_auc_score`` (ties as a diagonal step: half credit); (C,) float64,
    NaN for columns without both positives and negatives."""
    return ap_auc(target, output)[1]


def ap_auc(target, output, device: Optional[torch.device] = None):
    """(AP, AUC) per column, (C,) float64 arrays each, from one sort of each column (see :func:`average_precision`,
    :func:`roc_auc`). target (N, C) bool and output (N, C) scores, arrays or tensors; computed in float64 with torch
    on ``device`` (default: the CPU): a GPU takes milliseconds for AudioSet's 20k x 527, numpy took 3.5 s."""
    out = torch.as_tensor(output).to(device or "cpu", torch.float64).T.contiguous()   # (C, N): rows sort fast
    tgt = torch.as_tensor(target).to(out.device).bool().T.contiguous()
    tp_gain, seen_gain, tp_before, seen_end = _curve_steps(tgt, out)
    pos = tp_gain.sum(dim=1)
    neg = out.shape[1] - pos
    zero = torch.zeros((), dtype=torch.float64, device=out.device)
    precision = torch.where(seen_end > 0, (tp_before + tp_gain) / torch.where(seen_end > 0, seen_end, 1.0), zero)
    ap = (tp_gain * precision).sum(dim=1) / pos
    # Each negative in a step is outranked by every positive before the step and half those in it.
    auc = ((seen_gain - tp_gain) * (tp_before + tp_gain / 2)).sum(dim=1) / (pos * neg)
    nan = torch.full((), float("nan"), dtype=torch.float64, device=out.device)
    return (torch.where(pos > 0, ap, nan).cpu().numpy(),
            torch.where((pos > 0) & (neg > 0), auc, nan).cpu().numpy())


def compute_metrics(target, clipwise_output, device: Optional[torch.device] = None,
                    name: Optional[str] = None) -> Dict[str, object]:
    """Per-class AP and AUC plus their means over the classes where they are defined.

    target: (N, C) in {0, 1} (values >= 0.5 count as positive); clipwise_output: (N, C) scores; arrays or
    tensors, computed on ``device`` (default: the CPU; the evaluations of training use the model's device).
    Returns 'average_precision' (C,), 'auc' (C,) (NaN where undefined), 'mAP', 'mAUC', 'd_prime',
    'ap_classes', 'auc_classes' (how many classes each mean covers), 'classes_num', 'clips',
    'positives' (C,) int64 (each class's positive clips in the targets scored here: the counts that go with
    these AP/AUC), 'degenerate_classes' (classes whose scores are constant across clips; warned about when
    most are, the warning naming the set ``name`` when given).
    """
    output = torch.as_tensor(clipwise_output).to(device or "cpu", torch.float64)
    target = torch.as_tensor(target).to(output.device) >= 0.5
    if target.shape != output.shape or target.ndim != 2:
        raise ValueError(f"target {tuple(target.shape)} and output {tuple(output.shape)} must both be (N, C)")
    n, classes_num = target.shape
    positives = target.sum(dim=0).cpu().numpy()
    ap = np.full(classes_num, np.nan)
    auc = np.full(classes_num, np.nan)
    has_pos = positives > 0
    has_both = has_pos & (positives < n)
    if has_pos.any():
        cols = torch.from_numpy(np.flatnonzero(has_pos)).to(output.device)
        ap[has_pos], auc[has_pos] = ap_auc(target[:, cols], output[:, cols], output.device)
        auc[~has_both] = np.nan
    m_ap = float(np.mean(ap[has_pos])) if has_pos.any() else 0.0
    m_auc = float(np.mean(auc[has_both])) if has_both.any() else 0.5
    return {"average_precision": ap, "auc": auc, "mAP": m_ap, "mAUC": m_auc, "d_prime": float(d_prime(m_auc)),
            "ap_classes": int(has_pos.sum()), "auc_classes": int(has_both.sum()),
            "classes_num": int(classes_num), "clips": int(n), "positives": positives.astype(np.int64),
            "degenerate_classes": check_constant_outputs(output, name=name)}


def summarize(stat: Dict[str, object]) -> Dict[str, object]:
    """Summary numbers of one official stat dict (per-class arrays, NaN = undefined)."""
    ap = np.asarray(stat["average_precision"], dtype=np.float64)
    auc = np.asarray(stat["auc"], dtype=np.float64)
    ap_ok, auc_ok = ~np.isnan(ap), ~np.isnan(auc)
    m_auc = float(auc[auc_ok].mean()) if auc_ok.any() else 0.5
    out = {"iteration": int(stat.get("iteration", -1)),
           "mAP": float(ap[ap_ok].mean()) if ap_ok.any() else 0.0,
           "mAUC": m_auc, "d_prime": float(d_prime(m_auc)),
           "ap_classes": int(ap_ok.sum()), "auc_classes": int(auc_ok.sum()), "classes_num": int(ap.size)}
    for key in ("clips", "degenerate_classes"):
        if key in stat:
            out[key] = int(stat[key])
    return out




def forward(model: torch.nn.Module, loader: Iterable[dict], precision: str = "fp32",
            return_target: bool = True, fixed_batch: int = 0) -> Dict[str, np.ndarray]:
    """Run ``model`` (eval mode) over every batch of ``loader``; concatenate along the batch axis.

    Returns 'audio_name' (N,), 'clipwise_output' (N, C) float32 and, if the batches carry it,
    'target' (N, C). The model's train/eval mode is restored afterwards. ``fixed_batch``: see
    ``runtime.run_batches`` (one input shape for a compiled model).
    """
    out = runtime.run_batches(model, loader, precision, outputs=("clipwise_output",),
                              carry=("audio_name", "target") if return_target else ("audio_name",),
                              fixed_batch=fixed_batch)
    out.setdefault("audio_name", np.zeros(0, dtype=str))
    out.setdefault("clipwise_output", np.zeros((0, 0), np.float32))
    if "target" in out:
        out["target"] = out["target"].astype(np.float32)
    return out


class Evaluator:
    """``Evaluator(model).evaluate(loader)`` -> per-class AP/AUC and their summaries (see compute_metrics).

    ``model`` is the unwrapped module (no DDP/compile wrapper). Under torch.distributed every rank
    evaluates the batches its loader yields (a shard) and the outputs are gathered, so all ranks get
    the same result; without a process group the loader's batches are all evaluated here.
    ``compile_backend`` (a compiled training run): the forward is ``torch.compile``d too, with one input
    shape (shorter batches are padded to ``batch_size``, the loaders' batch); if the first compiled
    evaluation fails, evaluation goes on eagerly after one log line. Batches reach the device a batch ahead
    (``data_generator.device_batches``).
    """

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", compile_backend: Optional[str] = None,
                 batch_size: int = 0):
        self.model = model
        self.precision = precision
        self.batch_size = batch_size
        self.compiled: Optional[torch.nn.Module] = None
        if compile_backend:
            self.compiled = torch.compile(model, backend=compile_backend, dynamic=False)
        self._verified = False   # a compiled evaluation has run through once

    def _forward(self, data_loader: Iterable[dict], device: torch.device) -> Dict[str, np.ndarray]:
        # int16 batches (half the bytes from the loader) become float32 on the device, as in training
        model = self.compiled if self.compiled is not None else self.model
        batches = dg.device_batches(data_loader, device)
        return forward(model, batches, precision=self.precision, return_target=True,
                       fixed_batch=self.batch_size if self.compiled is not None else 0)

    def evaluate(self, data_loader: Iterable[dict], name: Optional[str] = None) -> Optional[Dict[str, object]]:
        """Metrics of the model over ``data_loader``'s batches (of this rank's shard). Under torch.distributed the
        outputs are gathered to rank 0, which alone computes the metrics; the other ranks return None.
        The result also holds 'seconds' (the whole call) and 'metrics_seconds' (the AP/AUC part).
        ``name``: the evaluated set, as warnings name it (default: the loader's ``name`` where it has one,
        as an eval_cache.ResidentBatches has)."""
        name = name or getattr(data_loader, "name", None)
        t0 = time.perf_counter()
        device = next(self.model.parameters()).device
        if self.compiled is not None and not self._verified:
            try:
                out = self._forward(data_loader, device)
            except Exception as e:  # noqa: BLE001 - any compiler failure; the eager retry raises real errors again
                logger.warning("torch.compile of the evaluation forward failed (%s: %s); evaluating eagerly",
                               type(e).__name__, " ".join(str(e).split())[:200])
                self.compiled = None
                out = self._forward(data_loader, device)
            self._verified = True
        else:
            out = self._forward(data_loader, device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            mine = {k: out[k] for k in ("clipwise_output", "target") if k in out}
            shards: Optional[List[Optional[dict]]] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
            dist.gather_object(mine, shards, dst=0)
            if shards is None:
                return None
            parts = [s for s in shards if s and len(s["clipwise_output"])]
            out = {k: np.concatenate([s[k] for s in parts]) for k in ("clipwise_output", "target")}
        if "target" not in out or len(out["clipwise_output"]) == 0:
            raise ValueError("evaluation loader yielded no clips with targets")
        t1 = time.perf_counter()
        stats = compute_metrics(out["target"], out["clipwise_output"], device=device, name=name)   # ms on a GPU
        t2 = time.perf_counter()
        stats["seconds"], stats["metrics_seconds"] = t2 - t0, t2 - t1
        logger.debug("evaluated %d clips in %.2f s", stats["clips"], t2 - t0)
        return stats


def _atomic_write(path: str, data: bytes) -> None:
    tmp = atomic_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class StatisticsContainer:
    """Official statistics container: append per-evaluation stats, dump them after every evaluation.

    Files: ``statistics.pkl`` (official structure), ``statistics_<YYYY-mm-dd_HH-MM-SS>.pkl`` (backup of
    this run, official), ``statistics.json`` (summaries: mAP, mAUC, d-prime, classes counted, iteration).
    """

    KEYS = ("average_precision", "auc", "iteration")

    def __init__(self, statistics_path: str):
        self.statistics_path = statistics_path
        stem = os.path.splitext(statistics_path)[0]
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        self.backup_statistics_path = f"{stem}_{stamp}.pkl"
        self.json_path = f"{stem}.json"
        self.statistics_dict: Dict[str, List[dict]] = {"bal": [], "test": []}
        self.extra: Dict[str, Dict[int, dict]] = {"bal": {}, "test": {}}

    def append(self, iteration: int, statistics: Dict[str, object], data_type: str) -> None:
        stat = {"average_precision": np.asarray(statistics["average_precision"], dtype=np.float64),
                "auc": np.asarray(statistics["auc"], dtype=np.float64), "iteration": int(iteration)}
        self.statistics_dict.setdefault(data_type, []).append(stat)
        extra = {k: int(statistics[k]) for k in ("clips", "degenerate_classes") if k in statistics}
        if extra:
            self.extra.setdefault(data_type, {})[int(iteration)] = extra

    def summaries(self) -> Dict[str, List[dict]]:
        return {k: [{**summarize(s), **self.extra.get(k, {}).get(s["iteration"], {})} for s in v]
                for k, v in self.statistics_dict.items()}

    def dump(self) -> None:
        create_folder(os.path.dirname(os.path.abspath(self.statistics_path)))
        blob = pickle.dumps(self.statistics_dict)
        for path in (self.statistics_path, self.backup_statistics_path):
            _atomic_write(path, blob)
            logger.info("    Dump statistics to %s", path)
        _atomic_write(self.json_path, (json.dumps(self.summaries(), indent=1) + "\n").encode())

    def load_state_dict(self, resume_iteration: int) -> None:
        """Reload ``statistics.pkl`` keeping the evaluations at iterations <= resume_iteration."""
        if not os.path.isfile(self.statistics_path):
            logger.warning("no %s to resume statistics from; starting a new record", self.statistics_path)
            return
        loaded = read_statistics(self.statistics_path)
        self.statistics_dict = {k: [s for s in v if s["iteration"] <= resume_iteration] for k, v in loaded.items()}
        for k in ("bal", "test"):
            self.statistics_dict.setdefault(k, [])


def classification_scores(probs: np.ndarray, targets: np.ndarray, labels: List[str], multi_label: bool) -> dict:
    """Scores of a fine-tuned classifier: probabilities (N, C) against multi-hot targets (N, C).

    Single-label: accuracy + sklearn classification_report; multi-label: mAP + per-class AP and F1 at 0.5.
    ``metric``/``value`` name the number used to pick the best checkpoint (accuracy, or mAP); ``report``
    is the text for report.txt.
    """
    # Late: sklearn takes ~2 s to import, and only fine-tuning reports need it (every training, evaluation and
    # inference process paid it at start-up).
    from sklearn import metrics

    present = targets.sum(0) > 0
    ap = np.full(len(labels), np.nan)
    if present.any():
        ap[present] = average_precision(targets[:, present] >= 0.5, probs[:, present])
    mean_ap = float(np.nanmean(ap)) if present.any() else float("nan")

    def absent_note(y_true, y_pred) -> str:
        """sklearn's macro avg counts a class without evaluation clips as recall 0: say so, with the macro
        average over the classes that have clips beside it ('' when every class has some)."""
        if present.all() or not present.any():
            return ""
        p, r, f, _ = metrics.precision_recall_fscore_support(y_true, y_pred, labels=np.flatnonzero(present),
                                                             average="macro", zero_division=0)
        return (f"\n{int((~present).sum())} of {len(labels)} classes have no evaluation clip; the macro avg above "
                f"counts them as 0. Over the {int(present.sum())} classes with clips: precision {p:.3f}, "
                f"recall {r:.3f}, f1-score {f:.3f}\n")

    if not multi_label:
        y_true, y_pred = targets.argmax(1), probs.argmax(1)
        acc = float((y_true == y_pred).mean())
        report = metrics.classification_report(y_true, y_pred, labels=list(range(len(labels))),
                                               target_names=labels, digits=3, zero_division=0)
        report += absent_note(y_true, y_pred)
        return {"metric": "accuracy", "value": acc, "accuracy": acc, "mAP": mean_ap, "clips": int(len(y_true)),
                "report": f"accuracy: {acc:.4f} ({int((y_true == y_pred).sum())}/{len(y_true)} clips), "
                          f"mAP: {mean_ap:.4f}\n\n{report}"}
    y_true, y_pred = targets.astype(int), (probs >= 0.5).astype(int)
    report = metrics.classification_report(y_true, y_pred, labels=list(range(len(labels))), target_names=labels,
                                           digits=3, zero_division=0) + absent_note(y_true, y_pred)
    width = max(len(lb) for lb in labels)
    ap_lines = "\n".join(f"{lb:>{width}}  {('%.3f' % a) if np.isfinite(a) else '  -  '}  {int(n)}"
                         for lb, a, n in zip(labels, ap, targets.sum(0)))
    return {"metric": "mAP", "value": mean_ap, "mAP": mean_ap, "clips": int(len(targets)),
            "report": (f"mAP: {mean_ap:.4f} over {int(present.sum())} classes with positives\n\n"
                       f"{'class':>{width}}  AP     positives\n{ap_lines}\n\nthreshold 0.5:\n{report}")}
