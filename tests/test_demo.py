"""The README's main command (scripts/demo.sh) end to end in its reduced mode, and the demo's checks."""
import csv
import json
import os
import subprocess
import sys

import h5py

from panns.demo import checks as dc
from panns.demo.data import EXAMPLE_EVENTS, make_example_clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_quick_runs_every_stage(tmp_path):
    out = tmp_path / "demo out"   # a space in the path must not break the script
    env = dict(os.environ, DEMO_QUICK="1")
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), str(out)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in range(1, 10):
        assert f"==== {stage}/9 " in r.stdout
    assert "Sound event detection result (time_steps x classes_num)" in r.stdout
    assert (out / "results" / "mAP.png").stat().st_size > 0
    assert json.load(open(out / "results" / "eval_per_class.json"))["clips"] == 10   # main.py evaluate ran
    assert (out / "results" / "example_clip.png").stat().st_size > 0
    with h5py.File(out / "embeddings.h5", "r") as f:
        assert f["embedding"].shape == (10, 512)  # 10 classes x 1 eval clip, Cnn6 embedding
    assert list((out / "finetune_ws").rglob("best.pth")), "fine-tune wrote no checkpoint"
    # every stage was checked against the generated truth and the table was printed
    rows = [json.loads(line) for line in open(out / "checks.jsonl")]
    assert len(rows) == 7 and all(not r["result"].startswith("no result") for r in rows), rows
    assert "| stage | result | expected | |" in r.stdout and (out / "checks.md").is_file()
    assert "Done in " in r.stdout


def test_demo_out_dir_of_the_users_is_not_emptied_and_relative_is_from_cwd(tmp_path):
    """demo.sh replaces dataset/, workspace/, results/ in OUT_DIR: a folder it did not make is refused (its dataset/
    was deleted); a relative OUT_DIR is taken from the current directory (it was made under the repository)."""
    import shutil

    stub = tmp_path / "python"   # stops the demo at its first python step, after the clean-up
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub), DEMO_QUICK="1")
    proj = tmp_path / "proj"
    (proj / "dataset").mkdir(parents=True)
    (proj / "dataset" / "precious.wav").write_bytes(b"x")
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), str(proj)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "already holds files the demo did not make" in r.stderr, r.stderr
    assert (proj / "dataset" / "precious.wav").exists()
    name = f"demo_rel_{os.getpid()}"
    try:
        r = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), name], env=env, cwd=str(tmp_path),
                           capture_output=True, text=True, timeout=60)
        assert (tmp_path / name / ".panns_demo_out").exists() and not os.path.exists(os.path.join(REPO, name))
        # a second run in the folder the demo made goes ahead (up to the stub python)
        r = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), name], env=env, cwd=str(tmp_path),
                           capture_output=True, text=True, timeout=60)
        assert "did not make" not in r.stderr, r.stderr
    finally:
        shutil.rmtree(os.path.join(REPO, name), ignore_errors=True)


def test_example_clip_truth_comes_from_the_generator(tmp_path):
    truth = make_example_clip(str(tmp_path / "clip.wav"))
    with open(truth, newline="") as f:
        rows = [(r["label"], float(r["onset"]), float(r["offset"])) for r in csv.DictReader(f)]
    assert rows == [tuple(e) for e in EXAMPLE_EVENTS]


def test_event_matching_tolerance_and_iou():
    truth = [("Clicks", 0.7, 3.1), ("Low tone", 1.0, 2.7)]
    close = [("Clicks", 0.9, 3.0), ("Low_tone", 0.6, 3.5)]       # Low tone: offset 0.8 s late, IoU 0.59
    assert [m[1] for m in dc.match_events(close, truth)] == [True, True]
    far = [("Clicks", 2.5, 4.0), ("Rumble", 1.0, 2.7)]            # IoU 0.15; a wrong class does not count
    assert [m[1] for m in dc.match_events(far, truth)] == [False, False]
    assert dc.interval_iou([(0.0, 1.0), (2.0, 3.0)], (0.0, 3.0)) == __import__("pytest").approx(2 / 3, abs=0.01)


def test_table_fails_on_a_failed_check(tmp_path):
    stats = tmp_path / "statistics.json"
    stats.write_text(json.dumps({"test": [{"iteration": 60, "mAP": 0.2, "degenerate_classes": 0}]}))
    script = os.path.join(REPO, "utils", "demo_checks.py")
    r = subprocess.run([sys.executable, script, "map", "--out", str(tmp_path), "--statistics", str(stats)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "✘" in r.stdout
    r = subprocess.run([sys.executable, script, "finetune", "--out", str(tmp_path), "--metrics", "missing.jsonl"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0   # a missing output is a failed row, not a crash
    r = subprocess.run([sys.executable, script, "table", "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "0/2 checks passed" in r.stdout
