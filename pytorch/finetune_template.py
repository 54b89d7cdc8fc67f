"""Fine-tune a pretrained PANN on your own labelled sounds (the official ``finetune_template.py``, made to train).

The command line of ``panns.finetune_template`` (``pytorch/panns/finetune_template.py``), kept where the official layout runs it."""
from panns.finetune_template import main
from panns.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
