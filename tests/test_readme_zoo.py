"""The README's model-zoo table holds what the official counter prints (benchmarks/count_flops.py)."""
import os
import sys

import pytest

from panns import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from count_flops import count  # noqa: E402


def _zoo_rows():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split("## Model zoo", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].split(" ")[0] in models.MODELS:
            rows[cells[0].split(" ")[0]] = (cells[2], cells[3])
    return rows


def test_every_model_has_a_row():
    assert set(_zoo_rows()) == set(models.model_names())


@pytest.mark.parametrize("name", sorted(_zoo_rows()))
def test_parameters_and_flops_equal_the_counter(name):
    params, gflops = _zoo_rows()[name]
    counted_params, flops = count(name)
    assert params == f"{counted_params:,}"
    assert gflops == f"{flops / 1e9:.2f}"
    if name == "Cnn14_16k":
        assert gflops == "40.64"      # not 21.1, as an earlier README said
