"""The PANNs paper's figures, drawn from the statistics its authors published beside the checkpoints
(``paper_statistics.zip`` in Zenodo record 3987831): the official ``utils/plot_for_paper.py``.

Sub-commands (the official four take no argument and read ``paper_statistics/`` in the current folder):

  fetch                          download the zip and unpack its statistics into ``paper_statistics/``
  plot_six_figures               mAP vs iteration of 16 training runs in six comparisons -> results/six_figures.pdf
  plot_classwise_iteration_map   AP vs iteration of frequent / median / rare classes
                                 -> results/classwise_iteration_map.pdf
  plot_complexity_map            forward GFLOPs vs mAP of 15 systems (no download needed) -> results/complexity_mAP.pdf
  plot_long_fig                  per-class clips and AP of all 527 classes -> results/long_fig.pdf

Every file is a statistics pickle of the official format (``{'bal': [...], 'test': [...]}`` per run) or,
for the per-class figure, one dictionary of per-class arrays; they are read as data only (a pickle that
would run code is refused). The run files can also be compared with your own run:
``utils/plot_statistics.py plot_runs --statistics_paths <your statistics.pkl> paper_statistics/<file>``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from panns import config
from panns import plot_statistics as ps
from panns import pretrained
from panns.download import DownloadError, download
from panns.errors import PannsError, run_cli
from panns.utilities import atomic_write, read_statistics

logger = logging.getLogger(__name__)

PAPER_STATISTICS_ZIP = "paper_statistics.zip"
DEFAULT_DIR = "paper_statistics"
LONG_FIG_FILE = "stats_for_long_fig.pkl"
MAX_ITERATION = 540_000          # the six figures' x range, as in the paper
CLASSWISE_MAX_ITERATION = 600_000


def paper_statistics_url() -> str:
    """The zip's URL: the checkpoints' record (so PANNS_CHECKPOINT_BASE_URL points both at one mirror)."""
    return pretrained.checkpoint_url(PAPER_STATISTICS_ZIP)


def run_file(model: str = "Cnn14", data: str = "full_train", balanced: str = "balanced",
             augmentation: str = "mixup", mel_bins: int = 64) -> str:
    """File name of one published training run (all at 32 kHz, window 1024, hop 320, fmin 50, fmax 14000,
    batch 32; the paper's own model names, e.g. ``WavegramLogmelCnn``)."""
    return (f"statistics_sr32000_window1024_hop320_mel{mel_bins}_fmin50_fmax14000_{data}_{model}_{balanced}_"
            f"{augmentation}_bs32.pkl")


@dataclasses.dataclass(frozen=True)
class Curve:
    label: str
    file: str
    color: str


CNN14 = run_file()
WAVEGRAM_LOGMEL = run_file("WavegramLogmelCnn")

# The six comparisons of the paper's training-curve figure: (panel title, runs).
SIX_PANELS: Tuple[Tuple[str, Tuple[Curve, ...]], ...] = (
    ("(a) Comparison of architectures", (
        Curve("Wavegram-Logmel-CNN", WAVEGRAM_LOGMEL, "g"), Curve("CNN14", CNN14, "r"),
        Curve("MobileNetV1", run_file("MobileNetV1"), "b"))),
    ("(b) Comparison of training data and augmentation", (
        Curve("CNN14,bal,mixup (1.9m)", CNN14, "r"),
        Curve("CNN14,bal,mixup-wav (1.9m)", run_file(augmentation="mixup_timedomain"), "y"),
        Curve("CNN14,bal,no-mixup (1.9m)", run_file(augmentation="nomixup"), "g"),
        Curve("CNN14,no-bal,no-mixup (1.9m)", run_file(balanced="nobalanced", augmentation="nomixup"), "b"),
        Curve("CNN14,bal,mixup (20k)", run_file(data="balanced_train"), "m"),
        Curve("CNN14,bal,no-mixup (20k)", run_file(data="balanced_train", augmentation="nomixup"), "k"))),
    ("(c) Comparison of embedding size", (
        Curve("CNN14,emb=2048", CNN14, "r"), Curve("CNN14,emb=128", run_file("Cnn14_emb128"), "g"),
        Curve("CNN14,emb=32", run_file("Cnn14_emb32"), "b"))),
    ("(d) Comparison of amount of training data", (
        Curve("CNN14 (100% full)", CNN14, "r"), Curve("CNN14 (80% full)", run_file(data="0.8full_train"), "b"),
        Curve("CNN14 (50% full)", run_file(data="0.5full_train"), "g"))),
    ("(e) Comparison of sampling rate", (
        Curve("CNN14,32kHz", CNN14, "r"), Curve("CNN14,16kHz", run_file("Cnn14_16k"), "b"),
        Curve("CNN14,8kHz", run_file("Cnn14_8k"), "g"))),
    ("(f) Comparison of mel bins number", (
        Curve("CNN14,128-melbins", run_file(mel_bins=128), "g"), Curve("CNN14,64-melbins", CNN14, "r"),
        Curve("CNN14,32-melbins", run_file(mel_bins=32), "b"))),
)

# The per-class figure's systems: (key in stats_for_long_fig.pkl, legend, colour).
LONG_FIG_SYSTEMS = (
    ("panns_wavegram_logmel_cnn14", "AP with Wavegram-Logmel-CNN", "g"),
    ("panns_cnn14", "AP with CNN14", "r"),
    ("panns_mobilenetv1", "AP with MobileNetV1", "b"),
    ("averaging_instance_system_avg_9_probs_from_10000_to_50000_iterations",
     "AP with averaging instances (baseline)", "k"),
)


def _fetch_hint(stats_dir: str) -> str:
    return (f"fetch the paper's statistics with 'python3 utils/plot_for_paper.py fetch --dest {stats_dir}' "
            f"(or download {paper_statistics_url()} and unzip it here)")


def _stats_path(stats_dir: str, name: str) -> str:
    path = os.path.join(stats_dir, name)
    if not os.path.isfile(path):
        raise PannsError(f"{path} not found: {_fetch_hint(stats_dir)}")
    return path


def fetch(dest: str = DEFAULT_DIR, url: Optional[str] = None, progress: bool = True) -> List[str]:
    """Download ``paper_statistics.zip`` (resumable, beside ``dest``) and unpack its ``.pkl`` files into
    ``dest`` (flat, each written atomically and read back as statistics); the zip is removed once unpacked.
    Returns the unpacked paths."""
    url = url or paper_statistics_url()
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise PannsError(f"--dest {dest} is a file, not a folder")
    archive = dest + ".zip"   # download() refuses an unwritable place before any request
    logger.info("downloading %s to %s", url, archive)
    try:
        download(url, archive, progress=progress)
    except DownloadError as e:
        raise PannsError(f"cannot download the paper's statistics: {e}") from None
    written = unpack(archive, dest)
    os.remove(archive)
    return written


def _member_name(member: zipfile.ZipInfo) -> str:
    return member.filename.replace("\\", "/")   # an archive made on Windows may use backslashes


def _is_statistics_member(member: zipfile.ZipInfo) -> bool:
    """A ``.pkl`` file of the archive; not a macOS resource fork (``._name``), not a name that climbs out
    (``../``) or starts at the root, which an unzip would also skip."""
    name = _member_name(member)
    parts = name.split("/")
    return (not member.is_dir() and name.endswith(".pkl") and not parts[-1].startswith(".")
            and ".." not in parts and not name.startswith("/") and "__MACOSX" not in parts)


def unpack(archive: str, dest: str) -> List[str]:
    """The ``.pkl`` members of ``archive`` written into ``dest`` by their base names (the zip's own folder
    dropped; nothing can land outside ``dest``), each checked to read as statistics."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if _is_statistics_member(m)]
            if not members:
                raise PannsError(f"{archive} holds no statistics (.pkl) files; remove it and fetch again")
            os.makedirs(dest, exist_ok=True)
            written = []
            for m in members:
                path = os.path.join(dest, _member_name(m).rsplit("/", 1)[-1])
                with atomic_write(path) as tmp, zf.open(m) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                read_statistics(path)
                written.append(path)
    except (zipfile.BadZipFile, EOFError) as e:
        raise PannsError(f"{archive} is not a complete zip archive ({e}); remove it and fetch again") from None
    return sorted(written)


def plot_six_figures(stats_dir: str, output: str) -> str:
    """The paper's six comparisons of training runs: balanced-train mAP faint, evaluation mAP solid. A run
    whose file is missing is left out with a warning; none present is an error."""
    files = {c.file for _, curves in SIX_PANELS for c in curves}
    present = {f for f in files if os.path.isfile(os.path.join(stats_dir, f))}
    if not present:
        raise PannsError(f"none of the paper's {len(files)} run statistics is in {stats_dir}: {_fetch_hint(stats_dir)}")
    for f in sorted(files - present):
        logger.warning("%s is missing: its curve is left out", os.path.join(stats_dir, f))
    plt = ps.pyplot()
    fmt = ps.check_figure_output(output, plt)
    loaded = {f: ps.load_curves(os.path.join(stats_dir, f)) for f in present}
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (title, curves) in zip(axes.flat, SIX_PANELS):
        for c in curves:
            if c.file not in loaded:
                continue
            for key, alpha, label in (("bal", 0.3, None), ("test", 1.0, c.label)):
                its, maps = loaded[c.file][key]
                keep = its <= MAX_ITERATION
                ax.plot(its[keep], maps[keep], color=c.color, alpha=alpha, linewidth=1.0, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, MAX_ITERATION)
        ax.set_ylim(0, 0.8)
        ax.set_xticks(np.arange(0, MAX_ITERATION, 100_000))
        ps.iteration_axis(ax)
        ax.set_ylabel("mAP")
        ax.grid(True, alpha=0.3, linewidth=0.3)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return ps.save_figure(fig, output, fmt)


def _long_fig_stats(stats_dir: str, classes_num: int) -> dict:
    """stats_for_long_fig.pkl, checked to hold what the figures read, each per-class array of ``classes_num``."""
    path = _stats_path(stats_dir, LONG_FIG_FILE)
    stats = read_statistics(path)
    try:
        out = {"order": np.asarray(stats["sorted_indexes_for_plot"], dtype=np.int64),
               "clips": (np.asarray(stats["official_balanced_training_samples"], dtype=np.float64)
                         + np.asarray(stats["official_unbalanced_training_samples"], dtype=np.float64)),
               "quality": [None if q is None else float(q) for q in stats["label_quality"]]}
        for key, _, _ in LONG_FIG_SYSTEMS:
            out[key] = np.asarray(stats[key]["eval"]["average_precision"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise PannsError(f"{path} is not the paper's per-class statistics ({type(e).__name__}: {e})") from None
    sizes = {k: len(v) for k, v in out.items()}
    if set(sizes.values()) != {classes_num} or sorted(out["order"]) != list(range(classes_num)):
        raise PannsError(f"{path} does not describe the {classes_num} classes of the label CSV: {sizes}")
    return out


def plot_classwise_iteration_map(stats_dir: str, output: str, labels_csv: Optional[str] = None) -> str:
    """AP vs iteration (evaluation set, to 600k iterations) of Wavegram-Logmel-CNN for the 10 most frequent,
    10 median and 10 least frequent classes by training clips (counted in stats_for_long_fig.pkl)."""
    labels = config.read_class_labels(labels_csv).labels
    iterations, ap = ps.load_evaluations(_stats_path(stats_dir, WAVEGRAM_LOGMEL))["test"]
    counts = _long_fig_stats(stats_dir, len(labels))["clips"]
    keep = iterations <= CLASSWISE_MAX_ITERATION
    return ps.plot_class_curves(iterations[keep], ap[keep], counts, labels, output,
                                title="Wavegram-Logmel-CNN: class-wise AP on the evaluation set")


def _short_label(label: str) -> str:
    return label if len(label) <= 25 else label[:24] + "…"


def plot_long_fig(stats_dir: str, output: str, labels_csv: Optional[str] = None) -> str:
    """Every class in four rows, ordered as the paper: training clips (bars, log scale) and the evaluation AP
    of three PANNs and the earlier averaging-instances baseline, with AudioSet's label quality (red +; a
    dash at 0.5 where it was not rated)."""
    labels = config.read_class_labels(labels_csv).labels
    st = _long_fig_stats(stats_dir, len(labels))
    order = st["order"]
    n = len(order)
    plt = ps.pyplot()
    fmt = ps.check_figure_output(output, plt)
    rows = 4
    width = -(-n // rows)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 10.5))
    x = np.arange(n)
    quality = np.array([np.nan if q is None else min(q, 0.99) for q in st["quality"]])[order]
    rated = ~np.isnan(quality)
    handles: Dict[str, object] = {}
    for row, ax in enumerate(axes):
        lo, hi = row * width, min(n, (row + 1) * width)
        ax.bar(x, st["clips"][order], alpha=0.3)
        ax.set_yscale("log")
        ax.set_xlim(lo - 0.5, hi - 0.5)
        ax.set_xticks(x[lo:hi])
        ax.set_xticklabels([_short_label(labels[k]) for k in order[lo:hi]], rotation=90, fontsize=5)
        ax.set_ylabel("Number of audio clips", fontsize=7)
        ap_ax = ax.twinx()
        ap_ax.set_ylim(0, 1)
        ap_ax.set_ylabel("Average precision", fontsize=7)
        ap_ax.yaxis.grid(color="grey", linestyle="--", alpha=0.5)
        for key, label, color in LONG_FIG_SYSTEMS:
            values = st[key][order]
            ap_ax.scatter(x, values, s=5, c=color, marker=".")
            handles[label], = ap_ax.plot(x, values, c=color, linewidth=0.7, label=label)
        handles["Label quality"] = ap_ax.scatter(x[rated], quality[rated], s=12, c="r", linewidth=0.8, marker="+",
                                                 label="Label quality")
        ap_ax.scatter(x[~rated], np.full(int((~rated).sum()), 0.5), s=12, c="r", linewidth=0.8, marker="_")
        ap_ax.set_xlim(lo - 0.5, hi - 0.5)
    axes[-1].legend(handles=list(handles.values()), labels=list(handles), fontsize=6, loc="upper right")
    fig.subplots_adjust(hspace=0.8)
    fig.tight_layout()
    return ps.save_figure(fig, output, fmt)


def _add_common(p: argparse.ArgumentParser, default_output: str, labels: bool = False,
                statistics: bool = True) -> None:
    if statistics:
        p.add_argument("--statistics_dir", default=DEFAULT_DIR, help="the unpacked paper statistics (default: "
                       "%(default)s, in the current folder, as the official script)")
    if labels:
        p.add_argument("--class_labels_csv", default=None, help="label CSV (default metadata/class_labels_indices.csv)")
    p.add_argument("--output", default=default_output, help="figure path; .pdf, .png or .svg (default: %(default)s)")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("fetch", help="download paper_statistics.zip (Zenodo record 3987831) and unpack it")
    p.add_argument("--dest", default=DEFAULT_DIR, help="folder for the statistics (default: %(default)s)")
    p.add_argument("--url", default=None, help="the zip's URL (default: the record's; PANNS_CHECKPOINT_BASE_URL "
                   "points it at a mirror)")
    _add_common(sub.add_parser("plot_six_figures", help="mAP vs iteration: architectures, data and augmentation, "
                               "embedding size, amount of data, sample rate, mel bins"),
                os.path.join("results", "six_figures.pdf"))
    _add_common(sub.add_parser("plot_classwise_iteration_map", help="AP vs iteration of frequent, median and "
                               "rare classes (Wavegram-Logmel-CNN)"),
                os.path.join("results", "classwise_iteration_map.pdf"), labels=True)
    _add_common(sub.add_parser("plot_complexity_map", help="forward GFLOPs (counted) vs published mAP of the 15 "
                               "systems; needs no download"),
                os.path.join("results", "complexity_mAP.pdf"), statistics=False)
    _add_common(sub.add_parser("plot_long_fig", help="training clips and AP of every class, four systems, label "
                               "quality"),
                os.path.join("results", "long_fig.pdf"), labels=True)
    args = parser.parse_args(argv)
    if args.mode == "fetch":
        written = fetch(args.dest, args.url)
        print(f"Unpacked {len(written)} statistics files into {os.path.abspath(args.dest)}")
        return
    if args.mode == "plot_complexity_map":
        out = ps.plot_complexity(args.output)
    else:
        if not os.path.isdir(args.statistics_dir):
            raise PannsError(f"no folder {args.statistics_dir}: {_fetch_hint(args.statistics_dir)}")
        if args.mode == "plot_six_figures":
            out = plot_six_figures(args.statistics_dir, args.output)
        elif args.mode == "plot_classwise_iteration_map":
            out = plot_classwise_iteration_map(args.statistics_dir, args.output, args.class_labels_csv)
        else:
            out = plot_long_fig(args.statistics_dir, args.output, args.class_labels_csv)
    print(f"Saved figure to {out}")


if __name__ == "__main__":
    run_cli(main)
