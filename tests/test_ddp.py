"""DistributedDataParallel through torchrun: 2 CPU processes on gloo train a tiny configuration."""
import os
import socket
import subprocess
import sys


from test_train import FAST, REPO, make_workspace


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tmp_path):
    from panns.checkpoint import load_checkpoint
    from panns.data_generator import TrainSampler
    from panns.training.config import TrainConfig

    ws, labels = make_workspace(str(tmp_path), classes_num=3, train_per_class=3, eval_per_class=1)
    args = dict(workspace=ws, model_type="Cnn6", data_type="balanced_train", balanced="none", augmentation="mixup",
                batch_size=2, early_stop=2, eval_every=2, save_every=1000, num_workers=0, log_every=1,
                class_labels_csv=labels, **FAST)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           os.path.join(REPO, "pytorch", "main.py"), "train"] + [f"--{k}={v}" for k, v in args.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "terminate called" not in r.stderr, r.stderr[-3000:]

    cfg = TrainConfig(**args)
    saved = sorted(os.listdir(cfg.checkpoints_dir))
    assert saved == ["0_iterations.pth", "2_iterations.pth"], saved  # written once, by rank 0
    ckpt = load_checkpoint(cfg.checkpoint_path(2))
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert len(ckpt["rank_states"]) == 2 and all("rng" in s and "sampler" not in s for s in ckpt["rank_states"])
    state = ckpt["sampler"]  # stored once: every rank consumed the same number of batches
    assert (state["rank"], state["world_size"], state["batches"]) == (0, 2, 2)
    assert ckpt["config"]["world_size"] == 2

    # The clips each rank consumed (its sampler restored from the one saved state) are disjoint.
    seen = []
    for rank in (0, 1):
        s = TrainSampler(cfg.indexes_path("balanced_train"), batch_size=2, random_seed=cfg.seed,
                         rank=rank, world_size=2)  # mixup: 2 clips per rank per step
        s.load_state_dict(state)
        seen.append({row for k in range(s.state_dict()["batches"]) for row in s.batch_rows(k)})
    assert len(seen[0]) == 4 and len(seen[1]) == 4 and not seen[0] & seen[1]

    log_dir = cfg.logs_dir
    log = open(os.path.join(log_dir, sorted(f for f in os.listdir(log_dir) if f.endswith(".log"))[-1])).read()
    assert "Final weights identical on all 2 processes" in log
    assert "2 processes" in log and "Validate test mAP" in log


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
