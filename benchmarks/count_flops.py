"""Trainable parameters and forward FLOPs of every registered model on a 10-s clip, counted like
the official counter (``pytorch_utils.count_flops``: hooks on conv/linear/BN/ReLU/pooling layers,
a multiply-add = 2 FLOPs). The README's model-zoo table holds these figures (tests/test_readme_zoo.py).

    python3 benchmarks/count_flops.py            # one line per model: name, parameters, GFLOPs
    python3 benchmarks/count_flops.py --seconds 1

Shapes are all the counter needs, so the forward runs on PyTorch's "meta" device (no arithmetic).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

from panns import models  # noqa: E402
from panns.pytorch_utils import model_counts as count  # noqa: E402  (tests/test_readme_zoo.py imports it)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default: %(default)s)")
    p.add_argument("models", nargs="*", help="model names (default: every registered model)")
    args = p.parse_args()
    print(f"{'model':<30} {'trainable params':>17} {'GFLOPs':>7}")
    for name in args.models or models.model_names():
        params, flops = count(name, args.seconds)
        print(f"{name:<30} {params:>17,} {flops / 1e9:>7.2f}")


if __name__ == "__main__":
    main()
