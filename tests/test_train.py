"""Training pipeline on a tiny generated AudioSet-layout data set: make data -> pack -> index -> train.

Covers: the official workspace layout, one-line input errors, exact resume (N steps straight ==
N/2 + resume + N/2, with 0 and 1 loader workers), a model that actually learns the synthetic classes,
and a resumed run that continues the curve.
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_helpers import signal_in_step
from panns.errors import PannsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A cheap configuration: 16 kHz, hop 400 (40 frames/s), Cnn6 (the smallest log-mel CNN).
FAST = dict(sample_rate=16000, window_size=512, hop_size=400, mel_bins=64, fmin=50, fmax=8000)


def make_workspace(root, classes_num=5, train_per_class=4, eval_per_class=2, clip_seconds=1.6,
                   sample_rate=16000, full_train=False, seed=0, multi_label_fraction=0.2, event_seconds=(0.3, 0.8)):
    """Generate clips, pack them and write the index files; returns (workspace, label CSV)."""
    from panns.create_indexes import combine_full_indexes, create_indexes
    from panns.dataset import pack_waveforms_to_hdf5
    from panns.demo.data import make_demo_dataset

    ds, ws = os.path.join(root, "dataset"), os.path.join(root, "workspace")
    make_demo_dataset(ds, classes_num=classes_num,
                      clips_per_class={"balanced_train": train_per_class, "eval": eval_per_class,
                                       "unbalanced_train": 0},
                      clip_seconds=clip_seconds, sample_rate=sample_rate, unbalanced_parts=1, seed=seed,
                      multi_label_fraction=multi_label_fraction, event_seconds=event_seconds)
    labels = os.path.join(ds, "metadata", "class_labels_indices.csv")
    for split in ("balanced_train", "eval"):
        wav = os.path.join(ws, "hdf5s", "waveforms", f"{split}.h5")
        pack_waveforms_to_hdf5(os.path.join(ds, "metadata", f"{split}_segments.csv"),
                               os.path.join(ds, "audios", f"{split}_segments"), wav, sample_rate=sample_rate,
                               clip_seconds=clip_seconds, class_labels_csv=labels, progress=False)
        create_indexes(wav, os.path.join(ws, "hdf5s", "indexes", f"{split}.h5"))
    if full_train:
        combine_full_indexes(os.path.join(ws, "hdf5s", "indexes"), os.path.join(ws, "hdf5s", "indexes", "full_train.h5"))
    return ws, labels


def tiny_config(ws, labels, **kw):
    from panns.training.config import TrainConfig

    base = dict(workspace=ws, model_type="Cnn6", data_type="balanced_train", batch_size=4, num_workers=0,
                eval_every=1000, save_every=1000, early_stop=4, class_labels_csv=labels, log_every=2, **FAST)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_ws(tmp_path_factory):
    return make_workspace(str(tmp_path_factory.mktemp("train")), classes_num=3, train_per_class=3,
                          eval_per_class=1, clip_seconds=1.6)


def test_run_folder_names_the_global_batch_and_world_size():
    """One process keeps the official ``batch_size=32``; several name the global batch and their count, so a
    --per_rank_batch_size run (or an 8-GPU run) never writes into the official run's folder."""
    from panns.training.config import TrainConfig

    def folder(**kw):
        cfg = TrainConfig(workspace="ws", **kw)
        cfg.validate()
        return os.path.basename(cfg.checkpoints_dir), cfg.per_rank_batch, cfg.global_batch

    assert folder() == ("batch_size=32", 32, 32)
    assert folder(world_size=8) == ("batch_size=32,world_size=8", 4, 32)
    assert folder(world_size=8, per_rank_batch_size=32) == ("batch_size=256,world_size=8", 32, 256)
    assert folder(world_size=8, batch_size=32, per_rank_batch_size=4) == ("batch_size=32,world_size=8", 4, 32)
    assert folder(per_rank_batch_size=16) == ("batch_size=16", 16, 16)
    with pytest.raises(PannsError, match=r"--batch_size 32 \(the global batch\) is not divisible by the 3 processes.*"
                                         r"--per_rank_batch_size 10"):
        folder(world_size=3)


