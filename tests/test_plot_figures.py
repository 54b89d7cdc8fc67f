"""The paper's figures from its published statistics (utils/plot_for_paper.py, against stand-in files served
by a loopback server), the official plot_statistics sub-commands beside plot/plot_runs, and statistics
pickles read as data only."""
import io
import json
import os
import pickle
import zipfile

import h5py
import numpy as np
import pytest

from panns import config, pretrained
from panns import paper_figures as pf
from panns import plot_statistics as ps
from panns.errors import PannsError
from panns.evaluate import StatisticsContainer
from panns.pytorch_utils import model_counts
from panns.utilities import read_statistics

from data_helpers import cli_error as _cli
from test_pretrained import _Server

C = 527


class _Hostile:
    def __reduce__(self):
        return (os.remove, ("never",))


def _run_stats(seed: int, evaluations: int = 30, classes: int = C, iterations: bool = False) -> dict:
    """A statistics dict like the published ones: rising per-class AP; no 'iteration' unless asked."""
    rs = np.random.RandomState(seed)
    rise = 1 - np.exp(-np.arange(evaluations) / 5.0)
    out = {}
    for key, scale in (("bal", 0.6), ("test", 0.4)):
        out[key] = [{"average_precision": np.clip(scale * rise[e] + 0.05 * rs.rand(classes), 0, 1),
                     "auc": np.full(classes, 0.9), **({"iteration": e * 2000} if iterations else {})}
                    for e in range(evaluations)]
    return out


def _long_fig_stats(seed: int = 0, classes: int = C) -> dict:
    rs = np.random.RandomState(seed)
    clips = (10 ** rs.uniform(1.5, 5, classes)).astype(np.int64)
    stats = {"sorted_indexes_for_plot": np.argsort(-clips),
             "official_balanced_training_samples": np.minimum(clips, 59),
             "official_unbalanced_training_samples": clips - np.minimum(clips, 59),
             "label_quality": [None if n % 5 == 0 else float(rs.rand()) for n in range(classes)]}
    for key, _, _ in pf.LONG_FIG_SYSTEMS:
        stats[key] = {"eval": {"average_precision": rs.rand(classes)}}
    return stats


def _published_zip(missing=()) -> tuple:
    """(zip bytes laid out as the record's archive, {file: stats}); junk members that must not be unpacked."""
    files = {f: _run_stats(n) for n, f in enumerate(sorted({c.file for _, cs in pf.SIX_PANELS for c in cs}))
             if f not in missing}
    files[pf.LONG_FIG_FILE] = _long_fig_stats()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, stats in files.items():
            zf.writestr(f"paper_statistics/{name}", pickle.dumps(stats))
        zf.writestr("__MACOSX/paper_statistics/._" + pf.LONG_FIG_FILE, b"\x00\x05\x16\x07")   # resource fork
        zf.writestr("paper_statistics/README.txt", b"not statistics")
        zf.writestr("../outside.pkl", pickle.dumps({"bal": [], "test": []}))   # a name that climbs out
    return buf.getvalue(), files


@pytest.fixture
def captured(monkeypatch):
    """The figures the commands save (still open), by output path."""
    figs = {}
    real = ps.save_figure

    def keep(fig, output, fmt):
        figs[output] = fig      # closing a figure leaves its axes and lines readable
        return real(fig, output, fmt)

    monkeypatch.setattr(ps, "save_figure", keep)
    return figs


@pytest.fixture
def fetched(tmp_path, monkeypatch, capsys):
    """paper_statistics/ fetched through the real command from a loopback copy of the record (one run missing)."""
    missing = pf.run_file("Cnn14_emb32")
    data, files = _published_zip(missing=(missing,))
    monkeypatch.chdir(tmp_path)
    with _Server({pf.PAPER_STATISTICS_ZIP: data}) as srv:
        monkeypatch.setenv("PANNS_CHECKPOINT_BASE_URL", srv.url)
        pf.main(["fetch"])
    out = capsys.readouterr().out
    return {"dir": tmp_path / "paper_statistics", "files": files, "missing": missing, "out": out}


