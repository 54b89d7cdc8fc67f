"""The Python API: ``panns.load`` and the panns_inference-compatible ``AudioTagging`` /
``SoundEventDetection``.

::

    import panns
    m = panns.load("Cnn14")                      # catalogue name (downloaded once) or a checkpoint path
    m.tag("clip.wav", top_k=5)                   # [("Speech", 0.93), ...]
    m.embed(audio, sample_rate=44100)            # (2048,) float32; audio resampled to m.sample_rate
    m.framewise(["a.wav", "b.wav"])              # SED models: [(frames, classes), ...]
    m.detect_events("street.wav", threshold=0.3) # SED models: [{"onset", "offset", "label", "score", "index"}]
    s = m.stream(hop_seconds=1.0)                # live audio: s.push(chunk, rate) -> tags per hop, events once

Inputs everywhere: a path, a list (or numpy array) of paths, a 1-D array/tensor (one clip), a 2-D (batch, samples)
array/tensor, or a list of 1-D arrays; arrays are taken at ``sample_rate`` (default: the model's
rate) and resampled when it differs (files at their own rate: ``sample_rate`` with files only is
refused). One input gives one answer, several give a list. A (samples, channels) array as
``soundfile.read`` returns it is one clip averaged to mono; integer PCM (int16, int32, uint8) is
scaled to [-1, 1] like soundfile; NaN/inf, empty inputs and options out of range are refused in one
line (``panns.validate``).
"""
from __future__ import annotations

import numbers
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from panns import audio_io
from panns import config
from panns import runtime
from panns import stream as stream_mod
from panns import validate
from panns.errors import PannsError
from panns.postprocess import DEFAULT_MIN_DURATION, DEFAULT_THRESHOLD, EventTracker, top_indexes
from panns.runtime import Runtime, WindowedPrediction

Audio = Union[str, os.PathLike, np.ndarray, torch.Tensor, Sequence[Union[str, os.PathLike, np.ndarray]]]


