"""Draw the PANNs paper's figures from the statistics its authors published (``fetch`` downloads them).

The command line of ``panns.paper_figures`` (``pytorch/panns/paper_figures.py``), kept where the official
layout runs it."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch"))  # the panns package in a checkout

from panns.paper_figures import main  # noqa: E402
from panns.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
