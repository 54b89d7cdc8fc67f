"""``python -m panns`` / the ``panns`` command: the inference command line (tagging, sound event
detection, embedding extraction), the same as ``python3 pytorch/inference.py`` in a checkout."""
import sys

from panns import __version__


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"panns {__version__}")
        return
    from panns import inference  # the CLI (and torch) only when a command runs
    from panns.errors import run_cli

    run_cli(lambda: inference.main(argv, prog="panns"))


if __name__ == "__main__":
    main()
