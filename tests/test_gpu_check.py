"""benchmarks/gpu_check.sh --dry-run: every stage of the prepared GPU check runs on the CPU at toy size, so the
script is known to work before the first GPU box runs it unchanged."""
import os
import subprocess

from test_train import REPO


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    table = (out / "table.md").read_text()
    stages = {line.split("|")[1].strip() for line in table.splitlines()[2:]}
    assert stages == {"device", "golden", "specaugment", "graph breaks", "ceiling", "workspace", "loader", "train",
                      "profile", "eval", "resume", "inference", "extract", "fine-tune", "total"}, table
    assert "graph breaks: 0" in table and "ceiling" in table and "clips/s with start-up excluded" in table
    assert "same output and RNG state: True" in table
    assert "the default run's last evaluation" in table and "of wall time at the official cadence" in table
    assert "by stage: device" in table and "fine-tune" in table.splitlines()[-1]
    assert "FAIL" not in table and "weights bit-equal: True" in table and "exact: True" in table
    assert r.stdout.rstrip().endswith("0 failed")


def test_gpu_check_deadline_lists_the_stages_it_did_not_start(tmp_path):
    """--deadline: past it no stage starts; each is a FAIL row saying so, and the table is still printed (a device
    lease always ends with one)."""
    out = tmp_path / "out"
    r = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--dry-run", "--out", str(out),
                        "--only", "device,specaugment", "--deadline", "1e-9"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    table = (out / "table.md").read_text()
    for stage in ("device", "specaugment"):
        assert f"| {stage} | stage | not run: " in table and "(--deadline 0)" in table, table
    assert r.stdout.rstrip().endswith("2 failed")
