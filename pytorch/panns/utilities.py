"""Small helpers of the official ``utils/utilities.py`` (same names and numerics), fixed where noted."""
from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import pathlib
import pickle
import re
import shutil
import signal
import sys
import tempfile
import time
from typing import Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from panns.errors import PannsError

logger = logging.getLogger(__name__)


def create_folder(fd: str) -> None:
    os.makedirs(fd, exist_ok=True)


def get_filename(path: str) -> str:
    """'/a/b/c.wav' -> 'c' (official: realpath, last component, splitext)."""
    return os.path.splitext(os.path.basename(os.path.realpath(path)))[0]


def get_sub_filepaths(folder: str) -> list:
    """All files under ``folder``, sorted (official order was os.walk order)."""
    paths = []
    for root, _dirs, files in os.walk(folder):
        paths.extend(os.path.join(root, name) for name in files)
    return sorted(paths)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is logged, not as it was when logging was set up:
    a caller that swaps or closes stderr later (a notebook, a test runner) gets no "I/O operation on
    closed file" errors from records logged afterwards."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):   # StreamHandler.__init__ assigns one; the property above always wins
        pass


def create_logging(log_dir: str, filemode: str = "w", console: bool = True) -> logging.Logger:
    """Log to the first free ``<log_dir>/NNNN.log`` (INFO) and, optionally, the console.

    Official format kept; fixed: the file is at INFO, not DEBUG (third-party debug spam stays out),
    and repeated calls do not stack handlers.
    """
    create_folder(log_dir)
    i = 0
    while os.path.isfile(os.path.join(log_dir, f"{i:04d}.log")):
        i += 1
    log_path = os.path.join(log_dir, f"{i:04d}.log")
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_panns", False):
            root.removeHandler(h)
    root.setLevel(logging.INFO)
    fh = logging.FileHandler(log_path, mode=filemode)
    fh.setFormatter(logging.Formatter("%(asctime)s %(filename)s[line:%(lineno)d] %(levelname)s %(message)s",
                                      datefmt="%a, %d %b %Y %H:%M:%S"))
    fh._panns = True
    root.addHandler(fh)
    if console:
        ch = _StderrHandler()
        ch.setLevel(logging.INFO)
        ch.setFormatter(logging.Formatter("%(name)-12s: %(levelname)-8s %(message)s"))
        ch._panns = True
        root.addHandler(ch)
    return logging.getLogger()


def float32_to_int16(x: np.ndarray) -> np.ndarray:
    """Official quantisation: clip to [-1, 1], times 32767, truncate toward zero.

    Fixed: the official ``assert max|x| <= 1.2`` aborted a whole packing job on one hot file;
    out-of-range samples are clipped instead (values inside the range are byte-identical).
    """
    x = np.clip(np.asarray(x), -1, 1)
    return (x * 32767.0).astype(np.int16)


INT16_SCALE = np.float32(32767.0)


def int16_to_float32(x: np.ndarray) -> np.ndarray:
    """Official ``(x / 32767).astype(float32)``, computed in float32: bit-identical for every int16 value
    (checked exhaustively in the tests) and ~3x faster than the float64 route."""
    return np.divide(x, INT16_SCALE, dtype=np.float32)


def pad_or_truncate(x: np.ndarray, audio_length: int) -> np.ndarray:
    """Pad zeros at the end or keep the first ``audio_length`` samples (official behaviour)."""
    if len(x) <= audio_length:
        return np.concatenate((x, np.zeros(audio_length - len(x))), axis=0)
    return x[0:audio_length]


# AUC 1.0 (or 0.0) would give an infinite d-prime; clip so that a perfect score stays finite (d' ~ 7.3).
_AUC_CLIP = 1e-7


def d_prime(auc) -> np.ndarray:
    """sqrt(2) * Phi^-1(AUC) (official), finite for AUC in [0, 1]: AUC is clipped to [1e-7, 1 - 1e-7].
    Phi^-1 is ``ndtri``, which the official ``stats.norm().ppf`` calls (the same bits), without scipy.stats' ~1 s
    of imports in every training process's first evaluation."""
    from scipy.special import ndtri  # late: only evaluation needs it, and the packers import this module

    return ndtri(np.clip(auc, _AUC_CLIP, 1 - _AUC_CLIP)) * np.sqrt(2.0)


