"""DistributedDataParallel through torchrun on the CPU (gloo): two node ranks with workspaces of their own train,
resume exactly, and fail together with one line; the distributed helpers of training.config."""
import os
import socket
import subprocess
import sys

import pytest

from test_train import FAST, REPO, make_workspace


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(workspaces, args, tmp_path, timeout=240):
    """torchrun as on two nodes (node ranks 0 and 1, one process each, gloo), started together, each node with
    its own workspace folder (no shared filesystem); returns their CompletedProcess-like results."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node, ws in enumerate(workspaces):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               os.path.join(REPO, "pytorch", "main.py"), "train", f"--workspace={ws}"] + \
            [f"--{k}" if v is True else f"--{k}={v}" for k, v in args.items()]   # True: a switch
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=str(tmp_path)))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def test_two_nodes_with_own_workspaces_train_and_resume_exactly(tmp_path):
    """Two node ranks, each with its own copy of the workspace (nothing shared on disk): 6 steps straight
    (checkpoints at 4 and 6, written by rank 0 alone) and 4 + resume to 6 give identical weights, optimizer and
    sampler state, though node 1 never sees a checkpoint file (rank 0 reads it and sends it). Also: the run
    folder names the global batch and the world size, the ranks' clips are disjoint, the weights agree."""
    import shutil

    from panns.checkpoint import load_checkpoint
    from panns.data_generator import TrainSampler
    from panns.training.config import TrainConfig
    from test_train import _assert_same_state

    ws0, labels = make_workspace(str(tmp_path / "node0"), classes_num=3, train_per_class=3, eval_per_class=1)
    ws1 = str(tmp_path / "node1" / "workspace")
    shutil.copytree(ws0, ws1)
    args = dict(model_type="Cnn6", data_type="balanced_train", balanced="none", augmentation="mixup",
                batch_size=2, early_stop=6, eval_every=1000, save_every=4, num_workers=0, log_every=2,
                class_labels_csv=labels, eval_cache="on", **FAST)
    for r in _two_nodes([ws0, ws1], args, tmp_path):
        assert r.returncode == 0, r.stderr[-3000:]
        assert "terminate called" not in r.stderr, r.stderr[-3000:]

    cfg = TrainConfig(workspace=ws0, world_size=2, **args)
    assert cfg.checkpoints_dir.endswith(os.path.join("augmentation=mixup", "batch_size=2,world_size=2"))
    assert sorted(os.listdir(cfg.checkpoints_dir)) == ["0_iterations.pth", "4_iterations.pth", "6_iterations.pth"]
    assert not os.path.exists(os.path.join(ws1, "checkpoints")), "only rank 0 writes checkpoints"
    straight = load_checkpoint(cfg.checkpoint_path(6))
    assert not any(k.startswith("module.") for k in straight["model"])
    assert len(straight["rank_states"]) == 2 and all("rng" in s for s in straight["rank_states"])
    state = straight["sampler"]  # stored once: every rank consumed the same number of batches
    assert (state["rank"], state["world_size"], state["batches"]) == (0, 2, 6)
    assert straight["config"]["world_size"] == 2 and straight["config"]["global_batch"] == 2
    log_dir = cfg.logs_dir
    log = open(os.path.join(log_dir, sorted(f for f in os.listdir(log_dir) if f.endswith(".log"))[-1])).read()
    assert "Final weights identical on all 2 processes" in log and "Validate test mAP" in log
    assert "Batch: global 2 = 1 per process x 2 processes" in log, log
    # each rank keeps its own shard of an evaluation set (2 and 1 of the 3 eval clips)
    assert "Evaluation set eval: 2 clips kept in host memory" in log, log

    # The clips each rank consumed in the first steps (its sampler restored from the one saved state) are disjoint.
    seen = []
    for rank in (0, 1):
        s = TrainSampler(cfg.indexes_path("balanced_train"), batch_size=2, random_seed=cfg.seed,
                         rank=rank, world_size=2)  # mixup: 2 clips per rank per step
        s.load_state_dict(state)
        seen.append({row for k in range(2) for row in s.batch_rows(k)})
    assert len(seen[0]) == 4 and len(seen[1]) == 4 and not seen[0] & seen[1]

    # --overwrite: the resumed run replaces the straight run's 6_iterations.pth (compared in memory)
    for r in _two_nodes([ws0, ws1], {**args, "resume_iteration": 4, "overwrite": True}, tmp_path):
        assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_state(straight, load_checkpoint(cfg.checkpoint_path(6)))
    assert not os.path.exists(os.path.join(ws1, "checkpoints"))

    # An input missing on node 1 alone: both nodes stop at start with one line naming node 1's rank and file.
    missing = os.path.join(ws1, "hdf5s", "indexes", "eval.h5")
    os.remove(missing)
    results = _two_nodes([ws0, ws1], {**args, "resume_iteration": 6, "early_stop": 8}, tmp_path)
    for r in results:
        assert r.returncode != 0 and "]: Traceback" not in r.stderr, r.stderr[-3000:]  # no worker traceback
        assert f"error: on node {socket.gethostname()} (rank 1): index file {missing} not found" in r.stderr, \
            r.stderr[-3000:]
    assert sorted(os.listdir(cfg.checkpoints_dir))[-1] == "6_iterations.pth"