def test_workspace_layout_is_official(tmp_path):
    from panns.training.config import TrainConfig

    cfg = TrainConfig(workspace="ws", model_type="Cnn14")
    assert cfg.checkpoint_path(600000) == os.path.join(
        "ws", "checkpoints", "main", "sample_rate=32000,window_size=1024,hop_size=320,mel_bins=64,fmin=50,fmax=14000",
        "data_type=full_train", "Cnn14", "loss_type=clip_bce", "balanced=balanced", "augmentation=mixup",
        "batch_size=32", "600000_iterations.pth")
    assert cfg.statistics_path.startswith(os.path.join("ws", "statistics", "main", "sample_rate=32000"))
    assert cfg.logs_dir.startswith(os.path.join("ws", "logs", "main"))
    # Official recipe defaults.
    assert (cfg.learning_rate, cfg.batch_size, cfg.balanced, cfg.augmentation, cfg.early_stop) == \
        (1e-3, 32, "balanced", "mixup", 1_000_000)


def test_input_errors_are_one_line(tiny_ws, tmp_path):
    from panns.main import train

    ws, labels = tiny_ws
    with pytest.raises(PannsError, match="create_indexes"):
        train(tiny_config(str(tmp_path / "empty"), labels))
    with pytest.raises(PannsError, match="Cnn14_16k only works with sample_rate=16000"):
        train(tiny_config(ws, labels, model_type="Cnn14_16k", sample_rate=32000, window_size=1024, hop_size=320,
                          fmax=14000))
    with pytest.raises(PannsError, match="too short"):
        train(tiny_config(ws, labels, hop_size=2000, window_size=2048))
    other = tmp_path / "labels.csv"
    other.write_text("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n")
    with pytest.raises(PannsError, match="targets for 3 classes"):
        train(tiny_config(ws, str(other)))
    with pytest.raises(PannsError, match="unknown model type"):
        train(tiny_config(ws, labels, model_type="Cnn99"))
    assert not os.path.exists(os.path.join(ws, "checkpoints")), "errors must come before any output"


def test_cli_error_exit_code(tiny_ws):
    ws, labels = tiny_ws
    r = subprocess.run([sys.executable, os.path.join(REPO, "pytorch", "main.py"), "train", "--workspace", ws,
                        "--model_type", "Cnn14_16k", "--class_labels_csv", labels, "--data_type", "balanced_train"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Cnn14_16k only works") and "Traceback" not in r.stderr, r.stderr


def _state(path):
    from panns.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _assert_same_state(a, b):
    assert a["iteration"] == b["iteration"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name])), (k, name)
    assert a["sampler"] == b["sampler"]


@pytest.mark.parametrize("num_workers,steps", [(0, 4), (1, 2)])
def test_resume_is_exact(tiny_ws, num_workers, steps):
    """N steps straight == N/2 steps, resume, N/2 steps (weights, optimizer, sampler); stats truncated.

    With a loader worker the sampler runs ahead (prefetch): the saved state must still be N batches."""
    from panns.main import train

    ws, labels = tiny_ws
    half = steps // 2
    # overwrite: the module's runs share one run folder
    cfg = tiny_config(ws, labels, num_workers=num_workers, early_stop=steps, overwrite=True)
    straight = train(cfg)
    assert straight["iteration"] == steps and straight["checkpoint_path"].endswith(f"/{steps}_iterations.pth")
    a = _state(straight["checkpoint_path"])
    assert a["sampler"]["batches"] == steps, "sampler state must count consumed batches, not prefetched ones"
    assert set(a) >= {"iteration", "model", "sampler", "optimizer", "config", "rank_states"}
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in a["model"])
    assert a["config"]["labels"] and a["config"]["model_type"] == "Cnn6" and a["config"]["classes_num"] == 3

    cfg.early_stop = half   # replaces the straight run's checkpoints in the same folder (overwrite)
    train(cfg)
    cfg.early_stop, cfg.resume_iteration, cfg.overwrite = steps, half, False
    resumed = train(cfg)
    _assert_same_state(a, _state(resumed["checkpoint_path"]))
    with open(cfg.statistics_path, "rb") as f:
        stats = pickle.load(f)
    assert [s["iteration"] for s in stats["test"]] == [0, half, steps]  # half: end of the first run, once


