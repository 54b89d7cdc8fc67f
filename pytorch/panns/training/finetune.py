"""Fine-tuning's task for the training core (``pytorch/finetune_template.py train``).

:func:`run` builds ``Transfer_<Base>`` with the pretrained base loaded strictly, decodes the clips once
(``finetune_data``), then either fits a linear probe (``probe``) or fine-tunes with
``training.core.Trainer`` - the loop, optimizer, Mixup, checkpoints and exact resume of ``main.py train``.
:class:`FineTuneTask` is what differs: the clip cache's loaders, the evaluation on the held-out clips
(accuracy or mAP, ``metrics.jsonl``, ``report.txt``, the best score) and the checkpoint names:
``latest.pth`` at every evaluation (the training checkpoint ``--resume`` continues from) and
``best.pth`` when the score improved (config, model, iteration and scores: what inference needs).
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from panns import checkpoint as ckpt_lib
from panns import data_generator as dg
from panns import devices, losses, models, runtime
from panns import finetune_data as fd
from panns import probe
from panns.training import config as tl
from panns.devices import DistInfo
from panns.errors import CheckpointError, PannsError
from panns.evaluate import classification_scores
from panns.frontend import FRONTEND_KEYS, FrontEnd
from panns.models import make_transfer_model
from panns.training.core import CoreSettings, Meter, Trainer
from panns.utilities import atomic_write_text, create_folder, create_logging

logger = logging.getLogger("finetune")

MAX_AUTO_CLIP_SECONDS = 10.0
PADDING_WARN_FACTOR = 2.0   # --clip_seconds over this many times the longest clip: a warning (mostly padding)
RUN_FILES = ("metrics.jsonl", "best.pth", "latest.pth", "linear_probe.pth", "report.txt", "run.json")


# ------------------------------------------------------------------------------------------------------------
# Losses (clipwise_output is log-probabilities for 'nll', probabilities for 'bce'; both fp32, soft targets ok)
# ------------------------------------------------------------------------------------------------------------
def clip_nll(output_dict: Dict[str, torch.Tensor], target_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of log-softmax outputs (B, C) with (possibly mixup-softened) one-hot targets (B, C)."""
    logp = output_dict["clipwise_output"].float()
    return -(target_dict["target"].float() * logp).sum(dim=-1).mean()


LOSSES = {"nll": clip_nll, "bce": losses.clip_bce}
OUTPUT_OF_LOSS = {"nll": "log_softmax", "bce": "sigmoid"}


# ------------------------------------------------------------------------------------------------------------
# Model: Transfer_<Base> with the pretrained base loaded strictly
# ------------------------------------------------------------------------------------------------------------
def base_of(model_type: str) -> str:
    """'Transfer_Cnn14' -> 'Cnn14'; a plain clip-level name means the same; SED models are refused."""
    spec = models.get_model_spec(model_type)
    base = spec.base or spec.name
    models.transfer_class(base)  # raises with the list of clip-level models for SED names
    return base


