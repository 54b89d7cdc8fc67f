r"""Fine-tune a pretrained PANN on your own labelled sounds (the official ``finetune_template.py``, made to train).

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

Outputs under ``<workspace>/finetune/<run name>/``: ``best.pth`` / ``latest.pth`` (with ``--freeze_base``,
both refer to the base by path and digest instead of holding it: ``export`` writes a self-contained copy;
best.pth carries the labels and config: ``pytorch/inference.py audio_tagging --checkpoint_path best.pth
--audio_path x.wav`` prints the new classes with probabilities), ``report.txt`` (per-class report of the best checkpoint), ``metrics.jsonl`` (one line per
evaluation), ``run.json`` (resolved settings, versions, git commit), ``logs/``; ``linear_probe.pth`` for
``--linear_probe`` (a regular Transfer_<Base> checkpoint whose head is the fitted probe: tag with it like
``best.pth``). A run folder that already holds a run is refused unless ``--resume`` (continue it exactly from
``latest.pth``) or ``--overwrite`` is given. Decoded clips are cached in ``<workspace>/cache`` (see
finetune_data.py for the data layouts, the cache and the crop rules).

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
import os
from typing import Optional

from panns import argtypes
from panns import checkpoint as ckpt_lib
from panns import pretrained
from panns import finetune_data as fd
from panns.training import config as tl
from panns.training import finetune as finetune_task
from panns.errors import PannsError, run_cli
from panns.frontend import add_frontend_args
from panns.models import Transfer_Cnn14, make_transfer_model  # noqa: F401  (official names, re-exported)
from panns.runtime import AUTO_WINDOW_SECONDS


# Defaults of the options that only fine-tuning reads: they are None until main() fills them in, so that one
# given to --linear_probe (no training steps) is refused instead of ignored.
TRAINING_DEFAULTS = {"iterations": 1000, "eval_every": 100, "log_every": 10}
PROBE_C = 1.0   # --probe_c when not given (scikit-learn's C)


def run_name(text: str) -> str:
    """``--run_name``: a sub-folder of <workspace>/finetune (nested ones too), never a path out of it."""
    parts = text.replace("\\", "/").split("/")
    if not text.strip() or os.path.isabs(text) or ".." in parts:
        raise argparse.ArgumentTypeError(f"a folder name inside <workspace>/finetune, got {text!r} (no absolute "
                                         "path, no '..'; --workspace picks where runs go)")
    return text


def clip_seconds(text: str) -> float:
    """``--clip_seconds``: a number, within ``finetune.check_clip_seconds``' bound (a usage error if not)."""
    try:
        return finetune_task.check_clip_seconds(argtypes.positive_float(text), flag="")
    except PannsError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _at_or_under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (real paths: symbolic links followed; neither need exist)."""
    path, folder = (os.path.normcase(os.path.realpath(p)) for p in (path, folder))
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def refuse_outputs_in_dataset(args) -> None:
    """A ``--dataset_dir`` is scanned for class folders: refuse, in one line and before any work, a run whose
    outputs would land in it (``--workspace`` or the cache folder equal to it or inside it, the data set being
    <workspace>/finetune or the run folder). The first such run wrote cache/ and finetune/ into the data
    set, and the next one failed on them as class folders without audio. A data set elsewhere inside the
    workspace is fine, and so are CSV data sources (they list their clips: nothing written is picked up)."""
    dataset, ws = args.dataset_dir, args.workspace
    if not dataset or not ws:
        return
    cache_dir = getattr(args, "cache_dir", None)
    name = getattr(args, "run_name", None)
    outside = "give a --workspace outside the data set"
    outputs = [("--workspace", ws, outside),
               ("--cache_dir", cache_dir, "give a --cache_dir outside the data set") if cache_dir else
               ("<workspace>/cache", os.path.join(ws, "cache"), outside),
               ("<workspace>/finetune", os.path.join(ws, "finetune"), outside)]
    if name:
        outputs.append(("the run folder", os.path.join(ws, "finetune", name), "give another --run_name"))
    for what, path, advice in outputs:
        if not _at_or_under(path, dataset):
            continue
        where = "is" if _at_or_under(dataset, path) else "lies inside"
        earlier = [f + "/" for f in ("cache", "finetune") if os.path.isdir(os.path.join(dataset, f))]
        if earlier and what == "--workspace" and where == "is":
            advice += f", and remove the {' and '.join(earlier)} an earlier run wrote into it"
        raise PannsError(f"{what} {path} {where} the data set folder (--dataset_dir {dataset}): fine-tuning would "
                         "write its cache and runs into the data set, and a later run would take them for class "
                         f"folders; {advice}")


def refuse_unused(args) -> None:
    """Options this run would not read are refused in one line (their defaults are None, so only given ones
    are): fine-tuning's with --linear_probe, --probe_c without a probe, --audio_dir without CSV paths,
    --eval_fraction where the data names its evaluation split. Run before the defaults are filled in."""
    if args.linear_probe:
        given = [f"--{n}" for n in ("learning_rate", "head_init", *TRAINING_DEFAULTS) if getattr(args, n) is not None]
        given += ["--augmentation mixup"] * (args.augmentation == "mixup") + ["--resume"] * bool(args.resume)
        if given:
            raise PannsError(f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect with --linear_probe: "
                             "it fits a logistic regression on the base's embeddings, without training steps; "
                             f"drop {'it' if len(given) == 1 else 'them'}, or drop --linear_probe to fine-tune")
    elif args.probe_c is not None and (args.head_init or ("probe" if args.freeze_base else "random")) == "random":
        raise PannsError("--probe_c has no effect without a linear probe: it is for --linear_probe, or for --head_init "
                         "probe (the default with --freeze_base)")
    if args.audio_dir and args.dataset_dir:
        raise PannsError("--audio_dir has no effect with --dataset_dir (its clips are in the class folders): it is "
                         "where relative paths of --train_csv, --eval_csv or --meta_csv start")
    if args.eval_fraction is not None:
        folders = fd.split_folders(args.dataset_dir) if args.dataset_dir else None
        split = ("--eval_csv lists the evaluation clips" if args.eval_csv else
                 "--holdout_fold is the evaluation split" if args.meta_csv else
                 f"{os.path.join(args.dataset_dir, folders[1])} holds the evaluation clips" if folders else None)
        if split:
            raise PannsError(f"--eval_fraction has no effect here: {split} (nothing is held out of training)")


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
        refuse_outputs_in_dataset(args)
        return fd.from_folder(args.dataset_dir, args.eval_fraction, args.seed)
    if args.train_csv:
        return fd.from_csv_lists(args.train_csv, args.eval_csv, args.audio_dir, args.eval_fraction, args.seed)
    if args.meta_csv:
        return fd.from_meta_csv(args.meta_csv, args.holdout_fold, args.audio_dir)
    return None


def train(args) -> Optional[dict]:
    """Read the data set named by the arguments (data errors come before any model work), then run."""
    return finetune_task.run(args, load_data(args))


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: not where the help already says it, nor for None/False."""

    def _get_help_string(self, action):
        text = action.help or ""
        # identity, not ==: a default of 0 (--seed) equals False and was left out
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    p = sub.add_parser("train", help="fine-tune a pretrained model (or run a linear probe)",
                       epilog="Ctrl-C or SIGTERM (a cluster's pre-emption or time limit) stops the run after the current "
                              "step, writing latest.pth there (best.pth changes only after an evaluation); the same "
                              "command with --resume continues. A second Ctrl-C more than 2 s later stops at once.",
                       formatter_class=DefaultsOnceFormatter)
    g = p.add_argument_group("model (official arguments)")
    add_frontend_args(g)  # None: the pretrained checkpoint's, else the registry's (a contradiction is an error)
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
    d.add_argument("--eval_fraction", type=float, default=None,
                   help="share of every class held out for evaluation when no eval split is given (default: "
                        f"{fd.DEFAULT_EVAL_FRACTION})")
    d.add_argument("--clip_seconds", type=clip_seconds, default=None,
                   help="clip length fed to the model: random crops for training, the first seconds for "
                        "evaluation, zero-padded when shorter (default: longest clip, at most 10 s; at most "
                        f"{AUTO_WINDOW_SECONDS:.0f} s)")
    t = p.add_argument_group("training")
    t.add_argument("--workspace", type=str, default=None, help="folder for the cache, checkpoints and reports")
    t.add_argument("--run_name", type=run_name, default=None,
                   help="sub-folder of <workspace>/finetune (default: model, data set, loss, frozen)")
    t.add_argument("--cache_dir", type=str, default=None, help="decoded-clip cache (default: <workspace>/cache)")
    t.add_argument("--batch_size", type=int, default=32, help="clips per optimizer step")
    t.add_argument("--learning_rate", type=argtypes.positive_float, default=None,
                   help="Adam learning rate (default: 1e-3 with --freeze_base, 1e-4 otherwise)")
    # None: not given (refused with --linear_probe, which takes no steps); TRAINING_DEFAULTS otherwise
    t.add_argument("--iterations", type=int, default=None,
                   help=f"optimizer steps (default: {TRAINING_DEFAULTS['iterations']})")
    t.add_argument("--eval_every", type=int, default=None,
                   help="evaluate and save every this many steps (and at the end) "
                        f"(default: {TRAINING_DEFAULTS['eval_every']})")
    t.add_argument("--log_every", type=argtypes.non_negative_int, default=None,
                   help=f"log the training loss every this many steps (0: off) (default: {TRAINING_DEFAULTS['log_every']})")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in the run folder from its latest.pth (same arguments; exact: the weights "
                        "equal those of one run straight). A changed --seed, --batch_size, --augmentation or "
                        "--eval_fraction is refused; a changed --learning_rate is used from there on (one log line)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the run folder (without it, an existing run is an error)")
    t.add_argument("--augmentation", choices=("none", "mixup"), default="none",
                   help="mixup: mix pairs of clips (log-mel) and their targets, as the official main.py")
    t.add_argument("--loss", choices=("nll", "bce"), default=None,
                   help="nll: single-label, log-softmax head (official Transfer_Cnn14); bce: multi-label, sigmoid head "
                        "(default: bce if any clip has several labels, else nll)")
    t.add_argument("--num_workers", type=argtypes.non_negative_int, default=min(4, os.cpu_count() or 1),
                   help="worker processes for decoding and batch loading (0: in the main process)")
    t.add_argument("--seed", type=tl.seed_arg, default=0, help="seed of the eval hold-out, batch order, crops and init")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="compute precision of the CNN body (auto: bf16 on GPUs that support it, fp32 on CPU)")
    t.add_argument("--head_init", choices=("probe", "random"), default=None,
                   help="start the new head from a linear probe fitted on the base's embeddings of the training "
                        "clips, or from random weights (default: probe with --freeze_base, else random). A random "
                        "head on a frozen base learns slowly: its embedding's common offset dwarfs the differences "
                        "between clips, so the first hundred steps only shift the class biases")
    t.add_argument("--linear_probe", action="store_true",
                   help="instead of fine-tuning: base embeddings (extracted once) + logistic regression")
    t.add_argument("--probe_c", type=argtypes.positive_float, default=None,
                   help=f"inverse L2 strength of the linear probe (--linear_probe, --head_init probe) (default: "
                        f"{PROBE_C})")
    e = sub.add_parser("export", help="a self-contained copy of a fine-tuned checkpoint (a frozen base's weights "
                                      "inside, instead of the reference to its file)",
                       formatter_class=DefaultsOnceFormatter)
    e.add_argument("--checkpoint_path", required=True, help="best.pth or latest.pth of a fine-tuning run")
    e.add_argument("--output_path", required=True, help="where to write the self-contained checkpoint")
    e.add_argument("--overwrite", action="store_true", help="replace --output_path if it exists")
    return parser