def test_compiled_step_is_one_graph_and_trains_like_eager(tiny_ws, monkeypatch):
    """``--compile on``: SpecAugment's stripes drawn before the forward and IEEE fp32 pinned for the run, so the
    step is ONE graph (no breaks), the evaluation forward one more (both sets at one padded shape), and -
    captured with the eager backend (same ops) - the weights, optimizer and sampler after 3 mixup steps equal the
    eager run's bit for bit (same RNG draws, same order), the evaluations' scores too. The user's fp32 settings
    are back afterwards."""
    from panns import amp
    from panns.main import train

    ws, labels = tiny_ws
    cfg = tiny_config(ws, labels, early_stop=3, augmentation="mixup", compile="off", overwrite=True)
    eager = _state(train(cfg)["checkpoint_path"])
    with open(cfg.statistics_path, "rb") as f:
        eager_stats = pickle.load(f)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append("training" if any(n.op == "call_function" and "mixup" in str(n.target) for n in gm.graph.nodes)
                      or any("mixup" in n.name for n in gm.graph.nodes) else "evaluation")
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=counting_backend))
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.conv.fp32_precision
    torch._dynamo.reset()
    try:
        result = train(tiny_config(ws, labels, early_stop=3, augmentation="mixup", compile="on", overwrite=True))
        compiled = _state(result["checkpoint_path"])
    finally:
        torch._dynamo.reset()
    assert sorted(graphs) == ["evaluation", "training"], f"{graphs}: the compiled step or evaluation breaks"
    _assert_same_state(eager, compiled)
    with open(cfg.statistics_path, "rb") as f:
        compiled_stats = pickle.load(f)
    for key in ("bal", "test"):
        for e, c in zip(eager_stats[key], compiled_stats[key], strict=True):
            np.testing.assert_allclose(c["average_precision"], e["average_precision"], atol=1e-6)
    assert not amp._pinned["on"]
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.conv.fp32_precision) == before


def test_learns_and_resumed_run_continues(tmp_path):
    """Cnn6 on 5 synthetic classes reaches a high eval mAP quickly; a resumed run continues the curve."""
    from panns.main import train

    # Events span the whole clip: SpecAugment's time stripes (up to 2 x 63 frames, sized for 10-s clips)
    # can blank most of a 65-frame clip, and a short event masked away would become label noise.
    ws, labels = make_workspace(str(tmp_path), classes_num=5, train_per_class=6, eval_per_class=4,
                                clip_seconds=1.6, seed=1, multi_label_fraction=0.0, event_seconds=(0.9, 1.0))
    cfg = tiny_config(ws, labels, batch_size=8, augmentation="none", early_stop=20, eval_every=20, log_every=10)
    first = train(cfg)
    m1 = first["statistics"]["test"]["mAP"]
    cfg.resume_iteration, cfg.early_stop = 20, 30
    second = train(cfg)
    m2 = second["statistics"]["test"]["mAP"]
    with open(cfg.statistics_path, "rb") as f:
        stats = pickle.load(f)
    assert [s["iteration"] for s in stats["test"]] == [0, 20, 30]
    assert second["statistics"]["test"]["ap_classes"] == 5
    m0 = float(np.mean(stats["test"][0]["average_precision"]))
    print(f"eval mAP: {m0:.3f} (start) {m1:.3f} (20 steps) {m2:.3f} (resumed, 30 steps)")
    assert m2 >= 0.8, (m0, m1, m2)
    assert m2 >= m1 - 0.1, "a resumed run must continue from the trained weights, not restart"
    assert m0 < m2 - 0.3, (m0, m1, m2)  # it learned


