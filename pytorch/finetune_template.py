"""Fine-tune a pretrained PANN on your own labelled sounds (the official ``finetune_template.py``, made to train).

Official command line (still works: builds the model, loads the pretrained base, prints
``Load pretrained model successfully!``; without data it then says so and stops)::

    python3 pytorch/finetune_template.py train --sample_rate 32000 --window_size 1024 --hop_size 320 \
        --mel_bins 64 --fmin 50 --fmax 14000 --model_type Transfer_Cnn14 \
        --pretrained_checkpoint_path Cnn14_mAP=0.431.pth [--freeze_base] [--cuda]

Real fine-tuning adds data and a workspace (the six front-end flags may be left out: they come from
the pretrained checkpoint or the registry)::

    python3 pytorch/finetune_template.py train --model_type Transfer_Cnn14 \
        --pretrained_checkpoint_path Cnn14_mAP=0.431.pth --dataset_dir my_sounds/ --workspace ws
    # ESC-50, fold 1 held out:
    ... --meta_csv ESC-50-master/meta/esc50.csv --audio_dir ESC-50-master/audio --holdout_fold 1
    # the quick baseline first: frozen embeddings + logistic regression
    ... --dataset_dir my_sounds/ --workspace ws --linear_probe

Outputs under ``<workspace>/finetune/<run name>/``: ``best.pth`` / ``latest.pth`` (self-describing:
``pytorch/inference.py audio_tagging --checkpoint_path best.pth --audio_path x.wav`` prints the new classes
with probabilities), ``report.txt`` (per-class report of the best checkpoint), ``metrics.jsonl`` (one line per
evaluation), ``run.json`` (resolved settings, versions, git commit), ``logs/``; ``linear_probe.joblib`` for
``--linear_probe`` (a regular Transfer_<Base> checkpoint whose head is the fitted probe: tag with it like
``best.pth``). A run folder that already holds a run is refused unless ``--resume`` (continue it exactly from
``latest.pth``) or ``--overwrite`` is given. Decoded clips are cached in ``<workspace>/cache`` (see finetune_data.py for the data
layouts, the cache and the crop rules).

Differences from the official template: it trains; the transfer head is
built for any clip-level registry model (``Transfer_<Base>``); the number of classes comes from the data (not
527); ``--loss bce`` gives a sigmoid (multi-label) head; with ``--freeze_base`` the base is a fixed feature
extractor: weights *and* BatchNorm statistics stay as pretrained and it runs in eval mode (no dropout or
SpecAugment; with mixup the embeddings are mixed), where the official template kept updating the statistics and
dropping out features of a "frozen" base. A base trained on another class list (ours, e.g. 10 classes) loads
strictly except its own classifier head, which the transfer model does not use.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Tuple


import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, classification_report
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from panns import checkpoint as ckpt_lib, devices, runtime
from panns import finetune_data as fd
from panns import losses, models
from panns import train_lib as tl
from panns.errors import CheckpointError, PannsError, run_cli
from panns.extract import Extractor, weights_fingerprint
from panns.frontend import FRONTEND_KEYS
from panns.models import Transfer_Cnn14, make_transfer_model  # noqa: F401  (official name, re-exported)
from panns.utilities import Mixup, atomic_write, atomic_write_text, create_folder, create_logging

logger = logging.getLogger("finetune")

AUDIOSET_CLASSES_NUM = 527
MAX_AUTO_CLIP_SECONDS = 10.0


# ------------------------------------------------------------------------------------------------------------
# Losses (clipwise_output is log-probabilities for 'nll', probabilities for 'bce'; both fp32, soft targets ok)
# ------------------------------------------------------------------------------------------------------------
def clip_nll(output_dict: Dict[str, torch.Tensor], target_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of log-softmax outputs (B, C) with (possibly mixup-softened) one-hot targets (B, C)."""
    logp = output_dict["clipwise_output"].float()
    return -(target_dict["target"].float() * logp).sum(dim=-1).mean()