def test_fetch_unpacks_only_the_statistics_into_the_folder(fetched, tmp_path):
    names = sorted(os.listdir(fetched["dir"]))
    assert names == sorted(fetched["files"])          # no README, no resource fork, nothing outside
    assert not (tmp_path / "outside.pkl").exists() and not (tmp_path / "paper_statistics.zip").exists()
    assert f"Unpacked {len(names)} statistics files" in fetched["out"]


def test_six_figures_plot_each_published_run(fetched, captured, caplog):
    out = str(fetched["dir"].parent / "results" / "six.png")
    pf.plot_six_figures(str(fetched["dir"]), out)
    assert os.path.getsize(out) > 0
    axes = captured[out].axes
    assert [a.get_title() for a in axes] == [t for t, _ in pf.SIX_PANELS]
    cnn14 = {ln.get_label(): ln for ln in axes[0].lines}["CNN14"]
    want = ps.mean_ap(np.stack([s["average_precision"] for s in fetched["files"][pf.CNN14]["test"]]))
    np.testing.assert_allclose(cnn14.get_ydata(), want)
    np.testing.assert_array_equal(cnn14.get_xdata(), np.arange(len(want)) * 2000)   # no 'iteration': 2,000 apart
    legends = [ln.get_label() for ln in axes[2].lines if not ln.get_label().startswith("_")]
    assert legends == ["CNN14,emb=2048", "CNN14,emb=128"]                            # the missing run left out
    assert any(fetched["missing"] in r.getMessage() for r in caplog.records)


def test_classwise_map_ranks_classes_by_training_clips(fetched, captured, audioset_labels_csv):
    out = str(fetched["dir"].parent / "cw.png")
    pf.plot_classwise_iteration_map(str(fetched["dir"]), out, audioset_labels_csv)
    long = fetched["files"][pf.LONG_FIG_FILE]
    clips = long["official_balanced_training_samples"] + long["official_unbalanced_training_samples"]
    order = np.argsort(-clips, kind="stable")
    ap = np.stack([s["average_precision"] for s in fetched["files"][pf.WAVEGRAM_LOGMEL]["test"]])
    most, middle, least = captured[out].axes
    for ax, classes in ((most, order[:10]), (least, order[-10:])):
        assert [ln.get_label() for ln in ax.lines] == [f"Class {k}, synthetic ({clips[k]:,})" for k in classes]
        np.testing.assert_allclose(ax.lines[0].get_ydata(), ap[:, classes[0]])
    assert "ranks 259-268 of 527" in middle.get_title()


def test_long_fig_bars_and_ap_follow_the_published_order(fetched, captured, audioset_labels_csv):
    out = str(fetched["dir"].parent / "long.pdf")
    pf.plot_long_fig(str(fetched["dir"]), out, audioset_labels_csv)
    long = fetched["files"][pf.LONG_FIG_FILE]
    order = long["sorted_indexes_for_plot"]
    clips = long["official_balanced_training_samples"] + long["official_unbalanced_training_samples"]
    first_row = captured[out].axes[0]
    np.testing.assert_array_equal([p.get_height() for p in first_row.patches], clips[order])
    ap_row = captured[out].axes[4]    # the AP axis twinned with the first row
    cnn14 = {ln.get_label(): ln for ln in ap_row.lines}["AP with CNN14"]
    np.testing.assert_allclose(cnn14.get_ydata(), long["panns_cnn14"]["eval"]["average_precision"][order])
    assert first_row.get_xticklabels()[0].get_text() == f"Class {order[0]}, synthetic"


def test_long_fig_of_another_label_list_is_one_line(fetched, monkeypatch, capsys, tmp_path):
    csv = tmp_path / "five.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},c{i}\n" for i in range(5)))
    code, err = _cli(pf.main, ["plot_long_fig", "--class_labels_csv", str(csv)], monkeypatch, capsys)
    assert code == 2 and "does not describe the 5 classes" in err


@pytest.mark.parametrize("mode", ["plot_six_figures", "plot_classwise_iteration_map", "plot_long_fig"])
def test_without_the_statistics_the_way_to_fetch_them_is_one_line(tmp_path, monkeypatch, capsys, mode):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(pf.main, [mode], monkeypatch, capsys)
    assert code == 2 and "utils/plot_for_paper.py fetch" in err
    assert os.listdir(tmp_path) == []


