"""Bad input to the training command lines (main.py train, finetune_template.py): one-line errors, no
silent overwrites of earlier runs, no data lost, resumable stops (Ctrl-C, a NaN loss), settings a resume
would silently ignore. Tiny data: the AudioSet-layout workspace of test_train, the class folders of
test_finetune."""
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from panns import checkpoint, models
from panns import finetune_template as ft
from panns import main as main_cli
from panns.errors import PannsError, run_cli
from panns.frontend import FrontEnd
from panns.training import config as tl
from test_finetune import FRONTEND, _write_class_folders
from test_train import make_workspace, tiny_config


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(str(tmp_path_factory.mktemp("guards")), classes_num=3, train_per_class=3,
                          eval_per_class=1, clip_seconds=1.6)


def _train(ws, root, **kw):
    from panns.main import train

    workspace, labels = ws
    cfg = tiny_config(str(root), labels, **{"save_every": 2, "eval_every": 2, **kw})
    link = os.path.join(str(root), "hdf5s")   # the shared workspace's data, this test's outputs
    if not os.path.exists(link):
        os.symlink(os.path.join(workspace, "hdf5s"), link)
    return cfg, train(cfg)


def _saved(cfg):
    return sorted(int(f.split("_")[0]) for f in os.listdir(cfg.checkpoints_dir) if f.endswith("_iterations.pth"))


# ------------------------------------------------------------------------------------------- main.py train
def test_a_fresh_run_refuses_a_folder_holding_a_run_unless_overwrite(ws, tmp_path):
    cfg, _ = _train(ws, tmp_path, early_stop=4)
    before = os.path.getmtime(cfg.checkpoint_path(4)), os.path.getmtime(cfg.statistics_path)
    with pytest.raises(PannsError, match=r"already holds a run \(checkpoints at iterations 2, 4\); resume it with "
                                         r"--resume_iteration 4.*--overwrite"):
        _train(ws, tmp_path, early_stop=6)
    # where this command would stop no later than the run already got, resuming alone would be refused next
    with pytest.raises(PannsError, match=r"\(checkpoints at iterations 2, 4\); it reached iteration 4, so resuming it "
                                         r"takes --resume_iteration 4 with an --early_stop above 4, .*--overwrite"):
        _train(ws, tmp_path, early_stop=2)
    assert (os.path.getmtime(cfg.checkpoint_path(4)), os.path.getmtime(cfg.statistics_path)) == before
    _train(ws, tmp_path, early_stop=2, overwrite=True)
    assert _saved(cfg) == [0, 2], "--overwrite replaces the earlier run (no stale 4_iterations.pth)"


def test_resume_refuses_to_overwrite_later_checkpoints_unless_overwrite(ws, tmp_path):
    cfg, _ = _train(ws, tmp_path, early_stop=6)
    with pytest.raises(PannsError, match=r"--resume_iteration 2 would overwrite the later checkpoints 4, 6 .*"
                                         r"--resume_iteration 6.*--overwrite"):
        _train(ws, tmp_path, early_stop=4, resume_iteration=2)
    _train(ws, tmp_path, early_stop=4, resume_iteration=2, overwrite=True)
    assert _saved(cfg) == [0, 2, 4]


def test_resume_uses_the_given_learning_rate_and_says_so(ws, tmp_path, caplog):
    cfg, _ = _train(ws, tmp_path, early_stop=2)
    with caplog.at_level(logging.INFO):
        _, res = _train(ws, tmp_path, early_stop=4, resume_iteration=2, learning_rate=1e-4)
    lrs = {g["lr"] for g in checkpoint.load_checkpoint(res["checkpoint_path"])["optimizer"]["param_groups"]}
    assert lrs == {1e-4}, "the optimizer state restored the checkpoint's rate while the config recorded the new one"
    assert any("0.001 (checkpoint) -> 0.0001 (--learning_rate) from iteration 2" in r.getMessage()
               for r in caplog.records)


def _fail_at(monkeypatch, iteration, make):
    """tl.train_step that behaves normally, except at ``iteration`` where ``make(stats)`` decides."""
    real, calls = tl.train_step, {"n": 0}

    def step(*a, **k):
        calls["n"] += 1
        stats = real(*a, **k)
        return make(stats) if calls["n"] == iteration else stats

    monkeypatch.setattr(tl, "train_step", step)


