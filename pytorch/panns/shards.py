"""Pack AudioSet from hosted shard copies (no YouTube): WebDataset tar shards and Hugging Face Parquet.

    python3 utils/dataset.py pack_from_shards --shards 'DIR/*.tar' --waveforms_hdf5_path OUT.h5
    python3 utils/dataset.py pack_from_shards --shards 'DIR/*.parquet' --waveforms_hdf5_path OUT.h5

Shard formats (chosen by extension):

* ``.tar`` (also ``.tar.gz``/``.tgz``), read as a stream: WebDataset samples, i.e. consecutive
  members sharing a key (the name up to the first dot): ``<key>.flac`` (or .wav/.mp3/.ogg/...)
  and ``<key>.json`` (UTF-8, a byte order mark allowed) with the labels and, optionally, the YouTube id.
  A tar whose members are not grouped by key (``tar cf x.tar *.flac *.json``) is refused: its clips
  would lose their labels. A sample is one clip: a second audio member under one key (``k.30.000.flac``
  and ``k.40.000.flac`` are both key ``k``) is not packed and is listed in ``.missing.csv``. Members
  macOS adds (``._*`` AppleDouble files, ``__MACOSX/``, ``.DS_Store``) are skipped and counted in the log.
* ``.parquet`` as the ``datasets`` library writes it, read one row group at a time: an ``audio``
  column (struct of ``bytes`` + ``path``, or plain binary), ``video_id`` and ``labels``.

Clip ids: ``--id_field`` (default: the first of video_id, youtube_id, ytid, YTID, id present),
else the tar key (a Parquet row without an id is an error: its row number would name clips alike in
every shard); a 12-character id starting with 'Y' is taken as already prefixed (YouTube ids have 11).
Rows are named ``Y<id>.wav`` as download_wavs names files, so create_indexes, the black list and the
eval/train separation work unchanged.

Labels (``--label_field``, default the first of labels, label, mids, positive_labels,
human_labels present) may be AudioSet ids (``/m/09x0r``), display names (``Speech``) or class
indices, as a list or a comma-separated string, or a 0/1 vector with one entry per class; they are
mapped through the label CSV. Values the CSV does not know are counted and reported (log, summary
line), and the clip keeps its known labels; so are clips without a label field or with an empty label list
(packed with an all-zero target).

Decoding uses the packer's numerics (``packing.decode_row``), so a clip gives the same row as
packing the same audio from a file. Each shard is packed into ``OUT.h5.parts/NNNNN_<shard>.h5``
(atomic); ``--skip_existing`` reuses finished parts, so an interrupted run resumes shard by shard.
When every shard is done the parts are joined into ``OUT.h5`` (atomic; joining needs the parts'
disk space again, then they are removed; a single shard's part without repeats is renamed). A part is reused
only when it was packed with the same sample rate, clip length, storage, label list and
``--id_field``/``--label_field``/``--audio_field`` (kept in its ``shard_fields`` attribute), from a shard
file of the same name and size (``shard_source``). A shard that
cannot be read (truncated tar, also one cut between two members, broken Parquet) stops the run with
one line naming it; finished parts are kept, and so are they when a shard is refused (no label): the refused
shard writes nothing. ``--skip_existing`` keeps a complete ``OUT.h5`` only when it was packed with the same
options, from the same shard files (names and sizes, in order, as a digest in its ``shard_list`` attribute: not
their folder, so moving the shards forces no re-pack) with the same field options (``shard_fields``) and, with
``keep_duplicates``, keeping every occurrence; otherwise it is packed again and the log says why. An output of
an earlier version has no ``shard_list``: one of a single shard is compared by its ``shard_source``, any other
is packed again.

Repeated clips: a clip id met again (the same clip in two shards, e.g. a tar and a Parquet copy, or twice
in one shard) is packed once, as pack_waveforms_to_hdf5 packs a repeated CSV row once: its first occurrence
in shard order (the sorted order list_shards prints) that could be decoded is kept, with the union of the
labels of every decoded occurrence (repeats whose labels differ are counted and reported), and the repeats
are counted in the report and the log; a failure listed for a clip that is packed from another occurrence,
or listed before, is left out of ``.missing.csv``. ``keep_duplicates`` packs every occurrence (as before).
Parts always hold every clip of their shard and repeats are resolved when the parts are joined, so a resumed
run gives what an uninterrupted one gives, repeats across parts included; ``--skip_existing`` packs again,
rather than keeps, a complete output holding repeated clip ids (from keep_duplicates or an older version).
"""
from __future__ import annotations

import collections
import csv
import glob
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from panns import config, packing, storage
from panns.errors import PannsError
from panns.utilities import Progress

logger = logging.getLogger(__name__)

