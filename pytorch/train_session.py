"""Everything a training run holds (model, optimizer, loaders, state) and the work around the loop.

:class:`Session` checks the inputs (one clear line before any work), sets up the run (paths,
logging, model, DDP, data, resume) and provides the steps ``pytorch/main.py`` calls: next batch,
evaluation, checkpoint, progress line, finish.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import h5py
import numpy as np
import torch

from panns import amp
from panns import checkpoint
from panns import config
from panns import data_generator as dg
from panns import devices
from panns import models
from panns import train_lib as tl
from panns.create_indexes import read_index
from panns.devices import DistInfo
from panns.errors import CheckpointError, PannsError
from panns.evaluate import Evaluator, StatisticsContainer
from panns.frontend import FRONTEND_KEYS
from panns.losses import get_loss_func
from panns.pytorch_utils import count_parameters
from panns.train_lib import TrainConfig
from panns.utilities import Mixup, create_folder, create_logging

logger = logging.getLogger("main")

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


def _clip_samples(indexes_path: str, labels: config.ClassLabels, sample_rate: int, fmax: int) -> int:
    """Clip length (samples at ``sample_rate``) of the clips an index points to; they must all agree."""
    lengths: Dict[str, int] = {}
    rates: Dict[int, str] = {}
    for path in _waveform_files(indexes_path):
        info = dg.waveform_info(path, f" (named in {indexes_path}; pack it with utils/dataset.py "
                                      "pack_waveforms_to_hdf5)")
        file_sr, file_len, ids = info.sample_rate, info.clip_samples, info.class_ids
        if ids and ids != list(labels.ids):
            raise PannsError(f"{path} was packed with another label CSV (class ids differ from "
                             f"{labels.ids[:2]}...); pass the matching --class_labels_csv")
        rates.setdefault(file_sr, path)
        lengths[path] = int(round(file_len * sample_rate / file_sr))
    for file_sr, path in rates.items():
        check_resampling(file_sr, sample_rate, path, fmax)
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
        with h5py.File(path, "r") as hf:
            width = hf["target"].shape[1] if "target" in hf else None
        if width != labels.classes_num:
            raise PannsError(f"{path} has targets for {width} classes but the label CSV "
                             f"({cfg.class_labels_csv or config.DEFAULT_LABELS_CSV}) lists {labels.classes_num}; "
                             "pass the label CSV the data was packed with (--class_labels_csv)")
    if cfg.black_list_csv and not os.path.isfile(cfg.black_list_csv):
        raise PannsError(f"black list CSV not found: {cfg.black_list_csv}")
    lengths = {n: _clip_samples(cfg.indexes_path(n), labels, cfg.sample_rate, cfg.fmax) for n in set(names)}
    return DataInfo(labels, lengths[cfg.data_type], min(lengths["balanced_train"], lengths["eval"]))


def check_resampling(file_sr: int, sample_rate: int, path: str, fmax: int) -> None:
    """The loader resamples packed clips to the model rate (soxr, both ways); warn where it loses nothing
    but gains nothing either (upsampling leaves the band above the file's Nyquist empty)."""
    if file_sr == sample_rate:
        return
    logger.info("%s holds %d Hz audio; the loader resamples it to %d Hz", path, file_sr, sample_rate)
    if sample_rate > file_sr and fmax > file_sr / 2:
        logger.warning("training at %d Hz on %d Hz data: mel bands above %d Hz (fmax=%d) will be empty",
                       sample_rate, file_sr, file_sr // 2, fmax)


def build_model(cfg: TrainConfig, classes_num: int, clip_samples: int, eval_clip_samples: int) -> torch.nn.Module:
    """The model for ``cfg`` with a clear error for front ends or clip lengths it cannot take."""
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


# -------------------------------------------------------------------------------------------- meter
@dataclass
class Meter:
    """Sums over the current log window: losses (tensors, synchronised only when logged), data wait."""
    losses: List[torch.Tensor] = field(default_factory=list)
    wait: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def update(self, scalars: Dict[str, torch.Tensor], wait: float) -> None:
        self.losses.append(scalars["loss"])
        self.wait += wait

    def reset(self) -> None:
        self.losses, self.wait, self.start = [], 0.0, time.perf_counter()


# ------------------------------------------------------------------------------------------ session
class Session:
    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        data = check_inputs(cfg)
        self.labels = data.labels
        if cfg.per_rank_batch_size > 0:
            self.batch_per_rank = cfg.per_rank_batch_size
        elif info.distributed and cfg.batch_size % info.world_size:
            raise PannsError(f"--batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes; "
                             "pass a divisible global batch or --per_rank_batch_size")
        else:
            self.batch_per_rank = cfg.batch_size // info.world_size
        self.global_batch = self.batch_per_rank * info.world_size
        if cfg.sync_bn and info.distributed and info.device.type != "cuda":
            raise PannsError("--sync_bn needs CUDA (SyncBatchNorm has no CPU/gloo implementation)")
        if cfg.resume_iteration > 0:
            self._resume_path(cfg.resume_iteration)  # fail before any work when it is missing

        self.precision = amp.resolve_precision(cfg.precision, info.device, training=True)
        tl.seed_everything(cfg.seed)  # same initial weights on every rank
        raw = build_model(cfg, data.labels.classes_num, data.clip_samples, data.eval_clip_samples)
        self.loss_func = get_loss_func(cfg.loss_type)
        self._setup_logging()
        logger.info("Config: %s", cfg.to_dict())
        logger.info("Using %s%s; precision %s; batch %d per process, %d per step.", devices.describe(info.device),
                    f", {info.world_size} processes" if info.distributed else "", self.precision,
                    self.batch_per_rank, self.global_batch)
        if cfg.cuda and info.device.type != "cuda":
            logger.warning("--cuda given but no GPU is available; training on the CPU")
        self.raw_model = raw.to(info.device)
        n_params = count_parameters(raw)
        logger.info("Parameters num: %d", n_params)
        self.model_config = self._model_config()
        if info.is_main:
            tl.write_run_record(cfg, self.model_config, n_params, info, self.precision)

        # Optimizer of the official recipe (no schedule, no weight decay).
        self.optimizer = torch.optim.Adam(raw.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-08,
                                          weight_decay=0.0, amsgrad=True)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=self.precision == "fp16")
        self.model = self._wrap(raw, data.clip_samples)
        self.mixup = Mixup(mixup_alpha=cfg.mixup_alpha, random_seed=cfg.seed + info.rank) \
            if cfg.augmentation == "mixup" else None
        self._setup_data()
        self.evaluator = Evaluator(raw, precision=self.precision)
        self.statistics = StatisticsContainer(cfg.statistics_path)
        self.iteration = 0
        # Training randomness (SpecAugment, dropout) differs per rank; weights are already equal.
        tl.seed_everything(cfg.seed + info.rank)
        if cfg.resume_iteration > 0:
            self._resume(cfg.resume_iteration)
        self.meter = Meter()
        self.progress = tl.Progress(total=cfg.early_stop, start=self.iteration, enabled=info.is_main)
        self._train_start = time.perf_counter()
        self._last_saved: Optional[str] = None
        self._last_stats: Dict[str, Any] = {}

    def _wrap(self, raw: torch.nn.Module, clip_samples: int) -> torch.nn.Module:
        """DDP (with SyncBatchNorm if asked), then torch.compile of the DDP module - the order PyTorch
        documents, so that DDP's graph-aware bucketing sees the compiled graphs."""
        cfg, info = self.cfg, self.info
        model = raw
        if info.distributed:
            # DDP's unused-parameter search costs a graph walk every step: only ask for it where the
            # model really has parameters outside the training loss's graph (e.g. Wavegram_Cnn14's bn0).
            unused = tl.unused_parameters(raw, clip_samples)
            if unused:
                logger.info("%d parameter tensors get no gradient (%s...): DDP find_unused_parameters on",
                            len(unused), ", ".join(unused[:3]))
            if cfg.sync_bn:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                find_unused_parameters=bool(unused))
        if cfg.compile:
            model = torch.compile(model)
        return model

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

    def _setup_data(self) -> None:
        cfg, info = self.cfg, self.info
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        self.num_workers = max(0, min(cfg.num_workers, dg.usable_cpus() // max(local_world, 1)))
        sampler_cls = {"none": dg.TrainSampler, "balanced": dg.BalancedTrainSampler,
                       "alternate": dg.AlternateTrainSampler}[cfg.balanced]
        per_step = self.batch_per_rank * (2 if self.mixup is not None else 1)
        self.train_sampler = sampler_cls(
            indexes_hdf5_path=cfg.indexes_path(cfg.data_type), batch_size=per_step,
            black_list_csv=cfg.black_list_csv, random_seed=cfg.seed, rank=info.rank, world_size=info.world_size)
        # Batches the loop has taken from the loader (the sampler itself runs ahead by the prefetch).
        self.batches_consumed = 0
        self.train_loader = dg.train_loader(cfg.sample_rate, self.train_sampler, self.num_workers, info.device,
                                            seed=cfg.seed + info.rank)
        self.eval_loaders = {}
        for key, name in (("bal", "balanced_train"), ("test", "eval")):
            sampler = dg.EvaluateSampler(indexes_hdf5_path=cfg.indexes_path(name), batch_size=cfg.batch_size,
                                         rank=info.rank, world_size=info.world_size)  # shard, gathered by Evaluator
            # float32 batches: evaluate.py feeds them to the model as they come
            self.eval_loaders[key] = dg.train_loader(cfg.sample_rate, sampler, self.num_workers, info.device,
                                                     seed=cfg.seed, persistent_workers=self.num_workers > 0, raw=False)
        self._train_iter = None

    # ----------------------------------------------------------------------------------- resume
    def _resume_path(self, n: int) -> str:
        path = self.cfg.checkpoint_path(n)
        if not os.path.isfile(path):
            have = sorted(int(f.split("_")[0]) for f in os.listdir(self.cfg.checkpoints_dir)
                          if f.endswith("_iterations.pth") and f.split("_")[0].isdigit()) \
                if os.path.isdir(self.cfg.checkpoints_dir) else []
            raise CheckpointError(f"no checkpoint {path} to resume from; saved iterations: "
                                  f"{', '.join(map(str, have)) or 'none'}")
        return path

    def _resume(self, n: int) -> None:
        path = self._resume_path(n)
        logger.info("Loading checkpoint %s", path)
        ckpt = checkpoint.load_checkpoint(path, map_location="cpu")  # RNG states must stay CPU tensors
        saved = ckpt.get("config") or {}
        for key in ("model_type", "classes_num") + FRONTEND_KEYS:
            if key in saved and saved[key] != self.model_config[key]:
                raise CheckpointError(f"{path} was trained with {key}={saved[key]}, this run has "
                                      f"{key}={self.model_config[key]}")
        try:
            self.raw_model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: model weights do not fit {self.cfg.model_type}: "
                                  f"{str(e).splitlines()[0]}") from None
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        else:
            logger.warning("%s has no optimizer state (official checkpoint?): Adam moments restart", path)
        if "scaler" in ckpt and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        per_rank = ckpt.get("rank_states")
        if per_rank is not None and len(per_rank) == self.info.world_size:
            mine = per_rank[self.info.rank]
        else:
            if per_rank is not None:
                logger.warning("%s was saved by %d processes, this run has %d: RNG and Mixup states "
                               "restart (resume not exact)", path, len(per_rank), self.info.world_size)
            mine = {}
        sampler_state = ckpt.get("sampler")
        if isinstance(sampler_state, dict) and "batches" not in sampler_state:
            logger.warning("%s holds an official sampler state (a RandomState snapshot) that cannot be restored "
                           "exactly; the sampler starts afresh", path)
        elif sampler_state is not None:
            try:
                self.train_sampler.load_state_dict(sampler_state)
            except (PannsError, KeyError, ValueError, TypeError) as e:
                raise CheckpointError(f"{path}: its sampler state does not fit this run: {e}") from None
            self.batches_consumed = self.train_sampler.state_dict()["batches"]
        if self.mixup is not None and mine.get("mixup") is not None:
            self.mixup.load_state_dict(mine["mixup"])
        if mine.get("rng") is not None:
            tl.set_rng_state(mine["rng"], self.info.device)
        self.statistics.load_state_dict(n)
        self.iteration = int(ckpt.get("iteration", n))

    # ------------------------------------------------------------------------------------ steps
    def next_batch(self) -> Tuple[Dict[str, Any], float]:
        """(batch on the device, seconds spent waiting for it)."""
        t0 = time.perf_counter()
        if self._train_iter is None:
            self._train_iter = iter(self.train_loader)
        batch = next(self._train_iter)
        self.batches_consumed += 1
        batch = dg.to_device(batch, self.info.device)
        return batch, time.perf_counter() - t0

    def mixup_lambda(self, batch: Dict[str, Any]) -> Optional[torch.Tensor]:
        if self.mixup is None:
            return None
        lam = self.mixup.get_lambda(batch_size=len(batch["waveform"]))
        return torch.as_tensor(lam, dtype=torch.float32, device=self.info.device)

    def evaluate(self, iteration: int) -> None:
        train_time = time.perf_counter() - self._train_start
        t0 = time.perf_counter()
        tl.broadcast_buffers(self.info, self.raw_model)
        results = {}
        for key, loader in self.eval_loaders.items():
            results[key] = self.evaluator.evaluate(loader)
        if self.info.is_main:
            for key, name in (("bal", "bal"), ("test", "test")):
                r = results[key]
                logger.info("Validate %s mAP: %.3f (mAUC %.3f, d-prime %.3f; %d/%d classes with positives, %d clips)",
                            name, r["mAP"], r["mAUC"], r["d_prime"], r["ap_classes"], r["classes_num"], r["clips"])
                self.statistics.append(iteration, r, key)
            self.statistics.dump()
            logger.info("iteration: %d, train time: %.3f s, validate time: %.3f s", iteration, train_time,
                        time.perf_counter() - t0)
            logger.info("------------------------------------")
        self._last_stats = {k: {m: results[k][m] for m in ("mAP", "mAUC", "d_prime", "ap_classes", "auc_classes")}
                            for k in results}
        self._train_start = time.perf_counter()
        self.meter.reset()

    def save(self, iteration: int) -> None:
        """Checkpoint (rank 0 writes; every rank contributes its RNG/Mixup state)."""
        mine = {"rng": tl.rng_state(self.info.device),
                "mixup": self.mixup.state_dict() if self.mixup is not None else None}
        states = tl.all_gather_object(self.info, mine)
        if self.info.is_main:
            # Every rank consumes the same number of batches, so rank 0's sampler state (batches consumed
            # x world size = global position) restores every rank's stream; stored once.
            sampler = self.train_sampler.state_dict(batches_consumed=self.batches_consumed)
            ckpt = {"iteration": iteration, "model": self.raw_model.state_dict(), "sampler": sampler,
                    "optimizer": self.optimizer.state_dict(),
                    "config": {**self.cfg.to_dict(), **self.model_config, "precision": self.precision,
                               "world_size": self.info.world_size},
                    "rank_states": states}
            if self.scaler.is_enabled():
                ckpt["scaler"] = self.scaler.state_dict()
            path = self.cfg.checkpoint_path(iteration)
            checkpoint.save_checkpoint(path, ckpt)
            logger.info("Model saved to %s", path)
            self._last_saved = path
        tl.barrier(self.info)

    def log_progress(self, iteration: int) -> None:
        m = self.meter
        loss = float(torch.stack(m.losses).float().mean()) if m.losses else float("nan")
        loss = tl.mean_over_ranks(self.info, loss)
        elapsed = max(time.perf_counter() - m.start, 1e-9)
        steps = len(m.losses)
        memory = ""
        if self.info.device.type == "cuda":
            memory = f", peak memory {torch.cuda.max_memory_allocated(self.info.device) / 2**30:.1f} GiB"
        logger.info("iteration: %d, loss: %.4f, %.2f it/s, %.1f examples/s, data wait %.0f%%%s", iteration, loss,
                    steps / elapsed, steps * self.global_batch / elapsed, 100.0 * m.wait / elapsed, memory)
        m.reset()
        self.progress.note(iteration)

    def finish(self, iteration: int) -> Dict[str, Any]:
        self.progress.close()
        tl.broadcast_buffers(self.info, self.raw_model)
        if self.info.distributed:  # DDP sanity check: every rank must hold the same weights
            digests = tl.all_gather_object(self.info, tl.state_digest(self.raw_model))
            if len(set(digests)) == 1:
                logger.info("Final weights identical on all %d processes (digest %s)", self.info.world_size, digests[0])
            else:
                logger.warning("Final weights differ across processes: %s", digests)
        logger.info("Finished at iteration %d", iteration)
        return {"iteration": iteration, "checkpoint_path": self._last_saved or self.cfg.checkpoint_path(iteration),
                "statistics": self._last_stats, "statistics_path": self.cfg.statistics_path}