class Mixup(object):
    """Beta(alpha, alpha) mixing coefficients for adjacent pairs (official ``utilities.Mixup``).

    ``get_lambda(2B)`` returns ``[l0, 1-l0, l1, 1-l1, ...]`` drawn from its own RandomState so that
    the sequence is reproducible; ``state_dict``/``load_state_dict`` make it resumable.
    """

    def __init__(self, mixup_alpha: float, random_seed: int = 1234):
        self.mixup_alpha = mixup_alpha
        self.random_state = np.random.RandomState(random_seed)

    def get_lambda(self, batch_size: int) -> np.ndarray:
        mixup_lambdas = []
        for _n in range(0, batch_size, 2):
            lam = self.random_state.beta(self.mixup_alpha, self.mixup_alpha, 1)[0]
            mixup_lambdas.append(lam)
            mixup_lambdas.append(1.0 - lam)
        return np.array(mixup_lambdas)

    def state_dict(self) -> dict:
        return {"random_state": self.random_state.get_state(legacy=False)}

    def load_state_dict(self, state: dict) -> None:
        self.random_state.set_state(state["random_state"])


def atomic_path(path: str) -> str:
    """Temporary sibling name for writing ``path`` atomically (write there, then ``os.replace``)."""
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.tmp{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str) -> list:
    """Delete temporary siblings of ``path`` (see ``atomic_path``) left by processes that are gone.

    Returns the removed paths. A temp file of a live process (a run still going) is left alone."""
    d, base = os.path.split(os.path.abspath(path))
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(d), "." + glob.escape(base) + ".tmp*")):
        m = re.match(r"\.tmp(\d+)", os.path.basename(tmp)[len(base) + 1:])
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.remove(tmp)
                removed.append(tmp)
    return removed


class DiskFullError(PannsError):
    """The disk filled up while writing a file; nothing half-written was left under its name."""


_FREE_MARGIN = 4 << 20  # bytes kept free while writing: HDF5 metadata, then names and targets


def check_free_space(path: str, needed: int) -> None:
    """DiskFullError naming ``path`` unless its folder has ``needed`` bytes (+ a margin) free."""
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if free < needed + _FREE_MARGIN:
        raise disk_full_error(path, needed + _FREE_MARGIN)