def clip_bce(output_dict: Dict[str, torch.Tensor], target_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
    return losses.clip_bce(output_dict, target_dict)  # fp32, autocast-safe


LOSSES = {"nll": clip_nll, "bce": clip_bce}
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
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    spec = models.get_model_spec(base_name)
    frontend = spec.frontend()
    if cfg:
        saved_type = cfg.get("model_type")
        saved_base = cfg.get("base_model_type") or (saved_type[9:] if str(saved_type).startswith("Transfer_") else None)
        if saved_base:  # a fine-tuned transfer model: continue from its base
            if saved_base != base_name:
                raise CheckpointError(f"{path} is a fine-tuned {saved_type} (base {saved_base}), not a {base_name} base; "
                                      f"use --model_type Transfer_{saved_base}")
            sd = {k[5:]: v for k, v in sd.items() if k.startswith("base.")}
        elif saved_type and saved_type != base_name:
            raise CheckpointError(f"{path} holds a {saved_type} model, but --model_type asks for {base_name} "
                                  f"(use --model_type Transfer_{saved_type})")
        for k in FRONTEND_KEYS:
            if cfg.get(k) is not None:
                if cli_frontend.get(k) is not None and int(cli_frontend[k]) != int(cfg[k]):
                    raise CheckpointError(f"--{k} {cli_frontend[k]} contradicts the checkpoint {path}, "
                                          f"which was trained with {k}={cfg[k]}; drop the flag or pass {cfg[k]}")
                frontend[k] = int(cfg[k])
    else:
        frontend.update({k: int(v) for k, v in cli_frontend.items() if v is not None})
    return sd, frontend, cfg


def model_config(base_name: str, frontend: dict, labels: List[str], output: str, **extra) -> dict:
    """The checkpoint 'config' entry: checkpoint.ModelConfig of the fine-tuned model plus extra keys."""
    cfg = ckpt_lib.ModelConfig(model_type=f"Transfer_{base_name}", **frontend, classes_num=len(labels),
                               labels=list(labels), ids=None, base_model_type=base_name, output=output)
    return {**cfg.to_dict(), **extra}


# ------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------
def predict(model: torch.nn.Module, loader, precision: str, output: str) -> Tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) and targets (N, C) over a loader (the shared evaluation path of training;
    exp of log-softmax outputs)."""
    out = runtime.run_batches(model, loader, precision, outputs=("clipwise_output",), carry=("target",))
    probs = out["clipwise_output"]
    return (np.exp(probs) if output == "log_softmax" else probs), out["target"]


def score(probs: np.ndarray, targets: np.ndarray, labels: List[str], multi_label: bool) -> dict:
    """Single-label: accuracy + sklearn classification_report; multi-label: mAP + per-class AP and F1 at 0.5.

    ``metric``/``value`` name the number used to pick the best checkpoint (accuracy, or mAP).
    """
    present = targets.sum(0) > 0
    ap = np.full(len(labels), np.nan)
    if present.any():
        ap[present] = average_precision_score(targets[:, present], probs[:, present], average=None)
    mean_ap = float(np.nanmean(ap)) if present.any() else float("nan")
    if not multi_label:
        y_true, y_pred = targets.argmax(1), probs.argmax(1)
        acc = float((y_true == y_pred).mean())
        report = classification_report(y_true, y_pred, labels=list(range(len(labels))), target_names=labels,
                                       digits=3, zero_division=0)
        return {"metric": "accuracy", "value": acc, "accuracy": acc, "mAP": mean_ap, "clips": int(len(y_true)),
                "report": f"accuracy: {acc:.4f} ({int((y_true == y_pred).sum())}/{len(y_true)} clips), mAP: {mean_ap:.4f}\n\n{report}"}
    report = classification_report(targets.astype(int), (probs >= 0.5).astype(int), labels=list(range(len(labels))),
                                   target_names=labels, digits=3, zero_division=0)
    width = max(len(lb) for lb in labels)
    ap_lines = "\n".join(f"{lb:>{width}}  {('%.3f' % a) if np.isfinite(a) else '  -  '}  {int(n)}"
                         for lb, a, n in zip(labels, ap, targets.sum(0)))
    return {"metric": "mAP", "value": mean_ap, "mAP": mean_ap, "clips": int(len(targets)),
            "report": (f"mAP: {mean_ap:.4f} over {int(present.sum())} classes with positives\n\n"
                       f"{'class':>{width}}  AP     positives\n{ap_lines}\n\nthreshold 0.5:\n{report}")}


# ------------------------------------------------------------------------------------------------------------
# Run setup helpers
# ------------------------------------------------------------------------------------------------------------
def _append_jsonl(path: str, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


RUN_FILES = ("metrics.jsonl", "best.pth", "latest.pth", "linear_probe.pth", "report.txt", "run.json")


def prepare_run_dir(run_dir: str, overwrite: bool, resume: bool = False) -> None:
    """Create ``run_dir``; one that already holds a run is an error unless ``resume`` (continue it) or
    ``overwrite`` (remove that run's files first, so metrics.jsonl never mixes two runs)."""
    if resume and overwrite:
        raise PannsError("--resume continues the run in the folder, --overwrite replaces it: give one")
    if resume:
        create_folder(run_dir)
        return
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(run_dir, f))]
    if found and not overwrite:
        raise PannsError(f"{run_dir} already holds a fine-tuning run ({', '.join(found)}); give another "
                         "--run_name, or --overwrite to replace it")
    for f in found:
        os.remove(os.path.join(run_dir, f))
    create_folder(run_dir)


