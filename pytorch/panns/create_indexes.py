"""Index HDF5 files: which clip lives in which waveform HDF5 (official ``utils/create_indexes.py``).

An index file has one row per clip (official format, readable by the official loader):

    audio_name     (N,)       S20     b'Y<YTID>.wav' (wider only when clip ids are longer than YouTube's)
    target         (N, C)     bool    multi-hot labels
    hdf5_path      (N,)       S<n>    waveform HDF5 holding the clip (UTF-8; width = longest path, the
                                      official S200 silently truncated longer ones)
    index_in_hdf5  (N,)       int32   row of the clip in that file

Fixes against the official code:

* ``hdf5_path`` is stored **relative to the folder of the index file** (attribute
  ``hdf5_path_relative_to = 'index_dir'``), so a workspace can be moved or used from any working
  directory. :func:`resolve_hdf5_path` reads absolute paths as they are, and relative paths first
  relative to the index folder, then relative to the current directory (official files stored the
  path as typed, relative to the CWD of script 3).
* Rows of clips that were never packed (empty ``audio_name`` in official waveform files) are dropped.
* ``combine_full_indexes`` chooses part files by **file name** (``balanced_train*.h5`` and
  ``unbalanced_train*.h5``), not by a substring of the whole path (a workspace under
  ``/data/train_ws`` used to pull ``eval.h5`` into full_train), in sorted, deterministic order. A part index
  whose waveform HDF5 is gone (a deleted packed part, or one of an earlier split of the unbalanced CSV) is
  refused, not combined into rows that point nowhere; ``remove_stale_indexes`` (script 3 runs it on
  ``indexes/unbalanced_train``) removes such part indexes and names them.
* Outputs are written to a temporary name and renamed. An output that is one of the inputs, or an
  existing HDF5 of another kind (a waveform HDF5, embeddings, framewise outputs), is refused before
  anything is written (the official code overwrote it).

Usage (official command lines)::

    python3 utils/create_indexes.py create_indexes --waveforms_hdf5_path=W.h5 --indexes_hdf5_path=I.h5
    python3 utils/create_indexes.py combine_full_indexes --indexes_hdf5s_dir=DIR --full_indexes_hdf5_path=F.h5
    python3 utils/create_indexes.py remove_stale_indexes --indexes_hdf5s_dir=DIR
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import h5py
import numpy as np

from panns import packing, storage
from panns.errors import PannsError, run_cli
from panns.utilities import atomic_write, check_hdf5_output, disk_full_error, remove_stale_temps

logger = logging.getLogger(__name__)

PART_PREFIXES = ("balanced_train", "unbalanced_train")
_NAME_WIDTH = 20  # official 'audio_name' S20 ('Y' + 11-character YouTube id + '.wav'); wider only for longer ids
_FREE_MARGIN = 1 << 20  # bytes for HDF5 metadata on top of the data
_ROWS_PER_READ = 200_000  # bounds memory when copying big (full_train sized) arrays


def _relpath_for(target: str, index_path: str) -> str:
    """``target`` relative to the folder of ``index_path`` (absolute when no relative path exists)."""
    target = os.path.abspath(target)
    try:
        return os.path.relpath(target, os.path.dirname(os.path.abspath(index_path)))
    except ValueError:  # other drive on Windows
        return target


def resolve_hdf5_path(stored: str, index_dir: str) -> str:
    """Absolute path of a waveform HDF5 named in an index file stored in ``index_dir``.

    Absolute paths are kept; relative ones are tried relative to ``index_dir`` (our files), then
    relative to the current directory (official files). If neither exists the index-relative
    candidate is returned, so the eventual error names a sensible path.
    """
    if os.path.isabs(stored):
        return stored
    candidate = os.path.normpath(os.path.join(index_dir, stored))
    if os.path.exists(candidate):
        return candidate
    if os.path.exists(stored):
        return os.path.abspath(stored)
    return candidate


def missing_waveform_files(stored: Sequence[str], index_dir: str) -> List[str]:
    """The waveform HDF5s among ``stored`` (an index file's ``hdf5_path`` values, resolved by
    :func:`resolve_hdf5_path`) that are not there: a packed part deleted, e.g. one of an earlier split."""
    return [p for p in (resolve_hdf5_path(s, index_dir) for s in stored) if not os.path.isfile(p)]


def _decode(x) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


@dataclass
class IndexTable:
    """An index file in memory (targets optional, they are big for full_train).

    ``hdf5_paths[path_codes[i]]`` is the resolved absolute waveform HDF5 path of row i.
    ``positives`` (optional) = (rows, classes) of every True target entry, sorted by row.
    """

    indexes_hdf5_path: str
    audio_names: np.ndarray      # (N,) fixed-width bytes
    path_codes: np.ndarray       # (N,) int32 into hdf5_paths
    hdf5_paths: List[str]        # unique resolved paths
    indexes_in_hdf5: np.ndarray  # (N,) int64
    classes_num: int
    targets: Optional[np.ndarray] = None  # (N, C) bool
    positives: Optional[tuple] = None     # ((P,) int64 rows, (P,) int64 classes)

    def __len__(self) -> int:
        return len(self.audio_names)


def _as_fixed_bytes(chunk: np.ndarray) -> np.ndarray:
    if chunk.dtype.kind == "S":
        return chunk
    return np.array([x if isinstance(x, bytes) else str(x).encode() for x in chunk], dtype="S")


def _unique_codes(ds: h5py.Dataset) -> tuple:
    """(unique strings, int32 codes) of a string dataset (fixed-width or variable-length)."""
    if ds.shape[0] == 0:
        return [], np.zeros(0, dtype=np.int32)
    arr = _as_fixed_bytes(ds[:])
    uniq, codes = np.unique(arr, return_inverse=True)
    return [_decode(u) for u in uniq], codes.astype(np.int32).reshape(-1)


def open_hdf5(path: str, what: str, hint: str = "") -> h5py.File:
    """``path`` opened read-only; a missing or unreadable file is one PannsError naming ``what``."""
    if not os.path.isfile(path):
        raise PannsError(f"{what} not found: {path}{hint}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise PannsError(f"cannot open {what} {path}: {e}") from None


def open_waveform_hdf5(path: str, hint: str = "") -> h5py.File:
    """A waveform HDF5 opened read-only, checked to be one: either storage layout (pcm16 or flac), the
    'audio_name' and 'target' datasets, and one name, target row and waveform row per clip; else one
    PannsError naming the file."""
    hf = open_hdf5(path, "waveform HDF5", hint)
    problem = packing.waveform_hdf5_problem(hf)
    if problem:
        hf.close()
        if problem.startswith("no "):
            raise PannsError(f"{path} is not a waveform HDF5 ({problem})")
        raise PannsError(f"{path} is an inconsistent waveform HDF5 ({problem}); re-pack it")
    return hf


_INDEX_KEYS = ("audio_name", "hdf5_path", "index_in_hdf5", "target")


def _check_index_file(hf: h5py.File, path: str) -> None:
    """PannsError naming ``path`` unless the open file has the datasets of an index file."""
    missing = [k for k in _INDEX_KEYS if k not in hf]
    if missing:
        hint = " (a waveform HDF5? index it first with create_indexes)" if storage.PCM_KEY in hf or \
            storage.FLAC_KEY in hf else ""
        raise PannsError(f"{path} is not an index file (missing datasets: {', '.join(missing)}){hint}")


def _check_index_output(path: str, inputs: Sequence[str]) -> None:
    """Refuse an index output that is a folder, one of ``inputs``, an existing file that is not HDF5, or an
    existing HDF5 of another kind (packed clips, embeddings, framewise outputs that an index written there
    would replace): ``utilities.check_hdf5_output``. An existing index file is replaced."""
    check_hdf5_output(path, "index", inputs, "index file", "--indexes_hdf5_path / --full_indexes_hdf5_path")


def read_index(indexes_hdf5_path: str, load_targets: bool = False, keep_empty: bool = False,
               load_positives: bool = False) -> IndexTable:
    """Load an index HDF5 (ours or official). Rows with an empty ``audio_name`` are dropped unless asked.

    ``load_positives`` gives the (row, class) pairs of all labels without holding the (N, C) matrix
    (read in blocks; ~1 GB as bool for full AudioSet).
    """
    with open_hdf5(indexes_hdf5_path, "index file", " (create it with utils/create_indexes.py)") as hf:
        _check_index_file(hf, indexes_hdf5_path)
        names = _as_fixed_bytes(hf["audio_name"][:])
        uniq, codes = _unique_codes(hf["hdf5_path"])
        idx = hf["index_in_hdf5"][:].astype(np.int64)
        n, classes_num = hf["target"].shape
        targets = np.empty((n, classes_num), dtype=bool) if load_targets else None
        pos_rows, pos_cols = [], []
        if load_targets or load_positives:
            for s in range(0, n, _ROWS_PER_READ):
                block = hf["target"][s:s + _ROWS_PER_READ]
                if targets is not None:
                    targets[s:s + len(block)] = block
                if load_positives:
                    r, c = np.nonzero(block)
                    pos_rows.append(r + s)
                    pos_cols.append(c)
    index_dir = os.path.dirname(os.path.abspath(indexes_hdf5_path))
    paths = [resolve_hdf5_path(p, index_dir) for p in uniq]
    positives = None
    if load_positives:
        positives = (np.concatenate(pos_rows).astype(np.int64) if pos_rows else np.zeros(0, np.int64),
                     np.concatenate(pos_cols).astype(np.int64) if pos_cols else np.zeros(0, np.int64))
    if not keep_empty:
        keep = names != b""
        if not keep.all():
            names, codes, idx = names[keep], codes[keep], idx[keep]
            targets = targets[keep] if targets is not None else None
            if positives is not None:
                new_row = np.cumsum(keep) - 1
                ok = keep[positives[0]]
                positives = (new_row[positives[0][ok]], positives[1][ok])
    return IndexTable(indexes_hdf5_path, names, codes, paths, idx, int(classes_num), targets, positives)


def _path_dtype(paths) -> np.dtype:
    """Fixed-width bytes wide enough for every path (official S200 truncated longer ones)."""
    return np.dtype(f"S{max([1] + [len(p.encode('utf-8')) for p in paths])}")


def _write_index_datasets(hf: h5py.File, n: int, classes_num: int, name_dtype, path_dtype, resizable: bool) -> None:
    kw = dict(maxshape=(None,), chunks=True) if resizable else {}
    kw2 = dict(maxshape=(None, classes_num), chunks=True) if resizable else {}
    hf.create_dataset("audio_name", shape=(n,), dtype=name_dtype, **kw)
    hf.create_dataset("target", shape=(n, classes_num), dtype=bool, **kw2)
    hf.create_dataset("hdf5_path", shape=(n,), dtype=path_dtype, **kw)
    hf.create_dataset("index_in_hdf5", shape=(n,), dtype=np.int32, **kw)
    hf.attrs["hdf5_path_relative_to"] = "index_dir"


def _prepare_output(path: str, needed: int) -> None:
    """Remove temporaries of killed runs; refuse to start without room for ``needed`` bytes (+ margin):
    h5py can crash the process when the disk fills while it writes."""
    remove_stale_temps(path)
    needed += _FREE_MARGIN
    if shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < needed:
        raise disk_full_error(path, needed)


@contextlib.contextmanager
def _written(path: str) -> Iterator[str]:
    """``atomic_write`` that also recognises h5py's disk-full errors (they carry no errno)."""
    try:
        with atomic_write(path) as tmp:
            yield tmp
    except OSError as e:
        if "No space left" in str(e):
            raise disk_full_error(path) from e
        raise


