"""Audio tagging, sound event detection and embedding extraction with a PANNs checkpoint.

Official sub-commands and output (``pytorch/inference.py`` of audioset_tagging_cnn)::

    python3 pytorch/inference.py audio_tagging --model_type=Cnn14 --checkpoint_path=Cnn14_mAP=0.431.pth \
        --audio_path=resources/R9_ZSCveAHg_7s.wav [--cuda]
    python3 pytorch/inference.py sound_event_detection --model_type=Cnn14_DecisionLevelMax \
        --checkpoint_path=Cnn14_DecisionLevelMax_mAP=0.385.pth --audio_path=resources/R9_ZSCveAHg_7s.wav

print what the official script prints (``Using CPU.``, the top-10 ``label: prob`` lines, the
embedding shape; the SED result shape and the figure path ``results/<stem>.png``). The model is
rebuilt from the checkpoint (its saved config, or the registry defaults of ``--model_type`` for an
official ``{'model': ...}`` file); front-end flags that contradict the checkpoint are an error.
From Python (``import inference``, an ``argparse.Namespace`` of the official flags), ``audio_tagging(args)`` and
``sound_event_detection(args)`` return the official ``(clipwise_output, labels)`` / ``(framewise_output, labels)``.
Without ``--checkpoint_path`` the official file of ``--model_type`` is downloaded once into the
cache (see pretrained.py).

Beyond the official script: several inputs (files, folders, .txt/.lst lists, globs), ``--top_k``,
``--output`` (.json/.csv), sliding windows for long recordings (``--segment_seconds``,
``--hop_seconds``, ``--aggregate``), an events CSV from framewise output (``--events_csv``,
``--threshold``, ``--min_duration``), ``--precision``, and a third sub-command::

    python3 pytorch/inference.py extract_embeddings --model_type=Cnn14 --checkpoint_path=... \
        --audio_path=DIR|FILE|LIST --output_path=features.h5 [--batch_size 8] [--num_workers N]

and live audio (``panns/stream.py``): tags every hop and events once each, as JSON lines::

    python3 pytorch/inference.py stream --checkpoint_path=... --audio_path=FILE|URL|- [--hop_seconds 1]
"""
from __future__ import annotations

import argparse
import csv
import errno
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union


import numpy as np
import torch

from panns import audio_io
from panns import config
from panns import extract
from panns import postprocess
from panns import pretrained
from panns import runtime
from panns import stream
from panns import validate
from panns.errors import AudioDecodeError, PannsError, run_cli
from panns.frontend import add_model_args, frontend_overrides
from panns.postprocess import Event, EventTracker, detect_events, tags_of, top_indexes  # noqa: F401 (re-exported)
from panns.runtime import AUTO_SEGMENT_SECONDS, AUTO_WINDOW_SECONDS, Runtime
from panns.runtime import gather_inputs, resolve_labels  # noqa: F401 (re-exported: shared with extract.py)
from panns.utilities import (Progress, atomic_write, check_dotdot, check_free_space, check_hdf5_kind, create_folder,
                             disk_full_error, get_filename, remove_stale_temps)

logger = logging.getLogger("inference")

# ----------------------------------------------------------------------------- model + labels
def load_runtime(args, paths: Sequence[str] = ()) -> Runtime:
    """checkpoint (given, or the cached official file of --model_type) -> Runtime on the chosen
    device at the chosen precision, through the chosen backend (``auto`` weighs the audio in ``paths``)."""
    options = {"job_seconds": runtime.job_seconds(paths)} if args.backend == "auto" else {}
    model_type = validate.model_type_for(args.checkpoint_path, args.model_type)   # Cnn14_mAP=0.431.pth -> Cnn14
    return Runtime.load(args.checkpoint_path, model_type=model_type, frontend=frontend_overrides(args) or None,
                        device=bool(args.cuda), precision=args.precision, backend=args.backend, **options)


# ----------------------------------------------------------------------------- running
@dataclass
class ClipResult:
    audio_path: str
    waveform: np.ndarray                  # (samples,) at the model's sample rate
    clipwise: np.ndarray                  # (classes,) probabilities
    embedding: Optional[np.ndarray]       # (D,) or None
    framewise: Optional[np.ndarray]       # (frames, classes) or None
    windows: int


def run_clip(rt: Runtime, waveform: np.ndarray, audio_path: str = "", segment_seconds: Optional[float] = None,
             hop_seconds: Optional[float] = None, aggregate: str = "max", batch_size: int = 8,
             need_framewise: bool = False) -> ClipResult:
    """Run the model on one decoded recording: whole (official) or in sliding windows (see
    ``Runtime.predict_windows``); recordings over AUTO_WINDOW_SECONDS default to windows."""
    sr = rt.sample_rate
    if segment_seconds is None and len(waveform) > AUTO_WINDOW_SECONDS * sr:
        segment_seconds = AUTO_SEGMENT_SECONDS
        logger.info("%s is %.0f s long; tagging it in %.0f-s windows (set --segment_seconds to change)",
                    audio_path, len(waveform) / sr, segment_seconds)
    res = rt.predict_windows(waveform, segment_seconds, hop_seconds, aggregate, batch_size, framewise=need_framewise)
    return ClipResult(audio_path, waveform, res.clipwise, res.embedding, res.framewise, res.windows)


