"""Index files (utils/create_indexes.py): official format, index-relative paths, file-name based combine,
official files still readable, black list creation."""
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from data_helpers import build_workspace, make_dataset

from panns import create_black_list
from panns import create_indexes as ci
from panns.errors import PannsError


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    # Both the data set and the workspace live under folders whose path contains 'train' (Q6).
    base = tmp_path_factory.mktemp("data") / "train_ws"
    info = make_dataset(str(base / "dataset"))
    return info, build_workspace(info, str(base / "workspace_train"))


def _read(path):
    with h5py.File(path, "r") as hf:
        return {k: hf[k][:] for k in hf}, dict(hf.attrs)


def test_create_indexes_format_and_relative_paths(ws):
    info, w = ws
    d, attrs = _read(w["bal_index"])
    with h5py.File(os.path.join(w["waveforms"], "balanced_train.h5"), "r") as hf:
        names, targets = hf["audio_name"][:], hf["target"][:]
    assert d["audio_name"].dtype == np.dtype("S20") and d["index_in_hdf5"].dtype == np.int32
    assert d["target"].dtype == bool
    np.testing.assert_array_equal(d["audio_name"], names)
    np.testing.assert_array_equal(d["target"], targets)
    np.testing.assert_array_equal(d["index_in_hdf5"], np.arange(len(names)))
    # Stored relative to the index folder; the official reader's decode() still works.
    paths = {p.decode() for p in d["hdf5_path"]}
    assert paths == {os.path.join("..", "waveforms", "balanced_train.h5")}
    assert attrs["hdf5_path_relative_to"] == "index_dir"


def test_combine_selects_by_file_name_sorted(ws):
    info, w = ws
    d, _ = _read(w["full"])
    paths = [p.decode() for p in d["hdf5_path"]]
    # eval.h5 must not leak in although the whole path contains 'train'.
    assert not any("eval" in p for p in paths)
    order = list(dict.fromkeys(paths))
    assert order == [os.path.join("..", "waveforms", "balanced_train.h5")] + [
        os.path.join("..", "waveforms", "unbalanced_train", f"unbalanced_train_part{p:02d}.h5") for p in range(2)]
    parts = [ci.read_index(p) for p in ci.find_part_indexes(w["indexes"])]
    assert sum(len(p) for p in parts) == len(paths)
    np.testing.assert_array_equal(d["audio_name"], np.concatenate([p.audio_names for p in parts]))


def test_combine_ignores_mini_and_other_files(ws, tmp_path):
    _, w = ws
    shutil.copytree(w["ws"], tmp_path / "ws")   # the waveforms too: their index files point at them
    idx = tmp_path / "ws" / "hdf5s" / "indexes"
    shutil.copy(idx / "balanced_train.h5", idx / "balanced_train.h5.mini")
    shutil.copy(idx / "eval.h5", idx / "eval_train_like.h5")
    n_full = ci.combine_full_indexes(str(idx), str(idx / "full_train.h5"))
    n_again = ci.combine_full_indexes(str(idx), str(idx / "full_train.h5"))  # does not include itself
    assert n_full == n_again == len(ci.read_index(w["full"]))


def test_workspace_can_move(ws, tmp_path):
    _, w = ws
    moved = tmp_path / "elsewhere" / "ws"
    shutil.copytree(w["ws"], moved)
    t = ci.read_index(str(moved / "hdf5s" / "indexes" / "full_train.h5"))
    assert all(p.startswith(str(moved)) and os.path.isfile(p) for p in t.hdf5_paths)


def test_official_style_index_paths_resolve(ws, tmp_path, monkeypatch):
    """Official files: S200 paths as typed, relative to the CWD of script 3, or absolute."""
    _, w = ws
    monkeypatch.chdir(w["ws"])
    official = tmp_path / "official_index.h5"
    src = ci.read_index(w["bal_index"], load_targets=True)
    rel_cwd = os.path.join("hdf5s", "waveforms", "balanced_train.h5")
    with h5py.File(official, "w") as hf:
        hf.create_dataset("audio_name", data=src.audio_names, dtype="S20")
        hf.create_dataset("target", data=src.targets, dtype=bool)
        hf.create_dataset("hdf5_path", data=[rel_cwd.encode()] * len(src), dtype="S200")
        hf.create_dataset("index_in_hdf5", data=src.indexes_in_hdf5, dtype=np.int32)
    t = ci.read_index(str(official))
    assert t.hdf5_paths == [os.path.abspath(rel_cwd)]
    assert ci.resolve_hdf5_path("/abs/x.h5", "/somewhere") == "/abs/x.h5"


