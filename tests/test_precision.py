"""Mixed precision: bf16 autocast runs only the CNN body in bf16 (front end and outputs fp32) and
stays close to fp32 on the golden weights; precision resolution; inference preparation; BN folding."""
import os
import sys

import numpy as np
import pytest
import torch

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
sys.path.insert(0, GOLDEN)
from fill import fill_state_dict, test_waveform as make_waveform  # noqa: E402
from model_helpers import quick_fill, single_thread, skip_weight_init  # noqa: E402

from panns import models
from panns import amp
from panns import devices
from panns.errors import PannsError

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


@pytest.fixture(scope="module")
def cnn14_runs():
    """Golden-weight Cnn14 run on two 0.7-s clips in fp32 and under bf16 autocast, with the
    dtypes seen at the output of a few layers during the bf16 run."""
    ref = np.load(os.path.join(GOLDEN, "Cnn14.npz"))
    with skip_weight_init():
        model = models.create_model("Cnn14")
    fill_state_dict(model, str(ref["head"]), float(ref["head_scale"])).eval()
    x = make_waveform(32000, seconds=0.7)
    seen = {}
    layers = ["spectrogram_extractor", "logmel_extractor", "bn0", "conv_block1.conv1", "fc1", "fc_audioset"]
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, o.dtype)) for n in layers]
    with torch.no_grad():
        fp32 = model(x)
        with amp.autocast("bf16", "cpu"):
            bf16 = model(x)
    for h in hooks:
        h.remove()
    return fp32, bf16, seen


def test_bf16_front_end_and_outputs_stay_fp32(cnn14_runs):
    fp32, bf16, seen = cnn14_runs
    assert seen["spectrogram_extractor"] == seen["logmel_extractor"] == seen["bn0"] == torch.float32
    assert seen["conv_block1.conv1"] == seen["fc1"] == seen["fc_audioset"] == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in bf16.values())


def test_bf16_close_to_fp32_on_golden_weights(cnn14_runs):
    fp32, bf16, _ = cnn14_runs
    assert (fp32["clipwise_output"] - bf16["clipwise_output"]).abs().max() < 0.01
    cos = torch.nn.functional.cosine_similarity(fp32["embedding"], bf16["embedding"], dim=1)
    assert cos.min() >= 0.998


def test_transfer_and_attention_outputs_fp32_under_autocast():
    with skip_weight_init():
        t = quick_fill(models.make_transfer_model("LeeNet11", classes_num=4)).eval()
    att = models.AttBlock(64, 3, activation="sigmoid").eval()
    with torch.no_grad(), amp.autocast("bf16", "cpu"):
        out = t(0.1 * torch.randn(2, 8000))
        clip, norm_att, cla = att(torch.randn(2, 64, 9))
    assert out["clipwise_output"].dtype == torch.float32
    torch.testing.assert_close(out["clipwise_output"].exp().sum(-1), torch.ones(2))
    assert clip.dtype == norm_att.dtype == cla.dtype == torch.float32
    torch.testing.assert_close(norm_att.sum(-1), torch.ones(2, 3))


def test_resolve_precision(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda *a: False)
    assert amp.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda *a: True)
    assert amp.resolve_precision("auto", "cpu") == "bf16"
    assert amp.resolve_precision("fp32", "cpu") == "fp32" and amp.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # is_bf16_supported() is True on V100/T4 too (emulated): the choice must follow the capability instead.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 0))
    assert amp.resolve_precision("auto", "cuda:0") == "fp16"
    assert amp.resolve_precision("auto", "cuda:0", training=True) == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    assert amp.resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    with pytest.raises(PannsError, match="fp32, bf16, fp16, auto"):
        amp.resolve_precision("half", "cpu")


def test_cpu_has_fast_bf16(tmp_path, monkeypatch):
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert devices.cpu_has_fast_bf16(str(amx))
    assert {"avx512f", "amx_bf16"} <= devices.cpu_flags(str(amx)) and not devices.cpu_flags(str(tmp_path / "none"))
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not devices.cpu_has_fast_bf16(str(plain))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
    assert devices.cpu_has_fast_bf16(str(tmp_path / "missing"))


def test_autocast_contexts():
    with amp.autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with amp.autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_prepare_for_inference(monkeypatch):
    model = models.create_model("Cnn6", classes_num=3).train()
    out = amp.prepare_for_inference(model, "fp32", "cpu")
    assert not out.training
    w = out.conv_block2.conv1.weight
    assert w.is_contiguous(memory_format=torch.channels_last) == amp.CHANNELS_LAST["cpu", "fp32"]
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda *a: True)
    out = amp.prepare_for_inference(model, "bf16", "cpu")
    assert out.conv_block2.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["Cnn6", "MobileNetV2", "DaiNet19"])
