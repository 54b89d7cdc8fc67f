"""Builds the one ``panns`` package from the official layout.

In a checkout the modules stay where the official command lines expect them (``pytorch/*.py``,
``utils/*.py``) and ``pytorch/panns/__init__.py`` spans both folders. A built wheel gathers them
into a single ``panns/`` folder, with the AudioSet label CSV as ``panns/metadata/``, so that
site-packages gets ``panns`` and nothing else (no ``models``, ``config``, ``utils``...).
``pip install -e .`` maps ``panns`` to ``pytorch/panns`` and works like the checkout.
"""
import glob
import os
import re

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    with open(os.path.join(HERE, "pytorch", "panns", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


class BuildPanns(build_py):
    """build_py that copies pytorch/*.py, utils/*.py and the label CSV into the ``panns`` package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return   # pip install -e: panns maps to pytorch/panns, whose __init__ spans pytorch/ and utils/
        dest = os.path.join(self.build_lib, "panns")
        own = set(os.listdir(os.path.join(HERE, "pytorch", "panns")))
        for folder in ("pytorch", "utils"):
            for src in sorted(glob.glob(os.path.join(HERE, folder, "*.py"))):
                name = os.path.basename(src)
                if name in own:
                    raise RuntimeError(f"{folder}/{name} would overwrite pytorch/panns/{name}")
                self.copy_file(src, os.path.join(dest, name))
        self.mkpath(os.path.join(dest, "metadata"))
        csv = os.path.join(HERE, "metadata", "class_labels_indices.csv")
        if os.path.isfile(csv):
            self.copy_file(csv, os.path.join(dest, "metadata", "class_labels_indices.csv"))


setup(
    version=_version(),
    packages=["panns"],
    package_dir={"panns": "pytorch/panns"},
    cmdclass={"build_py": BuildPanns},
)
