"""Our models against stored outputs of the official PANNs code (tests/golden/, all 30 classes).

A model matches when its state_dict keys (in order) and shapes are the official ones and every
output is within 2e-4 of the official output, relative to that output's largest magnitude, under
the same deterministic weights (tests/golden/fill.py; STFT/mel matrices come from the model).
"""
import json
import os
import sys

import numpy as np
import pytest
import torch

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
sys.path.insert(0, GOLDEN)
from fill import fill_state_dict, test_waveform as make_waveform  # noqa: E402
from model_helpers import single_thread, skip_weight_init  # noqa: E402
from specs import CORE, SPECS  # noqa: E402

from panns import models
from panns.pytorch_utils import count_parameters

OFFICIAL_PARAMS = json.load(open(os.path.join(GOLDEN, "official_params.json")))

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


_FILL_CACHE = {}
_SHARED = ("conv_block", "fc1.", "bn0.")   # the Cnn14 trunk, shared by 16 of the 30 models


class _Capture:
    """Stand-in model for fill_state_dict: exposes some tensors, captures the filled ones."""

    def __init__(self, sd):
        self.sd, self.filled = sd, None

    def state_dict(self):
        return self.sd

    def load_state_dict(self, new, strict=True):
        self.filled = new


def fill(model, head, head_scale):
    """fill_state_dict(model, head, head_scale), reusing the (deterministic, key-seeded) values of
    trunk tensors already generated for an earlier model with the same key and shape."""
    sd = model.state_dict()
    cache_key = {k: (k, tuple(t.shape), head_scale if k.startswith(head) else None) for k, t in sd.items()}
    cap = _Capture({k: t for k, t in sd.items() if cache_key[k] not in _FILL_CACHE})
    fill_state_dict(cap, head, head_scale)
    new = {}
    for k in sd:
        if cache_key[k] in _FILL_CACHE:
            new[k] = _FILL_CACHE[cache_key[k]]
        else:
            new[k] = cap.filled[k]
            if k.startswith(_SHARED):
                _FILL_CACHE[cache_key[k]] = new[k]
    model.load_state_dict(new, strict=True)
    return model


def _build(name):
    kw = {k: v for k, v in SPECS[name].items() if k != "cls"}
    with skip_weight_init():
        return models.MODELS[name].cls(**kw), kw


def test_golden_covers_the_registry():
    assert set(SPECS) == set(models.OFFICIAL_NAMES) and set(SPECS) <= set(models.model_names())
    assert len(SPECS) == 30 and set(CORE) <= set(SPECS)


@pytest.mark.parametrize("name", list(SPECS))
def test_matches_official(name):
    ref = np.load(os.path.join(GOLDEN, name + ".npz"))
    model, kw = _build(name)
    sd = model.state_dict()
    assert list(sd) == ref["keys"].tolist(), "state_dict keys or their order differ"
    assert [",".join(map(str, t.shape)) for t in sd.values()] == ref["shapes"].tolist()
    if name in OFFICIAL_PARAMS:
        assert count_parameters(model) == OFFICIAL_PARAMS[name]["trainable_params"]
        assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]["all_params"]

    fill(model, str(ref["head"]), float(ref["head_scale"])).eval()
    with torch.no_grad():
        out = model(make_waveform(kw["sample_rate"]))
    expected = {k[4:] for k in ref.files if k.startswith("out_")}
    assert set(out) == expected
    for key in expected:
        a, b = out[key].float().numpy(), ref["out_" + key]
        assert a.dtype == np.float32 and a.shape == b.shape, key
        err = float(np.abs(a - b).max() / (np.abs(b).max() + 1e-8))
        assert err < 2e-4, f"{key}: max relative error {err:.2e}"


def test_the_official_import_paths_give_these_classes():
    """Code written against the official layout puts pytorch/ on sys.path and imports ``models`` and
    ``pytorch_utils`` (the official scripts, the notebooks and fine-tuning repositories built on them, the
    conformance kit): those names are the package's, not copies."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(GOLDEN))
    code = ("import sys; sys.path.insert(0, 'pytorch'); import models, pytorch_utils, panns.models as pm; "
            "from models import *; "
            "assert all(getattr(models, n) is getattr(pm, n) for n in pm.OFFICIAL_NAMES), 'models'; "
            "assert pytorch_utils.do_mixup is pm.do_mixup and callable(pytorch_utils.move_data_to_device); "
            "print(len(pm.OFFICIAL_NAMES), Cnn14.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["30", "panns.models"]
