"""The official ``pytorch/losses.py`` import path (``from losses import get_loss_func``, with ``pytorch/`` on
``sys.path``): the names of ``panns.losses`` (``pytorch/panns/losses.py``)."""
from panns.losses import *  # noqa: F401,F403  (clip_bce, get_loss_func)