def _first_rows(names: np.ndarray, rows: np.ndarray, seen: Optional[set] = None) -> np.ndarray:
    """The entries of ``rows`` whose name is not in ``seen`` nor earlier in ``rows`` (``seen`` grows)."""
    seen = set() if seen is None else seen
    keep = []
    for r in rows:
        name = bytes(names[r])
        if name not in seen:
            seen.add(name)
            keep.append(r)
    return np.asarray(keep, dtype=rows.dtype)


def create_indexes(waveforms_hdf5_path: str, indexes_hdf5_path: str, keep_duplicates: bool = False) -> int:
    """Write the index of one waveform HDF5; returns the number of rows (packed clips).

    A clip id packed twice (a repeated CSV row, the same clip in two shards) is indexed once, its
    first row, and reported: sampling and evaluation would count it twice. ``keep_duplicates``:
    index every row (official)."""
    _check_index_output(indexes_hdf5_path, [waveforms_hdf5_path])
    with open_waveform_hdf5(waveforms_hdf5_path) as src:
        names = src["audio_name"][:]
        targets = src["target"][:]
    rows = np.flatnonzero(names != b"")  # official files keep empty rows for missing clips
    if not keep_duplicates:
        unique = _first_rows(names, rows)
        if len(unique) < len(rows):
            print(f"{len(rows) - len(unique)} rows of {waveforms_hdf5_path} repeat a clip id packed before; "
                  "indexed once (--keep_duplicates: every row)")
        rows = unique
    if len(rows) == 0:
        raise PannsError(f"{waveforms_hdf5_path} holds no clips; nothing to index (re-pack it: were the audio "
                         "files there?)")
    os.makedirs(os.path.dirname(os.path.abspath(indexes_hdf5_path)), exist_ok=True)
    rel = _relpath_for(waveforms_hdf5_path, indexes_hdf5_path)
    path_dtype = _path_dtype([rel])
    _prepare_output(indexes_hdf5_path, len(rows) * (names.dtype.itemsize + targets.shape[1] + path_dtype.itemsize + 4))
    with _written(indexes_hdf5_path) as tmp:
        with h5py.File(tmp, "w") as hf:
            _write_index_datasets(hf, len(rows), targets.shape[1], names.dtype, path_dtype, resizable=False)
            hf["audio_name"][:] = names[rows]
            hf["target"][:] = targets[rows].astype(bool)
            hf["hdf5_path"][:] = np.full(len(rows), rel.encode("utf-8"), dtype=path_dtype)
            hf["index_in_hdf5"][:] = rows.astype(np.int32)
    print(f"Write to {indexes_hdf5_path}")
    return len(rows)


