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
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
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
    assert "CUDA asked for (--cuda, device='cuda') but CUDA is not available; running on the CPU" in caplog.text
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


LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "MASTER_ADDR",
               "MASTER_PORT", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS")


@pytest.fixture
def clean_launch_env(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_slurm_tasks_and_sbatch_scripts(clean_launch_env):
    """An srun task takes rank, world and local rank from SLURM; an sbatch script (SLURM_PROCID/SLURM_NTASKS,
    no step) stays one process; torchrun's variables win over SLURM's (torchrun started by srun)."""
    env = clean_launch_env
    env.setenv("SLURM_PROCID", "0")
    env.setenv("SLURM_LOCALID", "0")
    env.setenv("SLURM_NTASKS", "8")
    assert devices.launcher() == "single" and devices.dist_env() == (0, 1, 0)
    env.setenv("SLURM_STEP_NUM_TASKS", "8")
    env.setenv("SLURM_PROCID", "5")
    env.setenv("SLURM_LOCALID", "1")
    assert devices.launcher() == "slurm" and devices.dist_env() == (5, 8, 1)
    env.setenv("SLURM_PROCID", "9")
    with pytest.raises(PannsError, match="SLURM_PROCID / SLURM_STEP_NUM_TASKS = 9 / 8"):
        devices.dist_env()
    env.setenv("WORLD_SIZE", "2")
    env.setenv("RANK", "1")
    env.setenv("LOCAL_RANK", "0")
    assert devices.launcher() == "torchrun" and devices.dist_env() == (1, 2, 0)


def test_one_visible_gpu_per_task_is_cuda0_whatever_the_local_rank(clean_launch_env):
    """srun --gpus-per-task=1 (or any launcher binding one GPU per process through CUDA_VISIBLE_DEVICES):
    local rank 3 sees one GPU and uses it; without such a binding a rank beyond the GPUs is still an error."""
    env = clean_launch_env
    calls = fake_cuda(env, count=1)
    env.setenv("SLURM_STEP_NUM_TASKS", "8")
    env.setenv("SLURM_PROCID", "7")
    env.setenv("SLURM_LOCALID", "3")
    env.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert devices.select_device(True) == torch.device("cuda", 0)
    env.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(PannsError, match=r"local rank 3 needs GPU 3 but this process sees 1 GPU\(s\); "
                                         r".*--gpus-per-task"):
        devices.select_device(True)
    fake_cuda(env, count=4)
    env.setenv("SLURM_STEP_NUM_TASKS", "8")
    env.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    env.setenv("SLURM_LOCALID", "3")
    assert devices.select_device(True) == torch.device("cuda", 3)   # one task per node sees all: its local rank
    assert devices.select_device(True, 1) == torch.device("cuda", 1)  # an explicit index is kept
    assert calls == []


def test_process_group_from_slurm_needs_a_master_and_fails_fast(clean_launch_env):
    """srun tasks: rank and world go to the process group explicitly, with the 30-min default timeout;
    without MASTER_ADDR/MASTER_PORT one line says what to export."""
    import datetime

    env = clean_launch_env
    env.setattr(torch.cuda, "is_available", lambda: False)
    env.setenv("SLURM_STEP_NUM_TASKS", "4")
    env.setenv("SLURM_PROCID", "2")
    env.setenv("SLURM_LOCALID", "0")
    seen = {}
    env.setattr(devices.dist, "is_initialized", lambda: False)
    env.setattr(devices.dist, "init_process_group", lambda **kw: seen.update(kw))
    with pytest.raises(PannsError, match=r"^slurm started 4 processes but MASTER_ADDR and MASTER_PORT are not set; "
                                         r"export MASTER_ADDR="):
        devices.init_distributed(cuda=False)
    env.setenv("MASTER_ADDR", "node01")
    env.setenv("MASTER_PORT", "29500")
    info = devices.init_distributed(cuda=False)
    assert (info.rank, info.world_size, info.local_rank, info.device.type) == (2, 4, 0, "cpu")
    assert seen == {"backend": "gloo", "rank": 2, "world_size": 4, "timeout": datetime.timedelta(minutes=30)}
    devices.init_distributed(cuda=False, timeout=datetime.timedelta(minutes=5))
    assert seen["timeout"] == datetime.timedelta(minutes=5)


def test_worker_cpus_from_the_ranks_own_set(monkeypatch):
    """Ranks that share the node's CPU set split it; ranks with sets of their own (SLURM --cpus-per-task
    binding, one cpuset per container) keep them whole; ranks on other nodes do not count."""
    from panns.devices import DistInfo
    from panns.training import config as tl

    info = DistInfo(rank=0, world_size=4)
    monkeypatch.setattr(devices, "hostname", lambda: "n1")
    monkeypatch.setattr(tl.dg, "usable_cpu_set", lambda: set(range(16)))
    shared = [("n1", list(range(16)))] * 4
    monkeypatch.setattr(tl, "all_gather_object", lambda info, obj: shared)
    assert tl.cpu_share(info) == 4
    monkeypatch.setattr(tl, "all_gather_object", lambda info, obj: [("n1", list(range(16)))] * 2 + [("n2", [0])] * 2)
    assert tl.cpu_share(info) == 8
    monkeypatch.setattr(tl.dg, "usable_cpu_set", lambda: {4, 5, 6, 7})
    own = [("n1", list(range(4 * r, 4 * r + 4))) for r in range(4)]
    monkeypatch.setattr(tl, "all_gather_object", lambda info, obj: own)
    assert tl.cpu_share(info) == 4
    assert tl.cpu_share(DistInfo()) == 4   # one process: its set


def test_shared_memory_estimate_and_warning():
    """The /dev/shm a node's loaders need (the official 8-GPU Cnn14 recipe on CUDA: 4 examples per GPU with mixup,
    8 training workers; evaluation batches of 4x the per-process batch from 4 workers; int16 rows on both)
    and the warning naming the container flag when it is short."""
    from panns import data_generator as dg
    from panns.training import config as tl
    from panns.training.audioset import eval_batch_size

    clip, classes = 320000, 527
    train = dg.shm_bytes(8, clip, classes, workers=8, raw=True)
    assert train == 8 * dg._ShmPool.PIPELINE * 8 * (2 * clip + classes)
    batch = eval_batch_size(0, 4, 32, torch.device("cuda"))
    assert batch == 16
    evaluation = dg.shm_bytes(batch, clip, classes, workers=4, raw=True)
    assert evaluation == 4 * dg._ShmPool.PIPELINE * batch * (2 * clip + classes)
    per_rank = train + evaluation
    assert 0.29 < per_rank / 2**30 < 0.32
    assert tl.check_shared_memory(per_rank, 8, available=64 * 2**30) is None
    assert tl.check_shared_memory(per_rank, 8, available=None) is None
    assert tl.check_shared_memory(per_rank, 8, available=4 * 2**30) is None  # 2.4 GiB + a quarter fits
    line = tl.check_shared_memory(per_rank, 8, available=3 * 2**30)
    assert line.startswith("/dev/shm has 3.0 GiB free but the loader workers of 8 process(es) on this node need "
                           "about 2.4 GiB") and "--shm-size=4g" in line and "\n" not in line
    assert dg.shm_available("/nonexistent/shm") is None


def test_sync_bn_default_and_the_batch_line():
    """SyncBN is on by default for several CUDA processes with fewer than 16 examples each; --no_sync_bn and
    --sync_bn decide otherwise; on the CPU it is refused when asked for; one line states the batch semantic."""
    from panns.devices import DistInfo
    from panns.training import config as tl
    from panns.training.config import TrainConfig

    gpu8 = DistInfo(rank=0, world_size=8, device=torch.device("cuda", 0))
    cpu2 = DistInfo(rank=0, world_size=2)
    cfg = TrainConfig(workspace="ws", world_size=8)
    assert tl.resolve_sync_bn(cfg, gpu8) is True
    assert tl.resolve_sync_bn(TrainConfig(workspace="ws", world_size=8, per_rank_batch_size=16), gpu8) is False
    assert tl.resolve_sync_bn(TrainConfig(workspace="ws", world_size=8, sync_bn=False), gpu8) is False
    assert tl.resolve_sync_bn(TrainConfig(workspace="ws"), DistInfo()) is False
    assert tl.resolve_sync_bn(TrainConfig(workspace="ws", world_size=2), cpu2) is False
    with pytest.raises(PannsError, match="--sync_bn needs CUDA"):
        tl.resolve_sync_bn(TrainConfig(workspace="ws", world_size=2, sync_bn=True), cpu2)
    assert tl.batch_line(cfg, gpu8, True) == (
        "Batch: global 32 = 4 per process x 8 processes (mixup: twice as many clips read); learning rate 0.001 "
        "as given (no scaling rule applied); BatchNorm over 32 examples (SyncBatchNorm); run folder "
        "batch_size=32,world_size=8")
    line = tl.batch_line(TrainConfig(workspace="ws", world_size=8, per_rank_batch_size=8, sync_bn=False), gpu8, False)
    assert "global 64 = 8 per process x 8 processes" in line and "scale it yourself" in line
    assert "BatchNorm over 8 examples - few for BatchNorm: add --sync_bn" in line
    assert tl.batch_line(TrainConfig(workspace="ws"), DistInfo(), False).startswith(
        "Batch: global 32 = 32 per process x 1 process (mixup")


def test_evaluation_loaders_need_not_pin():
    """On CUDA the training loader pins its batches; a loader asked not to (evaluation) does not."""
    from panns import data_generator as dg

    cuda = torch.device("cuda", 0)
    assert dg.train_loader(16000, [[]], 0, cuda, seed=0).pin_memory is True
    assert dg.train_loader(16000, [[]], 0, cuda, seed=0, raw=False, pin_memory=False).pin_memory is False
    assert dg.train_loader(16000, [[]], 0, torch.device("cpu"), seed=0).pin_memory is False
