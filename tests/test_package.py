"""``pip install .`` gives one ``panns`` package that works from any folder, offline (~5 s).

The sources are copied to a temporary folder first so that the build leaves nothing in the
checkout; the virtual environment sees the system's packages (torch etc.), nothing is downloaded.
"""
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from panns import checkpoint, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setuptools_ok() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)


@pytest.mark.skipif(not _setuptools_ok(), reason="building the wheel needs setuptools >= 70.1")
def test_pip_install_gives_one_panns_package_usable_from_another_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pytorch", "utils", "metadata"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    site = glob.glob(str(venv / "lib" / "python*" / "site-packages"))[0]
    installed = sorted(n for n in os.listdir(site) if not n.startswith("_") and n != "__pycache__")
    assert [n for n in installed if not n.endswith(".dist-info") and not n.endswith(".pth")] == ["panns"]
    assert os.path.isfile(os.path.join(site, "panns", "metadata", "class_labels_indices.csv"))

    # a checkpoint and a clip somewhere else; run from a third folder
    torch.manual_seed(0)
    model = models.create_model("Cnn6").eval()
    ckpt = tmp_path / "Cnn6.pth"
    torch.save({"model": model.state_dict(), "config": checkpoint.ModelConfig.from_registry("Cnn6").to_dict()},
               str(ckpt))
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), (0.1 * np.random.RandomState(0).randn(16000)).astype(np.float32), 32000)
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import panns, sys; m = panns.load(sys.argv[1], backend='torch'); tags = m.tag(sys.argv[2], top_k=3); "
            "print(panns.__file__); print(panns.__version__); print(tags[0][0] in panns.labels, len(tags))")
    proc = subprocess.run([py, "-c", code, str(ckpt), str(wav)], cwd=str(work), env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path, version, ok = proc.stdout.splitlines()[-3:]
    assert path.startswith(site) and ok == "True 3"
    import panns

    assert version == panns.__version__
    proc = subprocess.run([str(venv / "bin" / "panns"), "--help"], cwd=str(work), env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "audio_tagging" in proc.stdout
    proc = subprocess.run([py, "-m", "panns", "--version"], cwd=str(work), env=env, capture_output=True, text=True)
    assert proc.stdout.strip() == f"panns {panns.__version__}"
    # no generic top-level names leak into site-packages
    proc = subprocess.run([py, "-c", "import models"], cwd=str(work), env=env, capture_output=True, text=True)
    assert proc.returncode != 0
