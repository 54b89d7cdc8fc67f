"""Generate a small AudioSet-layout data set of distinct synthetic sound classes (offline demo/tests).

The command line of ``panns.demo.data`` (``pytorch/panns/demo/data.py``), kept where the official layout runs it."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch"))  # the panns package in a checkout

from panns.demo.data import main  # noqa: E402
from panns.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