def export(args: argparse.Namespace) -> str:
    """``export``: refuse an output path that is a folder, the input itself, or (without --overwrite) an
    existing file, then write the self-contained copy."""
    out = args.output_path
    if os.path.isdir(out):
        raise PannsError(f"--output_path {out} is a folder; give a file path, e.g. {os.path.join(out, 'model.pth')}")
    if os.path.exists(out) and os.path.exists(args.checkpoint_path) and os.path.samefile(out, args.checkpoint_path):
        raise PannsError(f"--output_path {out} is the checkpoint being exported; give another path")
    if os.path.exists(out) and not args.overwrite:
        raise PannsError(f"--output_path {out} exists; give another path, or --overwrite to replace it")
    return ckpt_lib.self_contained(args.checkpoint_path, out)


def main(argv=None) -> Optional[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "pretrained_checkpoint_path", None):   # a bare published name: the cache's copy if not here
        args.pretrained_checkpoint_path = pretrained.resolve_published(args.pretrained_checkpoint_path,
                                                                       "--pretrained_checkpoint_path")
    if args.mode == "export":
        out = export(args)
        print(f"Self-contained checkpoint written to {out}")
        return {"checkpoint_path": out}
    if args.mode != "train":
        parser.error("choose the sub-command: train or export")
    refuse_unused(args)
    for name, value in (*TRAINING_DEFAULTS.items(), ("probe_c", PROBE_C), ("eval_fraction", fd.DEFAULT_EVAL_FRACTION)):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.head_init is None:
        args.head_init = "probe" if args.freeze_base else "random"
    if args.learning_rate is None:
        args.learning_rate = 1e-3 if args.freeze_base else 1e-4
    for name in ("batch_size", "iterations", "eval_every"):
        if getattr(args, name) < 1:
            raise PannsError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if args.num_workers < 0:
        raise PannsError("--num_workers must be >= 0")
    args.filename = "finetune_template"
    return train(args)


if __name__ == "__main__":
    run_cli(main)
