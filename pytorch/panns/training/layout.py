"""Where a ``main.py train`` run keeps its files in the workspace (the official layout), in one place for the run
that writes them and the tools that find them again (``plot_statistics``): ``<workspace>/checkpoints/<run>/``,
``<workspace>/statistics/<run>/statistics.pkl`` and ``<workspace>/logs/<run>/`` with the run record
``config.json``, where ``<run>`` is ``TrainConfig.run_subpath``. Nothing heavy is imported here."""
from __future__ import annotations

import os
from typing import Optional

RUN_RECORD = "config.json"   # the resolved settings of a run, in its logs folder


def checkpoints_dir(workspace: str, run: str) -> str:
    return os.path.join(workspace, "checkpoints", run)


def statistics_path(workspace: str, run: str) -> str:
    return os.path.join(workspace, "statistics", run, "statistics.pkl")


def logs_dir(workspace: str, run: str) -> str:
    return os.path.join(workspace, "logs", run)


def run_record_path(workspace: str, run: str) -> str:
    return os.path.join(logs_dir(workspace, run), RUN_RECORD)


def run_of_statistics(statistics_file: str, workspace: str) -> Optional[str]:
    """The ``<run>`` of a statistics file under ``<workspace>/statistics/``; None for one anywhere else."""
    root = os.path.join(os.path.abspath(workspace), "statistics")
    run_dir = os.path.dirname(os.path.abspath(statistics_file))
    if os.path.commonpath([root, run_dir]) != root or run_dir == root:
        return None
    return os.path.relpath(run_dir, root)


def run_file_kind(path: str) -> Optional[str]:
    """What a run's own file at ``path`` is ('statistics' beside its statistics.pkl, 'run record' among its
    logs), None for any other path: another command's output (``main.py evaluate --output``) must not replace it."""
    folder, name = os.path.split(os.path.abspath(path))
    if name == "statistics.json" and os.path.isfile(os.path.join(folder, "statistics.pkl")):
        return "statistics"
    if name == RUN_RECORD and os.path.isdir(folder) and any(f.endswith(".log") for f in os.listdir(folder)):
        return "run record"
    return None
