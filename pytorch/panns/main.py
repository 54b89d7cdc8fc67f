"""Train an AudioSet tagging model (official ``pytorch/main.py train``), resumable and DDP-ready; evaluate a
checkpoint on an index file (``evaluate``, an addition).

    python3 pytorch/main.py train --workspace WS --model_type Cnn14 [official options] [--cuda]
    torchrun --nproc_per_node=N pytorch/main.py train ...       # DistributedDataParallel
    python3 pytorch/main.py evaluate --workspace WS --checkpoint_path Cnn14_mAP=0.431.pth [--cuda]

Reads ``WS/hdf5s/indexes/{<data_type>,balanced_train,eval}.h5`` and writes, under the official layout
``WS/{checkpoints,statistics,logs}/main/<features>/data_type=../<Model>/loss_type=../balanced=../
augmentation=../batch_size=..``: ``<iteration>_iterations.pth`` (self-describing: config, model,
optimizer, sampler, RNG states), ``statistics.pkl``/``.json`` and the logs with ``config.json``.

Differences from the official script (on purpose): ``--early_stop N`` performs N steps and saves the
final weights; resume is exact (optimizer, RNG, Mixup and the sampler at the batches actually
consumed); the evaluation also runs at the final iteration; bad inputs fail with one line before any
work; one log line every ``--log_every`` iterations instead of ``print(loss)`` every step.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import logging
import math
import os
import sys
from typing import Any, Dict, Optional

import numpy as np

from panns import argtypes, devices
from panns import pretrained
from panns import validate
from panns.errors import PannsError, run_cli
from panns.frontend import add_frontend_args, add_model_args, frontend_overrides
from panns.training import config as tl
from panns.training import layout
from panns.training.config import TrainConfig
from panns.training.audioset import AudioSetTask, evaluate_checkpoint
from panns.utilities import atomic_write_text, check_output_path


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Run training as configured; returns {'iteration', 'checkpoint_path', 'statistics'} (rank 0 view)."""
    cfg.validate()
    info = devices.init_distributed(cfg.cuda, timeout=datetime.timedelta(minutes=cfg.dist_timeout))
    try:
        # The run's size is part of its batch semantic and its run folder (TrainConfig.batch_folder).
        cfg = dataclasses.replace(cfg, world_size=info.world_size)
        cfg.validate()
        devices.configure_backends(info.device, deterministic=cfg.deterministic)
        return AudioSetTask(cfg, info).run()
    finally:
        devices.teardown(info)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Module docstring as written, and every option's default in --help (except None: those flags' help
    says in words what leaving them out does, e.g. --sync_bn's automatic choice)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(workspace="")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("train", help="train a model on the workspace's AudioSet HDF5 files",
                       description="Train a model on the workspace's AudioSet HDF5 files.",
                       epilog="Ctrl-C or SIGTERM (a cluster's pre-emption or time limit) stops the run after the\n"
                              "current step with a checkpoint there (exit 130 / 143); the log names the\n"
                              "--resume_iteration to continue with. A second Ctrl-C more than 2 s later stops at\n"
                              "once, without one.",
                       formatter_class=_HelpFormatter)
    p.add_argument("--workspace", type=str, required=True, help="workspace holding hdf5s/indexes/*.h5; outputs go here")
    p.add_argument("--data_type", type=str, default=d.data_type, choices=tl.DATA_TYPES,
                   help="training index: hdf5s/indexes/<data_type>.h5")
    add_frontend_args(p, d.front_end)
    p.add_argument("--model_type", type=str, required=True, help="model class name, e.g. Cnn14, Cnn14_16k, Cnn6")
    p.add_argument("--loss_type", type=str, default=d.loss_type, choices=["clip_bce"], help="training loss")
    p.add_argument("--balanced", type=str, default=d.balanced, choices=tl.BALANCED,
                   help="sampling: none (random), balanced (class-balanced), alternate (both in turn)")
    p.add_argument("--augmentation", type=str, default=d.augmentation, choices=tl.AUGMENTATIONS,
                   help="mixup: Beta(1,1) mixing of adjacent pairs in the log-mel domain")
    p.add_argument("--batch_size", type=int, default=d.batch_size,
                   help="examples per optimizer step (after mixup; the loader reads twice as many clips); "
                        "with DDP the global batch, split over the processes (see --per_rank_batch_size); "
                        "the run folder names it: batch_size=32, or batch_size=32,world_size=8 for 8 processes")
    p.add_argument("--learning_rate", type=argtypes.positive_float, default=d.learning_rate,
                   help="Adam (amsgrad) learning rate; a resumed run uses the one given (one log line when it "
                        "differs from the checkpoint's)")
    p.add_argument("--resume_iteration", type=int, default=d.resume_iteration,
                   help="resume from <checkpoints dir>/<N>_iterations.pth (0: start fresh); checkpoints saved after "
                        "N are refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", default=False,
                   help="replace the run already in the run folder: its checkpoints and statistics.pkl/.json are "
                        "removed when the new run starts (without it an earlier run is an error); with "
                        "--resume_iteration N, the checkpoints after N")
    p.add_argument("--early_stop", type=int, default=d.early_stop, help="stop after this many optimizer steps")
    p.add_argument("--cuda", action="store_true", default=False, help="train on the GPU when one is available")
    p.add_argument("--eval_every", type=int, default=d.eval_every, help="evaluate every N iterations")
    p.add_argument("--save_every", type=int, default=d.save_every, help="save a checkpoint every N iterations")
    p.add_argument("--num_workers", type=argtypes.non_negative_int, default=d.num_workers,
                   help="data loader worker processes per training process (clamped to the CPUs it may use)")
    p.add_argument("--seed", type=tl.seed_arg, default=d.seed,
                   help="seed of the sampler, Mixup and torch/numpy RNGs (1234: Mixup draws the official lambdas; "
                        "the sampler's order is its own, resumable one)")
    p.add_argument("--precision", type=str, default=d.precision, choices=tl.PRECISIONS,
                   help="CNN body precision under autocast (front end and loss stay fp32); also for evaluation. "
                        "fp32 is IEEE fp32 everywhere (TF32 off for the whole run, the official numerics). "
                        "auto: bf16 on GPUs with native bf16 (sm80+), else fp32")
    p.add_argument("--compile", type=str, nargs="?", const="on", default=d.compile, choices=tl.COMPILE_MODES,
                   help="torch.compile the training step (one graph, no breaks). auto: on for CUDA where Triton is "
                        "installed (a failure to compile falls back to eager with one log line), off elsewhere; "
                        "--compile alone means on")
    p.add_argument("--eval_batch_size", type=int, default=d.eval_batch_size,
                   help="clips per evaluation batch (0: 4x the per-process batch on CUDA, --batch_size elsewhere); "
                        "the scores do not depend on it")
    p.add_argument("--eval_cache", type=str, default=d.eval_cache, choices=tl.EVAL_CACHE_MODES,
                   help="keep the evaluation sets' rows in host memory after the first evaluation reads them, so "
                        "later evaluations start no loader (same batches, same scores). auto: on for CUDA, where "
                        "the loader bounds an evaluation (AudioSet: ~25 GB of int16 rows); a set is kept only if it "
                        "fits in half the free memory (cgroup limits count) shared by the node's processes, else "
                        "it is read from the files every time, with one log line. on: also on the CPU; off: never "
                        "(e.g. to leave a small machine's memory to other work)")
    p.add_argument("--black_list_csv", type=str, default=None,
                   help="CSV of clips to skip in training (e.g. WS/black_list/dcase2017task4.csv)")
    p.add_argument("--class_labels_csv", type=str, default=None,
                   help="label CSV (index,mid,display_name); default metadata/class_labels_indices.csv")
    p.add_argument("--log_every", type=argtypes.non_negative_int, default=d.log_every,
                   help="log loss, speed and ETA every N iterations (0: no such lines)")
    p.add_argument("--grad_clip", type=argtypes.non_negative_float, default=d.grad_clip,
                   help="clip the gradient norm (0: off, official)")
    p.add_argument("--deterministic", action="store_true", default=False,
                   help="deterministic kernels (cuDNN/cuBLAS): resume is bit-exact on CUDA too, at some speed")
    p.add_argument("--per_rank_batch_size", type=int, default=d.per_rank_batch_size,
                   help="examples per process per step; the global batch becomes this x processes (0: "
                        "--batch_size split over the processes). The learning rate is not changed: scale "
                        "--learning_rate yourself if you grow the global batch")
    p.add_argument("--sync_bn", action="store_true", default=None,
                   help="DDP on CUDA: BatchNorm statistics over all processes (SyncBatchNorm). Default: on when "
                        "several CUDA processes get fewer than 16 examples each (--no_sync_bn to refuse)")
    # SUPPRESS: --sync_bn's None stays the default (store_false's own default True showed as '(default: True)')
    p.add_argument("--no_sync_bn", action="store_false", dest="sync_bn", default=argparse.SUPPRESS,
                   help="plain per-process BatchNorm even for small per-process batches")
    p.add_argument("--grad_comm", type=str, default=d.grad_comm, choices=tl.GRAD_COMMS,
                   help="DDP gradient all-reduce: fp32 (exact), or bf16/fp16 compression (half the bytes between "
                        "nodes; rounds the averaged gradient; opt-in, not measured here; bf16 needs CUDA)")
    p.add_argument("--dist_timeout", type=argtypes.positive_float, default=d.dist_timeout,
                   help="minutes a process waits for the others in a collective before the run fails "
                        "(a stalled rank stops the run instead of idling every GPU)")
    add_evaluate_parser(sub)
    return parser


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="mAP of a checkpoint on an index file (e.g. a published checkpoint on your "
                       "copy of the evaluation set)",
                       description="Per-class AP/AUC, mAP, mAUC and d-prime of a checkpoint over every clip of an "
                                   "index file, computed as a training run's evaluations. AudioSet copies lack "
                                   "different clips, so a published checkpoint's mAP on yours is the number to hold "
                                   "your runs against.",
                       epilog="example: python3 pytorch/main.py evaluate --workspace WS --checkpoint_path "
                              "Cnn14_mAP=0.431.pth --cuda --output cnn14_eval.csv",
                       formatter_class=_HelpFormatter)
    p.add_argument("--workspace", type=str, default=None, help="workspace holding hdf5s/indexes/<data_type>.h5")
    p.add_argument("--data_type", type=str, default="eval", choices=("eval", "balanced_train", "full_train"),
                   help="which index of the workspace")
    p.add_argument("--indexes_hdf5_path", type=str, default=None,
                   help="an index file to evaluate on, instead of --workspace and --data_type")
    add_model_args(p)
    p.add_argument("--class_labels_csv", type=str, default=None,
                   help="label CSV when the checkpoint carries no labels (default metadata/class_labels_indices.csv)")
    p.add_argument("--cuda", action="store_true", default=False, help="evaluate on the GPU when one is available")
    p.add_argument("--precision", type=str, default="fp32", choices=("fp32", "bf16", "fp16", "auto"),
                   help="CNN body precision (fp32: the official numerics, TF32 off on GPUs; auto: bf16 where the "
                        "hardware has it natively)")
    p.add_argument("--batch_size", type=argtypes.int_in(1), default=32, help="clips per forward pass")
    p.add_argument("--num_workers", type=argtypes.non_negative_int, default=4, help="data loader worker processes")
    p.add_argument("--output", type=str, default=None,
                   help="also write the per-class results: .csv (index, mid, display_name, positives, AP, AUC) or "
                        ".json (the summary and every class)")
    p.add_argument("--show", type=argtypes.non_negative_int, default=5,
                   help="classes printed with the best and the worst AP")