def find_part_indexes(indexes_hdf5s_dir: str, exclude: Optional[str] = None) -> List[str]:
    """Training part files under a folder: basename starts with balanced_train/unbalanced_train, ends .h5.

    Sorted by path relative to the folder (balanced_train.h5 first, then the unbalanced parts in order).
    """
    found = []
    excl = os.path.abspath(exclude) if exclude else None
    for root, _dirs, files in os.walk(indexes_hdf5s_dir):
        for name in files:
            if name.endswith(".h5") and name.startswith(PART_PREFIXES):
                path = os.path.join(root, name)
                if os.path.abspath(path) != excl:
                    found.append(path)
    return sorted(found, key=lambda p: os.path.relpath(p, indexes_hdf5s_dir).replace(os.sep, "/"))


def remove_stale_indexes(indexes_hdf5s_dir: str) -> List[str]:
    """Remove the part index files under a folder whose waveform HDF5s are all gone (the packed part was deleted,
    e.g. one of an earlier split of the unbalanced CSV), which :func:`combine_full_indexes` refuses; returns them.

    Script 3 runs it on ``indexes/unbalanced_train``, where it writes one index per packed part. Files that are not
    index files, or cannot be read, are left for ``combine_full_indexes`` to name."""
    removed = []
    for path in find_part_indexes(indexes_hdf5s_dir) if os.path.isdir(indexes_hdf5s_dir) else []:
        try:
            with h5py.File(path, "r") as hf:
                stored = _unique_codes(hf["hdf5_path"])[0] if "hdf5_path" in hf else []
        except (OSError, ValueError):
            continue
        index_dir = os.path.dirname(os.path.abspath(path))
        if stored and len(missing_waveform_files(stored, index_dir)) == len(stored):
            os.remove(path)
            removed.append(path)
    if removed:
        print(f"Removed {len(removed)} index files whose packed waveforms are gone (deleted, or parts of an earlier "
              f"split): {packing.name_paths(removed, indexes_hdf5s_dir)}")
    return removed


