"""PANNs model zoo: the 30 official classes, rebuilt from shared parts, plus a registry.

Every class keeps the official name, constructor ``(sample_rate, window_size, hop_size, mel_bins,
fmin, fmax, classes_num)``, ``state_dict`` keys (names, order, shapes), ``forward(input,
mixup_lambda=None)`` and output dict, so official checkpoints load strictly and give the same
numbers in fp32. Instead of 23 copies of the front end and head, the parts are written once:

* ``_Model._setup_frontend`` / ``_logmel``: STFT -> log-mel -> bn0 -> SpecAugment (always true fp32);
* ``ConvBlock`` & co.: one conv+BN+ReLU stack class (``_ConvStack``) in 1-D and 2-D;
* ``_Model._head``: the tagging head, or the decision-level (SED) head when ``sed_pooling`` is set;
* minimum input lengths as class attributes (``min_frames``, ``min_wave_samples``);
* families (``_Cnn``, ``_ResNetModel``, ``MobileNetV1/2``, ``_WaveModel``) whose variants only
  pass other numbers.

Extensions (not official, no official checkpoint): ``MobileNetV1_DecisionLevelMax`` and
``Cnn6_DecisionLevelMax/Avg``, SED heads on the small bodies; the CPU demo trains
``Cnn6_DecisionLevelAvg``. ``Transfer_<Base>.load_from_pretrain`` (official method) uses
``state_dicts.py``, the checkpoint reading below the zoo (``checkpoint.py``, which rebuilds models
from this registry, sits above).

Mixed precision: under ``torch.autocast`` the front end and the final sigmoid / softmax run in
float32; only the CNN body runs in bf16/fp16. The front end also runs with TF32 off (``amp.ieee_fp32``), so
GPU log-mels match the CPU's. SpecAugment is ``spec_augment.SpecAugmentation``: torchlibrosa's draws, one mask.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from panns import state_dicts
from panns.amp import ieee_fp32
from panns.errors import PannsError
from panns.frontend import FRONT_END_8K, FRONT_END_16K, FRONT_END_32K, FrontEnd
from panns.frontend import KNOWN as KNOWN_FRONT_ENDS
from panns.frontend_modules import LogmelFilterBank, Spectrogram
from panns.spec_augment import SpecAugmentation


def do_mixup(x: torch.Tensor, mixup_lambda) -> torch.Tensor:
    """Mix neighbouring items: out[i] = x[2i] * lam[2i] + x[2i+1] * lam[2i+1].

    x: (2B, ...) any rank; mixup_lambda: (2B,) tensor (or array) -> (B, ...)."""
    lam = torch.as_tensor(mixup_lambda, device=x.device)
    lam = lam.to(x.dtype if x.is_floating_point() else torch.float32)
    out = x[0::2].transpose(0, -1) * lam[0::2] + x[1::2].transpose(0, -1) * lam[1::2]
    return out.transpose(0, -1)


def interpolate(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """Repeat every time step ``ratio`` times: (B, T, C) -> (B, T * ratio, C)."""
    b, t, c = x.shape
    return x[:, :, None, :].repeat(1, 1, ratio, 1).reshape(b, t * ratio, c)


def pad_framewise_output(framewise_output: torch.Tensor, frames_num: int) -> torch.Tensor:
    """Append copies of the last frame up to ``frames_num``: (B, T, C) -> (B, frames_num, C)."""
    missing = frames_num - framewise_output.shape[1]
    if missing <= 0:
        return framewise_output
    pad = framewise_output[:, -1:, :].repeat(1, missing, 1)
    return torch.cat((framewise_output, pad), dim=1)


def init_layer(layer: nn.Module) -> None:
    """Xavier-uniform weight, zero bias (official init)."""
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        layer.bias.data.fill_(0.0)


def init_bn(bn: nn.Module) -> None:
    bn.bias.data.fill_(0.0)
    bn.weight.data.fill_(1.0)


@contextlib.contextmanager
def skip_init():
    """Build models without random initialisation (several seconds of single-threaded RNG for
    Cnn14) when every tensor is loaded from a checkpoint right after; weights are garbage until
    then. Not thread-safe (it swaps torch.nn.init functions for the duration)."""
    names = ("xavier_uniform_", "kaiming_uniform_", "uniform_", "normal_")
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda t, *a, **k: t)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def _fp32_region(x: torch.Tensor):
    """Context that switches autocast off for x's device (the front end and output activations
    must stay float32 for accuracy); a no-op when autocast is not active."""
    dev = x.device.type
    try:
        active = torch.is_autocast_enabled(dev)
    except (TypeError, RuntimeError):  # device types without autocast support
        active = False
    return torch.autocast(dev, enabled=False) if active else contextlib.nullcontext()


def _spectrogram(extractor: Spectrogram, waveform: torch.Tensor, fft: bool) -> torch.Tensor:
    """(B, samples) float32 -> power spectrogram (B, 1, frames, n_fft // 2 + 1), torchlibrosa's ``Spectrogram``.

    With ``fft`` (training, and the evaluations of a CUDA training run: see :func:`fft_in_evaluation`) on CUDA
    it goes through cuFFT (``torch.stft``): the same windowed DFT the module's frozen conv weights hold (the
    window is their zero-frequency row), centred with reflect padding, power 2. The direct DFT as an IEEE fp32
    convolution took ~12 ms of a 10-s x 64-clip training step on an H200; with cuFFT the default training path
    went from 1,496 to 2,099 examples/s. The FFT's exact twiddles differ from the conv's fp32-rounded weights in
    the quietest bins (log-mel up to 0.07 dB, model outputs ~3e-6 relative on an H200): nothing for training,
    which perturbs far more (SpecAugment, mixup), but not the official numbers - so inference, CPUs, and
    weights that are not the windowed DFT (checked once per weight version) use the module itself."""
    if not fft or waveform.device.type not in _FFT_DEVICES or not _fft_usable(extractor):
        return extractor(waveform)
    return _fft_spectrogram(extractor, waveform)


_FFT_DEVICES = ("cuda",)   # where the FFT path runs (a test adds the CPU to check its compiled graph)


def _fft_usable(extractor: Spectrogram) -> bool:
    """Whether ``extractor``'s weights are the windowed DFT. Eagerly: :func:`_fft_matches` (checked once per weight
    version). In a graph being compiled: the answer an eager check gave before (:func:`prepare_fft`), read as a
    plain attribute - the check itself (tensor versions, data pointers, ``allclose``) would break the graph;
    never checked: the module's conv."""
    if torch.compiler.is_compiling():
        return bool(getattr(extractor, "_fft_ok", False))
    return _fft_matches(extractor)