def test_eval_cache_reads_the_sets_once_and_scores_the_same(tiny_ws, monkeypatch, tmp_path, caplog):
    """--eval_cache on (auto's CUDA behaviour, forced on the CPU): every evaluation after the first takes the
    rows from memory - eval.h5 is read once instead of once per evaluation - and the run's statistics and
    weights equal those of --eval_cache off."""
    import logging

    from panns import data_generator as dg
    from panns.main import train

    ws, labels = tiny_ws
    reads = []
    original = dg.AudioSetDataset.__getitems__

    def counting(self, metas):
        reads.extend(os.path.basename(m["hdf5_path"]) for m in metas)
        return original(self, metas)

    monkeypatch.setattr(dg.AudioSetDataset, "__getitems__", counting)
    runs = {}
    for mode in ("off", "on"):
        reads.clear()
        cfg = tiny_config(ws, labels, early_stop=4, eval_every=2, eval_cache=mode,
                          workspace=str(tmp_path / mode), augmentation="none")
        os.makedirs(cfg.workspace)
        os.symlink(os.path.join(ws, "hdf5s"), os.path.join(cfg.workspace, "hdf5s"))
        with caplog.at_level(logging.INFO):
            out = train(cfg)
        with open(out["statistics_path"], "rb") as f:
            runs[mode] = (pickle.load(f), _state(out["checkpoint_path"]), reads.count("eval.h5"))
    eval_rows = 3   # classes_num=3, eval_per_class=1
    assert runs["off"][2] == 3 * eval_rows   # evaluations at 0, 2 and 4
    assert runs["on"][2] == eval_rows
    assert "Evaluation set eval: 3 clips kept in host memory" in caplog.text
    # An untrained model's scores are constant: the warning names the set, uncached (off) as cached (on).
    constant = [r.getMessage() for r in caplog.records if "(nearly) constant" in r.getMessage()]
    assert constant and all(m.startswith("model scores on evaluation set ") for m in constant)
    assert {m.split()[5] for m in constant} >= {"balanced_train"}
    for key in ("bal", "test"):
        for a, b in zip(runs["off"][0][key], runs["on"][0][key], strict=True):
            assert a["iteration"] == b["iteration"]
            np.testing.assert_array_equal(a["average_precision"], b["average_precision"])
            np.testing.assert_array_equal(a["auc"], b["auc"])
    for k, v in runs["off"][1]["model"].items():
        assert torch.equal(v, runs["on"][1]["model"][k]), k


def test_run_record_and_logs(tiny_ws):
    import json

    from panns.main import train

    ws, labels = tiny_ws
    cfg = tiny_config(ws, labels, early_stop=2, balanced="none", augmentation="none", log_every=1)
    train(cfg)
    rec = json.load(open(os.path.join(cfg.logs_dir, "config.json")))
    assert rec["train"]["model_type"] == "Cnn6" and rec["parameters"] > 1e6
    assert set(rec["versions"]) >= {"python", "torch", "numpy"} and "git_commit" in rec
    log = open(sorted(p for p in (os.path.join(cfg.logs_dir, f) for f in os.listdir(cfg.logs_dir))
                      if p.endswith(".log"))[-1]).read()
    assert "it/s" in log and "data wait" in log and "Validate test mAP" in log
    summary = json.load(open(cfg.statistics_path[:-4] + ".json"))
    assert summary["test"][-1]["ap_classes"] == 3 and summary["test"][-1]["iteration"] == 2


def test_train_script_runs_as_written(tmp_path):
    """scripts/4_train.sh (official recipe: full_train, 32 kHz front end) then its plot, on a tiny workspace."""
    ws, labels = make_workspace(str(tmp_path), classes_num=3, train_per_class=2, eval_per_class=1,
                                clip_seconds=1.0, sample_rate=32000, full_train=True)
    env = {**os.environ, "MODEL_TYPE": "Cnn6"}
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "4_train.sh"), ws, str(tmp_path / "dataset"),
                        "--early_stop=0", "--num_workers=0", f"--class_labels_csv={labels}"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt_dir = os.path.join(ws, "checkpoints", "main",
                            "sample_rate=32000,window_size=1024,hop_size=320,mel_bins=64,fmin=50,fmax=14000",
                            "data_type=full_train", "Cnn6", "loss_type=clip_bce", "balanced=balanced",
                            "augmentation=mixup", "batch_size=32")
    assert os.listdir(ckpt_dir) == ["0_iterations.pth"]
    assert os.path.getsize(tmp_path / "results" / "1_aug.pdf") > 1000