def combine_full_indexes(indexes_hdf5s_dir: str, full_indexes_hdf5_path: str, keep_duplicates: bool = False) -> int:
    """Concatenate the training part indexes under a folder into one index; returns its row count.

    A clip id in several parts (balanced and unbalanced, or two shards) is kept once, from the first
    part, and reported; ``keep_duplicates``: every row (official). A part whose waveform HDF5 is gone (a deleted
    packed part, or one of an earlier split) is refused before anything is written: its rows would point nowhere."""
    if not os.path.isdir(indexes_hdf5s_dir):
        raise PannsError(f"indexes folder not found: {indexes_hdf5s_dir}")
    paths = find_part_indexes(indexes_hdf5s_dir)
    # An output named like a part (balanced_train.h5 in the folder) would replace that part's index.
    _check_index_output(full_indexes_hdf5_path, paths)
    print(f"Total {len(paths)} hdf5 to combine.")
    if not paths:
        raise PannsError(f"no balanced_train*.h5 / unbalanced_train*.h5 index files under {indexes_hdf5s_dir}")
    os.makedirs(os.path.dirname(os.path.abspath(full_indexes_hdf5_path)), exist_ok=True)
    # First pass (no rows): the path and name columns' widths must be known before writing.
    rel_paths = {}
    name_width, sizes = _NAME_WIDTH, []
    for path in paths:
        with open_hdf5(path, "index file") as hf:
            _check_index_file(hf, path)
            try:
                uniq, _ = _unique_codes(hf["hdf5_path"])
                name_width = max(name_width, _as_fixed_bytes(hf["audio_name"][:]).dtype.itemsize)
                n, classes = hf["target"].shape
            except (OSError, ValueError) as e:
                raise PannsError(f"cannot read index file {path}: {' '.join(str(e).split())}") from None
        sizes.append((n, classes))
        index_dir = os.path.dirname(os.path.abspath(path))
        gone = missing_waveform_files(uniq, index_dir)
        if gone:
            raise PannsError(f"index file {path} points at {gone[0]}, which is gone (a deleted packed part, or one of "
                             "an earlier split?): remove the index file (scripts/3_create_training_indexes.sh removes "
                             "such unbalanced part indexes) or pack the part again; nothing was written")
        rel_paths[path] = [_relpath_for(resolve_hdf5_path(p, index_dir), full_indexes_hdf5_path) for p in uniq]
    path_dtype = _path_dtype([p for v in rel_paths.values() for p in v])
    _prepare_output(full_indexes_hdf5_path,
                    sum(n * (classes + name_width + path_dtype.itemsize + 4) for n, classes in sizes))
    n = 0
    classes_num = None
    seen: set = set()
    repeated = 0
    with _written(full_indexes_hdf5_path) as tmp:
        with h5py.File(tmp, "w") as full:
            for path in paths:
                print(path)
                part = read_index(path, load_targets=True)
                if classes_num is None:
                    classes_num = part.classes_num
                    _write_index_datasets(full, 0, classes_num, f"S{name_width}", path_dtype, resizable=True)
                elif part.classes_num != classes_num:
                    raise PannsError(f"{path} has {part.classes_num} classes, earlier parts have {classes_num}")
                names = part.audio_names
                rel = np.array([_relpath_for(p, full_indexes_hdf5_path).encode("utf-8") for p in part.hdf5_paths],
                               dtype=path_dtype) if part.hdf5_paths else np.zeros(0, path_dtype)
                if not keep_duplicates:
                    every = np.arange(len(part))
                    keep = _first_rows(names, every, seen)
                    if len(keep) < len(every):
                        repeated += len(every) - len(keep)
                        part = dataclasses.replace(part, audio_names=part.audio_names[keep],
                                                   path_codes=part.path_codes[keep],
                                                   indexes_in_hdf5=part.indexes_in_hdf5[keep],
                                                   targets=part.targets[keep])
                        names = part.audio_names
                m = n + len(part)
                for key in ("audio_name", "hdf5_path", "index_in_hdf5"):
                    full[key].resize((m,))
                full["target"].resize((m, classes_num))
                if len(part):
                    full["audio_name"][n:m] = names
                    full["target"][n:m] = part.targets
                    full["hdf5_path"][n:m] = rel[part.path_codes]
                    full["index_in_hdf5"][n:m] = part.indexes_in_hdf5.astype(np.int32)
                n = m
    if repeated:
        print(f"{repeated} rows repeat a clip id of an earlier part; kept once (--keep_duplicates: every row)")
    print(f"Write combined full hdf5 to {full_indexes_hdf5_path}")
    return n


