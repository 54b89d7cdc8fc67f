"""The HEAR 2021 API (Holistic Evaluation of Audio Representations) for every PANNs model type.

    from panns import hear
    model = hear.load_model("Cnn14_mAP=0.431.pth")        # "" = the published Cnn14 (cached download)
    scene = hear.get_scene_embeddings(audio, model)        # (n_sounds, scene_embedding_size)
    emb, ts = hear.get_timestamp_embeddings(audio, model)  # (n_sounds, n_timestamps, d), (n_sounds, n_timestamps)

``audio`` is a (n_sounds, n_samples) float tensor at ``model.sample_rate``, always: one row out per
row in, however short the sounds (a (16, 8) batch is 16 sounds of 8 samples, not one 8-channel
clip as elsewhere in ``panns``); any other rank is refused. Integer PCM is scaled like soundfile,
NaN/inf is refused (see ``panns.validate``), and sounds shorter than the model's shortest input are
zero-padded. HEAR allows only
16000, 22050, 44100 and 48000 Hz, so models that run at 32 kHz declare **48000 Hz** (nothing
above their 14 kHz mel range is lost) and the 16 kHz and 8 kHz models declare **16000 Hz**; the
audio is resampled to the model's own rate inside (soxr, as for files).

Embeddings. Clip-level models (Cnn14 and the like): the scene embedding is the model's clip
embedding of the whole sound (2048 for Cnn14); a timestamp embedding is the clip embedding of a
``window_seconds`` (1 s) window centred on the timestamp (zero-padded at the ends), timestamps
every ``hop_ms`` = 50 ms from 0. Decision-level SED models (Cnn14_DecisionLevelMax, ...) have no
embedding: their 527 clipwise probabilities are the scene embedding and their framewise
probabilities the timestamp embeddings, one per STFT frame (10 ms apart), each at its frame's
centre. Timestamps are in **milliseconds**.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from panns import audio_io
from panns import validate
from panns.errors import PannsError
from panns.runtime import Runtime, load_model as _load

HEAR_RATES = (16000, 22050, 44100, 48000)


def hear_rate(model_rate: int) -> int:
    """The HEAR rate a model declares: an allowed rate at or above its own (nothing lost), the one
    with the simplest ratio to it (largest common divisor: 32000 -> 48000 is 3:2), then the lowest."""
    above = [r for r in HEAR_RATES if r >= model_rate] or [max(HEAR_RATES)]
    return min(above, key=lambda r: (-math.gcd(r, model_rate), r))


class HearModel(torch.nn.Module):
    """A PANNs model with the attributes HEAR asks for. ``model`` is the torch model (a submodule,
    so ``.to(device)`` moves it); it runs on the device its parameters are on."""

    def __init__(self, model: torch.nn.Module, config, window_seconds: float = 1.0, hop_ms: float = 50.0,
                 batch_size: int = 32):
        super().__init__()
        self.model = model.eval()
        self.config = config
        self.model_sample_rate = int(config.sample_rate)
        self.sample_rate = hear_rate(self.model_sample_rate)
        # refused here, not as a ZeroDivisionError / range() error at the first timestamp call
        self.window_seconds = validate.positive_seconds(window_seconds, "window_seconds")
        self.hop_ms = validate.positive_seconds(hop_ms, "hop_ms")
        self.batch_size = validate.positive_int(batch_size, "batch_size")
        self._runtime: Optional[Runtime] = None
        probe = self.runtime.forward(np.zeros(self.runtime.min_samples or self.model_sample_rate, np.float32))
        self.is_sed = "embedding" not in probe
        self.scene_embedding_size = int(probe["clipwise_output" if self.is_sed else "embedding"].shape[-1])
        self.timestamp_embedding_size = self.scene_embedding_size
        if not self.is_sed:   # a shorter window was silently widened to the model's shortest input (0.05 s ran 0.31 s)
            validate.segment_fits(self.window_seconds, self.runtime.min_samples, self.model_sample_rate,
                                  config.model_type, "window_seconds")

    @property
    def runtime(self) -> Runtime:
        """Always the torch backend (not ``auto``): HEAR hands out this torch module, its harness
        moves and may change it, and an ONNX export of the weights at load time would not follow."""
        param = next(self.model.parameters())
        if param.dtype != torch.float32:   # .half()/.double() failed deep in the first convolution
            raise PannsError(f"the HEAR model's weights are {str(param.dtype).replace('torch.', '')}; it runs float32 "
                             "weights (call model.float(); audio may be any float or integer PCM dtype)")
        device = param.device
        if self._runtime is None or self._runtime.device != device:
            self._runtime = Runtime(self.model, self.config, device=device, backend="torch")
        return self._runtime

    def to_model_rate(self, audio: torch.Tensor) -> np.ndarray:
        """(n_sounds, n_samples) at ``sample_rate`` -> float32 numpy at the model's rate."""
        x, _ = validate.batch(audio, "audio", self.sample_rate, allow_empty_batch=True, sounds_of="HEAR")
        if self.sample_rate == self.model_sample_rate:
            return np.ascontiguousarray(x)
        if not len(x):   # keep the length: (0, n) gives as many timestamps per sound as (k, n)
            n = audio_io.resample(np.zeros(x.shape[1], np.float32), self.sample_rate, self.model_sample_rate).shape[0] \
                if x.ndim == 2 and x.shape[1] else 0
            return np.zeros((0, n), np.float32)
        return np.stack([audio_io.resample(np.ascontiguousarray(s), self.sample_rate, self.model_sample_rate)
                         for s in x])

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Scene embeddings (n_sounds, scene_embedding_size)."""
        return get_scene_embeddings(audio, self)


def load_model(model_file_path: str = "", model_type: Optional[str] = None, **options) -> HearModel:
    """A checkpoint of any PANNs model type (ours carry their type; an official file needs
    ``model_type`` unless it keeps its published name); "" = the published Cnn14 checkpoint."""
    path = model_file_path or None
    if path is None:
        model_type = model_type or "Cnn14"
    else:   # an official file keeps its published name: Cnn14_mAP=0.431.pth
        model_type = validate.model_type_for(path, model_type, "model_type=")
    model, cfg, _ = _load(path, model_type)
    return HearModel(model, cfg, **options)


def _hear_model(model) -> HearModel:
    """A model from ``load_model``; None or a bare torch model failed deep inside with an AttributeError."""
    if not isinstance(model, HearModel):
        raise PannsError(f"model must be a HearModel from panns.hear.load_model(...), got {type(model).__name__}")
    return model


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n_sounds, n_samples) at ``model.sample_rate`` -> (n_sounds, scene_embedding_size) float32."""
    model = _hear_model(model)
    x = model.to_model_rate(audio)
    if len(x) == 0:
        return torch.zeros((0, model.scene_embedding_size), device=_device_of(audio))
    pred = model.runtime.predict(x, batch_size=model.batch_size)
    out = pred.clipwise if model.is_sed else pred.embedding
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(_device_of(audio))


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> Tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) at ``model.sample_rate`` -> (embeddings (n_sounds, n_timestamps,
    timestamp_embedding_size), timestamps (n_sounds, n_timestamps) in milliseconds)."""
    model = _hear_model(model)
    x = model.to_model_rate(audio)
    rt, sr = model.runtime, model.model_sample_rate
    n = x.shape[1] if x.ndim == 2 else 0
    if model.is_sed:
        # batch_size sounds at a time, as the other paths: the whole call in one forward ran out of memory
        fw = np.asarray(rt.predict(x, batch_size=model.batch_size).framewise) if len(x) else \
            np.zeros((0, n // rt.hop_size + 1, model.timestamp_embedding_size), np.float32)
        frames = n // rt.hop_size + 1     # centred STFT frames: frame i is centred at i * hop
        fw = fw[:, :frames]
        ts = np.arange(fw.shape[1]) * rt.hop_size / sr * 1000.0
        emb = fw
    else:
        hop = model.hop_ms / 1000.0 * sr
        ts_samples = np.arange(0, n / hop + 1e-9) * hop if n else np.zeros(0)
        ts_samples = ts_samples[ts_samples <= n]
        win = max(int(round(model.window_seconds * sr)), rt.min_samples)
        half = win // 2
        padded = np.pad(x, ((0, 0), (half, win - half)))
        emb = np.zeros((len(x), len(ts_samples), model.timestamp_embedding_size), np.float32)
        starts = np.round(ts_samples).astype(np.int64)   # window [t - half, t + win - half) in padded coords
        for i in range(len(x)):
            for b in range(0, len(starts), model.batch_size):
                chunk = starts[b:b + model.batch_size]
                windows = np.stack([padded[i, s:s + win] for s in chunk])
                emb[i, b:b + len(chunk)] = rt.forward(windows)["embedding"]
        ts = ts_samples / sr * 1000.0
    timestamps = np.repeat(ts[None].astype(np.float32), len(x), axis=0)
    device = _device_of(audio)
    return (torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)).to(device),
            torch.from_numpy(np.ascontiguousarray(timestamps)).to(device))


def _device_of(audio) -> torch.device:
    """Where the results go: the input tensor's device; the CPU for arrays and lists (validate takes them)."""
    return audio.device if isinstance(audio, torch.Tensor) else torch.device("cpu")
