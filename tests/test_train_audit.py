"""What ``main.py train`` tells its user: train time, speed and ETA in the log lines, what a resume changes, and the
run record a refused resume leaves alone. The clock is a fake one (no timing); the runs are tiny Cnn6 ones."""
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch

from panns.errors import CheckpointError
from panns.training import core
from test_train import make_workspace, tiny_config


@pytest.fixture
def clock(monkeypatch):
    """A perf_counter that only moves when the test moves it."""
    now = [100.0]
    monkeypatch.setattr(core.time, "perf_counter", lambda: now[0])
    return now


CPU = SimpleNamespace(distributed=False, is_main=True, device=torch.device("cpu"), rank=0, world_size=1)


def test_train_time_reported_at_an_evaluation_leaves_the_evaluation_out(clock):
    """The task logs 'train time' (since the last evaluation) beside 'validate time': it used to include the
    evaluation itself (at iteration 0, 'train time' equalled 'validate time')."""
    seen = {}

    class Task:
        def evaluate(self, iteration, trained):
            clock[0] += 50.0                    # the evaluation takes 50 s
            seen["train"] = trained.elapsed()

    fake = SimpleNamespace(trained=core.Meter(), meter=core.Meter(), info=CPU, raw_model=torch.nn.Linear(1, 1),
                           task=Task())
    clock[0] += 10.0                            # 10 s of training
    core.Trainer.evaluate(fake, 3)
    assert seen["train"] == pytest.approx(10.0)
    assert fake.eval_seconds == pytest.approx(50.0)


def test_checkpoint_write_is_not_counted_as_training_speed(clock):
    """A checkpoint written between two log lines (seconds for a Cnn14 with Adam moments) lowered the next
    line's it/s and examples/s."""
    class Task:
        train_sampler = SimpleNamespace(state_dict=lambda batches_consumed: {"batches": batches_consumed})

        def checkpoint_extra(self):
            return {}

        def write_checkpoint(self, ckpt, iteration):
            clock[0] += 30.0                    # writing takes 30 s
            return "x.pth"

    model = torch.nn.Linear(1, 1)
    fake = SimpleNamespace(info=CPU, mixup=None, task=Task(), batches_consumed=2, raw_model=model,
                           optimizer=torch.optim.Adam(model.parameters()), config={},
                           scaler=torch.amp.GradScaler("cpu", enabled=False), meter=core.Meter())
    clock[0] += 4.0                             # 4 s of steps before the save
    core.Trainer.save(fake, 2)
    assert fake.meter.elapsed() == pytest.approx(4.0)


def test_log_line_gives_an_eta_counting_the_evaluations_left(clock, caplog):
    """A log file has no progress bar: each loss/speed line says how long the run has left (steps at the current
    speed plus the evaluations still to come at the last one's duration)."""
    meter = core.Meter()
    for _ in range(10):
        meter.update({"loss": torch.tensor(0.5)}, 0.0)
    clock[0] += 10.0                            # 1 s per step
    fake = SimpleNamespace(meter=meter, info=CPU, global_batch=4, progress=SimpleNamespace(note=lambda: None),
                           s=SimpleNamespace(iterations=100, eval_every=30), eval_seconds=20.0)
    fake.eta = lambda it, sec: core.Trainer.eta(fake, it, sec)
    with caplog.at_level(logging.INFO, logger="main"):
        core.Trainer.log_progress(fake, 10)
    # 90 steps x 1 s + 4 evaluations (30, 60, 90, 100) x 20 s = 170 s
    assert "1.00 it/s, 4.0 examples/s" in caplog.text and "ETA 0:02:50 to iteration 100" in caplog.text
    caplog.clear()
    meter.update({"loss": torch.tensor(0.5)}, 0.0)
    with caplog.at_level(logging.INFO, logger="main"):
        core.Trainer.log_progress(fake, 100)   # nothing left: no ETA
    assert "ETA" not in caplog.text
    fake.eval_seconds = None   # a resumed run before its first evaluation: the steps alone, and it says so
    assert core.Trainer.eta(fake, 10, 1.0) == ", ETA 0:01:30 to iteration 100 plus 4 evaluations"
    assert core.format_duration(3 * 86400 + 4 * 3600 + 5 * 60 + 6) == "3d 04:05:06"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(str(tmp_path_factory.mktemp("audit ws")), classes_num=3, train_per_class=3,
                          eval_per_class=1, clip_seconds=1.6)


def _record(cfg):
    from panns.training import layout

    with open(layout.run_record_path(cfg.workspace, cfg.run_subpath)) as f:
        return json.load(f)["train"]


