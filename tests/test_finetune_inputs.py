"""Fine-tuning inputs refused or warned about before any work: a --clip_seconds past the longest forward (or far
longer than the clips), and a workspace whose outputs would land in the --dataset_dir being scanned."""
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from panns import finetune_data as fd
from panns import finetune_template as ft
from panns.errors import run_cli
from panns.runtime import AUTO_WINDOW_SECONDS
from panns.training import finetune as ftask

SR = 16000


def _write_dataset(root, seconds=(1.0, 1.25), classes=("hum", "hiss"), per_class=2):
    rs = np.random.RandomState(0)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            n = int(seconds[i % len(seconds)] * SR)
            sf.write(os.path.join(root, c, f"clip{i}.wav"), (0.1 * rs.randn(n)).astype(np.float32), SR,
                     subtype="PCM_16")
    return str(root)


def _usage_error(argv, capsys) -> str:
    """argparse's usage error: exit status 2, its message on the last line of stderr."""
    with pytest.raises(SystemExit) as e:
        ft.build_parser().parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["1e9", str(AUTO_WINDOW_SECONDS + 1)])
def test_clip_seconds_past_the_longest_forward_is_a_usage_error(value, capsys):
    err = _usage_error(["train", "--dataset_dir", "d", "--workspace", "w", "--clip_seconds", value], capsys)
    assert "--clip_seconds" in err and f"at most {AUTO_WINDOW_SECONDS:.0f} s" in err, err
    args = ft.build_parser().parse_args(["train", "--clip_seconds", str(AUTO_WINDOW_SECONDS)])
    assert args.clip_seconds == AUTO_WINDOW_SECONDS   # the bound itself is accepted


def _resolve(tmp_path, clip_seconds, min_samples=1000):
    ds = _write_dataset(tmp_path / "sounds")
    data = fd.from_folder(ds, 0.5, 0)
    cache = fd.build_cache(data.train.paths + data.eval.paths, SR, str(tmp_path / "cache"))
    return ftask.resolve_clip_samples(clip_seconds, cache, data, SR, min_samples)


def test_clip_seconds_far_beyond_the_clips_warns_once_with_the_padding_and_the_default(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="finetune"):
        n = _resolve(tmp_path, 100.0)
    assert n == 100 * SR   # still honoured
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, warned
    # mean clip length 1.125 s of 100 s: 99% padding; the default picks the longest clip, 1.25 s
    assert "--clip_seconds 100" in warned[0] and "99% of each training input is zero padding" in warned[0]
    assert "1.25 s" in warned[0] and "80x" in warned[0], warned[0]


def test_clip_seconds_near_the_clips_does_not_warn(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="finetune"):
        assert _resolve(tmp_path, 2.0) == 2 * SR   # 1.6x the longest clip: some padding, no warning
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_clip_seconds_bound_holds_for_callers_of_the_api(tmp_path):
    with pytest.raises(ftask.PannsError, match="at most 600 s"):
        _resolve(tmp_path, 1e9)


def test_clip_seconds_bound_has_one_owner():
    assert ftask.check_clip_seconds(AUTO_WINDOW_SECONDS) == AUTO_WINDOW_SECONDS   # the bound itself is accepted
    for bad, says in ((AUTO_WINDOW_SECONDS + 1, "at most 600 s"), (float("nan"), "finite number > 0"),
                      (0.0, "finite number > 0")):
        with pytest.raises(ftask.PannsError, match=f"^--clip_seconds must be .*{says}"):
            ftask.check_clip_seconds(bad)


def _run(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: ft.main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# (workspace, extra flags, dataset_dir) relative to tmp_path; all of these would write into the data set
REFUSED = {
    "workspace_is_dataset": ("sounds", [], "sounds", "--workspace"),
    "workspace_inside_dataset": ("sounds/ws", [], "sounds", "--workspace"),
    "workspace_in_a_class_folder": ("sounds/hum/ws", [], "sounds", "--workspace"),
    "cache_dir_inside_dataset": ("ws", ["--cache_dir", "sounds/cache"], "sounds", "--cache_dir"),
    "dataset_is_the_cache_folder": ("ws", [], "ws/cache", "<workspace>/cache"),
    "dataset_is_the_runs_folder": ("ws", [], "ws/finetune", "<workspace>/finetune"),
    "dataset_is_the_run_folder": ("ws", ["--run_name", "a/sounds"], "ws/finetune/a/sounds", "the run folder"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_outputs_inside_the_dataset_folder_are_refused_before_any_work(case, tmp_path, capsys, monkeypatch):
    ws, extra, ds, what = REFUSED[case]
    monkeypatch.chdir(tmp_path)
    _write_dataset(tmp_path / ds)
    before = sorted(os.path.relpath(os.path.join(r, f), ds) for r, _d, fs in os.walk(ds) for f in fs)
    err = _run(["train", "--model_type", "Transfer_Cnn6", "--dataset_dir", ds, "--workspace", ws,
                "--iterations", "1", "--eval_every", "1", "--batch_size", "2", "--num_workers", "0", *extra], capsys)
    assert err.startswith(f"error: {what} ") and f"the data set folder (--dataset_dir {ds})" in err, err
    after = sorted(os.path.relpath(os.path.join(r, f), ds) for r, _d, fs in os.walk(ds) for f in fs)
    assert after == before and sorted(os.listdir(ds)) == ["hiss", "hum"]   # nothing written into the data set


def test_workspace_equal_to_the_dataset_through_a_link_and_an_earlier_runs_folders(tmp_path):
    ds = _write_dataset(tmp_path / "sounds")
    os.makedirs(os.path.join(ds, "cache"))
    os.makedirs(os.path.join(ds, "finetune"))
    os.symlink(ds, tmp_path / "link")
    args = ft.build_parser().parse_args(["train", "--dataset_dir", ds, "--workspace", str(tmp_path / "link") + "/"])
    with pytest.raises(ft.PannsError, match="remove the cache/ and finetune/ an earlier run wrote into it"):
        ft.load_data(args)


@pytest.mark.parametrize("layout", ["dataset_inside_workspace", "sibling_prefix", "csv_in_workspace",
                                    "dataset_deep_in_the_cache_folder"])
def test_workspace_beside_or_around_the_dataset_is_accepted(layout, tmp_path):
    ws = str(tmp_path / "ws")
    if layout == "csv_in_workspace":   # a CSV lists its clips: the workspace's files are never picked up
        _write_dataset(tmp_path / "ws" / "audio")
        with open(os.path.join(ws, "list.csv"), "w") as f:
            f.writelines(f"{c}/clip{i}.wav,{c}\n" for c in ("hum", "hiss") for i in range(2))
        data = ["--train_csv", os.path.join(ws, "list.csv"), "--audio_dir", ws + "/audio"]
    else:
        sub = {"dataset_inside_workspace": "ws/sounds", "sibling_prefix": "ws_sounds",
               "dataset_deep_in_the_cache_folder": "ws/cache/sounds"}[layout]
        data = ["--dataset_dir", _write_dataset(tmp_path / sub)]
    args = ft.build_parser().parse_args(["train", *data, "--workspace", ws, "--eval_fraction", "0.5"])
    loaded = ft.load_data(args)
    assert loaded is not None and loaded.classes_num == 2