def load_data(args) -> Optional[fd.LabelledData]:
    """The data set named by the arguments, or None when no data argument was given."""
    given = [n for n in ("dataset_dir", "train_csv", "meta_csv") if getattr(args, n)]
    if len(given) > 1:
        raise PannsError(f"give one data source, not {' and '.join('--' + g for g in given)}")
    if args.eval_csv and not args.train_csv:
        raise PannsError("--eval_csv needs --train_csv")
    if args.holdout_fold is not None and not args.meta_csv:
        raise PannsError("--holdout_fold needs --meta_csv")
    if args.dataset_dir:
        return fd.from_folder(args.dataset_dir, args.eval_fraction, args.seed)
    if args.train_csv:
        return fd.from_csv_lists(args.train_csv, args.eval_csv, args.audio_dir, args.eval_fraction, args.seed)
    if args.meta_csv:
        return fd.from_meta_csv(args.meta_csv, args.holdout_fold, args.audio_dir)
    return None


def train_min_samples(model: torch.nn.Module) -> int:
    """Shortest training input: the model's minimum, and 64 frames when the base trains with SpecAugment
    (its 64-frame time stripes need them; torchlibrosa fails on shorter inputs)."""
    n = int(model.min_samples)
    base = model.base
    if not model.freeze_base and getattr(base, "spec_augment", False) and hasattr(base, "spec_augmenter"):
        n = max(n, 63 * int(base.hop_size))
    return n


def resolve_clip_samples(args, cache: fd.ClipCache, data: fd.LabelledData, sample_rate: int, min_samples: int) -> int:
    """--clip_seconds, or the longest clip of the data set up to 10 s; never below the model's minimum input."""
    if args.clip_seconds is not None:
        if args.clip_seconds <= 0:
            raise PannsError(f"--clip_seconds must be > 0 (got {args.clip_seconds})")
        n = int(round(args.clip_seconds * sample_rate))
    else:
        longest = max(cache.length(cache.index[p]) for p in data.train.paths + data.eval.paths)
        n = min(longest, int(MAX_AUTO_CLIP_SECONDS * sample_rate))
        logger.info("Clip length: %.2f s (longest clip, at most %.0f s; set --clip_seconds to change)",
                    n / sample_rate, MAX_AUTO_CLIP_SECONDS)
    if n < min_samples:
        logger.warning("Clip length %.3f s is below the model's minimum training input; using %.3f s", n / sample_rate,
                       min_samples / sample_rate)
        n = min_samples
    return n


