"""Unbalanced parts of an earlier split never reach full_train.h5 silently: script 1 passes REMOVE_STALE_PARTS=1 to
the split, script 2 refuses (or removes) packed parts no part CSV maps to, script 3 removes the index of a packed
part that is gone, and combine_full_indexes refuses an index whose waveform HDF5 is missing. One run of scripts
1, 2 and 3 covers the scripts (each starts a few Python processes)."""
import os
import shutil
import subprocess
import sys

import h5py
import pytest

from data_helpers import build_workspace, make_dataset

from panns import create_indexes as ci
from panns.errors import PannsError

PART01 = os.path.join("unbalanced_train", "unbalanced_train_part01.h5")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A data set with two unbalanced parts, packed and indexed (one clip per class and split)."""
    base = tmp_path_factory.mktemp("stale")
    info = make_dataset(str(base / "data"), extras=False, classes_num=2,
                        per_class={"balanced_train": 1, "eval": 1, "unbalanced_train": 1})
    return info, build_workspace(info, str(base / "ws"))


@pytest.fixture
def ws(built, tmp_path):
    """A fresh copy of the built workspace (the tests delete parts of it)."""
    _, w = built
    shutil.copytree(w["ws"], tmp_path / "ws")
    root = tmp_path / "ws" / "hdf5s"
    return {"ws": tmp_path / "ws", "waveforms": root / "waveforms", "indexes": root / "indexes"}


def _full_paths(path) -> set:
    with h5py.File(path, "r") as hf:
        return {p.decode() for p in hf["hdf5_path"][:]}


def _script(repo_root, name, args, cwd, **env):
    return subprocess.run(["bash", os.path.join(repo_root, "scripts", name)] + [str(a) for a in args],
                          env=dict(os.environ, PYTHON=sys.executable, CLIP_SECONDS="1", NUM_WORKERS="1",
                                   PACK_JOBS="1", **env),
                          cwd=str(cwd), capture_output=True, text=True)


def test_combine_refuses_a_part_index_whose_waveforms_are_gone(ws):
    full = ws["indexes"] / "full_train.h5"
    before = full.read_bytes()
    os.remove(ws["waveforms"] / PART01)
    with pytest.raises(PannsError, match=r"index file .*unbalanced_train_part01\.h5 points at .*"
                                         r"unbalanced_train_part01\.h5, which is gone .*nothing was written"):
        ci.combine_full_indexes(str(ws["indexes"]), str(full))
    assert full.read_bytes() == before
    # remove_stale_indexes takes exactly that index away; combining then works without it
    assert ci.remove_stale_indexes(str(ws["indexes"] / "unbalanced_train")) == [str(ws["indexes"] / PART01)]
    assert (ws["indexes"] / "unbalanced_train" / "unbalanced_train_part00.h5").is_file()
    ci.combine_full_indexes(str(ws["indexes"]), str(full))
    assert not any("part01" in p for p in _full_paths(full))


def test_stale_parts_of_an_earlier_split_through_scripts_1_2_3(built, ws, tmp_path, repo_root):
    """The data set is split again from an unbalanced CSV that now makes one part: script 1 names part01's CSV
    (and how to remove it from the script), removes it with REMOVE_STALE_PARTS=1; script 2 then refuses the packed
    part01 that no part CSV maps to, removes it with REMOVE_STALE_PARTS=1; script 3 drops its index."""
    info, _ = built
    data = tmp_path / "data"
    shutil.copytree(info["root"], data)
    meta = data / "metadata"
    (meta / "qa_true_counts.csv").write_text("label_id,num_rated,num_true\n")
    # the one part of the new split holds both unbalanced clips: there already, so nothing is downloaded
    audios = data / "audios" / "unbalanced_train_segments"
    for wav in os.listdir(audios / "unbalanced_train_segments_part01"):
        os.link(audios / "unbalanced_train_segments_part01" / wav, audios / "unbalanced_train_segments_part00" / wav)
    env = dict(CSV_BASE_URL="http://127.0.0.1:9", URL_TEMPLATE="http://127.0.0.1:9/{ytid}")
    stale_csv = meta / "unbalanced_partial_csvs" / "unbalanced_train_segments_part01.csv"

    r = _script(repo_root, "1_download_dataset.sh", [data], tmp_path, **env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "unbalanced_train_segments_part01.csv" in r.stderr and "--remove_stale_parts (REMOVE_STALE_PARTS=1 for " \
           "scripts/1_download_dataset.sh); nothing was written" in r.stderr, r.stderr
    assert stale_csv.is_file()
    r = _script(repo_root, "1_download_dataset.sh", [data], tmp_path, REMOVE_STALE_PARTS="1", **env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Removed 1 part CSVs of an earlier split" in r.stdout and not stale_csv.exists()

    r = _script(repo_root, "2_pack_waveforms_to_hdf5s.sh", [data, ws["ws"]], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: {ws['waveforms']}/unbalanced_train holds 1 packed parts that no part CSV "), \
        r.stderr
    assert "earlier split: unbalanced_train_part01.h5. " in r.stderr and "REMOVE_STALE_PARTS=1" in r.stderr
    assert (ws["waveforms"] / PART01).is_file()
    r = _script(repo_root, "2_pack_waveforms_to_hdf5s.sh", [data, ws["ws"]], tmp_path, REMOVE_STALE_PARTS="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Removed 1 packed parts of an earlier split (--remove_stale_parts): unbalanced_train_part01.h5" in r.stdout
    assert sorted(os.listdir(ws["waveforms"] / "unbalanced_train")) == ["unbalanced_train_part00.h5"]

    r = _script(repo_root, "3_create_training_indexes.sh", [ws["ws"]], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Removed 1 index files whose packed waveforms are gone (deleted, or parts of an earlier split): " \
           "unbalanced_train_part01.h5\n" in r.stdout
    assert not (ws["indexes"] / PART01).exists()
    assert not any("part01" in p for p in _full_paths(ws["indexes"] / "full_train.h5"))
    with h5py.File(ws["indexes"] / "full_train.h5", "r") as hf:
        names = sorted(x.decode() for x in hf["audio_name"][:])
    # balanced_train's 2 clips, and both unbalanced clips now from the one current part
    assert len(names) == 4 and sum(n.startswith("Yd2") for n in names) == 2, names
