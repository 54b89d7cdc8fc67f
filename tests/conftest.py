"""Shared pytest setup and small fixtures (pytest.ini puts pytorch/ on the path, so `panns` imports)."""
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(2)


@pytest.fixture
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def audioset_labels_csv(tmp_path_factory) -> str:
    """A 527-class label CSV in the AudioSet format (synthetic names), for models with the AudioSet head."""
    path = tmp_path_factory.mktemp("labels") / "class_labels_indices.csv"
    with open(path, "w") as f:
        f.write("index,mid,display_name\n")
        for i in range(527):
            f.write(f'{i},/m/x{i:04d},"Class {i}, synthetic"\n')
    return str(path)
