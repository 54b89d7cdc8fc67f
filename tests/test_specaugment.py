"""SpecAugment (pytorch/spec_augment.py): the one-mask version gives torchlibrosa's output and leaves the torch
RNG exactly where torchlibrosa leaves it, so a training step (and every later random draw) is unchanged."""
import copy
import os
import sys

import pytest
import torch
from torchlibrosa.augmentation import SpecAugmentation as OfficialSpecAugmentation

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
from model_helpers import quick_fill, single_thread, skip_weight_init  # noqa: E402

from panns import models
from panns.errors import PannsError
from panns.spec_augment import SpecAugmentation

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def _run(cls, x, seed, freq_width):
    """(output or the exception, RNG state afterwards) of one training-mode call on a copy of x."""
    torch.manual_seed(seed)
    try:
        out = cls(time_drop_width=64, time_stripes_num=2, freq_drop_width=freq_width, freq_stripes_num=2)(x.clone())
    except (RuntimeError, PannsError) as e:
        out = e
    return out, torch.get_rng_state()


# T < 64 frames: torchlibrosa succeeds only while every drawn time stripe is shorter than T (seed-dependent).
@pytest.mark.parametrize("shape, freq_width", [((4, 1, 101, 64), 8), ((3, 1, 64, 64), 8), ((2, 1, 40, 128), 16),
                                               ((5, 1, 501, 128), 16), ((2, 3, 33, 64), 8), ((1, 1, 70, 10), 16)])
def test_same_output_and_rng_as_torchlibrosa(shape, freq_width):
    x = torch.randn(shape)
    x[0, 0, 0, 0] = float("nan")   # zeroed like a slice assignment would, if inside a stripe
    outcomes = set()
    for seed in range(6):
        theirs, their_rng = _run(OfficialSpecAugmentation, x, seed, freq_width)
        ours, our_rng = _run(SpecAugmentation, x, seed, freq_width)
        assert torch.equal(our_rng, their_rng), (seed, shape)
        if isinstance(theirs, Exception):
            assert isinstance(ours, PannsError) and "stripe" in str(ours), (seed, shape, ours)
            outcomes.add("error")
        else:
            assert not isinstance(ours, Exception), (seed, shape, ours)
            assert torch.equal(ours.isnan(), theirs.isnan()) and torch.equal(ours.nan_to_num(), theirs.nan_to_num())
            assert bool((ours == 0).any())
            outcomes.add("ok")
    if shape[2] >= 64 and shape[3] >= freq_width:
        assert outcomes == {"ok"}


def test_eval_is_identity_and_no_state():
    m = SpecAugmentation(64, 2, 8, 2)
    assert m.state_dict() == {} and not list(m.parameters())
    x = torch.randn(2, 1, 80, 64)
    state = torch.get_rng_state()
    assert m.eval()(x) is x and torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="batch, channels, time, freq"):
        m.train()(x[0])


def test_training_step_bit_identical_to_torchlibrosa():
    """Cnn6 with our SpecAugment vs the same weights with torchlibrosa's: loss, gradients, updated weights and the
    RNG state after a step are bit-equal (dropout draws come after SpecAugment's, so they also line up)."""
    with skip_weight_init():
        ours = quick_fill(models.create_model("Cnn6", classes_num=5)).train()
    theirs = copy.deepcopy(ours)
    theirs.spec_augmenter = OfficialSpecAugmentation(time_drop_width=64, time_stripes_num=2, freq_drop_width=8,
                                                     freq_stripes_num=2)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x, y = 0.1 * torch.randn(4, 32000), (torch.rand(2, 5) > 0.5).float()   # mixup: 4 clips -> 2 mixes
    results = []
    for model in (ours, theirs):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        torch.manual_seed(1)
        loss = torch.nn.functional.binary_cross_entropy(model(x, torch.rand(4))["clipwise_output"], y)
        loss.backward()
        opt.step()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad],
                        [p.detach().clone() for p in model.parameters()], torch.get_rng_state()))
    (l1, g1, p1, r1), (l2, g2, p2, r2) = results
    assert torch.equal(l1, l2) and torch.equal(r1, r2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2)) and all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_compiles_without_graph_breaks():
    """torch._dynamo traces the module in one graph (the RNG draws run eagerly, excluded from compilation)."""
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(SpecAugmentation(64, 2, 8, 2).train())(torch.randn(3, 1, 100, 64))
    finally:
        torch._dynamo.reset()
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