def test_a_nan_loss_stops_before_anything_is_saved_and_names_the_iteration(ws, tmp_path, monkeypatch):
    _fail_at(monkeypatch, 3, lambda s: {**s, "loss": torch.tensor(float("nan"))})
    with pytest.raises(PannsError, match=r"training loss is nan at iteration 3.*last checkpoint is .*2_iterations.pth "
                                         r"\(iteration 2\).*--resume_iteration 2.*--learning_rate"):
        _train(ws, tmp_path, early_stop=6, log_every=100)
    cfg = tiny_config(str(tmp_path), ws[1])
    assert _saved(cfg) == [0, 2], "no checkpoint of the spoilt weights"


def test_ctrl_c_names_the_last_checkpoint_and_the_resume_flag(ws, tmp_path, monkeypatch, caplog):
    def interrupt(stats):
        raise KeyboardInterrupt

    _fail_at(monkeypatch, 3, interrupt)
    with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt):
        _train(ws, tmp_path, early_stop=6)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Interrupted")]
    assert line and "Interrupted at iteration 2; the last checkpoint is" in line[0], line
    assert "2_iterations.pth (iteration 2)" in line[0] and "--resume_iteration 2" in line[0]


def test_num_workers_capped_is_logged(ws, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tl, "cpu_share", lambda info: 0)
    with caplog.at_level(logging.INFO):
        _train(ws, tmp_path, early_stop=0, num_workers=3)
    assert any("--num_workers 3 capped to 0" in r.getMessage() for r in caplog.records)


def test_truncated_index_file_is_named(ws, tmp_path):
    from panns.training.audioset import check_inputs

    workspace, labels = ws
    idx = tmp_path / "hdf5s" / "indexes"
    idx.mkdir(parents=True)
    for name in ("balanced_train", "eval"):
        data = open(os.path.join(workspace, "hdf5s", "indexes", f"{name}.h5"), "rb").read()
        (idx / f"{name}.h5").write_bytes(data[: len(data) // 2] if name == "eval" else data)
    with pytest.raises(PannsError, match=r"index file .*eval\.h5 cannot be read .*truncated"):
        check_inputs(tiny_config(str(tmp_path), labels))


def test_window_longer_than_the_clips_is_one_line(ws):
    from panns.training.audioset import build_model

    with pytest.raises(PannsError, match="--window_size 512 is longer than the clips"):
        build_model(tiny_config("ws", ws[1]), 3, clip_samples=300, eval_clip_samples=300)


def test_resume_at_early_stop_is_refused_before_any_work(tmp_path, capsys):
    """--resume_iteration N with --early_stop N loaded the checkpoint, took no step, evaluated and saved nothing
    and logged 'Finished at iteration N'."""
    argv = ["train", "--workspace", str(tmp_path), "--model_type", "Cnn6", "--resume_iteration", "4", "--early_stop", "4"]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main_cli.main(argv))
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --resume_iteration 4 is already --early_stop 4: nothing left to "
                                               "train; raise --early_stop to train on")
    assert os.listdir(tmp_path) == []
    with pytest.raises(PannsError, match="--resume_iteration 5 is past --early_stop 4: nothing left"):
        tl.TrainConfig(workspace="w", resume_iteration=5, early_stop=4).validate()
    tl.TrainConfig(workspace="w", early_stop=0).validate()   # a fresh run of no steps still evaluates the start


@pytest.mark.parametrize("flag,value,expect", [
    ("--learning_rate", "nan", "finite"), ("--learning_rate", "inf", "finite"), ("--learning_rate", "0", "> 0"),
    ("--sample_rate", "0", ">= 1"), ("--hop_size", "0", ">= 1"), ("--seed", "-1", ">= 0"),
    ("--dist_timeout", "nan", "finite"), ("--grad_clip", "-1", ">= 0"), ("--grad_clip", "nan", "finite"),
    ("--num_workers", "-1", ">= 0"), ("--log_every", "-1", ">= 0")])