def read_pretrained(path: str, base_name: str, cli_frontend: dict) -> Tuple[dict, dict, Optional[dict]]:
    """Load a base checkpoint (official ``{'model': sd}``, ours with a config, or a fine-tuned Transfer one).

    Returns (base state_dict, resolved front end, saved config or None). Front-end flags that
    contradict the checkpoint's saved config are an error; for official files they override registry defaults.
    """
    ckpt = ckpt_lib.load_checkpoint(path)
    sd = ckpt_lib.strip_prefixes(ckpt_lib.model_state_dict(ckpt, path))
    if isinstance(ckpt.get("base_checkpoint"), dict):   # a fine-tune on a frozen base refers to its base's file
        sd = {**ckpt_lib.frozen_base_weights(ckpt["base_checkpoint"], path), **sd}
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    spec = models.get_model_spec(base_name)
    frontend = spec.frontend()
    if cfg:
        saved_type = cfg.get("model_type")
        saved_base = cfg.get("base_model_type") or (saved_type[9:] if str(saved_type).startswith("Transfer_") else None)
        if saved_base:  # a fine-tuned transfer model: continue from its base
            if saved_base != base_name:
                raise CheckpointError(f"{path} is a fine-tuned {saved_type} (base {saved_base}), not a {base_name} "
                                      f"base; use --model_type Transfer_{saved_base}")
            sd = {k[5:]: v for k, v in sd.items() if k.startswith("base.")}
        elif saved_type and saved_type != base_name:
            if saved_type not in models.MODELS or models.get_model_spec(saved_type).is_sed:
                # Transfer_<saved_type> would fail too: only clip-level models have a transfer class.
                raise CheckpointError(f"{path} holds a {saved_type} model, which cannot be fine-tuned (a transfer "
                                      "model needs a clip-level base, not a sound event detection one); use a "
                                      f"{base_name} checkpoint, or the checkpoint of another clip-level model with "
                                      "--model_type Transfer_<that model>")
            raise CheckpointError(f"{path} holds a {saved_type} model, but --model_type asks for {base_name} "
                                  f"(use --model_type Transfer_{saved_type})")
        # the saved values as the inference front doors check them: 'abc', NaN or 1024.5 is one line naming the file
        saved = ckpt_lib.ModelConfig.from_dict({"model_type": base_name, **cfg}).check(path).frontend()
        for k in FRONTEND_KEYS:
            if cfg.get(k) is not None:
                if cli_frontend.get(k) is not None and int(cli_frontend[k]) != saved[k]:
                    raise CheckpointError(f"--{k} {cli_frontend[k]} contradicts the checkpoint {path}, "
                                          f"which was trained with {k}={saved[k]}; drop the flag or pass {saved[k]}")
                frontend[k] = saved[k]
    else:
        frontend.update({k: int(v) for k, v in cli_frontend.items() if v is not None})
    return sd, frontend, cfg


def model_config(base_name: str, frontend: dict, labels: List[str], output: str) -> dict:
    """checkpoint.ModelConfig (as a dict) of the fine-tuned Transfer_<base_name> model."""
    return ckpt_lib.ModelConfig(model_type=f"Transfer_{base_name}", **frontend, classes_num=len(labels),
                                labels=list(labels), ids=None, base_model_type=base_name, output=output).to_dict()


def train_min_samples(model: torch.nn.Module) -> int:
    """Shortest training input: the model's minimum, and 64 frames when the base trains with SpecAugment
    (its 64-frame time stripes need them; shorter inputs fail with a PannsError)."""
    n = int(model.min_samples)
    base = model.base
    if not model.freeze_base and getattr(base, "spec_augment", False) and hasattr(base, "spec_augmenter"):
        n = max(n, 63 * int(base.hop_size))
    return n


