"""The official ``utils/data_generator.py`` import path (``from data_generator import AudioSetDataset, TrainSampler,
..., collate_fn`` with ``utils/`` on ``sys.path``): the names of ``panns.data_generator``
(``pytorch/panns/data_generator.py``), whose samplers also resume exactly. Official code puts only ``utils/`` on
``sys.path``, so this file adds ``pytorch/`` (where ``panns`` lives), as the scripts beside it do."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch"))  # the panns package in a checkout

from panns.data_generator import *  # noqa: E402,F401,F403  (AudioSetDataset, the samplers, collate_fn, ...)
