"""Train an AudioSet tagging model (official ``pytorch/main.py train``), resumable and DDP-ready.

The command line of ``panns.main`` (``pytorch/panns/main.py``), kept where the official layout runs it."""
from panns import devices
from panns.main import main
from panns.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
    devices.exit_process(0)   # after a process group: flush and leave (see devices.exit_process)