def test_fold_bn_keeps_outputs(name):
    with skip_weight_init():
        model = quick_fill(models.create_model(name, classes_num=5)).eval()
    folded = amp.fold_bn(model)
    n_bn = lambda m: sum(isinstance(x, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for x in m.modules())  # noqa: E731
    assert n_bn(folded) < n_bn(model) and n_bn(model) > 0
    x = 0.1 * torch.randn(2, models.get_model_spec(name).min_samples + 3000)
    with torch.no_grad():
        a, b = model(x), folded(x)
    for k in a:
        err = (a[k] - b[k]).abs().max() / a[k].abs().max()
        assert err < 1e-4, (k, float(err))
    assert any(isinstance(m, torch.nn.BatchNorm2d) or isinstance(m, torch.nn.BatchNorm1d)
               for m in model.modules())   # original untouched


# ---- the front end in true fp32 (amp.ieee_fp32): TF32 / oneDNN reduced fp32 off inside, user settings kept ----
_ALL_FP32_ENTRIES = [("generic", "all"), ("cuda", "all"), ("mkldnn", "all")] + list(amp._FP32_OPS)


def _fp32_settings() -> dict:
    """Every fp32 precision setting torch keeps (per-operator entries and what the legacy readers say; a
    legacy reader raises when legacy and new settings disagree, recorded as 'mixed')."""
    out = {f"{b}.{o}": torch._C._get_fp32_precision_getter(b, o) for b, o in _ALL_FP32_ENTRIES}
    for name, read in (("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
                       ("cuda.matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
                       ("float32_matmul_precision", torch.get_float32_matmul_precision)):
        try:
            out[name] = read()
        except RuntimeError:
            out[name] = "mixed"
    return out


@pytest.fixture
def fp32_settings_restored():
    """Put torch's default fp32 precision settings back after the test (it changes them globally)."""
    before = _fp32_settings()
    yield before
    torch._C._set_cudnn_allow_tf32(before["cudnn.allow_tf32"])
    torch._C._set_float32_matmul_precision(before["float32_matmul_precision"])
    for b, o in _ALL_FP32_ENTRIES:
        torch._C._set_fp32_precision_setter(b, o, before[f"{b}.{o}"])
    assert _fp32_settings() == before


class _Spy(torch.nn.Module):
    """Runs ``inner``, recording the fp32 precision settings it runs under (eagerly, also when compiled)."""

    def __init__(self, inner, log, outputs=None):
        super().__init__()
        self.inner, self.log, self.outputs = inner, log, outputs

    def forward(self, *args, **kwargs):
        self._record()
        out = self.inner(*args, **kwargs)
        if self.outputs is not None:
            self.outputs.append(out.detach().clone())
        return out

    @torch.compiler.disable
    def _record(self):
        self.log.append(_fp32_settings())


_USER_SETTINGS = {
    "legacy flags": "torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True",
    "matmul precision": "torch.set_float32_matmul_precision('medium')",
    "per-operator": "torch.backends.cuda.matmul.fp32_precision = 'tf32'; torch.backends.cudnn.conv.fp32_precision = "
                    "'tf32'; torch.backends.mkldnn.conv.fp32_precision = 'bf16'; "
                    "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'",
    "generic": "torch.backends.fp32_precision = 'tf32'",
}


def _spied_cnn6(logmels=None):
    """Cnn6 whose front-end modules and first conv block record the fp32 settings they run under (and, when
    ``logmels`` is a list, the log-mel outputs (batch, 1, frames, mel_bins) they produce)."""
    with skip_weight_init():
        model = quick_fill(models.create_model("Cnn6", classes_num=3)).eval()
    front, body = [], []
    model.spectrogram_extractor = _Spy(model.spectrogram_extractor, front)
    model.logmel_extractor = _Spy(model.logmel_extractor, front, logmels)
    model.conv_block1 = _Spy(model.conv_block1, body)
    return model, front, body


@pytest.mark.parametrize("how", list(_USER_SETTINGS))
def test_front_end_runs_in_ieee_fp32_and_user_settings_survive(how, fp32_settings_restored):
    logmels = []
    model, front, body = _spied_cnn6(logmels)
    x = 0.1 * torch.randn(2, 16000)
    with torch.no_grad():
        reference = model(x)["clipwise_output"]
    exec(_USER_SETTINGS[how])
    user = _fp32_settings()
    assert user != fp32_settings_restored
    front.clear(), body.clear()
    with torch.no_grad():
        out = model(x)["clipwise_output"]
        assert _fp32_settings() == user
        with amp.autocast("bf16", "cpu"):
            model(x)
        assert _fp32_settings() == user
    assert len(front) == 4 and len(body) == 2
    for seen in front:
        assert all(seen[f"{b}.{o}"] == "ieee" for b, o in amp._FP32_OPS), seen
        # the legacy readers agree (torch raises on them when legacy and new settings disagree)
        assert seen["cudnn.allow_tf32"] is False and seen["cuda.matmul.allow_tf32"] is False, seen
    assert all(seen == user for seen in body)  # the CNN body runs under the user's settings
    # The front end gives the same bits under any user setting. The body may not: where the CPU has a reduced
    # fp32 path (oneDNN's bf16 on AVX512-BF16/AMX) the user asked for it and gets it, so only closeness holds.
    assert len(logmels) == 3 and torch.equal(logmels[1], logmels[0])
    torch.testing.assert_close(out, reference, atol=2e-2, rtol=0)


def test_front_end_ieee_fp32_under_compile(fp32_settings_restored):
    model, front, _ = _spied_cnn6()
    x = 0.1 * torch.randn(2, 16000)
    exec(_USER_SETTINGS["per-operator"])
    user = _fp32_settings()
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            eager = model._logmel(x)
            compiled = torch.compile(model._logmel, backend="eager")(x)
    finally:
        torch._dynamo.reset()
    assert len(front) == 4 and all(seen[f"{b}.{o}"] == "ieee" for seen in front for b, o in amp._FP32_OPS)
    assert torch.equal(eager, compiled) and _fp32_settings() == user


def test_overlapping_front_ends_share_one_region(fp32_settings_restored):
    """Threads running models overlap their front ends: A enters, B enters, A leaves (B still inside), B leaves.
    Inside, everything stays ieee until the last one leaves; then the caller's settings are back (a save/restore
    per region would have ended with B restoring A's ieee settings as the 'previous' ones)."""
    exec(_USER_SETTINGS["legacy flags"])
    user = _fp32_settings()
    a, b = amp.ieee_fp32(), amp.ieee_fp32()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    inside = _fp32_settings()
    assert all(inside[f"{o[0]}.{o[1]}"] == "ieee" for o in amp._FP32_OPS), inside
    b.__exit__(None, None, None)
    assert _fp32_settings() == user
    with pytest.raises(ZeroDivisionError):   # an exception inside still restores them
        with amp.ieee_fp32():
            1 / 0
    assert _fp32_settings() == user


_COMPILE_FIRST = """
import sys, torch
from panns import amp, inference, models, runtime  # the inference CLI's imports
from panns.spec_augment import SpecAugmentation
print("dynamo imported at start-up:", "torch._dynamo" in sys.modules)
import torch._dynamo.testing
m, x = SpecAugmentation(64, 2, 8, 2).train(), torch.randn(3, 1, 100, 64)
counter = torch._dynamo.testing.CompileCounter()
torch.manual_seed(0); compiled = torch.compile(m, backend=counter)(x.clone()); rng_c = torch.get_rng_state()
torch.manual_seed(0); eager = m(x.clone()); rng_e = torch.get_rng_state()
print("specaugment:", torch.equal(compiled, eager), torch.equal(rng_c, rng_e), counter.frame_count)
torch.backends.mkldnn.conv.fp32_precision = "bf16"
model = models.create_model("Cnn6", classes_num=3).eval()
with torch.no_grad():
    torch.compile(model._logmel, backend="eager")(0.1 * torch.randn(2, 16000))
print("user setting after the front end:", torch.backends.mkldnn.conv.fp32_precision)
"""


def test_eager_only_before_dynamo_is_imported():
    """Start-up does not import torch._dynamo; a model compiled before any eager call still runs the eager-only
    parts eagerly: SpecAugment's draws in order (same output and RNG state, one graph) and the front end's
    precision switches (the user's setting is back afterwards)."""
    import subprocess
    import sys

    from test_train import REPO

    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "pytorch")}
    r = subprocess.run([sys.executable, "-c", _COMPILE_FIRST], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == ["dynamo imported at start-up: False", "specaugment: True True 1",
                                     "user setting after the front end: bf16"], r.stdout
