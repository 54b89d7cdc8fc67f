"""AudioSet acquisition and packing (official ``utils/dataset.py`` sub-commands, fixed).

Sub-commands (official names and arguments, plus options)::

    split_unbalanced_csv_to_partial_csvs --unbalanced_csv=CSV --unbalanced_partial_csvs_dir=DIR
        [--remove_stale_parts]
    download_wavs --csv_path=CSV --audios_dir=DIR [--mini_data] [--num_workers=4] [--url_template=...]
    pack_waveforms_to_hdf5 --csv_path=CSV --audios_dir=DIR --waveforms_hdf5_path=OUT.h5 [--mini_data]
        [--sample_rate=32000] [--clip_seconds=10] [--num_workers=N] [--class_labels_csv=CSV] [--skip_existing]
        [--storage=pcm16|flac]
    pack_from_shards --shards='DIR/*.tar'|'DIR/*.parquet' --waveforms_hdf5_path=OUT.h5 [same options]
        [--label_field=F] [--id_field=F] [--audio_field=audio]      (hosted copies, no YouTube: shards.py)
    list_shards --shards=... [--allow_none]       (the shard files a --shards value names, one a line)
    check_packed_parts --packed_dir=DIR (--part_csvs_dir=DIR | --shards=...) [--remove_stale_parts]
        (packed unbalanced parts no current part CSV or shard maps to: refused, or removed; scripts/2_*.sh)

Segment CSVs: every line is ``<YTID>, <start>, <end>, "<mid>,<mid>"`` (split on ``", "``); AudioSet's
three ``#`` header lines are optional (the official code dropped the first three lines of any CSV, so a
CSV without them lost three clips). Rows that cannot be parsed, or whose times are no segment (end not
after start, a negative start, NaN or inf: ffmpeg read a zero length as "no limit" and saved the rest of the
video as the clip), are reported with their line numbers, on line 1 as anywhere else; download, pack and
split refuse such a CSV before any work.

download_wavs: for each segment, yt-dlp downloads the whole audio stream to a temporary folder,
ffmpeg cuts the segment (``-ss``/``-t`` *before* ``-i``, so it seeks instead of decoding the whole
file first) to mono 16-bit PCM at 32 kHz, the result is validated and renamed to ``Y<YTID>.wav``.
Clips run in parallel threads; existing valid files are skipped (resumable); throttling and transient
network errors are retried with exponential backoff; clips that fail are listed with the reason in
``<audios_dir>/download_failures.csv`` (permanent failures such as removed videos are not retried on
the next run unless ``--retry_failed``). Unlike the official flag, ``--mini_data`` is really optional.

pack_waveforms_to_hdf5 writes the official waveform HDF5 (``audio_name`` S20, ``waveform`` int16
(N, clip_samples), ``target`` bool (N, classes), attribute ``sample_rate``). Differences on purpose:
one row per clip that exists and decodes (the others are listed in ``<output>.missing.csv`` with the
reason), so there are no silent all-zero rows; any format soundfile/ffmpeg decodes is accepted
(``Y<YTID>.wav`` first, then ``Y<YTID>.flac``/``.mp3``/...; ``audio_name`` stays ``Y<YTID>.wav``);
stereo is averaged, other rates are resampled (soxr HQ, as librosa); out-of-range samples are clipped
instead of aborting; decoding runs in a process pool with ordered writes; the file is written under a
temporary name and renamed. On 32 kHz input rows are byte-identical to the official packer
(``librosa.load(sr=32000, mono=True)`` -> ``pad_or_truncate`` -> ``float32_to_int16``).
A label id (mid) missing from the label CSV is an error naming the mid, the line and the label CSV. Extra
attributes (the official code ignores them): ``clip_samples``, ``class_ids``, ``class_labels``, ``storage``,
``segments_sha256`` (a digest of the segment rows packed: clip ids, times, labels). ``--storage flac``
stores each row as FLAC bytes instead (lossless, about half the size; see storage.py). The clip length used
is logged, and clips much shorter than it (zero-padded) are counted in the summary; a truncated file
(shorter than its header says) is listed as failed with the length actually present. Ctrl-C stops the
workers at once and leaves no temporary file; a re-run removes temporaries of killed runs. Before and while
writing, free space is checked, so a full disk ends in one line naming the file and the bytes needed, never
with a half-written output. An output that is an input, a folder or unwritable is refused before any
decoding; an existing one is replaced unless ``--skip_existing``, which keeps it only when it was packed
with the same options (else one line says what differs), from the same segment rows (``segments_sha256``: a
CSV edited since, or another --csv_path, packs it again, and the log says why; a file of an earlier version
has no digest and is kept, with a note) and none of the clips its ``.missing.csv`` lists has arrived in the
audio folder since (a re-run after ``download_wavs`` filled gaps packs them). A clip listed twice is packed
once with the labels of all its rows (``--keep_duplicates``: every row as it is, official).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import hashlib
import io
import logging
import math
import os
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from queue import Empty, Queue
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from panns import argtypes, config, packing, shards
from panns import storage as storage_mod
from panns.audio_io import AUDIO_EXTENSIONS, ffmpeg_exe, is_truncated
from panns.errors import PannsError, run_cli
from panns.utilities import (Progress, atomic_write_text, check_output_path, create_logging, get_filename,
                             remove_stale_temps)

logger = logging.getLogger(__name__)

YOUTUBE_URL_TEMPLATE = "https://www.youtube.com/watch?v={ytid}"
UNBALANCED_ROWS_PER_PART = 50000
MINI_ROWS = 10
FAILURES_CSV_NAME = "download_failures.csv"


# ------------------------------------------------------------------------------------------------
# Segment CSVs
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """One row of an AudioSet segment CSV."""

    ytid: str
    start: float
    end: float
    mids: Tuple[str, ...]
    line: int = 0  # 1-based line number in the CSV, for error messages

    @property
    def audio_name(self) -> str:
        # 'Y' prefix: some YouTube ids start with '-', which breaks command lines (official naming).
        return f"Y{self.ytid}.wav"


def _parse_segment(line: str, n: int) -> Segment:
    """One ``YTID, start, end, "mid,mid"`` row; ValueError with the reason when it is not one."""
    # The first three commas end id, start and end (none of them holds one); the rest is the label field. (A
    # split on ', ' first took a quoted field of four or more labels, '"/m/a, /m/b, /m/c, /m/d"', for the row.)
    items = [x.strip() for x in line.split(",", 3)]
    # every field quoted ('"YTID","0.000","10.000","/m/a,/m/b"', as pandas' QUOTE_ALL and some sheet exports
    # write it): the quotes around id, start and end are not part of them
    ytid, start_text, end_text = (x.strip().strip('"').strip() for x in items[:3]) if len(items) >= 4 else ("",) * 3
    if len(items) < 4 or not ytid:
        raise ValueError("expected 'YTID, start, end, \"labels\"'")
    try:
        start, end = float(start_text), float(end_text)
    except ValueError:
        raise ValueError("start/end are not numbers") from None
    # A segment the download could not cut: ffmpeg reads '-t 0' as no limit (the rest of the video became the
    # clip), and a negative or NaN time is no place in a video.
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"start/end must be finite numbers, got {start_text} and {end_text}")
    if start < 0:
        raise ValueError(f"start {start_text} is negative")
    if end <= start:
        raise ValueError(f"end {end_text} is not after start {start_text}")
    label_field = items[3]
    parts = label_field.split('"')
    labels = parts[1] if len(parts) >= 3 else label_field.strip()
    mids = tuple(m.strip() for m in labels.split(",") if m.strip())
    return Segment(ytid, start, end, mids, n)


def drop_repeated(segments: Sequence[Segment]) -> Tuple[List[Segment], List[Segment], int]:
    """(segments with each clip id once, at its first row, with the labels of all the rows naming it; the later
    rows dropped; how many clips got labels from a later row). A clip is positive for a class when any of its
    rows says so: keeping the first row's labels alone dropped the others silently."""
    first: Dict[str, int] = {}
    kept: List[Segment] = []
    dropped: List[Segment] = []
    merged: set = set()
    for s in segments:
        k = first.get(s.audio_name)
        if k is None:
            first[s.audio_name] = len(kept)
            kept.append(s)
            continue
        dropped.append(s)
        new = [m for m in s.mids if m not in kept[k].mids]
        if new:
            kept[k] = dataclasses.replace(kept[k], mids=kept[k].mids + tuple(dict.fromkeys(new)))
            merged.add(s.audio_name)
    return kept, dropped, len(merged)


