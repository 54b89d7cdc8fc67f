"""Fine-tuning as a user runs it: resuming a run with flags that change the model it trains or its evaluation
split, the hint when a changed flag renames the default run folder, and data sets as they come (split folders
in any case, one CSV row per label, metadata CSVs with short or blank rows or an index that contradicts the class
name, file names that are not UTF-8)."""
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from data_helpers import cli_error
from panns import checkpoint, models
from panns import finetune_data as fd
from panns import finetune_template as ft
from panns.errors import PannsError
from panns.training import finetune as ftask

SR = 16000
FRONTEND = dict(sample_rate=SR, window_size=512, hop_size=250, mel_bins=64, fmin=50, fmax=8000)


def _write_clips(root, classes=("cat", "dog"), per_class=3):
    rs = np.random.RandomState(0)
    t = np.arange(SR) / SR
    for k, c in enumerate(classes):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            y = 0.3 * np.sin(2 * np.pi * 300 * (k + 1) * t) + 0.01 * rs.randn(SR)
            sf.write(os.path.join(root, c, f"clip{i}.wav"), y.astype(np.float32), SR, subtype="PCM_16")
    return str(root)


@pytest.fixture(scope="module")
def unfrozen_run(tmp_path_factory):
    """A 2-step fine-tune of the whole model (run folder 'r') and its argv, minus --iterations."""
    d = tmp_path_factory.mktemp("ft_audit")
    data = _write_clips(d / "sounds")
    torch.manual_seed(0)
    base = models.create_model("Cnn6", 527, **FRONTEND)
    ckpt = str(d / "Cnn6.pth")
    torch.save({"model": base.state_dict(), "config": checkpoint.ModelConfig("Cnn6", **FRONTEND).to_dict()}, ckpt)
    argv = ["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", ckpt, "--dataset_dir", data,
            "--workspace", str(d / "ws"), "--batch_size", "2", "--eval_every", "2", "--num_workers", "0",
            "--eval_fraction", "0.34"]
    ft.main(argv + ["--iterations", "2", "--run_name", "r"])
    return argv, str(d / "ws" / "finetune" / "r")


def _latest_bytes(run_dir):
    with open(os.path.join(run_dir, "latest.pth"), "rb") as f:
        return f.read()


def test_resume_with_freeze_base_added_is_one_line_not_a_traceback(unfrozen_run, monkeypatch, capsys):
    # The run trained its base: a frozen resume would write checkpoints that refer to the pretrained base file
    # (dropping the trained base) - the optimizer's state did not fit and it failed with a ValueError traceback.
    argv, run_dir = unfrozen_run
    before = _latest_bytes(run_dir)
    code, line = cli_error(ft.main, argv + ["--iterations", "4", "--run_name", "r", "--resume", "--freeze_base"],
                           monkeypatch, capsys)
    assert code == 2 and "--freeze_base" in line and "latest.pth" in line, line
    assert _latest_bytes(run_dir) == before


def test_resume_with_another_loss_is_refused(unfrozen_run, monkeypatch, capsys):
    # nll trained a log-softmax head; resuming it as a sigmoid (bce) head silently changed what best.pth outputs.
    argv, run_dir = unfrozen_run
    code, line = cli_error(ft.main, argv + ["--iterations", "4", "--run_name", "r", "--resume", "--loss", "bce"],
                           monkeypatch, capsys)
    assert code == 2 and "--loss nll" in line and "--loss bce" in line, line


def test_resume_where_a_changed_flag_renamed_the_default_run_folder_names_the_runs_there(unfrozen_run, monkeypatch,
                                                                                        capsys):
    # Without --run_name the folder is named after the model, data, loss and --freeze_base: a resume with
    # --freeze_base added looked in another folder and said only that it held no latest.pth.
    argv, run_dir = unfrozen_run
    code, line = cli_error(ft.main, argv + ["--iterations", "4", "--resume", "--freeze_base"], monkeypatch, capsys)
    assert code == 2 and "Transfer_Cnn6_sounds_nll_frozen/latest.pth to resume from" in line, line
    assert "give --run_name to resume one of r (in " in line, line   # the run that can be resumed is named


