"""Audio tagging, sound event detection and embedding extraction with a PANNs checkpoint.

The command line of ``panns.inference`` (``pytorch/panns/inference.py``), kept where the official layout runs it,
and the official functions for scripts that ``import inference`` (``pytorch/`` on ``sys.path``):
``audio_tagging(args)`` -> ``(clipwise_output (classes_num,), labels)`` and ``sound_event_detection(args)`` ->
``(framewise_output (frames, classes_num), labels)``, ``args`` an ``argparse.Namespace`` of the official flags."""
from panns.inference import audio_tagging, main, sound_event_detection  # noqa: F401 (the official names)
from panns.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