def disk_full_error(path: str, needed_bytes: int | None = None) -> DiskFullError:
    """One-line error naming ``path``, the bytes needed where known and the space left."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(d).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    need = f", about {needed_bytes / 1e6:.1f} MB needed" if needed_bytes else ""
    return DiskFullError(f"disk full while writing {path} ({free}{need}); free space and re-run")


def check_dotdot(path: str, what: str = "output") -> None:
    """Refuse an output path (a file or a folder) whose ``..`` the file system reads otherwise than its spelling.

    Every writer normalises the folder (``abspath``: makedirs, the temporary file) but the file system
    resolves the final name one part at a time: ``nodir/../x.h5`` cannot be opened while ``nodir`` does
    not exist (a shell's ``>`` fails the same way), and ``link/../x.h5`` is beside the link's target, not
    beside the link. Both would fail (or land elsewhere) only after the work, about a temporary file."""
    parts = pathlib.PurePath(path).parts   # keeps '..' (PurePath only drops '.' and repeated slashes)
    for i, part in enumerate(parts):
        if part != "..":
            continue
        before = os.path.join(*parts[:i]) if i else os.curdir
        if not os.path.isdir(before):
            missing = before
            while os.path.dirname(missing) and not os.path.isdir(os.path.dirname(missing)):
                missing = os.path.dirname(missing)
            state = "is a file" if os.path.exists(missing) else "does not exist"
            raise PannsError(f"{what} {path} goes through {missing}, which {state}, and back out with '..' "
                             f"(the file system cannot follow that); write it as {os.path.normpath(path)}")
        real = os.path.realpath(os.path.join(before, ".."))        # what the file system opens
        spelt = os.path.realpath(os.path.abspath(os.path.join(before, "..")))   # what the writers create
        if real != spelt:
            raise PannsError(f"{what} {path}: the '..' after the link {before} leads to {real}, not {spelt}; "
                             "give the folder without '..'")


def check_utf8_names(paths: Sequence[str], where: str) -> None:
    """Refuse file names whose bytes are not UTF-8 (Python holds them as lone surrogates), which HDF5 and JSON
    outputs cannot store as text: one line with the first name's bytes, before any work. ``where``: what lists
    the files, for the message."""
    bad = [p for p in paths if not _is_utf8(p)]
    if bad:
        raise PannsError(f"{where}: {len(bad)} file name(s) are not UTF-8 text (from an archive made on another "
                         f"system?), first: {os.fsencode(bad[0])!r}; rename them, e.g. convmv -f latin1 -t utf8 "
                         "-r --notest <folder>")


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_output_path(path: str, inputs: Sequence[str] = (), what: str = "output") -> None:
    """Refuse, before any work, an output that is a folder or the same file as one of ``inputs``
    (writing it would destroy that input), one whose folder cannot be written, and one whose ``..``
    the file system reads otherwise than the writers (``nodir/../x.h5`` while ``nodir`` does not exist,
    ``link/../x.h5``): missing folders are created by the writers, but never the ones a ``..`` leaves.
    Also refused: a path ending in a separator (it names a folder: the writers would make it, work, then fail
    at the rename) and a leading '~' the shell left as it is (``--option=~/x.h5``), unless a folder of that
    name exists here."""
    path = os.fspath(path)
    if path.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise PannsError(f"{what} {path} ends with a path separator (a folder); give a file name in it")
    home = os.path.expanduser(path)
    if home != path and not os.path.exists(path.split(os.sep)[0]):
        # bash leaves '~' alone after '--option=': the file would go to a folder named '~' here, which a
        # summary's '~/...' makes look like the home folder (and 'rm -rf ~' would be the way to remove it)
        raise PannsError(f"{what} {path} starts with '~', which the shell did not expand (it does not after "
                         f"'--option='); write {home}, or put a space instead of '='")
    check_dotdot(path, what)
    full = os.path.abspath(path)   # normalised: after check_dotdot, the file system reads it the same way
    if os.path.isdir(full):
        raise PannsError(f"{what} {path} is a folder; give a file name")
    for src in inputs:
        if src and os.path.exists(full) and os.path.exists(src) and os.path.samefile(full, src):
            raise PannsError(f"{what} {path} is the input {src}; writing it would destroy the input. "
                             "Give another output path")
    parent = os.path.dirname(full)
    while not os.path.isdir(parent):   # the nearest existing folder (makedirs creates the rest)
        if os.path.exists(parent):
            raise PannsError(f"cannot create the folder of {what} {path}: {parent} is a file")
        parent = os.path.dirname(parent)
    try:   # a real probe: permission bits say nothing on read-only mounts, /proc, or for root
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise PannsError(f"cannot write {what} {path} in {parent}: {e.strerror or e}") from None


# What each HDF5 writer of the project puts in its files and no other writer does: the datasets (or file
# attributes) of finetune_data.build_cache, storage.WaveformWriter (PCM_KEY, FLAC_KEY), create_indexes,
# extract.FeatureWriter and inference.FramewiseWriter. Kind: (its name, what replacing it would destroy, its
# marks: any one tells it). Asked in this order: the clip cache holds a 'waveform' too (one flat int16 row of
# all clips), told from packed clips by its 'offset' (where each clip starts), which no other writer makes.
HDF5_KINDS = {
    "clips": ("a fine-tuning clip cache", "the decoded clips", ("offset",)),
    "waveforms": ("a waveform HDF5", "the packed clips", ("waveform", "waveform_flac")),
    "index": ("an index file", "the index", ("hdf5_path", "index_in_hdf5")),
    "embeddings": ("an embeddings file", "the extracted embeddings", ("embedding",)),
    "framewise": ("a framewise-output file", "the framewise probabilities", ("framewise", "frames_per_second")),
}
# what else ``hdf5_kind`` may find
NO_FILE, EMPTY_FILE, NOT_HDF5, OTHER_HDF5 = "no file", "empty", "not HDF5", "other HDF5"


def is_lock_error(e: OSError) -> bool:
    """HDF5's file lock held by another process (h5py: BlockingIOError, errno EAGAIN)."""
    return e.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in str(e)


def busy_error(path: str, flag: str = "path") -> PannsError:
    return PannsError(f"{path} is in use by another process (a run still writing it?); wait for it to finish, or "
                      f"give another {flag}")


def hdf5_kind(path: str, flag: str = "path") -> str:
    """Which of the project's HDF5 files ``path`` is (a key of ``HDF5_KINDS``), else ``NO_FILE`` (none, or not a
    plain file), ``EMPTY_FILE`` (zero bytes), ``NOT_HDF5`` (other bytes) or ``OTHER_HDF5`` (an HDF5 file with
    none of the marks, or one cut short). Read-only; a file another process holds open for writing is a
    PannsError (``busy_error``)."""
    if not os.path.isfile(path):
        return NO_FILE
    if os.path.getsize(path) == 0:
        return EMPTY_FILE
    import h5py  # late: most commands write no HDF5

    try:
        if not h5py.is_hdf5(path):
            return NOT_HDF5
        with h5py.File(path, "r") as hf:
            for kind, (_name, _holds, marks) in HDF5_KINDS.items():
                if any(m in hf or m in hf.attrs for m in marks):
                    return kind
    except OSError as e:
        if is_lock_error(e):
            raise busy_error(path, flag) from None
        return OTHER_HDF5   # an HDF5 cut short: nothing readable in it to tell
    return OTHER_HDF5


def check_hdf5_kind(path: str, kind: str, what: str = "output", flag: str = "path", resume: str = "") -> str:
    """Refuse, before any work, an existing ``path`` that a writer of ``kind`` files (a key of ``HDF5_KINDS``)
    must not replace: a file that is not HDF5 (a notes file, a CSV, a clip typed as the output: never ours to
    replace) or one of the project's HDF5 files of another kind (packed clips, an index, embeddings,
    framewise outputs: writing there would destroy them). A file of ``kind``, an empty one and an HDF5 of
    unknown content (one cut short by an interrupted official run) may be replaced. ``resume``: the writer
    appends to an existing file, and ``resume`` says how to start afresh instead (e.g. ``--overwrite``):
    then an existing file must be of ``kind`` already. Returns what ``path`` is (``hdf5_kind``); ``flag``:
    the option that names the output, for the advice."""
    found = hdf5_kind(path, flag)
    name = HDF5_KINDS[kind][0]
    if found == NOT_HDF5:
        raise PannsError(f"{what} {path} exists and is not an HDF5 file; writing there would replace it. "
                         f"Give another {flag} (or remove that file first)")
    if found in HDF5_KINDS and found != kind:
        other, holds, _marks = HDF5_KINDS[found]
        raise PannsError(f"{what} {path} is an existing {other.split(' ', 1)[1]}, not {name}; writing there "
                         f"would destroy {holds}. Give another {flag}")
    if resume and found in (EMPTY_FILE, OTHER_HDF5):
        state = "an empty file" if found == EMPTY_FILE else "an HDF5 file of other content"
        raise PannsError(f"{what} {path} is not {name} ({state}), so there is nothing to resume in it; give another "
                         f"{flag}, or {resume} to replace it")
    return found


def check_hdf5_output(path: str, kind: str, inputs: Sequence[str] = (), what: str = "output", flag: str = "path",
                      resume: str = "") -> str:
    """``check_output_path`` and ``check_hdf5_kind`` of an HDF5 output of ``kind``, before any work."""
    check_output_path(path, inputs, what)
    return check_hdf5_kind(path, kind, what, flag, resume)


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = "") -> Iterator[str]:
    """Write ``path`` atomically: yield a temporary sibling name, rename it to ``path`` on success.

    On any failure (an exception, Ctrl-C) the temporary file is removed, so ``path`` is either the
    old file or the complete new one. ``suffix`` keeps an extension that a writer needs (``.png``).
    A full disk becomes a one-line ``DiskFullError`` naming ``path``; a ``..`` that the final rename
    could not follow is refused before anything is written (``check_dotdot``)."""
    check_dotdot(path)
    tmp = atomic_path(path) + suffix
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise disk_full_error(path) from e
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``)."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_write``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


