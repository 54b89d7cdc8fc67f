"""The official ``utils/utilities.py`` import path (``from utilities import create_folder, Mixup, ...`` with ``utils/``
on ``sys.path``): the names of ``panns.utilities`` (``pytorch/panns/utilities.py``), plus the two official helpers
that live with their rooms here: ``read_metadata`` (``panns.dataset``) and ``StatisticsContainer``
(``panns.evaluate``). Official code puts only ``utils/`` on ``sys.path``, so this file adds ``pytorch/`` (where
``panns`` lives), at its end, after the importing script's own folder."""
import os
import sys

_SOURCE_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch")
if _SOURCE_ROOT not in sys.path:   # last: the importing script's own models.py, evaluate.py, ... stay first
    sys.path.append(_SOURCE_ROOT)

from panns.dataset import read_metadata  # noqa: E402,F401
from panns.evaluate import StatisticsContainer  # noqa: E402,F401
from panns.utilities import *  # noqa: E402,F401,F403  (create_folder, create_logging, Mixup, d_prime, ...)
