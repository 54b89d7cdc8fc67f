"""Evaluation metrics, statistics files, loss and plotting (no training)."""
import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics

from panns.errors import PannsError

from data_helpers import FixedScores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_metrics_skip_undefined_classes_without_warnings():
    from panns.evaluate import compute_metrics

    rs = np.random.RandomState(0)
    target = np.zeros((12, 5), np.float32)
    target[:6, 0] = 1          # class 0: positives and negatives
    target[::2, 1] = 1         # class 1: positives and negatives
    target[:, 2] = 1           # class 2: only positives -> AP defined, AUC undefined
    # class 3, 4: no positives -> both undefined
    output = rs.rand(12, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any sklearn/numpy warning fails the test
        r = compute_metrics(target, output)
    assert r["ap_classes"] == 3 and r["auc_classes"] == 2 and r["classes_num"] == 5 and r["clips"] == 12
    assert np.isnan(r["average_precision"][3:]).all() and np.isnan(r["auc"][2:]).all()
    ap0 = metrics.average_precision_score(target[:, 0], output[:, 0])
    assert r["average_precision"][0] == pytest.approx(ap0)
    assert r["mAP"] == pytest.approx(np.mean(r["average_precision"][:3]))
    assert r["mAUC"] == pytest.approx(np.mean(r["auc"][:2]))
    for k in ("mAP", "mAUC", "d_prime"):
        assert np.isfinite(r[k])


def test_perfect_scores_give_finite_d_prime():
    from panns.evaluate import compute_metrics
    from panns.utilities import d_prime

    target = np.eye(4, dtype=np.float32)
    r = compute_metrics(target, target * 0.9 + 0.05)
    assert r["mAP"] == pytest.approx(1.0) and r["mAUC"] == pytest.approx(1.0)
    assert 5 < r["d_prime"] < 10
    assert d_prime(0.973) == pytest.approx(2.725, abs=1e-3)  # official reference value
    empty = compute_metrics(np.zeros((3, 2)), np.random.rand(3, 2))
    assert empty["ap_classes"] == 0 and np.isfinite(empty["mAP"])


def test_d_prime_is_the_official_formula_bit_for_bit():
    """d_prime uses scipy.special.ndtri (scipy.stats costs ~1 s to import): the official stats.norm().ppf's bits."""
    from scipy import stats

    from panns.utilities import d_prime

    auc = np.concatenate([np.linspace(0, 1, 10001), np.random.RandomState(0).rand(1000)])
    official = stats.norm().ppf(np.clip(auc, 1e-7, 1 - 1e-7)) * np.sqrt(2.0)
    assert np.array_equal(d_prime(auc), official)
    assert float(d_prime(0.8)) == float(official[8000])


def test_evaluator_over_batches_matches_metrics():
    from panns.evaluate import Evaluator, compute_metrics

    rs = np.random.RandomState(1)
    n, c = 10, 3
    target = (rs.rand(n, c) > 0.5).astype(np.float32)
    scores = rs.rand(n, c)
    model = FixedScores(scores)
    model.train()
    loader = [{"audio_name": np.array([f"Y{i}.wav" for i in idx]),
               "waveform": np.stack([np.full(8, i, np.float32) for i in idx]), "target": target[idx]}
              for idx in (np.arange(0, 4), np.arange(4, 8), np.arange(8, 10))]
    r = Evaluator(model).evaluate(loader)
    ref = compute_metrics(target, scores)
    np.testing.assert_allclose(r["average_precision"], ref["average_precision"], rtol=1e-6)
    assert r["clips"] == n and model.training, "evaluation must restore the train mode"


def _loader(target, sizes):
    out, start = [], 0
    for size in sizes:
        idx = np.arange(start, start + size)
        out.append({"audio_name": np.array([f"Y{i}.wav" for i in idx]),
                    "waveform": np.stack([np.full(8, i, np.float32) for i in idx]), "target": target[idx]})
        start += size
    return out


def test_compiled_evaluator_runs_one_shape_and_matches_eager(caplog):
    """A compiled training run compiles the evaluation forward too: every batch reaches the graph at the loaders'
    batch size (the shorter last one zero-padded, its padding dropped), so one graph serves both sets, and the
    metrics equal the eager evaluator's. A compiler that fails makes the first evaluation go on eagerly, with one
    log line, and the same metrics."""
    import logging

    from panns.evaluate import Evaluator

    rs = np.random.RandomState(2)
    n, c = 10, 3
    target = (rs.rand(n, c) > 0.5).astype(np.float32)
    scores = rs.rand(n, c)
    shapes = []

    def recording(gm, example_inputs):   # the waveform batches (B, 8) that reach the compiled graph
        def run(*args):
            shapes.extend(tuple(a.shape) for a in args if isinstance(a, torch.Tensor) and a.dim() == 2
                          and a.shape[1] == 8)
            return gm(*args)
        return run

    torch._dynamo.reset()
    try:
        eager = Evaluator(FixedScores(scores)).evaluate(_loader(target, (4, 4, 2)))
        ev = Evaluator(FixedScores(scores), compile_backend=recording, batch_size=4)
        first = ev.evaluate(_loader(target, (4, 4, 2)))
        second = ev.evaluate(_loader(target[:7], (4, 3)))   # another set, another last-batch size: same graph
        torch._dynamo.reset()

        def failing(gm, example_inputs):
            raise RuntimeError("no compiler here")

        with caplog.at_level(logging.WARNING, logger="panns.evaluate"):
            fallback = Evaluator(FixedScores(scores), compile_backend=failing, batch_size=4).evaluate(
                _loader(target, (4, 4, 2)))
    finally:
        torch._dynamo.reset()
    assert shapes and set(shapes) == {(4, 8)}, shapes
    for r in (first, fallback):
        np.testing.assert_array_equal(r["average_precision"], eager["average_precision"])
        assert r["clips"] == n
    assert second["clips"] == 7
    warned = [rec.getMessage() for rec in caplog.records if "evaluating eagerly" in rec.getMessage()]
    assert len(warned) == 1 and "no compiler here" in warned[0]
    assert eager["seconds"] >= eager["metrics_seconds"] >= 0


def test_constant_outputs_warn_and_are_counted(caplog):
    """A model that gives every clip the same scores (e.g. unconverged BatchNorm statistics) is
    warned about in one line, and the statistics count its degenerate classes."""
    import logging

    from panns.evaluate import Evaluator, StatisticsContainer

    rs = np.random.RandomState(3)
    n, c = 12, 4
    target = (rs.rand(n, c) > 0.5).astype(np.float32)
    loader = [{"audio_name": np.array([f"Y{i}.wav" for i in idx]),
               "waveform": np.stack([np.full(8, i, np.float32) for i in idx]), "target": target[idx]}
              for idx in (np.arange(0, 6), np.arange(6, 12))]
    constant = np.tile(rs.rand(1, c), (n, 1)) + 1e-7 * rs.randn(n, c)   # same scores for every clip
    with caplog.at_level(logging.WARNING, logger="panns.evaluate"):
        r = Evaluator(FixedScores(constant)).evaluate(loader)
    warned = [rec for rec in caplog.records if "constant" in rec.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0].getMessage()
    assert "BatchNorm" in warned[0].getMessage() and "learning rate" in warned[0].getMessage()
    assert r["degenerate_classes"] == c
    sc = StatisticsContainer("unused.pkl")
    sc.append(0, r, "test")
    assert sc.summaries()["test"][0]["degenerate_classes"] == c

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panns.evaluate"):
        ok = Evaluator(FixedScores(rs.rand(n, c))).evaluate(loader)   # a model that tells clips apart
    assert ok["degenerate_classes"] == 0 and not [rec for rec in caplog.records if "constant" in rec.getMessage()]


def test_statistics_container_files_and_truncation(tmp_path):
    from panns.evaluate import StatisticsContainer, compute_metrics

    path = str(tmp_path / "stats" / "statistics.pkl")
    sc = StatisticsContainer(path)
    rs = np.random.RandomState(2)
    target = (rs.rand(20, 4) > 0.5).astype(np.float32)
    for it in (0, 2000, 4000):
        for key in ("bal", "test"):
            sc.append(it, compute_metrics(target, rs.rand(20, 4)), key)
        sc.dump()
    with open(path, "rb") as f:
        stats = pickle.load(f)
    assert set(stats) == {"bal", "test"} and len(stats["test"]) == 3
    assert set(stats["test"][0]) == {"average_precision", "auc", "iteration"}
    assert stats["test"][0]["average_precision"].shape == (4,)
    assert os.path.isfile(sc.backup_statistics_path) and sc.backup_statistics_path != path
    summary = json.load(open(str(tmp_path / "stats" / "statistics.json")))
    assert [s["iteration"] for s in summary["bal"]] == [0, 2000, 4000]
    assert summary["test"][1]["ap_classes"] == 4 and 0 <= summary["test"][1]["mAP"] <= 1
    assert not [f for f in os.listdir(tmp_path / "stats") if ".tmp" in f]
    sc2 = StatisticsContainer(path)
    sc2.load_state_dict(2000)
    assert [s["iteration"] for s in sc2.statistics_dict["test"]] == [0, 2000]


def test_clip_bce_under_autocast_matches_fp32():
    from panns.losses import clip_bce, get_loss_func

    out = torch.rand(4, 6) * 0.98 + 0.01
    tgt = (torch.rand(4, 6) > 0.5).float()
    ref = torch.nn.functional.binary_cross_entropy(out, tgt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = clip_bce({"clipwise_output": out.bfloat16()}, {"target": tgt})
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-2)
    assert get_loss_func("clip_bce") is clip_bce
    with pytest.raises(PannsError, match="clip_bce"):
        get_loss_func("frame_bce")


def _write_stats(path, maps):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stats = {k: [{"average_precision": np.array([m, m, np.nan]), "auc": np.array([0.9, 0.9, np.nan]),
                  "iteration": 2000 * i} for i, m in enumerate(maps)] for k in ("bal", "test")}
    with open(path, "wb") as f:
        pickle.dump(stats, f)


def test_plot_runs_and_official_plot_command(tmp_path, monkeypatch):
    from panns.plot_statistics import load_curves, plot_runs

    ws = tmp_path / "ws"
    a = str(ws / "statistics" / "main" / "feat" / "Cnn14" / "balanced=balanced" / "statistics.pkl")
    b = str(ws / "statistics" / "main" / "feat" / "Cnn14" / "balanced=none" / "statistics.pkl")
    _write_stats(a, [0.1, 0.3, 0.5])
    _write_stats(b, [0.1, 0.2])
    its, maps = load_curves(a)["test"]
    assert list(its) == [0, 2000, 4000] and maps[2] == pytest.approx(0.5)  # NaN classes skipped
    out = plot_runs([a, b], str(tmp_path / "x.png"))
    assert os.path.getsize(out) > 1000
    script = os.path.join(REPO, "utils", "plot_statistics.py")
    r = subprocess.run([sys.executable, script, "plot", "--dataset_dir", "unused", f"--workspace={ws}",
                        "--select=1_aug"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(tmp_path / "results" / "1_aug.pdf") > 1000
    r = subprocess.run([sys.executable, script, "plot_runs", "--workspace", str(ws), "--statistics_paths", a,
                        "--output", str(tmp_path / "y.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and os.path.isfile(tmp_path / "y.png"), r.stderr
    r = subprocess.run([sys.executable, script, "plot", "--workspace", str(tmp_path / "nothing"), "--select=x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: no statistics.pkl"), r.stderr
    from panns import plot_statistics as ps

    monkeypatch.chdir(tmp_path)
    for select in ("../../escaped", "a/b", ".."):   # the figure's name, not a path out of results/
        with pytest.raises(PannsError, match="is not a figure name"):
            ps.main(["plot", f"--workspace={ws}", f"--select={select}"])
    assert not (tmp_path.parent.parent / "escaped.pdf").exists() and not (tmp_path / "results" / "a").exists()


def test_ap_and_auc_equal_scikit_learn_with_ties_and_degenerate_columns():
    """The one-sort AP/AUC for all classes equal scikit-learn's per-class definitions (ties included: scores
    rounded to 2 decimals), and undefined columns (no positives / only positives) are NaN."""
    from sklearn import metrics

    from panns.evaluate import ap_auc

    rs = np.random.RandomState(0)
    target = rs.rand(400, 12) < 0.2
    output = np.round(rs.rand(400, 12), 2)
    output[:, 3] = 0.5                    # one score for every clip: a single threshold
    target[:, 4], target[:, 5] = False, True
    ap, auc = ap_auc(target, output)
    ok = target.any(0)
    both = ok & ~target.all(0)
    np.testing.assert_allclose(ap[ok], metrics.average_precision_score(target[:, ok], output[:, ok], average=None),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(auc[both], metrics.roc_auc_score(target[:, both], output[:, both], average=None),
                               rtol=0, atol=1e-12)
    assert np.isnan(ap[4]) and np.isnan(auc[4]) and np.isnan(auc[5]) and not np.isnan(ap[5])


def test_plot_runs_plots_a_run_once_however_its_path_is_spelt(tmp_path, monkeypatch):
    """A statistics file given by --statistics_paths and found again under --workspace is one run, not two
    curves, when the two spellings differ ('./ws/...' against 'ws/...')."""
    from panns import plot_statistics as ps

    _write_stats(str(tmp_path / "ws" / "statistics" / "main" / "run" / "statistics.pkl"), [0.1, 0.2])
    plotted = []
    monkeypatch.setattr(ps, "plot_runs", lambda paths, *a, **k: plotted.append(list(paths)) or "y.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["plot_statistics.py", "plot_runs", "--workspace", "ws", "--statistics_paths",
                                      "./ws/statistics/main/run/statistics.pkl", "--output", "y.png"])
    ps.main()
    assert plotted == [["./ws/statistics/main/run/statistics.pkl"]]


def test_classification_report_names_classes_without_evaluation_clips():
    """sklearn's macro avg counts a class with no evaluation clip as 0: the fine-tune report says so and gives the
    average over the classes with clips (here 0.5, where the macro avg line shows 0.333); none when all have some."""
    from panns.evaluate import classification_scores

    targets = np.zeros((4, 3))
    targets[[0, 1], 0] = targets[[2, 3], 1] = 1
    probs = np.array([[.9, .1, 0], [.2, .7, .1], [.1, .8, .1], [.6, .3, .1]])
    for multi_label in (False, True):
        report = classification_scores(probs, targets, ["a", "b", "c"], multi_label)["report"]
        assert ("1 of 3 classes have no evaluation clip; the macro avg above counts them as 0. Over the 2 classes "
                "with clips: precision 0.500, recall 0.500, f1-score 0.500") in report, report
    assert "no evaluation clip" not in classification_scores(probs[:, :2], targets[:, :2], ["a", "b"], False)["report"]