def _run_record(args, extra: dict) -> dict:
    return {"args": vars(args), **extra, "versions": tl.versions(), "git_commit": tl.git_commit(), "argv": sys.argv,
            "started": datetime.datetime.now().isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------------------------------
# Fine-tuning loop
# ------------------------------------------------------------------------------------------------------------
def _load_resume(args, model: torch.nn.Module, latest_path: str) -> Optional[dict]:
    """With --resume: the run's latest.pth (model weights loaded into ``model``), else None."""
    if not args.resume:
        return None
    if not os.path.isfile(latest_path):
        raise PannsError(f"--resume: no {latest_path} to resume from (a run saves it at every evaluation)")
    ckpt = ckpt_lib.load_checkpoint(latest_path)
    if "rng" not in ckpt or "optimizer" not in ckpt:
        raise PannsError(f"--resume: {latest_path} has no optimizer/RNG state (written by an older version)")
    model.load_state_dict(ckpt["model"])
    return ckpt


def fine_tune(args, model: torch.nn.Module, data: fd.LabelledData, cache: fd.ClipCache, clip_samples: int,
              device: torch.device, precision: str, loss: str, config: dict, run_dir: str) -> dict:
    """Train ``model`` for ``args.iterations`` steps, evaluating every ``args.eval_every``; returns the best score."""

    mixup = args.augmentation == "mixup"
    per_step = args.batch_size * (2 if mixup else 1)  # as the official main.py: the loader yields 2B with mixup
    train_ds = fd.ClipDataset(cache, data.train, clip_samples, train=True, seed=args.seed)
    eval_ds = fd.ClipDataset(cache, data.eval, clip_samples, train=False)
    workers = args.num_workers
    resumed = _load_resume(args, model, latest_path := os.path.join(run_dir, "latest.pth"))
    start = resumed["iteration"] if resumed else 0
    loader = torch.utils.data.DataLoader(
        train_ds, batch_sampler=fd.ShuffledBatchSampler(len(train_ds), per_step, args.seed, start=start * per_step),
        collate_fn=fd.collate, num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    eval_loader = torch.utils.data.DataLoader(eval_ds, batch_size=args.batch_size, shuffle=False,
                                              collate_fn=fd.collate, num_workers=0)
    params = [p for p in model.parameters() if p.requires_grad]
    # Official main.py optimizer (Adam, amsgrad).
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0,
                                 amsgrad=True)
    scaler = torch.amp.GradScaler("cuda", enabled=(precision == "fp16" and device.type == "cuda"))
    mixer = Mixup(mixup_alpha=1.0, random_seed=args.seed) if mixup else None
    loss_func = LOSSES[loss]
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    best: Optional[dict] = None
    best_path = os.path.join(run_dir, "best.pth")
    batches = iter(loader)   # before restoring the RNG: creating the iterator draws from it
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["rng"]["torch"])
        if mixer is not None:
            mixer.random_state.set_state(resumed["rng"]["mixup"])
        best = resumed.get("best")
        logger.info("Resumed from %s at iteration %d", latest_path, start)
    t_train, losses = time.time(), []
    t_start = time.time()
    for iteration in range(start + 1, args.iterations + 1):
        batch = tl.to_device(next(batches), device)
        lam = None
        if mixer is not None:
            lam = torch.from_numpy(mixer.get_lambda(len(batch["waveform"]))).float().to(device)
        stats = tl.train_step(model, batch, optimizer, loss_func, precision=precision, mixup_lambda=lam, scaler=scaler)
        losses.append(stats["loss"])
        if args.log_every and iteration % args.log_every == 0 and iteration % args.eval_every != 0:
            logger.info("iteration %d/%d: train loss %.4f (%.3f s/it)", iteration, args.iterations,
                        float(torch.stack(losses[-args.log_every:]).mean()), (time.time() - t_train) / len(losses))
        if iteration % args.eval_every != 0 and iteration != args.iterations:
            continue
        train_time = time.time() - t_train
        train_loss = float(torch.stack(losses).mean())
        t_eval = time.time()
        probs, targets = predict(model, eval_loader, precision, model.output)
        sc = score(probs, targets, data.labels, data.multi_label)
        eval_time = time.time() - t_eval
        improved = best is None or sc["value"] > best["value"]
        record = {"iteration": iteration, "train_loss": train_loss, sc["metric"]: sc["value"], "mAP": sc["mAP"],
                  "train_time_s": round(train_time, 3), "eval_time_s": round(eval_time, 3),
                  "s_per_iteration": round(train_time / len(losses), 4), "best": improved}
        _append_jsonl(metrics_path, record)
        logger.info("iteration %d: train loss %.4f, eval %s %.4f, mAP %.4f%s (train %.1f s, %.3f s/it; eval %.1f s)",
                    iteration, train_loss, sc["metric"], sc["value"], sc["mAP"], " *best*" if improved else "",
                    train_time, train_time / len(losses), eval_time)
        state = {"model": model.state_dict(), "config": config, "iteration": iteration,
                 "metrics": {k: v for k, v in sc.items() if k != "report"}, "args": vars(args)}
        if improved:
            best = {**sc, "iteration": iteration}
        rng = {"torch": torch.get_rng_state()}
        if mixer is not None:
            rng["mixup"] = mixer.random_state.get_state()
        ckpt_lib.save_checkpoint(latest_path, {**state, "optimizer": optimizer.state_dict(), "rng": rng, "best": best})
        if improved:
            ckpt_lib.save_checkpoint(best_path, state)
            atomic_write_text(os.path.join(run_dir, "report.txt"),
                        f"{data.source}\nbest checkpoint: {best_path} (iteration {iteration})\n\n{sc['report']}\n")
        model.train()
        losses, t_train = [], time.time()
    if best is None:   # resumed at the last iteration: nothing left to train
        raise PannsError(f"{latest_path} already reached --iterations {args.iterations}; raise it to train on")
    best["wall_s"] = time.time() - t_start
    best["best_path"], best["latest_path"] = best_path, latest_path
    return best