def test_resume_names_changed_settings_and_a_refused_one_keeps_the_run_record(ws, tmp_path, caplog):
    """Resuming with another --grad_clip or --precision is allowed but was silent; a resume refused for another
    --seed rewrote the run folder's config.json with the refused settings first."""
    from panns.main import train

    workspace, labels = ws
    root = tmp_path / "run with spaces"
    root.mkdir()
    os.symlink(os.path.join(workspace, "hdf5s"), root / "hdf5s")
    cfg = tiny_config(str(root), labels, early_stop=1, save_every=1, eval_every=1)
    train(cfg)
    assert _record(cfg)["seed"] == 1234

    cfg.resume_iteration, cfg.early_stop, cfg.seed = 1, 2, 7
    with pytest.raises(CheckpointError, match="--seed 1234"):
        train(cfg)
    assert _record(cfg)["seed"] == 1234, "a refused resume must leave the run record alone"

    cfg.seed, cfg.grad_clip = 1234, 1.0
    with caplog.at_level(logging.INFO, logger="main"):
        train(cfg)
    line = next(r.getMessage() for r in caplog.records if "differ from" in r.getMessage())
    assert "grad_clip 0.0 -> 1.0" in line and "early_stop 1 -> 2" in line and "seed" not in line
    assert _record(cfg)["grad_clip"] == 1.0
    with open(os.path.join(cfg.logs_dir, "config.json")) as f:   # the resume keeps the first run's record too
        earlier = json.load(f)["earlier_runs"]
    assert [(r["train"]["resume_iteration"], r["train"]["grad_clip"]) for r in earlier] == [(0, 0.0)]


def test_validate_line_shows_a_slow_evaluation_speed(caplog):
    """9 clips in 21.8 s (a CPU run in bf16) read '0 clips/s'."""
    from panns.training.audioset import AudioSetTask

    r = {"mAP": 0.5, "mAUC": 0.5, "d_prime": 0.0, "ap_classes": 3, "auc_classes": 3, "classes_num": 3, "clips": 9,
         "seconds": 21.8, "metrics_seconds": 0.0}
    fake = SimpleNamespace(info=CPU, eval_loaders={"bal": None, "test": None},
                           evaluator=SimpleNamespace(evaluate=lambda loader, name: r),
                           statistics=SimpleNamespace(append=lambda *a: None, dump=lambda: None))
    with caplog.at_level(logging.INFO, logger="main"):
        AudioSetTask.evaluate(fake, 3, core.Meter())
    assert "9 clips in 21.80 s, 0.41 clips/s" in caplog.text


def test_a_run_with_one_evaluation_is_drawn_not_just_named_in_the_legend(tmp_path, monkeypatch):
    """A run stopped after its iteration-0 evaluation (or one evaluation so far) was a line of one point: nothing
    drawn, only a legend entry."""
    import pickle

    import numpy as np

    from panns import plot_statistics

    one, two = tmp_path / "one.pkl", tmp_path / "two.pkl"
    point = {"iteration": 0, "average_precision": np.array([0.5, 0.7])}
    one.write_bytes(pickle.dumps({"bal": [point], "test": [point]}))
    two.write_bytes(pickle.dumps({"bal": [], "test": [point, {**point, "iteration": 2}]}))
    figures = []
    monkeypatch.setattr(plot_statistics, "save_figure", lambda fig, output, fmt: figures.append(fig) or output)
    plot_statistics.plot_runs([str(one), str(two)], str(tmp_path / "p.png"))
    lines = figures[0].axes[0].get_lines()
    assert [len(line.get_xdata()) for line in lines] == [1, 1, 2]
    assert all(line.get_marker() not in (None, "None", "", " ") for line in lines[:2])


def test_class_curves_of_one_evaluation_are_drawn(tmp_path, monkeypatch):
    """plot_class_iteration after the first evaluation: each class's AP is one point, drawn with a marker."""
    import numpy as np

    from panns import plot_statistics

    figures = []
    monkeypatch.setattr(plot_statistics, "save_figure", lambda fig, output, fmt: figures.append(fig) or output)
    plot_statistics.plot_class_curves(np.array([0]), np.array([[0.5, 0.7, 0.2]]), np.array([3, 2, 1]),
                                      ["a", "b", "c"], str(tmp_path / "c.png"), per_panel=1)
    lines = [line for ax in figures[0].axes for line in ax.get_lines()]
    assert lines and all(line.get_marker() not in (None, "None", "", " ") for line in lines)