def _per_class(r: Dict[str, Any]):
    def num(x: float) -> Optional[float]:
        return None if not math.isfinite(float(x)) else round(float(x), 6)

    return [{"index": k, "mid": r["ids"][k], "display_name": r["labels"][k], "positives": int(r["positives"][k]),
             "AP": num(r["average_precision"][k]), "AUC": num(r["auc"][k])} for k in range(len(r["labels"]))]


def write_evaluation(r: Dict[str, Any], output: str) -> None:
    """The per-class results of :func:`training.audioset.evaluate_checkpoint` as .csv or .json (atomically)."""
    rows = _per_class(r)
    if output.lower().endswith(".json"):
        keys = ("model_type", "checkpoint_path", "indexes_hdf5_path", "precision", "device", "clips", "mAP", "mAUC",
                "d_prime", "ap_classes", "auc_classes", "classes_num", "index_mismatched_clips")
        tl.write_json(output, {**{k: r[k] for k in keys}, "classes": rows})
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    atomic_write_text(output, buf.getvalue())


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    if (args.workspace is None) == (args.indexes_hdf5_path is None):
        raise PannsError("give --workspace (with --data_type) or --indexes_hdf5_path, not both or neither")
    index = args.indexes_hdf5_path or os.path.join(args.workspace, "hdf5s", "indexes", f"{args.data_type}.h5")
    if args.output:
        if not args.output.lower().endswith((".csv", ".json")):
            raise PannsError(f"--output {args.output}: write .csv or .json")
        check_output_path(args.output, what="--output", inputs=[index, args.checkpoint_path, args.class_labels_csv])
        kind = layout.run_file_kind(args.output)
        if kind:
            raise PannsError(f"--output {args.output} is a training run's {kind}; give another path")
    path = pretrained.resolve_published(args.checkpoint_path) if args.checkpoint_path else None
    r = evaluate_checkpoint(index, path, validate.model_type_for(path, args.model_type),
                            frontend_overrides(args) or None, args.class_labels_csv, cuda=args.cuda,
                            precision=args.precision, batch_size=args.batch_size, num_workers=args.num_workers)
    print(f"{r['model_type']} ({r['checkpoint_path']}) on {index}: {r['clips']:,} clips, {r['precision']} on "
          f"{r['device']}, {r['seconds']:.1f} s")
    print(f"mAP {r['mAP']:.4f} over the {r['ap_classes']} of {r['classes_num']} classes with positives; mAUC "
          f"{r['mAUC']:.4f}; d-prime {r['d_prime']:.3f}")
    ap = np.asarray(r["average_precision"])
    ranked = [k for k in np.argsort(-np.nan_to_num(ap, nan=-1.0), kind="stable") if np.isfinite(ap[k])]
    show = min(args.show, len(ranked) // 2)
    for title, part in (("best", ranked[:show]), ("worst", ranked[::-1][:show])):
        if part:
            print(f"{title} AP: " + "; ".join(f"{r['labels'][k]} {ap[k]:.3f} ({positives(r['positives'][k])})"
                                            for k in part))
    if args.output:
        write_evaluation(r, args.output)
        print(f"Per-class results written to {args.output}")
    return r


def positives(n: Any) -> str:
    """'1 positive' / '12 positives': the clips of a class in the evaluated set."""
    return f"{int(n)} positive{'' if int(n) == 1 else 's'}"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f for f in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def main(argv: Optional[list] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.mode == "train":
        train(config_from_args(args))
    else:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
        evaluate(args)


if __name__ == "__main__":
    run_cli(main)
    devices.exit_process(0)