def main(argv: Optional[Sequence[str]] = None) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    p = sub.add_parser("create_indexes", help="index one waveform HDF5")
    p.add_argument("--waveforms_hdf5_path", type=str, required=True, help="waveform HDF5 to index")
    p.add_argument("--indexes_hdf5_path", type=str, required=True, help="index HDF5 to write")
    p.add_argument("--keep_duplicates", action="store_true",
                   help="index every row, a clip id packed twice included (official; default: once, reported)")
    p = sub.add_parser("remove_stale_indexes",
                       help="remove part index files whose packed waveform HDF5s are gone (scripts/3 runs it)")
    p.add_argument("--indexes_hdf5s_dir", type=str, required=True,
                   help="folder searched (recursively) for balanced_train*.h5 and unbalanced_train*.h5 indexes")
    p = sub.add_parser("combine_full_indexes", help="combine balanced + unbalanced part indexes into full_train")
    p.add_argument("--indexes_hdf5s_dir", type=str, required=True,
                   help="folder searched (recursively) for balanced_train*.h5 and unbalanced_train*.h5 indexes")
    p.add_argument("--full_indexes_hdf5_path", type=str, required=True, help="combined index HDF5 to write")
    p.add_argument("--keep_duplicates", action="store_true",
                   help="keep a clip id found in several parts in each (official; default: once, reported)")
    args = parser.parse_args(argv)
    if args.mode == "create_indexes":
        create_indexes(args.waveforms_hdf5_path, args.indexes_hdf5_path, args.keep_duplicates)
    elif args.mode == "remove_stale_indexes":
        remove_stale_indexes(args.indexes_hdf5s_dir)
    elif args.mode == "combine_full_indexes":
        combine_full_indexes(args.indexes_hdf5s_dir, args.full_indexes_hdf5_path, args.keep_duplicates)
    else:
        parser.error("choose a sub-command: create_indexes, combine_full_indexes or remove_stale_indexes")


if __name__ == "__main__":
    run_cli(main)
