"""Linear probe: a logistic regression on a frozen base's embeddings, turned into a transfer head.

Used by ``finetune_template.py train --linear_probe`` (the quick baseline) and ``--head_init probe``
(start fine-tuning from it). Embeddings of the clips' evaluation crops are computed once per weights,
clip length and precision and kept in the cache folder.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import List, Tuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from panns import checkpoint as ckpt_lib
from panns import finetune_data as fd
from panns.evaluate import classification_scores
from panns.extract import Extractor, weights_fingerprint
from panns.utilities import atomic_write

logger = logging.getLogger("finetune")

AUDIOSET_CLASSES_NUM = 527


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


def fit_probe_head(model: torch.nn.Module, base_name: str, frontend: dict, data: fd.LabelledData,
                   cache: fd.ClipCache, clip_samples: int, device: torch.device, cache_dir: str, *,
                   precision: str, batch_size: int, c: float = 1.0) -> Tuple[dict, float]:
    """Fit a logistic regression (inverse L2 strength ``c``) on the base's embeddings of the training clips
    and make it the head (``fc_transfer``) of ``model`` (Transfer_<base_name>). Returns (its scores on the
    eval clips, see evaluate.classification_scores; seconds spent on embeddings)."""
    t0 = time.time()
    base = model.base
    base_cfg = ckpt_lib.ModelConfig(model_type=base_name, **frontend, classes_num=AUDIOSET_CLASSES_NUM,
                                    labels=None, ids=None, base_model_type=None, output="sigmoid")
    ex = Extractor(base, base_cfg, precision=precision, device=device, batch_size=batch_size,
                   num_workers=0, progress=True)
    fp = weights_fingerprint(base)
    x_train = _embeddings(ex, cache, data.train.paths, clip_samples, cache_dir, fp)
    x_eval = _embeddings(ex, cache, data.eval.paths, clip_samples, cache_dir, fp)
    t_emb = time.time() - t0
    lr = LogisticRegression(max_iter=2000, C=c)
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
    sc = classification_scores(probs, data.eval.targets, data.labels, data.multi_label)
    weight, bias = probe_to_head(clf, data.classes_num, data.multi_label)
    with torch.no_grad():
        model.fc_transfer.weight.copy_(torch.from_numpy(weight))
        model.fc_transfer.bias.copy_(torch.from_numpy(bias))
    return sc, t_emb
