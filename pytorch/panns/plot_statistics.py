"""Plot training curves (mAP vs iteration) from ``statistics.pkl`` files written by pytorch/main.py.

Sub-commands:

  plot_runs --statistics_paths a.pkl b.pkl [--labels A B] [--workspace WS] --output x.png
      one colour per run; balanced-train mAP dashed, evaluation mAP solid. With --workspace every
      ``statistics.pkl`` under ``WS/statistics`` is added. The paper's published statistics
      (``utils/plot_for_paper.py fetch``) are files of the same kind: give one beside your run to
      compare with the paper's curve.
  plot --dataset_dir D --workspace WS --select NAME
      the official sub-command (used by scripts/4_train.sh). The official version needed the
      authors' runs at hard-coded cluster paths; this one plots whatever runs the workspace holds
      and writes ``results/<NAME>.pdf`` (``--output`` to choose). ``--dataset_dir`` is accepted for
      compatibility and not needed.
  plot_class_iteration --workspace WS --select NAME [--statistics_path P]
      official sub-command: AP vs iteration of the 10 most frequent, 10 median and 10 least frequent
      classes of one run (clips counted in the index it trained on), ``results_map/class_iteration_map.pdf``.
  plot_flops
      official sub-command: forward GFLOPs (counted) vs published mAP of the paper's 15 systems,
      ``results_map/flops.pdf``.

The official plot_for_paper, plot_for_paper2, plot_long_fig, summary_stats, spearman and print read the
authors' own files; they answer with one line naming what does the job here (utils/plot_for_paper.py
draws the paper's figures from its published statistics).

mAP of one evaluation is the mean AP over the classes that have positives in the evaluated set
(entries stored as NaN are skipped), so official pickles (no NaN) plot as before. Statistics pickles
are read as data only: one that would run code is refused.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from panns import config
from panns import pretrained
from panns.create_indexes import read_index
from panns.errors import PannsError, run_cli
from panns.pytorch_utils import model_counts
from panns.training import layout
from panns.utilities import Progress, atomic_write, check_output_path, read_statistics

logger = logging.getLogger(__name__)

Curve = Tuple[np.ndarray, np.ndarray]


def load_evaluations(statistics_path: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{'bal'|'test': (iterations (E,), per-class AP (E, C))} of a statistics pickle (read once); entries
    without an iteration (the paper's published files) are taken as one evaluation per 2,000."""
    stats = read_statistics(statistics_path)
    if not any(key in stats for key in ("bal", "test")):   # another dict: naming it beats "no mAP yet"
        keys = sorted(map(repr, stats))
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        raise PannsError(f"{statistics_path} is not a training run's statistics pickle: it has "
                         f"{'keys ' + shown if keys else 'no keys'}; expected 'bal' and/or 'test'")
    out = {}
    for key in ("bal", "test"):
        entries = stats.get(key)
        its, aps = [], []
        try:   # another pickle with these keys: one line naming the file, not a KeyError/TypeError traceback
            for n, s in enumerate([] if entries is None else entries):
                aps.append(np.asarray(s["average_precision"], dtype=np.float64).reshape(-1))
                its.append(int(s.get("iteration", n * 2000)))
            if len({len(a) for a in aps}) > 1:
                raise ValueError(f"evaluations of {sorted({len(a) for a in aps})} classes")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PannsError(f"{statistics_path} is not a statistics pickle: its {key!r} entries are not "
                             f"evaluations with 'average_precision' ({type(e).__name__}: {e})") from None
        out[key] = (np.asarray(its, dtype=np.int64), np.stack(aps) if aps else np.zeros((0, 0)))
    return out


def mean_ap(ap: np.ndarray) -> np.ndarray:
    """mAP of each evaluation (E,) of per-class AP (E, C): the mean over the classes with a defined AP
    (NaN marks a class without positives in the evaluated set; NaN where none has one)."""
    ok = ~np.isnan(ap)
    counted = ok.sum(axis=1)
    return np.where(counted > 0, np.where(ok, ap, 0.0).sum(axis=1) / np.maximum(counted, 1), np.nan)