# ----------------------------------------------------------------------------- results
def format_tagging(probs: np.ndarray, labels: Sequence[str], top_k: int = 10,
                   embedding: Optional[np.ndarray] = None) -> List[str]:
    """Lines the official audio_tagging prints: ``<label>: <prob:.3f>`` x top_k, then the embedding shape."""
    lines = ["{}: {:.3f}".format(labels[i], probs[i]) for i in top_indexes(probs, top_k)]
    if embedding is not None:
        lines.append("embedding: {}".format(embedding.shape))
    return lines


def _atomic_write_text(path: str, write) -> None:
    """``write(file)`` into a temp sibling renamed to ``path`` on success (a full disk or an
    unwritable folder: one line naming ``path``, no temp file left)."""
    create_folder(os.path.dirname(os.path.abspath(path)))
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            write(f)


EventsOfFile = Tuple[str, List[Event], str]   # (audio_path, events, error: "" when the file was decoded)


def write_events_csv(path: str, events_by_file: Sequence[EventsOfFile], several: Optional[bool] = None) -> None:
    """``onset,offset,label,score`` (seconds) for one input; for several inputs (``several``, default: more
    than one entry) ``audio_path`` first and ``error`` last, and a file that could not be decoded gets one
    row of its path and error (else it would look like a file without events).

    The columns follow the inputs given, not how many files were decoded: one failure among two inputs
    would otherwise drop the audio_path column. (A failure always takes the wide form: it has no row
    in the other; the command line never gets there, one input that fails is an error.)"""
    multi = (len(events_by_file) > 1 if several is None else several) or any(err for _, _, err in events_by_file)

    def write(f):
        w = csv.writer(f)
        w.writerow(["audio_path", "onset", "offset", "label", "score", "error"] if multi
                   else ["onset", "offset", "label", "score"])
        for audio_path, events, error in events_by_file:
            if error:
                w.writerow([audio_path, "", "", "", "", error])
            for e in events:
                row = [f"{e.onset:.3f}", f"{e.offset:.3f}", e.label, f"{e.score:.4f}"]
                w.writerow([audio_path, *row, ""] if multi else row)
    _atomic_write_text(path, write)


