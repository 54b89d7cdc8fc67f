"""The official ``pytorch/models.py`` import path: ``from models import Cnn14`` (with ``pytorch/`` on ``sys.path``, as
the official scripts and the code built on them do) gives the classes of ``panns.models``
(``pytorch/panns/models.py``), where the zoo is written once."""
from panns.models import *  # noqa: F401,F403  (the 30 official classes, their blocks and helpers, the registry)