def test_main_flags_refuse_bad_numbers(flag, value, expect, capsys):
    with pytest.raises(SystemExit) as e:
        main_cli.build_parser().parse_args(["train", "--workspace", "w", "--model_type", "Cnn6", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be" in err and expect in err and "Traceback" not in err


def test_log_every_0_trains_without_loss_lines(ws, tmp_path, caplog):
    # the README documents it (and fine-tuning takes it), but main.py train refused it: '--log_every must be >= 1'
    args = main_cli.build_parser().parse_args(["train", "--workspace", "w", "--model_type", "Cnn6", "--log_every", "0"])
    assert args.log_every == 0
    with caplog.at_level(logging.INFO):
        cfg, _ = _train(ws, tmp_path, early_stop=2, log_every=0)
    assert _saved(cfg)[-1] == 2
    assert not [r for r in caplog.records if r.getMessage().startswith("iteration: ") and "loss:" in r.getMessage()]


def test_front_end_combinations():
    for fe in (FrontEnd(), FrontEnd(16000, 512, 160, 64, 50, 8000), FrontEnd(8000, 256, 80, 64, 50, 4000)):
        assert fe.check() is fe   # the official combinations pass
    with pytest.raises(PannsError, match="--fmin 9000 must be below --fmax 8000"):
        FrontEnd(16000, 512, 160, 64, 9000, 8000).check()
    with pytest.raises(PannsError, match=r"--fmax 9000 is above the Nyquist frequency .*\(8000 Hz\)"):
        FrontEnd(16000, 512, 160, 64, 50, 9000).check()
    with pytest.raises(PannsError, match="--window_size 100000 is too large"):
        FrontEnd(32000, 100000, 320, 64, 50, 14000).check()
    with pytest.raises(PannsError, match="--fmax 9000 is above"):   # programmatic use: TrainConfig.validate
        tl.TrainConfig(workspace="w", sample_rate=16000, fmax=9000).validate()
    with pytest.raises(PannsError, match="--learning_rate must be a finite number"):
        tl.TrainConfig(workspace="w", learning_rate=float("nan")).validate()


def test_no_sync_bn_help_shows_no_default():
    text = " ".join(main_cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "--no_sync_bn plain per-process BatchNorm even for small per-process batches --grad_comm" in text
    assert "(default: None)" not in text   # --sync_bn's help says in words what leaving it out does
    args = main_cli.build_parser().parse_args(["train", "--workspace", "w", "--model_type", "Cnn6"])
    assert args.sync_bn is None
    args = main_cli.build_parser().parse_args(["train", "--workspace", "w", "--model_type", "Cnn6", "--no_sync_bn"])
    assert args.sync_bn is False


# ------------------------------------------------------------------------------------ finetune_template.py
@pytest.fixture(scope="module")
def ft_setup(tmp_path_factory):
    """(class folders, our-format Cnn6 base, SED base) - random weights: these tests need no learning."""
    root = tmp_path_factory.mktemp("ft_guards")
    data = _write_class_folders(str(root / "sounds"), classes=2, per_class=4)
    paths = []
    torch.manual_seed(0)
    for name in ("Cnn6", "Cnn6_DecisionLevelAvg"):
        m = models.create_model(name, 527, **FRONTEND)
        path = str(root / f"{name}.pth")
        torch.save({"model": m.state_dict(), "config": checkpoint.ModelConfig(name, **FRONTEND).to_dict()}, path)
        paths.append(path)
    return data, paths[0], paths[1]


def _ft_args(ft_setup, ws, *extra):
    data, base, _ = ft_setup
    return ["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", base, "--dataset_dir", data,
            "--workspace", str(ws), "--run_name", "r", "--batch_size", "2", "--iterations", "2", "--eval_every", "2",
            "--num_workers", "0", "--clip_seconds", "0.5", "--eval_fraction", "0.25", *extra]


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: ft.main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("flag,value", [("--learning_rate", "nan"), ("--learning_rate", "0"), ("--seed", "-1"),
                                        ("--clip_seconds", "nan"), ("--clip_seconds", "0"), ("--probe_c", "0"),
                                        ("--log_every", "-1")])
def test_finetune_flags_refuse_bad_numbers_before_any_work(flag, value, ft_setup, tmp_path, capsys):
    err = _cli_error(_ft_args(ft_setup, tmp_path, flag, value), capsys)
    assert flag in err, err
    assert not os.path.exists(tmp_path / "finetune"), "refused before the run folder is touched"


def test_finetune_front_end_is_checked_before_the_model_is_built(capsys):
    err = _cli_error(["train", "--model_type", "Transfer_Cnn6", "--sample_rate", "16000", "--fmax", "9000"], capsys)
    assert "--fmax 9000 is above the Nyquist frequency" in err, err


def test_finetune_help_shows_every_default_once():
    text = " ".join(ft.build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "--seed SEED seed of the eval hold-out, batch order, crops and init (default: 0)" in text   # 0 == False
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "optimizer steps (default: 1000)" in text and "--linear_probe instead of fine-tuning" in text


def test_finetune_options_that_would_change_nothing_are_refused(ft_setup, tmp_path, capsys):
    """Read by another mode or data source only: one line before any work, instead of a run that ignores them."""
    data, base, _ = ft_setup
    common = ["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", base, "--workspace",
              str(tmp_path), "--num_workers", "0"]
    split = tmp_path / "split"   # train/ and eval/ folders of class folders: the data names its evaluation split
    for folder in ("train/a", "train/b", "eval/a", "eval/b"):
        os.makedirs(split / folder)
    lists = [str(tmp_path / n) for n in ("train.csv", "eval.csv")]
    for extra, expect in (
            (["--dataset_dir", data, "--linear_probe", "--iterations", "500", "--augmentation", "mixup"],
             "--iterations, --augmentation mixup have no effect with --linear_probe"),
            (["--dataset_dir", data, "--linear_probe", "--learning_rate", "0.01", "--head_init", "random", "--log_every",
              "5", "--eval_every", "5"], "--learning_rate, --head_init, --eval_every, --log_every have no effect"),
            (["--dataset_dir", data, "--linear_probe", "--resume"], "--resume has no effect with --linear_probe"),
            (["--dataset_dir", data, "--probe_c", "0.5"], "--probe_c has no effect without a linear probe"),
            (["--dataset_dir", data, "--freeze_base", "--head_init", "random", "--probe_c", "0.5"], "--probe_c has no"),
            (["--dataset_dir", data, "--audio_dir", data], "--audio_dir has no effect with --dataset_dir"),
            (["--dataset_dir", str(split), "--eval_fraction", "0.3"],
             f"--eval_fraction has no effect here: {split / 'eval'} holds the evaluation clips"),
            (["--train_csv", lists[0], "--eval_csv", lists[1], "--eval_fraction", "0.3"], "--eval_csv lists the"),
            (["--meta_csv", lists[0], "--holdout_fold", "1", "--eval_fraction", "0.3"], "--holdout_fold is the")):
        err = _cli_error(common + extra, capsys)
        assert expect in err, err
    assert not os.path.exists(tmp_path / "finetune")
    # Their defaults, and the same options where they are read, are not refused.
    for argv in (["--dataset_dir", data, "--linear_probe", "--probe_c", "0.5", "--eval_fraction", "0.3"],
                 ["--dataset_dir", data, "--freeze_base", "--probe_c", "0.5", "--iterations", "5"],
                 ["--dataset_dir", data, "--head_init", "probe", "--probe_c", "0.5"],
                 ["--dataset_dir", str(split)], ["--train_csv", lists[0], "--audio_dir", data, "--eval_fraction", "0.3"]):
        ft.refuse_unused(ft.build_parser().parse_args(common + argv))


def test_finetune_resume_with_changed_settings(ft_setup, tmp_path, capsys, caplog):
    ft.main(_ft_args(ft_setup, tmp_path, "--augmentation", "mixup"))
    err = _cli_error(_ft_args(ft_setup, tmp_path, "--augmentation", "mixup", "--batch_size", "4", "--iterations", "4",
                              "--resume"), capsys)
    # the batch sizes as given (the sampler's own check counted mixup's doubled clips: 'saved 4, now 8')
    assert "was saved by a run with --batch_size 2; this run has --batch_size 4" in err, err
    with caplog.at_level(logging.INFO):
        ft.main(_ft_args(ft_setup, tmp_path, "--augmentation", "mixup", "--iterations", "4", "--resume",
                         "--learning_rate", "0.5"))
    latest = checkpoint.load_checkpoint(str(tmp_path / "finetune" / "r" / "latest.pth"))
    assert {g["lr"] for g in latest["optimizer"]["param_groups"]} == {0.5}
    assert any("(--learning_rate) from iteration 2" in r.getMessage() for r in caplog.records)


def test_failed_overwrite_keeps_the_earlier_run(ft_setup, tmp_path, capsys):
    data = str(tmp_path / "sounds")
    _write_class_folders(data, classes=2, per_class=4)
    argv = _ft_args(ft_setup, tmp_path, "--dataset_dir", data)
    ft.main(argv)
    latest = tmp_path / "finetune" / "r" / "latest.pth"
    assert latest.exists()
    for i in range(7):   # a corrupt data set: the new run fails while decoding
        (tmp_path / "sounds" / os.listdir(data)[0] / f"broken{i}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    err = _cli_error(argv + ["--overwrite"], capsys)
    assert latest.exists(), "--overwrite removed the earlier run before the new one could start"
    # count and several names, not only the first
    assert "7 of 15 audio files cannot be decoded" in err and "broken0.wav" in err and "broken4.wav" in err, err
    assert "and 2 more" in err


def test_sed_checkpoint_suggests_nothing_that_fails(ft_setup, tmp_path, capsys):
    data, _, sed = ft_setup
    err = _cli_error(["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", sed,
                      "--dataset_dir", data, "--workspace", str(tmp_path), "--num_workers", "0"], capsys)
    assert "Cnn6_DecisionLevelAvg" in err and "Transfer_Cnn6_DecisionLevelAvg" not in err, err
    assert "sound event detection" in err


def test_export_refuses_existing_files_and_folders(ft_setup, tmp_path, capsys):
    ft.main(_ft_args(ft_setup, tmp_path))
    best = str(tmp_path / "finetune" / "r" / "best.pth")
    out = tmp_path / "out.pth"
    out.write_bytes(b"keep me")
    err = _cli_error(["export", "--checkpoint_path", best, "--output_path", str(out)], capsys)
    assert "exists" in err and "--overwrite" in err and out.read_bytes() == b"keep me"
    err = _cli_error(["export", "--checkpoint_path", best, "--output_path", str(tmp_path)], capsys)
    assert "is a folder" in err and "NotADirectoryError" not in err, err
    ft.main(["export", "--checkpoint_path", best, "--output_path", str(out), "--overwrite"])
    assert checkpoint.load_checkpoint(str(out))["iteration"] == 2


def test_decode_failures_line_lists_count_and_names(tmp_path):
    from panns import finetune_data as fd

    good = str(tmp_path / "good.wav")
    sf.write(good, np.zeros(1600, np.float32), 16000)
    bad = []
    for i in range(3):
        bad.append(str(tmp_path / f"bad{i}.wav"))
        open(bad[-1], "wb").write(b"not audio")
    with pytest.raises(PannsError, match=r"3 of 4 audio files cannot be decoded: cannot decode .*bad0\.wav.*; also "
                                         r".*bad1\.wav, .*bad2\.wav; fix or remove"):
        fd.build_cache([good] + bad, 16000, str(tmp_path / "cache"))


def test_a_run_name_that_leaves_the_finetune_folder_is_a_usage_error(capsys):
    """--run_name names a sub-folder of <workspace>/finetune: '..' or an absolute path would put a run (and an
    --overwrite's removals) somewhere else; nested names stay allowed."""
    for name in ("..", "a/../../x", "/tmp/x", "a\\..\\..\\x", " "):
        with pytest.raises(SystemExit) as e:
            ft.build_parser().parse_args(["train", "--run_name", name])
        assert e.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]   # argparse's usage, then the one error line
        assert "argument --run_name: a folder name inside <workspace>/finetune" in last, last
    assert ft.build_parser().parse_args(["train", "--run_name", "exp/1"]).run_name == "exp/1"


def test_a_frozen_base_without_pretrained_weights_is_called_a_random_feature_baseline(caplog):
    """Without --pretrained_checkpoint_path a frozen base never trains: the warning must not say 'from scratch'."""
    with caplog.at_level(logging.WARNING):
        assert ft.main(["train", "--model_type", "Transfer_Cnn6", "--freeze_base"]) is None   # no data: no work
        assert ft.main(["train", "--model_type", "Transfer_Cnn6"]) is None
    lines = [r.getMessage() for r in caplog.records if "No --pretrained_checkpoint_path" in r.getMessage()]
    assert len(lines) == 2 and "frozen: a random-feature baseline" in lines[0] and "from scratch" in lines[1], lines