# ------------------------------------------------------------------------------------------------------------
# Linear probe: frozen embeddings + logistic regression
# ------------------------------------------------------------------------------------------------------------
def _embeddings(extractor, cache: fd.ClipCache, paths: List[str], clip_samples: int, cache_dir: str,
                fingerprint: str) -> np.ndarray:
    """Embeddings (N, D) of the eval crops of ``paths``, computed once and kept in ``cache_dir``."""
    key = hashlib.sha1("|".join([fingerprint, os.path.basename(cache.h5_path), str(clip_samples),
                                 extractor.precision] + sorted(paths)).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"embeddings_{key}.npz")
    if os.path.isfile(path):
        with np.load(path, allow_pickle=False) as z:
            names = list(z["paths"])
            if sorted(names) == sorted(paths):
                logger.info("Using cached embeddings %s", path)
                row = {p: i for i, p in enumerate(names)}
                return z["embedding"][[row[p] for p in paths]]
    embs = []
    chunk = 256  # bounded memory: decode crops of a few hundred clips at a time
    for s in range(0, len(paths), chunk):
        waves = [fd.crop(cache.read(cache.index[p]), clip_samples) for p in paths[s:s + chunk]]
        embs.append(extractor.embed_waveforms(waves, paths[s:s + chunk]).embedding)
    emb = np.concatenate(embs).astype(np.float32)
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez(tmp, paths=np.array(paths), embedding=emb)
    return emb


def probe_to_head(clf, classes_num: int, multi_label: bool) -> Tuple[np.ndarray, np.ndarray]:
    """The fitted scaler + logistic regression as one linear layer on the raw embedding:
    weight (classes_num, D) and bias (classes_num,) whose log-softmax (single-label) or sigmoid
    (multi-label) equals ``clf.predict_proba``. Classes the probe never saw get probability 0."""
    scaler, model = clf.steps[0][1], clf.steps[-1][1]
    mu, sigma = scaler.mean_, scaler.scale_
    dim = len(mu)
    weight = np.zeros((classes_num, dim))
    bias = np.full(classes_num, -1e4)
    if multi_label:
        for k, est in enumerate(model.estimators_):
            if hasattr(est, "coef_"):
                weight[k], bias[k] = est.coef_[0], est.intercept_[0]
            else:  # a label that is always (or never) present: a constant probability
                p = float(np.clip(est.predict_proba(np.zeros((1, dim)))[0, 1], 1e-6, 1 - 1e-6))
                weight[k], bias[k] = 0.0, np.log(p / (1 - p))
    elif len(model.classes_) == 2:   # binary LogisticRegression keeps one row: logits (0, z)
        weight[model.classes_[0]], bias[model.classes_[0]] = 0.0, 0.0
        weight[model.classes_[1]], bias[model.classes_[1]] = model.coef_[0], model.intercept_[0]
    else:
        weight[model.classes_], bias[model.classes_] = model.coef_, model.intercept_
    seen = bias > -1e4
    bias[seen] -= (weight[seen] * mu / sigma).sum(axis=1)
    weight[seen] /= sigma
    return weight.astype(np.float32), bias.astype(np.float32)


def fit_probe_head(args, model: torch.nn.Module, base_name: str, frontend: dict, data: fd.LabelledData,
                   cache: fd.ClipCache, clip_samples: int, device: torch.device, cache_dir: str) -> Tuple[dict, float]:
    """Fit a logistic regression on the base's embeddings of the training clips and make it the head
    (``fc_transfer``) of ``model``. Returns (its score on the eval clips, seconds spent on embeddings)."""
    t0 = time.time()
    base = model.base
    base_cfg = ckpt_lib.ModelConfig(model_type=base_name, **frontend, classes_num=AUDIOSET_CLASSES_NUM,
                                    labels=None, ids=None, base_model_type=None, output="sigmoid")
    ex = Extractor(base, base_cfg, precision=args.precision, device=device, batch_size=args.batch_size,
                   num_workers=0, progress=True)
    fp = weights_fingerprint(base)
    x_train = _embeddings(ex, cache, data.train.paths, clip_samples, cache_dir, fp)
    x_eval = _embeddings(ex, cache, data.eval.paths, clip_samples, cache_dir, fp)
    t_emb = time.time() - t0
    lr = LogisticRegression(max_iter=2000, C=args.probe_c)
    if data.multi_label:
        clf = make_pipeline(StandardScaler(), OneVsRestClassifier(lr))
        clf.fit(x_train, data.train.targets.astype(int))
        probs = clf.predict_proba(x_eval)
    else:
        clf = make_pipeline(StandardScaler(), lr)
        y = data.train.targets.argmax(1)
        clf.fit(x_train, y)
        probs = np.zeros((len(x_eval), data.classes_num), np.float32)
        probs[:, clf.classes_] = clf.predict_proba(x_eval)
    sc = score(probs, data.eval.targets, data.labels, data.multi_label)
    weight, bias = probe_to_head(clf, data.classes_num, data.multi_label)
    with torch.no_grad():
        model.fc_transfer.weight.copy_(torch.from_numpy(weight))
        model.fc_transfer.bias.copy_(torch.from_numpy(bias))
    return sc, t_emb


