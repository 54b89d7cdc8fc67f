"""benchmarks/gpu_check.sh --dry-run: every stage of the prepared GPU check runs on the CPU at toy size, so the
script is known to work before the first GPU box runs it unchanged."""
import os
import sys
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
    assert "10% takes a forward of" in table
    assert all("FLOP/s of" in line for line in table.splitlines() if line.startswith("| ceiling |")), table
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


def test_model_flops_are_the_layers_arithmetic():
    """The FLOPs behind the ceiling and eval rows' TFLOP/s, against Cnn6's layers counted by hand (1-s clips at
    32 kHz: 101 frames x 64 mel bins): the STFT as two 1024-tap convs to 513 bins and the mel matmul, then four
    5x5 conv blocks (2x2 pooling after each) and two linear layers. A training example is two clips through the
    frozen front end, mixed, then the body's forward and backward (gradients for inputs and weights: 3x)."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import gpu_check

    frames, bins = 101, 64
    front = 2 * 2 * 513 * frames * 1024 + 2 * frames * 513 * bins
    body, cin = 0, 1
    for cout in (64, 128, 256, 512):
        body += 2 * frames * bins * cout * cin * 25
        frames, bins, cin = frames // 2, bins // 2, cout
    body += 2 * 512 * 512 + 2 * 512 * 527
    flops = gpu_check.model_flops("Cnn6", 527, 32000, batch=3)
    assert flops == {"eval": front + body, "train": 2 * front + 3 * body}
