"""The official ``utils/config.py`` import path: ``import config`` with ``utils/`` on ``sys.path`` (as the official
scripts and the code built on them do) gives ``panns.config`` (``pytorch/panns/config.py``): ``sample_rate``,
``clip_samples``, and the AudioSet tables ``labels``, ``ids``, ``classes_num``, ``lb_to_ix``, ``ix_to_lb``,
``id_to_ix``, ``ix_to_id``, read from the repository's label CSV on first use, whatever the working directory.
Official code puts only ``utils/`` on ``sys.path``, so this file adds ``pytorch/`` (where ``panns`` lives) at the
end of it."""
import os
import sys
from typing import TYPE_CHECKING

_SOURCE_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pytorch")
if _SOURCE_ROOT not in sys.path:   # last: the importing script's own models.py, evaluate.py, ... stay first
    sys.path.append(_SOURCE_ROOT)

from panns import config as _config  # noqa: E402
from panns.config import *  # noqa: E402,F401,F403  (the recipe constants, read_class_labels, ...)

if TYPE_CHECKING:   # the lazy tables, typed for pyright/editors
    from panns.config import classes_num, id_to_ix, ids, ix_to_id, ix_to_lb, labels, lb_to_ix  # noqa: F401


# ``from config import *`` as officially: the label tables too (read from the CSV at that moment), not only the
# names a star import of panns.config copies
__all__ = [n for n in vars(_config) if not n.startswith("_") and not isinstance(getattr(_config, n), type(os))]
__all__ += ["labels", "ids", "classes_num", "lb_to_ix", "ix_to_lb", "id_to_ix", "ix_to_id"]


def __getattr__(name: str):
    """The label tables are module attributes resolved lazily by ``panns.config``; a star import cannot copy them."""
    return getattr(_config, name)
