"""Resumable HTTP downloads with a progress bar, and the AudioSet label CSV fetcher.

The command line of ``panns.download`` (``pytorch/panns/download.py``), kept where the official layout runs it."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch"))  # the panns package in a checkout

from panns.download import main  # noqa: E402
from panns.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