def prepare_fft(model: nn.Module) -> int:
    """Check, eagerly, which front ends in ``model`` hold the windowed DFT, so that a compiled forward (the CUDA
    training step, its evaluations) takes the cuFFT path without a graph break; returns how many do. Call it after
    the weights are final (after a resume): the STFT's weights are frozen, so training does not change them.
    Front ends on devices without the FFT path are not checked (nothing to decide there)."""
    found = 0
    for m in model.modules():
        extractor = getattr(m, "spectrogram_extractor", None)
        if (isinstance(m, _Model) and isinstance(extractor, Spectrogram)
                and extractor.stft.conv_real.weight.device.type in _FFT_DEVICES):
            found += _fft_matches(extractor)
    return found


def fft_in_evaluation(model: nn.Module, on: bool = True) -> int:
    """Let the models in ``model`` compute their spectrogram with cuFFT in eval mode too (the evaluations of a
    CUDA training run, which then see the front end the weights are trained with); returns how many it set.

    Why it is allowed there: those evaluations only follow training (the official code runs the same STFT conv
    in TF32 on Ampere and newer GPUs, PyTorch's default for cuDNN, which is far coarser than cuFFT's 0.07 dB),
    and the conv in IEEE fp32 was the largest single cost of an evaluation round (~0.19 ms a clip on an H200,
    ~7 s of ~39k AudioSet clips). Inference (``runtime``, the CLIs, the APIs) never sets it: official numbers."""
    found = 0
    for m in model.modules():
        if isinstance(m, _Model):
            m.fft_in_eval = on
            found += 1
    return found


def _fft_spectrogram(extractor: Spectrogram, waveform: torch.Tensor) -> torch.Tensor:
    """``extractor(waveform)`` computed with ``torch.stft`` (see :func:`_spectrogram`)."""
    stft = extractor.stft
    weight = stft.conv_real.weight            # (n_fft // 2 + 1, 1, n_fft): window x cos(2 pi k n / n_fft)
    spec = torch.stft(waveform, n_fft=stft.n_fft, hop_length=stft.hop_length, window=weight[0, 0].detach(),
                      center=stft.center, pad_mode=stft.pad_mode, return_complex=True)   # (B, F, frames)
    power = torch.view_as_real(spec).square().sum(-1)
    return power.transpose(1, 2)[:, None]


def _fft_matches(extractor: Spectrogram) -> bool:
    """The conv weights of ``extractor`` are the windowed DFT (window = their row 0), so cuFFT computes the same
    spectrogram; a spectrogram with power other than 2 is left to the module."""
    stft = extractor.stft
    real, imag = stft.conv_real.weight, stft.conv_imag.weight
    key = (real._version, imag._version, real.data_ptr(), imag.data_ptr())
    if getattr(extractor, "_fft_checked", None) == key:
        return extractor._fft_ok
    ok = getattr(extractor, "power", 2.0) == 2.0 and real.shape[0] == stft.n_fft // 2 + 1
    if ok:
        with torch.no_grad():
            n, k = torch.arange(stft.n_fft, dtype=torch.float64), torch.arange(real.shape[0], dtype=torch.float64)
            angle = 2 * torch.pi * torch.outer(k, n) / stft.n_fft
            window = real[0, 0].detach().double().cpu()
            ok = bool(torch.allclose(real[:, 0].detach().double().cpu(), window * torch.cos(angle), atol=1e-6)
                      and torch.allclose(imag[:, 0].detach().double().cpu(), -window * torch.sin(angle), atol=1e-6))
    extractor._fft_checked, extractor._fft_ok = key, ok
    return ok


def _pool2d(x: torch.Tensor, pool_size, pool_type: str) -> torch.Tensor:
    if pool_type == "max":
        return F.max_pool2d(x, kernel_size=pool_size)
    if pool_type == "avg":
        return F.avg_pool2d(x, kernel_size=pool_size)
    if pool_type == "avg+max":
        return F.avg_pool2d(x, kernel_size=pool_size) + F.max_pool2d(x, kernel_size=pool_size)
    raise ValueError(f"pool_type must be 'avg', 'max' or 'avg+max', got {pool_type!r}")


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(x, p=p, training=training) if p > 0 else x