def load_curves(statistics_path: str) -> Dict[str, Curve]:
    """{'bal'|'test': (iterations, mAP)} of one statistics pickle."""
    return {key: (its, mean_ap(ap) if len(its) else np.zeros(0))
            for key, (its, ap) in load_evaluations(statistics_path).items()}


def find_statistics(workspace: str) -> List[str]:
    """Every ``statistics.pkl`` under ``<workspace>/statistics`` (sorted; backups excluded)."""
    root = os.path.join(workspace, "statistics")
    found = []
    for dirpath, _dirs, files in os.walk(root):
        if "statistics.pkl" in files:
            found.append(os.path.join(dirpath, "statistics.pkl"))
    return sorted(found)


def run_labels(paths: Sequence[str]) -> List[str]:
    """Short labels: the path components that differ between runs (the run folder if only one); the file name
    counts too, so files side by side in one folder (paper_statistics/*.pkl) are told apart."""
    if len(paths) == 1:
        return [" ".join(os.path.dirname(os.path.abspath(paths[0])).split(os.sep)[-6:])]
    parts = [os.path.abspath(p).split(os.sep) for p in paths]
    width = max(len(p) for p in parts)
    padded = [p + [""] * (width - len(p)) for p in parts]
    differ = [i for i in range(width) if len({p[i] for p in padded}) > 1]
    return [" ".join(p[i] for i in differ if p[i]) or paths[n] for n, p in enumerate(padded)]


