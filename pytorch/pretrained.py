"""Catalogue of the official pretrained PANNs checkpoints and a cached, resumable downloader.

The command line of ``panns.pretrained`` (``pytorch/panns/pretrained.py``), kept where the official layout runs it."""
from panns.pretrained import main
from panns.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