_HEADER_LINES = 3  # AudioSet's segment CSVs open with three header lines


def _is_header(line: str, n: int) -> bool:
    """A header line: blank, a '#' comment anywhere, or among the first three lines 'empty' (as the official
    split writes its parts) or a 'YTID, start_seconds, ...' column header. Any other line is a segment row:
    a malformed row on line 1 is reported like one on line 4, not taken for a header."""
    text = line.strip()
    if not text or text.startswith("#"):
        return True
    return n <= _HEADER_LINES and (text == "empty" or text.split(",")[0].strip().strip('"').upper() == "YTID")


def read_segments_csv(csv_path: str) -> List[Segment]:
    """Parse a segment CSV, with or without AudioSet's three header lines.

    The official rule dropped the first three lines blindly, so a CSV without them lost three clips.
    Here header lines (see :func:`_is_header`) are skipped and every other line must be a segment row.
    Rows that cannot be parsed, or whose times are no segment (end not after start, a negative start, NaN or
    inf), are all reported with their line numbers in one error; none is dropped silently. An empty CSV is an
    error."""
    if not os.path.isfile(csv_path):
        raise PannsError(f"segment CSV not found: {csv_path}")
    lines = config.read_text(csv_path).splitlines()   # UTF-8, UTF-16 or Latin-1, else one line
    segments, bad = [], []
    for n, line in enumerate(lines, start=1):
        if _is_header(line, n):
            continue
        try:
            segments.append(_parse_segment(line, n))
        except ValueError as e:
            bad.append(f"line {n} ({e}: {line[:60]!r})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise PannsError(f"{csv_path}: {len(bad)} rows cannot be parsed: {shown}. Fix or delete them and re-run")
    if not segments:
        raise PannsError(f"{csv_path} lists no segments (expected rows 'YTID, start, end, \"mids\"')")
    return segments


def targets_for(segments: Sequence[Segment], labels: config.ClassLabels, csv_path: str,
                labels_csv: str) -> np.ndarray:
    """Multi-hot bool targets (N, classes_num). Unknown mids raise PannsError naming mid, line and label CSV."""
    targets = np.zeros((len(segments), labels.classes_num), dtype=bool)
    id_to_ix = labels.id_to_ix
    for n, seg in enumerate(segments):
        for mid in seg.mids:
            ix = id_to_ix.get(mid)
            if ix is None:
                raise PannsError(f"label id {mid!r} ({csv_path} line {seg.line}) is not in the label CSV "
                                 f"{labels_csv}; pass the matching --class_labels_csv")
            targets[n, ix] = True
    return targets


def read_metadata(csv_path: str, classes_num: Optional[int] = None, id_to_ix: Optional[dict] = None,
                  class_labels_csv: Optional[str] = None) -> dict:
    """Official helper: {'audio_name': array of 'Y<YTID>.wav', 'target': bool (N, classes_num)}."""
    segments = read_segments_csv(csv_path)
    if id_to_ix is None:
        labels = config.read_class_labels(class_labels_csv)
        targets = targets_for(segments, labels, csv_path, class_labels_csv or config.DEFAULT_LABELS_CSV)
    else:
        ids = [None] * (classes_num or len(id_to_ix))
        for mid, ix in id_to_ix.items():
            ids[ix] = mid
        labels = config.ClassLabels(ids=ids, labels=[str(i) for i in ids])
        targets = targets_for(segments, labels, csv_path, "<id_to_ix>")
    return {"audio_name": np.array([s.audio_name for s in segments]), "target": targets}


PART_CSV_PATTERN = "unbalanced_train_segments_part*.csv"   # what scripts/1 and 2 find (and download and pack)


def _stale_parts(folder: str, written: Sequence[str], unbalanced_csv: str) -> List[str]:
    """Part CSVs in ``folder`` or below (the scripts find them recursively) that this split does not write: parts
    of an earlier split of a longer CSV, which the scripts would download and pack as if they were current."""
    if not os.path.isdir(folder):
        return []
    keep = {os.path.realpath(p) for p in written} | {os.path.realpath(unbalanced_csv)}
    stale = []
    for d, dirs, files in os.walk(folder):
        dirs.sort()
        stale += [os.path.join(d, f) for f in sorted(files) if fnmatch.fnmatchcase(f, PART_CSV_PATTERN)
                  and os.path.realpath(os.path.join(d, f)) not in keep]
    return stale


def split_unbalanced_csv_to_partial_csvs(unbalanced_csv: str, unbalanced_partial_csvs_dir: str,
                                         rows_per_part: int = UNBALANCED_ROWS_PER_PART,
                                         remove_stale_parts: bool = False) -> List[str]:
    """Split the big unbalanced CSV into parts of <= 50,000 rows (official format: 3 'empty' lines first).

    Part CSVs already in the folder that this split does not write (an earlier split of a longer CSV) are refused
    before anything is written, naming them: the scripts would download and pack them with the new parts. With
    ``remove_stale_parts`` they are removed after the new parts are written, and named."""
    if not os.path.isfile(unbalanced_csv):
        raise PannsError(f"unbalanced CSV not found: {unbalanced_csv}")
    read_segments_csv(unbalanced_csv)  # every row must parse (reported with line numbers)
    # The segment rows as they are written, without the header lines (the same rule as read_segments_csv).
    lines = [ln + "\n" for n, ln in enumerate(config.read_text(unbalanced_csv).splitlines(), start=1)
             if not _is_header(ln, n)]
    files_num = int(np.ceil(len(lines) / float(rows_per_part)))
    paths = [os.path.join(unbalanced_partial_csvs_dir, f"unbalanced_train_segments_part{r:02d}.csv")
             for r in range(files_num)]
    for path in paths:   # all before the first write: a part named like the input would replace it
        check_output_path(path, [unbalanced_csv], "part CSV")
    stale = _stale_parts(unbalanced_partial_csvs_dir, paths, unbalanced_csv)
    if stale and not remove_stale_parts:
        raise PannsError(f"{unbalanced_partial_csvs_dir} holds {len(stale)} part CSVs that this split of "
                         f"{unbalanced_csv} ({files_num} parts) would not write, left by an earlier split of a longer "
                         f"CSV: {packing.name_paths(stale, unbalanced_partial_csvs_dir)}. The scripts would download "
                         "and pack them too: remove them, or re-run with --remove_stale_parts (REMOVE_STALE_PARTS=1 "
                         "for scripts/1_download_dataset.sh); nothing was written")
    os.makedirs(unbalanced_partial_csvs_dir, exist_ok=True)
    out = []
    for r, path in enumerate(paths):
        chunk = lines[r * rows_per_part:(r + 1) * rows_per_part]
        atomic_write_text(path, "empty\nempty\nempty\n" + "".join(chunk))
        print(f"Write out csv to {path}")
        out.append(path)
    for path in stale:
        os.remove(path)
    if stale:
        print(f"Removed {len(stale)} part CSVs of an earlier split (--remove_stale_parts): "
              f"{packing.name_paths(stale, unbalanced_partial_csvs_dir)}")
    return out


PACKED_PART_PATTERN = "unbalanced_train_part*.h5"   # what scripts/2_*.sh pack and scripts/3 indexes


def packed_part_name(nn: str) -> str:
    """The packed file of unbalanced part ``nn`` (``'01'`` of a part CSV, ``'00001'`` of a shard), as
    scripts/2_*.sh name it."""
    return f"unbalanced_train_part{nn}.h5"


def parts_of_csvs(part_csvs_dir: str) -> List[str]:
    """The packed parts the part CSVs in ``part_csvs_dir`` or below map to (scripts/2_pack_waveforms_to_hdf5s.sh:
    ``unbalanced_train_segments_partNN.csv`` -> ``unbalanced_train_partNN.h5``)."""
    if not os.path.isdir(part_csvs_dir):
        raise PannsError(f"part CSV folder not found: {part_csvs_dir}")
    stem = PART_CSV_PATTERN.split("*")[0]
    return sorted({packed_part_name(f[len(stem):-len(".csv")]) for _d, _dirs, files in os.walk(part_csvs_dir)
                   for f in files if fnmatch.fnmatchcase(f, PART_CSV_PATTERN)})


def parts_of_shards(spec: str) -> List[str]:
    """The packed parts the unbalanced shards of a --shards value map to (scripts/2_pack_from_shards.sh: the
    shard at position i of ``shards.list_shards`` -> ``unbalanced_train_part<i, 5 digits>.h5``)."""
    return [packed_part_name(f"{i:05d}") for i in range(len(shards.list_shards(spec)))]


def stale_packed_parts(packed_dir: str, expected: Sequence[str]) -> List[str]:
    """Packed unbalanced parts directly in ``packed_dir`` whose names are not in ``expected`` (sorted paths)."""
    if not os.path.isdir(packed_dir):
        return []
    keep = set(expected)
    return [os.path.join(packed_dir, n) for n in sorted(os.listdir(packed_dir))
            if fnmatch.fnmatchcase(n, PACKED_PART_PATTERN) and n not in keep
            and os.path.isfile(os.path.join(packed_dir, n))]


def check_packed_parts(packed_dir: str, part_csvs_dir: Optional[str] = None, shards_spec: Optional[str] = None,
                       remove_stale_parts: bool = False) -> List[str]:
    """Refuse (or, with ``remove_stale_parts``, remove and name) packed unbalanced parts in ``packed_dir`` that no
    current part maps to: parts of an earlier split of a longer CSV (``part_csvs_dir``), or parts numbered beyond
    a shorter shard list (``shards_spec``: an earlier, longer list, another mirror). Script 3 would index them
    into full_train.h5 as current data. The one check of both scripts/2_*.sh, before they pack anything; removal
    takes a part's ``.missing.csv`` and its half-packed ``.parts`` folder too. Returns the stale parts."""
    if (part_csvs_dir is None) == (shards_spec is None):
        raise PannsError("give one of --part_csvs_dir and --shards")
    if part_csvs_dir is not None:
        stale = stale_packed_parts(packed_dir, parts_of_csvs(part_csvs_dir))
        source, cause = f"no part CSV in {part_csvs_dir} maps to", "an earlier split"
    else:
        assert shards_spec is not None
        expected = parts_of_shards(shards_spec)
        stale = stale_packed_parts(packed_dir, expected)
        source = f"no shard of {shards_spec} maps to ({len(expected)} shards: parts 00000 to {len(expected) - 1:05d})"
        cause = "a run over a longer shard list or another mirror"
    if not stale:
        return []
    shown = packing.name_paths(stale, packed_dir)
    if not remove_stale_parts:
        raise PannsError(f"{packed_dir} holds {len(stale)} packed parts that {source}, left by {cause}: {shown}. "
                         "Script 3 would index them into full_train.h5: remove them, or re-run with "
                         "--remove_stale_parts (REMOVE_STALE_PARTS=1 for scripts/2_*.sh); nothing was packed")
    for path in stale:
        for extra in (path + ".missing.csv", path):
            if os.path.exists(extra):
                os.remove(extra)
        shutil.rmtree(path + ".parts", ignore_errors=True)
    print(f"Removed {len(stale)} packed parts of {cause} (--remove_stale_parts): {shown}")
    return stale


# ------------------------------------------------------------------------------------------------
# Download
# ------------------------------------------------------------------------------------------------

# Substrings of yt-dlp/HTTP error messages that mean "try again later" (throttling, flaky network).
_TRANSIENT_MARKERS = (
    "http error 429", "too many requests", "http error 500", "http error 502", "http error 503",
    "http error 504", "timed out", "timeout", "temporary failure", "connection reset", "connection refused",
    "connection aborted", "remote end closed", "incompleteread", "network is unreachable", "try again later",
    "rate-limit", "rate limit", "confirm you're not a bot", "confirm you’re not a bot", "ssl", "eof occurred",
    # No network or no DNS: the clip is fine, the machine is offline (getaddrinfo's messages on Linux and macOS).
    "failed to resolve", "name or service not known", "nodename nor servname", "no address associated",
    "name resolution", "no route to host", "network is down",
)


def is_transient_error(message: str) -> bool:
    """True when a download error message looks like throttling or a transient network problem."""
    m = message.lower()
    return any(k in m for k in _TRANSIENT_MARKERS)


def is_valid_wav(path: str, sample_rate: int = config.sample_rate) -> bool:
    """A finished clip: readable WAV, mono, 16-bit PCM, the expected rate, at least one sample, not cut short."""
    try:
        info = sf.info(path)
    except Exception:
        return False
    return (info.format == "WAV" and info.channels == 1 and info.samplerate == sample_rate
            and info.subtype == "PCM_16" and info.frames > 0 and not is_truncated(path))


class _YdlLogger:
    """Collects yt-dlp messages instead of printing them (the progress bar owns the terminal)."""

    def __init__(self) -> None:
        self.errors: List[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        logger.debug("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        self.errors.append(msg)


@dataclass
class DownloadResult:
    segment: Segment
    status: str          # 'downloaded' | 'skipped' | 'failed'
    reason: str = ""
    permanent: bool = False
    attempts: int = 0


@dataclass
class DownloadOptions:
    audios_dir: str
    url_template: str = YOUTUBE_URL_TEMPLATE
    sample_rate: int = config.sample_rate
    max_retries: int = 4
    retry_base_delay: float = 10.0
    socket_timeout: float = 30.0
    cookies: Optional[str] = None
    stop: threading.Event = field(default_factory=threading.Event)  # set on Ctrl-C: no new work, no retries


class _Fetcher(object):
    """One yt-dlp instance per download thread, reused for every clip, writing into the thread's own temp folder.

    Only yt-dlp's YouTube and generic extractors are registered: building the full extractor list costs
    seconds per instance, and mirrors given by ``--url_template`` serve plain media (generic extractor).
    """

    _count = 0
    _count_lock = threading.Lock()

    def __init__(self, opts: "DownloadOptions"):
        import yt_dlp  # optional dependency: only the YouTube download route needs it

        with _Fetcher._count_lock:
            _Fetcher._count += 1
            n = _Fetcher._count
        self.tmp_dir = os.path.join(opts.audios_dir, f".tmp_dl_{os.getpid()}_{n}")
        os.makedirs(self.tmp_dir, exist_ok=True)
        self.log = _YdlLogger()
        params = {
            "format": "bestaudio/best",
            "outtmpl": os.path.join(self.tmp_dir, "media.%(ext)s"),
            "quiet": True, "no_warnings": True, "noprogress": True, "noplaylist": True,
            "retries": 2, "fragment_retries": 2, "socket_timeout": opts.socket_timeout,
            "cachedir": False, "overwrites": True, "logger": self.log,
        }
        exe = ffmpeg_exe()
        if exe:
            params["ffmpeg_location"] = exe
        if opts.cookies:
            params["cookiefile"] = opts.cookies
        self.ydl = yt_dlp.YoutubeDL(params, auto_init=False)
        try:
            from yt_dlp.extractor.generic import GenericIE  # see yt_dlp above
            from yt_dlp.extractor.youtube import YoutubeIE

            self.ydl.add_info_extractor(YoutubeIE())
            self.ydl.add_info_extractor(GenericIE())
        except ImportError:  # other yt-dlp layout: all extractors
            self.ydl.add_default_info_extractors()

    def clear(self) -> None:
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)

    def fetch(self, url: str) -> str:
        """Download the best audio stream of ``url``; returns the file path (inside ``tmp_dir``)."""
        self.clear()
        self.log.errors.clear()
        try:
            ret = self.ydl.download([url])
        except Exception as e:
            raise RuntimeError(" ".join(str(e).replace("ERROR: ", "").split())) from None
        files = [f for f in os.listdir(self.tmp_dir) if f.startswith("media.") and not f.endswith((".part", ".ytdl"))]
        if ret != 0 or not files:
            raise RuntimeError(self.log.errors[-1] if self.log.errors else f"yt-dlp returned {ret} and no file")
        return os.path.join(self.tmp_dir, files[0])

    def close(self) -> None:
        try:
            self.ydl.close()
        except Exception:
            pass
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _cut_segment(media: str, seg: Segment, out_wav: str, sample_rate: int) -> None:
    """ffmpeg: seek to the segment start before opening the input, cut, downmix, resample, 16-bit PCM."""
    duration = seg.end - seg.start
    if not (math.isfinite(seg.start) and seg.start >= 0 and math.isfinite(duration) and duration > 0):
        # read_segments_csv refuses such rows; '-t 0' would be no limit to ffmpeg (the rest of the video)
        raise RuntimeError(f"segment {seg.start:g}-{seg.end:g} s is empty or not in the video")
    exe = ffmpeg_exe()
    if exe is None:
        raise PannsError("ffmpeg not found; install it or 'pip install imageio-ffmpeg'")
    cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-ss", f"{seg.start:.3f}", "-t", f"{duration:.3f}", "-i", media,
           "-vn", "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le", "-f", "wav", out_wav]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg failed: {err[-1] if err else proc.returncode}")


def _download_one(seg: Segment, opts: DownloadOptions, fetcher: _Fetcher) -> DownloadResult:
    """Download and cut one segment with retries; never raises for per-clip problems."""
    out = os.path.join(opts.audios_dir, seg.audio_name)
    if is_valid_wav(out, opts.sample_rate):
        return DownloadResult(seg, "skipped")
    url = opts.url_template.replace("{ytid}", seg.ytid)
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                media = fetcher.fetch(url)
            except RuntimeError as e:  # yt-dlp DownloadError and network errors
                msg = str(e)
                if is_transient_error(msg) and attempt <= opts.max_retries:
                    delay = opts.retry_base_delay * (2 ** (attempt - 1)) * (1 + 0.25 * random.random())
                    logger.info("%s: transient error (%s), retry %d in %.1f s", seg.ytid, msg, attempt, delay)
                    if opts.stop.wait(delay):
                        return DownloadResult(seg, "failed", f"interrupted (download: {msg})", False, attempt)
                    continue
                return DownloadResult(seg, "failed", f"download: {msg}", not is_transient_error(msg), attempt)
            tmp_wav = os.path.join(fetcher.tmp_dir, "clip.wav")
            try:
                _cut_segment(media, seg, tmp_wav, opts.sample_rate)
            except RuntimeError as e:
                return DownloadResult(seg, "failed", str(e), True, attempt)
            if not is_valid_wav(tmp_wav, opts.sample_rate):
                return DownloadResult(seg, "failed", f"no audio in segment {seg.start:g}-{seg.end:g} s "
                                      "(segment beyond the end of the media?)", True, attempt)
            os.replace(tmp_wav, out)
            return DownloadResult(seg, "downloaded", attempts=attempt)
    finally:
        fetcher.clear()


def _clean_stale_tmp_dirs(audios_dir: str) -> None:
    """Remove temporary folders left by killed runs (their process no longer exists)."""
    for name in os.listdir(audios_dir):
        if not name.startswith(".tmp_dl_"):
            continue
        try:
            os.kill(int(name.split("_")[2]), 0)
            continue  # that process is still running
        except (ValueError, IndexError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(os.path.join(audios_dir, name), ignore_errors=True)


_FAILURES_HEADER = ["YTID", "start_seconds", "end_seconds", "reason", "permanent", "attempts"]


def _read_failures(path: str) -> Dict[str, Tuple[str, bool]]:
    """{YTID: (reason, permanent)} of an earlier run's failures CSV. Another file under that name is an error,
    not an empty list: this run would overwrite it."""
    if not os.path.isfile(path):
        return {}
    rows = config.read_csv_rows(path)   # any encoding a spreadsheet saves, else one PannsError
    if not rows:
        return {}
    header = [c.strip() for c in rows[0]]
    if "YTID" not in header:
        raise PannsError(f"{path} is not a download failures list (expected the header {','.join(_FAILURES_HEADER)}); "
                         "move it away or pass another --failures_csv")
    col = {name: header.index(name) for name in ("YTID", "reason", "permanent") if name in header}

    def field(row: List[str], name: str, default: str) -> str:
        return row[col[name]].strip() if name in col and col[name] < len(row) else default

    return {field(r, "YTID", ""): (field(r, "reason", ""), field(r, "permanent", "0") == "1")
            for r in rows[1:] if field(r, "YTID", "")}


def _write_failures(path: str, rows: List[DownloadResult]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_FAILURES_HEADER)
    for r in rows:
        s = r.segment
        w.writerow([s.ytid, f"{s.start:g}", f"{s.end:g}", r.reason, int(r.permanent), r.attempts])
    atomic_write_text(path, buf.getvalue())


@dataclass
class DownloadReport:
    downloaded: int = 0
    skipped: int = 0
    failed: List[DownloadResult] = field(default_factory=list)
    failures_csv: str = ""
    not_retried: int = 0   # of ``failed``: permanent failures of an earlier run, not tried again


def download_wavs(csv_path: str, audios_dir: str, mini_data: bool = False, num_workers: int = 4,
                  url_template: str = YOUTUBE_URL_TEMPLATE, max_retries: int = 4, retry_base_delay: float = 10.0,
                  failures_csv: Optional[str] = None, retry_failed: bool = False, sample_rate: int = config.sample_rate,
                  socket_timeout: float = 30.0, cookies: Optional[str] = None, progress: bool = True) -> DownloadReport:
    """Download the segments of a CSV as ``<audios_dir>/Y<YTID>.wav`` (see module docstring)."""
    if "{ytid}" not in url_template:
        raise PannsError(f"--url_template must contain '{{ytid}}', got {url_template!r}")
    if cookies is not None and not (os.path.isfile(cookies) and os.access(cookies, os.R_OK)):
        # yt-dlp skips a cookie file it cannot read without a word: the clips that need it (past YouTube's bot
        # check, age-restricted) would fail, the age-restricted ones as permanent failures the next run skips
        raise PannsError(f"--cookies {cookies} is not a readable file (a cookies.txt exported from a browser)")
    segments = read_segments_csv(csv_path)
    if mini_data:
        segments = segments[:MINI_ROWS]
    failures_csv = failures_csv or os.path.join(audios_dir, FAILURES_CSV_NAME)
    # Before any download: a failures list that cannot be written at the end would be lost with the run.
    check_output_path(failures_csv, [csv_path], "failures CSV")
    os.makedirs(audios_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(failures_csv)), exist_ok=True)
    _clean_stale_tmp_dirs(audios_dir)
    remove_stale_temps(failures_csv)
    previous = _read_failures(failures_csv)
    opts = DownloadOptions(audios_dir, url_template, sample_rate, max_retries, retry_base_delay, socket_timeout,
                           cookies)

    report = DownloadReport(failures_csv=failures_csv)
    todo = []
    for seg in segments:
        prev = previous.get(seg.ytid)
        # Reasons are classified again: a list written by an older version may call a DNS failure permanent.
        permanent = bool(prev and prev[1] and not is_transient_error(prev[0]))
        if permanent and not retry_failed and not os.path.exists(os.path.join(audios_dir, seg.audio_name)):
            report.failed.append(DownloadResult(seg, "failed", prev[0], True, 0))  # known permanent failure
        else:
            todo.append(seg)
    report.not_retried = len(report.failed)
    if report.failed:
        logger.info("Not retrying %d clips that failed permanently before (use --retry_failed)", len(report.failed))
    logger.info("Downloading %d clips of %s to %s with %d workers", len(todo), csv_path, audios_dir, num_workers)

    t0 = time.time()
    local = threading.local()
    fetchers: List[_Fetcher] = []
    lock = threading.Lock()

    def work(seg: Segment) -> DownloadResult:
        if is_valid_wav(os.path.join(audios_dir, seg.audio_name), sample_rate):
            return DownloadResult(seg, "skipped")  # before building a yt-dlp instance
        fetcher = getattr(local, "fetcher", None)
        if fetcher is None:
            fetcher = local.fetcher = _Fetcher(opts)
            with lock:
                fetchers.append(fetcher)
        return _download_one(seg, opts, fetcher)

    done = set()
    # Daemon threads, not a ThreadPoolExecutor: its threads are joined at exit, so Ctrl-C waited for
    # every running download (and its retry back-off). Here Ctrl-C sets ``stop`` and returns at once;
    # a download still running is abandoned (its temp folder is removed by the next run).
    queue: "Queue[Optional[Segment]]" = Queue()
    results: "Queue[tuple]" = Queue()
    for seg in todo:
        queue.put(seg)

    def loop() -> None:
        while not opts.stop.is_set():
            try:
                seg = queue.get_nowait()
            except Empty:
                return
            try:
                results.put((work(seg), None))
            except BaseException as e:  # reported to the main thread, which re-raises it
                results.put((None, e))
                return

    threads = [threading.Thread(target=loop, daemon=True, name=f"download-{k}")
               for k in range(max(1, min(num_workers, len(todo))))]
    try:
        with tqdm(total=len(todo), desc=f"download {get_filename(csv_path)}", unit="clip", disable=not progress) as bar:
            for t in threads:
                t.start()
            for _ in range(len(todo)):
                while True:
                    try:
                        res, err = results.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
                        break
                    except Empty:
                        if not any(t.is_alive() for t in threads) and results.empty():
                            raise PannsError("download threads stopped unexpectedly")
                if err is not None:
                    raise err
                done.add(res.segment.ytid)
                if res.status == "downloaded":
                    report.downloaded += 1
                    logger.info("Download and convert to %s", os.path.join(audios_dir, res.segment.audio_name))
                elif res.status == "skipped":
                    report.skipped += 1
                else:
                    report.failed.append(res)
                    logger.info("Failed %s: %s", res.segment.ytid, res.reason)
                bar.set_postfix(ok=report.downloaded, skip=report.skipped, fail=len(report.failed), refresh=False)
                bar.update(1)
    except BaseException:
        opts.stop.set()  # running clips stop at their next check; queued ones are never started
        raise
    finally:
        for f in fetchers:
            f.close()
        # Failures of this run, plus earlier entries of clips this run did not get to (interrupted).
        failed = list(report.failed)
        listed = {r.segment.ytid for r in failed}
        for seg in todo:
            prev = previous.get(seg.ytid)
            if prev and seg.ytid not in done and seg.ytid not in listed:
                failed.append(DownloadResult(seg, "failed", prev[0], prev[1], 0))
        order = {s.ytid: i for i, s in enumerate(segments)}
        failed.sort(key=lambda r: order.get(r.segment.ytid, 0))
        _write_failures(failures_csv, failed)
    report.failed.sort(key=lambda r: order.get(r.segment.ytid, 0))
    logger.info("Download finished in %.1f s: %d downloaded, %d already present, %d failed (listed in %s)",
                time.time() - t0, report.downloaded, report.skipped, len(report.failed), failures_csv)
    return report


# ------------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------------

_EXT_RANK = {ext: i for i, ext in enumerate(AUDIO_EXTENSIONS)}


def scan_audios(audios_dir: str) -> Dict[str, str]:
    """Map 'Y<YTID>' -> file path for every audio file in a folder (one listing, not a glob per clip).

    When several files share a stem, ``.wav`` wins, then the order of ``audio_io.AUDIO_EXTENSIONS``.
    """
    found: Dict[str, Tuple[int, str]] = {}
    with os.scandir(audios_dir) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            rank = _EXT_RANK.get(ext.lower())
            if rank is None or not stem.startswith("Y") or not entry.is_file():
                continue
            if stem not in found or rank < found[stem][0]:
                found[stem] = (rank, entry.path)
    return {stem: path for stem, (_rank, path) in found.items()}


def _missing_clips_now_present(waveforms_hdf5_path: str, audios_dir: str) -> int:
    """How many clips ``<out>.missing.csv`` lists that ``audios_dir`` now holds: not found then, or a file written
    after the output (a re-download of one that did not decode). A re-run of the pack script after
    ``download_wavs`` fills gaps must pack them, not keep the output that lacks them (--skip_existing)."""
    listed = waveforms_hdf5_path + ".missing.csv"
    if not os.path.isfile(listed) or not os.path.isdir(audios_dir):
        return 0
    try:
        with open(listed, newline="", encoding="utf-8") as f:
            rows = [(r.get("audio_name") or "", r.get("reason") or "") for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return 0
    packed_at = os.path.getmtime(waveforms_hdf5_path)
    available = scan_audios(audios_dir)
    arrived = 0
    for name, reason in rows:
        path = available.get(os.path.splitext(name)[0])
        if path is not None and (reason == "file not found" or os.path.getmtime(path) > packed_at):
            arrived += 1
    return arrived


def segments_digest(segments: Sequence[Segment], keep_duplicates: bool = False) -> str:
    """sha256 of the segment rows an output is packed from (clip id, start, end, labels, in order), stored in the
    output (``packing.SEGMENTS_DIGEST_ATTR``) for --skip_existing. Parsed values, not the bytes: header lines,
    spacing, quoting or the CSV's encoding do not count, a label, a time or a clip does; so does
    ``keep_duplicates``, which decides which of those rows become rows of the output."""
    h = hashlib.sha256()
    for s in segments:
        h.update(f"{s.ytid}\t{s.start!r}\t{s.end!r}\t{','.join(s.mids)}\n".encode("utf-8"))
    if keep_duplicates:   # the default leaves the digest of outputs packed before this option counted
        h.update(b"keep_duplicates\n")
    return h.hexdigest()


def _repack_reason(kept: packing.KeptOutput, csv_path: str, audios_dir: str, digest: str) -> Tuple[str, str]:
    """(why a complete output kept by --skip_existing must be packed again, '' when it need not; a note on a kept
    one). Packed again: its segment rows differ from the CSV's now (a label edited, a clip added, another
    --csv_path), or clips its .missing.csv lists have arrived. Not the audio folder's path: moving the folder
    must not force a re-pack. An output of an earlier version has no digest: kept as before, with a note."""
    waveforms_hdf5_path = kept.path
    have = kept.text_attr(packing.SEGMENTS_DIGEST_ATTR)
    if have is not None and have != digest:
        return (f"packed from other segment rows than {csv_path} lists now (a label, time or clip changed, "
                "another --csv_path, or --keep_duplicates switched)"), ""
    arrived = _missing_clips_now_present(waveforms_hdf5_path, audios_dir)
    if arrived:
        return (f"{arrived} clips listed in {waveforms_hdf5_path}.missing.csv are in {audios_dir} now "
                "(downloaded since?)"), ""
    if have is None:
        return "", (f"packed by an earlier version, which recorded no digest of its segment CSV: changes to "
                    f"{csv_path} since then cannot be seen; {packing.REPACK_HINT}")
    return "", ""


@dataclass
class PackReport:
    path: str
    rows: int
    missing: List[Tuple[str, str]]
    skipped_existing: bool = False
    short: int = 0          # clips shorter than half the clip length (zero-padded)
    clip_seconds: float = 0.0
    repeated: int = 0       # CSV rows naming a clip listed before (packed once)
    replaced: bool = False  # an existing output was replaced
    unlabelled: int = 0     # packed clips whose CSV row names no label (their targets are all zero)
    repack_reason: str = ""  # why an output --skip_existing found was packed again
    skip_note: str = ""      # about an output --skip_existing kept (one of an earlier version: CSV not compared)


def log_clip_length(sample_rate: int, clip_seconds: float, clip_samples: int) -> None:
    logger.info("Clip length %g s (%d samples at %d Hz): longer clips are cut, shorter ones zero-padded "
                "(--clip_seconds)", clip_seconds, clip_samples, sample_rate)


def summarize(rep: PackReport, total: int) -> str:
    """One line for the console and the log: rows, failures, short clips."""
    msg = f"Write {rep.rows} clips to {rep.path}" + (" (replaced the existing file" + (
        f": {rep.repack_reason})" if rep.repack_reason else ")") if rep.replaced else "")
    if rep.missing:
        msg += f"; {len(rep.missing)} of {total} missing or undecodable, see {rep.path}.missing.csv"
    if rep.repeated:
        msg += (f"; {rep.repeated} repeated rows of the CSV (a clip id listed again) packed once, with the labels "
                "of all its rows (--keep_duplicates: every row)")
    if rep.unlabelled:
        msg += f"; {rep.unlabelled} clips have no label in the CSV (packed with no positive label)"
    if rep.short:
        msg += (f"; {rep.short} clips are shorter than {packing.SHORT_FRACTION:g} x the clip length "
                f"({rep.clip_seconds:g} s) and were zero-padded (set --clip_seconds to the clips' length?)")
    return msg


def pack_waveforms_to_hdf5(csv_path: str, audios_dir: str, waveforms_hdf5_path: str, mini_data: bool = False,
                           sample_rate: int = config.sample_rate, clip_seconds: float = config.clip_seconds,
                           num_workers: int = 1, class_labels_csv: Optional[str] = None,
                           skip_existing: bool = False, progress: bool = True, storage: str = "pcm16",
                           keep_duplicates: bool = False) -> PackReport:
    """Pack the clips of a segment CSV found in ``audios_dir`` into one waveform HDF5 (see module docstring).

    A clip id listed again in the CSV is packed once (at its first row, with the labels of all its rows), and
    counted in the report: two rows would be sampled and evaluated twice. ``keep_duplicates``: pack every row
    (official)."""
    storage_mod.check_storage(storage, sample_rate)
    clip_samples = packing.clip_samples_for(sample_rate, clip_seconds)
    if mini_data:
        waveforms_hdf5_path += ".mini"
    labels = config.read_class_labels(class_labels_csv)
    inputs = [csv_path, class_labels_csv or config.DEFAULT_LABELS_CSV]
    packing.check_pack_output(waveforms_hdf5_path, inputs)
    # Read before the --skip_existing decision: an output is kept only when packed from these same rows.
    segments = read_segments_csv(csv_path)
    if mini_data:
        segments = segments[:MINI_ROWS]
    digest = segments_digest(segments, keep_duplicates)
    repack_reason = ""
    kept = packing.read_kept_output(waveforms_hdf5_path) if skip_existing else None
    if kept is not None:
        kept.check_reusable(sample_rate, clip_samples, storage, labels)
        repack_reason, note = _repack_reason(kept, csv_path, audios_dir, digest)
        if not repack_reason:
            logger.info("Skip %s: already packed%s", waveforms_hdf5_path, f" ({note})" if note else "")
            return PackReport(waveforms_hdf5_path, -1, [], skipped_existing=True, skip_note=note)
        logger.warning("%s: %s; packing it again", waveforms_hdf5_path, repack_reason)
    replaced = os.path.exists(waveforms_hdf5_path)
    if replaced:
        logger.warning("%s exists and will be replaced (--skip_existing keeps a complete one)", waveforms_hdf5_path)
    repeated = 0
    if not keep_duplicates:
        segments, dropped, merged = drop_repeated(segments)
        repeated = len(dropped)
        if dropped:
            logger.warning("%s: %d repeated rows packed once (first row kept, labels of its rows merged%s): %s",
                           csv_path, repeated, f"; {merged} clips got labels from a later row" if merged else "",
                           ", ".join(f"line {s.line} ({s.ytid})" for s in dropped[:5])
                           + (", ..." if repeated > 5 else ""))
    targets = targets_for(segments, labels, csv_path, class_labels_csv or config.DEFAULT_LABELS_CSV)
    if not os.path.isdir(audios_dir):
        raise PannsError(f"audio folder not found: {audios_dir}")
    available = scan_audios(audios_dir)
    if not available:
        raise PannsError(f"no audio files (Y<YTID>.wav, .flac, ...) in {audios_dir}; download them first "
                         "(utils/dataset.py download_wavs) or pass the right --audios_dir")
    log_clip_length(sample_rate, clip_seconds, clip_samples)

    missing: List[Tuple[str, str]] = []
    jobs = []
    for n, seg in enumerate(segments):
        path = available.get(f"Y{seg.ytid}")
        if path is None:
            missing.append((seg.audio_name, "file not found"))
            logger.info("%d File does not exist! %s", n, os.path.join(audios_dir, seg.audio_name))
        else:
            jobs.append(packing.DecodeJob(n, path, seg.audio_name, sample_rate, clip_samples, storage))
    if not jobs:
        _nothing_packed(waveforms_hdf5_path, missing,
                        f"none of the {len(segments)} clips of {csv_path} is in {audios_dir}")

    t0 = time.time()
    short = unlabelled = 0
    # The pool forks its workers on entering, before the output file is opened.
    with packing.OrderedPool(packing.decode_row, min(num_workers, len(jobs))) as pool, \
            packing.PackedFile(waveforms_hdf5_path, len(jobs), clip_samples, storage) as out:
        with Progress(len(jobs), f"pack {get_filename(csv_path)}", progress) as bar:
            for res in pool.imap(jobs):
                seg = segments[res.n]
                if res.row is None:
                    missing.append((seg.audio_name, f"decode error: {res.reason}"))
                    logger.info("%d Cannot decode %s: %s", res.n, seg.audio_name, res.reason)
                else:
                    out.add(seg.audio_name.encode(), targets[res.n], res.row)
                    short += res.seconds < packing.SHORT_FRACTION * clip_seconds
                    unlabelled += not seg.mids
                bar.update(1)
        order = {s.audio_name: i for i, s in enumerate(segments)}
        missing.sort(key=lambda m: order.get(m[0], 0))
        if out.rows == 0:
            _nothing_packed(waveforms_hdf5_path, missing, f"no clip of {csv_path} could be decoded")
        packing.write_missing_csv(waveforms_hdf5_path, missing)
        out.commit(labels, sample_rate, {packing.SEGMENTS_DIGEST_ATTR: digest})
    rep = PackReport(waveforms_hdf5_path, out.rows, missing, short=short, clip_seconds=clip_seconds, repeated=repeated,
                     replaced=replaced, unlabelled=unlabelled, repack_reason=repack_reason)
    if missing:
        logger.info("%d of %d clips missing or undecodable, listed in %s.missing.csv", len(missing), len(segments),
                    waveforms_hdf5_path)
    logger.info(summarize(rep, len(segments)))
    logger.info("Pack hdf5 time: %.3f", time.time() - t0)
    return rep


def _nothing_packed(waveforms_hdf5_path: str, missing: Sequence[Tuple[str, str]], what: str) -> None:
    """Raise the one line of a pack that wrote no clip. Without an earlier output, the clips and reasons go to
    ``<output>.missing.csv``; an earlier output is kept, and so is its .missing.csv, which describes it (it was
    replaced by this attempt's list: a 9-row file beside a list of all 14 clips as not found)."""
    if os.path.exists(waveforms_hdf5_path):
        first = f" (first: {missing[0][0]}: {missing[0][1]})" if missing else ""
        raise PannsError(f"{what}{first}; nothing packed, and {waveforms_hdf5_path} and its .missing.csv are kept "
                         "as they were")
    packing.write_missing_csv(waveforms_hdf5_path, missing)
    raise PannsError(f"{what} (listed in {waveforms_hdf5_path}.missing.csv); nothing packed")


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

class _Help(argparse.HelpFormatter):
    """Shows '(default: X)' for options with a real default; help texts that explain their default
    themselves, and unset/False defaults, are left alone (no '(default: None)' noise)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text.lower()):
            return text
        return text + " (default: %(default)s)"


_SKIP_HELP = ("if the output exists and is complete, keep it instead of re-packing; it must have been packed with "
              "the same sample rate, clip length, storage and label CSV (else an error says what differs). "
              "Without it an existing output is replaced")


def _add_row_options(p: argparse.ArgumentParser) -> None:
    """What every packed row is made of (rate, length), how it is decoded and the classes' CSV: one set of flags
    for both packers, so they cannot drift apart."""
    p.add_argument("--sample_rate", type=argtypes.sample_rate,
                   default=config.sample_rate, help="sample rate of the packed waveforms")
    p.add_argument("--clip_seconds", type=argtypes.positive_float, default=config.clip_seconds,
                   help="clip length (pad or truncate)")
    p.add_argument("--num_workers", type=argtypes.non_negative_int, default=min(4, os.cpu_count() or 1),
                   help="decoding processes (default: the CPU count, at most 4; 0 or 1: decode in this process)")
    p.add_argument("--class_labels_csv", type=str, default=None,
                   help="label CSV (index,mid,display_name); default: metadata/class_labels_indices.csv of the repo")


def main(argv: Optional[List[str]] = None) -> None:
    with packing.catch_ctrl_c():   # a Ctrl-C dropped in a finalizer still stops the command; restored after
        _main(argv)


def _main(argv: Optional[List[str]]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")

    p = sub.add_parser("split_unbalanced_csv_to_partial_csvs", help="split the unbalanced CSV into 50k-row parts",
                       formatter_class=_Help)
    p.add_argument("--unbalanced_csv", type=str, required=True, help="path of unbalanced_train_segments.csv")
    p.add_argument("--unbalanced_partial_csvs_dir", type=str, required=True, help="folder for the part CSVs")
    p.add_argument("--remove_stale_parts", action="store_true",
                   help="remove part CSVs in the folder that this split does not write (left by an earlier split of "
                   "a longer CSV; the scripts would download and pack them). Without it such parts are refused")

    p = sub.add_parser("download_wavs", help="download the clips of a segment CSV as 32 kHz mono wavs",
                       formatter_class=_Help)
    p.add_argument("--csv_path", type=str, required=True, help="segment CSV (AudioSet format)")
    p.add_argument("--audios_dir", type=str, required=True, help="folder for Y<YTID>.wav files")
    p.add_argument("--mini_data", action="store_true", default=False, help="only the first 10 clips (debug)")
    # argparse types: 0 workers, -1 retries or a NaN delay were read as 1, 0 and no wait at all
    p.add_argument("--num_workers", type=argtypes.int_in(1), default=4, help="parallel downloads")
    p.add_argument("--url_template", type=str, default=YOUTUBE_URL_TEMPLATE,
                   help="URL of a clip's video, '{ytid}' is replaced by the YouTube id (point it at a mirror)")
    p.add_argument("--max_retries", type=argtypes.non_negative_int, default=4,
                   help="retries of a clip after throttling/transient errors (0: none)")
    p.add_argument("--retry_base_delay", type=argtypes.non_negative_float, default=10.0,
                   help="seconds before the first retry; doubled for every further retry")
    p.add_argument("--failures_csv", type=str, default=None,
                   help=f"CSV listing failed clips and why (default <audios_dir>/{FAILURES_CSV_NAME})")
    p.add_argument("--retry_failed", action="store_true",
                   help="also retry clips that failed permanently in an earlier run (removed/private videos)")
    p.add_argument("--cookies", type=str, default=None, help="cookies.txt passed to yt-dlp (optional)")
    p.add_argument("--logs_dir", type=str, default="_logs", help="folder for log files")

    p = sub.add_parser("pack_waveforms_to_hdf5", help="pack the clips of a segment CSV into one waveform HDF5",
                       formatter_class=_Help)
    p.add_argument("--csv_path", type=str, required=True, help="segment CSV (AudioSet format)")
    p.add_argument("--audios_dir", type=str, required=True, help="folder holding Y<YTID>.wav (or .flac, .mp3, ...)")
    p.add_argument("--waveforms_hdf5_path", type=str, required=True, help="output HDF5")
    p.add_argument("--mini_data", action="store_true", default=False,
                   help="only the first 10 clips; output name gets the suffix .mini")
    _add_row_options(p)
    p.add_argument("--skip_existing", action="store_true",
                   help=_SKIP_HELP + "; packed again when the CSV's rows differ from those it was packed from (a "
                   "label, time or clip changed) or clips its .missing.csv lists have arrived in --audios_dir")
    p.add_argument("--storage", choices=storage_mod.STORAGES, default="pcm16",
                   help="pcm16: official int16 rows; flac: lossless FLAC bytes per row (about half the size)")
    p.add_argument("--keep_duplicates", action="store_true",
                   help="pack every CSV row, a clip id listed twice included (official; default: once, with the "
                   "labels of all its rows, reported)")
    p.add_argument("--logs_dir", type=str, default="_logs", help="folder for log files")

    p = sub.add_parser("pack_from_shards", help="pack hosted AudioSet shards (WebDataset .tar or Parquet) into one "
                       "waveform HDF5", formatter_class=_Help)
    p.add_argument("--shards", type=str, required=True,
                   help="glob ('DIR/*.tar', 'DIR/*.parquet'), folder, or comma-separated shard files (a path "
                   "with a comma in it is read whole)")
    p.add_argument("--waveforms_hdf5_path", type=str, required=True, help="output HDF5")
    _add_row_options(p)
    p.add_argument("--label_field", type=str, default=None,
                   help="json key / column holding the labels; default: first of " + ", ".join(shards.LABEL_FIELDS))
    p.add_argument("--id_field", type=str, default=None,
                   help="json key / column holding the YouTube id; default: first of " + ", ".join(shards.ID_FIELDS)
                   + ", else the tar key (a Parquet row needs one)")
    p.add_argument("--audio_field", type=str, default="audio", help="Parquet column holding the audio")
    p.add_argument("--storage", choices=storage_mod.STORAGES, default="pcm16",
                   help="pcm16: official int16 rows; flac: lossless FLAC bytes per row")
    p.add_argument("--skip_existing", action="store_true",
                   help="also reuse the shards an interrupted run packed with the same options; " + _SKIP_HELP
                   + "; packed again when it was packed from other shard files (names and sizes) or with another "
                   "--id_field/--label_field/--audio_field")
    p.add_argument("--allow_unlabelled", action="store_true",
                   help="pack shards whose clips carry no labels (default: refused after the first shard)")
    p.add_argument("--keep_duplicates", action="store_true",
                   help="pack every occurrence of a clip id met again in the shards (default: once, the first copy "
                   "in shard order with the labels of all its copies, reported)")
    p.add_argument("--logs_dir", type=str, default="_logs", help="folder for log files")

    p = sub.add_parser("list_shards", help="print the shard files a --shards value names, one a line (what "
                       "pack_from_shards would read, in its order)", formatter_class=_Help)
    p.add_argument("--shards", type=str, required=True,
                   help="glob ('DIR/*.tar', 'DIR/*.parquet'), folder, or comma-separated shard files (a path "
                   "with a comma in it is read whole)")
    p.add_argument("--allow_none", action="store_true",
                   help="print nothing and succeed when nothing matches (default: an error says so)")

    p = sub.add_parser("check_packed_parts", help="refuse (or remove) packed unbalanced parts that no current part "
                       "CSV or shard maps to (what scripts/2_*.sh run before packing)", formatter_class=_Help)
    p.add_argument("--packed_dir", type=str, required=True, help="folder of the packed parts (unbalanced_train)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--part_csvs_dir", type=str, help="folder of the part CSVs (unbalanced_partial_csvs)")
    source.add_argument("--shards", type=str, help="the unbalanced shards, as pack_from_shards reads --shards")
    p.add_argument("--remove_stale_parts", action="store_true",
                   help="remove such parts (with their .missing.csv), and name them; without it they are refused")

    args = parser.parse_args(argv)
    if args.mode == "check_packed_parts":
        check_packed_parts(args.packed_dir, args.part_csvs_dir, args.shards, args.remove_stale_parts)
    elif args.mode == "list_shards":
        try:
            found = shards.list_shards(args.shards)
        except shards.NoShards:
            if not args.allow_none:
                raise
            found = []
        for path in found:
            print(path)
    elif args.mode == "split_unbalanced_csv_to_partial_csvs":
        split_unbalanced_csv_to_partial_csvs(args.unbalanced_csv, args.unbalanced_partial_csvs_dir,
                                             remove_stale_parts=args.remove_stale_parts)
    elif args.mode == "download_wavs":
        sub_dir = "download_dataset_minidata" if args.mini_data else "download_dataset"
        logs = os.path.join(args.logs_dir, sub_dir, get_filename(args.csv_path))
        create_logging(logs, filemode="w", console=False)
        logging.info("Download log is saved to %s", logs)
        rep = download_wavs(args.csv_path, args.audios_dir, args.mini_data, args.num_workers, args.url_template,
                            args.max_retries, args.retry_base_delay, args.failures_csv, args.retry_failed,
                            cookies=args.cookies)
        print(f"{rep.downloaded} downloaded, {rep.skipped} already present, {len(rep.failed)} failed"
              + (f" (see {rep.failures_csv})" if rep.failed else "")
              + (f"; {rep.not_retried} of them failed permanently in an earlier run and were not tried again "
                 "(--retry_failed tries them)" if rep.not_retried else ""))
    elif args.mode == "pack_waveforms_to_hdf5":
        logs = os.path.join(args.logs_dir, "pack_waveforms_to_hdf5",
                            ("mini_" if args.mini_data else "") + get_filename(args.csv_path))
        create_logging(logs, filemode="w", console=False)
        print(f"Clip length {args.clip_seconds:g} s at {args.sample_rate} Hz (--clip_seconds)")
        rep = pack_waveforms_to_hdf5(args.csv_path, args.audios_dir, args.waveforms_hdf5_path, args.mini_data,
                                     args.sample_rate, args.clip_seconds, args.num_workers, args.class_labels_csv,
                                     args.skip_existing, storage=args.storage, keep_duplicates=args.keep_duplicates)
        if rep.skipped_existing:
            print(f"Skip {rep.path}: already packed" + (f" ({rep.skip_note})" if rep.skip_note else ""))
        else:
            print(summarize(rep, rep.rows + len(rep.missing)))
    elif args.mode == "pack_from_shards":
        create_logging(os.path.join(args.logs_dir, "pack_from_shards", get_filename(args.waveforms_hdf5_path)),
                       filemode="w", console=False)
        print(f"Clip length {args.clip_seconds:g} s at {args.sample_rate} Hz (--clip_seconds)")
        srep = shards.pack_from_shards(args.shards, args.waveforms_hdf5_path, args.sample_rate, args.clip_seconds,
                                       args.num_workers, args.class_labels_csv, args.label_field, args.id_field,
                                       args.audio_field, args.storage, args.skip_existing,
                                       allow_unlabelled=args.allow_unlabelled, keep_duplicates=args.keep_duplicates)
        if srep.rows < 0:
            print(f"Skip {srep.path}: already packed")
        else:
            rep = PackReport(srep.path, srep.rows, srep.missing, short=srep.short, clip_seconds=srep.clip_seconds,
                             replaced=srep.replaced, repack_reason=srep.repack_reason)
            print(summarize(rep, srep.rows + len(srep.missing))
                  + (f" ({srep.shards_skipped} of {srep.shards} shards reused from an earlier run)"
                     if srep.shards_skipped else ""))
            if srep.repeat_report:
                print(srep.repeat_report)
            if srep.label_report:
                print(srep.label_report)
    else:
        parser.error("choose a sub-command: split_unbalanced_csv_to_partial_csvs, download_wavs, "
                     "pack_waveforms_to_hdf5, pack_from_shards, list_shards, check_packed_parts")


if __name__ == "__main__":
    run_cli(main)