# ---- Building blocks (official names kept; all conv+BN+ReLU stacks share one implementation) -----
class _ConvStack(nn.Module):
    """``n`` convolutions, each followed by BN and ReLU. Convs are registered before BNs
    (conv1, conv2, bn1, bn2), which is the official state_dict order. The first conv carries the
    stride; ``dilations`` gives each conv's dilation (padding keeps the length)."""

    def __init__(self, nd: int, cin: int, cout: int, kernel: int, n: int, stride: int = 1,
                 dilations=(1, 1)):
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if nd == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.n = n
        for i in range(n):
            d = dilations[i]
            setattr(self, f"conv{i + 1}", conv(cin if i == 0 else cout, cout, kernel,
                                               stride=stride if i == 0 else 1,
                                               padding=d * (kernel // 2), dilation=d, bias=False))
        for i in range(n):
            setattr(self, f"bn{i + 1}", bn(cout))
        for i in range(n):
            init_layer(getattr(self, f"conv{i + 1}"))
        for i in range(n):
            init_bn(getattr(self, f"bn{i + 1}"))

    def _convs(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n + 1):
            x = F.relu_(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return x


class ConvBlock(_ConvStack):
    """Two 3x3 conv-BN-ReLU then 2-D pooling (CNN10/14, ResNets, Wavegram)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(2, in_channels, out_channels, 3, 2)

    def forward(self, input, pool_size=(2, 2), pool_type="avg"):
        return _pool2d(self._convs(input), pool_size, pool_type)


class ConvBlock5x5(_ConvStack):
    """One 5x5 conv-BN-ReLU then 2-D pooling (CNN6)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(2, in_channels, out_channels, 5, 1)

    def forward(self, input, pool_size=(2, 2), pool_type="avg"):
        return _pool2d(self._convs(input), pool_size, pool_type)


class LeeNetConvBlock(_ConvStack):
    """1-D conv (stride on the conv) then optional padded max-pool (LeeNet11)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, n_convs: int = 1):
        super().__init__(1, in_channels, out_channels, kernel_size, n_convs, stride)

    def forward(self, x, pool_size=1):
        x = self._convs(x)
        if pool_size != 1:
            x = F.max_pool1d(x, kernel_size=pool_size, padding=pool_size // 2)
        return x


class LeeNetConvBlock2(LeeNetConvBlock):
    """Two 1-D convs per block (LeeNet24)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__(in_channels, out_channels, kernel_size, stride, n_convs=2)


class ConvPreWavBlock(_ConvStack):
    """Wavegram block: conv k3, conv k3 dilation 2, each BN+ReLU, then max-pool."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(1, in_channels, out_channels, 3, 2, dilations=(1, 2))

    def forward(self, input, pool_size):
        return F.max_pool1d(self._convs(input), kernel_size=pool_size)


class DaiNetResBlock(nn.Module):
    """Four 1-D convs with a residual connection; the 1x1 ``downsample`` always exists but is used
    only when the channel count changes (official quirk, kept for the state_dict)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        for i in range(1, 5):
            setattr(self, f"conv{i}", nn.Conv1d(in_channels if i == 1 else out_channels, out_channels,
                                                kernel_size, padding=kernel_size // 2, bias=False))
        self.downsample = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        for i in range(1, 5):
            setattr(self, f"bn{i}", nn.BatchNorm1d(out_channels))
        self.bn_downsample = nn.BatchNorm1d(out_channels)
        for i in range(1, 5):
            init_layer(getattr(self, f"conv{i}"))
        init_layer(self.downsample)
        for i in range(1, 5):
            init_bn(getattr(self, f"bn{i}"))
        nn.init.constant_(self.bn4.weight, 0)
        init_bn(self.bn_downsample)

    def forward(self, input, pool_size=1):
        x = input
        for i in range(1, 4):
            x = F.relu_(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        x = self.bn4(self.conv4(x))
        if input.shape == x.shape:
            x = F.relu_(x + input)
        else:
            x = F.relu(x + self.bn_downsample(self.downsample(input)))
        if pool_size != 1:
            x = F.max_pool1d(x, kernel_size=pool_size, padding=pool_size // 2)
        return x


class AttBlock(nn.Module):
    """Attention pooling over time: clipwise = sum_t softmax(att) * act(cla).
    ``bn_att`` and ``temperature`` are unused (kept for the state_dict)."""

    def __init__(self, n_in: int, n_out: int, activation: str = "linear", temperature: float = 1.0):
        super().__init__()
        self.activation = activation
        self.temperature = temperature
        self.att = nn.Conv1d(n_in, n_out, kernel_size=1, bias=True)
        self.cla = nn.Conv1d(n_in, n_out, kernel_size=1, bias=True)
        self.bn_att = nn.BatchNorm1d(n_out)
        init_layer(self.att)
        init_layer(self.cla)
        init_bn(self.bn_att)

    def forward(self, x):
        """x: (B, n_in, T) -> (clipwise (B, n_out), norm_att (B, n_out, T), cla (B, n_out, T)),
        computed in float32 from the (possibly bf16) 1x1 conv outputs."""
        att, cla = self.att(x), self.cla(x)
        with _fp32_region(x):
            norm_att = torch.softmax(torch.clamp(att.float(), -10, 10), dim=-1)
            cla = self.nonlinear_transform(cla.float())
            return torch.sum(norm_att * cla, dim=2), norm_att, cla

    def nonlinear_transform(self, x):
        return torch.sigmoid(x) if self.activation == "sigmoid" else x


# Residual blocks (2-D for ResNet22/38/54, 1-D for Res1dNet31/51) -----------------------------------
# The official conv helpers, by their official names (code built on the official models.py imports them).
def _resnet_conv3x3(in_planes: int, out_planes: int) -> nn.Conv2d:
    """3x3 conv, stride 1, padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, groups=1, bias=False, dilation=1)


def _resnet_conv1x1(in_planes: int, out_planes: int) -> nn.Conv2d:
    """1x1 conv, stride 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, bias=False)


def _resnet_conv3x1_wav1d(in_planes: int, out_planes: int, dilation: int) -> nn.Conv1d:
    """1-D conv of width 3, stride 1, padded by ``dilation`` (length kept), no bias."""
    return nn.Conv1d(in_planes, out_planes, kernel_size=3, stride=1, padding=dilation, groups=1, bias=False,
                     dilation=dilation)


def _resnet_conv1x1_wav1d(in_planes: int, out_planes: int) -> nn.Conv1d:
    """1-D conv of width 1, stride 1, no bias."""
    return nn.Conv1d(in_planes, out_planes, kernel_size=1, stride=1, bias=False)


class _ResnetBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-dropout(0.1)-conv3x3-BN (+ identity) -ReLU. Downsampling pools the input
    of the main path first (avg 2x2 in 2-D; max in 1-D, whose 2nd conv is dilated by 2)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, nd: int = 2):
        super().__init__()
        bn = nn.BatchNorm1d if nd == 1 else nn.BatchNorm2d
        self.nd, self.stride = nd, stride
        self.conv1 = _resnet_conv3x1_wav1d(inplanes, planes, 1) if nd == 1 else _resnet_conv3x3(inplanes, planes)
        self.bn1 = bn(planes)
        self.relu = nn.ReLU(inplace=True)   # a module (not F.relu) so count_flops sees it
        self.conv2 = _resnet_conv3x1_wav1d(planes, planes, 2) if nd == 1 else _resnet_conv3x3(planes, planes)
        self.bn2 = bn(planes)
        self.downsample = downsample
        init_layer(self.conv1)
        init_bn(self.bn1)
        init_layer(self.conv2)
        init_bn(self.bn2)
        nn.init.constant_(self.bn2.weight, 0)  # zero-gamma residual init (unconditional, as official)

    def _pool(self, x):
        if self.nd == 1:
            return F.max_pool1d(x, kernel_size=self.stride) if self.stride != 1 else x
        return F.avg_pool2d(x, kernel_size=(2, 2)) if self.stride == 2 else x

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(self._pool(x))))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class _ResnetBottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) bottleneck, avg-pool 2x2 first when stride is 2."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, nd: int = 2):
        super().__init__()
        self.stride = stride
        self.conv1 = _resnet_conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _resnet_conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _resnet_conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            init_layer(conv)
            init_bn(bn)
        nn.init.constant_(self.bn3.weight, 0)

    def forward(self, x):
        identity = x
        if self.stride == 2:
            x = F.avg_pool2d(x, kernel_size=(2, 2))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(identity)
        return self.relu(out + identity)


class _ResNet(nn.Module):
    """``layer1..layerN`` of residual blocks; the input already has 64 channels (no stem).
    2-D: planes 64..512, strides 1,2,2,2. 1-D: planes 64..2048, strides 1,4,...,4."""

    def __init__(self, block, layers, planes=(64, 128, 256, 512), strides=(1, 2, 2, 2), nd: int = 2):
        super().__init__()
        conv, bn, pool = ((_resnet_conv1x1_wav1d, nn.BatchNorm1d, nn.AvgPool1d) if nd == 1
                          else (_resnet_conv1x1, nn.BatchNorm2d, nn.AvgPool2d))
        self.n_layers = len(layers)
        inplanes = 64
        for li, (n, p, s) in enumerate(zip(layers, planes, strides), 1):
            out = p * block.expansion
            downsample = None
            if s != 1 or inplanes != out:
                mods = ([pool(s)] if s != 1 else []) + [conv(inplanes, out), bn(out)]
                downsample = nn.Sequential(*mods)
                init_layer(downsample[-2])
                init_bn(downsample[-1])
            blocks = [block(inplanes, p, s, downsample, nd=nd)]
            inplanes = out
            blocks += [block(inplanes, p, nd=nd) for _ in range(1, n)]
            setattr(self, f"layer{li}", nn.Sequential(*blocks))

    def forward(self, x):
        for li in range(1, self.n_layers + 1):
            x = getattr(self, f"layer{li}")(x)
        return x


class _ResNetWav1d(_ResNet):
    def __init__(self, block, layers):
        super().__init__(block, layers, planes=(64, 128, 256, 512, 1024, 1024, 2048),
                         strides=(1, 4, 4, 4, 4, 4, 4), nd=1)


class _ResnetBasicBlockWav1d(_ResnetBasicBlock):
    def __init__(self, inplanes, planes, stride=1, downsample=None, nd: int = 1):
        super().__init__(inplanes, planes, stride, downsample, nd=1)


# MobileNet pieces ----------------------------------------------------------------------------------
def _conv_pool_bn(inp, oup, stride, groups=1, act=nn.ReLU, kernel=3):
    """[conv, AvgPool2d(stride), BN, act]: MobileNets downsample by average pooling after the conv."""
    layers = [nn.Conv2d(inp, oup, kernel, 1, kernel // 2, groups=groups, bias=False),
              nn.AvgPool2d(stride), nn.BatchNorm2d(oup), act(inplace=True)]
    init_layer(layers[0])
    init_bn(layers[2])
    return layers


def _pw_bn(inp, oup, act=None):
    """[1x1 conv, BN(, act)]."""
    layers = [nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
    init_layer(layers[0])
    init_bn(layers[1])
    return layers + ([act(inplace=True)] if act else [])


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        expand = [] if expand_ratio == 1 else _pw_bn(inp, hidden, nn.ReLU6)
        self.conv = nn.Sequential(*expand, *_conv_pool_bn(hidden, hidden, stride, hidden, nn.ReLU6),
                                  *_pw_bn(hidden, oup))

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# ---- Shared model machinery ----------------------------------------------------------------------
_A32 = FRONT_END_32K.to_dict()


class _Model(nn.Module):
    """Shared parts of every PANNs model: log-mel front end, clip head, SED head."""

    is_sed = False
    sed_pooling: Optional[str] = None  # decision-level (SED) models: 'max' | 'avg' | 'att'
    interpolate_ratio = 32             # time reduction of the body (SED framewise upsampling)
    bn_bins: Optional[int] = 64        # bn0 width hard-coded per official class (None: waveform model)
    # Shortest input: log-mel models need 2**(number of 2x time pools) frames (official Cnn14
    # crashes below 32 frames); waveform models and the Wavegram branch a number of samples,
    # measured at 32 kHz. The models are kept as they are and callers pad to ``min_samples``.
    min_frames = 32
    min_wave_samples = 0
    freq_drop_width = 8                # SpecAugment frequency stripe width
    fft_in_eval = False                # cuFFT spectrogram in eval mode on CUDA too (see fft_in_evaluation)
    spec_augment = True
    required_frontend: Optional[dict] = None   # official asserts (Cnn14_16k, Cnn14_8k)

    def _check_frontend(self, **fe) -> None:
        name = type(self).__name__
        req = self.required_frontend
        if req and any(fe[k] != v for k, v in req.items()):
            want = ", ".join(f"{k}={v}" for k, v in req.items())
            got = ", ".join(f"{k}={fe[k]}" for k in req)
            raise PannsError(f"{name} only works with {want}; got {got}")
        if self.bn_bins is not None and fe["mel_bins"] != self.bn_bins:
            raise PannsError(f"{name} needs mel_bins={self.bn_bins} (its bn0 has {self.bn_bins} "
                             f"channels), got mel_bins={fe['mel_bins']}")

    def _setup_frontend(self, sample_rate, window_size, hop_size, mel_bins, fmin, fmax, stft=True) -> None:
        """Check the front-end arguments against this class, then register the front end."""
        fe = dict(sample_rate=sample_rate, window_size=window_size, hop_size=hop_size,
                  mel_bins=mel_bins, fmin=fmin, fmax=fmax)
        self._check_frontend(**fe)
        self._add_frontend(**fe, stft=stft)

    def _add_frontend(self, sample_rate, window_size, hop_size, mel_bins, fmin, fmax, stft=True):
        """Register spectrogram_extractor, logmel_extractor, spec_augmenter and bn0 (this order
        gives the official state_dict order). STFT kernels and mel matrix are frozen buffers-as-
        parameters, as in torchlibrosa."""
        self.sample_rate, self.window_size, self.hop_size = sample_rate, window_size, hop_size
        if stft:
            self.spectrogram_extractor = Spectrogram(
                n_fft=window_size, hop_length=hop_size, win_length=window_size, window="hann",
                center=True, pad_mode="reflect", freeze_parameters=True)
            self.logmel_extractor = LogmelFilterBank(
                sr=sample_rate, n_fft=window_size, n_mels=mel_bins, fmin=fmin, fmax=fmax, ref=1.0,
                amin=1e-10, top_db=None, freeze_parameters=True)
        if self.spec_augment:
            self.spec_augmenter = SpecAugmentation(time_drop_width=64, time_stripes_num=2,
                                                   freq_drop_width=self.freq_drop_width,
                                                   freq_stripes_num=2)
        self.bn0 = nn.BatchNorm2d(self.bn_bins)

    def stage_spec_augment(self, batch: int, samples: int, mixup: bool) -> bool:
        """Draw and hand over SpecAugment's stripes for the next training forward of a (batch, samples) input
        (``mixup``: with a mixup_lambda), when SpecAugment takes external draws (compiled training; see
        ``spec_augment``). Returns whether it did. frames = samples // hop + 1 (centred STFT)."""
        aug = getattr(self, "spec_augmenter", None)
        if not (self.training and self.spec_augment and aug is not None and aug.external):
            return False
        rows = batch // 2 if mixup and getattr(self, "time_mixup", False) else batch   # time-domain mixup halves the batch first
        aug.stage(aug.draw(rows, samples // self.hop_size + 1, self.bn_bins))
        return True

    def _logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> normalised (and, in training, SpecAugmented) log-mel (B, 1, T, mel),
        always computed in float32, with TF32 off (``amp.ieee_fp32``)."""
        with _fp32_region(waveform), ieee_fp32():
            x = _spectrogram(self.spectrogram_extractor, waveform.float(), self.training or self.fft_in_eval)
            x = self.logmel_extractor(x)
            x = self.bn0(x.transpose(1, 3)).transpose(1, 3)   # BN per mel bin
            if self.training and self.spec_augment:
                x = self.spec_augmenter(x)
        return x

    def _clip_head(self, x: torch.Tensor, pre_dropout: bool = True) -> Dict[str, torch.Tensor]:
        """(B, C, T) -> {'clipwise_output', 'embedding'}. Official quirk kept: the classifier reads
        the fc1 activation *before* the embedding dropout."""
        x = torch.max(x, dim=2)[0] + torch.mean(x, dim=2)
        if pre_dropout:
            x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu_(self.fc1(x))
        embedding = F.dropout(x, p=0.5, training=self.training)
        logits = self.fc_audioset(x)
        with _fp32_region(logits):
            clipwise = torch.sigmoid(logits.float())
        return {"clipwise_output": clipwise, "embedding": embedding.float()}

    def _sed_head(self, x: torch.Tensor, frames_num: int, pooling: str) -> Dict[str, torch.Tensor]:
        """(B, C, T') -> {'framewise_output' (B, frames_num, K), 'clipwise_output' (B, K)}.
        Official quirk kept: avg_pool1d counts the zero padding at the edges."""
        x = F.max_pool1d(x, kernel_size=3, stride=1, padding=1) + \
            F.avg_pool1d(x, kernel_size=3, stride=1, padding=1)
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu_(self.fc1(x.transpose(1, 2)))
        if pooling == "att":
            x = F.dropout(x.transpose(1, 2), p=0.5, training=self.training)
            clipwise, _, segmentwise = self.att_block(x)
            segmentwise = segmentwise.transpose(1, 2)
        else:
            x = F.dropout(x, p=0.5, training=self.training)
            logits = self.fc_audioset(x)
            with _fp32_region(logits):
                segmentwise = torch.sigmoid(logits.float())
            clipwise = segmentwise.max(dim=1)[0] if pooling == "max" else segmentwise.mean(dim=1)
        framewise = pad_framewise_output(interpolate(segmentwise, self.interpolate_ratio), frames_num)
        return {"framewise_output": framewise, "clipwise_output": clipwise}

    def _head(self, x: torch.Tensor, frames_num: Optional[int], pre_dropout: bool = True) -> Dict[str, torch.Tensor]:
        """(B, C, T') body output -> the SED head for decision-level models, else the clip head."""
        if self.sed_pooling:
            return self._sed_head(x, frames_num, self.sed_pooling)
        return self._clip_head(x, pre_dropout=pre_dropout)

    def _add_head(self, in_features: int, embedding_dim: int, classes_num: int) -> None:
        self.fc1 = nn.Linear(in_features, embedding_dim, bias=True)
        if getattr(self, "sed_pooling", None) == "att":
            self.att_block = AttBlock(embedding_dim, classes_num, activation="sigmoid")
        else:
            self.fc_audioset = nn.Linear(embedding_dim, classes_num, bias=True)

    def _init_head(self) -> None:
        """Official init order after the body: bn0, fc1, fc_audioset (att_block inits itself)."""
        if hasattr(self, "bn0"):
            init_bn(self.bn0)
        init_layer(self.fc1)
        if hasattr(self, "fc_audioset"):
            init_layer(self.fc_audioset)

    @property
    def min_samples(self) -> int:
        """Smallest input length (samples) this instance runs on in eval mode; pad shorter clips."""
        return type(self).min_input_samples(getattr(self, "hop_size", 320), getattr(self, "window_size", 1024))

    @classmethod
    def min_input_samples(cls, hop_size: int, window_size: int) -> int:
        """Smallest input length (samples) for this class at the given STFT hop and window."""
        if cls.bn_bins is None:   # waveform model: no STFT
            return cls.min_wave_samples
        # frames = L // hop + 1, and the reflect padding of the STFT needs L > window_size // 2
        return max((cls.min_frames - 1) * hop_size, window_size // 2 + 1, cls.min_wave_samples)


# ---- CNN family: Cnn6, Cnn10, Cnn14 and its variants, decision-level models, Wavegram models -----
class _Cnn(_Model):
    """Log-mel -> ConvBlocks (2x2 avg pools, last Cnn14 block (1,1)) with dropout 0.2 -> head."""

    channels = (64, 128, 256, 512, 1024, 2048)
    block = ConvBlock
    embedding_dim = 2048
    block_dropout = 0.2
    time_mixup = False           # Cnn14_mixup_time_domain mixes waveforms instead of log-mels
    wavegram: Optional[str] = None   # None | 'only' (Wavegram_Cnn14) | 'logmel' (Wavegram_Logmel_Cnn14)
    wavegram_channels = 128      # pre_block3 width (256 for Wavegram_Logmel128_Cnn14)

    def __init__(self, sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num):
        super().__init__()
        if self.wavegram:   # registered first: the official state_dict order
            self._add_wavegram()
        self._setup_frontend(sample_rate, window_size, hop_size, mel_bins, fmin, fmax,
                             stft=self.wavegram != "only")
        cin = 1
        for i, c in enumerate(self.channels, 1):
            extra = 64 if (i == 2 and self.wavegram == "logmel") else 0   # log-mel + wavegram concat
            setattr(self, f"conv_block{i}", self.block(cin + extra, c))
            cin = c
        self._add_head(cin, self.embedding_dim, classes_num)
        if self.wavegram:
            init_layer(self.pre_conv0)
            init_bn(self.pre_bn0)
        self._init_head()

    def _add_wavegram(self) -> None:
        self.pre_conv0 = nn.Conv1d(1, 64, kernel_size=11, stride=5, padding=5, bias=False)
        self.pre_bn0 = nn.BatchNorm1d(64)
        self.pre_block1 = ConvPreWavBlock(64, 64)
        self.pre_block2 = ConvPreWavBlock(64, 128)
        self.pre_block3 = ConvPreWavBlock(128, self.wavegram_channels)
        self.pre_block4 = ConvBlock(in_channels=4, out_channels=64)

    def _wavegram_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) -> Wavegram (B, 64, ~L/640, wavegram_channels/4): learnt 1-D front end whose
        channel groups become a pseudo-frequency axis."""
        a = F.relu_(self.pre_bn0(self.pre_conv0(waveform[:, None, :])))
        for blk in (self.pre_block1, self.pre_block2, self.pre_block3):
            a = blk(a, pool_size=4)
        a = a.reshape((a.shape[0], -1, self.wavegram_channels // 4, a.shape[-1])).transpose(2, 3)
        return self.pre_block4(a, pool_size=(2, 1))

    def forward(self, input, mixup_lambda=None):
        """input: (B, samples) float waveform. Returns the official output dict."""
        mix = self.training and mixup_lambda is not None
        if mix and self.time_mixup:
            input = do_mixup(input, mixup_lambda)
        if self.wavegram:
            a1 = self._wavegram_features(input)
        frames_num = None
        if self.wavegram != "only":
            x = self._logmel(input)
            frames_num = x.shape[2]
            if mix and not self.time_mixup:
                x = do_mixup(x, mixup_lambda)
        if self.wavegram and mix:
            a1 = do_mixup(a1, mixup_lambda)

        if self.wavegram == "only":
            x = a1
        else:
            x = self.conv_block1(x, pool_size=(2, 2), pool_type="avg")
            if self.wavegram:
                # Fix (an official crash): the two branches can differ by one frame for some
                # lengths; crop both to the shorter one (no change where the official code runs).
                t = min(x.shape[2], a1.shape[2])
                x = torch.cat((x[:, :, :t], a1[:, :, :t]), dim=1)
        x = _dropout(x, self.block_dropout, self.training)
        for i in range(2, len(self.channels) + 1):
            pool = (1, 1) if i == 6 else (2, 2)
            x = getattr(self, f"conv_block{i}")(x, pool_size=pool, pool_type="avg")
            x = _dropout(x, self.block_dropout, self.training)
        return self._head(torch.mean(x, dim=3), frames_num)


class Cnn14(_Cnn):
    pass


class Cnn14_no_specaug(_Cnn):
    spec_augment = False


class Cnn14_no_dropout(_Cnn):
    block_dropout = 0.0


class Cnn14_emb512(_Cnn):
    embedding_dim = 512


class Cnn14_emb128(_Cnn):
    embedding_dim = 128


class Cnn14_emb32(_Cnn):
    embedding_dim = 32


class Cnn14_16k(_Cnn):
    required_frontend = FRONT_END_16K.to_dict()


class Cnn14_8k(_Cnn):
    required_frontend = FRONT_END_8K.to_dict()


class Cnn14_mel32(_Cnn):
    bn_bins, freq_drop_width = 32, 4


class Cnn14_mel128(_Cnn):
    bn_bins, freq_drop_width = 128, 16


class Cnn14_mixup_time_domain(_Cnn):
    time_mixup = True


class Cnn6(_Cnn):
    channels, block, embedding_dim = (64, 128, 256, 512), ConvBlock5x5, 512
    min_frames, interpolate_ratio = 16, 16   # four 2x time pools


class Cnn10(_Cnn):
    channels, embedding_dim = (64, 128, 256, 512), 512
    min_frames, interpolate_ratio = 16, 16


class Cnn14_DecisionLevelMax(_Cnn):
    is_sed, sed_pooling = True, "max"


class Cnn14_DecisionLevelAvg(_Cnn):
    is_sed, sed_pooling = True, "avg"


class Cnn14_DecisionLevelAtt(_Cnn):
    is_sed, sed_pooling = True, "att"


class Wavegram_Cnn14(_Cnn):
    """Wavegram only. Official quirk kept: bn0, conv_block1 and spec_augmenter exist (bn0 and
    conv_block1 are in the state_dict) but are never used."""
    wavegram, min_wave_samples = "only", 10236


class Wavegram_Logmel_Cnn14(_Cnn):
    wavegram, min_wave_samples = "logmel", 10236


class Wavegram_Logmel128_Cnn14(_Cnn):
    wavegram, wavegram_channels, bn_bins, freq_drop_width = "logmel", 256, 128, 16
    min_wave_samples = 10236


# ---- ResNets and MobileNets (log-mel front end, different bodies) --------------------------------
class _ResNetModel(_Model):
    """Log-mel -> ConvBlock(1->64) -> _ResNet -> avg-pool -> ConvBlock(->2048) -> head."""
    resnet_block = _ResnetBasicBlock
    layers = (2, 2, 2, 2)

    def __init__(self, sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num):
        super().__init__()
        self._setup_frontend(sample_rate, window_size, hop_size, mel_bins, fmin, fmax)
        self.conv_block1 = ConvBlock(in_channels=1, out_channels=64)
        self.resnet = _ResNet(block=self.resnet_block, layers=self.layers)
        self.conv_block_after1 = ConvBlock(in_channels=512 * self.resnet_block.expansion,
                                           out_channels=2048)
        self._add_head(2048, 2048, classes_num)
        self._init_head()

    def forward(self, input, mixup_lambda=None):
        x = self._logmel(input)
        if self.training and mixup_lambda is not None:
            x = do_mixup(x, mixup_lambda)
        x = self.conv_block1(x, pool_size=(2, 2), pool_type="avg")
        x = F.dropout(x, p=0.2, training=self.training, inplace=True)
        x = self.resnet(x)
        x = F.avg_pool2d(x, kernel_size=(2, 2))
        x = F.dropout(x, p=0.2, training=self.training, inplace=True)
        x = self.conv_block_after1(x, pool_size=(1, 1), pool_type="avg")
        x = F.dropout(x, p=0.2, training=self.training, inplace=True)
        return self._clip_head(torch.mean(x, dim=3))


class ResNet22(_ResNetModel):
    layers = (2, 2, 2, 2)


class ResNet38(_ResNetModel):
    layers = (3, 4, 6, 3)


class ResNet54(_ResNetModel):
    resnet_block, layers = _ResnetBottleneck, (3, 4, 6, 3)


class _MobileNet(_Model):
    """Log-mel -> ``features`` (nn.Sequential) -> head (fc1 from the last width)."""
    last_channels, embedding_dim, pre_dropout = 1024, 1024, True

    def __init__(self, sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num):
        super().__init__()
        self._setup_frontend(sample_rate, window_size, hop_size, mel_bins, fmin, fmax)
        self.features = nn.Sequential(*self._features())
        self._add_head(self.last_channels, self.embedding_dim, classes_num)
        self._init_head()

    def forward(self, input, mixup_lambda=None):
        x = self._logmel(input)
        frames_num = x.shape[2]
        if self.training and mixup_lambda is not None:
            x = do_mixup(x, mixup_lambda)
        return self._head(torch.mean(self.features(x), dim=3), frames_num, pre_dropout=self.pre_dropout)


class MobileNetV1(_MobileNet):
    def _features(self):
        def dw(inp, oup, stride):   # depthwise 3x3 (+avg-pool) then pointwise 1x1
            return nn.Sequential(*_conv_pool_bn(inp, inp, stride, groups=inp), *_pw_bn(inp, oup, nn.ReLU))
        widths = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + \
                 [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
        return [nn.Sequential(*_conv_pool_bn(1, 32, 2))] + [dw(*w) for w in widths]


class MobileNetV2(_MobileNet):
    """Official quirk kept: no dropout before fc1."""
    last_channels, pre_dropout = 1280, False

    def _features(self):
        layers, cin = [nn.Sequential(*_conv_pool_bn(1, 32, 2, act=nn.ReLU6))], 32
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 2), (6, 160, 3, 1), (6, 320, 1, 1)):
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, expand_ratio=t))
                cin = c
        return layers + [nn.Sequential(*_pw_bn(cin, self.last_channels, nn.ReLU6))]


# ---- One-dimensional (raw waveform) models: no front end; mixup on the waveform ------------------
class _WaveModel(_Model):
    """(B, L) waveform -> (B, 1, L) -> ``_body`` -> clip head. Spectrogram args are ignored."""
    bn_bins = None
    embedding_dim = 512

    def __init__(self, sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num):
        super().__init__()
        self._build()
        self._add_head(self.fc1_in, self.embedding_dim, classes_num)
        self._init_head()

    def forward(self, input, mixup_lambda=None):
        x = input[:, None, :]
        if self.training and mixup_lambda is not None:
            x = do_mixup(x, mixup_lambda)
        return self._clip_head(self._body(x))


class _LeeNet(_WaveModel):
    """Sample-level CNN: a strided conv block, then blocks with max-pool 3."""
    widths: tuple = ()
    block_cls = LeeNetConvBlock
    inner_dropout = 0.0
    last_pool = 3

    def _build(self):
        cin = 1
        for i, c in enumerate(self.widths, 1):
            setattr(self, f"conv_block{i}", self.block_cls(cin, c, 3, 3 if i == 1 else 1))
            cin = c
        self.fc1_in = cin

    def _body(self, x):
        n = len(self.widths)
        for i in range(1, n + 1):
            pool = 1 if i == 1 else (self.last_pool if i == n else 3)
            x = getattr(self, f"conv_block{i}")(x, pool_size=pool)
            if i < n:
                x = _dropout(x, self.inner_dropout, self.training)
        return x


class LeeNet11(_LeeNet):
    widths = (64, 64, 64, 128, 128, 128, 128, 128, 256)
    min_wave_samples = 1


class LeeNet24(_LeeNet):
    widths = (64, 96, 128, 128, 256, 256, 512, 512, 1024)
    block_cls, inner_dropout, last_pool, embedding_dim = LeeNetConvBlock2, 0.1, 1, 1024
    min_wave_samples = 1


class DaiNet19(_WaveModel):
    min_wave_samples = 332

    def _build(self):
        self.conv0 = nn.Conv1d(1, 64, kernel_size=80, stride=4, padding=0, bias=False)
        self.bn0 = nn.BatchNorm1d(64)
        for i, (a, b) in enumerate(((64, 64), (64, 128), (128, 256), (256, 512)), 1):
            setattr(self, f"conv_block{i}", DaiNetResBlock(a, b, 3))
        self.fc1_in = 512
        init_layer(self.conv0)

    def _body(self, x):
        x = self.bn0(self.conv0(x))
        for i in range(1, 5):
            x = getattr(self, f"conv_block{i}")(x)
            if i < 4:
                x = F.max_pool1d(x, kernel_size=4)
        return x


class _Res1dNet(_WaveModel):
    layers: tuple = ()
    embedding_dim = 2048
    min_wave_samples = 20476

    def _build(self):
        self.conv0 = nn.Conv1d(1, 64, kernel_size=11, stride=5, padding=5, bias=False)
        self.bn0 = nn.BatchNorm1d(64)
        self.resnet = _ResNetWav1d(_ResnetBasicBlockWav1d, self.layers)
        self.fc1_in = 2048
        init_layer(self.conv0)

    def _body(self, x):
        return self.resnet(self.bn0(self.conv0(x)))


class Res1dNet31(_Res1dNet):
    layers = (2, 2, 2, 2, 2, 2, 2)


class Res1dNet51(_Res1dNet):
    layers = (2, 3, 4, 6, 4, 3, 2)


# ---- Transfer learning (official Transfer_Cnn14 from finetune_template.py, generalised) ----------
class _Transfer(nn.Module):
    """An AudioSet model (``base``, 527 classes, loadable from a PANNs checkpoint) plus a new
    ``fc_transfer`` on its embedding. Outputs under 'clipwise_output': log-softmax (official,
    single-label) or, with ``output='sigmoid'``, probabilities (multi-label fine-tuning).

    ``freeze_base=True`` makes the base a fixed feature extractor: no gradients, and it stays in
    eval mode when the model trains (its BatchNorm statistics stay pretrained, no dropout or
    SpecAugment; with mixup the *embeddings* are mixed). The official template only switched
    gradients off, so its "frozen" base still updated its BatchNorm statistics and dropped out
    features. The state_dict is the same either way."""
    base_type = "Cnn14"

    def __init__(self, sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num,
                 freeze_base=False, output: str = "log_softmax"):
        super().__init__()
        if output not in ("log_softmax", "sigmoid"):
            raise PannsError(f"transfer output must be 'log_softmax' or 'sigmoid', got {output!r}")
        self.output = output
        self.freeze_base = bool(freeze_base)
        base_cls = MODELS[self.base_type].cls
        self.base = base_cls(sample_rate, window_size, hop_size, mel_bins, fmin, fmax, 527)
        self.fc_transfer = nn.Linear(self.base.fc1.out_features, classes_num, bias=True)
        if freeze_base:
            for p in self.base.parameters():
                p.requires_grad = False
        init_layer(self.fc_transfer)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_base:
            self.base.eval()
        return self

    def load_from_pretrain(self, pretrained_checkpoint_path: str) -> None:
        """Official method: load an AudioSet checkpoint (official ``{'model': state_dict}`` or ours) into
        ``base``, strictly, with one-line errors (see ``state_dicts.load_pretrained_base``)."""
        ckpt = state_dicts.load_checkpoint(pretrained_checkpoint_path)
        sd = state_dicts.strip_prefixes(state_dicts.model_state_dict(ckpt, pretrained_checkpoint_path))
        state_dicts.load_pretrained_base(self.base, sd, pretrained_checkpoint_path, self.base_type,
                                         official=not isinstance(ckpt.get("config"), dict))

    def forward(self, input, mixup_lambda=None):
        """input: (B, samples) -> {'clipwise_output': (B', classes), 'embedding': (B, D), ...};
        B' = B/2 with mixup (pairs mixed)."""
        if self.freeze_base:
            with torch.no_grad():
                output_dict = self.base(input)
            embedding = output_dict["embedding"]
            if self.training and mixup_lambda is not None:
                embedding = do_mixup(embedding, mixup_lambda)
        else:
            output_dict = self.base(input, mixup_lambda)
            embedding = output_dict["embedding"]
        logits = self.fc_transfer(embedding)
        with _fp32_region(logits):
            act = torch.sigmoid if self.output == "sigmoid" else (lambda t: torch.log_softmax(t, dim=-1))
            output_dict["clipwise_output"] = act(logits.float())
        return output_dict

    @property
    def min_samples(self) -> int:
        return self.base.min_samples


class Transfer_Cnn14(_Transfer):
    base_type = "Cnn14"


_TRANSFER_CLASSES: Dict[str, type] = {"Cnn14": Transfer_Cnn14}


def transfer_class(base_name: str) -> type:
    """The Transfer_<base_name> class (created once per clip-level base model)."""
    spec = get_model_spec(base_name)
    if spec.is_sed or spec.base is not None:
        clip = [n for n, s in MODELS.items() if not s.is_sed]
        raise PannsError(f"transfer learning needs a clip-level model with an embedding; "
                         f"{base_name} is not one. Choose one of: {', '.join(clip)}")
    if base_name not in _TRANSFER_CLASSES:
        _TRANSFER_CLASSES[base_name] = type(f"Transfer_{base_name}", (_Transfer,),
                                            {"base_type": base_name, "__module__": __name__})
    return _TRANSFER_CLASSES[base_name]


def make_transfer_model(base_name: str, classes_num: int, freeze_base: bool = False,
                        output: str = "log_softmax", **frontend):
    """Transfer_<base_name>(front end from the registry unless overridden, classes_num, freeze_base,
    output 'log_softmax' (official, single-label) or 'sigmoid' (multi-label))."""
    cls = transfer_class(base_name)
    fe = {**MODELS[base_name].frontend(), **{k: v for k, v in frontend.items() if v is not None}}
    return cls(**fe, classes_num=classes_num, freeze_base=freeze_base, output=output)


# ---- Registry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A model class with its default front end (what the official scripts pass)."""
    name: str
    cls: type
    sample_rate: int
    window_size: int
    hop_size: int
    mel_bins: int
    fmin: int
    fmax: int
    is_sed: bool
    embedding_dim: Optional[int]
    min_samples: int
    base: Optional[str] = None          # Transfer_<base> models: the base model name
    output: str = "sigmoid"             # 'sigmoid' (multi-label) | 'log_softmax' (Transfer_*)

    def frontend(self) -> dict:
        return self.front_end.to_dict()

    @property
    def front_end(self) -> FrontEnd:
        return FrontEnd(self.sample_rate, self.window_size, self.hop_size, self.mel_bins, self.fmin, self.fmax)


_CLASSES = [Cnn6, Cnn10, Cnn14, Cnn14_16k, Cnn14_8k, Cnn14_no_specaug, Cnn14_no_dropout,
            Cnn14_emb512, Cnn14_emb128, Cnn14_emb32, Cnn14_mel32, Cnn14_mel128,
            Cnn14_mixup_time_domain, Cnn14_DecisionLevelMax, Cnn14_DecisionLevelAvg,
            Cnn14_DecisionLevelAtt, ResNet22, ResNet38, ResNet54, MobileNetV1, MobileNetV2,
            LeeNet11, LeeNet24, DaiNet19, Res1dNet31, Res1dNet51, Wavegram_Cnn14,
            Wavegram_Logmel_Cnn14, Wavegram_Logmel128_Cnn14]


OFFICIAL_NAMES = tuple(c.__name__ for c in _CLASSES) + ("Transfer_Cnn14",)   # the official zoo


def _spec_for(cls: type) -> ModelSpec:
    fe = dict(cls.required_frontend or _A32)
    if cls.bn_bins is not None:
        fe["mel_bins"] = cls.bn_bins
    emb = None if cls.is_sed else (getattr(cls, "embedding_dim", None) or 2048)
    return ModelSpec(cls.__name__, cls, **fe, is_sed=cls.is_sed, embedding_dim=emb,
                     min_samples=cls.min_input_samples(fe["hop_size"], fe["window_size"]))


MODELS: Dict[str, ModelSpec] = {}


def _register_all() -> None:
    for cls in _CLASSES:
        MODELS[cls.__name__] = _spec_for(cls)
        KNOWN_FRONT_ENDS.setdefault(MODELS[cls.__name__].front_end, cls.__name__)
    MODELS["Transfer_Cnn14"] = _transfer_spec("Cnn14")


def _transfer_spec(base_name: str) -> ModelSpec:
    base = MODELS[base_name]
    return ModelSpec(f"Transfer_{base_name}", transfer_class(base_name), **base.frontend(),
                     is_sed=False, embedding_dim=base.embedding_dim, min_samples=base.min_samples,
                     base=base_name, output="log_softmax")


def model_names(include_transfer: bool = True):
    """Registered model names (official class names; Transfer_<Base> resolves for any clip model)."""
    return [n for n, s in MODELS.items() if include_transfer or s.base is None]


def get_model_spec(name: str) -> ModelSpec:
    """ModelSpec for ``name``; 'Transfer_<Base>' works for every clip-level base."""
    if name in MODELS:
        return MODELS[name]
    if isinstance(name, str) and name.startswith("Transfer_") and name[9:] in MODELS:
        return _transfer_spec(name[9:])
    raise PannsError(f"unknown model type {name!r}; valid names: {', '.join(model_names())} "
                     f"(and Transfer_<name> for clip-level models)")


def create_model(name: str, classes_num: int = 527, **frontend) -> nn.Module:
    """Build ``name`` with its registry front end, overridden by any non-None ``frontend`` value
    (sample_rate, window_size, hop_size, mel_bins, fmin, fmax); Transfer_* also take freeze_base."""
    spec = get_model_spec(name)
    freeze_base = frontend.pop("freeze_base", False)
    output = frontend.pop("output", None)
    if freeze_base and spec.base is None:
        raise PannsError(f"freeze_base only applies to Transfer_* models, not {name}")
    unknown = set(frontend) - set(spec.frontend())
    if unknown:
        raise PannsError(f"create_model: unknown option(s) {sorted(unknown)}")
    fe = {**spec.frontend(), **{k: v for k, v in frontend.items() if v is not None}}
    if spec.base is not None:
        return spec.cls(**fe, classes_num=classes_num, freeze_base=freeze_base,
                        output=output or spec.output)
    return spec.cls(**fe, classes_num=classes_num)


_register_all()


# ---- Extensions: not official classes (no official checkpoint); built from the same shared parts. ----
class MobileNetV1_DecisionLevelMax(MobileNetV1):
    """MobileNetV1 body (1/12 of Cnn14's FLOPs) with the Cnn14_DecisionLevelMax SED head. Its body
    downsamples time by 32 like Cnn14's, so the framewise upsampling is the same. Not for a few
    dozen steps: its depthwise convolutions start with outputs of variance ~1e-3 while BatchNorm's
    running variance starts at 1 and keeps 0.9**N of it after N steps, so in eval mode each block
    shrinks the signal ~10x and every clip gets the same scores until a few hundred steps."""
    is_sed, sed_pooling = True, "max"


class Cnn6_DecisionLevelMax(Cnn6):
    """Cnn6 body with the Cnn14_DecisionLevelMax SED head (clipwise = max over time)."""
    is_sed, sed_pooling = True, "max"


class Cnn6_DecisionLevelAvg(Cnn6):
    """Cnn6 body with the Cnn14_DecisionLevelAvg SED head (clipwise = mean over time). Every frame
    gets a gradient, so it learns from clip labels in a few dozen CPU steps (the demo's SED model);
    the max-pooled head trains only the loudest frame and needs far more."""
    is_sed, sed_pooling = True, "avg"


EXTENSIONS = ("MobileNetV1_DecisionLevelMax", "Cnn6_DecisionLevelMax", "Cnn6_DecisionLevelAvg")
for _cls in (MobileNetV1_DecisionLevelMax, Cnn6_DecisionLevelMax, Cnn6_DecisionLevelAvg):
    MODELS[_cls.__name__] = _spec_for(_cls)
