"""Audio tagging, sound event detection and embedding extraction with a PANNs checkpoint.

The command line of ``panns.inference`` (``pytorch/panns/inference.py``), kept where the official layout runs it."""
from panns.inference import main
from panns.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