def test_a_damaged_download_is_one_line_and_installs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with _Server({pf.PAPER_STATISTICS_ZIP: b"PK\x03\x04 cut short"}) as srv:
        monkeypatch.setenv("PANNS_CHECKPOINT_BASE_URL", srv.url)
        code, err = _cli(pf.main, ["fetch"], monkeypatch, capsys)
    assert code == 2 and "not a complete zip archive" in err
    assert not (tmp_path / "paper_statistics").exists() or not os.listdir(tmp_path / "paper_statistics")


def test_statistics_are_read_as_data_only(tmp_path):
    ours = StatisticsContainer(str(tmp_path / "run" / "statistics.pkl"))
    ours.append(0, {"average_precision": np.array([0.5, np.nan]), "auc": np.array([0.7, np.nan])}, "test")
    ours.dump()
    assert read_statistics(ours.statistics_path)["test"][0]["iteration"] == 0
    for proto in (2, 3, 4):   # the official code's pickles (numpy arrays, plain dicts) in every protocol
        path = tmp_path / f"p{proto}.pkl"
        path.write_bytes(pickle.dumps(_run_stats(0, evaluations=2, classes=3), protocol=proto))
        assert read_statistics(str(path))["bal"][1]["average_precision"].shape == (3,)
    hostile = tmp_path / "statistics.pkl"
    hostile.write_bytes(pickle.dumps({"bal": [_Hostile()], "test": []}))
    (tmp_path / "never").write_text("kept")
    with pytest.raises(PannsError, match="posix.remove, which statistics never hold"):
        read_statistics(str(hostile))
    assert (tmp_path / "never").read_text() == "kept"


def _index(path, positives_per_class):
    """An index file whose class k has ``positives_per_class[k]`` clips."""
    rows = int(max(positives_per_class))
    target = np.zeros((rows, len(positives_per_class)), dtype=bool)
    for k, n in enumerate(positives_per_class):
        target[:n, k] = True
    with h5py.File(path, "w") as hf:
        hf["audio_name"] = np.array([f"Y{i:011d}.wav".encode() for i in range(rows)], dtype="S20")
        hf["hdf5_path"] = np.array([b"w.h5"] * rows, dtype="S10")
        hf["index_in_hdf5"] = np.arange(rows, dtype=np.int32)
        hf["target"] = target


def test_plot_class_iteration_of_a_workspace_run(tmp_path, monkeypatch, capsys, captured):
    """The official sub-command on a run of this project: classes ranked by the clips of the index the run
    trained on (its data_type= folder), AP read from its statistics."""
    labels = [f"c{k}" for k in range(40)]
    csv = tmp_path / "labels.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{k},/m/{k},{lb}\n" for k, lb in enumerate(labels)))
    counts = np.random.RandomState(3).permutation(np.arange(1, 41))
    os.makedirs(tmp_path / "ws" / "hdf5s" / "indexes")
    _index(tmp_path / "ws" / "hdf5s" / "indexes" / "balanced_train.h5", counts)
    run = tmp_path / "ws" / "statistics" / "main" / "sr" / "data_type=balanced_train" / "Cnn6" / "statistics.pkl"
    stats = StatisticsContainer(str(run))
    for it in (0, 50, 100):
        stats.append(it, {"average_precision": np.linspace(0, 1, 40) * it / 100, "auc": np.ones(40)}, "test")
        stats.append(it, {"average_precision": np.ones(40), "auc": np.ones(40)}, "bal")
    stats.dump()
    out = str(tmp_path / "cls.png")
    record = tmp_path / "ws" / "logs" / "main" / "sr" / "data_type=balanced_train" / "Cnn6" / "config.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"train": {"class_labels_csv": str(csv)}}))   # the run's label CSV, as it names it
    ps.main(["plot_class_iteration", "--workspace", str(tmp_path / "ws"), "--select", "mine", "--output", out])
    most = captured[out].axes[0]
    top = np.argsort(-counts, kind="stable")[:10]
    assert [ln.get_label() for ln in most.lines] == [f"c{k} ({counts[k]})" for k in top]
    np.testing.assert_allclose(most.lines[0].get_xdata(), [0, 50, 100])
    np.testing.assert_allclose(most.lines[0].get_ydata(), np.linspace(0, 1, 40)[top[0]] * np.array([0, .5, 1]))
    # a second run in the workspace: which one must be said
    StatisticsContainer(str(run).replace("Cnn6", "Cnn10")).dump()
    code, err = _cli(ps.main, ["plot_class_iteration", "--workspace", str(tmp_path / "ws"), "--select", "x"],
                     monkeypatch, capsys)
    assert code == 2 and "2 runs" in err and "--statistics_path" in err


