"""``main.py evaluate``: a checkpoint's mAP on an index file, checked against scikit-learn on the model's own
outputs for the packed clips, for checkpoints of ours and of the official format."""
import csv
import json
import logging
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from sklearn import metrics

from panns import checkpoint
from panns import main as main_cli
from panns import models
from panns.config import read_class_labels
from panns.utilities import int16_to_float32

from data_helpers import build_workspace, cli_error as _cli, make_dataset

CLASSES = 5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = make_dataset(str(root / "data"), extras=False, classes_num=CLASSES,
                        per_class={"balanced_train": 2, "eval": 4, "unbalanced_train": 1})
    ws = build_workspace(data, str(root / "ws"))
    labels = read_class_labels(data["labels_csv"])
    torch.manual_seed(0)
    model = models.create_model("Cnn6", classes_num=CLASSES).eval()
    cfg = checkpoint.ModelConfig.from_registry("Cnn6", classes_num=CLASSES)
    cfg.labels, cfg.ids = list(labels.labels), list(labels.ids)
    ours = str(root / "ours.pth")
    checkpoint.save_checkpoint(ours, {"model": model.state_dict(), "config": cfg.to_dict()})
    official = str(root / "official.pth")
    torch.save({"model": model.state_dict(), "iteration": 0}, official)   # the published files' layout
    # What the command must find: the model's scores for every packed evaluation clip, scored by scikit-learn.
    with h5py.File(os.path.join(ws["waveforms"], "eval.h5"), "r") as hf:
        x = torch.from_numpy(int16_to_float32(hf["waveform"][:]))
        target = hf["target"][:].astype(bool)
    with torch.no_grad():
        scores = model(x)["clipwise_output"].numpy()
    ap = np.array([metrics.average_precision_score(target[:, k], scores[:, k]) for k in range(CLASSES)])
    assert target.any(axis=1).all() and target.any(axis=0).all()   # every clip and class has a positive
    auc = np.array([metrics.roc_auc_score(target[:, k], scores[:, k]) for k in range(CLASSES)])
    return {"ws": ws["ws"], "ours": ours, "official": official, "labels_csv": data["labels_csv"], "ap": ap,
            "auc": auc, "clips": len(target), "labels": labels, "root": root, "positives": target.sum(axis=0)}


def test_evaluate_scores_every_clip_of_the_index_as_scikit_learn(env, tmp_path, capsys):
    out = str(tmp_path / "per_class.csv")
    r = main_cli.evaluate(main_cli.build_parser().parse_args(
        ["evaluate", "--workspace", env["ws"], "--checkpoint_path", env["ours"], "--num_workers", "1",
         "--output", out]))
    np.testing.assert_array_equal(r["positives"], env["positives"])
    assert r["clips"] == env["clips"] and r["index_mismatched_clips"] == 0
    np.testing.assert_allclose(r["average_precision"], env["ap"], rtol=1e-6)
    assert abs(r["mAP"] - env["ap"].mean()) < 1e-6
    printed = capsys.readouterr().out
    assert f"mAP {env['ap'].mean():.4f} over the {CLASSES} of {CLASSES} classes" in printed
    rows = list(csv.DictReader(open(out)))
    assert [row["display_name"] for row in rows] == env["labels"].labels
    np.testing.assert_allclose([float(row["AP"]) for row in rows], env["ap"], atol=1e-6)
    np.testing.assert_allclose([float(row["AUC"]) for row in rows], env["auc"], atol=1e-6)


def test_an_official_checkpoint_takes_its_model_type_and_the_label_csv(env, tmp_path):
    out = str(tmp_path / "r.json")
    main_cli.main(["evaluate", "--indexes_hdf5_path", os.path.join(env["ws"], "hdf5s", "indexes", "eval.h5"),
                   "--checkpoint_path", env["official"], "--model_type", "Cnn6", "--class_labels_csv",
                   env["labels_csv"], "--num_workers", "0", "--output", out])
    r = json.load(open(out))
    assert r["model_type"] == "Cnn6" and r["clips"] == env["clips"] and abs(r["mAP"] - env["ap"].mean()) < 1e-6
    assert [c["mid"] for c in r["classes"]] == env["labels"].ids


def test_positives_are_those_of_the_targets_scored_and_a_stale_index_is_named(env, tmp_path, capsys, caplog):
    # An index whose `target` no longer matches its waveform file (the audit: all False). The scores are
    # against the waveform file's targets, as training's evaluations; the counts printed and written must be
    # those same targets', and the disagreement is one warning line, not silence.
    os.makedirs(tmp_path / "indexes")
    shutil.copytree(os.path.join(env["ws"], "hdf5s", "waveforms"), tmp_path / "waveforms")
    index = str(tmp_path / "indexes" / "stale.h5")
    shutil.copy(os.path.join(env["ws"], "hdf5s", "indexes", "eval.h5"), index)
    with h5py.File(index, "r+") as hf:
        hf["target"][...] = False
    out = str(tmp_path / "r.json")
    with caplog.at_level(logging.WARNING):
        main_cli.main(["evaluate", "--indexes_hdf5_path", index, "--checkpoint_path", env["ours"],
                       "--num_workers", "0", "--output", out])
    r = json.load(open(out))
    assert [c["positives"] for c in r["classes"]] == env["positives"].tolist()
    assert abs(r["mAP"] - env["ap"].mean()) < 1e-6 and r["index_mismatched_clips"] == env["clips"]
    printed = capsys.readouterr().out
    best = int(np.argmax(env["ap"]))
    n = int(env["positives"][best])   # the bracket says what its number counts
    assert f"best AP: {env['labels'].labels[best]} {env['ap'][best]:.3f} ({n} positive{'s' if n != 1 else ''})" \
        in printed
    warned = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warned) == 1 and "stale.h5's targets differ" in warned[0], warned
    assert f"for {env['clips']} of {env['clips']} clips" in warned[0] and "create_indexes" in warned[0]


