"""Labelled clips for fine-tuning: find them, decode them once into an HDF5 cache, serve fixed-length crops.

A data set is described in one of three ways (exactly one per run):

* ``--dataset_dir DIR``: one sub-folder per class, ``DIR/<class>/**/<clip>.<audio ext>``. If ``DIR`` instead
  holds a ``train`` (or ``training``) folder and an evaluation folder (``eval``, ``val``, ``validation``,
  ``valid``, ``dev`` or ``test``, in that order of preference; any case), each with class sub-folders, those are
  the two splits; otherwise a stratified ``eval_fraction`` of every class is held out (seeded, so every run with
  the same seed holds out the same clips). Folders named like splits in any other layout are refused: read as
  class folders they would train a "which split" classifier.
* ``--train_csv`` [``--eval_csv``]: rows ``path,label[,label...]`` (an optional header line whose first cell
  names a file column, as in ``--meta_csv``; relative paths are taken from ``--audio_dir`` or else the CSV's own
  folder). A path on several rows (one row per label) is one clip with the labels of all its rows. Without
  ``--eval_csv`` the same stratified hold-out is used.
* ``--meta_csv`` with a header and a fold column, ``--holdout_fold K`` being the eval split (cross-validation).
  The file column is ``filename``/``slice_file_name``/``path``/``file``/``fname``/...; the label column is
  ``category``/``class``/``label``, or an integer ``target``/``classID`` (with only integers the classes are
  named by them). ESC-50: ``--meta_csv ESC-50/meta/esc50.csv --audio_dir ESC-50/audio`` (``--audio_dir``
  defaults to ``<csv folder>/../audio`` and then the CSV folder); UrbanSound8K's ``audio/fold<k>/`` layout is
  found automatically.

Decoding: every file of both splits is decoded once with ``audio_io.load_audio`` (mono, resampled to the
model's rate) and stored as int16 (official quantisation) in ``<cache_dir>/clips_<rate>Hz_<key>.h5``. The key
hashes the sorted absolute paths with their sizes and modification times and the sample rate, so a changed
file or a new file list builds a new cache, and other runs on the same files (another learning rate, another
hold-out fold, another model at the same rate) reuse it. Clips are stored at their full length (not cut to the
clip length), so one cache also serves every ``--clip_seconds``: cropping happens when a clip is read:

* training: a clip longer than the clip length is cropped at a uniformly random offset (a new crop each time
  it is drawn: cheap augmentation); a shorter one is zero-padded at the end;
* evaluation (and linear-probe embeddings): the first ``clip_samples`` samples, zero-padded at the end, i.e.
  the official ``pad_or_truncate``; deterministic, so scores are comparable between runs.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch
from tqdm import tqdm

from panns import config
from panns.audio_io import AUDIO_EXTENSIONS, is_audio_file, load_audio
from panns.data_generator import ResumableBatchSampler
from panns.errors import AudioDecodeError, PannsError
from panns.utilities import (atomic_write, check_hdf5_kind, check_utf8_names, die_with_parent, float32_to_int16,
                             int16_to_float32, remove_stale_temps)

logger = logging.getLogger(__name__)

TRAIN_FOLDER_NAMES = ("train", "training")
EVAL_FOLDER_NAMES = ("eval", "val", "validation", "valid", "dev", "test")   # in order of preference
DEFAULT_EVAL_FRACTION = 0.2   # share of every class held out when the data names no evaluation split
CACHE_VERSION = 1


# ------------------------------------------------------------------------------------------------------------
# Data set description
# ------------------------------------------------------------------------------------------------------------

@dataclass
class Split:
    """One split: ``paths[i]`` (absolute) has multi-hot ``targets[i]`` of shape (classes_num,)."""

    paths: List[str]
    targets: np.ndarray  # (N, classes_num) float32

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class LabelledData:
    """Class names plus a train and an eval split; ``multi_label`` if any clip has more than one label."""

    labels: List[str]
    train: Split
    eval: Split
    name: str  # short data set name, used in the run folder name
    source: str  # one-line description for the log
    warnings: List[str] = field(default_factory=list)

    @property
    def classes_num(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        return bool((self.train.targets.sum(1) > 1).any() or (self.eval.targets.sum(1) > 1).any())


Item = Tuple[str, List[str]]  # (absolute path, label names)


# A CSV's file column (and a list CSV's optional header cell): ESC-50, UrbanSound8K, FSDKaggle, ...
_FILE_COLS = ("filename", "slice_file_name", "path", "file", "file_name", "audio_path", "fname", "filepath",
              "file_path")


def _audio_files(folder: str) -> List[str]:
    out = []
    # Linked folders are followed, each real folder once: a link to a folder above (dog/again -> ../dog) read
    # the same clips once per level up to the kernel's link limit, 40 times, into both splits.
    seen = {os.path.realpath(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = {d: os.path.realpath(os.path.join(root, d)) for d in dirs}
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and real[d] not in seen)
        seen.update(real[d] for d in dirs)
        out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and is_audio_file(f))
    return out


def _class_folders(folder: str) -> List[str]:
    return sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def _scan_class_folders(folder: str) -> List[Item]:
    """Items of ``folder/<class>/**``; an empty class folder is an error (it is usually a mistake)."""
    classes = _class_folders(folder)
    if not classes:
        loose = [f for f in os.listdir(folder) if is_audio_file(f)]
        hint = f" (it holds {len(loose)} audio files directly: put them in one sub-folder per class)" if loose else ""
        raise PannsError(f"no class sub-folders in {folder}{hint}; expected {folder}/<class name>/<clip>.wav")
    items: List[Item] = []
    for c in classes:
        files = _audio_files(os.path.join(folder, c))
        if not files:
            raise PannsError(f"class folder {os.path.join(folder, c)} has no audio files "
                             f"({', '.join(AUDIO_EXTENSIONS)}); add clips or remove the folder")
        items.extend((os.path.abspath(p), [c]) for p in files)
    return items


def split_folders(dataset_dir: str) -> Optional[Tuple[str, str]]:
    """``(<train folder>, <eval folder>)`` when ``dataset_dir`` holds the splits as folders of class folders, else
    None (one set of class folders, split by a hold-out; or not a folder at all). Split-named folders in any other
    layout (``Train/`` beside ``Test/`` of loose clips, a ``train/`` alone, class folders beside the splits) are
    refused: read as class folders they would train a classifier of splits."""
    if not os.path.isdir(dataset_dir):
        return None
    subs = _class_folders(dataset_dir)
    named = [d for d in subs if d.lower() in TRAIN_FOLDER_NAMES + EVAL_FOLDER_NAMES]
    if not named:
        return None
    with_classes = [d for d in named if _class_folders(os.path.join(dataset_dir, d))]
    train = [d for d in with_classes if d.lower() in TRAIN_FOLDER_NAMES]
    evals = sorted((d for d in with_classes if d.lower() in EVAL_FOLDER_NAMES),
                   key=lambda d: EVAL_FOLDER_NAMES.index(d.lower()))
    if len(train) == 1 and evals and set(subs) <= set(named):
        return train[0], evals[0]
    raise PannsError(f"--dataset_dir {dataset_dir} holds folders named like splits ({', '.join(named)}) but not "
                     f"the split layout: one {'|'.join(TRAIN_FOLDER_NAMES)}/<class>/ folder and an evaluation folder "
                     f"({'|'.join(EVAL_FOLDER_NAMES)})/<class>/, nothing else beside them; read as class folders they "
                     "would train a classifier of splits. Arrange them so, point --dataset_dir at the training "
                     "folder (a share of each class is then held out), or rename a class folder named like a split")


def from_folder(dataset_dir: str, eval_fraction: float = DEFAULT_EVAL_FRACTION, seed: int = 0) -> LabelledData:
    """``dataset_dir/<class>/...`` (hold-out split) or ``dataset_dir/{train,eval|val|test}/<class>/...``."""
    if not os.path.isdir(dataset_dir):
        raise PannsError(f"--dataset_dir {dataset_dir} is not a folder")
    name = os.path.basename(os.path.normpath(os.path.abspath(dataset_dir)))
    splits = split_folders(dataset_dir)
    if splits is not None:
        train = _scan_class_folders(os.path.join(dataset_dir, splits[0]))
        evl = _scan_class_folders(os.path.join(dataset_dir, splits[1]))
        data = _build(train, evl, name, f"folders {dataset_dir}/{splits[0]} and {dataset_dir}/{splits[1]}")
        unused = [d for d in _class_folders(dataset_dir) if d not in splits]
        if unused:   # train/, val/, test/: the test split stays untouched
            data.warnings.append(f"{', '.join(os.path.join(dataset_dir, d) for d in unused)} not used (the "
                                 f"evaluation split is {os.path.join(dataset_dir, splits[1])})")
        return data
    items = _scan_class_folders(dataset_dir)
    train, evl = stratified_split(items, eval_fraction, seed)
    return _build(train, evl, name,
                  f"class folders in {dataset_dir} ({eval_fraction:.0%} held out for eval, seed {seed})")


def _resolve(path: str, base_dirs: Sequence[str]) -> str:
    path = os.path.expanduser(path.strip())
    if os.path.isabs(path):
        return path
    for b in base_dirs:
        cand = os.path.join(b, path)
        if os.path.exists(cand):
            return os.path.abspath(cand)
    return os.path.abspath(os.path.join(base_dirs[0], path))


def read_list_csv(csv_path: str, audio_dir: Optional[str] = None) -> List[Item]:
    """Rows ``path,label[,label...]``; an optional header row; blank cells and blank lines are ignored."""
    if not os.path.isfile(csv_path):
        raise PannsError(f"CSV not found: {csv_path}")
    rows = [r for r in config.read_csv_rows(csv_path)   # UTF-8, UTF-16 or Latin-1 (a spreadsheet's export)
            if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    bases = [audio_dir] if audio_dir else []
    bases.append(os.path.dirname(os.path.abspath(csv_path)))
    if rows and rows[0][0].strip().lower() in _FILE_COLS:
        rows = rows[1:]
    labels_of: Dict[str, List[str]] = {}   # in first-row order; a path on several rows gets all their labels
    for n, row in enumerate(rows):
        labels = [c.strip() for c in row[1:] if c.strip()]
        if not labels:
            raise PannsError(f"{csv_path}: row {n + 1} ({row[0].strip()}) has no label; "
                             "expected 'path,label[,label...]'")
        have = labels_of.setdefault(_resolve(row[0], bases), [])
        have.extend(lb for lb in labels if lb not in have)
    if not labels_of:
        raise PannsError(f"{csv_path} lists no clips; expected rows 'path,label[,label...]'")
    if len(labels_of) < len(rows):
        logger.info("%s: %d rows name %d clips: the labels of a clip's rows are merged", csv_path, len(rows),
                    len(labels_of))
    return list(labels_of.items())


def from_csv_lists(train_csv: str, eval_csv: Optional[str] = None, audio_dir: Optional[str] = None,
                   eval_fraction: float = DEFAULT_EVAL_FRACTION, seed: int = 0) -> LabelledData:
    train = read_list_csv(train_csv, audio_dir)
    name = os.path.splitext(os.path.basename(train_csv))[0]
    if eval_csv:
        return _build(train, read_list_csv(eval_csv, audio_dir), name, f"{train_csv} (train) and {eval_csv} (eval)")
    tr, ev = stratified_split(train, eval_fraction, seed)
    return _build(tr, ev, name, f"{train_csv} ({eval_fraction:.0%} held out for eval, seed {seed})")


_LABEL_COLS = ("category", "class", "label", "labels", "class_name")
_INDEX_COLS = ("target", "classid", "class_id", "label_id")


def from_meta_csv(meta_csv: str, holdout_fold: Optional[str], audio_dir: Optional[str] = None) -> LabelledData:
    """ESC-50-style metadata with a fold column; ``holdout_fold`` is the eval split, the other folds train."""
    if not os.path.isfile(meta_csv):
        raise PannsError(f"metadata CSV not found: {meta_csv}")
    reader = csv.DictReader(io.StringIO(config.read_text(meta_csv), newline=""))
    cols = {c.strip().lower(): c for c in reader.fieldnames or () if c is not None}
    # Cells as stripped text ('' for a cell the row lacks); blank rows (a spreadsheet's trailing ',,,') skipped.
    numbered = [(reader.line_num, {k: (v or "").strip() for k, v in r.items() if isinstance(k, str)})
                for r in reader]
    numbered = [(n, r) for n, r in numbered if any(r.values())]
    rows = [r for _n, r in numbered]
    if not rows:
        raise PannsError(f"{meta_csv} has no rows")

    def pick(names):
        return next((cols[n] for n in names if n in cols), None)

    fcol, lcol, icol, foldcol = pick(_FILE_COLS), pick(_LABEL_COLS), pick(_INDEX_COLS), pick(("fold",))
    if fcol is None or foldcol is None or (lcol is None and icol is None):
        raise PannsError(f"{meta_csv}: need a file column ({'/'.join(_FILE_COLS)}), a 'fold' column and a label column "
                         f"({'/'.join(_LABEL_COLS + _INDEX_COLS)}); found {', '.join(cols.values())}")
    for n, r in numbered:   # a short row or an empty cell: named, not a traceback nor a clip put in training
        empty = [c for c in (fcol, foldcol, lcol, icol) if c is not None and not r[c]]
        if empty:
            raise PannsError(f"{meta_csv}: line {n} ({r[fcol] or 'no file name'}) has no "
                             f"{' and no '.join(repr(c) for c in empty)} value")
    folds = sorted({r[foldcol] for r in rows}, key=lambda s: (len(s), s))
    if holdout_fold is None:
        raise PannsError(f"--meta_csv needs --holdout_fold (the eval fold), one of: {', '.join(folds)}")
    holdout_fold = str(holdout_fold).strip()
    if holdout_fold not in folds:
        raise PannsError(f"--holdout_fold {holdout_fold} is not a fold of {meta_csv}; folds: {', '.join(folds)}")
    csv_dir = os.path.dirname(os.path.abspath(meta_csv))
    bases = [audio_dir] if audio_dir else [os.path.join(os.path.dirname(csv_dir), "audio"), csv_dir]

    # Class order: by integer index when the CSV has one (ESC-50 'target', UrbanSound8K 'classID'), else by name.
    if icol is not None:
        index_of: Dict[str, int] = {}
        name_of: Dict[int, str] = {}
        for n, r in numbered:
            try:
                index = int(r[icol])
            except ValueError:
                raise PannsError(f"{meta_csv}: column '{icol}' must hold integer class indexes; line {n} "
                                 f"({r[fcol]}) has {r[icol]!r}") from None
            name = r[lcol] if lcol else r[icol]
            # one index per name and one name per index, else the order is the first row's guess
            for key, value, seen, what in ((name, index, index_of, "class"), (index, name, name_of, icol)):
                if seen.setdefault(key, value) != value:
                    raise PannsError(f"{meta_csv}: {what} {key!r} has two values in the '"
                                     f"{icol if what == 'class' else lcol}' column, {seen[key]} and {value} "
                                     f"(row of {r[fcol]}); each class needs one '{icol}' index")
        names = sorted(index_of, key=lambda n: (index_of[n], n))
    else:
        names = sorted({r[lcol] for r in rows})

    train: List[Item] = []
    evl: List[Item] = []
    for r in rows:
        fold = r[foldcol]
        rel = r[fcol]
        path = _resolve(rel, bases)
        if not os.path.exists(path) and not os.path.isabs(rel):  # UrbanSound8K: audio/fold<k>/<file>
            alt = _resolve(os.path.join(f"fold{fold}", rel), bases)
            path = alt if os.path.exists(alt) else path
        label = r[lcol] if lcol else r[icol]
        (evl if fold == holdout_fold else train).append((path, [label]))
    name = os.path.splitext(os.path.basename(meta_csv))[0] + f"_fold{holdout_fold}"
    return _build(train, evl, name, f"{meta_csv}, fold {holdout_fold} held out ({len(folds)} folds)", names)


def stratified_split(items: List[Item], eval_fraction: float, seed: int) -> Tuple[List[Item], List[Item]]:
    """Hold out ``round(eval_fraction * n)`` clips of every class (at least 1 when the class has 2 or more)."""
    if not 0.0 < eval_fraction < 1.0:
        raise PannsError(f"--eval_fraction must be in (0, 1), got {eval_fraction}")
    by_class: Dict[str, List[int]] = {}
    for i, (_p, labels) in enumerate(items):
        by_class.setdefault(labels[0], []).append(i)
    rs = np.random.RandomState(seed)
    eval_ix = set()
    for c in sorted(by_class):
        ix = by_class[c]
        k = int(round(eval_fraction * len(ix)))
        k = min(max(k, 1 if len(ix) >= 2 else 0), len(ix) - 1)
        eval_ix.update(rs.permutation(ix)[:k].tolist())
    # Multi-label rows are split by their first label: a clip held out for it may carry the only copies of a
    # rarer label, which training would then never see. It trains instead (that label has no eval clip: a warning).
    seen = {lb for i, (_p, labels) in enumerate(items) if i not in eval_ix for lb in labels}
    for i in sorted(eval_ix):
        if not set(items[i][1]) <= seen:
            eval_ix.discard(i)
            seen.update(items[i][1])
    return ([it for i, it in enumerate(items) if i not in eval_ix], [it for i, it in enumerate(items) if i in eval_ix])


def _build(train: List[Item], evl: List[Item], name: str, source: str,
           labels: Optional[List[str]] = None) -> LabelledData:
    if labels is None:
        labels = sorted({lb for _p, lbs in train for lb in lbs})
    warnings = []
    if len(labels) < 2:
        raise PannsError(f"{source}: found {len(labels)} class ({', '.join(labels) or 'none'}); fine-tuning a "
                         "classifier needs at least 2 classes")
    if not train:
        raise PannsError(f"{source}: no training clips")
    if not evl:
        raise PannsError(f"{source}: no evaluation clips (add clips, or more than one clip per class)")
    lb_to_ix = {lb: i for i, lb in enumerate(labels)}
    unknown = sorted({lb for _p, lbs in evl for lb in lbs if lb not in lb_to_ix})
    if unknown:
        raise PannsError(f"{source}: eval labels not seen in training: {', '.join(unknown[:5])}"
                         + (" ..." if len(unknown) > 5 else ""))
    counts = np.zeros(len(labels), int)
    for _p, lbs in train:
        for lb in lbs:
            counts[lb_to_ix[lb]] += 1
    if (counts == 0).any():
        missing = [labels[i] for i in np.where(counts == 0)[0]]
        raise PannsError(f"{source}: classes with no training clip: {', '.join(missing[:5])}")
    missing_files = [p for p, _ in train + evl if not os.path.isfile(p)]
    if missing_files:
        raise PannsError(f"{source}: {len(missing_files)} audio file(s) not found, first: {missing_files[0]}")
    check_utf8_names([p for p, _ in train + evl], source)   # the clip cache stores paths as UTF-8 text
    overlap = {p for p, _ in train} & {p for p, _ in evl}
    if overlap:
        warnings.append(f"{len(overlap)} clip(s) are in both the train and the eval split (eval scores will be "
                        f"optimistic), e.g. {sorted(overlap)[0]}")
    eval_counts = np.zeros(len(labels), int)
    for _p, lbs in evl:
        for lb in lbs:
            eval_counts[lb_to_ix[lb]] += 1
    if (eval_counts == 0).any():
        warnings.append(f"classes with no eval clip (their scores are not measured): "
                        f"{', '.join(labels[i] for i in np.where(eval_counts == 0)[0][:5])}")

    def split(items: List[Item]) -> Split:
        t = np.zeros((len(items), len(labels)), np.float32)
        for i, (_p, lbs) in enumerate(items):
            t[i, [lb_to_ix[lb] for lb in lbs]] = 1.0
        return Split([p for p, _ in items], t)

    return LabelledData(labels, split(train), split(evl), name, source, warnings)


# ------------------------------------------------------------------------------------------------------------
# Decode-once cache
# ------------------------------------------------------------------------------------------------------------

def cache_key(paths: Sequence[str], sample_rate: int) -> str:
    """Hash of the sorted file list (with sizes and mtimes) and the sample rate."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{sample_rate}".encode())
    for p in sorted(set(paths)):
        st = os.stat(p)
        h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _decode(args: Tuple[str, int]) -> Tuple[Optional[np.ndarray], Optional[str]]:
    path, sr = args
    try:
        return float32_to_int16(load_audio(path, sr)), None
    except AudioDecodeError as e:
        return None, str(e)
    except Exception as e:  # a decoder crash on one file must not hide which file it was
        return None, f"cannot decode {path}: {type(e).__name__}: {e}"


class ClipCache:
    """Decoded clips of a file list in one HDF5: ``waveform`` int16 (total,), ``offset`` int64 (N+1,),
    ``audio_path`` (N,) str. Opened lazily once per process (DataLoader workers get their own handle)."""

    def __init__(self, h5_path: str):
        self.h5_path = h5_path
        with h5py.File(h5_path, "r") as hf:
            self.paths = [p.decode() if isinstance(p, bytes) else p for p in hf["audio_path"][:]]
            self.offset = hf["offset"][:]
            self.sample_rate = int(hf.attrs["sample_rate"])
        self.index = {p: i for i, p in enumerate(self.paths)}
        self._hf = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.paths)

    def length(self, i: int) -> int:
        return int(self.offset[i + 1] - self.offset[i])

    def read(self, i: int) -> np.ndarray:
        """Clip ``i`` as float32 (samples,)."""
        if self._hf is None or self._pid != os.getpid():
            self._hf = h5py.File(self.h5_path, "r")
            self._pid = os.getpid()
        return int16_to_float32(self._hf["waveform"][self.offset[i]:self.offset[i + 1]])

    def __getstate__(self):  # a pickled copy (DataLoader worker) opens its own handle
        d = dict(self.__dict__)
        d["_hf"] = None
        return d


def cache_path(cache_dir: str, sample_rate: int, key: str) -> str:
    """Where the cache of a file list (``key``: its :func:`cache_key`) at ``sample_rate`` lies."""
    return os.path.join(cache_dir, f"clips_{sample_rate}Hz_{key}.h5")


def build_cache(paths: Sequence[str], sample_rate: int, cache_dir: str, num_workers: int = 0) -> ClipCache:
    """Decode ``paths`` once into ``cache_dir/clips_<rate>Hz_<key>.h5`` (or reuse it). Atomic write.

    Before any decoding, a file at that path that is not a clip cache (one of the project's other HDF5 files,
    or no HDF5 at all: a rebuild would have replaced it) is refused in one line naming --cache_dir
    (``utilities.check_hdf5_kind``); a cache cut short is rebuilt. (No write probe: a complete cache in a
    read-only folder is read, not written.)
    Unreadable files abort with one line: how many, the first one's error and the names of a few more.
    """
    paths = sorted(set(paths))
    key = cache_key(paths, sample_rate)
    h5_path = cache_path(cache_dir, sample_rate, key)
    check_hdf5_kind(h5_path, "clips", "clip cache", "--cache_dir")
    os.makedirs(cache_dir, exist_ok=True)
    if os.path.isfile(h5_path):
        try:
            cache = ClipCache(h5_path)
            if cache.paths == paths and cache.sample_rate == sample_rate:
                logger.info("Using decoded clips from %s", h5_path)
                return cache
        except (OSError, KeyError):
            pass
        logger.warning("Cache %s is unreadable or stale; rebuilding", h5_path)
    removed = remove_stale_temps(h5_path)
    if removed:
        logger.info("Removed %d temporary file(s) of an interrupted earlier run", len(removed))
    failures: List[Tuple[str, str]] = []   # (path, error)
    logger.info("Decoding %d clips at %d Hz into %s", len(paths), sample_rate, h5_path)
    with atomic_write(h5_path) as tmp, h5py.File(tmp, "w") as hf:
        hf.attrs["sample_rate"] = sample_rate
        hf.attrs["key"] = key
        hf.attrs["version"] = CACHE_VERSION
        hf.create_dataset("audio_path", data=np.array(paths, dtype=h5py.string_dtype()))
        wav = hf.create_dataset("waveform", shape=(0,), maxshape=(None,), dtype=np.int16, chunks=(1 << 16,))
        offset = np.zeros(len(paths) + 1, np.int64)
        jobs = [(p, sample_rate) for p in paths]
        pool = (multiprocessing.Pool(num_workers, initializer=_ignore_sigint)
                if num_workers > 0 and len(paths) > 8 else None)
        try:
            results = pool.imap(_decode, jobs, chunksize=4) if pool else map(_decode, jobs)
            for i, (y, err) in enumerate(tqdm(results, total=len(paths), desc="decode", unit="clip", leave=False)):
                if err is not None:
                    failures.append((paths[i], err))
                    y = np.zeros(0, np.int16)
                if not failures:
                    wav.resize((offset[i] + len(y),))
                    wav[offset[i]:] = y
                offset[i + 1] = offset[i] + len(y)
        finally:
            if pool:   # also on Ctrl-C: the workers ignore it, so terminate() stops them at once
                pool.terminate()
                pool.join()
        if failures:
            raise AudioDecodeError(decode_failures(failures, len(paths)))
        hf.create_dataset("offset", data=offset)
    return ClipCache(h5_path)


def decode_failures(failures: List[Tuple[str, str]], total: int, shown: int = 5) -> str:
    """One line for the files that failed to decode: their count, the first error, a few more names."""
    others = [p for p, _ in failures[1:shown]]
    names = f"; also {', '.join(others)}" if others else ""
    rest = f" and {len(failures) - shown} more" if len(failures) > shown else ""
    return (f"{len(failures)} of {total} audio files cannot be decoded: {failures[0][1]}{names}{rest}; fix or remove "
            "them from the data set")


def _ignore_sigint() -> None:
    """Decode-pool workers leave Ctrl-C to the parent: a worker interrupted inside a task could leave
    the pool waiting for its result forever; the parent terminates them instead. They die with the
    parent too (a kill -9 of it left them waiting on the pool's queue forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


def crop(y: np.ndarray, clip_samples: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Fixed length: random offset when ``rng`` is given (training), else the start; zero-pad short clips."""
    if len(y) > clip_samples:
        start = int(rng.integers(0, len(y) - clip_samples + 1)) if rng is not None else 0
        return y[start:start + clip_samples]
    if len(y) < clip_samples:
        return np.concatenate([y, np.zeros(clip_samples - len(y), np.float32)])
    return y


class ClipDataset(torch.utils.data.Dataset):
    """``dataset[i]`` -> {'audio_name', 'waveform' (clip_samples,) float32, 'target' (classes_num,) float32}."""

    def __init__(self, cache: ClipCache, split: Split, clip_samples: int, train: bool, seed: int = 0):
        self.cache = cache
        self.rows = np.array([cache.index[p] for p in split.paths], np.int64)
        self.names = [os.path.basename(p) for p in split.paths]
        self.targets = split.targets
        self.clip_samples = clip_samples
        self.train = train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item) -> dict:
        """``item``: an index, or (index, position in the training stream) from ShuffledBatchSampler;
        a training crop is drawn from an RNG seeded by (seed, position), so a resumed run, or one with
        other worker counts, crops exactly the same."""
        i, position = item if isinstance(item, tuple) else (item, None)
        rng = None
        if self.train:
            rng = np.random.default_rng([self.seed, position if position is not None else i])
        y = crop(self.cache.read(int(self.rows[i])), self.clip_samples, rng)
        return {"audio_name": self.names[i], "waveform": y, "target": self.targets[i]}


def collate(items: List[dict]) -> dict:
    """List of item dicts -> numpy batch {'audio_name' (B,), 'waveform' (B, T), 'target' (B, C)} (official keys)."""
    return {"audio_name": np.array([d["audio_name"] for d in items]),
            "waveform": np.stack([d["waveform"] for d in items]).astype(np.float32),
            "target": np.stack([d["target"] for d in items]).astype(np.float32)}


class ShuffledBatchSampler(ResumableBatchSampler):
    """Endless batches from a stream of seeded permutations of ``n`` clips (an epoch boundary does not
    shorten a batch). Items are (index, position in the stream): the dataset seeds each training crop by
    its position. Resumes like the AudioSet samplers: ``state_dict(batches_consumed)`` / ``load_state_dict``."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(batch_size, seed, rank, world_size)
        self.n = n
        self._epoch, self._order = -1, np.zeros(0, np.int64)

    def _identity(self) -> List[tuple]:
        return [("num_clips", self.n, "a different number of training clips")]

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:   # batches run through the epochs in order: keep the current one
            self._epoch = epoch
            self._order = np.random.RandomState((self.random_seed * 1000003 + epoch) % (1 << 32)).permutation(self.n)
        return self._order

    def _global_batch(self, g: int) -> List[Tuple[int, int]]:
        first = g * self.batch_size
        return [(int(self._perm(p // self.n)[p % self.n]), p) for p in range(first, first + self.batch_size)]
