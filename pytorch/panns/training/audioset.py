"""AudioSet training's task for the training core (``pytorch/main.py train``).

:func:`check_inputs` fails with one clear line before any work (label CSV, model name, index files,
the waveform files they name, clip lengths); :class:`AudioSetTask` sets up the run (paths, logging,
model, index-file loaders, Evaluator and statistics) and hands the loop, checkpoints and resume to
``training.core.Trainer``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import h5py
import numpy as np
import torch

from panns import amp
from panns import checkpoint
from panns import config
from panns import data_generator as dg
from panns import devices
from panns import models
from panns import runtime
from panns.training import config as tl
from panns.create_indexes import read_index
from panns.devices import DistInfo
from panns.errors import CheckpointError, PannsError
from panns.eval_cache import ResidentBatches, use_cache
from panns.evaluate import Evaluator, StatisticsContainer
from panns.losses import get_loss_func
from panns.pytorch_utils import count_parameters
from panns.training.core import CoreSettings, Meter, Trainer
from panns.training.config import TrainConfig
from panns.utilities import Progress, create_folder, create_logging, read_statistics

logger = logging.getLogger("main")

EVAL_WORKERS = 4   # loader workers of an evaluation at most

INDEX_SCRIPTS = {
    "full_train": "utils/create_indexes.py combine_full_indexes (scripts/3_create_training_indexes.sh)",
    "balanced_train": "utils/create_indexes.py create_indexes (scripts/3_create_training_indexes.sh)",
    "eval": "utils/create_indexes.py create_indexes (scripts/3_create_training_indexes.sh)",
}


# ------------------------------------------------------------------------------------------ checks
@dataclass
class DataInfo:
    """What the checks learned about the data: classes, clip lengths at the model rate."""
    labels: config.ClassLabels
    clip_samples: int            # training clips, at the training sample rate
    eval_clip_samples: int       # shortest evaluation clip, at the training sample rate


def _waveform_files(indexes_path: str) -> List[str]:
    """The waveform HDF5 files an index file points to (resolved paths)."""
    table = read_index(indexes_path)
    if len(table) == 0:
        raise PannsError(f"{indexes_path} lists no clips (was the waveform HDF5 empty?)")
    return sorted(set(table.hdf5_paths[c] for c in np.unique(table.path_codes)))


def _clip_samples(indexes_path: str, labels: config.ClassLabels, sample_rate: int, fmax: int,
                  labels_hint: str = "pass the matching --class_labels_csv", doing: str = "training") -> int:
    """Clip length (samples at ``sample_rate``) of the clips an index points to; they must all agree.
    ``labels_hint``: what to do when the files were packed with other class ids; ``doing``: for the warning
    about resampling."""
    lengths: Dict[str, int] = {}
    rates: Dict[int, str] = {}
    for path in _waveform_files(indexes_path):
        info = dg.waveform_info(path, f" (named in {indexes_path}; pack it with utils/dataset.py "
                                      "pack_waveforms_to_hdf5)")
        file_sr, file_len, ids = info.sample_rate, info.clip_samples, info.class_ids
        if ids and ids != list(labels.ids):
            raise PannsError(f"{path} was packed with another label CSV (class ids differ from "
                             f"{labels.ids[:2]}...); {labels_hint}")
        rates.setdefault(file_sr, path)
        lengths[path] = int(round(file_len * sample_rate / file_sr))
    for file_sr, path in rates.items():
        check_resampling(file_sr, sample_rate, path, fmax, doing)
    if len(set(lengths.values())) > 1:
        raise PannsError(f"{indexes_path} mixes clips of different lengths ({sorted(set(lengths.values()))} samples "
                         f"at {sample_rate} Hz); repack all parts with the same --clip_seconds")
    return next(iter(lengths.values()))


def check_inputs(cfg: TrainConfig) -> DataInfo:
    """Fail with one line, before any work, on inputs that cannot train: label CSV, model name, index
    files (which script makes them), their class count, the waveform files they name, clip lengths."""
    labels = config.read_class_labels(cfg.class_labels_csv)
    models.get_model_spec(cfg.model_type)  # unknown names list the valid ones
    names = (cfg.data_type, "balanced_train", "eval")
    for name in names:
        path = cfg.indexes_path(name)
        if not os.path.isfile(path):
            raise PannsError(f"index file {path} not found; create it with {INDEX_SCRIPTS[name]}")
        try:
            with h5py.File(path, "r") as hf:
                width = hf["target"].shape[1] if "target" in hf else None
        except OSError as e:   # h5py's message (e.g. 'truncated file: eof = ...') does not name the file
            raise PannsError(f"index file {path} cannot be read ({' '.join(str(e).split())}); re-create it with "
                             f"{INDEX_SCRIPTS[name]}") from None
        if width != labels.classes_num:
            raise PannsError(f"{path} has targets for {width} classes but the label CSV "
                             f"({cfg.class_labels_csv or config.DEFAULT_LABELS_CSV}) lists {labels.classes_num}; "
                             "pass the label CSV the data was packed with (--class_labels_csv)")
    if cfg.black_list_csv and not os.path.isfile(cfg.black_list_csv):
        raise PannsError(f"black list CSV not found: {cfg.black_list_csv}")
    lengths = {n: _clip_samples(cfg.indexes_path(n), labels, cfg.sample_rate, cfg.fmax) for n in set(names)}
    return DataInfo(labels, lengths[cfg.data_type], min(lengths["balanced_train"], lengths["eval"]))


def check_resampling(file_sr: int, sample_rate: int, path: str, fmax: int, doing: str = "training") -> None:
    """The loader resamples packed clips to the model rate (soxr, both ways); warn where it loses nothing
    but gains nothing either (upsampling leaves the band above the file's Nyquist empty). ``doing``: 'training'
    or 'evaluating', for the warning."""
    if file_sr == sample_rate:
        return
    logger.info("%s holds %d Hz audio; the loader resamples it to %d Hz", path, file_sr, sample_rate)
    if sample_rate > file_sr and fmax > file_sr / 2:
        logger.warning("%s at %d Hz on %d Hz data: mel bands above %d Hz (fmax=%d) will be empty",
                       doing, sample_rate, file_sr, file_sr // 2, fmax)


def build_model(cfg: TrainConfig, classes_num: int, clip_samples: int, eval_clip_samples: int) -> torch.nn.Module:
    """The model for ``cfg`` with a clear error for front ends or clip lengths it cannot take."""
    shortest = min(clip_samples, eval_clip_samples)
    if cfg.window_size > shortest:   # the STFT pads by half a window, reflecting the clip: it must be longer
        raise PannsError(f"--window_size {cfg.window_size} is longer than the clips ({shortest} samples, "
                         f"{shortest / cfg.sample_rate:.2f} s at {cfg.sample_rate} Hz)")
    try:
        model = models.create_model(cfg.model_type, classes_num=classes_num, **cfg.frontend)
    except PannsError:
        raise
    except (AssertionError, ValueError, RuntimeError, TypeError) as e:
        raise PannsError(f"{cfg.model_type} cannot be built with {cfg.feature_dir}: {type(e).__name__}: {e}") from None
    need_eval = int(getattr(model, "min_samples", 0) or 0)
    need = need_eval
    if getattr(model, "spec_augmenter", None) is not None and getattr(model, "spec_augment", True):
        # SpecAugment draws time stripes up to 63 frames wide: needs >= 64 frames in training.
        need = max(need, 63 * cfg.hop_size)
    for what, have, want in (("training", clip_samples, need), ("evaluation", eval_clip_samples, need_eval)):
        if have < want:
            raise PannsError(f"{what} clips of {have} samples ({have / cfg.sample_rate:.2f} s at {cfg.sample_rate} Hz) "
                             f"are too short for {cfg.model_type} with hop {cfg.hop_size}: it needs >= {want} "
                             f"samples ({want / cfg.sample_rate:.2f} s); repack with a longer --clip_seconds")
    return model


def evaluate_checkpoint(indexes_hdf5_path: str, checkpoint_path: Optional[str] = None, model_type: Optional[str] = None,
                        frontend: Optional[Dict[str, int]] = None, class_labels_csv: Optional[str] = None,
                        cuda: bool = False, precision: str = "fp32", batch_size: int = 32, num_workers: int = 4,
                        progress: bool = True) -> Dict[str, Any]:
    """A checkpoint's per-class AP/AUC, mAP, mAUC and d-prime over every clip of an index file, computed as a
    training run's evaluations (``main.py evaluate``): e.g. a published checkpoint on your copy of the
    AudioSet evaluation set, whose missing clips move mAP. One-line errors before any work for an index
    of another class count or label list, or clips too short for the model.

    Scores, and the per-class 'positives' (C,) that go with them, use the targets the loader reads from the
    waveform HDF5 rows, as a training run's evaluations do (the index file's ``target`` is a copy made by
    create_indexes). Each batch's targets are also compared with the index's rows as they pass (no extra read):
    clips where they differ (a stale or edited index) are counted in 'index_mismatched_clips' and named in one
    warning line.

    Returns the metrics of :func:`evaluate.compute_metrics` (with 'positives') plus 'labels', 'ids',
    'index_mismatched_clips', 'model_type', 'checkpoint_path', 'indexes_hdf5_path', 'precision' and 'device'."""
    if not os.path.isfile(indexes_hdf5_path):
        raise PannsError(f"index file {indexes_hdf5_path} not found; create it with {INDEX_SCRIPTS['eval']}")
    sampler = dg.EvaluateSampler(indexes_hdf5_path=indexes_hdf5_path, batch_size=batch_size)
    table = sampler.table
    if not len(table):
        raise PannsError(f"{indexes_hdf5_path} lists no clips")
    if checkpoint_path is None and table.classes_num != config.AUDIOSET_CLASSES_NUM:   # before a download
        raise PannsError(f"{indexes_hdf5_path} has targets for {table.classes_num} classes but the published "
                         f"checkpoints output the {config.AUDIOSET_CLASSES_NUM} AudioSet classes; give "
                         "--checkpoint_path of a model trained on these classes")
    model, cfg, path = runtime.load_model(checkpoint_path, model_type, frontend)
    labels, ids = runtime.resolve_labels(cfg, class_labels_csv)
    if table.classes_num != cfg.classes_num:
        raise PannsError(f"{indexes_hdf5_path} has targets for {table.classes_num} classes but {cfg.model_type} "
                         f"({path}) outputs {cfg.classes_num}")
    hint = (f"the checkpoint's classes ({path}) are not the data's: evaluate a model trained on these classes"
            if getattr(cfg, "labels", None) else "pass the matching --class_labels_csv")
    clip_samples = _clip_samples(indexes_hdf5_path, config.ClassLabels(ids=ids, labels=labels), cfg.sample_rate,
                                 cfg.fmax, hint, "evaluating")
    need = runtime.model_min_samples(cfg, model)
    if clip_samples < need:
        raise PannsError(f"the clips of {indexes_hdf5_path} ({clip_samples} samples at {cfg.sample_rate} Hz) are "
                         f"shorter than {cfg.model_type} takes ({need})")
    device = devices.select_device(cuda)
    precision = amp.resolve_precision(precision, device)
    devices.configure_backends(device)
    model = model.to(device)
    workers = min(num_workers, dg.usable_cpus())   # as training's loaders: no more workers than CPUs to run them
    loader = dg.train_loader(cfg.sample_rate, sampler, workers, device, seed=0)
    name = os.path.basename(indexes_hdf5_path)
    pin = device.type == "cuda"   # as a training run's evaluations: fp32 means IEEE fp32 (TF32 off) on GPUs
    if pin:
        amp.pin_ieee_fp32()
    assert table.targets is not None
    index_targets = table.targets
    differ = np.zeros(len(table), dtype=bool)   # clips whose waveform-file targets differ from the index's
    try:
        with Progress(len(table), desc=f"evaluating on {name}", enabled=progress) as bar:
            def counted():
                seen = 0   # the loader yields the sampler's rows in index order
                for batch in loader:
                    got = np.asarray(batch["target"]) >= 0.5
                    differ[seen:seen + len(got)] = (got != index_targets[seen:seen + len(got)]).any(axis=1)
                    seen += len(got)
                    yield batch
                    bar.update(len(batch["audio_name"]))
            result = Evaluator(model, precision=precision, batch_size=batch_size).evaluate(counted(), name=name)
    finally:
        if pin:
            amp.unpin_ieee_fp32()
    assert result is not None   # one process: this one holds the metrics
    if not np.any(result["positives"]):   # every AP undefined: it printed 'mAP 0.0000 over the 0 of C classes'
        raise PannsError(f"no clip of {indexes_hdf5_path} has a positive label (in the targets of its waveform "
                         "files, which are scored): there is nothing to score")
    mismatched = int(differ.sum())
    if mismatched:
        files = sorted({table.hdf5_paths[c] for c in np.unique(table.path_codes[differ])})
        logger.warning("index %s's targets differ from those of its waveform file%s %s for %d of %d clips; the "
                       "scores and positives use the waveform file's targets (as training's evaluations do): "
                       "re-create the index with create_indexes", indexes_hdf5_path, "s" if len(files) > 1 else "",
                       ", ".join(files), mismatched, len(table))
    return {**result, "labels": labels, "ids": ids, "index_mismatched_clips": mismatched,
            "model_type": cfg.model_type, "checkpoint_path": path, "indexes_hdf5_path": indexes_hdf5_path,
            "precision": precision, "device": str(device)}


def saved_iterations(checkpoints_dir: str) -> List[int]:
    """Iterations of the ``<N>_iterations.pth`` checkpoints in ``checkpoints_dir``, sorted."""
    if not os.path.isdir(checkpoints_dir):
        return []
    return sorted(int(f.split("_")[0]) for f in os.listdir(checkpoints_dir)
                  if f.endswith("_iterations.pth") and f.split("_")[0].isdigit())


def _last_evaluation(statistics_path: str) -> Optional[int]:
    """Latest iteration ``statistics.pkl`` holds an evaluation of (None: no file or none; -1: unreadable)."""
    if not os.path.isfile(statistics_path):
        return None
    try:
        stats = read_statistics(statistics_path)
        return max((int(s["iteration"]) for v in stats.values() for s in v), default=None)
    except Exception:  # noqa: BLE001 - any damage: it still belongs to an earlier run
        return -1


def check_run_folder(cfg: TrainConfig) -> List[str]:
    """Refuse (one line) to overwrite what an earlier run left in ``cfg``'s run folder, unless ``--overwrite``;
    returns the files to remove when the new run starts (``--overwrite``), else [].

    Fresh run: checkpoints past iteration 0 or evaluations past it are an earlier run's (a folder with only the
    starting point - Ctrl-C before the first save - is made again by the same command). Resume from N:
    checkpoints after N would be overwritten one by one by another trajectory."""
    saved = saved_iterations(cfg.checkpoints_dir)
    if cfg.resume_iteration > 0:
        later = [n for n in saved if n > cfg.resume_iteration]
        if later and not cfg.overwrite:
            raise PannsError(f"--resume_iteration {cfg.resume_iteration} would overwrite the later checkpoints "
                             f"{', '.join(map(str, later))} in {cfg.checkpoints_dir} as training goes on; resume from "
                             f"the latest (--resume_iteration {later[-1]}), or add --overwrite to replace them")
        return [cfg.checkpoint_path(n) for n in later]
    trained = [n for n in saved if n > 0]
    last_eval = _last_evaluation(cfg.statistics_path)
    if not trained and (last_eval is None or last_eval == 0):
        return []
    if not cfg.overwrite:
        held = f"checkpoints at iterations {', '.join(map(str, trained))}" if trained else \
            f"{cfg.statistics_path}" + (" (unreadable)" if last_eval == -1 else f" up to iteration {last_eval}")
        resume = "" if not trained else (
            f"resume it with --resume_iteration {trained[-1]}, " if trained[-1] < cfg.early_stop else
            f"it reached iteration {trained[-1]}, so resuming it takes --resume_iteration {trained[-1]} with an "
            f"--early_stop above {trained[-1]}, ")
        raise PannsError(f"the run folder {cfg.checkpoints_dir} already holds a run ({held}); {resume}change a "
                         "setting that names the folder, or add --overwrite to replace it")
    stem = os.path.splitext(cfg.statistics_path)[0]
    return [cfg.checkpoint_path(n) for n in saved] + \
        [p for p in (cfg.statistics_path, stem + ".json") if os.path.isfile(p)]


def eval_batch_size(requested: int, per_rank_batch: int, batch_size: int, device: torch.device) -> int:
    """Clips per evaluation batch: ``--eval_batch_size`` when given, else 4x the per-process batch on CUDA (the
    forward alone is cheap there; scores do not depend on the batch) and ``--batch_size`` elsewhere."""
    return requested or (4 * per_rank_batch if torch.device(device).type == "cuda" else batch_size)


# ------------------------------------------------------------------------------------------ the task
class AudioSetTask:
    """``main.py train``'s part of a run (see training.core.Task): checks, run folders and logs, the model,
    the index-file samplers and loaders, the Evaluator with ``statistics.pkl``, ``<N>_iterations.pth``.

    Builds the :class:`training.core.Trainer` that runs the loop (``self.trainer``)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        # Every node checks its own copy of the inputs; a failure anywhere stops every rank with one line.
        data = tl.check_everywhere(info, check_inputs, cfg)
        self.labels = data.labels
        self.batch_per_rank, self.global_batch = cfg.per_rank_batch, cfg.global_batch
        sync_bn = tl.resolve_sync_bn(cfg, info)
        tl.check_grad_comm(cfg.grad_comm, info)
        # Only rank 0's disk is sure to hold the checkpoints (nodes need not share a filesystem).
        resume_from = tl.from_main(info, self._resume_path, cfg.resume_iteration) if cfg.resume_iteration > 0 \
            else None
        # What --overwrite replaces is removed when the run starts (run()), not now: a run that fails while
        # setting up keeps the earlier one.
        self._replace = tl.from_main(info, check_run_folder, cfg)

        self.precision = amp.resolve_precision(cfg.precision, info.device, training=True)
        tl.seed_everything(cfg.seed)  # same initial weights on every rank
        raw = build_model(cfg, data.labels.classes_num, data.clip_samples, data.eval_clip_samples)
        self._setup_logging()
        logger.info("Config: %s", cfg.to_dict())
        logger.info("Using %s%s; precision %s.", devices.describe(info.device),
                    f", {info.world_size} processes" if info.distributed else "", self.precision)
        logger.info(tl.batch_line(cfg, info, sync_bn))
        if cfg.cuda and info.device.type != "cuda":
            logger.warning("--cuda given but no GPU is available; training on the CPU")
        self.raw_model = raw.to(info.device)
        n_params = count_parameters(raw)
        logger.info("Parameters num: %d", n_params)
        model_config = self._model_config()
        self._setup_data(data)
        self.statistics = StatisticsContainer(cfg.statistics_path)
        self._last_stats: Dict[str, Any] = {}
        settings = CoreSettings(iterations=cfg.early_stop, eval_every=cfg.eval_every, save_every=cfg.save_every,
                                log_every=cfg.log_every, learning_rate=cfg.learning_rate, precision=self.precision,
                                seed=cfg.seed, mixup_alpha=cfg.mixup_alpha if cfg.augmentation == "mixup" else None,
                                grad_clip=cfg.grad_clip, compile=cfg.compile, sync_bn=sync_bn, at_start=True)
        self.trainer = Trainer(settings, info, self.raw_model, get_loss_func(cfg.loss_type), self, model_config,
                               {**cfg.to_dict(), "global_batch": self.global_batch,
                                "per_rank_batch": self.batch_per_rank},
                               data.clip_samples, self.global_batch, resume_from)
        # The run record once the run is sure to start: a resume the Trainer refuses (e.g. another --seed) leaves
        # the folder's config.json describing the run that wrote its checkpoints.
        if info.is_main:
            tl.write_run_record(cfg, model_config, n_params, info, self.precision)
        # Before the first backward, on the DDP module (under torch.compile's wrapper when compiled).
        tl.register_grad_comm(getattr(self.trainer.model, "_orig_mod", self.trainer.model), cfg.grad_comm)
        # A compiled run compiles its evaluation forward too (one more graph, once per run; ~39k clips every
        # 2,000 steps is the larger part of an AudioSet run's evaluation cost on a fast GPU).
        self.evaluator = Evaluator(raw, precision=self.precision,
                                   compile_backend=settings.compile_backend if self.trainer.compiled else None,
                                   batch_size=self.eval_batch)

    # ------------------------------------------------------------------------------------ setup
    def _setup_logging(self) -> None:
        if self.info.is_main:
            create_folder(self.cfg.checkpoints_dir)
            create_folder(os.path.dirname(self.cfg.statistics_path))
            create_logging(self.cfg.logs_dir, filemode="w")
        else:
            logging.getLogger().setLevel(logging.WARNING)

    def _model_config(self) -> Dict[str, Any]:
        mc = checkpoint.ModelConfig.from_registry(self.cfg.model_type, classes_num=self.labels.classes_num,
                                                  **self.cfg.frontend)
        mc.labels, mc.ids = list(self.labels.labels), list(self.labels.ids)
        return mc.to_dict()

    def _setup_data(self, data: DataInfo) -> None:
        cfg, info = self.cfg, self.info
        # Workers from this rank's own share of the node's CPUs (see tl.cpu_share).
        share = tl.cpu_share(info)
        self.num_workers = max(0, min(cfg.num_workers, share))
        if self.num_workers < cfg.num_workers:
            logger.info("--num_workers %d capped to %d: the CPUs this process may use", cfg.num_workers,
                        self.num_workers)
        sampler_cls = {"none": dg.TrainSampler, "balanced": dg.BalancedTrainSampler,
                       "alternate": dg.AlternateTrainSampler}[cfg.balanced]
        per_step = self.batch_per_rank * (2 if cfg.augmentation == "mixup" else 1)
        self.train_sampler = sampler_cls(
            indexes_hdf5_path=cfg.indexes_path(cfg.data_type), batch_size=per_step,
            black_list_csv=cfg.black_list_csv, random_seed=cfg.seed, rank=info.rank, world_size=info.world_size)
        self.train_loader = dg.train_loader(cfg.sample_rate, self.train_sampler, self.num_workers, info.device,
                                            seed=cfg.seed + info.rank)
        # Evaluation loaders: their workers start at each evaluation and end with it (not persistent), so
        # between evaluations they hold no shared memory; at most EVAL_WORKERS of them (evaluation is a
        # small part of a run and two persistent loaders x --num_workers held gigabytes of /dev/shm per rank).
        # On CUDA their batches are page-locked like training's (the evaluation copies each one while the one
        # before it computes): PyTorch's pinned-memory cache then keeps the blocks of the batches in flight,
        # about (EVAL_WORKERS x 2 + 2) x 128 clips x 640 kB: ~0.8 GB of host memory (1.3 GB after the
        # allocator's rounding to powers of two).
        self.eval_workers = min(self.num_workers, EVAL_WORKERS)
        self.eval_loaders = {}
        self.eval_batch = eval_batch = eval_batch_size(cfg.eval_batch_size, self.batch_per_rank, cfg.batch_size,
                                                       info.device)
        ranks = tl.ranks_on_this_node(info)   # a collective: every rank asks, once
        # Evaluation sets kept in host memory after their first pass (--eval_cache): on a fast GPU re-reading
        # ~39k clips through the loader takes most of an evaluation's time. The node's processes share half
        # of its free memory.
        keep = use_cache(cfg.eval_cache, info.device)
        for key, name in (("bal", "balanced_train"), ("test", "eval")):
            sampler = dg.EvaluateSampler(indexes_hdf5_path=cfg.indexes_path(name), batch_size=eval_batch,
                                         rank=info.rank, world_size=info.world_size)  # shard, gathered by Evaluator
            # int16 batches on CUDA as in training (the Evaluator converts them on the device)
            loader = dg.train_loader(cfg.sample_rate, sampler, self.eval_workers, info.device, seed=cfg.seed)
            self.eval_loaders[key] = ResidentBatches(loader, sampler.audios_num, name=f"Evaluation set {name}",
                                                     share=0.5 / ranks) if keep else loader
        self._check_shared_memory(data, per_step, ranks)

    def _check_shared_memory(self, data: DataInfo, train_clips: int, ranks: int) -> None:
        """Estimate this rank's /dev/shm need (training loader, plus one evaluation loader at a time), log it,
        and warn with the container flag to pass when the node's ranks together need more than is free."""
        if self.num_workers == 0:
            return
        raw = self.info.device.type == "cuda"
        classes = self.labels.classes_num
        need = dg.shm_bytes(train_clips, data.clip_samples, classes, self.num_workers, raw) + \
            dg.shm_bytes(self.eval_batch, data.eval_clip_samples, classes, self.eval_workers, raw)
        logger.info("Shared memory: about %.2f GiB of /dev/shm per process (%d training + %d evaluation loader "
                    "workers), %d process(es) on this node", need / 2**30, self.num_workers, self.eval_workers, ranks)
        warning = tl.check_shared_memory(need, ranks, dg.shm_available())
        if warning and self.info.local_rank == 0:  # once per node, for the node
            logger.warning(warning)

    def _resume_path(self, n: int) -> str:
        path = self.cfg.checkpoint_path(n)
        if not os.path.isfile(path):
            have = saved_iterations(self.cfg.checkpoints_dir)
            raise CheckpointError(f"no checkpoint {path} to resume from; saved iterations: "
                                  f"{', '.join(map(str, have)) or 'none'}")
        return path

    # ------------------------------------------------------------------------ training.core.Task
    def evaluate(self, iteration: int, trained: Meter) -> None:
        t0 = time.perf_counter()
        sets = {"bal": "balanced_train", "test": "eval"}   # named in warnings (uncached loaders carry no name)
        results = {key: self.evaluator.evaluate(loader, name=f"evaluation set {sets[key]}")
                   for key, loader in self.eval_loaders.items()}
        if self.info.is_main:   # rank 0 alone holds the metrics
            for key in ("bal", "test"):
                r = results[key]
                rate = r["clips"] / max(r["seconds"], 1e-9)   # two digits at least: a slow CPU run read '0 clips/s'
                logger.info("Validate %s mAP: %.3f (mAUC %.3f, d-prime %.3f; %d/%d classes with positives; %d clips in "
                            "%.2f s, %s clips/s, metrics %.2f s)", key, r["mAP"], r["mAUC"], r["d_prime"],
                            r["ap_classes"], r["classes_num"], r["clips"], r["seconds"],
                            f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}", r["metrics_seconds"])
                self.statistics.append(iteration, r, key)
            self.statistics.dump()
            took = time.perf_counter() - t0
            share = took / (took + trained.elapsed()) if trained.losses else 1.0
            logger.info("iteration: %d, train time: %.3f s, validate time: %.3f s (evaluation %.0f%% of the wall time "
                        "since the last one)", iteration, trained.elapsed(), took, 100 * share)
            logger.info("------------------------------------")
            self._last_stats = {k: {m: results[k][m] for m in ("mAP", "mAUC", "d_prime", "ap_classes", "auc_classes")}
                                for k in results}

    def checkpoint_extra(self) -> Dict[str, Any]:
        return {}

    def write_checkpoint(self, ckpt: Dict[str, Any], iteration: int) -> str:
        path = self.cfg.checkpoint_path(iteration)
        checkpoint.save_checkpoint(path, ckpt)
        logger.info("Model saved to %s", path)
        return path

    def load_extra(self, ckpt: Dict[str, Any], iteration: int) -> None:
        if self.info.is_main:  # rank 0 keeps the statistics, on its own disk
            self.statistics.load_state_dict(iteration)

    def resume_hint(self, saved_iteration: Optional[int]) -> str:
        if saved_iteration:
            return f"continue with the same command and --resume_iteration {saved_iteration}"
        return (f"nothing trained was saved (a checkpoint every --save_every {self.cfg.save_every} iterations): "
                "start again with the same command (add --overwrite if it refuses the run folder)")

    def close_loaders(self) -> None:
        for loader in self.eval_loaders.values():
            if isinstance(loader, ResidentBatches):
                loader.release()   # page-locked rows go back to the system (a Python caller's process lives on)
        self.train_loader, self.eval_loaders = None, {}

    # ------------------------------------------------------------------------------------- run
    def run(self) -> Dict[str, Any]:
        """Train to ``early_stop``; returns {'iteration', 'checkpoint_path', 'statistics', 'statistics_path'}
        (rank 0 view)."""
        if self.info.is_main and self._replace:
            for path in self._replace:
                os.remove(path)
            logger.info("--overwrite: removed %d file(s) of the earlier run (%s)", len(self._replace),
                        ", ".join(os.path.basename(p) for p in self._replace))
        it = self.trainer.run()
        self.trainer.finish()
        return {"iteration": it, "checkpoint_path": self.trainer.last_saved or self.cfg.checkpoint_path(it),
                "statistics": self._last_stats, "statistics_path": self.cfg.statistics_path}