def test_meta_csv_whose_index_contradicts_the_class_name_is_refused(tmp_path):
    # A class order taken from 'target' means nothing when one category has two targets (or one target two
    # categories): the first row silently won.
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = ["filename,fold,target,category"]
    for fold, targets in ((1, (0, 1)), (2, (1, 0))):
        for target, cat in zip(targets, ("dog", "rooster")):
            name = f"{fold}-{cat}.wav"
            sf.write(str(audio / name), np.zeros(SR // 10, np.float32), SR)
            rows.append(f"{name},{fold},{target},{cat}")
    meta = tmp_path / "meta" / "esc.csv"
    meta.parent.mkdir()
    meta.write_text("\n".join(rows) + "\n")
    with pytest.raises(PannsError, match="dog.*0 and 1"):
        fd.from_meta_csv(str(meta), "1")


def test_evaluation_line_names_map_once_when_it_is_the_metric():
    # multi-label runs logged 'eval mAP 1.0000, mAP 1.0000'
    assert ftask.score_text({"metric": "mAP", "value": 0.5, "mAP": 0.5}) == "eval mAP 0.5000"
    assert ftask.score_text({"metric": "accuracy", "value": 0.75, "mAP": 0.5}) == "eval accuracy 0.7500, mAP 0.5000"


def test_a_folder_link_back_up_the_tree_reads_each_clip_once(tmp_path):
    # os.walk(followlinks=True) followed dog/again -> ../dog 40 levels deep: 4 clips became 164, in both splits
    root = _write_clips(tmp_path / "sounds")
    os.symlink(os.path.join("..", "dog"), os.path.join(root, "dog", "again"))
    data = fd.from_folder(root, 0.34, 0)
    assert len(data.train) + len(data.eval) == 6
    assert not set(map(os.path.realpath, data.train.paths)) & set(map(os.path.realpath, data.eval.paths))


def test_resume_lists_no_change_of_the_resume_flag_itself(unfrozen_run, caplog):
    # 'Resuming with settings that differ from latest.pth's run: ..., resume False -> True' on every resume
    argv, run_dir = unfrozen_run
    with caplog.at_level(logging.INFO):
        ft.main(argv + ["--iterations", "4", "--run_name", "r", "--resume"])
    differ = [r.getMessage() for r in caplog.records if "differ from" in r.getMessage()]
    assert differ and "iterations 2 -> 4" in differ[0] and "resume" not in differ[0].split(": ", 1)[1], differ


def test_split_folders_in_any_case_and_layouts_that_would_train_a_classifier_of_splits(tmp_path):
    # Train/ + Test/ became two classes, 'Test' and 'Train', and trained with no warning
    root = tmp_path / "cased"
    _write_clips(root / "Train")
    _write_clips(root / "Test", per_class=1)
    data = fd.from_folder(str(root))
    assert data.labels == ["cat", "dog"] and len(data.train) == 6 and len(data.eval) == 2
    # train/, val/ and test/ with class folders: val/ evaluates, test/ stays untouched and the run says so
    root = tmp_path / "three"
    for split in ("train", "val", "test"):
        _write_clips(root / split, per_class=1)
    data = fd.from_folder(str(root))
    assert all(f"{os.sep}val{os.sep}" in p for p in data.eval.paths)
    assert any(w.startswith(f"{root / 'test'} not used") for w in data.warnings), data.warnings
    # split-named folders in other layouts: refused in one line, before any decoding
    loose = tmp_path / "loose"
    _write_clips(loose / "train")
    (loose / "test").mkdir()
    sf.write(str(loose / "test" / "x.wav"), np.zeros(SR // 10, np.float32), SR)
    alone = tmp_path / "alone"
    _write_clips(alone / "training")
    beside = tmp_path / "beside"
    _write_clips(beside / "train")
    _write_clips(beside / "eval")
    _write_clips(beside / "bird")
    for bad in (loose, alone, beside):
        with pytest.raises(PannsError, match="named like splits .* a classifier of splits"):
            fd.from_folder(str(bad))


def test_a_clip_on_several_rows_of_a_list_csv_is_one_clip_with_all_their_labels(tmp_path):
    # one row per (file, label), as many tools export: 'a.wav' trained once as dog and once as bark (nll, no warning)
    root = _write_clips(tmp_path / "sounds")
    cat, dog = sorted(os.listdir(os.path.join(root, "cat"))), sorted(os.listdir(os.path.join(root, "dog")))
    rows = ["fname,label", f"cat/{cat[0]},cat", f"cat/{cat[0]},noisy", f"cat/{cat[0]},cat"]
    rows += [f"cat/{c},cat" for c in cat[1:]] + [f"dog/{d},dog" for d in dog] + [f"dog/{dog[0]},noisy"]
    (tmp_path / "sounds" / "pairs.csv").write_text("\n".join(rows) + "\n")
    items = fd.read_list_csv(str(tmp_path / "sounds" / "pairs.csv"))
    assert len(items) == len({p for p, _ in items}) == 6
    assert dict(items)[os.path.join(root, "cat", cat[0])] == ["cat", "noisy"]
    data = fd.from_csv_lists(str(tmp_path / "sounds" / "pairs.csv"), eval_fraction=0.34)
    assert data.multi_label and data.labels == ["cat", "dog", "noisy"]


def test_a_rare_second_label_held_out_with_its_clip_trains_instead(tmp_path):
    # multi-label rows are held out by their first label: 'rare' (on one clip) could land in eval only, and the
    # user, who gave no eval split, got 'eval labels not seen in training: rare'
    items = [(f"/x/{c}{i}.wav", [c] + (["rare"] if (c, i) == ("dog", 0) else [])) for c in ("cat", "dog")
             for i in range(4)]
    for seed in range(8):
        train, evl = fd.stratified_split(items, 0.5, seed)
        assert "rare" in {lb for _p, lbs in train for lb in lbs}
        assert len(train) + len(evl) == 8 and evl


def test_meta_csv_short_blank_and_non_integer_rows_are_one_line_naming_the_line(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = ["filename,fold,target,category"]
    for i in range(4):
        sf.write(str(audio / f"{i}.wav"), np.zeros(SR // 10, np.float32), SR)
        rows.append(f"{i}.wav,{i // 2 + 1},{i % 2},{['dog', 'cat'][i % 2]}")
    meta = tmp_path / "meta" / "m.csv"
    meta.parent.mkdir()
    meta.write_text("\n".join(rows + [",,,", ",,,"]) + "\n")   # a spreadsheet's trailing empty rows
    data = fd.from_meta_csv(str(meta), "1")
    assert len(data.train) + len(data.eval) == 4 and "(2 folds)" in data.source
    for bad, message in (("4.wav,1", "line 6 \\(4.wav\\) has no 'category' and no 'target' value"),
                         ("4.wav,,0,dog", "line 6 \\(4.wav\\) has no 'fold' value"),
                         ("4.wav,1,x,dog", "integer class indexes; line 6 \\(4.wav\\) has 'x'")):
        meta.write_text("\n".join(rows + [bad]) + "\n")
        with pytest.raises(PannsError, match=message):
            fd.from_meta_csv(str(meta), "1")


def test_a_file_name_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    root = _write_clips(tmp_path / "sounds")
    raw = os.path.join(os.fsencode(root), b"cat", b"caf\xe9.wav")   # as an old zip unpacks it
    with open(raw, "wb") as f, open(os.path.join(root, "cat", "clip0.wav"), "rb") as g:
        f.write(g.read())
    with pytest.raises(PannsError, match=r"1 file name\(s\) are not UTF-8 text .*caf\\xe9.wav"):
        fd.from_folder(root, 0.34, 0)


def test_resume_on_another_holdout_fold_is_refused_and_keeps_the_run_record(tmp_path, monkeypatch, capsys):
    # the new eval fold had been training data, and best.pth (scored on the old fold) was compared against it;
    # a refused resume also replaced run.json with the refused command's record
    root = _write_clips(tmp_path / "sounds", per_class=2)
    rows = ["filename,fold,category"] + [f"{c}/clip{i}.wav,{i + 1},{c}" for c in ("cat", "dog") for i in range(2)]
    (tmp_path / "sounds" / "meta.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    ckpt = str(tmp_path / "Cnn6.pth")
    torch.save({"model": models.create_model("Cnn6", 527, **FRONTEND).state_dict(),
                "config": checkpoint.ModelConfig("Cnn6", **FRONTEND).to_dict()}, ckpt)
    argv = ["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", ckpt, "--meta_csv",
            os.path.join(root, "meta.csv"), "--audio_dir", root, "--workspace", str(tmp_path / "ws"), "--batch_size",
            "2", "--eval_every", "2", "--num_workers", "0", "--run_name", "r"]
    ft.main(argv + ["--holdout_fold", "1", "--iterations", "2"])
    record = tmp_path / "ws" / "finetune" / "r" / "run.json"
    before = record.read_bytes()
    for more, message in ((["--holdout_fold", "2", "--iterations", "4"],
                           "--holdout_fold 1; this run has --holdout_fold 2"),
                          (["--holdout_fold", "1", "--iterations", "2"], "already reached --iterations 2")):
        code, line = cli_error(ft.main, argv + more + ["--resume"], monkeypatch, capsys)
        assert code == 2 and message in line, line
        assert record.read_bytes() == before
