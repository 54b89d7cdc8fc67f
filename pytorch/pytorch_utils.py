"""The official ``pytorch/pytorch_utils.py`` import path (``from pytorch_utils import do_mixup``, with ``pytorch/`` on
``sys.path``): the names of ``panns.pytorch_utils`` (``pytorch/panns/pytorch_utils.py``)."""
from panns.pytorch_utils import *  # noqa: F401,F403  (move_data_to_device, do_mixup, forward, counts, ...)
