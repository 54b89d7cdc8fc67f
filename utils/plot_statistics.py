"""Plot training curves (mAP vs iteration) from ``statistics.pkl`` files written by pytorch/main.py.

The command line of ``panns.plot_statistics`` (``pytorch/panns/plot_statistics.py``), kept where the official layout runs it."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch"))  # the panns package in a checkout

from panns.plot_statistics import main  # noqa: E402
from panns.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
