"""The official ``utils/data_generator.py`` import path (``from data_generator import AudioSetDataset, TrainSampler,
..., collate_fn`` with ``utils/`` on ``sys.path``): the names of ``panns.data_generator``
(``pytorch/panns/data_generator.py``), whose samplers also resume exactly. Official code puts only ``utils/`` on
``sys.path``, so this file adds ``pytorch/`` (where ``panns`` lives), at its end, after the importing script's own
folder."""
import os
import sys

_SOURCE_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch")
if _SOURCE_ROOT not in sys.path:   # last: the importing script's own models.py, evaluate.py, ... stay first
    sys.path.append(_SOURCE_ROOT)

from panns.data_generator import *  # noqa: E402,F401,F403  (AudioSetDataset, the samplers, collate_fn, ...)