def check_clip_seconds(seconds: float, flag: str = "--clip_seconds ") -> float:
    """The one bound of ``--clip_seconds``: a finite number > 0, at most ``runtime.AUTO_WINDOW_SECONDS`` (the
    longest input any command runs in one forward; 1e9 asked numpy for tebibytes of zero padding when the first
    clip was read). Returns ``seconds``; else a PannsError starting with ``flag`` (the argparse type passes ""
    since argparse names the flag itself)."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise PannsError(f"{flag}must be a finite number > 0 (got {seconds})")
    if seconds > runtime.AUTO_WINDOW_SECONDS:
        raise PannsError(f"{flag}must be at most {runtime.AUTO_WINDOW_SECONDS:.0f} s, the longest input "
                         f"run in one forward (got {seconds:g})")
    return seconds


def resolve_clip_samples(clip_seconds: Optional[float], cache: fd.ClipCache, data: fd.LabelledData,
                         sample_rate: int, min_samples: int) -> int:
    """``clip_seconds``, or the longest clip of the data set up to 10 s; never below the model's minimum input.

    A ``clip_seconds`` out of :func:`check_clip_seconds`' bound is refused (for callers of the API; the command
    line refuses it already, as a usage error); one over PADDING_WARN_FACTOR times the longest clip is
    run with a warning: most of every training input would be zero padding."""
    lengths = [cache.length(cache.index[p]) for p in data.train.paths + data.eval.paths]
    longest = max(lengths)
    auto = max(min(longest, int(MAX_AUTO_CLIP_SECONDS * sample_rate)), min_samples)
    if clip_seconds is not None:
        n = int(round(check_clip_seconds(clip_seconds) * sample_rate))
        if n > PADDING_WARN_FACTOR * max(longest, min_samples):
            padding = 1.0 - float(np.mean(lengths)) / n
            logger.warning("--clip_seconds %g is %.0fx the longest clip of the data (%.2f s): %.0f%% of each training "
                           "input is zero padding on average, and a step takes about %.0fx as long as with the "
                           "default, %.2f s (leave --clip_seconds out)", clip_seconds, n / longest,
                           longest / sample_rate, 100 * padding, n / auto, auto / sample_rate)
    else:
        n = min(longest, int(MAX_AUTO_CLIP_SECONDS * sample_rate))
        logger.info("Clip length: %.2f s (longest clip, at most %.0f s; set --clip_seconds to change)",
                    n / sample_rate, MAX_AUTO_CLIP_SECONDS)
    if n < min_samples:
        logger.warning("Clip length %.3f s is below the model's minimum training input; using %.3f s", n / sample_rate,
                       min_samples / sample_rate)
        n = min_samples
    return n


# ------------------------------------------------------------------------------------------------------------
# Run folder and records
# ------------------------------------------------------------------------------------------------------------
def prepare_run_dir(run_dir: str, overwrite: bool, resume: bool = False, hint: str = "") -> Tuple[bool, List[str]]:
    """Create ``run_dir``; one that already holds a run is an error unless ``resume`` (continue it) or
    ``overwrite`` (remove that run's files, so metrics.jsonl never mixes two runs). A run that
    stopped before its first checkpoint (Ctrl-C early) left nothing worth keeping: its folder is
    re-used by the same command, with or without ``resume``. Returns whether there is a
    ``latest.pth`` to resume from, and the earlier run's files to remove (:func:`remove_files`) when the
    new run writes its first file - not now: a run that fails while setting up keeps the earlier one.
    ``hint`` ends the error of a ``resume`` with nothing to resume (:func:`other_runs_hint`)."""
    if resume and overwrite:
        raise PannsError("--resume continues the run in the folder, --overwrite replaces it: give one")
    latest = os.path.join(run_dir, "latest.pth")
    if resume and os.path.isfile(latest):
        create_folder(run_dir)
        return True, []
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(run_dir, f))]
    unsaved = bool(found) and not any(f.endswith(".pth") for f in found)
    if resume and not unsaved:
        raise PannsError(f"--resume: no {latest} to resume from (a run saves it at every evaluation){hint}")
    if unsaved:
        logger.warning("%s holds a run that stopped before its first checkpoint (%s); starting it afresh", run_dir,
                       ", ".join(found))
    elif found and not overwrite:
        raise PannsError(f"{run_dir} already holds a fine-tuning run ({', '.join(found)}); give another "
                         "--run_name, or --overwrite to replace it")
    create_folder(run_dir)
    return False, [os.path.join(run_dir, f) for f in found]


def remove_files(paths: List[str]) -> None:
    """Remove an earlier run's files (those :func:`prepare_run_dir` named), logging what went."""
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
    if paths:
        logger.info("Removed the earlier run's %s", ", ".join(os.path.basename(p) for p in paths))


def base_reference(model: torch.nn.Module, pretrained_path: Optional[str]) -> Optional[dict]:
    """{'path', 'digest'} of a frozen base loaded from ``pretrained_path``; None when the base trains
    (or starts from random weights: nothing to refer to)."""
    if not getattr(model, "freeze_base", False) or not pretrained_path:
        return None
    return {"path": os.path.abspath(pretrained_path), "digest": tl.state_digest(model.base)}


def check_resume_base(path: str, model: torch.nn.Module) -> None:
    """A latest.pth that refers to its frozen base continues only on that base (same weights)."""
    ref = ckpt_lib.load_checkpoint(path).get("base_checkpoint")
    if not isinstance(ref, dict):
        return
    if not getattr(model, "freeze_base", False) or tl.state_digest(model.base) != ref.get("digest"):
        raise PannsError(f"--resume: {path} was trained on the frozen base {ref.get('path')} (digest "
                         f"{ref.get('digest')}); resume with --freeze_base and that --pretrained_checkpoint_path")


def check_resume_labels(path: str, labels: List[str]) -> None:
    """Refuse to continue ``path`` on another class list: renamed, added or removed class folders
    would otherwise train the old head under the new names (best.pth [cat, dog], latest.pth [ant, zebra])."""
    saved = (ckpt_lib.load_checkpoint(path).get("config") or {}).get("labels")
    if saved is None or list(saved) == list(labels):
        return

    def show(names) -> str:
        names = list(names)
        return "[" + ", ".join(names[:8]) + (f", ... ({len(names)} classes)" if len(names) > 8 else "") + "]"

    raise PannsError(f"--resume: {path} was trained on the classes {show(saved)} but the data now has {show(labels)} "
                     "(class folders renamed, added or removed?); resume with the data it started on, or start a "
                     "new run (another --run_name, or --overwrite)")


def check_resume_model(path: str, freeze_base: bool, loss: str) -> None:
    """Refuse to continue ``path`` as another kind of model: a base that trained cannot resume frozen (its
    checkpoints would refer to the pretrained base file, dropping the trained base; the optimizer's state does
    not fit either), nor a frozen one resume training; another --loss changes the head's output function."""
    saved = ckpt_lib.load_checkpoint(path).get("config") or {}
    was_frozen, saved_output = saved.get("freeze_base"), saved.get("output")
    if was_frozen is not None and bool(was_frozen) != freeze_base:
        how = "with" if was_frozen else "without"
        raise PannsError(f"--resume: {path} was trained {how} --freeze_base; resume {how} it, or start a new run "
                         "(another --run_name, or --overwrite)")
    if saved_output is not None and saved_output != OUTPUT_OF_LOSS[loss]:
        was = next(k for k, v in OUTPUT_OF_LOSS.items() if v == saved_output)
        raise PannsError(f"--resume: {path} was trained with --loss {was} ({saved_output} head), this run has --loss "
                         f"{loss} ({OUTPUT_OF_LOSS[loss]}); resume with --loss {was}, or start a new run")


def other_runs_hint(workspace: str, run_dir: str) -> str:
    """For a --resume without --run_name that found no latest.pth: the default folder name follows the flags,
    so name the runs of ``workspace`` that can be resumed ('' when there are none)."""
    root = os.path.join(workspace, "finetune")
    found = sorted(os.path.relpath(r, root) for r, _d, files in os.walk(root) if "latest.pth" in files)
    if not found:
        return ""
    return (f"; the default run folder ({os.path.basename(run_dir)}) is named after --model_type, the data set, "
            f"--loss and --freeze_base, so a changed flag names another one: give --run_name to resume one of "
            f"{', '.join(found[:5])}{' ...' if len(found) > 5 else ''} (in {root})")


def append_jsonl(path: str, obj: dict) -> None:
    """One JSON line appended to ``path`` (metrics.jsonl: one line per evaluation)."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def _run_record(args, extra: dict) -> dict:
    return {"args": vars(args), **extra, "versions": tl.versions(), "git_commit": tl.git_commit(), "argv": sys.argv,
            "started": datetime.datetime.now().isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------
def score_text(sc: dict) -> str:
    """'eval accuracy 0.9000, mAP 0.9500' (single-label), 'eval mAP 0.9500' (multi-label: mAP is the metric,
    once - it read 'eval mAP 0.95, mAP 0.95')."""
    text = f"eval {sc['metric']} {sc['value']:.4f}"
    return text if sc["metric"] == "mAP" else f"{text}, mAP {sc['mAP']:.4f}"


def predict(model: torch.nn.Module, loader, precision: str, output: str) -> Tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) and targets (N, C) over a loader (the shared evaluation path of training;
    exp of log-softmax outputs)."""
    out = runtime.run_batches(model, loader, precision, outputs=("clipwise_output",), carry=("target",))
    probs = out["clipwise_output"]
    return (np.exp(probs) if output == "log_softmax" else probs), out["target"]


# ------------------------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------------------------
class FineTuneTask:
    """Fine-tuning's part of a run (see training.core.Task): loaders over the clip cache, evaluation on the
    held-out clips, ``latest.pth`` / ``best.pth`` / ``report.txt`` / ``metrics.jsonl`` in ``run_dir``."""

    def __init__(self, args, model: torch.nn.Module, data: fd.LabelledData, cache: fd.ClipCache,
                 clip_samples: int, device: torch.device, precision: str, run_dir: str):
        self.model, self.data, self.precision, self.run_dir = model, data, precision, run_dir
        per_step = args.batch_size * (2 if args.augmentation == "mixup" else 1)  # official: 2B clips with mixup
        self.train_sampler = fd.ShuffledBatchSampler(len(data.train), per_step, args.seed)
        workers = args.num_workers
        # A generator of its own: starting an iterator draws nothing from the global RNG (exact resume).
        self.train_loader = torch.utils.data.DataLoader(
            fd.ClipDataset(cache, data.train, clip_samples, train=True, seed=args.seed),
            batch_sampler=self.train_sampler, collate_fn=fd.collate, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda",
            worker_init_fn=dg.leave_signals_to_parent if workers > 0 else None,
            generator=torch.Generator().manual_seed(args.seed))
        self.eval_loader = torch.utils.data.DataLoader(
            fd.ClipDataset(cache, data.eval, clip_samples, train=False), batch_size=args.batch_size, shuffle=False,
            collate_fn=fd.collate, num_workers=0, generator=torch.Generator().manual_seed(args.seed))
        self.latest_path = os.path.join(run_dir, "latest.pth")
        self.best_path = os.path.join(run_dir, "best.pth")
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.iterations, self.eval_every = args.iterations, args.eval_every
        # A frozen base never changes: latest.pth and best.pth store the trained part and a reference to the base
        # (path and digest) instead of the base itself (327 MB for Cnn14, each time); inference follows the
        # reference (checkpoint.load_model), `finetune_template.py export` writes a self-contained copy.
        self.base_ref = base_reference(model, args.pretrained_checkpoint_path)
        self.best: Optional[dict] = None     # scores of the best evaluation, with its iteration
        self.scores: Optional[dict] = None   # scores of the latest evaluation
        self.improved = False

    def evaluate(self, iteration: int, trained: Meter) -> None:
        t_eval = time.perf_counter()
        probs, targets = predict(self.model, self.eval_loader, self.precision, self.model.output)
        sc = classification_scores(probs, targets, self.data.labels, self.data.multi_label)
        eval_time = time.perf_counter() - t_eval
        train_time, steps = trained.elapsed(), max(len(trained.losses), 1)
        self.improved = self.best is None or sc["value"] > self.best["value"]
        loss = trained.mean_loss() if trained.losses else None   # None: the starting point, before any step
        append_jsonl(self.metrics_path, {
            "iteration": iteration, "train_loss": loss, sc["metric"]: sc["value"], "mAP": sc["mAP"],
            "train_time_s": round(train_time, 3), "eval_time_s": round(eval_time, 3),
            "s_per_iteration": round(train_time / steps, 4) if loss is not None else None, "best": self.improved})
        if loss is None:
            logger.info("iteration %d (start): %s (eval %.1f s); training must beat it to replace "
                        "best.pth", iteration, score_text(sc), eval_time)
        else:
            left = self.iterations - iteration
            eta = left * train_time / steps + -(-left // self.eval_every) * eval_time
            logger.info("iteration %d: train loss %.4f, %s%s (train %.1f s, %.3f s/it; eval %.1f s)%s",
                        iteration, loss, score_text(sc), " *best*" if self.improved else "",
                        train_time, train_time / steps, eval_time,
                        f"; about {eta / 60:.1f} min to go" if left > 0 else "")
        self.scores = sc
        if self.improved:
            self.best = {**sc, "iteration": iteration}

    def checkpoint_extra(self) -> Dict[str, Any]:
        metrics = {k: v for k, v in self.scores.items() if k != "report"} if self.scores else None
        return {"metrics": metrics, "best": self.best}

    def write_checkpoint(self, ckpt: Dict[str, Any], iteration: int) -> str:
        if self.base_ref is not None:
            # The base's own head (fc_audioset) stays: it may not come from the base file (a base trained on
            # another class list keeps the transfer model's), and the digest covers it.
            ckpt = {**ckpt, "base_checkpoint": self.base_ref,
                    "model": {k: v for k, v in ckpt["model"].items()
                              if not k.startswith("base.") or k.startswith("base.fc_audioset.")}}
        ckpt_lib.save_checkpoint(self.latest_path, ckpt)
        if self.improved:
            # What inference needs (no optimizer or RNG state: --resume continues from latest.pth).
            keep = ("iteration", "model", "config", "metrics", "base_checkpoint")
            ckpt_lib.save_checkpoint(self.best_path, {k: ckpt[k] for k in keep if k in ckpt})
            write_report(self.run_dir, self.data, f"best checkpoint: {self.best_path} (iteration {iteration})",
                         self.scores["report"])
            self.improved = False   # a later save without an evaluation (a stop on a signal) keeps best.pth
        return self.latest_path

    def load_extra(self, ckpt: Dict[str, Any], iteration: int) -> None:
        self.best = ckpt.get("best")

    def close_loaders(self) -> None:
        self.train_loader = self.eval_loader = None

    def resume_hint(self, saved_iteration: Optional[int]) -> str:
        if saved_iteration is None:
            return "start again with the same command"
        return f"continue from {self.latest_path} with the same command and --resume"


# ------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------
def run(args, data: Optional[fd.LabelledData]) -> Optional[dict]:
    """Build the transfer model, load the pretrained base, then fine-tune (or linear-probe) on ``data``
    (None: the official template's model check only). ``args``: finetune_template.py's parsed flags."""
    base_name = base_of(args.model_type)
    cli_fe = {k: getattr(args, k) for k in FRONTEND_KEYS}
    if data is not None and not args.workspace:
        raise PannsError("--workspace is required when fine-tuning (checkpoints, cache and reports go there)")
    loss = args.loss or ("bce" if data is not None and data.multi_label else "nll")
    if data is not None and data.multi_label and loss == "nll":
        raise PannsError("some clips have several labels; single-label --loss nll cannot learn that: use --loss bce")
    output = OUTPUT_OF_LOSS[loss]
    # The front end (flags over the checkpoint's or the registry's settings) before the run folder, the logs or
    # the model: settings no model can run (a zero hop, an empty mel band) are one line, with nothing written.
    sd = None
    if args.pretrained_checkpoint_path:
        sd, frontend, saved_cfg = read_pretrained(args.pretrained_checkpoint_path, base_name, cli_fe)
    else:
        frontend = {**models.get_model_spec(base_name).frontend(), **{k: v for k, v in cli_fe.items() if v is not None}}
    FrontEnd.from_dict(frontend).check()

    run_dir, can_resume, replace = None, False, []
    if data is not None:
        run_name = args.run_name or "_".join(
            [f"Transfer_{base_name}", data.name] + (["linear_probe"] if args.linear_probe else
                                                    [loss] + (["frozen"] if args.freeze_base else [])))
        run_dir = os.path.join(args.workspace, "finetune", run_name)
        can_resume, replace = prepare_run_dir(run_dir, args.overwrite, args.resume,
                                              "" if args.run_name else other_runs_hint(args.workspace, run_dir))
        if can_resume:
            check_resume_labels(os.path.join(run_dir, "latest.pth"), data.labels)
            check_resume_model(os.path.join(run_dir, "latest.pth"), args.freeze_base, loss)
        create_logging(os.path.join(run_dir, "logs"), filemode="w")
        logger.info("Data: %s; %d classes, %d train / %d eval clips%s", data.source, data.classes_num,
                    len(data.train), len(data.eval), " (multi-label)" if data.multi_label else "")
        for w in data.warnings:
            logger.warning(w)
    else:
        logging.basicConfig(level=logging.INFO, format="%(name)-12s: %(levelname)-8s %(message)s")

    tl.seed_everything(args.seed)
    device = devices.select_device(args.cuda)
    precision = devices.resolve_precision(args.precision, device, training=not args.linear_probe)

    # Model (official order: build, load pretrained, report device).
    classes_num = data.classes_num if data is not None else probe.AUDIOSET_CLASSES_NUM
    model = make_transfer_model(base_name, classes_num, freeze_base=args.freeze_base, output=output, **frontend)
    if sd is not None:
        logger.info("Load pretrained model from %s", args.pretrained_checkpoint_path)
        ckpt_lib.load_pretrained_base(model.base, sd, args.pretrained_checkpoint_path, base_name,
                                      official=saved_cfg is None)
    if device.type == "cuda":
        print(f"GPU number: {torch.cuda.device_count()}")
    model.to(device)
    if sd is not None:
        print("Load pretrained model successfully!")
    else:
        frozen = args.freeze_base or getattr(args, "linear_probe", False)
        logger.warning("No --pretrained_checkpoint_path: the base starts from random weights (%s)",
                       "and stays so, frozen: a random-feature baseline" if frozen else "training from scratch")
    if data is None:
        print("No data given, nothing to fine-tune: pass --dataset_dir DIR (one sub-folder per class), "
              "--train_csv [--eval_csv], or --meta_csv with --holdout_fold, and --workspace.")
        return None

    cache_dir = args.cache_dir or os.path.join(args.workspace, "cache")
    cache = fd.build_cache(data.train.paths + data.eval.paths, frontend["sample_rate"], cache_dir, args.num_workers)
    clip_samples = resolve_clip_samples(args.clip_seconds, cache, data, frontend["sample_rate"],
                                        train_min_samples(model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mc = model_config(base_name, frontend, data.labels, output)
    # The checkpoint's record of the run; without --resume, which says how this session started, not what the
    # run is (kept, every resume listed 'resume False -> True' among the settings that changed).
    run_config = {**{k: v for k, v in vars(args).items() if k != "resume"},
                  "clip_seconds": clip_samples / frontend["sample_rate"],
                  "pretrained_checkpoint_path": args.pretrained_checkpoint_path, "freeze_base": args.freeze_base}
    remove_files(replace)   # the new run's first file comes next
    record = _run_record(args, {
        "data": data.source, "labels": data.labels, "train_clips": len(data.train), "eval_clips": len(data.eval),
        "loss": loss, "output": output, "frontend": frontend, "clip_samples": clip_samples, "precision": precision,
        "device": str(device), "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": trainable, "cache": cache.h5_path})

    def fit_probe() -> Tuple[dict, float]:
        return probe.fit_probe_head(model, base_name, frontend, data, cache, clip_samples, device, cache_dir,
                                    precision=args.precision, batch_size=args.batch_size, c=args.probe_c)

    if args.linear_probe:
        tl.write_json(os.path.join(run_dir, "run.json"), record)
        res = linear_probe(fit_probe, model, data, run_dir, {**run_config, **mc, "linear_probe": True})
        print(res["report"])
        print(f"Linear probe {res['metric']}: {res['value']:.4f} ({res['wall_s']:.1f} s); saved to "
              f"{res['probe_path']}\nTag with it: python3 pytorch/inference.py audio_tagging --checkpoint_path "
              f"{res['probe_path']} --audio_path <clip>")
        return res

    logger.info("Fine-tuning Transfer_%s: %s loss, %s output, %d trainable of %d parameters, clip %.2f s, "
                "batch %d, lr %g, %d iterations, %s on %s", base_name, loss, output, trainable,
                sum(p.numel() for p in model.parameters()), clip_samples / frontend["sample_rate"], args.batch_size,
                args.learning_rate, args.iterations, precision, device)
    if device.type == "cpu":
        logger.warning("Training on the CPU: each step runs the %s base%s, so long runs take hours here (an ETA "
                       "follows the first evaluation); --linear_probe takes minutes, --cuda uses a GPU", base_name,
                       "" if args.freeze_base else " forward and backward")
    resume_from = os.path.join(run_dir, "latest.pth") if can_resume else None
    if resume_from:
        check_resume_base(resume_from, model)
    if resume_from is None and args.head_init == "probe":
        sc, _ = fit_probe()
        logger.info("Head initialised from a linear probe on the %d training clips' embeddings (eval %s %.4f)",
                    len(data.train), sc["metric"], sc["value"])
    res = fine_tune(args, model, data, cache, clip_samples, device, precision, LOSSES[loss], mc, run_config,
                    run_dir, resume_from, record)
    print(res["report"])
    print(f"Best {res['metric']}: {res['value']:.4f} at iteration {res['iteration']} "
          f"({res['wall_s']:.1f} s); checkpoint: {res['best_path']}")
    return res


def fine_tune(args, model: torch.nn.Module, data: fd.LabelledData, cache: fd.ClipCache, clip_samples: int,
              device: torch.device, precision: str, loss_func, mc: dict, run_config: dict, run_dir: str,
              resume_from: Optional[str], record: Optional[dict] = None) -> dict:
    """Train ``model`` with the training core for ``args.iterations`` steps, evaluating and saving every
    ``args.eval_every``; returns the best scores with 'iteration', 'wall_s', 'best_path', 'latest_path'.
    ``record`` goes to ``run.json`` once the run is sure to start: a refused resume leaves the record of the run
    that wrote the checkpoints."""
    t0 = time.time()
    task = FineTuneTask(args, model, data, cache, clip_samples, device, precision, run_dir)
    settings = CoreSettings(iterations=args.iterations, eval_every=args.eval_every, save_every=args.eval_every,
                            log_every=args.log_every, learning_rate=args.learning_rate, precision=precision,
                            seed=args.seed, mixup_alpha=1.0 if args.augmentation == "mixup" else None,
                            # A head fitted before training (the linear probe) is a candidate for best.pth: training
                            # that only makes it worse must not end below where it started.
                            at_start=args.head_init == "probe",
                            # the held-out split is drawn from these too: another value trains on eval clips
                            fixed_on_resume=("seed", "batch_size", "augmentation", "eval_fraction",
                                             "holdout_fold"))
    trainer = Trainer(settings, DistInfo(device=device), model, loss_func, task, mc, run_config, clip_samples,
                      args.batch_size, resume_from)
    if trainer.iteration >= args.iterations:
        raise PannsError(f"{resume_from} already reached --iterations {args.iterations}; raise it to train on")
    if record is not None:
        tl.write_json(os.path.join(run_dir, "run.json"), record)
    if resume_from:
        logger.info("Resumed from %s at iteration %d", resume_from, trainer.iteration)
    trainer.run()
    trainer.finish()
    return {**task.best, "wall_s": time.time() - t0, "best_path": task.best_path, "latest_path": task.latest_path}


def write_report(run_dir: str, data: fd.LabelledData, what: str, scores_report: str) -> None:
    """``report.txt``: the data source, which checkpoint, the data's warnings (what the log said at the start:
    a report read alone must not look cleaner than the run was) and the per-class scores."""
    warned = "".join(f"warning: {w}\n" for w in data.warnings)
    atomic_write_text(os.path.join(run_dir, "report.txt"), f"{data.source}\n{what}\n{warned}\n{scores_report}\n")


def linear_probe(fit_probe, model: torch.nn.Module, data: fd.LabelledData, run_dir: str, config: dict) -> dict:
    """``fit_probe()`` (a bound probe.fit_probe_head), then write ``model`` with the fitted head to
    ``linear_probe.pth`` (a Transfer_<Base> checkpoint that ``inference.py audio_tagging --checkpoint_path``
    uses like any fine-tuned one), ``report.txt`` and a ``metrics.jsonl`` line."""
    t0 = time.time()
    sc, t_emb = fit_probe()
    probe_path = os.path.join(run_dir, "linear_probe.pth")
    metrics = {k: v for k, v in sc.items() if k != "report"}
    ckpt_lib.save_checkpoint(probe_path, {"model": model.state_dict(), "config": config, "iteration": 0,
                                          "metrics": metrics})
    write_report(run_dir, data, f"linear probe: {probe_path}", sc["report"])
    append_jsonl(os.path.join(run_dir, "metrics.jsonl"),
                 {"linear_probe": True, sc["metric"]: sc["value"], "mAP": sc["mAP"],
                  "embedding_time_s": round(t_emb, 3), "total_time_s": round(time.time() - t0, 3)})
    return {**sc, "probe_path": probe_path, "wall_s": time.time() - t0, "embedding_time_s": t_emb}
