"""``pip install .`` gives one ``panns`` package that works from any folder, offline (~5 s).

The sources are copied to a temporary folder first so that the build leaves nothing in the
checkout. The wheel is built by the interpreter running the tests (its own setuptools where
new enough, so nothing is downloaded; else in pip's build isolation) and installed into a new virtual environment that sees this
interpreter's packages (torch etc.) through a ``.pth`` file.
"""
import glob
import os
import shutil
import site
import subprocess
import sys
import sysconfig

import numpy as np
import soundfile as sf
import torch

from panns import checkpoint, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setuptools_ok() -> bool:
    """This interpreter has setuptools >= 70.1, which builds wheels by itself (older ones need the separate
    ``wheel`` package for ``bdist_wheel``, which a stock Python may lack)."""
    try:
        import setuptools
    except ImportError:
        return False
    return tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)


def _version() -> str:
    import panns

    return panns.__version__


def _copy_sources(src) -> None:
    """What a clone holds for packaging, copied so that builds leave nothing in the checkout."""
    src.mkdir()
    for name in ("pytorch", "utils", "metadata"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=shutil.ignore_patterns("__pycache__"),
                        symlinks=True)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)


def _venv_seeing_these_packages(venv) -> str:
    """A new venv (no pip of its own) whose site-packages points at this interpreter's, so the installed
    wheel finds torch etc.; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    new_site = glob.glob(str(venv / "lib" / "python*" / "site-packages"))[0]
    ours = [p for p in [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
            if os.path.isdir(p)]
    with open(os.path.join(new_site, "_outer_site.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys(ours)) + "\n")
    return str(venv / "bin" / "python")


def test_pip_install_gives_one_panns_package_usable_from_another_folder(tmp_path):
    src = tmp_path / "src"
    _copy_sources(src)
    venv = tmp_path / "venv"
    py = _venv_seeing_these_packages(venv)
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    dist = tmp_path / "dist"
    # With a new enough setuptools here the build uses it, offline; otherwise pip builds in isolation with the
    # setuptools pyproject.toml asks for, from the package index pip is configured with (as a user's pip would).
    isolation = ["--no-build-isolation"] if _setuptools_ok() else []
    build_env = env if isolation else {k: v for k, v in env.items() if k != "PIP_NO_INDEX"}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                           "-w", str(dist), str(src)], env=build_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheels = glob.glob(str(dist / "*.whl"))
    assert len(wheels) == 1, wheels
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheels[0]],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    site_dir = glob.glob(str(venv / "lib" / "python*" / "site-packages"))[0]
    installed = sorted(n for n in os.listdir(site_dir) if not n.startswith("_") and n != "__pycache__")
    assert [n for n in installed if not n.endswith(".dist-info") and not n.endswith(".pth")] == ["panns"]
    # every module of the source tree is in the wheel (sub-packages too: a fixed package list once left out
    # panns.training, so training and fine-tuning failed after a normal install)
    def modules(root) -> set:
        return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
                if f.endswith(".py")}

    source_modules = modules(os.path.join(REPO, "pytorch", "panns"))
    assert {"training/core.py", "demo/data.py"} <= source_modules
    assert source_modules - modules(os.path.join(site_dir, "panns")) == set()
    with open(os.path.join(site_dir, "panns", "metadata", "class_labels_indices.csv"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) == 528   # the file itself (the checkout holds a link), header + 527
    assert [n for n in installed if n.endswith(".dist-info")] == [f"panns_audio-{_version()}.dist-info"]

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
            "import panns.main, panns.finetune_template, panns.plot_statistics, panns.demo.data; "
            "print(panns.__file__); print(panns.__version__); print(tags[0][0] in panns.labels, len(tags))")
    proc = subprocess.run([py, "-c", code, str(ckpt), str(wav)], cwd=str(work), env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path, version, ok = proc.stdout.splitlines()[-3:]
    assert path.startswith(site_dir) and ok == "True 3"
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


def test_editable_install_is_a_plain_path_entry_into_the_checkout(tmp_path):
    """``pip install -e .`` writes a static ``.pth`` naming the source root (what pyright, jedi and every editor
    follow; an import-hook finder they cannot), and ``panns.models.Cnn14`` resolves to the checkout's class."""
    src = tmp_path / "src"
    _copy_sources(src)
    py = _venv_seeing_these_packages(tmp_path / "venv")
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    isolation = ["--no-build-isolation"] if _setuptools_ok() else []
    build_env = env if isolation else {k: v for k, v in env.items() if k != "PIP_NO_INDEX"}
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", *isolation,
                           "-e", str(src)], env=build_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    site_dir = glob.glob(str(tmp_path / "venv" / "lib" / "python*" / "site-packages"))[0]
    entries = [open(os.path.join(site_dir, n), encoding="utf-8").read().split()
               for n in os.listdir(site_dir) if n.endswith(".pth") and n != "_outer_site.pth"]
    assert entries == [[str(src / "pytorch")]], entries   # a path, no `import` line (no finder hook)
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = "import inspect, panns.models as m; print(inspect.isclass(m.Cnn14), inspect.getsourcefile(m.Cnn14))"
    proc = subprocess.run([py, "-c", code], cwd=str(work), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", str(src / "pytorch" / "panns" / "models.py")]
