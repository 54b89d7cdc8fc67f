"""PANNs: pretrained audio neural networks (Kong et al., 2020) for tagging, sound event detection
and 2048-d embeddings.

    import panns
    m = panns.load("Cnn14")              # or a checkpoint path; see panns.api
    m.tag("clip.wav")                    # [("Speech", 0.93), ...]
    panns.AudioTagging(device="cpu").inference(audio)   # panns_inference's interface

In a checkout, the project's modules live in ``pytorch/`` and ``utils/`` (the official layout, so
the official command lines keep working); this package's search path spans both directories, so
``panns.models`` is ``pytorch/models.py`` and ``panns.config`` is ``utils/config.py``. An installed
copy (``pip install .``) holds the same modules in one folder. Importing ``panns`` loads nothing
heavy and touches no network: the API below is imported on first use.
"""
import os as _os

__version__ = "0.2.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_pytorch_dir = _os.path.dirname(_here)
_utils_dir = _os.path.join(_os.path.dirname(_pytorch_dir), "utils")
if _os.path.basename(_pytorch_dir) == "pytorch" and _os.path.isfile(_os.path.join(_utils_dir, "config.py")):
    # A checkout: the modules stay where the official layout puts them.
    __path__ = [_here, _pytorch_dir, _utils_dir]

_API = ("load", "Model", "AudioTagging", "SoundEventDetection")
__all__ = list(_API) + ["labels", "hear", "__version__"]


def __getattr__(name: str):
    """The API (torch and friends) loads on first use, so ``import panns`` stays instant."""
    if name in _API:
        from panns import api

        return getattr(api, name)
    if name in ("labels", "classes_num"):   # panns_inference exports the AudioSet labels
        from panns import config

        return getattr(config, name)
    raise AttributeError(f"module 'panns' has no attribute {name!r}")