AUDIO_MEMBER_EXTS = (".flac", ".wav", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm")
ID_FIELDS = ("video_id", "youtube_id", "ytid", "YTID", "id")
LABEL_FIELDS = ("labels", "label", "mids", "positive_labels", "human_labels")
_PARQUET_BATCH = 64  # rows per Arrow batch: bounds memory to a few tens of MB of encoded audio


class ShardError(PannsError):
    """A shard that cannot be read (corrupt, truncated, wrong format)."""


class NoShards(PannsError):
    """A --shards value that names no shard file (a glob matching nothing, an empty folder)."""


def _names_something(part: str) -> bool:
    """``part`` is an existing file or folder, or a glob that matches a file."""
    return os.path.exists(part) or (any(c in part for c in "*?[") and any(map(os.path.isfile, glob.glob(part))))


def _part_shards(part: str) -> List[str]:
    """The shard files one part of a --shards value names: an existing file as itself (even with [ ] in its
    name), a folder's shard files (not its subfolders or broken links), or a glob's files."""
    if os.path.isfile(part):
        return [part]
    if os.path.isdir(part):
        return [p for p in (os.path.join(part, n) for n in os.listdir(part)) if _is_shard(p) and os.path.isfile(p)]
    if any(c in part for c in "*?["):
        return [p for p in glob.glob(part) if os.path.isfile(p)]
    raise PannsError(f"shard not found: {part}")


def list_shards(spec: str) -> List[str]:
    """Shard paths from a glob (``'DIR/*.tar'``), a folder, a file, or a comma-separated list of them; sorted.
    The whole value is read as one path or glob first, so a path with a comma in it is not split. In a list,
    a part that names no shard is an error (a mistyped glob would drop a whole split)."""
    paths: List[str] = []
    whole = os.path.expanduser(spec.strip())
    parts = [whole] if "," in spec and _names_something(whole) else [p for p in spec.split(",") if p.strip()]
    for part in parts:
        part = os.path.expanduser(part.strip())
        found = _part_shards(part)
        if not found and len(parts) > 1:
            raise PannsError(f"no shards match {part!r} (one of the comma-separated --shards {spec!r})")
        paths += found
    paths = sorted(set(paths))
    if not paths:
        raise NoShards(f"no shards match {spec!r} (expected .tar or .parquet files)")
    for p in paths:
        shard_format(p)
    return paths


def _is_shard(path: str) -> bool:
    return path.endswith((".tar", ".tar.gz", ".tgz", ".parquet"))


def shard_format(path: str) -> str:
    if path.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    if path.endswith(".parquet"):
        return "parquet"
    raise PannsError(f"unknown shard format (expected .tar, .tar.gz or .parquet): {path}")


# ------------------------------------------------------------------------------------------------
# Samples of a shard
# ------------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One clip of a shard: its id, encoded audio (None when absent) and metadata."""

    key: str
    audio: Optional[bytes]
    meta: dict
    where: str  # for messages: 'shard.tar:key.flac'
    problem: str = ""
    # Further audio members of a tar sample ('shard.tar:k.40.000.flac'): not packed, listed in .missing.csv
    extra_audio: List[str] = field(default_factory=list)


def _split_key(name: str) -> Tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename, the rest is the field."""
    d, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(d, stem) if d else stem), (dot + ext).lower()


# Why an audio member of a tar sample beside the one packed is listed in .missing.csv. join_packed_files keeps
# these lines although the clip is packed (other failures of a packed clip are repeats and left out).
EXTRA_AUDIO_REASON = "another audio member of the same WebDataset sample"


def _tar_group(shard: str, key: str, files: Dict[str, bytes]) -> Sample:
    meta: dict = {}
    problem = ""
    js = next((f for f in files if f.endswith(".json")), None)
    if js is not None:
        try:
            # utf-8-sig: a json saved by an editor that writes a byte order mark is as readable as one without
            meta = json.loads(files[js].decode("utf-8-sig"))
            if not isinstance(meta, dict):
                meta = {"labels": meta}
        except (ValueError, UnicodeDecodeError) as e:
            problem = f"unreadable json: {e}"
    shard_name = os.path.basename(shard)
    # 'flac', or e.g. '30.000.flac' when the name has dots after the key ('k.30.000.flac': key 'k', WebDataset's
    # convention). The first by AUDIO_MEMBER_EXTS order is the clip; any other ('k.40.000.flac' beside it) is
    # one sample's second audio, not a clip of its own (it has the same key, hence the same id and labels).
    audio = [f for ext in AUDIO_MEMBER_EXTS for f in files if f == ext or f.endswith(ext)]
    if not audio:
        return Sample(key, None, meta, f"{shard_name}:{key}", problem or "no audio member")
    return Sample(key, files[audio[0]], meta, f"{shard_name}:{key}{audio[0]}", problem,
                  [f"{shard_name}:{key}{f}" for f in audio[1:]])


def _is_macos_metadata(name: str) -> bool:
    """A member macOS adds to archives it makes: AppleDouble resource forks ('._k.flac', beside 'k.flac'), the
    '__MACOSX/' folder, Finder's '.DS_Store'. None is a clip, and their names have no WebDataset key."""
    parts = name.split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store"


def iter_tar(shard: str) -> Iterator[Sample]:
    """Samples of a tar shard, read as a stream (members of one sample are consecutive)."""
    key, files = None, {}
    done: set = set()   # keys whose group has ended
    macos = 0
    try:
        with tarfile.open(shard, mode="r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                if _is_macos_metadata(m.name):
                    # Skipped, not read as samples: '._k.flac' has the empty key, which named no clip id and,
                    # met again after 'k.flac', read as a tar not grouped by key
                    macos += 1
                    continue
                k, ext = _split_key(m.name)
                if key is not None and k != key:
                    yield _tar_group(shard, key, files)
                    done.add(key)
                    files = {}
                    if k in done:
                        # 'tar cf x.tar *.flac *.json': every clip would be packed without its labels and listed
                        # again as missing ("no audio member") with its json
                        raise ShardError(f"{shard} is not a WebDataset shard: the files of '{k}' are not next to "
                                         f"each other ({m.name} comes after other keys' files); re-create it with "
                                         "the files sorted by name (tar --sort=name -cf ...)")
                key = k
                f = tf.extractfile(m)
                files[ext] = f.read() if f is not None else b""
            # tarfile stops as quietly at the end of the data as at the end-of-archive marker (two zero
            # blocks; it has read the first): a shard cut at a member boundary would pass as complete.
            end = tf.fileobj.read(tarfile.BLOCKSIZE)
            if len(end) < tarfile.BLOCKSIZE or end.count(0) != len(end):
                raise ShardError(f"truncated shard {shard}: it ends without the tar end-of-archive marker (cut "
                                 "between two members?); re-download it (finished shards are kept: re-run with "
                                 "--skip_existing)")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ShardError(f"corrupt shard {shard}: {' '.join(str(e).split()) or type(e).__name__}; "
                         "re-download it (finished shards are kept: re-run with --skip_existing)") from None
    if macos:
        logger.info("Skipped %d macOS metadata members of %s (._* AppleDouble files, __MACOSX/, .DS_Store)", macos,
                    shard)
    if key is not None:
        yield _tar_group(shard, key, files)


def _pyarrow():
    try:
        import pyarrow.parquet as pq  # optional dependency: only the Parquet route needs it
    except ImportError:
        raise PannsError("reading Parquet shards needs pyarrow: pip install pyarrow") from None
    return pq


def parquet_rows(shard: str) -> int:
    try:
        return int(_pyarrow().ParquetFile(shard).metadata.num_rows)
    except PannsError:
        raise
    except Exception as e:
        raise ShardError(f"corrupt shard {shard}: {' '.join(str(e).split())}") from None


def iter_parquet(shard: str, audio_field: str = "audio") -> Iterator[Sample]:
    """Samples of a Parquet shard, read in batches of rows (all columns but the audio are metadata)."""
    pq = _pyarrow()
    try:
        pf = pq.ParquetFile(shard)
        names = pf.schema_arrow.names
        if audio_field not in names:
            raise ShardError(f"{shard} has no '{audio_field}' column (columns: {', '.join(names)}); "
                             "pass --audio_field")
        n = 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH):
            for row in batch.to_pylist():
                audio = row.pop(audio_field)
                where = f"{os.path.basename(shard)}:row {n}"
                problem = ""
                if isinstance(audio, dict):
                    audio = audio.get("bytes")
                if audio is None:
                    problem = "no audio bytes"
                yield Sample("", audio, row, where, problem)   # no key: a row number is no clip id
                n += 1
    except ShardError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError on broken files
        raise ShardError(f"corrupt shard {shard}: {' '.join(str(e).split()) or type(e).__name__}; "
                         "re-download it (finished shards are kept: re-run with --skip_existing)") from None


# ------------------------------------------------------------------------------------------------
# Ids and labels
# ------------------------------------------------------------------------------------------------

def clip_id(sample: Sample, id_field: Optional[str]) -> str:
    fields = (id_field,) if id_field else ID_FIELDS
    for f in fields:
        v = sample.meta.get(f)
        if v not in (None, ""):
            ytid = str(v)
            break
    else:
        if id_field:
            raise PannsError(f"{sample.where}: no field {id_field!r} (fields: {', '.join(sample.meta) or 'none'})")
        if not sample.key:
            # A Parquet row has no name of its own: its row number would name clips 'Y0.wav', 'Y1.wav', ... in
            # every shard alike, and indexing keeps one clip per name.
            raise PannsError(f"{sample.where}: no clip id (none of {', '.join(ID_FIELDS)} is set; columns: "
                             f"{', '.join(sample.meta) or 'none'}); pass --id_field naming the column of clip ids")
        ytid = os.path.basename(sample.key)
    if len(ytid) == 12 and ytid.startswith("Y"):
        ytid = ytid[1:]  # already named like download_wavs' files
    return ytid


class LabelMapper(object):
    """Label values (ids, display names or indices) -> class indices of a label CSV; counts unknowns."""

    def __init__(self, labels: config.ClassLabels):
        self.classes_num = labels.classes_num
        self.by_id = dict(labels.id_to_ix)
        self.by_name = {str(n).strip().lower(): i for i, n in enumerate(labels.labels)}
        self.unknown: collections.Counter = collections.Counter()
        self.unlabelled = 0
        self.empty = 0      # clips whose label field is there but empty ('labels: []', ''): all-zero targets
        self.seen = 0
        self.labelled = 0   # clips with at least one label value the label CSV knows

    def _one(self, v) -> Optional[int]:
        if isinstance(v, (bool, np.bool_)):
            return None
        if isinstance(v, (int, np.integer)):
            return int(v) if 0 <= int(v) < self.classes_num else None
        s = str(v).strip()
        if s in self.by_id:
            return self.by_id[s]
        if s.lower() in self.by_name:
            return self.by_name[s.lower()]
        if s.isdigit() and int(s) < self.classes_num:
            return int(s)
        return None

    def _multi_hot(self, items: list) -> Optional[np.ndarray]:
        """A 0/1 vector (``[0, 1, 0, ...]``, one entry per class) as a target, else None. Read as class indices it
        gave every clip classes 0 and 1. An index list never repeats a value, so more than two 0/1 numbers are a
        vector; one whose length is not the label CSV's class count is a PannsError."""
        numbers = (int, float, np.integer, np.floating, np.bool_)
        if len(items) <= 2 or not all(isinstance(v, numbers) and v in (0, 1) for v in items):
            return None
        if len(items) != self.classes_num:
            raise PannsError(f"a label value is a 0/1 vector of {len(items)} classes but the label CSV has "
                             f"{self.classes_num}; pass the data set's own --class_labels_csv")
        return np.asarray(items, dtype=float) != 0

    def target(self, value) -> np.ndarray:
        """Multi-hot bool (classes_num,) of a label value: a list, or a string (one label or comma-separated)."""
        t = np.zeros(self.classes_num, dtype=bool)
        self.seen += 1
        if value is None:
            self.unlabelled += 1
            return t
        if isinstance(value, str):
            ix = self._one(value)  # a display name can itself contain commas
            items = [value] if ix is not None else [x for x in value.split(",") if x.strip()]
        elif isinstance(value, (list, tuple, np.ndarray)):
            items = list(value)
            hot = self._multi_hot(items)
            if hot is not None:
                self.labelled += bool(hot.any())
                self.empty += not hot.any()   # an all-zero vector names no class, as an empty list
                return hot
        else:
            items = [value]
        if not items:
            self.empty += 1
        for v in items:
            ix = self._one(v)
            if ix is None:
                self.unknown[str(v).strip()] += 1
            else:
                t[ix] = True
        self.labelled += bool(t.any())
        return t

    def report(self) -> str:
        """'' or one sentence on unknown label values and clips without labels."""
        parts = []
        if self.unknown:
            top = ", ".join(f"{k!r} x{c}" for k, c in self.unknown.most_common(5))
            parts.append(f"{sum(self.unknown.values())} label values ({len(self.unknown)} distinct) are not in the "
                         f"label CSV and were ignored: {top}" + (", ..." if len(self.unknown) > 5 else ""))
        if self.unlabelled:
            parts.append(f"{self.unlabelled} clips have no label field (packed with no positive label)")
        if self.empty:
            parts.append(f"{self.empty} clips have an empty label list (packed with no positive label)")
        return "; ".join(parts)


def label_value(sample: Sample, label_field: Optional[str]):
    if label_field:
        return sample.meta.get(label_field)
    for f in LABEL_FIELDS:
        if f in sample.meta:
            return sample.meta[f]
    return None


# ------------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------------

@dataclass
class ShardPackReport:
    path: str
    rows: int
    missing: List[Tuple[str, str]]
    shards: int
    shards_skipped: int
    short: int = 0
    clip_seconds: float = 0.0
    unknown_labels: Dict[str, int] = field(default_factory=dict)
    label_report: str = ""
    replaced: bool = False  # an existing output was replaced
    repeated: int = 0       # occurrences of a clip id met before (packed once; 0 with keep_duplicates)
    relabelled: int = 0     # clip ids whose repeats carried other labels (packed with the union)
    repeat_report: str = ""  # '' or one sentence on the repeats, for the console
    repack_reason: str = ""  # why a complete output --skip_existing found was packed again ('' when none was)


def _part_path(parts_dir: str, i: int, shard: str) -> str:
    stem = os.path.basename(shard)
    for ext in (".tar.gz", ".tgz", ".tar", ".parquet"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    return os.path.join(parts_dir, f"{i:05d}_{stem}.h5")


FIELDS_ATTR = "shard_fields"


def shard_fields(id_field: Optional[str], label_field: Optional[str], audio_field: str) -> str:
    """The field options a part is packed with, as stored in its ``shard_fields`` attribute ("auto": the
    default search), so that a resumed run with other fields re-packs the part instead of keeping its ids
    or targets."""
    return json.dumps({"id_field": id_field or "auto", "label_field": label_field or "auto",
                       "audio_field": audio_field}, sort_keys=True)


def _json_attr(part: packing.KeptOutput, name: str) -> Optional[dict]:
    """A part's JSON attribute (``shard_fields``, ``shard_source``) decoded; None where a part from an older
    version lacks it."""
    had = part.text_attr(name)
    if had is None:
        return None
    try:
        value = json.loads(had)
    except ValueError:   # not written by this module: as good as none (packed again, never a traceback)
        return None
    return value if isinstance(value, dict) else None


def _fields_mismatch(part: packing.KeptOutput, fields: str) -> List[str]:
    """How the field options ``part`` was packed with differ from ``fields`` ([] when they match; a part
    without the attribute, from an older version, counts as packed with unknown fields)."""
    old, new = _json_attr(part, FIELDS_ATTR), json.loads(fields)
    if old is None:
        return ["fields it was packed with unknown"]
    return [f"--{k} {old.get(k)}, not {new[k]}" for k in sorted(new) if old.get(k) != new[k]]


SOURCE_ATTR = "shard_source"


def shard_source(shard: str) -> str:
    """Which shard file a part is packed from (name and size), as stored in its ``shard_source`` attribute: a
    resumed run whose --shards now lists another file at that position (another configuration whose shards
    are named alike, a shard downloaded again) re-packs the part instead of keeping another shard's clips."""
    return json.dumps({"name": os.path.basename(shard), "bytes": os.path.getsize(shard)}, sort_keys=True)


SHARDS_ATTR = "shard_list"


def shard_list(paths: Sequence[str], keep_duplicates: bool = False) -> str:
    """What a joined output is packed from, as stored in its ``shard_list`` attribute: a sha256 of each shard
    file's name and size in --shards order (not its folder: moving the shard folder must not force a re-pack),
    their count, first and last name (for the log line), and ``keep_duplicates`` (which decides which rows are
    kept). --skip_existing keeps the output only when this matches, so another --shards list (a shard added, one
    of another split, the shards shifted between scripts/2_pack_from_shards.sh's numbered parts) is packed again.
    """
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(os.path.basename(p)) + f"\t{os.path.getsize(p)}\n".encode())
    names = [os.path.basename(p) for p in paths]
    return json.dumps({"count": len(paths), "first": names[0] if names else "", "last": names[-1] if names else "",
                       "sha256": h.hexdigest(), "keep_duplicates": bool(keep_duplicates)}, sort_keys=True)


def _shards_named(record: dict) -> str:
    n = record.get("count")
    return f"{record.get('first')}" if n == 1 else f"{n} shards, {record.get('first')} to {record.get('last')}"


def output_repack_reason(kept: packing.KeptOutput, paths: Sequence[str], fields: str, keep_duplicates: bool) -> str:
    """Why a complete output --skip_existing found must be packed again ('' when it is reusable): packed from
    other shard files, with other field options, or merging repeats that --keep_duplicates now keeps. An output
    of an earlier version has no ``shard_list``: one from a single shard is compared by its ``shard_source`` and
    ``shard_fields`` (the part it was renamed from had them), any other cannot be compared and is packed again."""
    old = _json_attr(kept, SHARDS_ATTR)
    if old is None:
        if len(paths) == 1 and kept.text_attr(SOURCE_ATTR) is not None and kept.text_attr(FIELDS_ATTR) is not None:
            return "; ".join(_source_mismatch(kept, shard_source(paths[0])) + _fields_mismatch(kept, fields))
        return "packed by an earlier version, which recorded no list of the shards it was packed from"
    new = json.loads(shard_list(paths, keep_duplicates))
    diff = []
    if old.get("sha256") != new["sha256"]:
        diff.append(f"packed from other shard files ({_shards_named(old)}, not {_shards_named(new)}; "
                    "their names or sizes differ)")
    diff += _fields_mismatch(kept, fields)
    if keep_duplicates and not old.get("keep_duplicates"):
        diff.append("packed with each repeated clip once, not every occurrence (--keep_duplicates)")
    return "; ".join(diff)


def _source_mismatch(part: packing.KeptOutput, source: str) -> List[str]:
    """[] when ``part`` was packed from the shard file ``source`` describes, else what differs (a part
    without the attribute, from an older version, counts as packed from an unknown shard)."""
    old, new = _json_attr(part, SOURCE_ATTR), json.loads(source)
    if old is None:
        return ["shard it was packed from unknown"]
    if old == new:
        return []
    return [f"packed from {old.get('name')} of {old.get('bytes')} bytes, not {new['name']} of {new['bytes']} bytes"]


def _pack_shard(shard: str, part: str, mapper: LabelMapper, labels: config.ClassLabels, sample_rate: int,
                clip_seconds: float, clip_samples: int, storage_name: str, num_workers: int,
                id_field: Optional[str], label_field: Optional[str], audio_field: str, bar,
                check: Optional[Callable[[], None]] = None) -> Tuple[int, int]:
    """Pack one shard into ``part`` (atomic). Returns (rows, short clips); failures go to part.missing.csv.
    ``check`` runs once every clip is read, before anything is written: its PannsError leaves ``part`` and its
    .missing.csv as they were (a finished part of an earlier run included)."""
    fmt = shard_format(shard)
    samples = iter_tar(shard) if fmt == "tar" else iter_parquet(shard, audio_field)
    capacity = parquet_rows(shard) if fmt == "parquet" else 0
    names: List[str] = []
    targets: List[np.ndarray] = []
    missing: List[Tuple[str, str]] = []

    def jobs():
        for s in samples:
            name = f"Y{clip_id(s, id_field)}.wav"
            names.append(name)
            targets.append(mapper.target(label_value(s, label_field)))
            n = len(names) - 1
            for where in s.extra_audio:
                missing.append((name, f"{where}: {EXTRA_AUDIO_REASON} (the key is the name up to the first dot), "
                                      f"not packed; {s.where} is"))
                logger.warning("%s: %s as %s; not packed", where, EXTRA_AUDIO_REASON, s.where)
            if s.audio is None or s.problem:
                missing.append((name, f"{s.where}: {s.problem}"))
                bar.update(1)
                continue
            yield packing.DecodeJob(n, s.audio, s.where, sample_rate, clip_samples, storage_name)

    short = 0
    with packing.OrderedPool(packing.decode_row, num_workers) as pool, \
            packing.PackedFile(part, capacity, clip_samples, storage_name) as out:
        for res in pool.imap(jobs()):
            if res.row is None:
                missing.append((names[res.n], f"decode error: {res.reason}"))
                logger.info("Cannot decode %s (%s): %s", names[res.n], shard, res.reason)
            else:
                out.add(names[res.n].encode(), targets[res.n], res.row)
                short += res.seconds < packing.SHORT_FRACTION * clip_seconds
            bar.update(1)
        if check is not None:
            check()
        packing.write_missing_csv(part, missing)
        out.commit(labels, sample_rate, {FIELDS_ATTR: shard_fields(id_field, label_field, audio_field),
                                         SOURCE_ATTR: shard_source(shard)})
    return out.rows, short


@dataclass
class Repeats:
    """Clip ids met again when packed files are joined: each is packed once (see the module docstring)."""

    count: int = 0          # occurrences dropped: rows, and failures of a clip packed or listed before
    relabelled: int = 0     # clip ids whose repeats carried other labels than their first row
    examples: List[Tuple[str, int]] = field(default_factory=list)  # (name, part index) of the first few rows dropped


def _first_rows(parts: Sequence[str], keep_duplicates: bool
                ) -> Tuple[np.ndarray, np.ndarray, Dict[bytes, np.ndarray], Repeats]:
    """Which rows of the concatenated parts are kept (the first of each clip id, or all with ``keep_duplicates``),
    the sorted distinct names, the union targets of the repeated names, and the repeats (only the names, and the
    targets of repeated names, are read)."""
    names: List[np.ndarray] = []
    for p in parts:
        with h5py.File(p, "r") as hf:
            names.append(hf["audio_name"][:])
    every = np.concatenate(names) if names else np.zeros(0, dtype="S1")
    uniq, first, counts = np.unique(every, return_index=True, return_counts=True)
    rep = Repeats()
    if keep_duplicates or len(uniq) == len(every):
        return np.ones(len(every), dtype=bool), uniq, {}, rep
    keep = np.zeros(len(every), dtype=bool)
    keep[first] = True
    rep.count = int(len(every) - len(uniq))
    part_of = np.repeat(np.arange(len(parts)), [len(n) for n in names])
    rep.examples = [(bytes(every[i]).decode(errors="replace"), int(part_of[i])) for i in np.nonzero(~keep)[0][:5]]
    repeated = uniq[counts > 1]
    firsts: Dict[bytes, np.ndarray] = {}
    merged: Dict[bytes, np.ndarray] = {}
    relabelled: set = set()
    for p, n in zip(parts, names):
        rows = np.nonzero(np.isin(n, repeated))[0]
        if not len(rows):
            continue
        with h5py.File(p, "r") as hf:
            tg = hf["target"][:]
        for r in rows:
            name, t = bytes(n[r]), tg[r].astype(bool)
            if name not in firsts:
                firsts[name], merged[name] = t, t.copy()
                continue
            if not np.array_equal(firsts[name], t):
                relabelled.add(name)
            merged[name] |= t
    rep.relabelled = len(relabelled)
    return keep, uniq, merged, rep


def join_packed_files(parts: Sequence[str], out_path: str, labels: config.ClassLabels, sample_rate: int,
                      move_single: bool = False, keep_duplicates: bool = False,
                      attrs: Optional[Dict[str, str]] = None) -> Tuple[int, List[Tuple[str, str]], Repeats]:
    """Concatenate packed files of one layout (and their ``.missing.csv`` lists) into ``out_path``
    (atomic); returns (rows, failures, repeats). The storage and clip length come from the first part.
    A clip id met again is packed once: its first row kept, with the union of the targets of all its rows;
    a failure listed for a clip that is packed, or listed before, is dropped (``keep_duplicates``: every
    row and failure); a further audio member of a sample (``EXTRA_AUDIO_REASON``) stays listed. ``move_single``: a
    single part without repeats is renamed to ``out_path`` instead of copied. ``attrs``: text attributes of the
    output (what it was packed from)."""
    total = 0
    for p in parts:
        with h5py.File(p, "r") as hf:
            total += int(hf["audio_name"].shape[0])
            layout, clip_samples = storage.storage_of(hf), storage.clip_samples_of(hf)
    keep, packed, merged, repeats = _first_rows(parts, keep_duplicates)
    missing: List[Tuple[str, str]] = []
    listed: set = set()
    for p in parts:
        mp = p + ".missing.csv"
        if os.path.isfile(mp):
            with open(mp, newline="", encoding="utf-8") as f:
                for r in csv.DictReader(f):
                    name = r["audio_name"]
                    if not keep_duplicates and EXTRA_AUDIO_REASON not in r["reason"]:
                        b = name.encode()
                        i = int(np.searchsorted(packed, b))
                        if name in listed or (i < len(packed) and packed[i] == b):
                            repeats.count += 1  # the clip is packed from another occurrence, or already listed
                            continue
                        listed.add(name)
                    missing.append((name, r["reason"]))
    if total == 0:
        packing.write_missing_csv(out_path, missing)
        if not missing:   # no list was written: do not point at one
            raise PannsError(f"the shards hold no clips ({len(parts)} shards, 0 rows); nothing packed")
        raise PannsError(f"no clip of the shards could be decoded (reasons in {out_path}.missing.csv); nothing packed")
    rows = int(keep.sum())
    if move_single and len(parts) == 1 and rows == total:  # one shard: the part becomes the output (no copy)
        if attrs:
            # Written into the part before it is renamed: the output appears whole or not at all. A run killed
            # here leaves a complete part, reused or packed again by the next run.
            with h5py.File(parts[0], "r+") as hf:
                for k, v in attrs.items():
                    hf.attrs[k] = v
        packing.write_missing_csv(out_path, missing)
        os.replace(parts[0], out_path)
        return total, missing, repeats
    with packing.PackedFile(out_path, rows, clip_samples, layout) as out:
        offset = 0
        for p in parts:
            with h5py.File(p, "r") as hf:
                ds = hf[storage.FLAC_KEY if layout == "flac" else storage.PCM_KEY]
                names, tg = hf["audio_name"][:], hf["target"][:]
                for i in range(len(names)):
                    if keep[offset + i]:
                        name = bytes(names[i])
                        out.add(name, merged.get(name, tg[i]), ds[i])
                offset += len(names)
        packing.write_missing_csv(out_path, missing)
        out.commit(labels, sample_rate, attrs)
    return rows, missing, repeats


def repeat_report(repeats: Repeats, shard_paths: Sequence[str]) -> str:
    """'' or one sentence on the clips met again (``shard_paths``: the shards of the parts, to name them)."""
    if not repeats.count:
        return ""
    where = ", ".join(f"{name} in {os.path.basename(shard_paths[i]) if i < len(shard_paths) else i}"
                      for name, i in repeats.examples)
    msg = (f"{repeats.count} repeated clips (a clip id met again in the shards) packed once, the first occurrence "
           "kept (keep_duplicates: every occurrence)"
           + (f"; repeats dropped: {where}" + (", ..." if repeats.count > len(repeats.examples) else "")
              if where else ""))
    if repeats.relabelled:
        msg += (f"; {repeats.relabelled} of these clips carried other labels in their repeats and are packed with "
                "the labels of all (union)")
    return msg


def _check_labelled(mapper: LabelMapper, shard: str, label_field: Optional[str],
                    class_labels_csv: Optional[str]) -> None:
    """PannsError when no clip packed so far in this run has a label the label CSV knows (checked on the first
    shard this run packs; later shards only add clips): training on all-zero targets learns nothing, as
    pack_waveforms_to_hdf5 refuses an unknown mid."""
    if not mapper.seen or mapper.labelled:
        return
    looked = label_field or ", ".join(LABEL_FIELDS)
    if mapper.unlabelled == mapper.seen:
        raise PannsError(f"no clip of {shard} has a label ({looked}); name the field holding the labels with "
                         "--label_field, or pass --allow_unlabelled to pack audio without labels")
    if not mapper.unknown:
        raise PannsError(f"no clip of {shard} has a label: {mapper.empty} clips have an empty label list and "
                         f"{mapper.unlabelled} none ({looked}); name the field holding the labels with --label_field, "
                         "or pass --allow_unlabelled to pack audio without labels")
    top = ", ".join(f"{k!r}" for k, _ in mapper.unknown.most_common(3))
    csv_name = class_labels_csv or config.DEFAULT_LABELS_CSV
    raise PannsError(f"no label value of {shard} is in the label CSV {csv_name} (e.g. {top}); pass the data set's "
                     "own --class_labels_csv, or --allow_unlabelled to pack audio without labels")


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)   # only an empty folder: finished parts are never removed here
    except OSError:
        pass