def test_a_runs_statistics_lead_back_to_the_record_the_run_writes(tmp_path):
    """The run record plot_class_iteration reads is the one ``main.py train`` writes, for any run folder; a
    statistics file outside the workspace's statistics/ belongs to no run."""
    from panns.training import layout
    from panns.training.config import TrainConfig

    cfg = TrainConfig(workspace=str(tmp_path / "ws"), model_type="Cnn10", world_size=2, augmentation="none")
    run = layout.run_of_statistics(cfg.statistics_path, cfg.workspace)
    assert run == cfg.run_subpath
    assert layout.run_record_path(cfg.workspace, run) == os.path.join(cfg.logs_dir, "config.json")
    assert layout.run_of_statistics(str(tmp_path / "elsewhere" / "statistics.pkl"), cfg.workspace) is None
    assert layout.run_of_statistics(os.path.join(cfg.workspace, "statistics", "statistics.pkl"), cfg.workspace) is None


def test_complexity_figure_counts_flops_and_uses_published_maps(tmp_path, monkeypatch, captured):
    assert all(m in pretrained.CATALOGUE for family in ps.COMPLEXITY_FAMILIES for m in family)
    monkeypatch.setattr(ps, "COMPLEXITY_FAMILIES", (("Cnn6", "Cnn10"), ("MobileNetV1",)))
    out = str(tmp_path / "flops.png")
    ps.plot_complexity(out, progress=False)
    cnn = captured[out].axes[0].lines[0]
    np.testing.assert_allclose(cnn.get_xdata(), [model_counts(m)[1] / 1e9 for m in ("Cnn6", "Cnn10")])
    np.testing.assert_allclose(cnn.get_ydata(), [0.343, 0.380])


@pytest.mark.parametrize("mode", sorted(ps._AUTHORS_ONLY))
def test_official_sub_commands_of_the_authors_files_are_one_line(tmp_path, monkeypatch, capsys, mode):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(ps.main, [mode, "--workspace", "ws", "--select", "2_all", "--dataset_dir", "d"],
                     monkeypatch, capsys)
    assert code == 2 and "only the authors had" in err
    assert os.listdir(tmp_path) == []


def _evaluations(aps, start: int = 0) -> list:
    """Statistics entries as StatisticsContainer writes them: one per AP vector, iterations start, start+1, ..."""
    return [{"iteration": start + n, "average_precision": np.asarray(ap, dtype=np.float64),
             "auc": np.full(len(ap), 0.5)} for n, ap in enumerate(aps)]


def test_plot_runs_leaves_out_sets_without_any_map(tmp_path, monkeypatch, capsys, captured, caplog):
    """An evaluation set without positive clips stores every AP as NaN: no mAP, so no legend entry over nothing
    (one warning naming the file); a figure of nothing else is one error line, not a blank figure saved."""
    nan, good = tmp_path / "nan" / "statistics.pkl", tmp_path / "good" / "statistics.pkl"
    nan.parent.mkdir()
    good.parent.mkdir()
    nan.write_bytes(pickle.dumps({"bal": _evaluations([[0.5, 0.7]] * 2), "test": _evaluations([[np.nan] * 2] * 2)}))
    good.write_bytes(pickle.dumps({"bal": [], "test": _evaluations([[0.2, 0.4], [0.3, 0.5]])}))
    out = str(tmp_path / "two.png")
    ps.plot_runs([str(nan), str(good)], out)
    assert [ln.get_label() for ln in captured[out].axes[0].lines] == ["nan (balanced train)", "good (eval)"]
    warned = [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()]
    assert len(warned) == 1 and str(nan) in warned[0] and "eval" in warned[0]
    all_nan = tmp_path / "all_nan.pkl"
    all_nan.write_bytes(pickle.dumps({"bal": _evaluations([[np.nan] * 3]), "test": _evaluations([[np.nan] * 3] * 2)}))
    code, err = _cli(ps.main, ["plot_runs", "--statistics_paths", str(all_nan), "--output", str(tmp_path / "x.png")],
                     monkeypatch, capsys)
    assert code == 2 and "nothing to plot" in err and "all_nan.pkl" in err and "NaN" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("stats", [{"foo": _evaluations([[0.5]])}, {}])