def linear_probe(args, model: torch.nn.Module, base_name: str, frontend: dict, data: fd.LabelledData,
                 cache: fd.ClipCache, clip_samples: int, device: torch.device, cache_dir: str, run_dir: str,
                 config: dict) -> dict:
    """Fit a logistic regression on frozen base embeddings (same report as fine-tuning), then write it
    as the head of ``model`` (Transfer_<Base>) to ``linear_probe.pth``: a checkpoint that
    ``inference.py audio_tagging --checkpoint_path`` uses like any fine-tuned one."""
    t0 = time.time()
    sc, t_emb = fit_probe_head(args, model, base_name, frontend, data, cache, clip_samples, device, cache_dir)
    probe_path = os.path.join(run_dir, "linear_probe.pth")
    metrics = {k: v for k, v in sc.items() if k != "report"}
    ckpt_lib.save_checkpoint(probe_path, {"model": model.state_dict(), "config": {**config, "linear_probe": True},
                                          "iteration": 0, "metrics": metrics})
    atomic_write_text(os.path.join(run_dir, "report.txt"), f"{data.source}\nlinear probe: {probe_path}\n\n{sc['report']}\n")
    _append_jsonl(os.path.join(run_dir, "metrics.jsonl"),
                  {"linear_probe": True, sc["metric"]: sc["value"], "mAP": sc["mAP"],
                   "embedding_time_s": round(t_emb, 3), "total_time_s": round(time.time() - t0, 3)})
    return {**sc, "probe_path": probe_path, "wall_s": time.time() - t0, "embedding_time_s": t_emb}


