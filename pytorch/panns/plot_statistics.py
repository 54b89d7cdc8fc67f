"""Plot training curves (mAP vs iteration) from ``statistics.pkl`` files written by pytorch/main.py.

Sub-commands:

  plot_runs --statistics_paths a.pkl b.pkl [--labels A B] [--workspace WS] --output x.png
      one colour per run; balanced-train mAP dashed, evaluation mAP solid. With --workspace every
      ``statistics.pkl`` under ``WS/statistics`` is added.
  plot --dataset_dir D --workspace WS --select NAME
      the official sub-command (used by scripts/4_train.sh). The official version needed the
      authors' runs at hard-coded cluster paths; this one plots whatever runs the workspace holds
      and writes ``results/<NAME>.pdf`` (``--output`` to choose). ``--dataset_dir`` is accepted for
      compatibility and not needed.

mAP of one evaluation is the mean AP over the classes that have positives in the evaluated set
(entries stored as NaN are skipped), so official pickles (no NaN) plot as before.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from panns.errors import PannsError, run_cli
from panns.utilities import atomic_write, check_output_path

logger = logging.getLogger(__name__)

Curve = Tuple[np.ndarray, np.ndarray]


def load_curves(statistics_path: str) -> Dict[str, Curve]:
    """{'bal'|'test': (iterations, mAP)} of one statistics pickle."""
    if not os.path.isfile(statistics_path):
        raise PannsError(f"statistics file not found: {statistics_path}")
    try:
        with open(statistics_path, "rb") as f:
            stats = pickle.load(f)
    except Exception as e:  # truncated or foreign file
        raise PannsError(f"cannot read {statistics_path}: {type(e).__name__}: {e}") from None
    if not isinstance(stats, dict):
        raise PannsError(f"{statistics_path} is not a statistics pickle (expected a dict with 'bal'/'test')")
    curves: Dict[str, Curve] = {}
    for key in ("bal", "test"):
        entries = stats.get(key)
        its, maps = [], []
        try:   # another pickle with these keys: one line naming the file, not a KeyError/TypeError traceback
            for n, s in enumerate([] if entries is None else entries):
                ap = np.asarray(s["average_precision"], dtype=np.float64)
                ok = ~np.isnan(ap)
                its.append(int(s.get("iteration", n * 2000)))
                maps.append(float(ap[ok].mean()) if ok.any() else np.nan)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PannsError(f"{statistics_path} is not a statistics pickle: its {key!r} entries are not "
                             f"evaluations with 'average_precision' ({type(e).__name__}: {e})") from None
        curves[key] = (np.asarray(its), np.asarray(maps))
    return curves


def find_statistics(workspace: str) -> List[str]:
    """Every ``statistics.pkl`` under ``<workspace>/statistics`` (sorted; backups excluded)."""
    root = os.path.join(workspace, "statistics")
    found = []
    for dirpath, _dirs, files in os.walk(root):
        if "statistics.pkl" in files:
            found.append(os.path.join(dirpath, "statistics.pkl"))
    return sorted(found)


def run_labels(paths: Sequence[str]) -> List[str]:
    """Short labels: the path components that differ between runs (the run folder if only one)."""
    parts = [os.path.dirname(os.path.abspath(p)).split(os.sep) for p in paths]
    if len(parts) == 1:
        return [" ".join(parts[0][-6:])]
    width = max(len(p) for p in parts)
    padded = [p + [""] * (width - len(p)) for p in parts]
    differ = [i for i in range(width) if len({p[i] for p in padded}) > 1]
    return [" ".join(p[i] for i in differ if p[i]) or os.path.dirname(paths[n]) for n, p in enumerate(padded)]


def plot_runs(statistics_paths: Sequence[str], output: str, labels: Optional[Sequence[str]] = None,
              title: Optional[str] = None) -> str:
    """Plot mAP vs iteration of several runs into ``output`` (format from its extension)."""
    if not statistics_paths:
        raise PannsError("no statistics files to plot")
    if labels is not None and len(labels) != len(statistics_paths):
        raise PannsError(f"{len(labels)} labels given for {len(statistics_paths)} statistics files")
    import matplotlib  # heavy, and only plotting needs it; the Agg backend must be chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = _check_output(output, plt)
    labels = list(labels) if labels is not None else run_labels(statistics_paths)
    all_curves = [load_curves(path) for path in statistics_paths]
    empty = [path for path, c in zip(statistics_paths, all_curves) if not len(c["bal"][0]) and not len(c["test"][0])]
    if len(empty) == len(statistics_paths):   # an empty figure with a legend warning, saved as if it were a result
        raise PannsError(f"no evaluation to plot: {', '.join(empty)} "
                         f"{'holds' if len(empty) == 1 else 'hold'} no mAP yet (written at each evaluation)")
    for path in empty:
        logger.warning("%s holds no evaluation yet; not plotted", path)
    fig, ax = plt.subplots(figsize=(10, 6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (curves, label) in enumerate(zip(all_curves, labels)):
        color = colors[n % len(colors)]
        if len(curves["bal"][0]):
            ax.plot(*curves["bal"], color=color, linestyle="--", alpha=0.6, label=f"{label} (balanced train)")
        if len(curves["test"][0]):
            ax.plot(*curves["test"], color=color, linestyle="-", label=f"{label} (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mAP")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    try:
        with atomic_write(output) as tmp:   # no temporary left behind when saving fails
            fig.savefig(tmp, format=fmt)
    finally:
        plt.close(fig)
    return output


def _check_output(output: str, plt) -> str:
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


def main() -> None:
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

    args = parser.parse_args()
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
    else:
        paths = find_statistics(args.workspace)
        if not paths:
            raise PannsError(f"no statistics.pkl under {os.path.join(args.workspace, 'statistics')}; "
                             "train first (pytorch/main.py train)")
        out = plot_runs(paths, args.output or os.path.join("results", f"{args.select}.pdf"), title=args.select)
    print(f"Saved figure to {out}")


if __name__ == "__main__":
    run_cli(main)