def _resolve(name_or_path: str, model_type: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(checkpoint path or None for the catalogue download, model type or None)."""
    from panns import pretrained  # catalogue of the official files

    if not isinstance(name_or_path, (str, os.PathLike)):   # os.fspath's message names no argument
        raise TypeError(f"name_or_path must be a published model name (e.g. 'Cnn14') or a checkpoint path, "
                        f"got {type(name_or_path).__name__}")
    path = pretrained.resolve_published(os.fspath(name_or_path), "name_or_path") or ""
    if os.path.isdir(path):
        raise PannsError(f"{path} is a folder; give a checkpoint file in it")
    if os.path.exists(path):   # an official file keeps its published name: Cnn14_mAP=0.431.pth
        return path, validate.model_type_for(path, model_type, "model_type=")
    if path in pretrained.CATALOGUE:
        return None, path
    raise PannsError(f"{path!r} is neither a checkpoint file nor a published model; published: "
                     f"{', '.join(pretrained.available())}")


def load(name_or_path: str = "Cnn14", model_type: Optional[str] = None, device: Union[None, str, torch.device] = None,
         precision: str = "fp32", labels_csv: Optional[str] = None, download: bool = True,
         backend: str = "auto") -> "Model":
    """Load a model for inference.

    name_or_path: a checkpoint file (ours, or an official ``{'model': ...}`` file; official files
    need ``model_type`` unless they keep their published name) or a published model type
    (``"Cnn14"``, ``"Cnn14_DecisionLevelMax"``, ...), downloaded once into ``$PANNS_CACHE`` or
    ``~/.cache/panns`` (``download=False``: only use the cache). device: None/'auto' = CUDA when
    available, else CPU. precision: 'fp32' (default), 'bf16', 'fp16' or 'auto'.
    labels_csv: class names when the checkpoint has none (default: the AudioSet label list).
    backend: 'auto' (default: on a CPU the path a cached calibration of this model type found fastest
    on this machine (runtime._auto_backend; a command line with 1 min of audio or more makes one, 5 min
    while ONNX Runtime's export is not cached), else torch: no export unless a measurement says ONNX
    Runtime pays; torch on GPUs; one logged line says which),
    'torch', or 'onnxruntime' (CPU, fp32, fails rather than falls back). The ONNX backends export the
    model once per weights (Cnn14: 15-40 s, in a child process, with one logged line) into
    $PANNS_CACHE/onnx or ~/.cache/panns/onnx, whatever the checkpoint's file name.
    ``module`` is the torch model whichever backend runs it."""
    path, mt = _resolve(name_or_path, model_type)
    rt = Runtime.load(path, model_type=mt, device=device, precision=precision, download=download, backend=backend)
    return Model(rt, labels_csv)


class Model:
    """A loaded model (see :func:`load`). ``runtime`` is the underlying :class:`runtime.Runtime`,
    ``module`` the torch model; ``labels`` the class names; ``sample_rate`` the model's rate."""

    def __init__(self, rt: Runtime, labels_csv: Optional[str] = None):
        self.runtime = rt
        cfg = rt.config
        if getattr(cfg, "labels", None) or rt.classes_num == config.AUDIOSET_CLASSES_NUM or labels_csv:
            # the CLI's rule: a labels_csv given for a checkpoint with its own labels is warned about, not dropped
            self.labels, self.ids = runtime.resolve_labels(cfg, labels_csv, "labels_csv")
        else:
            self.labels, self.ids = [f"class_{i}" for i in range(rt.classes_num)], [""] * rt.classes_num

    def __repr__(self) -> str:
        return (f"panns.Model({self.model_type}, {self.sample_rate} Hz, {self.runtime.classes_num} classes, "
                f"device={self.runtime.device}, precision={self.runtime.precision}, "
                f"backend={self.runtime.backend_name})")

    @property
    def model_type(self) -> str:
        return self.runtime.config.model_type

    @property
    def sample_rate(self) -> int:
        return self.runtime.sample_rate

    @property
    def module(self) -> torch.nn.Module:
        return self.runtime.model

    @property
    def frames_per_second(self) -> float:
        return self.runtime.sample_rate / self.runtime.hop_size

    # -- inputs ---------------------------------------------------------------------------------
    def waveforms(self, audio: Audio, sample_rate: Optional[int] = None) -> Tuple[List[np.ndarray], bool]:
        """(list of mono float32 waveforms at the model's rate, whether a single input was given).

        Arrays go through ``validate``: stereo (samples, 2) averaged to mono, integer PCM scaled
        like soundfile, NaN/inf and empty inputs refused."""
        sr = self.sample_rate if sample_rate is None else validate.sample_rate(sample_rate)

        def resampled(w: np.ndarray, name: str) -> np.ndarray:
            y = audio_io.resample(w, sr, self.sample_rate)
            if not len(y):   # 1 sample at 96 kHz is none at 32 kHz: it ran as padding alone, a result of silence
                raise PannsError(f"{name} has {len(w)} sample(s) at {sr} Hz, which leave none at the model's "
                                 f"{self.sample_rate} Hz; give longer audio")
            return y

        def files_only() -> None:
            if sample_rate is not None:   # it would be ignored: a file's own header gives its rate
                raise PannsError(f"sample_rate={sample_rate!r} applies to arrays; files are read at the rate their "
                                 "headers give (and resampled to the model's): drop sample_rate")

        if _is_path_array(audio):   # a column of paths (df["path"].values) is read as the list of them
            audio = audio.tolist()
        if isinstance(audio, (str, os.PathLike)):
            files_only()
            return [audio_io.load_audio(os.fspath(audio), self.sample_rate)], True
        if isinstance(audio, (np.ndarray, torch.Tensor)):
            x, single = validate.batch(audio, "audio", sr)
            return [resampled(w, "audio") for w in x], single
        if isinstance(audio, (bytes, dict)) or not isinstance(audio, Sequence):
            raise PannsError(f"audio must be a path, an array/tensor or a list of them, got {type(audio).__name__}")
        if len(audio) == 0:
            raise PannsError("no audio given (an empty list)")
        if isinstance(audio[0], numbers.Number):   # a plain list of samples is one clip
            x, single = validate.batch(audio, "audio", sr)
            return [resampled(w, "audio") for w in x], single
        if all(isinstance(item, (str, os.PathLike)) for item in audio):
            files_only()
        out = []
        for i, item in enumerate(audio):
            if isinstance(item, (str, os.PathLike)):
                out.append(audio_io.load_audio(os.fspath(item), self.sample_rate))
            else:
                out.append(resampled(validate.clip(item, f"audio[{i}]", sr), f"audio[{i}]"))
        return out, False

    # -- outputs --------------------------------------------------------------------------------
    def predict(self, audio: Audio, sample_rate: Optional[int] = None, segment_seconds: Optional[float] = None,
                hop_seconds: Optional[float] = None, aggregate: Optional[str] = None, batch_size: int = 8,
                framewise: bool = False) -> Union[WindowedPrediction, List[WindowedPrediction]]:
        """Everything the model outputs, per input: ``clipwise`` (classes,), ``embedding`` (D,) or
        None, ``framewise`` (frames, classes) when asked for (SED models), ``windows``, ``samples``.

        Clips are run whole (equal lengths batched together) unless ``segment_seconds`` is given
        or a clip is longer than 600 s; then in sliding windows (see Runtime.predict_windows), their
        outputs combined by ``aggregate`` (max when not given, or mean).
        Options out of range (``batch_size`` < 1, ``segment_seconds`` <= 0 or shorter than the model's
        shortest input, ``aggregate`` other than max/mean, ``hop_seconds`` or ``aggregate`` given without
        ``segment_seconds`` when no input is over 600 s, ...) are a PannsError before any work."""
        validate.options(batch_size=batch_size, segment_seconds=segment_seconds, hop_seconds=hop_seconds,
                         aggregate_=aggregate, framewise=framewise)
        waves, single = self.waveforms(audio, sample_rate)
        rt = self.runtime
        validate.segment_fits(segment_seconds, rt.min_samples, rt.sample_rate, self.model_type, "segment_seconds")
        runtime.check_window_options(segment_seconds, [len(w) / rt.sample_rate for w in waves], hop_seconds, aggregate,
                                     prefix="")
        results: List[Optional[WindowedPrediction]] = [None] * len(waves)
        whole = [i for i, w in enumerate(waves)
                 if runtime.auto_segment(len(w), rt.sample_rate, segment_seconds) is None]
        if whole:
            pred = rt.predict([waves[i] for i in whole], batch_size)
            for k, i in enumerate(whole):
                fw = None
                if framewise and pred.framewise is not None:
                    fw = pred.framewise[k]
                results[i] = WindowedPrediction(pred.clipwise[k], None if pred.embedding is None else pred.embedding[k],
                                                fw, 1, len(waves[i]))
        for i, w in enumerate(waves):
            if results[i] is None:
                seg = runtime.auto_segment(len(w), rt.sample_rate, segment_seconds)
                results[i] = rt.predict_windows(w, seg, hop_seconds, aggregate, batch_size, framewise=framewise)
        return results[0] if single else results

    def tag(self, audio: Audio, sample_rate: Optional[int] = None, top_k: int = 10, *,
            segment_seconds: Optional[float] = None, hop_seconds: Optional[float] = None,
            aggregate: Optional[str] = None, batch_size: int = 8
            ) -> Union[List[Tuple[str, float]], List[List[Tuple[str, float]]]]:
        """Top-k (label, probability) pairs, most probable first (official ranking). The window options are
        :meth:`predict`'s."""
        validate.positive_int(top_k, "top_k")
        preds = self.predict(audio, sample_rate, segment_seconds, hop_seconds, aggregate, batch_size)
        one = lambda p: [(self.labels[i], float(p.clipwise[i])) for i in top_indexes(p.clipwise, top_k)]  # noqa: E731
        return one(preds) if isinstance(preds, WindowedPrediction) else [one(p) for p in preds]

    def clipwise(self, audio: Audio, sample_rate: Optional[int] = None, *,
                 segment_seconds: Optional[float] = None, hop_seconds: Optional[float] = None,
                 aggregate: Optional[str] = None, batch_size: int = 8
                 ) -> np.ndarray:
        """Clip-level probabilities: (classes,) for one input, (N, classes) for several. The window options are
        :meth:`predict`'s."""
        preds = self.predict(audio, sample_rate, segment_seconds, hop_seconds, aggregate, batch_size)
        return preds.clipwise if isinstance(preds, WindowedPrediction) else np.stack([p.clipwise for p in preds])

    def embed(self, audio: Audio, sample_rate: Optional[int] = None, *,
              segment_seconds: Optional[float] = None, hop_seconds: Optional[float] = None,
              aggregate: Optional[str] = None, batch_size: int = 8
              ) -> np.ndarray:
        """Embeddings: (D,) for one input, (N, D) for several (2048 for Cnn14). The window options are
        :meth:`predict`'s."""
        if self.runtime.is_sed:
            raise PannsError(f"{self.model_type} outputs no embedding (decision-level SED models have none); "
                             "load a clip-level model such as Cnn14")
        preds = self.predict(audio, sample_rate, segment_seconds, hop_seconds, aggregate, batch_size)
        if isinstance(preds, WindowedPrediction):
            return preds.embedding
        return np.stack([p.embedding for p in preds])

    def framewise(self, audio: Audio, sample_rate: Optional[int] = None, *,
                  segment_seconds: Optional[float] = None, hop_seconds: Optional[float] = None,
                  aggregate: Optional[str] = None, batch_size: int = 8
                  ) -> Union[np.ndarray, List[np.ndarray]]:
        """Framewise probabilities (frames, classes) per input, ``frames_per_second`` frames a second
        (SED models: Cnn14_DecisionLevelMax/Avg/Att and other decision-level models). The window options are
        :meth:`predict`'s."""
        self._need_sed()
        preds = self.predict(audio, sample_rate, segment_seconds, hop_seconds, aggregate, batch_size, framewise=True)
        return preds.framewise if isinstance(preds, WindowedPrediction) else [p.framewise for p in preds]

    def detect_events(self, audio: Audio, sample_rate: Optional[int] = None, threshold: float = DEFAULT_THRESHOLD,
                      min_duration: float = DEFAULT_MIN_DURATION, *,
                      segment_seconds: Optional[float] = None, hop_seconds: Optional[float] = None,
                      aggregate: Optional[str] = None, batch_size: int = 8
                      ) -> Union[List[dict], List[List[dict]]]:
        """Sound events per input: dicts with onset/offset (seconds), label, class index and score
        (the highest framewise probability inside), for runs of frames at or above ``threshold``. The window
        options are :meth:`predict`'s."""
        self._need_sed()
        validate.options(threshold_=threshold, min_duration=min_duration)
        preds = self.predict(audio, sample_rate, segment_seconds, hop_seconds, aggregate, batch_size, framewise=True)

        def events(p: WindowedPrediction) -> List[dict]:
            tracker = EventTracker(self.labels, self.frames_per_second, threshold, min_duration)
            tracker.update(p.framewise)
            return [e.to_dict() for e in tracker.events(p.samples / self.sample_rate)]

        return events(preds) if isinstance(preds, WindowedPrediction) else [events(p) for p in preds]

    def stream(self, hop_seconds: float = 1.0, window_seconds: float = 10.0, lookahead_seconds: Optional[float] = None,
               top_k: int = 10, threshold: Optional[float] = None,
               min_duration: Optional[float] = None) -> "stream_mod.Stream":
        """Live audio: ``s.push(chunk, sample_rate)`` (any size, rate and channel count) returns the
        tags of each hop's window and, for SED models, each event once when it ends; ``s.close()``
        flushes, ``s.stats()`` gives the real-time factor and latency (see panns/stream.py).
        lookahead_seconds (default 1.0), threshold (0.5) and min_duration (0.0) act on frames and
        events: SED models only, refused with a clip-level model as the ``stream`` command refuses
        them (None: not given)."""
        return stream_mod.Stream(self.runtime, self.labels, hop_seconds, window_seconds, lookahead_seconds, top_k,
                                 threshold, min_duration)

    def _need_sed(self) -> None:
        if not self.runtime.is_sed:
            raise PannsError(f"{self.model_type} is a clip-level model without framewise output; load a "
                             "decision-level model such as Cnn14_DecisionLevelMax")


def _is_path_array(audio) -> bool:
    """A numpy array of paths (str dtype, or object dtype holding only paths), not of samples."""
    if not isinstance(audio, np.ndarray) or audio.dtype.kind not in "UO" or not audio.size:
        return False
    return audio.dtype.kind != "O" or all(isinstance(item, (str, os.PathLike)) for item in audio.flat)


# ----------------------------------------------------------------------------- panns_inference
_LEGACY_DIR = os.path.join(os.path.expanduser("~"), "panns_data")   # where panns_inference keeps its files
# panns_inference saves the SED checkpoint without its published name's mAP
_LEGACY_NAMES = {"Cnn14_DecisionLevelMax": ("Cnn14_DecisionLevelMax.pth",)}


def _instance_frontend(model: torch.nn.Module) -> Optional[dict]:
    """The front end a caller's model instance was built with, read from its mel filterbank (sample rate, fmin
    and fmax are in the filter values) and its hop: panns_inference's way to use the 16 and 8 kHz files is
    ``model=Cnn14(sample_rate=16000, ...)``, which loaded as the 32 kHz registry Cnn14 and was refused. None
    when the filterbank is none of the zoo's (the checkpoint's config or registry front end decides)."""
    from panns import state_dicts   # the zoo's front ends by their filterbanks

    sd = model.state_dict()
    melW = sd.get("logmel_extractor.melW", sd.get("base.logmel_extractor.melW"))
    found = state_dicts.known_frontend(melW) if isinstance(melW, torch.Tensor) else None
    if found is None:
        return None
    frontend = found[0].to_dict()
    hop = getattr(model, "hop_size", None)
    if isinstance(hop, int):
        frontend["hop_size"] = hop
    return frontend


def _compat_runtime(model: Optional[torch.nn.Module], checkpoint_path: Optional[str], device: str,
                    default_type: str) -> Runtime:
    from panns import checkpoint, pretrained  # loading and the catalogue

    # panns.load's check, before any download: 'tpu' ran on the CPU without a word; 'cuda' without a GPU
    # is still the CPU (panns_inference's behaviour, and resolve_device's with its warning)
    dev = runtime.resolve_device("cpu" if device is None else device)   # panns_inference: None is the CPU
    model_type = type(model).__name__ if model is not None else default_type
    if model is None and checkpoint_path:   # an official file keeps its published name: Cnn6_mAP=0.343.pth
        model_type = validate.model_type_for(checkpoint_path, None) or default_type
    if not checkpoint_path:
        names = (pretrained.lookup(default_type).filename,) + _LEGACY_NAMES.get(default_type, ())
        legacy = [p for p in (os.path.join(_LEGACY_DIR, n) for n in names) if os.path.isfile(p)]
        checkpoint_path = legacy[0] if model is None and legacy else None
    if checkpoint_path is None:
        checkpoint_path = pretrained.get_checkpoint(model_type)
    print("Checkpoint path: {}".format(checkpoint_path))
    given_type = model_type if model is not None or _needs_type(checkpoint_path) else None
    built, cfg = checkpoint.load_model(checkpoint_path, model_type=given_type,
                                       frontend=_instance_frontend(model) if model is not None else None)
    if model is not None:   # the caller's own instance gets the weights (strict)
        model.load_state_dict(built.state_dict(), strict=True)
        built = model
    use_cuda = dev.type == "cuda"
    # the GPU asked for: 'cuda:1' ran on GPU 0 (or this rank's GPU), beside the jobs the user meant to avoid
    target = str(device) if use_cuda and isinstance(device, (str, torch.device)) else str(dev)
    rt = Runtime(built, cfg, device=target, checkpoint_path=checkpoint_path)
    if use_cuda:
        print("GPU number: {}".format(torch.cuda.device_count()))
    else:
        print("Using CPU.")
    return rt


def _needs_type(path: str) -> bool:
    """Official files carry no config, so the loader needs the model type."""
    from panns import checkpoint  # loading

    return not isinstance(checkpoint.load_checkpoint(path).get("config"), dict)


class AudioTagging:
    """panns_inference's ``AudioTagging``: ``AudioTagging(checkpoint_path=None, device='cuda')
    .inference(audio)`` -> ``(clipwise_output (B, classes), embedding (B, D))`` for audio
    (B, samples) at the model's rate (32 kHz for Cnn14).

    Differences: runs on the CPU when CUDA is missing (as before) without DataParallel; a device
    name torch does not know ('tpu') is refused as by ``panns.load``, not run on the CPU; nothing
    is downloaded at import; without ``checkpoint_path`` an existing ``~/panns_data`` file is
    used, else the published file is downloaded once into the cache (``$PANNS_CACHE`` or
    ``~/.cache/panns``) and a checkpoint file is never overwritten; any model type's checkpoint
    loads (ours carry their config; official files need ``model``, an instance of their class);
    inputs shorter than the model's minimum are zero-padded instead of failing."""

    default_model_type = "Cnn14"

    def __init__(self, model: Optional[torch.nn.Module] = None, checkpoint_path: Optional[str] = None,
                 device: str = "cuda"):
        self.runtime = _compat_runtime(model, checkpoint_path, device, self.default_model_type)
        self.model = self.runtime.model
        self.device = self.runtime.device.type
        self.labels = _labels_of(self.runtime)
        self.classes_num = len(self.labels)

    def inference(self, audio) -> Tuple[np.ndarray, np.ndarray]:
        out = self.runtime.forward(_compat_batch(audio, self.runtime.sample_rate))
        if "embedding" not in out:
            raise PannsError(f"{self.runtime.config.model_type} has no embedding; use SoundEventDetection")
        return out["clipwise_output"], out["embedding"]


class SoundEventDetection(AudioTagging):
    """panns_inference's ``SoundEventDetection``: ``.inference(audio)`` -> framewise_output
    (B, frames, classes) (default model Cnn14_DecisionLevelMax; differences as AudioTagging).
    ``interpolate_mode``: 'nearest' (frames repeated, what the official models do); panns_inference's 'linear'
    would change the official outputs and is refused."""

    default_model_type = "Cnn14_DecisionLevelMax"

    def __init__(self, model: Optional[torch.nn.Module] = None, checkpoint_path: Optional[str] = None,
                 device: str = "cuda", interpolate_mode: str = "nearest"):
        if interpolate_mode != "nearest":   # before any loading or download
            raise PannsError(f"interpolate_mode={interpolate_mode!r} is not supported: the official models "
                             "upsample their framewise output by repeating frames, interpolate_mode='nearest'")
        super().__init__(model, checkpoint_path, device)
        if self.runtime.spec is not None and not self.runtime.is_sed:   # said now, not at the first inference
            raise PannsError(f"{self.runtime.config.model_type} has no framewise output, so it cannot detect "
                             "sound events; use a decision-level model such as Cnn14_DecisionLevelMax "
                             "(or AudioTagging for this one)")

    def inference(self, audio) -> np.ndarray:
        out = self.runtime.forward(_compat_batch(audio, self.runtime.sample_rate))
        if "framewise_output" not in out:
            raise PannsError(f"{self.runtime.config.model_type} has no framewise output; use a decision-level "
                             "model such as Cnn14_DecisionLevelMax")
        return out["framewise_output"]


def _compat_batch(audio, sample_rate: int) -> np.ndarray:
    """panns_inference's input, (B, samples) float at the model's rate, through ``validate``: a
    (samples, 2) stereo array is one clip averaged to mono, int16/int32/uint8 PCM is scaled like
    soundfile, NaN/inf and empty arrays are refused (they gave silent garbage before)."""
    if isinstance(audio, (str, os.PathLike)) or (isinstance(audio, (list, tuple)) and audio
                                                 and isinstance(audio[0], (str, os.PathLike))):
        # validate would say "dtype <U5"; name what is wrong and the two ways out
        raise PannsError(f"inference() takes audio samples, a (batch, samples) array at {sample_rate} Hz, not "
                         f"file paths; read the file first (librosa.load(path, sr={sample_rate}, mono=True)) or use "
                         "panns.load(...).tag(path)")
    lengths = validate.ragged_lengths(audio)   # numpy's own words were 'an inhomogeneous shape after 1 dimensions'
    if len(lengths) > 1:
        raise PannsError(f"inference() takes one (batch, samples) array, but the clips given have different "
                         f"lengths ({', '.join(map(str, lengths))} samples); pad them to one length, or pass "
                         "the list to panns.load(...).clipwise / .embed / .framewise, which take any lengths")
    return validate.batch(audio, "audio")[0]


def _labels_of(rt: Runtime) -> List[str]:
    if getattr(rt.config, "labels", None):
        return list(rt.config.labels)
    if rt.classes_num == config.AUDIOSET_CLASSES_NUM:
        return list(config.read_class_labels().labels)
    return [f"class_{i}" for i in range(rt.classes_num)]