def plot_runs(statistics_paths: Sequence[str], output: str, labels: Optional[Sequence[str]] = None,
              title: Optional[str] = None) -> str:
    """Plot mAP vs iteration of several runs into ``output`` (format from its extension)."""
    if not statistics_paths:
        raise PannsError("no statistics files to plot")
    if labels is not None and len(labels) != len(statistics_paths):
        raise PannsError(f"{len(labels)} labels given for {len(statistics_paths)} statistics files")
    plt = pyplot()
    fmt = check_figure_output(output, plt)
    labels = list(labels) if labels is not None else run_labels(statistics_paths)
    all_curves = [load_curves(path) for path in statistics_paths]
    sets = (("bal", "--", 0.6, "balanced train"), ("test", "-", 1.0, "eval"))
    empty = [path for path, c in zip(statistics_paths, all_curves) if not len(c["bal"][0]) and not len(c["test"][0])]
    if len(empty) == len(statistics_paths):   # an empty figure with a legend warning, saved as if it were a result
        raise PannsError(f"no evaluation to plot: {', '.join(empty)} "
                         f"{'holds' if len(empty) == 1 else 'hold'} no mAP yet (written at each evaluation)")
    # Evaluations whose every AP is NaN (a set without positive clips) have no mAP: such a curve would be a
    # legend entry over nothing, and a figure of only such curves a blank one saved as if it were a result.
    no_map = {}   # path -> the sets of it without any mAP, one warning line per run
    for path, curves in zip(statistics_paths, all_curves):
        sets_without = [what for key, _, _, what in sets
                        if len(curves[key][0]) and not np.isfinite(curves[key][1]).any()]
        if sets_without:
            no_map[path] = sets_without
    nan_runs = ", ".join(f"{path} ({', '.join(whats)})" for path, whats in no_map.items())
    if not any(np.isfinite(c[key][1]).any() for c in all_curves for key, *_ in sets):
        raise PannsError(f"nothing to plot: every AP of {nan_runs} is NaN (no class has positive clips in the "
                         "evaluated set)" + (f"; {', '.join(empty)} {'holds' if len(empty) == 1 else 'hold'} "
                                             "no evaluation yet" if empty else ""))
    for path in empty:
        logger.warning("%s holds no evaluation yet; not plotted", path)
    for path, whats in no_map.items():
        logger.warning("%s: every AP of its %s evaluations is NaN (no class has positive clips in that set); "
                       "not plotted", path, " and ".join(whats))
    fig, ax = plt.subplots(figsize=(10, 6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (curves, label) in enumerate(zip(all_curves, labels)):
        color = colors[n % len(colors)]
        for key, style, alpha, what in sets:
            x, y = curves[key]
            ok = np.isfinite(y)   # an evaluation without mAP is no point of the curve
            x, y = x[ok], y[ok]
            if len(x):   # a single evaluation (iteration 0 alone, so far) is a point: drawn only with a marker
                ax.plot(x, y, color=color, linestyle=style, alpha=alpha, marker="o" if len(x) == 1 else None,
                        label=f"{label} ({what})")
    iteration_axis(ax)
    ax.set_ylabel("mAP")
    ax.set_ylim(-0.02, 1.02)   # a curve at exactly 0 or 1 would hide under the frame
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, output, fmt)


def iteration_axis(ax) -> None:
    """Iterations on an x axis as 0, 100k, 200k ... (a million-step run's raw numbers crowd the axis); a short
    run's ticks stay plain numbers, at whole iterations (a 2-step run had ticks at 0.5, 1.5)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    # matplotlib's default locator (AutoLocator) is this MaxNLocator without integer=True
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v and v % 1000 == 0 else f"{v:g}"))
    ax.set_xlabel("iteration")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported here: heavy, and only plotting needs it;
    the backend must be chosen before pyplot is imported)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, output: str, fmt: str) -> str:
    """Write ``fig`` to ``output`` atomically (no temporary left behind when saving fails) and close it."""
    plt = pyplot()
    try:
        with atomic_write(output) as tmp:
            fig.savefig(tmp, format=fmt)
    finally:
        plt.close(fig)
    return output


def check_figure_output(output: str, plt) -> str:
    """The figure format of ``output``; PannsError before plotting for an unknown extension, a folder,
    or a folder that cannot be made."""
    fmt = os.path.splitext(output)[1].lstrip(".").lower() or "png"
    supported = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if fmt not in supported:
        raise PannsError(f"--output {output}: cannot write .{fmt} figures; use one of "
                         f"{', '.join('.' + f for f in sorted(supported))}")
    check_output_path(output, what="--output")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return fmt


def class_ranks(counts: np.ndarray, per_panel: int = 10) -> List[Tuple[str, np.ndarray]]:
    """The classes of the class-iteration figure: the ``per_panel`` most frequent, the ones around the
    median and the least frequent, as (panel title, class indices by falling count). Fewer classes than
    three panels' worth: fewer per panel, never a class twice."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    c = len(order)
    if c < 3:
        return [(f"{c} classes", order)]
    k = min(per_panel, c // 3)
    mid = (c - k) // 2
    return [(f"the {k} most frequent classes", order[:k]),
            (f"{k} classes around the median (ranks {mid + 1}-{mid + k} of {c})", order[mid:mid + k]),
            (f"the {k} least frequent classes", order[c - k:])]


def plot_class_curves(iterations: np.ndarray, ap: np.ndarray, counts: np.ndarray, labels: Sequence[str],
                      output: str, title: Optional[str] = None, per_panel: int = 10) -> str:
    """Per-class AP (E, C) against iteration (E,) for the most frequent, median and least frequent classes
    by training clips ``counts`` (C,), one panel each; legend entries name the class and its clip count.
    This is where data-starved classes show: they learn late, or not at all."""
    if ap.ndim != 2 or not len(iterations) or ap.shape[0] != len(iterations):
        raise PannsError("no evaluation to plot (statistics are written at each evaluation)")
    if ap.shape[1] != len(counts) or len(labels) != len(counts):
        raise PannsError(f"the statistics hold {ap.shape[1]} classes, the class counts {len(counts)} and the "
                         f"label list {len(labels)}: they describe different data sets")
    plt = pyplot()
    fmt = check_figure_output(output, plt)
    panels = class_ranks(counts, per_panel)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (panel_title, classes) in zip(axes[0], panels):
        for k in classes:
            name = labels[k] if len(labels[k]) <= 24 else labels[k][:23] + "…"
            ax.plot(iterations, ap[:, k], marker="o" if len(iterations) == 1 else None,   # one evaluation: a point
                    label=f"{name} ({int(counts[k]):,})")
        ax.set_title(panel_title, fontsize=10)
        iteration_axis(ax)
        ax.set_ylabel("AP")
        ax.set_ylim(-0.02, 1.02)   # a class at AP 0 or 1 (often, for the frequent ones) would hide under the frame
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", title="class (training clips)", title_fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, output, fmt)


def run_class_counts(statistics_path: str, workspace: str) -> Tuple[np.ndarray, str]:
    """Training clips per class (C,) of the run whose statistics are ``statistics_path``: the positives of
    the index it trained on, named by its ``data_type=`` folder (``<workspace>/hdf5s/indexes/<data_type>.h5``)."""
    parts = os.path.normpath(os.path.abspath(statistics_path)).split(os.sep)
    data_types = [p.split("=", 1)[1] for p in parts if p.startswith("data_type=")]
    if not data_types:
        raise PannsError(f"{statistics_path} is not in a run folder of pytorch/main.py train (no 'data_type=' "
                         "folder names its training index)")
    index_path = os.path.join(workspace, "hdf5s", "indexes", f"{data_types[-1]}.h5")
    if not os.path.isfile(index_path):
        raise PannsError(f"the run trained on {data_types[-1]}, but {index_path} is not there to count its "
                         "clips per class (--workspace: the workspace the run was trained in)")
    table = read_index(index_path, load_positives=True)
    assert table.positives is not None
    return np.bincount(table.positives[1], minlength=table.classes_num), index_path


def run_labels_csv(statistics_path: str, workspace: str) -> Optional[str]:
    """The label CSV a run of ``main.py train`` used, as its run record (``<workspace>/logs/<run>/config.json``)
    names it; None where the record, or the CSV it names, is not there (the repository's default then)."""
    run = layout.run_of_statistics(statistics_path, workspace)
    if run is None:
        return None
    try:
        with open(layout.run_record_path(workspace, run), encoding="utf-8") as f:
            csv_path = json.load(f)["train"]["class_labels_csv"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return csv_path if isinstance(csv_path, str) and os.path.isfile(csv_path) else None


# The paper's complexity figure (FLOPs vs mAP): the 15 systems of its Table, joined by family as in the paper.
COMPLEXITY_FAMILIES = (("Cnn6", "Cnn10", "Cnn14"), ("ResNet22", "ResNet38", "ResNet54"),
                       ("MobileNetV1", "MobileNetV2"), ("DaiNet19",), ("LeeNet11", "LeeNet24"),
                       ("Res1dNet31", "Res1dNet51"), ("Wavegram_Cnn14", "Wavegram_Logmel_Cnn14"))


def plot_complexity(output: str, progress: bool = True) -> str:
    """Forward GFLOPs of a 10-s clip (counted by ``pytorch_utils.count_flops`` on the meta device, as the model
    zoo table) against published AudioSet mAP (the pretrained catalogue) of the paper's 15 systems."""
    plt = pyplot()
    fmt = check_figure_output(output, plt)
    names = [m for family in COMPLEXITY_FAMILIES for m in family]
    gflops = {}
    with Progress(len(names), desc="counting FLOPs", unit="model", enabled=progress) as bar:
        for m in names:
            gflops[m] = model_counts(m)[1] / 1e9
            bar.update(1)
    fig, ax = plt.subplots(figsize=(7, 6))
    for family in COMPLEXITY_FAMILIES:
        xs, ys = [gflops[m] for m in family], [pretrained.CATALOGUE[m].mAP for m in family]
        ax.plot(xs, ys, marker="o")
        for m, x, y in zip(family, xs, ys):
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("forward GFLOPs (10-s clip)")
    ax.set_ylabel("AudioSet mAP (published)")
    ax.set_xlim(0, max(gflops.values()) * 1.35)   # room for the rightmost names
    ax.margins(y=0.08)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, output, fmt)


# Official sub-commands that read what only the authors had (their runs at cluster paths, summaries of their
# earlier systems): accepted with their flags and answered with one line saying what does the job here.
_AUTHORS_ONLY = {
    "plot_for_paper": "the paper's curves: python3 utils/plot_for_paper.py plot_six_figures",
    "plot_for_paper2": "the paper's curves: python3 utils/plot_for_paper.py plot_six_figures",
    "plot_long_fig": "the paper's per-class figure: python3 utils/plot_for_paper.py plot_long_fig",
    "summary_stats": "per-class AP against training clips of a run of yours: plot_class_iteration",
    "spearman": "per-class AP against training clips of a run of yours: plot_class_iteration",
    "print": "a run's numbers: its statistics.json beside statistics.pkl",
}


def check_class_iteration_inputs(classes: int, counts: np.ndarray, index_path: str, labels: Sequence[str],
                                 csv_path: Optional[str], given_csv: Optional[str]) -> None:
    """PannsError naming the index or label CSV whose class count differs from the statistics' ``classes``,
    and what chooses another."""
    if len(counts) != classes:
        raise PannsError(f"the statistics hold {classes} classes but the index {index_path} counts "
                         f"{len(counts)}: --workspace must be the workspace the run was trained in")
    if len(labels) != classes:
        where = ("" if given_csv else " (named by the run's record)" if csv_path
                 else " (the default: no run record names the run's label CSV)")
        raise PannsError(f"the statistics hold {classes} classes but the label list "
                         f"{csv_path or config.DEFAULT_LABELS_CSV}{where} has {len(labels)}: give the run's label "
                         "CSV with --class_labels_csv")


def _one_run(workspace: str, statistics_path: Optional[str]) -> str:
    if statistics_path:
        return statistics_path
    found = find_statistics(workspace)
    if not found:
        raise PannsError(f"no statistics.pkl under {os.path.join(workspace, 'statistics')}; train first "
                         "(pytorch/main.py train)")
    if len(found) > 1:
        raise PannsError(f"{len(found)} runs under {os.path.join(workspace, 'statistics')}: choose one with "
                         f"--statistics_path (one is {found[0]})")
    return found[0]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)

    p = sub.add_parser("plot_runs", help="plot mAP curves of given statistics.pkl files")
    p.add_argument("--statistics_paths", nargs="*", default=[], help="statistics.pkl files, one per run")
    p.add_argument("--labels", nargs="*", default=None, help="legend label per statistics file")
    p.add_argument("--workspace", default=None, help="also plot every statistics.pkl under WORKSPACE/statistics")
    p.add_argument("--output", required=True, help="figure path (.png, .pdf, .svg)")
    p.add_argument("--title", default=None, help="figure title")

    p = sub.add_parser("plot", help="official sub-command: plot the runs found in a workspace")
    p.add_argument("--dataset_dir", default=None, help="accepted for compatibility with the official CLI; unused")
    p.add_argument("--workspace", required=True, help="workspace of pytorch/main.py train")
    p.add_argument("--select", required=True, help="name of the figure (official experiment group name)")
    p.add_argument("--output", default=None, help="figure path (default results/<select>.pdf)")

    p = sub.add_parser("plot_class_iteration", help="official sub-command: AP vs iteration of the most frequent, "
                       "median and least frequent classes of one run")
    p.add_argument("--workspace", required=True, help="workspace of pytorch/main.py train (its index counts the "
                   "training clips of each class)")
    p.add_argument("--select", required=True, help="name of the figure (its title)")
    p.add_argument("--statistics_path", default=None, help="the run's statistics.pkl (needed when the workspace "
                   "holds several runs)")
    p.add_argument("--set", choices=("test", "bal"), default="test", help="evaluation set: test (the evaluation "
                   "set, default) or bal (the balanced training subset)")
    p.add_argument("--class_labels_csv", default=None, help="label CSV of the run (default: the one its run "
                   "record names, <workspace>/logs/<run>/config.json, else metadata/class_labels_indices.csv)")
    p.add_argument("--output", default=os.path.join("results_map", "class_iteration_map.pdf"),
                   help="figure path (default: %(default)s)")

    p = sub.add_parser("plot_flops", help="official sub-command: forward GFLOPs vs published mAP of the paper's "
                       "15 systems (the same figure as utils/plot_for_paper.py plot_complexity_map)")
    p.add_argument("--workspace", default=None, help="accepted for compatibility with the official CLI; unused")
    p.add_argument("--output", default=os.path.join("results_map", "flops.pdf"), help="figure path (default: "
                   "%(default)s)")

    for mode, instead in _AUTHORS_ONLY.items():
        p = sub.add_parser(mode, help=f"official sub-command that read the authors' own files; instead: {instead}")
        for flag in ("--dataset_dir", "--workspace", "--select"):
            p.add_argument(flag, default=None, help="accepted for compatibility with the official CLI")

    args = parser.parse_args(argv)
    if args.mode in _AUTHORS_ONLY:
        raise PannsError(f"{args.mode} read files only the authors had (their runs at their cluster paths); "
                         f"for {_AUTHORS_ONLY[args.mode]}")
    if args.mode == "plot_runs":
        paths = list(args.statistics_paths)
        if args.workspace:
            found = find_statistics(args.workspace)
            if not found:
                raise PannsError(f"no statistics.pkl under {os.path.join(args.workspace, 'statistics')}")
            given = {os.path.realpath(f) for f in paths}   # one run however its path is spelt
            paths += [f for f in found if os.path.realpath(f) not in given]
        if args.labels is not None and args.workspace:
            raise PannsError("--labels cannot be combined with --workspace (the number of runs is not known)")
        out = plot_runs(paths, args.output, args.labels, args.title)
    elif args.mode == "plot_class_iteration":
        path = _one_run(args.workspace, args.statistics_path)
        iterations, ap = load_evaluations(path)[args.set]
        counts, index_path = run_class_counts(path, args.workspace)
        csv_path = args.class_labels_csv or run_labels_csv(path, args.workspace)
        labels = config.read_class_labels(csv_path).labels
        if len(iterations) and ap.ndim == 2:   # name the file at fault and the flag that fixes it
            check_class_iteration_inputs(ap.shape[1], counts, index_path, labels, csv_path, args.class_labels_csv)
        out = plot_class_curves(iterations, ap, counts, labels, args.output, title=args.select)
        logger.info("classes ranked by their clips in %s", index_path)
    elif args.mode == "plot_flops":
        out = plot_complexity(args.output)
    else:
        paths = find_statistics(args.workspace)
        if not paths:
            raise PannsError(f"no statistics.pkl under {os.path.join(args.workspace, 'statistics')}; "
                             "train first (pytorch/main.py train)")
        out = plot_runs(paths, args.output or _default_figure(args.select), title=args.select)
    print(f"Saved figure to {out}")


def _default_figure(select: str) -> str:
    """``results/<select>.pdf``, the official place; a name with a path in it would write elsewhere
    ('../../x' out of results/, 'a/b' into a new folder), so it must go through --output instead."""
    if not select or select in (".", "..") or any(sep and sep in select for sep in (os.sep, os.altsep)):
        raise PannsError(f"--select {select!r} is not a figure name (it would be saved as results/{select}.pdf); "
                         "use a plain name, or --output for another path")
    return os.path.join("results", f"{select}.pdf")


if __name__ == "__main__":
    run_cli(main)
