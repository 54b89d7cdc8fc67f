"""Index HDF5 files: which clip lives in which waveform HDF5 (official ``utils/create_indexes.py``).

The command line of ``panns.create_indexes`` (``pytorch/panns/create_indexes.py``), kept where the official layout runs it."""
import os
import signal
import sys

signal.signal(signal.SIGINT, lambda *_: (print("error: interrupted", file=sys.stderr), os._exit(130)))  # Ctrl-C while the modules load: one line

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch"))  # the panns package in a checkout

from panns.create_indexes import main  # noqa: E402
from panns.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