# ------------------------------------------------------------------------------------------------------------
# Entry
# ------------------------------------------------------------------------------------------------------------
def train(args) -> Optional[dict]:
    """Build the transfer model, load the pretrained base, then fine-tune (or linear-probe) on the data given."""
    base_name = base_of(args.model_type)
    cli_fe = {k: getattr(args, k) for k in FRONTEND_KEYS}
    data = load_data(args)  # early: data errors before any model work
    if data is not None and not args.workspace:
        raise PannsError("--workspace is required when fine-tuning (checkpoints, cache and reports go there)")
    loss = args.loss or ("bce" if data is not None and data.multi_label else "nll")
    if data is not None and data.multi_label and loss == "nll":
        raise PannsError("some clips have several labels; single-label --loss nll cannot learn that: use --loss bce")
    output = OUTPUT_OF_LOSS[loss]

    run_dir = None
    if data is not None:
        run_name = args.run_name or "_".join(
            [f"Transfer_{base_name}", data.name] + (["linear_probe"] if args.linear_probe else
                                                    [loss] + (["frozen"] if args.freeze_base else [])))
        run_dir = os.path.join(args.workspace, "finetune", run_name)
        prepare_run_dir(run_dir, args.overwrite, args.resume)
        create_logging(os.path.join(run_dir, "logs"), filemode="w")
    else:
        logging.basicConfig(level=logging.INFO, format="%(name)-12s: %(levelname)-8s %(message)s")
    if data is not None:
        logger.info("Data: %s; %d classes, %d train / %d eval clips%s", data.source, data.classes_num,
                    len(data.train), len(data.eval), " (multi-label)" if data.multi_label else "")
        for w in data.warnings:
            logger.warning(w)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed % 2**32)
    device = devices.select_device(args.cuda)

    precision = devices.resolve_precision(args.precision, device, training=not args.linear_probe)

    # Model (official order: build, load pretrained, report device).
    sd = None
    if args.pretrained_checkpoint_path:
        sd, frontend, saved_cfg = read_pretrained(args.pretrained_checkpoint_path, base_name, cli_fe)
    else:
        frontend = {**models.get_model_spec(base_name).frontend(), **{k: v for k, v in cli_fe.items() if v is not None}}
    classes_num = data.classes_num if data is not None else AUDIOSET_CLASSES_NUM
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
        logger.warning("No --pretrained_checkpoint_path: the base starts from random weights (training from scratch)")
    if data is None:
        print("No data given, nothing to fine-tune: pass --dataset_dir DIR (one sub-folder per class), "
              "--train_csv [--eval_csv], or --meta_csv with --holdout_fold, and --workspace.")
        return None

    cache_dir = args.cache_dir or os.path.join(args.workspace, "cache")
    cache = fd.build_cache(data.train.paths + data.eval.paths, frontend["sample_rate"], cache_dir, args.num_workers)
    clip_samples = resolve_clip_samples(args, cache, data, frontend["sample_rate"], train_min_samples(model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = model_config(base_name, frontend, data.labels, output, clip_seconds=clip_samples / frontend["sample_rate"],
                          pretrained_checkpoint_path=args.pretrained_checkpoint_path, freeze_base=args.freeze_base)
    tl.write_json(os.path.join(run_dir, "run.json"), _run_record(args, {
        "data": data.source, "labels": data.labels, "train_clips": len(data.train), "eval_clips": len(data.eval),
        "loss": loss, "output": output, "frontend": frontend, "clip_samples": clip_samples, "precision": precision,
        "device": str(device), "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": trainable, "cache": cache.h5_path}))

    if args.linear_probe:
        res = linear_probe(args, model, base_name, frontend, data, cache, clip_samples,
                           device, cache_dir, run_dir, config)
        print(res["report"])
        print(f"Linear probe {res['metric']}: {res['value']:.4f} ({res['wall_s']:.1f} s); saved to {res['probe_path']}\n"
              f"Tag with it: python3 pytorch/inference.py audio_tagging --checkpoint_path {res['probe_path']} "
              "--audio_path <clip>")
        return res

    logger.info("Fine-tuning Transfer_%s: %s loss, %s output, %d trainable of %d parameters, clip %.2f s, "
                "batch %d, lr %g, %d iterations, %s on %s", base_name, loss, output, trainable,
                sum(p.numel() for p in model.parameters()), clip_samples / frontend["sample_rate"], args.batch_size,
                args.learning_rate, args.iterations, precision, device)
    if args.head_init == "probe" and not args.resume:
        sc, _ = fit_probe_head(args, model, base_name, frontend, data, cache, clip_samples, device, cache_dir)
        logger.info("Head initialised from a linear probe on the %d training clips' embeddings (eval %s %.4f)",
                    len(data.train), sc["metric"], sc["value"])
    res = fine_tune(args, model, data, cache, clip_samples, device, precision, loss, config, run_dir)
    print(res["report"])
    print(f"Best {res['metric']}: {res['value']:.4f} at iteration {res['iteration']} "
          f"({res['wall_s']:.1f} s); checkpoint: {res['best_path']}")
    return res


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: not where the help already says it, nor for None/False."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    p = sub.add_parser("train", help="fine-tune a pretrained model (or run a linear probe)",
                       formatter_class=DefaultsOnceFormatter)
    g = p.add_argument_group("model (official arguments)")
    for k, h in (("sample_rate", "audio sample rate (Hz)"), ("window_size", "STFT window (samples)"),
                 ("hop_size", "STFT hop (samples)"), ("mel_bins", "number of mel bins"),
                 ("fmin", "lowest mel frequency (Hz)"), ("fmax", "highest mel frequency (Hz)")):
        g.add_argument(f"--{k}", type=int, default=None,
                       help=f"{h}; default: the pretrained checkpoint's, else the registry's for the base model "
                            "(a value contradicting the checkpoint is an error)")
    g.add_argument("--model_type", type=str, default="Transfer_Cnn14",
                   help="Transfer_<Base> for any clip-level model (a plain base name means the same)")
    g.add_argument("--pretrained_checkpoint_path", type=str, default=None,
                   help="base weights: an official PANNs .pth, one of ours, or a fine-tuned Transfer_<Base> checkpoint")
    g.add_argument("--freeze_base", action="store_true",
                   help="train only the new head (the base's weights and BatchNorm statistics stay pretrained)")
    g.add_argument("--cuda", action="store_true", help="use the GPU if there is one")
    d = p.add_argument_group("data (one of --dataset_dir, --train_csv, --meta_csv)")
    d.add_argument("--dataset_dir", type=str, default=None,
                   help="folder with one sub-folder of clips per class (or train/ and eval|val|test/ folders of those)")
    d.add_argument("--train_csv", type=str, default=None, help="CSV of 'path,label[,label...]' rows for training")
    d.add_argument("--eval_csv", type=str, default=None,
                   help="CSV of 'path,label[,label...]' rows for evaluation (default: hold out --eval_fraction)")
    d.add_argument("--meta_csv", type=str, default=None,
                   help="metadata CSV with file, fold and label columns (ESC-50 meta/esc50.csv, UrbanSound8K)")
    d.add_argument("--holdout_fold", type=str, default=None, help="with --meta_csv: the fold used for evaluation")
    d.add_argument("--audio_dir", type=str, default=None,
                   help="folder that relative paths in the CSVs start from (default: <meta csv>/../audio, "
                        "then the CSV's folder)")
    d.add_argument("--eval_fraction", type=float, default=0.2,
                   help="share of every class held out for evaluation when no eval split is given")
    d.add_argument("--clip_seconds", type=float, default=None,
                   help="clip length fed to the model: random crops for training, the first seconds for "
                        "evaluation, zero-padded when shorter (default: longest clip, at most 10 s)")
    t = p.add_argument_group("training")
    t.add_argument("--workspace", type=str, default=None, help="folder for the cache, checkpoints and reports")
    t.add_argument("--run_name", type=str, default=None,
                   help="sub-folder of <workspace>/finetune (default: model, data set, loss, frozen)")
    t.add_argument("--cache_dir", type=str, default=None, help="decoded-clip cache (default: <workspace>/cache)")
    t.add_argument("--batch_size", type=int, default=32, help="clips per optimizer step")
    t.add_argument("--learning_rate", type=float, default=None,
                   help="Adam learning rate (default: 1e-3 with --freeze_base, 1e-4 otherwise)")
    t.add_argument("--iterations", type=int, default=1000, help="optimizer steps")
    t.add_argument("--eval_every", type=int, default=100, help="evaluate and save every this many steps (and at the end)")
    t.add_argument("--log_every", type=int, default=10, help="log the training loss every this many steps (0: off)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in the run folder from its latest.pth (same arguments; exact: the weights "
                        "equal those of one run straight)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the run folder (without it, an existing run is an error)")
    t.add_argument("--augmentation", choices=("none", "mixup"), default="none",
                   help="mixup: mix pairs of clips (log-mel) and their targets, as the official main.py")
    t.add_argument("--loss", choices=("nll", "bce"), default=None,
                   help="nll: single-label, log-softmax head (official Transfer_Cnn14); bce: multi-label, sigmoid head "
                        "(default: bce if any clip has several labels, else nll)")
    t.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="worker processes for decoding and batch loading (0: in the main process)")
    t.add_argument("--seed", type=int, default=0, help="seed of the eval hold-out, batch order, crops and init")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="compute precision of the CNN body (auto: bf16 on GPUs that support it, fp32 on CPU)")
    t.add_argument("--head_init", choices=("probe", "random"), default=None,
                   help="start the new head from a linear probe fitted on the base's embeddings of the training "
                        "clips, or from random weights (default: probe with --freeze_base, else random). A random "
                        "head on a frozen base learns slowly: its embedding's common offset dwarfs the differences "
                        "between clips, so the first hundred steps only shift the class biases")
    t.add_argument("--linear_probe", action="store_true",
                   help="instead of fine-tuning: base embeddings (extracted once) + logistic regression")
    t.add_argument("--probe_c", type=float, default=1.0, help="inverse L2 strength of the linear probe")
    return parser


def main(argv=None) -> Optional[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode != "train":
        parser.error("choose the sub-command: train")
    if args.head_init is None:
        args.head_init = "probe" if args.freeze_base else "random"
    if args.learning_rate is None:
        args.learning_rate = 1e-3 if args.freeze_base else 1e-4
    for name in ("batch_size", "iterations", "eval_every"):
        if getattr(args, name) < 1:
            raise PannsError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if args.augmentation == "mixup" and args.batch_size < 1:
        raise PannsError("--augmentation mixup needs --batch_size >= 1")
    if args.num_workers < 0:
        raise PannsError("--num_workers must be >= 0")
    args.filename = "finetune_template"
    return train(args)


if __name__ == "__main__":
    run_cli(main)