class Progress(object):
    """Progress of a long job: a tqdm bar on a terminal; elsewhere (logs, pipes) an INFO line
    ``<desc> <n>/<total> (<rate> <unit>/s)`` every ``every_s`` seconds. ``enabled=False`` turns both off
    (library use, tests, DDP ranks other than 0).

    ``update(n)`` counts ``n`` more done; ``to(n)`` says ``n`` are done (a training loop's iteration);
    ``note()`` restarts the interval after the caller logged a line of its own."""

    def __init__(self, total: Optional[int], desc: str, enabled: bool = True, every_s: float = 30.0,
                 unit: str = "clip", start: int = 0):
        self.total, self.desc, self.every_s, self.unit = total, desc, every_s, unit
        tty = enabled and sys.stderr.isatty()
        self.log = enabled and not tty
        self.bar = tqdm(total=total, initial=start, desc=desc, unit=unit, disable=not tty, dynamic_ncols=True)
        self.n = start
        self._last, self._last_n = time.perf_counter(), start

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        self.bar.set_description(desc)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)
        now = time.perf_counter()
        if self.log and now - self._last >= self.every_s:
            rate = (self.n - self._last_n) / max(now - self._last, 1e-9)
            logger.info("%s %d%s (%.2f %s/s)", self.desc, self.n, f"/{self.total}" if self.total else "", rate,
                        self.unit)
            self._last, self._last_n = now, self.n

    def to(self, n: int) -> None:
        self.update(n - self.n)

    def note(self) -> None:
        self._last, self._last_n = time.perf_counter(), self.n

    def close(self) -> None:
        self.bar.close()


