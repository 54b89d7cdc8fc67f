"""Evaluation metrics of one AudioSet-sized set (20k clips x 527 classes, ~1 % positives): the official evaluation's
scikit-learn calls (``average_precision_score`` and ``roc_auc_score`` with ``average=None``) vs ours
(``evaluate.compute_metrics``: one sort per class, torch float64) on the CPU and, when there is one, the GPU - side
by side in one run, with the largest difference of the per-class values.

    python3 benchmarks/bench_metrics.py [--clips 20000]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn import metrics  # noqa: E402

from panns.evaluate import compute_metrics  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=20000)
    a = p.parse_args()
    rs = np.random.RandomState(0)
    target = (rs.rand(a.clips, 527) < 0.01).astype(np.float32)
    target[0] = 1   # every class has a positive
    scores = np.clip(0.3 * target + rs.rand(a.clips, 527), 0, 1).astype(np.float32)
    scores[:, :50] = np.round(scores[:, :50], 2)   # ties in some classes
    print(f"{a.clips} clips x 527 classes; torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"load {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    ref_ap = metrics.average_precision_score(target, scores, average=None)
    ref_auc = metrics.roc_auc_score(target, scores, average=None)
    sk = time.perf_counter() - t0
    print(f"scikit-learn (the official calls): {sk:.2f} s")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        compute_metrics(target[:64], scores[:64], device=dev)   # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            r = compute_metrics(target, scores, device=dev)
            best = min(best, time.perf_counter() - t0)
        diff = max(np.abs(r["average_precision"] - ref_ap).max(), np.abs(r["auc"] - ref_auc).max())
        print(f"ours on {dev}: {best:.3f} s (best of 3), {sk / best:.0f}x scikit-learn; max difference {diff:.1e}")


if __name__ == "__main__":
    main()
