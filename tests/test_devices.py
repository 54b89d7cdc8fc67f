"""Device, rank and precision choice (pytorch/devices.py), with CUDA faked the way GPU boxes present it."""
import os

import pytest
import torch

from panns import devices
from panns.errors import PannsError


def fake_cuda(monkeypatch, count=1, capability=(9, 0), name="NVIDIA H100 80GB HBM3"):
    """Make torch.cuda look like a box with ``count`` GPUs of ``capability``; returns the set_device calls.

    The real ``torch.cuda.set_device`` rejects a device without an index (what a one-GPU box did to the
    old start-up code), so the fake does too."""
    calls = []

    def set_device(device):
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if device.index is None:
            raise ValueError("Expected a torch.device with a specified index or an integer, but got:cuda")
        if device.index >= count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        calls.append(device.index)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: calls[-1] if calls else 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_one_gpu_without_torchrun_gets_an_indexed_device(monkeypatch):
    calls = fake_cuda(monkeypatch)
    info = devices.init_distributed(cuda=True)
    assert info.device == torch.device("cuda", 0) and calls == [0]
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.distributed) == (0, 1, 0, True, False)
    assert devices.map_location(torch.device("cuda")) == torch.device("cuda", 0)
    assert devices.map_location("cpu") == torch.device("cpu")


def test_local_rank_picks_the_gpu_and_rejects_ranks_without_one(monkeypatch):
    fake_cuda(monkeypatch, count=2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.select_device(True) == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(PannsError, match=r"local rank 2 .* sees 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES=0,1\)"):
        devices.select_device(True)
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(PannsError, match="LOCAL_RANK='x'"):
        devices.select_device(True)


def test_cpu_choices(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.select_device(False) == torch.device("cpu")
    assert devices.select_device(True) == torch.device("cpu")
    assert "--cuda given but CUDA is not available" in caplog.text
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(PannsError, match="inconsistent"):
        devices.dist_env()


@pytest.mark.parametrize("cap, infer, train", [((9, 0), "bf16", "bf16"), ((8, 0), "bf16", "bf16"),
                                               ((8, 6), "bf16", "bf16"), ((7, 5), "fp16", "fp32"),
                                               ((7, 0), "fp16", "fp32"), ((6, 0), "fp32", "fp32")])
def test_auto_precision_from_capability(monkeypatch, cap, infer, train):
    """bf16 only where the GPU computes it natively: is_bf16_supported() also says yes on V100/T4 (emulated)."""
    fake_cuda(monkeypatch, capability=cap)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.resolve_precision("auto", "cuda:0") == infer
    assert devices.resolve_precision("auto", torch.device("cuda", 0), training=True) == train
    assert devices.native_bf16("cuda:0") == (cap >= (8, 0))
    assert devices.resolve_precision("fp16", "cuda:0", training=True) == "fp16"  # explicit choices are kept


def test_auto_precision_on_cpu(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda *a: False)
    assert devices.resolve_precision("auto", "cpu") == "fp32" == devices.resolve_precision("auto", "cpu", training=True)
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda *a: True)
    assert devices.resolve_precision("auto", "cpu") == "bf16"
    assert devices.resolve_precision("auto", "cpu", training=True) == "fp32"  # CPU training keeps fp32
    with pytest.raises(PannsError, match="fp32, bf16, fp16, auto"):
        devices.resolve_precision("half", "cpu")


def test_describe_and_backends(monkeypatch):
    fake_cuda(monkeypatch, capability=(8, 0), name="NVIDIA A100")
    assert devices.describe("cuda:0") == "NVIDIA A100 (cuda:0, sm80, native bf16: True)"
    before = torch.backends.cudnn.benchmark
    try:
        devices.configure_backends("cuda:0", deterministic=False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        devices.configure_backends("cuda:0", deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before, False
        torch.use_deterministic_algorithms(False)
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)


def test_exit_process_after_a_process_group_flushes_and_exits(tmp_path):
    """A process that had a process group (with DDP, which keeps it alive) leaves through os._exit with its
    output and logs flushed and status 0; without a group exit_process returns and the program goes on."""
    import subprocess
    import sys

    from test_ddp import _free_port
    from test_train import REPO

    port = _free_port()
    log = tmp_path / "run.log"
    code = f"""
import logging, torch, torch.distributed as dist
from panns import devices
logging.basicConfig(filename={str(log)!r}, level=logging.INFO)
devices.exit_process(0)
print("no group: went on")
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
devices.teardown()
logging.getLogger("panns").info("logged before the exit")
print("printed before the exit", end="")
devices.exit_process(0)
raise SystemExit(3)
"""
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "pytorch")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == "no group: went on\nprinted before the exit"
    assert "logged before the exit" in log.read_text()
