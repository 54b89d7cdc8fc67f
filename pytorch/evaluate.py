"""The official ``pytorch/evaluate.py`` import path (``from evaluate import Evaluator``, with ``pytorch/`` on
``sys.path``): the names of ``panns.evaluate`` (``pytorch/panns/evaluate.py``)."""
from panns.evaluate import *  # noqa: F401,F403  (Evaluator, StatisticsContainer, the metrics)
