"""Black list of AudioSet clips that overlap the DCASE 2017 task 4 test/evaluation sets (official script).

The command line of ``panns.create_black_list`` (``pytorch/panns/create_black_list.py``), kept where the official layout runs it."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch"))  # the panns package in a checkout

from panns.create_black_list import main  # noqa: E402
from panns.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
