"""Constants of the official recipe and the AudioSet label list.

Official code reads ``metadata/class_labels_indices.csv`` relative to the current directory at
import time. Here nothing is read at import: ``config.labels``/``config.ids``/``config.classes_num``
and the lookup tables are resolved on first access, from the CSV *inside the repository*
(``<repo>/metadata/class_labels_indices.csv``), whatever the working directory. The CSV is the
AudioSet ontology file; ``scripts/fetch_metadata.sh`` (or ``python3 utils/download.py labels``)
fetches it from its official source. Any other label CSV in the same format can be passed around
explicitly with :func:`read_class_labels`.
"""
from __future__ import annotations

import csv
import functools
import io
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List

from panns.errors import PannsError

_HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(_HERE))   # <repo>/pytorch/panns/config.py (meaningful in a checkout)
_LABELS_NAME = os.path.join("metadata", "class_labels_indices.csv")


def _default_labels_csv() -> str:
    """The checkout's metadata/ CSV, else the package's own copy (``panns/metadata/``, a link to it in a checkout,
    the file itself in an installed wheel)."""
    for path in (os.path.join(REPO_ROOT, _LABELS_NAME), os.path.join(_HERE, _LABELS_NAME)):
        if os.path.isfile(path):
            return path
    return os.path.join(REPO_ROOT, _LABELS_NAME)


DEFAULT_LABELS_CSV = _default_labels_csv()
LABELS_CSV_URL = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv"

# Official recipe constants (utils/config.py of audioset_tagging_cnn).
sample_rate = 32000
clip_seconds = 10
clip_samples = sample_rate * clip_seconds
AUDIOSET_CLASSES_NUM = 527


@dataclass(frozen=True)
class ClassLabels:
    """The class list of a data set: ``ids[i]`` (AudioSet mid) and ``labels[i]`` (display name)."""

    ids: List[str]
    labels: List[str]

    @property
    def classes_num(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def id_to_ix(self) -> dict:
        return {mid: i for i, mid in enumerate(self.ids)}

    @functools.cached_property
    def lb_to_ix(self) -> dict:
        return {lb: i for i, lb in enumerate(self.labels)}


def read_class_labels(csv_path: str | None = None) -> ClassLabels:
    """Read a label CSV (header ``index,mid,display_name``; rows in index order).

    Raises PannsError with the fix when the file is missing or malformed.
    """
    path = csv_path or DEFAULT_LABELS_CSV
    if not os.path.isfile(path):
        if csv_path is None:
            raise PannsError(
                f"AudioSet label CSV not found at {path}; fetch it with "
                "'bash scripts/fetch_metadata.sh' (or pass --class_labels_csv)")
        raise PannsError(f"label CSV not found: {path}")
    return _read_class_labels_cached(os.path.abspath(path), os.path.getmtime(path))


# Encodings a CSV saved by a spreadsheet or an editor comes in, tried in order: UTF-8 (with or without a
# byte-order mark) first, UTF-16 only with its mark, then Windows-1252 and Latin-1 (which decode any bytes:
# a file that still holds control characters after them is not text).
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def read_text(path: str) -> str:
    """A text file (CSV) in UTF-8, UTF-16 with a BOM, Windows-1252 or Latin-1 -> str (newlines kept
    as in the file, for csv). Anything else is one PannsError saying to save it as UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    encodings = [enc for bom, enc in _BOMS if data.startswith(bom)] or ["utf-8", "cp1252", "latin-1"]
    for enc in encodings:
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        if _CONTROL.search(text):
            break   # NUL and other control characters: binary, or a wrong guess
        if enc not in ("utf-8", "utf-8-sig"):
            logging.getLogger(__name__).info("%s is not UTF-8; read as %s", path, enc)
        return text
    raise PannsError(f"{path} is not a text file in UTF-8, UTF-16 or Latin-1/Windows-1252; save it as UTF-8 CSV")


def read_csv_rows(path: str, **reader_options) -> List[List[str]]:
    """``csv.reader`` rows of a CSV in any encoding :func:`read_text` reads."""
    return list(csv.reader(io.StringIO(read_text(path), newline=""), **reader_options))


@functools.lru_cache(maxsize=8)
def _read_class_labels_cached(path: str, _mtime: float) -> ClassLabels:
    ids, labels = [], []
    rows = read_csv_rows(path, skipinitialspace=True)   # '0, /m/x, "a, b"': the quotes still group
    if not rows or [c.strip() for c in rows[0][:3]] != ["index", "mid", "display_name"]:
        raise PannsError(f"{path} is not a label CSV (expected header 'index,mid,display_name')")
    first_line: Dict[str, int] = {}
    n = 0   # the class index: rows without any text (a blank line an editor left, often at the end) are skipped
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) < 3:
            raise PannsError(f"{path}: line {line} has {len(row)} columns, expected 3")
        index, mid, name = (c.strip() for c in row[:3])   # 'index, mid, name' as some editors save it
        # The class index is the row position everywhere (targets, checkpoints); a column that says
        # otherwise would label every class after it wrongly.
        if not index.isdigit() or int(index) != n:
            raise PannsError(f"{path}: line {line} has index {index!r}, expected {n} (rows must be in index order, "
                             "starting at 0)")
        if mid in first_line:
            raise PannsError(f"{path}: line {line} repeats the mid {mid!r} of line {first_line[mid]}; "
                             "each class needs its own mid")
        first_line[mid] = line
        ids.append(mid)
        labels.append(name)
        n += 1
    if not labels:
        raise PannsError(f"{path} lists no classes")
    return ClassLabels(ids=ids, labels=labels)


if TYPE_CHECKING:   # the lazy module-level names below, typed for pyright/editors
    labels: List[str]
    ids: List[str]
    classes_num: int
    lb_to_ix: Dict[str, int]
    id_to_ix: Dict[str, int]
    ix_to_lb: Dict[int, str]
    ix_to_id: Dict[int, str]


def __getattr__(name: str):
    """Official module-level names (``labels``, ``ids``, ``classes_num``, ``lb_to_ix``, ...), lazily."""
    table = {"labels": "labels", "ids": "ids"}
    if name in table:
        return getattr(read_class_labels(), table[name])
    if name == "classes_num":
        try:
            return read_class_labels().classes_num
        except PannsError:
            return AUDIOSET_CLASSES_NUM
    if name in ("lb_to_ix", "id_to_ix"):
        return getattr(read_class_labels(), name)
    if name == "ix_to_lb":
        return dict(enumerate(read_class_labels().labels))
    if name == "ix_to_id":
        return dict(enumerate(read_class_labels().ids))
    if name == "full_samples_per_class":   # official config: the authors' clips per class, hard-coded
        raise AttributeError("config.full_samples_per_class (the per-class clip counts of the authors' own download) "
                             "is not shipped; count your training index: panns.plot_statistics.run_class_counts, "
                             "or create_indexes.read_index(path, load_positives=True)")
    raise AttributeError(f"module 'config' has no attribute {name!r}")
