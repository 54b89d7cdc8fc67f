"""PANNs: pretrained audio neural networks (Kong et al., 2020) for tagging, sound event detection
and 2048-d embeddings.

In a checkout, the project's modules live in ``pytorch/`` and ``utils/`` (the official layout, so
the official command lines keep working); this package's search path spans both directories, so
``panns.models`` is ``pytorch/models.py`` and ``panns.config`` is ``utils/config.py``. An installed
copy (``pip install .``) holds the same modules in one folder.
"""
import os as _os

__version__ = "0.2.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_pytorch_dir = _os.path.dirname(_here)
_utils_dir = _os.path.join(_os.path.dirname(_pytorch_dir), "utils")
if _os.path.basename(_pytorch_dir) == "pytorch" and _os.path.isfile(_os.path.join(_utils_dir, "config.py")):
    # A checkout: the modules stay where the official layout puts them.
    __path__ = [_here, _pytorch_dir, _utils_dir]