def test_train_script_bad_python_is_one_line(tmp_path):
    """PYTHON that is not there (or torchrun off PATH, or a python without torch): one error line, exit 1, nothing
    created (it said 'training on the CPU' and then failed with the shell's 'No such file or directory')."""
    stub = tmp_path / "notorch"
    stub.write_text("#!/bin/sh\nexit 1\n")   # a python that cannot import torch
    stub.chmod(0o755)
    ws = tmp_path / "ws"
    for python, expect in ((str(tmp_path / "nope"), "is not an executable"),
                           ("torchrun --nproc_per_node=2", "is not an executable"),
                           (str(stub), "cannot import torch")):
        r = subprocess.run(["bash", os.path.join(REPO, "scripts", "4_train.sh"), str(ws), str(tmp_path / "dataset")],
                           capture_output=True, text=True, cwd=str(tmp_path), timeout=60,
                           env=dict(os.environ, PYTHON=python, PATH="/usr/bin:/bin"))
        assert r.returncode == 1 and expect in r.stderr, (python, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "training on the CPU" not in r.stderr, r.stderr
    assert not ws.exists()


def test_train_script_takes_a_python_path_with_a_space_and_help_plots_nothing(tmp_path):
    """PYTHON="/.../my venv/bin/python" (an executable path with a space) is one word, not 'is not an executable';
    `4_train.sh WS DATA --help` shows main.py train's help and stops (it went on to plot, over results/1_aug.pdf
    or with an error)."""
    (tmp_path / "my venv").mkdir()
    (tmp_path / "my venv" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (tmp_path / "my venv" / "python").chmod(0o755)
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "4_train.sh"), str(tmp_path / "ws"),
                        str(tmp_path / "dataset"), "--help"], capture_output=True, text=True, cwd=str(tmp_path),
                       timeout=120, env=dict(os.environ, PYTHON=str(tmp_path / "my venv" / "python")))
    assert r.returncode == 0 and "--resume_iteration" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["my venv"]   # no results/, no workspace


def _fake_cuda_env(tmp_path, count=1, cap="9.0"):
    """Environment in which every Python process sees ``count`` fake GPUs (tests/fake_cuda/sitecustomize.py)."""
    log = tmp_path / "fake_cuda.log"
    path = os.pathsep.join([os.path.join(REPO, "tests", "fake_cuda"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "MODEL_TYPE": "Cnn6", "PYTHONPATH": path, "PANNS_FAKE_CUDA": str(count),
           "PANNS_FAKE_CUDA_CAP": cap, "PANNS_FAKE_CUDA_LOG": str(log)}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "SLURM_STEP_NUM_TASKS"):
        env.pop(var, None)
    return env, log


@pytest.mark.parametrize("cap, precision", [("9.0", "bf16"), ("7.5", "fp32")])
def test_train_script_starts_on_one_gpu(tmp_path, cap, precision):
    """On a one-GPU box (CUDA faked as such a box presents it) scripts/4_train.sh gets past start-up: the
    GPU is selected with its index, the precision follows the card, and the model is moved to cuda:0 (where
    the fake stops the process with status 42, since no real GPU is here)."""
    ws, labels = make_workspace(str(tmp_path), classes_num=3, train_per_class=2, eval_per_class=1,
                                clip_seconds=1.0, sample_rate=32000, full_train=True)
    env, log = _fake_cuda_env(tmp_path, cap=cap)
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "4_train.sh"), ws, str(tmp_path / "dataset"),
                        "--early_stop=0", "--num_workers=0", f"--class_labels_csv={labels}"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 42, r.stderr[-3000:]
    calls = log.read_text().split("\n")
    assert any(c.endswith("set_device 0") for c in calls) and any(c.endswith("module.to cuda:0") for c in calls)
    assert f"Using Fake GPU (cuda:0, sm{cap.replace('.', '')}, native bf16: {cap >= '8.0'}); precision {precision}" \
        in r.stderr, r.stderr[-3000:]