@pytest.mark.parametrize("extra,message", [
    (["--indexes_hdf5_path", "x.h5"], "not both or neither"),
    (["--data_type", "full_train", "--output", "r.txt"], "write .csv or .json"),
    (["--class_labels_csv", "LABELS", "--output", "LABELS"], "writing it would destroy the input"),
])
def test_usage_errors_are_one_line_before_any_work(env, monkeypatch, capsys, extra, message):
    argv = ["evaluate", "--workspace", env["ws"], "--checkpoint_path", env["ours"]] + \
        [env["labels_csv"] if a == "LABELS" else a for a in extra]
    code, err = _cli(main_cli.main, argv, monkeypatch, capsys)
    assert code == 2 and message in err, err


def test_an_index_of_other_classes_is_one_line(env, monkeypatch, capsys, tmp_path):
    torch.manual_seed(0)
    audioset = str(tmp_path / "cnn6_527.pth")
    torch.save({"model": models.create_model("Cnn6").state_dict()}, audioset)
    code, err = _cli(main_cli.main, ["evaluate", "--workspace", env["ws"], "--checkpoint_path", audioset,
                                     "--model_type", "Cnn6"], monkeypatch, capsys)
    assert code == 2 and f"targets for {CLASSES} classes" in err and "527" in err
    code, err = _cli(main_cli.main, ["evaluate", "--workspace", str(tmp_path), "--checkpoint_path", env["ours"]],
                     monkeypatch, capsys)
    assert code == 2 and "index file" in err and "not found" in err


def _index_of_edited_copy(env, tmp_path, edit) -> str:
    """An index of a copy of the packed evaluation clips, changed by ``edit(h5py.File)``."""
    from panns.create_indexes import create_indexes

    os.makedirs(tmp_path)
    wav = str(tmp_path / "eval.h5")
    shutil.copy(os.path.join(env["ws"], "hdf5s", "waveforms", "eval.h5"), wav)
    with h5py.File(wav, "r+") as hf:
        edit(hf)
    index = str(tmp_path / "eval_index.h5")
    create_indexes(wav, index)
    return index


def test_data_that_cannot_be_scored_or_is_of_other_classes_is_one_line_naming_the_fix(env, monkeypatch, capsys,
                                                                                      tmp_path, caplog):
    def no_positives(hf):
        hf["target"][...] = 0

    def other_ids(hf):   # packed with another label CSV of the same length
        hf.attrs["class_ids"] = list(np.roll(np.asarray(hf.attrs["class_ids"]), 1))

    # printed 'mAP 0.0000 over the 0 of 5 classes' and exit status 0
    code, err = _cli(main_cli.main, ["evaluate", "--indexes_hdf5_path", _index_of_edited_copy(env, tmp_path / "a",
                     no_positives), "--checkpoint_path", env["ours"]], monkeypatch, capsys)
    assert code == 2 and "has a positive label (in the targets of its waveform files" in err, err
    # the checkpoint carries its labels, so '--class_labels_csv' (the advice given) was ignored, with the same error
    code, err = _cli(main_cli.main, ["evaluate", "--indexes_hdf5_path", _index_of_edited_copy(env, tmp_path / "b",
                     other_ids), "--checkpoint_path", env["ours"]], monkeypatch, capsys)
    assert code == 2 and "the checkpoint's classes" in err and "--class_labels_csv" not in err, err
    # no checkpoint: a published one (527 AudioSet classes) was downloaded before the 5-class index refused it
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO):
        code, err = _cli(main_cli.main, ["evaluate", "--workspace", env["ws"], "--model_type", "Cnn6"], monkeypatch,
                         capsys)
    assert code == 2 and f"targets for {CLASSES} classes but the published checkpoints output the 527" in err, err
    assert "download" not in caplog.text.lower() and not os.path.exists(tmp_path / "cache")


def test_output_is_not_a_training_runs_own_file(env, monkeypatch, capsys, tmp_path):
    # --output .../statistics.json replaced the run's evaluation history with per-class results
    stats = tmp_path / "statistics" / "run"
    stats.mkdir(parents=True)
    (stats / "statistics.pkl").write_bytes(b"x")
    (stats / "statistics.json").write_text('{"bal": [], "test": []}')
    logs = tmp_path / "logs" / "run"
    logs.mkdir(parents=True)
    (logs / "0000.log").write_text("")
    (logs / "config.json").write_text("{}")
    for out, kind in ((stats / "statistics.json", "statistics"), (logs / "config.json", "run record")):
        before = out.read_bytes()
        code, err = _cli(main_cli.main, ["evaluate", "--workspace", env["ws"], "--checkpoint_path", env["ours"],
                                         "--output", str(out)], monkeypatch, capsys)
        assert code == 2 and f"is a training run's {kind}; give another path" in err, err
        assert out.read_bytes() == before
