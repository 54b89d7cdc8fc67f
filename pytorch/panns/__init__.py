"""PANNs: pretrained audio neural networks (Kong et al., 2020) for tagging, sound event detection
and 2048-d embeddings.

    import panns
    m = panns.load("Cnn14")              # or a checkpoint path; see panns.api
    m.tag("clip.wav")                    # [("Speech", 0.93), ...]
    panns.AudioTagging(device="cpu").inference(audio)   # panns_inference's interface

Every module of the project lives in this folder (``pytorch/panns/``); the official command lines
(``pytorch/main.py``, ``utils/dataset.py``, ...) are thin scripts that run them. Importing ``panns``
loads nothing heavy and touches no network: the API names below load ``panns.api`` (and torch) on
first use. Type checkers and editors see them through the ``TYPE_CHECKING`` imports.
"""
from typing import TYPE_CHECKING

__version__ = "0.3.0"

if TYPE_CHECKING:   # what the lazy names below are, for pyright/jedi; nothing is imported at run time
    from panns.api import AudioTagging, Model, SoundEventDetection, load  # noqa: F401
    from panns.config import classes_num, labels  # noqa: F401

_API = ("load", "Model", "AudioTagging", "SoundEventDetection")
_CONFIG = ("labels", "classes_num")   # panns_inference exports the AudioSet labels
__all__ = list(_API) + list(_CONFIG) + ["__version__"]


def __getattr__(name: str):
    """The API names (torch and friends) load on first use, so ``import panns`` stays instant; any other
    name raises AttributeError as for a plain module."""
    if name in _API:
        from panns import api

        return getattr(api, name)
    if name in _CONFIG:
        from panns import config

        return getattr(config, name)
    raise AttributeError(f"module 'panns' has no attribute {name!r}")


def __dir__():
    """The lazy API names too, so tab completion and dir(panns) show them."""
    return sorted(set(globals()) | set(__all__))
