"""Fine-tune a pretrained PANN on your own labelled sounds (the official ``finetune_template.py``, made to train).

The command line of ``panns.finetune_template`` (``pytorch/panns/finetune_template.py``), kept where the official layout runs it."""
from panns.finetune_template import main
from panns.errors import run_cli
from panns.models import Transfer_Cnn14  # noqa: F401  (official: the class was written in this file)

if __name__ == "__main__":
    run_cli(main)