def pack_from_shards(shards: str, waveforms_hdf5_path: str, sample_rate: int = config.sample_rate,
                     clip_seconds: float = config.clip_seconds, num_workers: int = 1,
                     class_labels_csv: Optional[str] = None, label_field: Optional[str] = None,
                     id_field: Optional[str] = None, audio_field: str = "audio", storage_name: str = "pcm16",
                     skip_existing: bool = False, progress: bool = True,
                     allow_unlabelled: bool = False, keep_duplicates: bool = False) -> ShardPackReport:
    """Pack tar or Parquet shards into one waveform HDF5 (see module docstring).

    Shards whose clips carry no label field at all are refused after the first shard (training on them
    learns nothing) unless ``allow_unlabelled``. A clip id met again is packed once (its first occurrence,
    labels merged by union) and counted in the report, unless ``keep_duplicates`` (every occurrence)."""
    storage.check_storage(storage_name, sample_rate)
    clip_samples = packing.clip_samples_for(sample_rate, clip_seconds)
    labels = config.read_class_labels(class_labels_csv)
    paths = list_shards(shards)
    inputs = paths + [class_labels_csv or config.DEFAULT_LABELS_CSV]
    packing.check_pack_output(waveforms_hdf5_path, inputs)
    if os.path.exists(waveforms_hdf5_path + ".parts") and not os.path.isdir(waveforms_hdf5_path + ".parts"):
        raise PannsError(f"{waveforms_hdf5_path}.parts (the folder of packed shards) is a file; move it away")
    fields = shard_fields(id_field, label_field, audio_field)
    # Read before anything is packed: the sizes recorded are those of the shards this run reads.
    source = shard_list(paths, keep_duplicates)
    kept = packing.read_kept_output(waveforms_hdf5_path, count_repeats=not keep_duplicates) if skip_existing else None
    repack_reason = ""
    if kept is not None:
        kept.check_reusable(sample_rate, clip_samples, storage_name, labels)
        # Other shards or fields give other rows under the same options: packed again, not kept as if current.
        repack_reason = output_repack_reason(kept, paths, fields, keep_duplicates)
        if not repack_reason and kept.repeated:
            repack_reason = (f"it holds {kept.repeated} repeated clip ids (packed with keep_duplicates, or by an "
                             "older version)")
        if not repack_reason:
            logger.info("Skip %s: already packed", waveforms_hdf5_path)
            return ShardPackReport(waveforms_hdf5_path, -1, [], 0, 0)
        logger.warning("Re-packing %s (--skip_existing keeps only an output of these shards and options): %s",
                       waveforms_hdf5_path, repack_reason)
    replaced = os.path.exists(waveforms_hdf5_path)
    if replaced and not repack_reason:
        logger.warning("%s exists and will be replaced (--skip_existing keeps a complete one)", waveforms_hdf5_path)
    logger.info("Packing %d shards into %s (%s storage)", len(paths), waveforms_hdf5_path, storage_name)
    logger.info("Clip length %g s (%d samples at %d Hz): longer clips are cut, shorter ones zero-padded "
                "(--clip_seconds)", clip_seconds, clip_samples, sample_rate)
    parts_dir = waveforms_hdf5_path + ".parts"
    os.makedirs(parts_dir, exist_ok=True)
    mapper = LabelMapper(labels)
    t0 = time.time()
    parts, skipped, short = [], 0, 0
    known = None
    if all(shard_format(p) == "parquet" for p in paths):
        known = sum(parquet_rows(p) for p in paths)
    with Progress(known, "pack shards", progress) as bar:
        for i, shard in enumerate(paths):
            part = _part_path(parts_dir, i, shard)
            parts.append(part)
            kept_part = packing.read_kept_output(part) if skip_existing else None
            if kept_part is not None:
                # The label list too: a part packed with another label CSV has targets of other classes.
                diff = kept_part.option_mismatch(sample_rate, clip_samples, storage_name, labels)
                # And the fields: another --id_field/--label_field/--audio_field gives other names or targets.
                diff += _fields_mismatch(kept_part, fields)
                # And the shard itself: the part at this position may hold another shard's clips.
                diff += _source_mismatch(kept_part, shard_source(shard))
                if not diff:
                    skipped += 1
                    if known is not None:
                        bar.update(parquet_rows(shard))
                    logger.info("Skip shard %s: packed in an earlier run (%s)", shard, part)
                    continue
                logger.warning("Re-packing shard %s: %s was packed otherwise (%s)", shard, part,
                               "; ".join(diff))
            bar.set_description(f"pack shard {i + 1}/{len(paths)}")
            check = None if allow_unlabelled else lambda shard=shard: _check_labelled(mapper, shard, label_field,
                                                                                       class_labels_csv)
            try:
                rows, s = _pack_shard(shard, part, mapper, labels, sample_rate, clip_seconds, clip_samples,
                                      storage_name, num_workers, id_field, label_field, audio_field, bar, check=check)
            except PannsError:
                # The refused shard wrote nothing (its check runs before the part is written), and the parts of
                # earlier runs stay for the resume; only a folder this run made and left empty goes.
                _remove_if_empty(parts_dir)
                raise
            short += s
            logger.info("Shard %s: %d clips -> %s", shard, rows, part)
    rows, missing, repeats = join_packed_files(parts, waveforms_hdf5_path, labels, sample_rate, move_single=True,
                                               keep_duplicates=keep_duplicates,
                                               attrs={FIELDS_ATTR: fields, SHARDS_ATTR: source})
    shutil.rmtree(parts_dir, ignore_errors=True)
    rep = ShardPackReport(waveforms_hdf5_path, rows, missing, len(paths), skipped, short, clip_seconds,
                          dict(mapper.unknown), mapper.report(), replaced, repeats.count, repeats.relabelled,
                          repeat_report(repeats, paths), repack_reason)
    if rep.repeat_report:
        logger.warning(rep.repeat_report)
    if rep.label_report:
        logger.warning(rep.label_report)
    logger.info("Packed %d clips from %d shards in %.1f s", rows, len(paths), time.time() - t0)
    return rep