def test_a_dict_without_bal_or_test_is_named_as_no_training_statistics(tmp_path, monkeypatch, capsys, stats):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps(stats))
    code, err = _cli(ps.main, ["plot_runs", "--statistics_paths", str(path), "--output", str(tmp_path / "x.png")],
                     monkeypatch, capsys)
    assert code == 2 and "is not a training run's statistics pickle" in err and "expected 'bal' and/or 'test'" in err
    assert ("'foo'" in err) == bool(stats) and "no mAP yet" not in err


def _ten_class_run(tmp_path):
    """A workspace with a 10-class run (its index counts 10 classes) and no run record."""
    os.makedirs(tmp_path / "ws" / "hdf5s" / "indexes")
    _index(tmp_path / "ws" / "hdf5s" / "indexes" / "balanced_train.h5", np.arange(1, 11))
    run = tmp_path / "ws" / "statistics" / "main" / "data_type=balanced_train" / "Cnn6" / "statistics.pkl"
    run.parent.mkdir(parents=True)
    run.write_bytes(pickle.dumps({"bal": [], "test": _evaluations([np.linspace(0, 1, 10)] * 2)}))
    return str(tmp_path / "ws")


def test_plot_class_iteration_of_another_label_list_names_the_csv_and_the_flag(tmp_path, monkeypatch, capsys):
    ws = _ten_class_run(tmp_path)
    five = tmp_path / "five.csv"
    five.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},c{i}\n" for i in range(5)))
    monkeypatch.setattr(config, "DEFAULT_LABELS_CSV", str(five))   # no run record: the default list is used
    argv = ["plot_class_iteration", "--workspace", ws, "--select", "s", "--output", str(tmp_path / "c.png")]
    code, err = _cli(ps.main, argv, monkeypatch, capsys)
    assert code == 2 and str(five) in err and "the default" in err and "--class_labels_csv" in err
    code, err = _cli(ps.main, argv + ["--class_labels_csv", str(five)], monkeypatch, capsys)
    assert code == 2 and str(five) in err and "10 classes" in err and "has 5" in err and "--class_labels_csv" in err
    assert not (tmp_path / "c.png").exists()


def test_curves_at_one_are_inside_the_frame_and_iterations_are_whole(tmp_path, captured):
    """AP or mAP of exactly 1 (a short run on a few clips) was drawn on the frame's top edge, and a two-step run
    had ticks at iteration 0.5 and 1.5."""
    path = tmp_path / "statistics.pkl"
    path.write_bytes(pickle.dumps({"bal": _evaluations([[1.0, 1.0]] * 3), "test": _evaluations([[0.5, 1.0]] * 3)}))
    out = str(tmp_path / "runs.png")
    ps.plot_runs([str(path)], out)
    out_cls = str(tmp_path / "cls.png")
    ps.plot_class_curves(np.array([0, 1, 2]), np.ones((3, 3)), np.array([3, 2, 1]), ["a", "b", "c"], out_cls,
                         per_panel=1)
    for ax in captured[out].axes + captured[out_cls].axes:
        low, high = ax.get_ylim()
        assert low < 0 and high > 1
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


def test_runs_side_by_side_in_one_folder_get_their_file_names_as_labels(tmp_path, captured):
    """Published statistics are files of one folder (paper_statistics/*.pkl): labels made of folders alone were
    the same for every one."""
    for name in ("a.pkl", "b.pkl"):
        (tmp_path / name).write_bytes(pickle.dumps({"bal": [], "test": _evaluations([[0.5]])}))
    out = str(tmp_path / "p.png")
    ps.plot_runs([str(tmp_path / "a.pkl"), str(tmp_path / "b.pkl")], out)
    assert [ln.get_label() for ln in captured[out].axes[0].lines] == ["a.pkl (eval)", "b.pkl (eval)"]