def write_results(path: str, records: List[dict], meta: dict) -> None:
    """--output: .json (everything) or .csv (one row per file and tag, ``error`` empty; a file that could not
    be decoded gets one row of its path and its error, so the CSV says which files are missing, as the JSON does)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        _atomic_write_text(path, lambda f: json.dump(dict(meta, results=records), f, indent=2))
    elif ext == ".csv":
        def write(f):
            w = csv.writer(f)
            w.writerow(["audio_path", "rank", "index", "mid", "label", "probability", "error"])
            for r in records:
                if r.get("error"):
                    w.writerow([r["audio_path"], "", "", "", "", "", r["error"]])
                for t in r.get("tags", []):
                    w.writerow([r["audio_path"], t["rank"], t["index"], t["mid"], t["label"],
                                f"{t['probability']:.6f}", ""])
        _atomic_write_text(path, write)
    else:
        raise PannsError(f"--output must end in .json or .csv, got {path}")


def plot_sed(waveform: np.ndarray, framewise: np.ndarray, labels: Sequence[str], sample_rate: int,
             window_size: int, hop_size: int, fig_path: str, top_k: int = 10) -> None:
    """The official two-panel figure: log spectrogram over the top classes' framewise probabilities.

    Top classes are ranked by their maximum over time. (Official: ``np.log`` of the magnitude,
    which is -inf on digital silence; a 1e-10 floor is added here.)"""
    import librosa  # only for the figure

    stft = np.abs(librosa.stft(y=waveform, n_fft=window_size, hop_length=hop_size, window="hann", center=True))
    draw_sed(np.log(stft + 1e-10), framewise, labels, sample_rate / hop_size, fig_path, top_k)


# Tick steps (seconds) of long SED figures: round numbers, so that the labels read as times.
_TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_MAX_TICKS = 15   # ~5-character labels on the 10-inch figure stay apart


def _time_ticks(frames_num: int, columns_per_second: float) -> Tuple[np.ndarray, List[str]]:
    """x ticks (column positions) and labels of the SED figure. Up to 30 s: every second labelled 0.0, 1.0, ...
    (official); longer: a round step in seconds (1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, hours) giving at
    most _MAX_TICKS ticks, labelled in whole seconds (a step of frames_num/20 gave labels such as 152.0228.0 that
    ran into each other)."""
    seconds = frames_num / columns_per_second
    if seconds <= 30:
        step = 1.0
    else:
        step = next((float(s) for s in _TICK_STEPS if seconds / s <= _MAX_TICKS),
                    86400.0 * math.ceil(seconds / 86400 / _MAX_TICKS))
    times = np.arange(0, seconds, step)
    ticks = times * columns_per_second
    ticks = ticks[ticks < frames_num]
    times = times[:len(ticks)]
    labels = [f"{t:.1f}" for t in times] if seconds <= 30 else [f"{t:.0f}" for t in times]
    return ticks, labels


def draw_sed(log_spec: np.ndarray, framewise: np.ndarray, labels: Sequence[str], columns_per_second: float,
             fig_path: str, top_k: int = 10) -> None:
    """Draw the SED figure from a (bins, columns) log spectrogram and (columns, classes) framewise
    probabilities on the same time grid; written atomically (a full disk: one line, no temp left)."""
    import matplotlib  # only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(framewise.max(axis=0))[::-1][:top_k]
    top = framewise[:, order]
    frames_num = top.shape[0]
    fig, axs = plt.subplots(2, 1, sharex=True, figsize=(10, 4))
    axs[0].matshow(log_spec, origin="lower", aspect="auto", cmap="jet")
    axs[0].set_ylabel("Frequency bins")
    axs[0].set_title("Log spectrogram")
    axs[1].matshow(top.T, origin="upper", aspect="auto", cmap="jet", vmin=0, vmax=1)
    ticks, tick_labels = _time_ticks(frames_num, columns_per_second)
    axs[1].xaxis.set_ticks(ticks)
    axs[1].xaxis.set_ticklabels(tick_labels)
    axs[1].yaxis.set_ticks(np.arange(0, len(order)))
    axs[1].yaxis.set_ticklabels([labels[i] for i in order])
    axs[1].yaxis.grid(color="k", linestyle="solid", linewidth=0.3, alpha=0.3)
    axs[1].set_xlabel("Seconds")
    axs[1].xaxis.set_ticks_position("bottom")
    plt.tight_layout()
    create_folder(os.path.dirname(os.path.abspath(fig_path)))
    try:
        with atomic_write(fig_path, suffix=os.path.splitext(fig_path)[1]) as tmp:
            plt.savefig(tmp)
    finally:
        plt.close(fig)


class _PooledFigure:
    """The SED figure of a streamed recording: spectrogram columns and framewise frames max-pooled
    over ``pool`` frames (at most ~4000 columns), built block by block."""

    def __init__(self, expected_frames: int, window_size: int, hop_size: int):
        self.pool = max(1, -(-expected_frames // 4000))
        self.window_size, self.hop_size = window_size, hop_size
        self.spec: List[np.ndarray] = []
        self.fw: List[np.ndarray] = []
        self._fw_rest: Optional[np.ndarray] = None
        self._tail = np.zeros(0, np.float32)

    def audio(self, block: np.ndarray) -> np.ndarray:
        """Take a block of samples (and hand it on)."""
        x = np.concatenate([self._tail, block])
        step = self.hop_size * self.pool
        usable = (len(x) - self.window_size) // step * step if len(x) >= self.window_size else 0
        if usable > 0:
            starts = np.arange(0, usable, step)
            win = np.hanning(self.window_size).astype(np.float32)
            frames = np.stack([x[s:s + self.window_size] * win for s in starts])
            self.spec.append(np.log(np.abs(np.fft.rfft(frames, axis=1)).T + 1e-10))
            self._tail = x[usable:]
        else:
            self._tail = x
        return block

    def frames(self, fw: np.ndarray) -> None:
        x = fw if self._fw_rest is None else np.concatenate([self._fw_rest, fw])
        k = len(x) // self.pool * self.pool
        if k:
            self.fw.append(x[:k].reshape(-1, self.pool, x.shape[1]).max(axis=1))
        self._fw_rest = x[k:]

    def draw(self, labels, frames_per_second: float, fig_path: str, top_k: int) -> None:
        if self._fw_rest is not None and len(self._fw_rest):
            self.fw.append(self._fw_rest.max(axis=0, keepdims=True))
        fw = np.concatenate(self.fw)
        spec = np.concatenate(self.spec, axis=1) if self.spec else np.zeros((self.window_size // 2 + 1, 1))
        draw_sed(spec, fw, labels, frames_per_second / self.pool, fig_path, top_k)


class FramewiseWriter:
    """--framewise_output: framewise probabilities written as they are computed.

    ``.npy``: one (frames, classes) float32 matrix (one input only). ``.h5``: datasets
    ``framewise/<k>`` (frames, classes) per input k, with ``audio_path`` and ``labels`` and the
    attribute ``frames_per_second``. Written to a temp sibling renamed on success; free space is
    checked first (h5py can crash on a full disk), and a full disk is one line naming the file."""

    def __init__(self, path: str, labels: Sequence[str], frames_per_second: float, expected_frames: int):
        self.path, self.labels, self.fps = path, list(labels), frames_per_second
        self.h5 = os.path.splitext(path)[1].lower() == ".h5"
        create_folder(os.path.dirname(os.path.abspath(path)))
        remove_stale_temps(path)
        check_free_space(path, 4 * len(labels) * expected_frames)
        self._ctx = atomic_write(path, suffix=".h5" if self.h5 else "")
        self.tmp = self._ctx.__enter__()
        self.names: List[str] = []
        self.rows = 0
        try:
            if self.h5:
                import h5py  # only for .h5 outputs

                self.f = h5py.File(self.tmp, "w")
                self.f.attrs["frames_per_second"] = frames_per_second
            else:
                self.f = open(self.tmp, "wb")
                self.f.write(self._npy_header(0))
        except BaseException:
            self.close(ok=False)
            raise

    def _npy_header(self, frames: int) -> bytes:
        """A .npy v1.0 header padded to a fixed 128 bytes, so the frame count can be fixed at the end."""
        d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (frames, len(self.labels))
        return b"\x93NUMPY\x01\x00" + (128 - 10).to_bytes(2, "little") + d.ljust(128 - 10 - 1).encode() + b"\n"

    def start(self, audio_path: str) -> None:
        self.names.append(audio_path)
        self.rows = 0
        if self.h5:
            import h5py  # only for .h5 outputs

            ds = self.f.create_dataset(f"framewise/{len(self.names) - 1}", shape=(0, len(self.labels)),
                                       maxshape=(None, len(self.labels)), dtype=np.float32,
                                       chunks=(1024, len(self.labels)))
            ds.attrs["audio_path"] = audio_path
            self._ds = ds
            self._h5py = h5py

    def write(self, frames: np.ndarray) -> None:
        try:
            if self.h5:
                self._ds.resize(self.rows + len(frames), axis=0)
                self._ds[self.rows:] = frames
            else:
                self.f.write(np.ascontiguousarray(frames, dtype="<f4").tobytes())
        except OSError as e:
            raise disk_full_error(self.path) if e.errno == errno.ENOSPC or "No space" in str(e) else e
        self.rows += len(frames)

    def close(self, ok: bool = True) -> None:
        try:
            if self.h5:
                if ok:
                    self.f.create_dataset("audio_path", data=np.array(self.names, dtype=object),
                                          dtype=self._h5py.string_dtype("utf-8") if self.names else None)
                    self.f.create_dataset("labels", data=np.array(self.labels, dtype=object),
                                          dtype=self._h5py.string_dtype("utf-8"))
                self.f.close()
            else:
                if ok:
                    self.f.seek(0)
                    self.f.write(self._npy_header(self.rows))
                    self.f.flush()
                    os.fsync(self.f.fileno())
                self.f.close()
        except OSError as e:
            ok = False
            err = disk_full_error(self.path) if e.errno == errno.ENOSPC else e
        else:
            err = None
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            exc = err or PannsError(f"not written: {self.path}")
            try:
                self._ctx.__exit__(type(exc), exc, None)
            except BaseException:
                pass
            if err is not None:
                raise err


def _figure_paths(paths: Sequence[str], output_dir: str) -> List[str]:
    """results/<stem>.png per input (official), made unique when two inputs share a stem.

    Every input's own stem is reserved before any repeat is numbered, and a number already taken is
    skipped: inputs ``c1/a.wav c2/a.wav c1/a_1.wav`` get a.png, a_2.png, a_1.png (numbering the
    repeat a_1 would overwrite the third input's figure). Names are compared case-folded, since
    A.png and a.png are one file on macOS and Windows."""
    stems = [get_filename(p) for p in paths]
    taken = {s.casefold() for s in stems}
    given: set = set()
    out = []
    for stem in stems:
        name, n = stem, 0
        # a repeat takes the first stem_<n> that was not given and is no input's own stem
        while name.casefold() in given or (n and name.casefold() in taken):
            n += 1
            name = f"{stem}_{n}"
        given.add(name.casefold())
        out.append(os.path.join(output_dir, f"{name}.png"))
    return out


# ----------------------------------------------------------------------------- sub-commands
FIGURES_DIR = "results"   # the official script's folder of SED figures (--output_dir)
OUTPUT_EXTENSIONS = {"output": (".json", ".csv"), "events_csv": (".csv",), "framewise_output": (".npy", ".h5")}


def check_outputs(args, paths: Sequence[str] = ()) -> None:
    """Refuse, before the model loads or any audio is decoded, outputs with a wrong extension and
    outputs that cannot be written (a missing folder is made later, so the nearest existing one is
    probed), that are folders, or that are an input (``paths``, the checkpoint, the label CSV) or
    another output, and a ``.h5`` --framewise_output that exists and is no framewise output (packed clips,
    an index, embeddings, not HDF5: ``utilities.check_hdf5_kind``): found after computing, each of these
    cost the whole run, or destroyed a file."""
    outputs = []
    for key, exts in OUTPUT_EXTENSIONS.items():
        path = getattr(args, key, None)
        if not path:
            continue
        if os.path.splitext(path)[1].lower() not in exts:
            raise PannsError(f"--{key} must end in {' or '.join(exts)}, got {path}")
        outputs.append((f"--{key}", path))
    if getattr(args, "output_dir", None) and not getattr(args, "no_plot", True) and paths:
        check_dotdot(args.output_dir, "--output_dir")   # named as given, not as its first figure
        # the figures all go to one folder: the first one stands for the folder's checks
        outputs.append(("--output_dir figure", _figure_paths(paths[:1], args.output_dir)[0]))
    validate.output_paths(outputs, inputs=[args.checkpoint_path, getattr(args, "class_labels_csv", None),
                                           *args.audio_path], files=paths)
    fw_out = getattr(args, "framewise_output", None)
    if fw_out and fw_out.lower().endswith(".h5"):   # not packed clips, an index or embeddings, nor other bytes
        check_hdf5_kind(fw_out, "framewise", "--framewise_output", "--framewise_output")


def check_figure_options(args) -> None:
    """``--output_dir`` holds the figures and nothing else (--output, --events_csv and --framewise_output
    take their own paths): given with --no_plot it would change nothing, so it is refused; not given, it
    is FIGURES_DIR. Before any work (None in the parser, so that a folder given is told from the default)."""
    if args.no_plot and args.output_dir is not None:
        raise PannsError(f"--output_dir {args.output_dir} has no effect with --no_plot: it is the folder of the "
                         "figures only (--output, --events_csv and --framewise_output take their own paths); "
                         "drop one of the two")
    if args.output_dir is None:
        args.output_dir = FIGURES_DIR


def _print_device(device: torch.device) -> None:
    if device.type == "cuda":
        print("GPU number: {}".format(torch.cuda.device_count()))
    else:
        print("Using CPU.")


def _expected_frames(paths: Sequence[str], fps: float) -> int:
    return int(sum((audio_io.probe_seconds(p) or 0.0) * fps + 1 for p in paths))


def check_window_options(args, paths: Sequence[str]) -> None:
    """``runtime.check_window_options`` over the files' lengths (a length that cannot be read counts as
    long) for the window flags given: --hop_seconds, and --aggregate when given explicitly (None until
    ``main`` resolves it to max)."""
    aggregate = args.aggregate if getattr(args, "aggregate_given", False) else None
    if (args.hop_seconds is not None or aggregate is not None) and args.segment_seconds is None:
        runtime.check_window_options(None, [audio_io.probe_seconds(p) or math.inf for p in paths],
                                     args.hop_seconds, aggregate)


def _tag_files(args, sed: bool, collect: bool = False) -> Tuple[int, List[Optional[np.ndarray]], List[str]]:
    """Tag (or detect events in) every input of ``args.audio_path``, printing the official lines; returns
    (exit status: 0, or 1 when some of several files could not be decoded, per-file outputs, labels).

    With ``collect`` (the Python API), the outputs, in input order (None for a file that failed to decode), are
    the clipwise probabilities (classes,), or for SED the framewise ones (frames, classes); without it (the
    command line) the list is empty and no file's framewise matrix is kept, streamed or not."""
    paths = gather_inputs(args.audio_path)
    check_outputs(args, paths)
    check_window_options(args, paths)
    fw_out = getattr(args, "framewise_output", None)
    if fw_out and fw_out.lower().endswith(".npy") and len(paths) > 1:
        raise PannsError(f"--framewise_output {fw_out}: a .npy file holds one matrix; use a .h5 file for "
                         f"{len(paths)} inputs")
    if args.class_labels_csv or os.path.isfile(config.DEFAULT_LABELS_CSV):
        config.read_class_labels(args.class_labels_csv)   # a bad label CSV fails before the model loads
    ld = load_runtime(args, paths)
    # before any file is run: a window the model cannot take whole would be mostly padding
    validate.segment_fits(args.segment_seconds, ld.min_samples, ld.sample_rate, ld.config.model_type)
    if sed and not ld.is_sed:
        from panns import models  # the registry, for the list of SED models in the message

        sed_names = [n for n in models.model_names() if getattr(models.get_model_spec(n), "is_sed", False)]
        raise PannsError(f"{ld.config.model_type} is a clip-level model without framewise output; sound event "
                         f"detection needs a decision-level model: {', '.join(sed_names)}")
    labels, ids = resolve_labels(ld.config, args.class_labels_csv)
    _print_device(ld.device)
    top_k = min(args.top_k, len(labels))
    fps = ld.sample_rate / ld.hop_size
    plot = sed and not getattr(args, "no_plot", False)
    fig_paths = _figure_paths(paths, args.output_dir) if plot else []
    writer = FramewiseWriter(fw_out, labels, fps, _expected_frames(paths, fps)) if fw_out else None
    records: List[dict] = []
    events_by_file: List[EventsOfFile] = []
    failures = 0
    outputs: List[Optional[np.ndarray]] = []
    try:
        for n, path in enumerate(paths):
            if len(paths) > 1:
                print("==> {} <==".format(path))
            try:
                rec, events, res = _run_file(ld, args, path, sed, labels, ids, top_k,
                                             fig_paths[n] if plot else None, writer, collect)
            except AudioDecodeError as e:
                if len(paths) == 1:
                    raise
                logger.error("%s", e)
                error = str(e) or "could not be decoded"   # never empty: "" means decoded in the CSVs
                records.append({"audio_path": path, "error": error})
                if collect:
                    outputs.append(None)
                events_by_file.append((path, [], error))
                failures += 1
                continue
            records.append(rec)
            if collect:
                outputs.append(res.framewise if sed else res.clipwise)
            events_by_file.append((path, events, ""))
    except BaseException:
        if writer is not None:
            writer.close(ok=False)
        raise
    if writer is not None:
        writer.close()
        logger.info("wrote %s", fw_out)
    if args.output:
        meta = {"model_type": ld.config.model_type, "checkpoint_path": os.path.abspath(ld.checkpoint_path),
                "sample_rate": ld.sample_rate, "precision": ld.precision, "top_k": top_k,
                "segment_seconds": args.segment_seconds, "hop_seconds": args.hop_seconds, "aggregate": args.aggregate}
        if sed:
            meta.update(threshold=args.threshold, min_duration=args.min_duration)
        write_results(args.output, records, meta)
        logger.info("wrote %s", args.output)
    if sed and args.events_csv:
        write_events_csv(args.events_csv, events_by_file, several=len(paths) > 1)
        logger.info("wrote %s", args.events_csv)
    if failures:
        logger.error("%d of %d files could not be decoded", failures, len(paths))
    return (1 if failures else 0), outputs, list(labels)


