"""Behaviour of every registered model (shapes, batch consistency, train/eval, mixup, input-length
limits), the registry, transfer models and pytorch_utils. Numerics against the official code are
in test_golden.py."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
from model_helpers import quick_fill, single_thread, skip_weight_init  # noqa: E402

from panns import models
from panns import pytorch_utils as pu
from panns.errors import PannsError

CLASSES = 7
NAMES = models.model_names(include_transfer=False)

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def _eval_length(spec) -> int:
    """Shortest valid eval input (~0.31 s for Cnn14); at least 1/8 s for the 1-D models."""
    return max(spec.min_samples, 4000)


def _train_length(spec) -> int:
    """Training needs >= 64 frames (SpecAugment's time stripes), ~0.66 s, and more than one value
    per channel in the last BN after mixup halves the batch (waveform models: 2x min_samples)."""
    return max(2 * spec.min_samples + 1024, 66 * spec.hop_size)


def _waves(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, length, generator=g)


def _max_rel_err(a, b):
    return float((a - b).abs().max() / (b.abs().max() + 1e-12))


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    """(name, spec, model in eval mode), built once per model for all tests of this module."""
    spec = models.get_model_spec(request.param)
    with skip_weight_init():
        model = models.create_model(request.param, classes_num=CLASSES)
    return request.param, spec, quick_fill(model).eval()


def test_outputs_and_batch_consistency(built):
    """At the shortest valid length (min_samples): output keys/shapes/ranges, and batch items do
    not leak into each other (the same clip next to different neighbours gives the same output)."""
    name, spec, model = built
    n = _eval_length(spec)
    a, b = _waves(2, n)
    with torch.no_grad():
        out = model(torch.stack([a, b, a]))
    clip = out["clipwise_output"]
    assert clip.shape == (3, CLASSES) and clip.dtype == torch.float32
    assert torch.isfinite(clip).all() and torch.all((clip >= 0) & (clip <= 1))
    if spec.is_sed:
        assert list(out) == ["framewise_output", "clipwise_output"]
        assert out["framewise_output"].shape == (3, n // spec.hop_size + 1, CLASSES)
    else:
        assert list(out) == ["clipwise_output", "embedding"]
        assert out["embedding"].shape == (3, spec.embedding_dim)
    for key in out:
        assert _max_rel_err(out[key][2], out[key][0]) < 1e-5, key
        assert not torch.equal(out[key][0], out[key][1]), key


def test_min_samples(built):
    """One sample less than min_samples fails (min_samples itself runs: test above)."""
    name, spec, model = built
    assert model.min_samples == spec.min_samples
    with torch.no_grad(), pytest.raises(RuntimeError):
        model(_waves(1, spec.min_samples - 1))


def test_train_mode_and_mixup(built):
    """In train mode (SpecAugment, dropout, BN batch statistics) mixup halves the batch."""
    name, spec, model = built
    x = _waves(2, _train_length(spec), seed=2)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    before = [bn.num_batches_tracked.item() for bn in bns]
    try:
        model.train()
        with torch.no_grad():
            out = model(x, mixup_lambda=torch.tensor([0.3, 0.7]))
    finally:
        model.eval()
    assert out["clipwise_output"].shape == (1, CLASSES) and torch.isfinite(out["clipwise_output"]).all()
    if spec.is_sed:
        assert out["framewise_output"].shape[0] == 1
    else:
        assert out["embedding"].shape == (1, spec.embedding_dim)
    # BNs that ran in training mode updated their statistics (unused official layers excepted)
    assert sum(bn.num_batches_tracked.item() > b for bn, b in zip(bns, before)) >= len(bns) // 2


def test_eval_ignores_mixup_and_train_is_stochastic():
    with skip_weight_init():
        model = quick_fill(models.create_model("Cnn6", classes_num=3)).eval()
    x = _waves(2, 21120)
    with torch.no_grad():
        ev = model(x)
        torch.testing.assert_close(model(x, mixup_lambda=torch.tensor([0.5, 0.5]))["embedding"],
                                   ev["embedding"])
        model.train()
        a, b = model(x), model(x)
    assert not torch.allclose(a["embedding"], b["embedding"])        # dropout / SpecAugment
    assert not torch.allclose(a["clipwise_output"], ev["clipwise_output"])


@pytest.mark.parametrize("length", [32320, 33000])
def test_wavegram_logmel_odd_lengths(length):
    """The official Wavegram_Logmel_Cnn14 crashes for these lengths (branches differ by a frame)."""
    with skip_weight_init():
        model = quick_fill(models.create_model("Wavegram_Logmel_Cnn14", classes_num=3)).eval()
    with torch.no_grad():
        assert model(_waves(1, length))["clipwise_output"].shape == (1, 3)


# Registry -------------------------------------------------------------------------------------
def test_registry_contents():
    assert len(models.OFFICIAL_NAMES) == 30 and set(models.OFFICIAL_NAMES) <= set(models.model_names())
    assert all(models.MODELS[n].cls.__name__ == n for n in NAMES)
    s16 = models.get_model_spec("Cnn14_16k")
    assert (s16.sample_rate, s16.window_size, s16.hop_size, s16.mel_bins, s16.fmin, s16.fmax) == \
        (16000, 512, 160, 64, 50, 8000)
    s8 = models.get_model_spec("Cnn14_8k")
    assert (s8.sample_rate, s8.window_size, s8.hop_size, s8.fmax) == (8000, 256, 80, 4000)
    assert models.get_model_spec("Cnn14_mel128").mel_bins == 128
    assert models.get_model_spec("Wavegram_Logmel128_Cnn14").mel_bins == 128
    assert models.get_model_spec("Cnn14_mel32").mel_bins == 32
    c14 = models.get_model_spec("Cnn14")
    assert (c14.sample_rate, c14.window_size, c14.hop_size, c14.fmax, c14.min_samples) == \
        (32000, 1024, 320, 14000, 9920)
    assert models.get_model_spec("Cnn14_DecisionLevelMax").is_sed
    assert models.get_model_spec("Cnn14_DecisionLevelMax").embedding_dim is None
    assert models.get_model_spec("MobileNetV1").embedding_dim == 1024
    assert models.get_model_spec("Cnn14_emb32").embedding_dim == 32


def test_unknown_model_lists_valid_names():
    with pytest.raises(PannsError, match="Cnn14_16k"):
        models.get_model_spec("Cnn15")
    with pytest.raises(PannsError):
        models.create_model("Transfer_Cnn15")


def test_frontend_checks():
    with pytest.raises(PannsError, match="mel_bins=64"):
        models.create_model("Cnn14", mel_bins=128)
    with pytest.raises(PannsError, match="sample_rate=16000"):
        models.Cnn14_16k(32000, 1024, 320, 64, 50, 14000, 527)
    with pytest.raises(PannsError, match="unknown option"):
        models.create_model("Cnn6", sample_rte=16000)
    with pytest.raises(PannsError, match="freeze_base"):
        models.create_model("Cnn6", freeze_base=True)
    m = models.create_model("LeeNet11", classes_num=3, sample_rate=16000)   # ignored by 1-D models
    assert m.fc_audioset.out_features == 3


def test_create_model_frontend_override():
    m = models.create_model("Cnn6", classes_num=4, sample_rate=16000, window_size=512, hop_size=160,
                            fmax=8000)
    assert m.logmel_extractor.melW.shape == (257, 64)
    assert m.min_samples == 15 * 160


def test_official_init_conventions():
    torch.manual_seed(0)
    m = models.create_model("DaiNet19", classes_num=3)
    assert torch.all(m.conv_block1.bn4.weight == 0) and torch.all(m.conv_block1.bn1.weight == 1)
    assert torch.all(m.fc1.bias == 0)
    r = models.create_model("Res1dNet31", classes_num=3)
    assert torch.all(r.resnet.layer1[0].bn2.weight == 0)


# Transfer models --------------------------------------------------------------------------------
def test_transfer_cnn14_is_official_layout():
    spec = models.get_model_spec("Transfer_Cnn14")
    assert spec.cls is models.Transfer_Cnn14 and spec.output == "log_softmax" and spec.base == "Cnn14"
    with skip_weight_init():
        m = models.Transfer_Cnn14(32000, 1024, 320, 64, 50, 14000, 10, True)
    keys = list(m.state_dict())
    assert keys[-2:] == ["fc_transfer.weight", "fc_transfer.bias"] and keys[0].startswith("base.")
    assert m.base.fc_audioset.out_features == 527 and m.fc_transfer.in_features == 2048


@pytest.mark.parametrize("base", ["Cnn6", "LeeNet11", "MobileNetV2"])
def test_transfer_models(base):
    with skip_weight_init():
        m = quick_fill(models.make_transfer_model(base, classes_num=5, freeze_base=True)).eval()
    assert type(m).__name__ == f"Transfer_{base}"
    assert isinstance(m.base, models.MODELS[base].cls)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"fc_transfer.weight", "fc_transfer.bias"}
    spec = models.get_model_spec(f"Transfer_{base}")
    assert spec.base == base and spec.output == "log_softmax" and spec.cls is type(m)
    x = _waves(2, _eval_length(spec))
    with torch.no_grad():
        out = m(x)
    assert out["clipwise_output"].shape == (2, 5)
    torch.testing.assert_close(out["clipwise_output"].exp().sum(-1), torch.ones(2))
    assert out["embedding"].shape == (2, spec.embedding_dim)
    m2 = models.create_model(f"Transfer_{base}", classes_num=5)
    assert m2.fc_transfer.out_features == 5 and m2.base.fc1.weight.requires_grad   # not frozen


def test_frozen_transfer_base_stays_a_fixed_feature_extractor():
    """freeze_base: the base stays in eval mode while the model trains (BatchNorm statistics kept,
    no dropout), gets no gradient, and with mixup the embeddings are mixed (B/2 outputs)."""
    torch.manual_seed(0)
    m = models.make_transfer_model("Cnn6", classes_num=3, freeze_base=True).train()
    assert m.training and not m.base.training
    stats = m.base.bn0.running_mean.clone()
    x = _waves(4, 32000)
    out = m(x, torch.tensor([0.3, 0.7, 0.6, 0.4]))
    assert out["clipwise_output"].shape == (2, 3)
    out["clipwise_output"].sum().backward()
    assert torch.equal(m.base.bn0.running_mean, stats)
    assert all(p.grad is None for p in m.base.parameters()) and m.fc_transfer.weight.grad is not None
    with torch.no_grad():
        a, b = m(x)["clipwise_output"], m.eval()(x)["clipwise_output"]   # no dropout in the base
    torch.testing.assert_close(a, b)


def test_transfer_rejects_sed_base():
    with pytest.raises(PannsError, match="clip-level"):
        models.make_transfer_model("Cnn14_DecisionLevelMax", classes_num=3)


def test_transfer_load_from_pretrain(tmp_path):
    base = models.create_model("Cnn6")
    path = tmp_path / "Cnn6.pth"
    torch.save({"model": base.state_dict(), "iteration": 0, "sampler": {"indexes": np.arange(4)}}, path)
    m = models.make_transfer_model("Cnn6", classes_num=3)
    m.load_from_pretrain(str(path))   # the official method
    torch.testing.assert_close(m.base.fc1.weight, base.fc1.weight)


# pytorch_utils ----------------------------------------------------------------------------------
def test_do_mixup_reference():
    x = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    out = pu.do_mixup(x, torch.tensor([0.25, 0.75, 0.5, 0.5]))
    torch.testing.assert_close(out, torch.tensor([[1.5, 2.5], [5.0, 6.0]]))
    y = torch.randn(4, 1, 5, 3)
    lam = np.array([0.2, 0.8, 1.0, 0.0])
    torch.testing.assert_close(pu.do_mixup(y, lam)[1], y[2])


def test_interpolate_and_pad():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 3, 2)
    up = pu.interpolate(x, 4)
    assert up.shape == (1, 12, 2) and torch.equal(up[0, 4:8], x[0, 1].repeat(4, 1))
    padded = pu.pad_framewise_output(up, 15)
    assert padded.shape == (1, 15, 2) and torch.equal(padded[0, -1], x[0, -1])


def test_move_data_to_device_and_count():
    assert pu.move_data_to_device(np.zeros(3, np.float64), "cpu").dtype == torch.float32
    assert pu.move_data_to_device(np.zeros(3, np.int32), "cpu").dtype == torch.int64
    assert pu.move_data_to_device(["a"], "cpu") == ["a"]
    m = models.create_model("MobileNetV1")
    assert pu.count_parameters(m) == 4_796_303           # official count (frozen front end excluded)
    assert abs(pu.count_flops(m, 32000 * 10) / 1e9 - 3.614) < 0.001   # official counter's value


@pytest.mark.parametrize("name", ["Cnn14", "Cnn14_16k"])
def test_fft_spectrogram_equals_the_official_conv(name):
    """The cuFFT path of CUDA training (torch.stft with the window read from the frozen conv weights) gives the
    conv's power spectrogram (here on the CPU: pocketfft vs oneDNN), and weights that are not the windowed DFT
    are detected (the FFT path is then not taken)."""
    from panns.models import _fft_matches, _fft_spectrogram

    with skip_weight_init():
        model = models.create_model(name).eval()
    ext = model.spectrogram_extractor
    x = 0.1 * torch.randn(2, model.sample_rate * 2)
    ref, fft = ext(x), _fft_spectrogram(ext, x)
    assert fft.shape == ref.shape
    assert float((fft - ref).abs().max() / ref.abs().max()) < 1e-5
    assert _fft_matches(ext)
    with torch.no_grad():
        ext.stft.conv_imag.weight[3, 0, 5] += 0.01
    assert not _fft_matches(ext)


def test_fft_in_evaluation_reaches_every_front_end_and_only_when_set(monkeypatch):
    """``fft_in_evaluation`` (the evaluations of a CUDA training run) switches the eval-mode spectrogram to the FFT
    path in a model and in a transfer model's base; without it eval mode asks for the conv (inference: official
    numbers) and training mode for the FFT. The FFT itself runs on CUDA only (the test above checks its values)."""
    from panns import models as m

    asked = []
    real = m._spectrogram
    monkeypatch.setattr(m, "_spectrogram", lambda ext, x, fft: asked.append(fft) or real(ext, x, fft))
    with skip_weight_init():
        plain = m.create_model("Cnn6")
        transfer = m.make_transfer_model("Cnn6", classes_num=3)
    x = 0.1 * torch.randn(2, 32000)
    for model in (plain, transfer):
        asked.clear()
        with torch.no_grad():
            model.eval()(x)
            model.train()(x)
        assert asked == [False, True]
        assert m.fft_in_evaluation(model, True) == 1
        asked.clear()
        with torch.no_grad():
            model.eval()(x)
        assert asked == [True]
        m.fft_in_evaluation(model, False)


def test_compiled_forward_takes_the_fft_path_in_one_graph(monkeypatch):
    """The FFT spectrogram inside torch.compile, as the CUDA trainer sets it up (the FFT device list widened to the
    CPU here): after the eager check (``prepare_fft``) the training forward with mixup and staged SpecAugment is
    ONE graph that computes the STFT with the FFT, and so is the eval forward of ``fft_in_evaluation``. Checking
    the weights inside the graph (tensor versions, data pointers, allclose) broke it into pieces."""
    from panns import amp
    from panns import models as m
    from panns.training.core import external_spec_augment

    monkeypatch.setattr(m, "_FFT_DEVICES", ("cuda", "cpu"))
    with skip_weight_init():
        model = m.create_model("Cnn6").train()
    external_spec_augment(model, True)
    x, lam = 0.1 * torch.randn(4, 32000), torch.rand(4)

    def explained(*args):
        torch._dynamo.reset()
        ex = torch._dynamo.explain(model)(*args)
        fft = any(n.op in ("call_function", "call_method") and getattr(n.target, "__name__", n.target) == "stft"
                  for g in ex.graphs for n in g.graph.nodes)   # torch.stft (the conv module is named stft too)
        return ex.graph_break_count, ex.graph_count, fft

    amp.pin_ieee_fp32()
    try:
        model.stage_spec_augment(4, 32000, True)
        assert explained(x, lam) == (0, 1, False)    # never checked eagerly: the module's conv, still one graph
        assert m.prepare_fft(model) == 1
        model.stage_spec_augment(4, 32000, True)
        assert explained(x, lam) == (0, 1, True)
        m.fft_in_evaluation(model, True)
        model.eval()
        with torch.no_grad():
            assert explained(x) == (0, 1, True)
    finally:
        amp.unpin_ieee_fp32()
        torch._dynamo.reset()
