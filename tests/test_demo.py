"""Smoke test: the README's main command (scripts/demo.sh) end to end, in its reduced mode."""
import os
import subprocess

import h5py
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_quick_runs_every_stage(tmp_path):
    out = tmp_path / "demo out"   # a space in the path must not break the script
    env = dict(os.environ, DEMO_QUICK="1")
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), str(out)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in range(1, 10):
        assert f"==== {stage}/9 " in r.stdout
    assert "Using CPU." in r.stdout and "Sound event detection result (time_steps x classes_num)" in r.stdout
    assert (out / "results" / "mAP.png").stat().st_size > 0
    assert (out / "results" / "example_clip.png").stat().st_size > 0
    with h5py.File(out / "embeddings.h5", "r") as f:
        assert f["embedding"].shape == (10, 512)  # 10 classes x 1 eval clip, Cnn6 embedding
    best = [p for p in (out / "finetune_ws").rglob("best.pth")]
    assert best, "fine-tune wrote no checkpoint"