def _run_file(ld: Runtime, args, path: str, sed: bool, labels: Sequence[str], ids: Sequence[str], top_k: int,
              fig_path: Optional[str], writer: Optional[FramewiseWriter],
              collect: bool = False) -> Tuple[dict, List[Event], runtime.WindowedPrediction]:
    """Tag (or detect events in) one file, printing the official lines; returns (record, events, prediction).

    Files up to AUTO_WINDOW_SECONDS are decoded whole (the official path); longer ones are decoded,
    run and written window by window, so memory stays bounded whatever their length, unless
    ``collect`` (a caller wants the (frames, classes) matrix back) keeps the framewise output."""
    sr, hop = ld.sample_rate, ld.hop_size
    fps = sr / hop
    seconds = audio_io.probe_seconds(path)
    streamed = seconds is not None and seconds > AUTO_WINDOW_SECONDS
    waveform: Optional[np.ndarray] = None
    if streamed:
        blocks = audio_io.stream_audio(path, sr)
    else:
        waveform = audio_io.load_audio(path, sr)
        blocks = waveform
        if len(waveform) > AUTO_WINDOW_SECONDS * sr:
            # A long file whose header gives no length (m4a, opus: decoded whole by ffmpeg) runs as the streamed
            # ones do from here: its whole-file figure and framewise matrix took 7 GB at 25 minutes
            seconds, streamed = len(waveform) / sr, True
            blocks, waveform = iter([waveform]), None
    figure = None
    if streamed:
        assert seconds is not None
        segment = args.segment_seconds or AUTO_SEGMENT_SECONDS
        logger.info("%s is %.0f s long; running it in %.0f-s windows%s", path, seconds, segment,
                    "" if args.segment_seconds else " (set --segment_seconds to change)")
        if fig_path:
            figure = _PooledFigure(int(seconds * fps) + 1, ld.config.window_size, hop)
            blocks = (figure.audio(b) for b in blocks)
    else:
        assert waveform is not None
        segment = runtime.auto_segment(len(waveform), sr, args.segment_seconds)
    tracker = EventTracker(labels, fps, args.threshold, args.min_duration) if sed else None
    if writer is not None:
        writer.start(path)

    def sink(frames: np.ndarray) -> None:
        tracker.update(frames)
        if writer is not None:
            writer.write(frames)
        if figure is not None:
            figure.frames(frames)

    bar = None
    if streamed and segment:
        win = max(hop, int(round(segment * sr)) // hop * hop)
        step = max(hop, int(round((args.hop_seconds or segment) * sr)) // hop * hop)
        bar = Progress(int(max(0, seconds * sr - win) // step) + 2, f"windows of {os.path.basename(path)}",
                       unit="window")
    try:
        res = ld.predict_windows(blocks, segment, args.hop_seconds, args.aggregate, args.batch_size,
                                 framewise=sed and (collect or (fig_path is not None and not streamed)),
                                 framewise_sink=sink if sed else None, on_window=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    duration = res.samples / sr
    rec = {"audio_path": path, "duration_seconds": round(duration, 3), "windows": res.windows,
           "tags": tags_of(res.clipwise, labels, ids, top_k)}
    if not sed:
        for line in format_tagging(res.clipwise, labels, top_k, res.embedding):
            print(line)
        return rec, [], res
    frames = res.samples // hop + 1
    print("Sound event detection result (time_steps x classes_num): {}".format((frames, len(labels))))
    if fig_path:
        if figure is not None:
            figure.draw(labels, fps, fig_path, top_k)
        else:
            assert waveform is not None
            plot_sed(waveform, res.framewise, labels, sr, ld.config.window_size, hop, fig_path, top_k)
        print("Save sound event detection visualization to {}".format(fig_path))
        rec["figure"] = fig_path
    events = tracker.events(duration)
    rec["frames"] = int(frames)
    rec["events"] = [e.to_dict() for e in events]
    return rec, events, res


Outputs = Union[np.ndarray, List[Optional[np.ndarray]]]


def audio_tagging(args: argparse.Namespace) -> Tuple[Outputs, List[str]]:
    """The official ``audio_tagging(args)``: print the device line and the top-k ``label: prob`` lines (and
    the embedding shape) of each input, and return ``(clipwise_output, labels)``.

    ``args`` needs only the official fields (sample_rate, window_size, hop_size, mel_bins, fmin, fmax,
    model_type, checkpoint_path, audio_path, cuda); any other flag it lacks takes the command line's
    default. For one audio file, clipwise_output is a float32 array (classes_num,); for other inputs (a
    folder, .txt/.lst list file, glob, or several of these as a list) it is a list of such arrays in input
    order, None for a file that could not be decoded. labels: the classes_num label names."""
    return _python_call(args, "audio_tagging")


def sound_event_detection(args: argparse.Namespace) -> Tuple[Outputs, List[str]]:
    """The official ``sound_event_detection(args)``: print the result shape, draw ``results/<stem>.png``
    (``--no_plot``/``--output_dir`` fields as on the command line) and return ``(framewise_output, labels)``.

    framewise_output: a float32 array (frames, classes_num), frames = samples // hop_size + 1, also for a
    long recording run window by window; for several inputs a list of them (None for an undecodable
    file). ``args`` as for :func:`audio_tagging`."""
    return _python_call(args, "sound_event_detection")


def _python_call(args: argparse.Namespace, mode: str) -> Tuple[Outputs, List[str]]:
    """Run ``mode`` for a caller's Namespace (left unchanged) and return its outputs: one array when
    audio_path names one audio file (a string, or a one-item list as the parser makes), else the list."""
    args = _with_parser_defaults(args, mode)
    specs = [args.audio_path] if isinstance(args.audio_path, (str, os.PathLike)) else list(args.audio_path)
    if not specs:
        raise PannsError(f"{mode}: audio_path names no input")
    args.audio_path = [os.fspath(p) for p in specs]
    # one audio file named (not a folder, list file or glob): the official single array
    single = len(args.audio_path) == 1 and os.path.isfile(args.audio_path[0]) \
        and os.path.splitext(args.audio_path[0])[1].lower() not in runtime.LIST_EXTENSIONS
    _prepare(args)
    _, outputs, labels = _tag_files(args, sed=mode == "sound_event_detection", collect=True)
    return (outputs[0] if single else outputs), labels


def _with_parser_defaults(args: argparse.Namespace, mode: str) -> argparse.Namespace:
    """A copy of ``args`` with every flag of sub-command ``mode`` that it lacks set to the parser's default
    (the parser owns the defaults); a required flag it lacks is a PannsError."""
    parser = argparse.ArgumentParser()
    _add_common(parser)
    _add_tagging_args(parser, mode)
    out = argparse.Namespace(**vars(args))
    for action in parser._actions:
        if action.default is argparse.SUPPRESS or hasattr(out, action.dest):
            continue
        if action.required:
            raise PannsError(f"{mode}: args has no {action.dest} (the command line's {action.option_strings[0]})")
        setattr(out, action.dest, action.default)
    out.mode = mode
    return out


# ----------------------------------------------------------------------------- CLI
TAGGING_MODES = {"audio_tagging": "print the top clip-level tags (official output)",
                 "sound_event_detection": "framewise detection + figure (decision-level models)"}
# Sub-commands owned by other modules: name -> (module, help). Each module defines
# add_arguments(parser) for its own flags (the model, device and input flags come from
# _add_common) and run(args) -> exit status; it imports nothing from this file.
SUBCOMMANDS = {"extract_embeddings": (extract, "embeddings + clipwise output of many files into HDF5"),
               "stream": (stream, "live audio: tags every hop and events once, as JSON lines")}


def _command_module(mode: str):
    return SUBCOMMANDS[mode][0]


def _add_common(p: argparse.ArgumentParser) -> None:
    """Flags every inference sub-command shares: model, backend, inputs, device, precision, batch."""
    g = add_model_args(p, "model (front-end flags default to the checkpoint's settings)")
    g.add_argument("--backend", choices=runtime.backend_names(), default="auto",
                   help="what runs the model (default: %(default)s = the path measured fastest on this CPU by a "
                        "cached calibration (torch fp32, onnxruntime fp32, torch bf16 where native and --precision "
                        f"auto): {runtime.auto_rule_text()}; torch on GPUs; PANNS_BACKEND=name forces one; exports "
                        "are cached in $PANNS_CACHE/onnx or ~/.cache/panns/onnx); torch; onnxruntime (CPU, fp32; "
                        "fails rather than falling back); onnxruntime-int8 (the same, convolutions quantised to "
                        "int8 once: faster on CPUs with VNNI, embeddings within cosine 0.999)")
    p.add_argument("--audio_path", type=str, required=True, nargs="+", action="extend",
                   help="audio file(s), folder(s), .txt/.lst list(s) of paths or glob(s); may repeat (required)")
    p.add_argument("--cuda", action="store_true", default=False,
                   help="run on the GPU if available (else warn, CPU; default: CPU)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                   help="numeric precision of the CNN body (default: %(default)s; auto picks bf16 where the hardware "
                        "has native bf16 (CUDA sm80+, CPUs with AMX/AVX512-BF16), fp16 on sm70/75 GPUs, else fp32)")
    p.add_argument("--batch_size", type=int, default=8, help="windows/clips per forward pass (default: %(default)s)")


def _add_tagging_args(p: argparse.ArgumentParser, mode: str) -> None:
    """The flags of ``audio_tagging`` / ``sound_event_detection`` beyond the common ones (our extensions)."""
    p.add_argument("--segment_seconds", type=float, default=None,
                   help="split recordings into windows of this length (default: whole file up to "
                        f"{AUTO_WINDOW_SECONDS:.0f} s, {AUTO_SEGMENT_SECONDS:.0f}-s windows beyond)")
    p.add_argument("--class_labels_csv", type=str, default=None,
                   help="label CSV when the checkpoint carries no labels (default: metadata/class_labels_indices.csv "
                        "in the repository; fetch it with scripts/fetch_metadata.sh)")
    p.add_argument("--top_k", type=int, default=10, help="number of classes printed/plotted (default 10)")
    p.add_argument("--hop_seconds", type=float, default=None,
                   help="hop between windows (default: --segment_seconds, i.e. no overlap)")
    p.add_argument("--aggregate", choices=("max", "mean"), default=None,
                   help="how window outputs are combined into one clip result (default max; with windows only: "
                        "--segment_seconds, or recordings over %.0f s)" % AUTO_WINDOW_SECONDS)
    p.add_argument("--output", type=str, default=None,
                   help="also write results to this .json or .csv file (default: none)")
    if mode == "sound_event_detection":
        p.add_argument("--output_dir", type=str, default=None,
                       help=f"folder of the figures <stem>.png, and only of them (default: {FIGURES_DIR}, "
                            "relative to the current dir; refused with --no_plot)")
        p.add_argument("--no_plot", action="store_true",
                       help=f"skip the figures (faster; default: write {FIGURES_DIR}/<stem>.png per file)")
        p.add_argument("--framewise_output", type=str, default=None,
                       help="save the framewise probabilities: x.npy (one input: (frames, classes) float32) or "
                            "x.h5 (framewise/<k> per input k, with audio_path and labels); written as computed "
                            "(default: not saved)")
        p.add_argument("--events_csv", type=str, default=None,
                       help="write detected events (onset,offset,label,score) to this CSV (default: none)")
        p.add_argument("--threshold", type=float, default=postprocess.DEFAULT_THRESHOLD,
                       help="framewise probability at or above which a class is active (default "
                            f"{postprocess.DEFAULT_THRESHOLD:g})")
        p.add_argument("--min_duration", type=float, default=postprocess.DEFAULT_MIN_DURATION,
                       help="drop events shorter than this many seconds (default "
                            f"{postprocess.DEFAULT_MIN_DURATION:g})")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="PANNs inference: audio tagging, sound event detection, "
                                     "embeddings.")
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode, text in TAGGING_MODES.items():
        p = sub.add_parser(mode, help=text)
        _add_common(p)
        _add_tagging_args(p, mode)
    for mode, (_, text) in SUBCOMMANDS.items():
        p = sub.add_parser(mode, help=text)
        _add_common(p)
        _command_module(mode).add_arguments(p)
    p = sub.add_parser("export", help="write the model (front end included) as an ONNX file for other runtimes")
    _add_export_args(p)
    return parser


def _add_export_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--output", type=str, required=True, help="ONNX file to write (atomically)")
    p.add_argument("--opset", type=int, default=18,
                   help="ONNX opset (default: %(default)s, the lowest the exporter writes)")
    p.add_argument("--class_labels_csv", type=str, default=None,
                   help="label CSV stored in the metadata when the checkpoint has no labels "
                        "(default: the repository's)")
    p.set_defaults(batch_size=1, segment_seconds=None)


def export(args) -> int:
    """Write the checkpoint's model (log-mel front end included) as an ONNX file, labels and
    front-end settings in its metadata, checked against torch on a probe clip."""
    from panns import onnx_backend  # optional dependencies (onnx, onnxscript, onnxruntime): only here

    onnx_backend.check_opset(args.opset)
    if not args.output.lower().endswith(".onnx"):
        raise PannsError(f"--output must end in .onnx, got {args.output}")
    # before the model loads: an unwritable folder, or an output that is the checkpoint (a .onnx-named
    # checkpoint loads fine and the export would replace it)
    validate.output_paths([("--output", args.output)], inputs=[args.checkpoint_path, args.class_labels_csv])
    model, cfg, _ = runtime.load_model(args.checkpoint_path, validate.model_type_for(args.checkpoint_path,
                                                                                     args.model_type),
                                       frontend_overrides(args) or None)
    try:
        labels = resolve_labels(cfg, args.class_labels_csv)[0]
    except (PannsError, OSError) as e:
        if args.class_labels_csv:
            raise
        logger.warning("exporting without class labels (%s)", e)
        labels = []
    err = onnx_backend.export_checked(model, cfg, args.output, opset=args.opset, labels=labels)
    print("Exported {} to {} (opset {}, {:.1f} MB); ONNX Runtime output within {:.1e} of torch's largest value".format(
        cfg.model_type, args.output, args.opset, os.path.getsize(args.output) / 1e6, err))
    return 0


def _prepare(args: argparse.Namespace) -> None:
    """Resolve and check parsed flags (command line or Python API) before any work."""
    if hasattr(args, "aggregate"):   # None in the parser so that a --aggregate given can be checked for effect
        args.aggregate_given, args.aggregate = args.aggregate is not None, args.aggregate or runtime.DEFAULT_AGGREGATE
    if hasattr(args, "no_plot"):     # --output_dir is None in the parser for the same reason
        check_figure_options(args)
    if getattr(args, "checkpoint_path", None):   # Cnn14_mAP=0.431.pth as the official commands write it: the cache's
        args.checkpoint_path = pretrained.resolve_published(args.checkpoint_path)
    # The same checks as the Python API's (validate); hop > segment in SED would leave frames never analysed.
    validate.options(top_k=getattr(args, "top_k", None), batch_size=args.batch_size,
                     segment_seconds=args.segment_seconds, hop_seconds=getattr(args, "hop_seconds", None),
                     threshold_=getattr(args, "threshold", None), min_duration=getattr(args, "min_duration", None),
                     framewise=args.mode == "sound_event_detection", prefix="--")


def main(argv=None, prog: Optional[str] = None) -> None:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    for noisy in ("matplotlib", "numba", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _prepare(args)
    if args.mode in TAGGING_MODES:   # the exit status; the public functions return the official tuples
        rc = _tag_files(args, sed=args.mode == "sound_event_detection")[0]
    else:
        rc = (export if args.mode == "export" else _command_module(args.mode).run)(args)
    if rc:
        sys.exit(rc)


if __name__ == "__main__":
    run_cli(main)
