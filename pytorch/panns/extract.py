"""Embedding extraction engine: many audio files -> (embedding, clipwise_output) rows in HDF5.

Python API (also used by the fine-tuning linear probe)::

    from panns.extract import Extractor
    ex = Extractor.from_checkpoint("Cnn14_mAP=0.431.pth", model_type="Cnn14")   # or Extractor(model, config)
    feats = ex.embed_files(["a.wav", "b.mp3"])          # FeatureSet, rows in input order
    feats.embedding        # (N, D) float32     feats.clipwise_output  # (N, classes) float32 probabilities
    feats.audio_names      # [str] * N          feats.failed           # [(path, reason)] not decodable
    ex.embed_waveforms([np.ndarray (samples,), ...])  # same, from decoded audio at ex.sample_rate
    extract_to_hdf5(ex, paths, "features.h5")          # resumable file output (what the CLI does)

The ``extract_embeddings`` sub-command of ``inference.py`` is defined here (:func:`add_arguments`,
:func:`run`); inference.py imports it into its sub-command table; this module imports nothing from inference.py.

How it is fast: torch DataLoader workers decode (and resample) files while the model runs;
decoded clips are grouped by length and run as batches (equal lengths only, so a row equals a
plain ``model(waveform[None])`` forward of that clip up to float rounding); the model runs under
``torch.inference_mode`` through the shared runtime (``runtime.Runtime``: padding, precision, backend).

HDF5 layout (``extract_to_hdf5``): ``audio_name`` (N,) utf-8 strings (the path as gathered),
``embedding`` (N, D) float32, ``clipwise_output`` (N, classes) float32 (probabilities; exp of
log-softmax outputs for fine-tuned models), ``labels`` (classes,) when known; attributes:
the model config (``model_type``, ``sample_rate``, ``window_size``, ``hop_size``, ``mel_bins``,
``fmin``, ``fmax``, ``classes_num``, ``config_json``), ``checkpoint_path``, ``weights_fingerprint``,
``precision``, ``segment_seconds`` (0 = whole files) and ``num_rows``.

Crash safety: rows are appended batch by batch; after each batch the data are flushed and only
then ``num_rows`` is advanced and flushed. A run killed at any point leaves a readable file whose
first ``num_rows`` rows are complete; :func:`read_features` and a resumed run ignore anything
past ``num_rows``. Re-running the same command skips the names already in the file. With ``--overwrite``
the new file is written under a temporary name and renamed over the old one only when the run succeeds: a
run that fails (an SED model without embeddings, Ctrl-C, a full disk) leaves the old file as it was. An
existing output that is not an embeddings file (packed clips, an index, an empty file...) is refused, never
resumed into or replaced (``utilities.check_hdf5_kind``).
Under ``torchrun`` each rank writes ``<output>.rank<k>.h5`` for its share ``files[rank::world]``
and rank 0 merges the shares into the output once every rank is done.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch


from panns import audio_io
from panns import devices
from panns import runtime
from panns import validate
from panns.errors import PannsError
from panns.frontend import FRONTEND_KEYS, frontend_overrides
from panns.runtime import pad_to_min
from panns.utilities import (atomic_write, busy_error, check_free_space, check_hdf5_kind, check_utf8_names,
                             disk_full_error, is_lock_error, remove_stale_temps)

logger = logging.getLogger(__name__)

@dataclass
class FeatureSet:
    """Rows of extracted features (input order) plus the files that could not be decoded."""

    audio_names: List[str]
    embedding: np.ndarray          # (N, D) float32
    clipwise_output: np.ndarray    # (N, classes) float32 probabilities
    failed: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class Batch:
    indices: List[int]
    names: List[str]
    embedding: np.ndarray
    clipwise_output: np.ndarray


def crop_or_pad(waveform: np.ndarray, length: int) -> np.ndarray:
    """First ``length`` samples, zero-padded at the end if shorter (official pad_or_truncate)."""
    if len(waveform) >= length:
        return waveform[:length]
    return np.concatenate([waveform, np.zeros(length - len(waveform), dtype=waveform.dtype)])


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Cheap identity of a set of weights: sha1 over every tensor's name, shape and first values."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- decoding workers
class _DecodeDataset(torch.utils.data.Dataset):
    """Item i -> (i, waveform tensor or None, error message or None, samples decoded before any crop);
    decoding runs in workers."""

    def __init__(self, paths: Sequence[str], sample_rate: int, segment_samples: Optional[int], min_samples: int):
        self.paths = list(paths)
        self.sample_rate = sample_rate
        self.segment_samples = segment_samples
        self.min_samples = min_samples

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            wav = audio_io.load_audio(path, self.sample_rate)
        except PannsError as e:
            return i, None, str(e), 0
        except Exception as e:  # a decoder bug on one odd file must not stop a long run
            return i, None, f"cannot decode {path}: {type(e).__name__}: {e}", 0
        decoded = len(wav)
        if self.segment_samples:
            wav = crop_or_pad(wav, self.segment_samples)
        wav = pad_to_min(wav, self.min_samples)
        return i, torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), None, decoded


def _identity(x):
    return x


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is numpy/soxr work; leave the cores to the model


def default_num_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


# ----------------------------------------------------------------------------- extractor
class Extractor:
    """Runs a PANNs model over waveforms or files in batches of equal-length clips.

    model: a PANNs model whose forward returns ``embedding`` and ``clipwise_output``.
    config: its checkpoint.ModelConfig (sample rate, output kind, labels).
    precision: 'fp32' | 'bf16' | 'fp16' | 'auto' (resolved for the device by devices.resolve_precision).
    segment_seconds: crop/zero-pad every file to this length (None: keep each file whole): only the first
    ``segment_seconds`` of a longer file are embedded (one line, :meth:`log_crops`, says how many files
    were cut and how much audio that dropped).
    compute_threads: forwards run side by side (default: torch's thread count on CPU, each
    single-threaded; 1 on GPU). optimize: run a BN-folded (and on CPU channels_last) copy.
    The model given is moved to ``device`` and put in eval mode; it is not otherwise changed.
    """

    def __init__(self, model: torch.nn.Module, config, precision: str = "fp32", device: str | torch.device = "cpu",
                 batch_size: int = 8, num_workers: Optional[int] = None, segment_seconds: Optional[float] = None,
                 progress: bool = True, compute_threads: Optional[int] = None, optimize: bool = True,
                 backend: str = "torch", checkpoint_path: Optional[str] = None, job_seconds: Optional[float] = None):
        self.fingerprint = weights_fingerprint(model)   # of the weights as given, before folding
        # job_seconds: the audio about to be extracted, which backend 'auto' weighs (runtime._auto_backend)
        options = {"job_seconds": job_seconds} if backend == "auto" and job_seconds is not None else {}
        if backend == "auto" and compute_threads is None and torch.device(device).type == "cpu":
            options["torch_side_by_side"] = torch.get_num_threads()   # how torch runs below: auto times it so
        self.runtime = runtime.Runtime(model, config, device=device, precision=precision, backend=backend,
                                       checkpoint_path=checkpoint_path, optimize=optimize, **options)
        self.device = self.runtime.device
        self.precision = self.runtime.precision
        self.config = config
        self.min_samples = self.runtime.min_samples
        self.sample_rate = self.runtime.sample_rate
        self.checkpoint_path = checkpoint_path
        self.batch_size = max(1, int(batch_size))
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        # On CPU, N single-threaded forwards side by side beat one N-threaded forward (measured:
        # OpenMP barriers inside each conv cost more than they give at these sizes).
        # A backend with its own thread pool (ONNX Runtime) runs best as one call at a time.
        if compute_threads is None:
            own_pool = getattr(self.runtime.backend, "owns_threads", False)
            compute_threads = torch.get_num_threads() if self.device.type == "cpu" and not own_pool else 1
        self.compute_threads = max(1, int(compute_threads))
        self.segment_seconds = segment_seconds
        self.segment_samples = int(round(segment_seconds * self.sample_rate)) if segment_seconds else None
        self.progress = progress

    @classmethod
    def from_checkpoint(cls, checkpoint_path: Optional[str] = None, model_type: Optional[str] = None,
                        frontend: Optional[dict] = None, **kwargs) -> "Extractor":
        """Load a checkpoint (ours or official; None: the cached official file of ``model_type``)."""
        model, config, path = runtime.load_model(checkpoint_path, model_type, frontend)
        return cls(model, config, checkpoint_path=path, **kwargs)

    labels: Optional[List[str]] = None    # class names stored with the features (default: the config's)
    segment_flag = "segment_seconds"      # how log lines name the setting (the command line: --segment_seconds)

    # -- model ------------------------------------------------------------------------------
    def forward(self, batch: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """(B, samples) float32 -> (embedding (B, D), clipwise probabilities (B, classes)) float32."""
        out = self.runtime.forward(batch)
        if "embedding" not in out:
            raise self._no_embedding()
        return out["embedding"], out["clipwise_output"]

    def _no_embedding(self) -> PannsError:
        return PannsError(f"{self.config.model_type} outputs no embedding (decision-level SED models have none); "
                          "use a clip-level model such as Cnn14")

    def check_embeds(self) -> None:
        """PannsError, before any file is decoded or written, when the model is known from its config to output
        no embedding (a decision-level SED model); a custom model that has none fails at its first forward."""
        if runtime.config_is_sed(self.config):
            raise self._no_embedding()

    def _prepare(self, wav: np.ndarray) -> np.ndarray:
        wav = np.asarray(wav, dtype=np.float32)
        if self.segment_samples:
            wav = crop_or_pad(wav, self.segment_samples)
        return pad_to_min(wav, self.min_samples)

    # -- batching ---------------------------------------------------------------------------
    def _groups(self, items: Iterable[Tuple[int, Optional[torch.Tensor], Optional[str]]], names: Sequence[str],
                failed: List[Tuple[str, str]], bar=None) -> Iterator[Tuple[List[int], torch.Tensor]]:
        """Group decoded clips by length; emit a group when it fills a batch (or at the end)."""
        buckets: Dict[int, List[Tuple[int, torch.Tensor]]] = {}
        buffered = 0
        batch_size = self._balanced_batch_size(len(names))
        max_buffered = 4 * batch_size

        def take(length: int) -> Tuple[List[int], torch.Tensor]:
            nonlocal buffered
            group = buckets.pop(length)
            buffered -= len(group)
            return [i for i, _ in group], torch.stack([w for _, w in group])

        for i, wav, err in items:
            if wav is None:
                failed.append((names[i], err or "unknown error"))
                logger.warning("skipping %s", err)
                if bar is not None:
                    bar.update(1)
                continue
            bucket = buckets.setdefault(int(wav.shape[-1]), [])
            bucket.append((i, wav))
            buffered += 1
            if len(bucket) >= batch_size:
                yield take(int(wav.shape[-1]))
            elif buffered > max_buffered:
                # Many distinct lengths: run the fullest group rather than hold every clip in memory.
                yield take(max(buckets, key=lambda k: len(buckets[k])))
        for length in sorted(buckets, key=lambda k: buckets[k][0][0]):
            yield take(length)

    def _balanced_batch_size(self, n: int) -> int:
        """At most ``batch_size``, chosen so that the batches of ``n`` equal-length clips split
        evenly over the compute threads (no thread idles through the last round)."""
        k, bs = self.compute_threads, self.batch_size
        if k <= 1 or n <= 0:
            return bs
        batches = -(-n // bs)
        batches = -(-batches // k) * k
        return max(1, -(-n // batches))

    def _batches(self, items, names: Sequence[str], failed: List[Tuple[str, str]], bar=None) -> Iterator[Batch]:
        """Forward the groups, ``compute_threads`` at a time (each single-threaded on CPU)."""
        groups = self._groups(items, names, failed, bar)

        def done(idx: List[int], emb: np.ndarray, clip: np.ndarray) -> Batch:
            if bar is not None:
                bar.update(len(idx))
            return Batch(idx, [names[i] for i in idx], emb, clip)

        if self.compute_threads <= 1:
            for idx, x in groups:
                yield done(idx, *self.forward(x))
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        threads_before = torch.get_num_threads()
        torch.set_num_threads(1)
        pending: deque = deque()
        try:
            with ThreadPoolExecutor(self.compute_threads, thread_name_prefix="extract") as pool:
                for idx, x in groups:
                    pending.append((idx, pool.submit(self.forward, x)))
                    while len(pending) > self.compute_threads:
                        idx0, fut = pending.popleft()
                        yield done(idx0, *fut.result())
                while pending:
                    idx0, fut = pending.popleft()
                    yield done(idx0, *fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()
            torch.set_num_threads(threads_before)

    def iter_files(self, paths: Sequence[str], failed: Optional[List[Tuple[str, str]]] = None,
                   names: Optional[Sequence[str]] = None, desc: str = "extract",
                   lengths: Optional[List[int]] = None) -> Iterator[Batch]:
        """Decode ``paths`` in DataLoader workers and yield forwarded batches (any order). ``lengths``: a list
        that gets the decoded length (samples, before any crop or padding) of every file decoded."""
        failed = [] if failed is None else failed
        names = list(paths) if names is None else list(names)
        ds = _DecodeDataset(paths, self.sample_rate, self.segment_samples, self.min_samples)
        if len(ds) == 0:
            return
        workers = min(self.num_workers, len(ds))
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=max(2, self.batch_size) if workers else None,
            persistent_workers=False)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ds), unit="clip", desc=desc, file=sys.stderr, dynamic_ncols=True)
        def items():
            for i, wav, err, decoded in loader:
                if lengths is not None and wav is not None:
                    lengths.append(int(decoded))
                yield i, wav, err

        try:
            yield from self._batches(items(), names, failed, bar)
        finally:
            if bar is not None:
                bar.close()

    def embed_files(self, paths: Sequence[str]) -> FeatureSet:
        """Embeddings and clipwise probabilities of audio files, rows in input order."""
        failed: List[Tuple[str, str]] = []
        lengths: List[int] = []
        feats = self._collect(self.iter_files(paths, failed, lengths=lengths), list(paths), failed)
        self.log_crops(lengths)
        return feats

    def embed_waveforms(self, waveforms: Sequence[np.ndarray], names: Optional[Sequence[str]] = None) -> FeatureSet:
        """Same as embed_files for decoded mono waveforms at ``self.sample_rate`` (through ``validate``:
        stereo averaged, integer PCM scaled like soundfile, NaN/inf and empty clips refused)."""
        waveforms = [validate.clip(w, f"waveforms[{i}]", self.sample_rate) for i, w in enumerate(waveforms)]
        names = [str(i) for i in range(len(waveforms))] if names is None else list(names)
        items = ((i, torch.from_numpy(self._prepare(w)), None) for i, w in enumerate(waveforms))
        feats = self._collect(self._batches(items, names, []), names, [])
        self.log_crops([len(w) for w in waveforms], what="waveforms")
        return feats

    def log_crops(self, lengths: Sequence[int], what: str = "files", share: str = "") -> int:
        """With ``segment_seconds``: one INFO line saying how many of the clips of ``lengths`` (decoded
        samples) were longer, so that only their first ``segment_seconds`` were embedded, and how much audio
        that dropped (nothing when none was cut). Returns the number cut."""
        if not self.segment_samples:
            return 0
        dropped = [n - self.segment_samples for n in lengths if n > self.segment_samples]
        if dropped:
            seg = f"{self.segment_seconds:g} s"
            logger.info("%d of %d %s%s are longer than %s %g: their first %s are embedded, %s of audio dropped; "
                        "omit %s to embed whole %s", len(dropped), len(lengths), what, share, self.segment_flag,
                        self.segment_seconds, seg, runtime.seconds_text(sum(dropped) / self.sample_rate),
                        self.segment_flag, what)
        return len(dropped)

    def _collect(self, batches: Iterable[Batch], names: List[str], failed) -> FeatureSet:
        rows: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        for b in batches:
            for k, i in enumerate(b.indices):
                rows[i] = (b.embedding[k], b.clipwise_output[k])
        order = sorted(rows)
        emb_dim = getattr(self.config, "embedding_dim", None)
        if order:
            emb = np.stack([rows[i][0] for i in order]).astype(np.float32)
            clip = np.stack([rows[i][1] for i in order]).astype(np.float32)
        else:
            emb = np.zeros((0, emb_dim or 0), np.float32)
            clip = np.zeros((0, self.config.classes_num), np.float32)
        return FeatureSet([names[i] for i in order], emb, clip, list(failed))

    # -- metadata ---------------------------------------------------------------------------
    def attributes(self) -> dict:
        """What identifies these features: model config, weights, precision, segment length."""
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else dict(vars(self.config))
        attrs = {k: cfg[k] for k in ("model_type",) + FRONTEND_KEYS + ("classes_num",) if cfg.get(k) is not None}
        attrs["config_json"] = json.dumps({k: v for k, v in cfg.items() if k not in ("labels", "ids")}, sort_keys=True)
        attrs["checkpoint_path"] = os.path.abspath(self.checkpoint_path) if self.checkpoint_path else ""
        attrs["weights_fingerprint"] = self.fingerprint
        attrs["precision"] = self.precision
        attrs["segment_seconds"] = float(self.segment_seconds or 0.0)
        return attrs


# ----------------------------------------------------------------------------- HDF5 output
# Attributes that must agree before rows are appended to an existing file.
_IDENTITY_ATTRS = ("model_type",) + FRONTEND_KEYS + ("classes_num", "weights_fingerprint", "segment_seconds")


class FeatureWriter:
    """Append-only, crash-safe HDF5 feature file (see the module docstring for the layout). ``shown_as``: how
    messages name the file (default ``path``; the output a temporary ``path`` is renamed to)."""

    def __init__(self, path: str, attrs: dict, embedding_dim: int, classes_num: int,
                 labels: Optional[Sequence[str]] = None, overwrite: bool = False, chunk_rows: int = 64,
                 shown_as: Optional[str] = None):
        import h5py

        self.path = path
        self.name = shown_as or path
        # What an existing output may be (an embeddings file to resume; with overwrite, none of the project's other
        # HDF5 files nor other bytes) is extract_to_hdf5's check, before any work: the writer opens only the files
        # it names, the output, its temporary sibling (--overwrite) and the rank shares <output>.rank<k>.h5.
        if overwrite and os.path.exists(path):
            os.remove(path)
        if not os.path.exists(path):
            self._create(path, attrs, embedding_dim, classes_num, labels, chunk_rows, self.name)
        try:
            self.f = h5py.File(path, "r+")
        except OSError as e:
            if is_lock_error(e):
                raise busy_error(self.name, "--output_path") from None
            raise PannsError(f"{self.name} exists but is not a readable HDF5 file ({e}); delete it or pass "
                             "--overwrite") from None
        self._check(attrs, embedding_dim, classes_num)
        n = int(self.f.attrs.get("num_rows", 0))
        for key in ("audio_name", "embedding", "clipwise_output"):
            if self.f[key].shape[0] != n:  # rows past num_rows: a run died mid-batch; drop them
                self.f[key].resize(n, axis=0)
        # Names are kept as given, relative ones relative to the folder the file was started from;
        # resume compares absolute paths, so "a.wav" and "/data/a.wav" are one file (no duplicate rows).
        self.base = str(_norm(self.f.attrs.get("names_relative_to", os.getcwd())))
        self.names = set(_decode_names(self.f["audio_name"][:n]))
        self.keys = {name_key(p, self.base) for p in self.names}
        self.num_rows = n

    def has(self, path: str) -> bool:
        """Whether ``path`` (as given, relative to the current folder) already has a row."""
        return name_key(path) in self.keys

    @staticmethod
    def _create(path, attrs, embedding_dim, classes_num, labels, chunk_rows, name) -> None:
        import h5py

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        remove_stale_temps(path)
        check_free_space(name, 4 * chunk_rows * (embedding_dim + classes_num))
        with atomic_write(path) as tmp:
            try:
                with h5py.File(tmp, "w") as f:
                    f.create_dataset("audio_name", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                                     chunks=(max(chunk_rows, 256),))
                    f.create_dataset("embedding", shape=(0, embedding_dim), maxshape=(None, embedding_dim),
                                     dtype=np.float32, chunks=(chunk_rows, embedding_dim))
                    f.create_dataset("clipwise_output", shape=(0, classes_num), maxshape=(None, classes_num),
                                     dtype=np.float32, chunks=(chunk_rows, classes_num))
                    if labels is not None:
                        f.create_dataset("labels", data=np.array(list(labels), dtype=object),
                                         dtype=h5py.string_dtype("utf-8"))
                    for k, v in attrs.items():
                        f.attrs[k] = v
                    f.attrs["num_rows"] = 0
                    f.attrs["names_relative_to"] = os.getcwd()
            except OSError as e:   # h5py reports a full disk as a generic OSError
                raise _disk_error(name, e) from e

    def _check(self, attrs: dict, embedding_dim: int, classes_num: int) -> None:
        have = self.f.attrs
        for k in _IDENTITY_ATTRS:
            if k in attrs and k in have and _norm(have[k]) != _norm(attrs[k]):
                raise PannsError(f"{self.name} holds features of a different model or setting ({k}: "
                                 f"{_norm(have[k])} in the file, {_norm(attrs[k])} now); use another --output_path "
                                 "or pass --overwrite")
        if self.f["embedding"].shape[1] != embedding_dim or self.f["clipwise_output"].shape[1] != classes_num:
            raise PannsError(f"{self.name} has other feature sizes; use another --output_path or pass --overwrite")
        if "precision" in attrs and "precision" in have and _norm(have["precision"]) != attrs["precision"]:
            logger.warning("%s was started with precision %s, continuing with %s", self.name,
                           _norm(have["precision"]), attrs["precision"])

    def append(self, names: Sequence[str], embedding: np.ndarray, clipwise: np.ndarray) -> None:
        """Write rows, flush, then commit them by advancing ``num_rows`` (flushed again)."""
        keys = [name_key(n) for n in names]
        first = {key: k for k, key in reversed(list(enumerate(keys)))}
        keep = [k for k, key in enumerate(keys) if key not in self.keys and first[key] == k]
        if not keep:
            return
        # From another folder than the file's, relative names are stored absolute (they stay meaningful).
        here = os.path.abspath(os.getcwd()) == os.path.abspath(self.base)
        names = [names[k] if here else keys[k] for k in keep]
        n0, n1 = self.num_rows, self.num_rows + len(names)
        # h5py can crash the process on a full disk: check first (rows + chunk slack), then
        # turn any OSError that still comes into one line naming the file.
        check_free_space(self.name, 2 * (embedding[keep].nbytes + clipwise[keep].nbytes) + 64 * len(names))
        try:
            for key, data in (("audio_name", np.array(names, dtype=object)), ("embedding", embedding[keep]),
                              ("clipwise_output", clipwise[keep])):
                ds = self.f[key]
                ds.resize(n1, axis=0)
                ds[n0:n1] = data
            self.f.flush()
            self.f.attrs["num_rows"] = n1
            self.f.flush()
        except OSError as e:
            raise _disk_error(self.name, e) from e
        self.num_rows = n1
        self.names.update(names)
        self.keys.update(keys[k] for k in keep)

    def close(self) -> None:
        if getattr(self, "f", None) is not None:
            self.f.close()
            self.f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def name_key(path: str, base: Optional[str] = None) -> str:
    """What makes two spellings of a file one row: its absolute, normalised path (``base``: the
    folder a relative path is relative to, default the current one)."""
    return os.path.normcase(os.path.abspath(os.path.join(base, path) if base else path))


def _disk_error(path: str, e: OSError) -> Exception:
    """A full disk (errno, or h5py's message) -> DiskFullError naming ``path``; other errors as they are."""
    if e.errno == errno.ENOSPC or "No space left" in str(e) or "disk full" in str(e).lower():
        return disk_full_error(path)
    return PannsError(f"cannot write {path}: {' '.join(str(e).split())[:160]}")


def _norm(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _decode_names(arr) -> List[str]:
    return [a.decode("utf-8") if isinstance(a, bytes) else str(a) for a in arr]


def read_features(path: str) -> FeatureSet:
    """Committed rows of a feature file (ignores anything a killed run left past ``num_rows``)."""
    import h5py

    with h5py.File(path, "r") as f:
        n = int(f.attrs.get("num_rows", f["audio_name"].shape[0]))
        return FeatureSet(_decode_names(f["audio_name"][:n]), f["embedding"][:n].astype(np.float32),
                          f["clipwise_output"][:n].astype(np.float32))


def read_feature_names(path: str) -> set:
    if not os.path.exists(path):
        return set()
    return set(read_features(path).audio_names)


def read_feature_keys(path: str) -> set:
    """:func:`name_key` of every committed row of ``path`` (empty when there is no file)."""
    import h5py

    if not os.path.exists(path):
        return set()
    with h5py.File(path, "r") as f:
        base = str(_norm(f.attrs.get("names_relative_to", os.getcwd())))
    return {name_key(n, base) for n in read_features(path).audio_names}


def write_failed_csv(path: str, failed: Sequence[Tuple[str, str]]) -> None:
    """``audio_path,error`` rows (atomic); removes a stale file when nothing failed."""
    if not failed:
        if os.path.exists(path):
            os.remove(path)
        return
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["audio_path", "error"])
            w.writerows(failed)


def _read_failed_csv(path: str) -> List[Tuple[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [tuple(r) for r in list(csv.reader(f))[1:] if len(r) >= 2]


def _labels_of(extractor: "Extractor") -> Optional[List[str]]:
    labels = extractor.labels or getattr(extractor.config, "labels", None)
    return list(labels) if labels and len(labels) == extractor.config.classes_num else None


def _extract_one(extractor: Extractor, paths: Sequence[str], output_path: str, overwrite: bool, skip: set,
                 desc: str, share: str = "", shown_as: Optional[str] = None) -> Tuple[int, List[Tuple[str, str]]]:
    """Extract ``paths`` (minus ``skip`` and rows already in the file) into ``output_path`` (``shown_as``: see
    :class:`FeatureWriter`)."""
    emb_dim = _embedding_dim(extractor)
    with FeatureWriter(output_path, extractor.attributes(), emb_dim, extractor.config.classes_num,
                       _labels_of(extractor), overwrite=overwrite, shown_as=shown_as) as writer:
        todo = [p for p in paths if not writer.has(p) and name_key(p) not in skip]
        done_before = len(paths) - len(todo)
        if done_before:
            logger.info("%s: %d of %d files already extracted, %d to go", output_path, done_before, len(paths),
                        len(todo))
        failed: List[Tuple[str, str]] = []
        lengths: List[int] = []
        for b in extractor.iter_files(todo, failed, desc=desc, lengths=lengths):
            writer.append(b.names, b.embedding, b.clipwise_output)
        extractor.log_crops(lengths, share=share)
        return len(todo) - len(failed), failed


def _embedding_dim(extractor: Extractor) -> int:
    dim = getattr(extractor.config, "embedding_dim", None)
    if dim:
        return int(dim)
    from panns import models

    try:
        spec = models.get_model_spec(extractor.config.model_type)
        if spec.embedding_dim:
            return int(spec.embedding_dim)
    except Exception:
        pass
    # Unknown (custom model): probe with a short silent clip.
    probe = np.zeros(max(extractor.min_samples, extractor.sample_rate), np.float32)
    emb, _ = extractor.forward(torch.from_numpy(probe)[None])
    return int(emb.shape[1])


def merge_feature_files(output_path: str, part_paths: Sequence[str], attrs: dict, embedding_dim: int,
                        classes_num: int, labels=None, remove_parts: bool = True, chunk: int = 1024,
                        shown_as: Optional[str] = None) -> int:
    """Append the committed rows of ``part_paths`` to ``output_path`` (names already there skipped)."""
    import h5py

    added = 0
    with FeatureWriter(output_path, attrs, embedding_dim, classes_num, labels, shown_as=shown_as) as writer:
        for part in part_paths:
            if not os.path.exists(part):
                continue
            with h5py.File(part, "r") as f:
                n = int(f.attrs.get("num_rows", f["audio_name"].shape[0]))
                for s in range(0, n, chunk):
                    e = min(n, s + chunk)
                    before = writer.num_rows
                    writer.append(_decode_names(f["audio_name"][s:e]), f["embedding"][s:e],
                                  f["clipwise_output"][s:e])
                    added += writer.num_rows - before
    if remove_parts:
        for part in part_paths:
            if os.path.exists(part):
                os.remove(part)
    return added


@contextlib.contextmanager
def _output_file(output_path: str, fresh: bool) -> Iterator[str]:
    """Where rows go: ``output_path`` itself (resumed in place), or with ``fresh`` (--overwrite) a temporary
    sibling renamed over it only when the run succeeded (``atomic_write``): an existing file is neither removed
    nor replaced by a run that fails (an SED model without embeddings, Ctrl-C, a full disk)."""
    if not fresh:
        yield output_path
        return
    remove_stale_temps(output_path)   # of killed --overwrite runs
    with atomic_write(output_path) as tmp:
        yield tmp


def extract_to_hdf5(extractor: Extractor, paths: Sequence[str], output_path: str, overwrite: bool = False,
                    rank: Optional[int] = None, world_size: Optional[int] = None, barrier=None) -> dict:
    """Extract features of ``paths`` into ``output_path`` (resumable); returns a summary dict.

    ``overwrite``: start afresh; the new file is written under a temporary name and replaces ``output_path``
    only once complete (a failed run leaves the old file as it was). An existing ``output_path`` must be an
    embeddings file (with ``overwrite``: not another kind of HDF5 of the project, nor other bytes).
    With ``world_size > 1`` this process handles ``paths[rank::world_size]`` into
    ``<output>.rank<rank>.h5``; after ``barrier()`` (all ranks done) rank 0 merges the shares.
    Files that fail to decode are listed in ``<output>.failed.csv`` (not fatal).
    """
    r0, w0, _ = devices.dist_env()
    rank = r0 if rank is None else rank
    world_size = w0 if world_size is None else world_size
    extractor.check_embeds()
    # before any work: not packed clips, an index, another file; resumed, an embeddings file; not in use
    check_hdf5_kind(output_path, "embeddings", "output", "--output_path", resume="" if overwrite else "--overwrite")
    unique: Dict[str, str] = {}
    for p in paths:   # one spelling per file, the first kept, in order
        unique.setdefault(name_key(p), p)
    paths = list(unique.values())
    failed_csv = output_path + ".failed.csv"
    if world_size <= 1:
        with _output_file(output_path, overwrite) as target:
            ok, failed = _extract_one(extractor, paths, target, False, set(), "extract", shown_as=output_path)
            total = len(read_feature_names(target))
        if overwrite and os.path.exists(f"{output_path}.rank0.h5"):   # a share of an earlier run: not resumed now
            os.remove(f"{output_path}.rank0.h5")
        write_failed_csv(failed_csv, failed)
        return {"extracted": ok, "failed": len(failed), "rows": total, "output": output_path}

    # Distributed: each rank does its share into its own file (a stale one started afresh with ``overwrite``),
    # rank 0 merges.
    done = set() if overwrite else read_feature_keys(output_path)
    share = paths[rank::world_size]
    part = f"{output_path}.rank{rank}.h5"
    ok, failed = _extract_one(extractor, share, part, overwrite, done, f"extract[rank {rank}]",
                              share=f" of rank {rank}'s share")
    write_failed_csv(f"{output_path}.rank{rank}.failed.csv", failed)
    if barrier is not None:
        barrier()
    summary = {"extracted": ok, "failed": len(failed), "output": part}
    if rank == 0:
        parts = [f"{output_path}.rank{k}.h5" for k in range(world_size)]
        with _output_file(output_path, overwrite) as target:
            merge_feature_files(target, parts, extractor.attributes(), _embedding_dim(extractor),
                                extractor.config.classes_num, _labels_of(extractor), remove_parts=False,
                                shown_as=output_path)
            rows = len(read_feature_names(target))
        for p in parts:   # merged into the output under its own name: the shares are done
            if os.path.exists(p):
                os.remove(p)
        all_failed: List[Tuple[str, str]] = []
        for k in range(world_size):
            fc = f"{output_path}.rank{k}.failed.csv"
            all_failed += _read_failed_csv(fc)
            if os.path.exists(fc):
                os.remove(fc)
        write_failed_csv(failed_csv, all_failed)
        summary.update(extracted=rows - len(done), failed=len(all_failed), rows=rows, output=output_path)
    return summary


# ----------------------------------------------------------------------------- command line
# ``inference.py extract_embeddings`` (and ``panns extract_embeddings``): inference.py's parser
# adds the shared model, device and --audio_path flags, then these, and calls run(args).
def add_arguments(p) -> None:
    """The flags of the extract_embeddings sub-command beyond the shared inference ones."""
    p.add_argument("--segment_seconds", type=float, default=None,
                   help="embed only the first this many seconds of each file: longer files are cut (the rest of "
                        "their audio is not embedded; a log line says how many and how much), shorter ones "
                        "zero-padded, one row per file either way; unlike audio_tagging's --segment_seconds, no "
                        "sliding windows (default: embed each file whole; equal lengths are batched together)")
    p.add_argument("--output_path", type=str, required=True, help="HDF5 file to create or resume")
    p.add_argument("--class_labels_csv", type=str, default=None,
                   help="label CSV whose names are stored as 'labels' when the checkpoint has none "
                        "(default: metadata/class_labels_indices.csv if present)")
    p.add_argument("--num_workers", type=int, default=None, help="decoding worker processes (default: cores/2, 1-4)")
    p.add_argument("--overwrite", action="store_true", help="start from scratch instead of resuming (default: resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")
    # Embeddings (our addition, no official printout to match) default to bf16 where the hardware computes it
    # natively: Cnn14 embeddings within cosine 0.9999 of fp32 (tests/test_auto_backend.py), 1.2-1.4x faster on
    # an AVX512-BF16 CPU; backend auto still measures it against the fp32 paths (runtime._auto_backend).
    p.set_defaults(precision="auto")
    for action in p._actions:   # the shared help names sm70/75's fp16, which extraction's auto does not pick
        if action.dest == "precision":
            action.help = ("numeric precision of the CNN body (default: %(default)s: bf16 where the hardware has "
                           "native bf16 (CUDA sm80+, CPUs with AMX/AVX512-BF16), else fp32; backend auto measures "
                           "bf16 against fp32 on CPUs)")


HDF5_EXTENSIONS = (".h5", ".hdf5")


def check_output(args, paths: Sequence[str]) -> None:
    """Before the model loads: ``--output_path`` names an HDF5 file (``x.json`` would get HDF5 bytes
    under a misleading name) that can be written and is no input (an audio file, the checkpoint, the
    label CSV: resuming or --overwrite would destroy it), and neither is its failures list; an existing one
    is an embeddings file to resume, or with --overwrite at least none of the project's other HDF5 files
    (packed clips, an index...) nor other bytes (``utilities.check_hdf5_kind``)."""
    out = args.output_path
    if os.path.splitext(out)[1].lower() not in HDF5_EXTENSIONS:
        raise PannsError(f"--output_path must end in {' or '.join(HDF5_EXTENSIONS)} (an HDF5 file), got {out}")
    check_utf8_names(paths, "--audio_path")   # the rows' names are HDF5 text
    validate.output_paths([("--output_path", out), ("--output_path's failures list", out + ".failed.csv")],
                          inputs=[args.checkpoint_path, args.class_labels_csv, *args.audio_path], files=paths)
    check_hdf5_kind(out, "embeddings", "--output_path", "--output_path", resume="" if args.overwrite else "--overwrite")


def _failure_line(summary: dict, output_path: str) -> str:
    """One line for files that could not be decoded: how many, the first (with its reason), where all are."""
    failed = _read_failed_csv(output_path + ".failed.csv")
    first = f" (first: {' '.join(failed[0][1].split())[:160]})" if failed else ""
    more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
    return (f"{summary['failed']} files could not be decoded{first}{more}; all listed in {output_path}.failed.csv; "
            f"the {summary.get('rows')} rows of the others are in {output_path}")


def _job_seconds(args, paths: Sequence[str]) -> float:
    """The audio backend ``auto`` weighs: with --segment_seconds every file runs as that many seconds
    (cut or padded; no header to read), else the files' lengths from their headers."""
    if args.segment_seconds:
        return runtime.JobSize(len(paths) * args.segment_seconds,
                               f"{runtime.seconds_text(len(paths) * args.segment_seconds)} of audio "
                               f"({len(paths)} file{'s' if len(paths) != 1 else ''} of --segment_seconds "
                               f"{args.segment_seconds:g})")
    return runtime.job_seconds(paths)


def run(args) -> int:
    """Extract the files of ``args.audio_path`` into ``args.output_path`` (under torchrun: one
    share per rank, merged by rank 0) and print the one-line summary; exit status 1 when some files
    could not be decoded (as audio_tagging: the rows of the others are written all the same)."""
    # Ranks wait at the barrier for the slowest share, hence the long timeout.
    info = devices.init_distributed(bool(args.cuda), timeout=datetime.timedelta(days=7))
    rank = info.rank
    if rank > 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        paths = runtime.gather_inputs(args.audio_path)
        check_output(args, paths)
        precision = args.precision
        if precision == "auto" and info.device.type == "cuda" and not devices.native_bf16(info.device):
            precision = "fp32"   # 'auto' of extraction: bf16 where native, else fp32 (not sm70/75's fp16)
        ex = Extractor.from_checkpoint(args.checkpoint_path,
                                       model_type=validate.model_type_for(args.checkpoint_path, args.model_type),
                                       frontend=frontend_overrides(args) or None, precision=precision,
                                       device=info.device, backend=args.backend,
                                       job_seconds=_job_seconds(args, paths) if args.backend == "auto" else None,
                                       batch_size=args.batch_size,
                                       num_workers=args.num_workers, segment_seconds=args.segment_seconds,
                                       progress=not args.quiet and rank == 0)
        # every file cropped or padded to a window the model cannot take whole would be mostly padding
        validate.segment_fits(args.segment_seconds, ex.min_samples, ex.sample_rate, ex.config.model_type)
        ex.segment_flag = "--segment_seconds"
        if args.class_labels_csv:   # given: used (a bad one is an error), or a warning says the checkpoint's win
            ex.labels = runtime.resolve_labels(ex.config, args.class_labels_csv)[0]
        elif not getattr(ex.config, "labels", None):
            try:  # official checkpoints carry no labels: store the default CSV's names if it is there
                ex.labels = runtime.resolve_labels(ex.config, None)[0]
            except PannsError as e:
                logger.info("no class labels stored with the features (%s)", e)
        summary = extract_to_hdf5(ex, paths, args.output_path, overwrite=args.overwrite, rank=rank,
                                  world_size=info.world_size,
                                  barrier=torch.distributed.barrier if info.distributed else None)
    finally:
        devices.teardown(info)
    if rank == 0:
        print("Extracted {} clips ({} failed) -> {} ({} rows)".format(summary["extracted"], summary["failed"],
                                                                      summary["output"], summary.get("rows")))
        if summary["failed"]:
            logger.error("%s", _failure_line(summary, args.output_path))
            return 1
    return 0