def test_official_waveform_file_with_empty_rows(tmp_path):
    """Official packer left empty rows for missing clips: they are dropped, index_in_hdf5 keeps pointing right."""
    wav = tmp_path / "w" / "balanced_train.h5"
    wav.parent.mkdir()
    with h5py.File(wav, "w") as hf:
        hf.create_dataset("audio_name", data=[b"Ya.wav", b"", b"Yc.wav"], dtype="S20")
        hf.create_dataset("waveform", data=np.ones((3, 10), np.int16))
        hf.create_dataset("target", data=np.array([[1, 0], [0, 0], [0, 1]], bool))
        hf.attrs.create("sample_rate", data=32000, dtype=np.int32)
    n = ci.create_indexes(str(wav), str(tmp_path / "i" / "balanced_train.h5"))
    d, _ = _read(tmp_path / "i" / "balanced_train.h5")
    assert n == 2 and d["audio_name"].tolist() == [b"Ya.wav", b"Yc.wav"]
    assert d["index_in_hdf5"].tolist() == [0, 2]


def test_long_paths_are_not_truncated(ws, tmp_path):
    _, w = ws
    deep = tmp_path / ("d" * 120) / ("e" * 120) / "balanced_train.h5"
    deep.parent.mkdir(parents=True)
    shutil.copy(os.path.join(w["waveforms"], "balanced_train.h5"), deep)
    out = tmp_path / "idx" / "balanced_train.h5"
    ci.create_indexes(str(deep), str(out))
    t = ci.read_index(str(out))
    assert t.hdf5_paths == [str(deep)] and len(str(deep)) > 200


def test_cli_and_errors(ws, tmp_path, repo_root):
    _, w = ws
    exe = os.path.join(repo_root, "utils", "create_indexes.py")
    out = tmp_path / "e.h5"
    r = subprocess.run([sys.executable, exe, "create_indexes", f"--waveforms_hdf5_path={w['waveforms']}/eval.h5",
                        f"--indexes_hdf5_path={out}"], capture_output=True, text=True)
    assert r.returncode == 0 and "Write to" in r.stdout, r.stderr
    assert len(ci.read_index(str(out))) == len(ci.read_index(w["eval_index"]))
    r = subprocess.run([sys.executable, exe, "combine_full_indexes", f"--indexes_hdf5s_dir={tmp_path}/none",
                        f"--full_indexes_hdf5_path={tmp_path}/f.h5"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    with pytest.raises(PannsError, match="not found"):
        ci.read_index(str(tmp_path / "missing.h5"))


def test_black_list(tmp_path, capsys):
    assert create_black_list.dcase2017task4(str(tmp_path / "ws"), str(tmp_path / "none")) is None
    assert "Skip black list" in capsys.readouterr().out
    bl = tmp_path / "bl"
    bl.mkdir()
    (bl / "groundtruth_weak_label_testing_set.csv").write_text(
        "-5QrBL6MzLg_60.000_70.000.wav\t60.000\t70.000\tTrain horn\n"
        "-5QrBL6MzLg_60.000_70.000.wav\t60.000\t70.000\tTrain\n"
        "-E0shPRxAbo_30.000_40.000.wav\t30.000\t40.000\tCar\n")
    (bl / "groundtruth_weak_label_evaluation_set.csv").write_text("0BHN3aVgXNU_2.000_12.000.wav\t2.0\t12.0\tTruck\n")
    out = create_black_list.dcase2017task4(str(tmp_path / "ws"), str(bl))
    assert open(out).read().split() == ["-5QrBL6MzLg", "-E0shPRxAbo", "0BHN3aVgXNU"]
    from panns.data_generator import read_black_list

    assert read_black_list(out) == {"Y-5QrBL6MzLg.wav", "Y-E0shPRxAbo.wav", "Y0BHN3aVgXNU.wav"}


def test_black_list_refuses_empty_inputs_and_an_unwritable_output_in_one_line(tmp_path):
    # An empty (cut-off) ground-truth CSV wrote an empty black list silently; a workspace that is a file or a
    # folder where the list goes failed with Python's NotADirectoryError/IsADirectoryError text
    bl = tmp_path / "bl"
    bl.mkdir()
    (bl / "groundtruth_weak_label_testing_set.csv").write_text("-5QrBL6MzLg_60.000_70.000.wav\t60.0\t70.0\tTrain\n")
    (bl / "groundtruth_weak_label_evaluation_set.csv").write_text("\r\n")
    with pytest.raises(PannsError, match="groundtruth_weak_label_evaluation_set.csv lists no clips"):
        create_black_list.dcase2017task4(str(tmp_path / "ws"), str(bl))
    assert not (tmp_path / "ws").exists()
    (bl / "groundtruth_weak_label_evaluation_set.csv").write_text("0BHN3aVgXNU_2.000_12.000.wav\t2.0\t12.0\tTruck\n")
    (tmp_path / "wsfile").write_text("x")
    with pytest.raises(PannsError, match="wsfile is a file"):
        create_black_list.dcase2017task4(str(tmp_path / "wsfile"), str(bl))
    (tmp_path / "ws" / "black_list" / "dcase2017task4.csv").mkdir(parents=True)
    with pytest.raises(PannsError, match="is a folder"):
        create_black_list.dcase2017task4(str(tmp_path / "ws"), str(bl))