def die_with_parent() -> None:
    """In a worker process: have the kernel SIGKILL it when its parent dies (kill -9 included), so
    no decode worker outlives the job that started it (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


# What a statistics pickle may name: numpy's array and scalar rebuilders (``numpy.core`` before numpy 2,
# ``numpy._core`` since) and, in protocol-2 pickles, the bytes of an array (``_codecs.encode``). Dicts, lists
# and numbers need none, so anything else is code, not statistics.
_STATISTICS_GLOBALS = {(m, n) for core in ("numpy.core", "numpy._core")
                       for m, n in ((f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
                                    (f"{core}.numeric", "_frombuffer"))} | {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


# numpy 2 moved numpy.core to numpy._core (the old name still loads, with a warning)
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


class _StatisticsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _STATISTICS_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which statistics never hold")
        if module.startswith("numpy.core"):
            module = _NUMPY_CORE + module[len("numpy.core"):]   # same objects, without numpy 2's warning
        return super().find_class(module, name)


def read_statistics(statistics_path: str) -> dict:
    """A statistics pickle (``{'bal': [stat, ...], 'test': [...]}``: this project's, the official code's, or
    the paper's published ones) read as data only: a pickle that would run code is refused, so a
    downloaded or shared file cannot act on load. PannsError (one line) for a missing or foreign file."""
    if not os.path.isfile(statistics_path):
        raise PannsError(f"statistics file not found: {statistics_path}")
    try:
        with open(statistics_path, "rb") as f:
            stats = _StatisticsUnpickler(f).load()
    except Exception as e:  # noqa: BLE001 - truncated, foreign or hostile: one line naming the file
        raise PannsError(f"cannot read {statistics_path} as statistics: {type(e).__name__}: {e}") from None
    if not isinstance(stats, dict):
        raise PannsError(f"{statistics_path} is not a statistics pickle (expected a dict with 'bal'/'test', "
                         f"found {type(stats).__name__})")
    return stats
