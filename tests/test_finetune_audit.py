"""Fine-tuning as a user runs it: resuming a run with flags that change the model it trains, the hint when a
changed flag renames the default run folder, and metadata CSVs whose class index contradicts the class name."""
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