def test_rank_without_a_gpu_is_one_line(tmp_path, tiny_ws):
    """torchrun-style LOCAL_RANK beyond the visible GPUs: one error line naming CUDA_VISIBLE_DEVICES."""
    ws, labels = tiny_ws
    env, _ = _fake_cuda_env(tmp_path, count=2)
    env.update(LOCAL_RANK="2", CUDA_VISIBLE_DEVICES="2,3")
    r = subprocess.run([sys.executable, os.path.join(REPO, "pytorch", "main.py"), "train", "--workspace", ws,
                        "--model_type", "Cnn6", "--class_labels_csv", labels, "--data_type", "balanced_train",
                        "--cuda"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: local rank 2 needs GPU 2 but this process sees 2 GPU(s) "
                                                         "(CUDA_VISIBLE_DEVICES=2,3)")


def test_help_shows_defaults():
    r = subprocess.run([sys.executable, os.path.join(REPO, "pytorch", "main.py"), "train", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for default in ("(default: 32)", "(default: 0.001)", "(default: fp32)", "(default: clip_bce)", "(default: 8)"):
        assert default in text, default


def test_full_disk_is_one_line_naming_the_checkpoint(tiny_ws, monkeypatch, capsys):
    """A disk that fills while a checkpoint is written: one error line naming the file, nothing half-written
    left under its name or as a temp file (injected ENOSPC, as a small tmpfs would raise it)."""
    import errno

    from panns import checkpoint
    from panns.errors import run_cli
    from panns.main import main

    ws, labels = tiny_ws

    def full_disk(obj, f):
        f.write(b"partial checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    argv = ["train", "--workspace", ws, "--model_type", "Cnn6", "--data_type", "balanced_train", "--batch_size", "3",
            "--early_stop", "0", "--num_workers", "0", "--class_labels_csv", labels] + \
        [f"--{k}={v}" for k, v in FAST.items()]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert last.startswith("error: disk full while writing ") and last.split()[5].endswith("/0_iterations.pth"), last
    cfg = tiny_config(ws, labels, batch_size=3)
    assert os.listdir(cfg.checkpoints_dir) == []


def test_progress_between_log_lines(caplog, monkeypatch):
    """Off a terminal, a progress line every interval (none from ranks other than 0); on a terminal, tqdm."""
    import logging

    from panns.utilities import Progress

    caplog.set_level(logging.INFO)
    p = Progress(10, "iteration", start=2, every_s=0.0, unit="it")
    p.to(3)
    assert "iteration 3/10" in caplog.text
    Progress(10, "iteration", enabled=False, every_s=0.0).to(5)
    assert "iteration 5/10" not in caplog.text
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = Progress(10, "iteration", start=2)
    bar.to(4)
    assert bar.bar is not None and bar.bar.n == 4
    bar.close()


def test_console_log_follows_stderr(tmp_path, monkeypatch):
    """The console handler of create_logging writes to the stderr of the moment: one replaced and closed after
    set-up (a test runner's capture, a notebook) neither breaks later records nor keeps them from the new one."""
    import io
    import logging

    from panns.utilities import create_logging

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    create_logging(str(tmp_path / "logs"))
    logging.getLogger("panns.test").info("one")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("panns.test").info("two")
    assert second.getvalue().splitlines() == ["panns.test  : INFO     two"]
    log = open(tmp_path / "logs" / "0000.log").read()
    assert "one" in log and "two" in log
    for h in list(logging.getLogger().handlers):   # leave no handler on a file of tmp_path behind
        if getattr(h, "_panns", False):
            logging.getLogger().removeHandler(h)
            h.close()


def test_a_signal_stops_at_the_step_boundary_with_a_checkpoint_that_resumes_exactly(tiny_ws, monkeypatch, caplog):
    """Ctrl-C during step 2 (a loader worker running): the step finishes, 2_iterations.pth is saved, the run raises
    Interrupted (exit 130 from the CLI) naming the resume flag; resuming from it ends equal to a run straight
    through. The handlers are put back afterwards."""
    import signal

    from panns.errors import Interrupted
    from panns.main import train
    from panns.training import config as tl

    ws, labels = tiny_ws
    cfg = tiny_config(ws, labels, num_workers=1, early_stop=4, overwrite=True)
    straight = _state(train(cfg)["checkpoint_path"])

    real_step = tl.train_step
    calls = signal_in_step(monkeypatch, 2, signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)
    with caplog.at_level("WARNING", logger="main"), pytest.raises(Interrupted) as stopped:
        train(cfg)
    assert stopped.value.signum == signal.SIGINT and len(calls) == 2, "the run stops after the step it was in"
    assert signal.getsignal(signal.SIGINT) is before
    assert "Stopped by SIGINT at iteration 2: saved" in caplog.text and "--resume_iteration 2" in caplog.text
    assert sorted(os.listdir(cfg.checkpoints_dir)) == ["0_iterations.pth", "2_iterations.pth"]
    assert _state(cfg.checkpoint_path(2))["sampler"]["batches"] == 2

    monkeypatch.setattr(tl, "train_step", real_step)
    cfg.resume_iteration, cfg.overwrite = 2, False
    _assert_same_state(straight, _state(train(cfg)["checkpoint_path"]))


def test_a_second_ctrl_c_stops_at_once_and_signals_together_are_one_request():
    """StopSignals: the first signal is a request; a SIGTERM or SIGINT within the grace time (torchrun passing on
    the terminal's Ctrl-C) is the same request; a later Ctrl-C raises KeyboardInterrupt at once."""
    import signal
    import time

    from panns.training.core import StopSignals

    term = signal.getsignal(signal.SIGTERM)
    with StopSignals(grace_s=0.5) as s:
        assert s.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert s.requested == signal.SIGTERM
        time.sleep(0.6)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGTERM) is term


def test_train_script_hands_a_signal_to_the_trainer(tmp_path):
    """SIGTERM to scripts/4_train.sh alone (a container's PID 1 on `docker stop`, `kill <pid>`) reaches the
    trainer, which stops after its step with a checkpoint there; the script exits with the trainer's 143 and
    skips the plot. Before, bash kept the signal and the trainer ran on until it was killed outright."""
    import signal
    import time

    ws, labels = make_workspace(str(tmp_path), classes_num=3, train_per_class=2, eval_per_class=1,
                                clip_seconds=1.0, sample_rate=32000, full_train=True)
    env = {**os.environ, "MODEL_TYPE": "Cnn6"}
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        p = subprocess.Popen(["bash", os.path.join(REPO, "scripts", "4_train.sh"), ws, str(tmp_path / "dataset"),
                              "--early_stop=100000", "--eval_every=100000", "--save_every=100000", "--log_every=1",
                              "--num_workers=0", f"--class_labels_csv={labels}",
                              "--batch_size=4"],   # steps of 8 clips, not the recipe's 64
                             cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=f)
    try:
        deadline = time.time() + 240
        while "iteration: 2," not in err.read_text():
            assert p.poll() is None and time.time() < deadline, err.read_text()[-2000:]
            time.sleep(0.5)
        p.send_signal(signal.SIGTERM)   # the script's own PID only, not its process group
        assert p.wait(timeout=120) == 143, err.read_text()[-2000:]
    finally:   # nothing of this run outlives the test, whatever failed (the trainer has its own group)
        for pid in (d for d in os.listdir("/proc") if d.isdigit()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    if ws.encode() in c.read() and int(pid) != os.getpid():
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    text = err.read_text()
    stopped = [line for line in text.splitlines() if "Stopped by SIGTERM at iteration" in line]
    assert len(stopped) == 1 and "--resume_iteration" in stopped[0], text[-2000:]
    n = int(stopped[0].split("Stopped by SIGTERM at iteration ")[1].split(":")[0])
    ckpt_dir = os.path.join(ws, "checkpoints", "main",
                            "sample_rate=32000,window_size=1024,hop_size=320,mel_bins=64,fmin=50,fmax=14000",
                            "data_type=full_train", "Cnn6", "loss_type=clip_bce", "balanced=balanced",
                            "augmentation=mixup", "batch_size=4")
    assert n >= 2 and sorted(os.listdir(ckpt_dir)) == sorted(["0_iterations.pth", f"{n}_iterations.pth"])
    assert not (tmp_path / "results").exists(), "the plot runs only after a finished training"