def test_ctrl_c_on_one_node_stops_both_ranks_at_one_iteration_with_a_checkpoint(tmp_path):
    """A Ctrl-C on node 1 alone (its whole process group: torchrun, the rank and its loader worker; torchrun then
    passes the signal on once more): node 0 got nothing, yet both ranks stop at the same log point, rank 0 saves
    that iteration's checkpoint with the loader's true position, and the worker exits 130 naming the resume flag."""
    import re
    import shutil
    import signal
    import time

    from panns.checkpoint import load_checkpoint
    from panns.training.config import TrainConfig

    ws0, labels = make_workspace(str(tmp_path / "node0"), classes_num=3, train_per_class=3, eval_per_class=1)
    ws1 = str(tmp_path / "node1" / "workspace")
    shutil.copytree(ws0, ws1)
    args = dict(model_type="Cnn6", data_type="balanced_train", balanced="none", augmentation="none",
                batch_size=2, early_stop=100000, eval_every=100000, save_every=100000, num_workers=1, log_every=2,
                class_labels_csv=labels, **FAST)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs, logs = [], []
    for node, ws in enumerate((ws0, ws1)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               os.path.join(REPO, "pytorch", "main.py"), "train", f"--workspace={ws}"] + \
            [f"--{k}={v}" for k, v in args.items()]
        logs.append(open(tmp_path / f"node{node}.err", "w+"))
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logs[-1], text=True, env=env,
                                      cwd=str(tmp_path), start_new_session=True))   # a terminal each
    try:
        deadline = time.monotonic() + 180
        while "iteration: 4," not in (tmp_path / "node0.err").read_text():
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "node0.err").read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(procs[1].pid, signal.SIGINT)   # what a Ctrl-C in node 1's terminal does
        for p in procs:
            p.wait(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    err0, err1 = ((tmp_path / f"node{n}.err").read_text() for n in (0, 1))
    stop = re.search(r"Stopped by SIGINT \(on rank 1\) at iteration (\d+): saved (\S+); continue with the same "
                     r"command and --resume_iteration (\d+)", err0)
    assert stop and stop.group(1) == stop.group(3), err0[-3000:]
    n = int(stop.group(1))
    assert n > 4 and n % 2 == 0, "the ranks agree at a log point after the signal"
    assert "rank 1: SIGINT: stopping after this step with a checkpoint" in err1, err1[-3000:]
    assert "exited unexpectedly" not in err0 + err1, "loader workers must leave the signal to the run"
    assert re.search(r"exitcode\s*: 130 ", err0), err0[-3000:]   # torchrun's report of rank 0: stopped by SIGINT
    cfg = TrainConfig(workspace=ws0, world_size=2, **args)
    assert sorted(os.listdir(cfg.checkpoints_dir)) == ["0_iterations.pth", f"{n}_iterations.pth"]
    ckpt = load_checkpoint(cfg.checkpoint_path(n))
    assert ckpt["iteration"] == n and ckpt["sampler"]["batches"] == n and len(ckpt["rank_states"]) == 2
    assert not os.path.exists(os.path.join(ws1, "checkpoints"))


def test_an_input_missing_on_one_node_fails_every_rank_naming_the_node(monkeypatch):
    """check_everywhere: each rank checks its own inputs; one rank's one-line error reaches all, with node and rank."""
    from panns.devices import DistInfo
    from panns.errors import PannsError
    from panns.training import config as tl

    info = DistInfo(rank=0, world_size=3)
    monkeypatch.setattr(tl, "all_gather_object", lambda info, obj: [obj, ("gpu07", 1, "index file /ws/eval.h5 "
                                                                    "not found"), ("gpu08", 2, "other")])
    with pytest.raises(PannsError, match=r"^on node gpu07 \(rank 1\) \(and 1 more rank\(s\)\): "
                                         r"index file /ws/eval.h5 not found$"):
        tl.check_everywhere(info, lambda: 1)
    monkeypatch.setattr(tl, "all_gather_object", lambda info, obj: [obj, ("gpu07", 1, None)])
    assert tl.check_everywhere(DistInfo(rank=0, world_size=2), lambda: 5) == 5


def test_find_unused_parameters_only_where_needed():
    """DDP's unused-parameter search is switched on only for models with parameters outside the loss's graph
    (Wavegram_Cnn14 keeps the official, unused bn0 and conv_block1); the probe leaves no gradients and BN
    statistics untouched."""
    import torch

    from panns import models
    from panns.training.config import unused_parameters

    cnn6 = models.create_model("Cnn6", classes_num=3, sample_rate=16000, window_size=512, hop_size=400, mel_bins=64,
                               fmin=50, fmax=8000).train()
    stats = cnn6.bn0.running_mean.clone()
    assert unused_parameters(cnn6, 16000) == []
    assert cnn6.training and torch.equal(cnn6.bn0.running_mean, stats)
    assert all(p.grad is None for p in cnn6.parameters())
    sys.path.insert(0, os.path.join(REPO, "tests", "golden"))
    from model_helpers import skip_weight_init  # a fast init: the values do not matter here

    with skip_weight_init():
        wavegram = models.create_model("Wavegram_Cnn14", classes_num=3)
    unused = unused_parameters(wavegram, 32000)
    assert unused and all(n.startswith(("bn0.", "conv_block1.")) for n in unused), unused


def test_grad_comm_is_opt_in_and_compresses_the_all_reduce(tmp_path):
    """--grad_comm fp32 leaves DDP's all-reduce alone (exact gradients); fp16 sends 16-bit buckets (gradients
    rounded to fp16, on gloo here); bf16 is refused on the CPU at start (PyTorch's hook needs NCCL)."""
    from panns.devices import DistInfo
    from panns.errors import PannsError
    from panns.training import config as tl

    with pytest.raises(PannsError, match="--grad_comm bf16 needs CUDA"):
        tl.check_grad_comm("bf16", DistInfo(world_size=2))
    tl.check_grad_comm("bf16", DistInfo())   # one process: no all-reduce, nothing to refuse
    code = f"""
import torch, torch.distributed as dist
from panns.training import config as tl
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
torch.manual_seed(0)
x = torch.randn(4, 3) * 1e-3
ref = torch.nn.Linear(3, 2)
ref(x).sum().backward()
for kind in ("fp32", "fp16"):
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
    tl.register_grad_comm(ddp, kind)
    ddp(x).sum().backward()
    want = ref.weight.grad if kind == "fp32" else ref.weight.grad.half().float()
    assert torch.equal(ddp.module.weight.grad, want), (kind, ddp.module.weight.grad, want)
    assert kind == "fp32" or not torch.equal(want, ref.weight.grad)
tl.register_grad_comm(ref, "bf16")   # not a DDP module: nothing to do
dist.destroy_process_group()
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "pytorch")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
