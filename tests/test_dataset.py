"""Packing (utils/dataset.py): official HDF5 format, byte-identical rows, missing/corrupt/resampled/stereo
clips, atomic output, CSV parsing and splitting."""
import csv
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from data_helpers import CLIP_SECONDS, SR, append_segment, make_dataset, official_pack_row

from panns import dataset as ds
from panns.errors import PannsError

CLIP = int(SR * CLIP_SECONDS)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ds"))
    info = make_dataset(root)
    out = os.path.join(root, "ws", "balanced_train.h5")
    rep = ds.pack_waveforms_to_hdf5(info["bal_csv"], info["bal_dir"], out, clip_seconds=CLIP_SECONDS,
                                    num_workers=2, class_labels_csv=info["labels_csv"], progress=False)
    return info, out, rep


def test_read_segments_csv_official_rule(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text('# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n'
                 '--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_,/m/0bt9lr,/m/0jbk"\n'
                 '-0SdAVK79lg, 30.000, 40.000, "/m/0155w"\n\n')
    segs = ds.read_segments_csv(str(p))
    assert [s.ytid for s in segs] == ["--4gqARaEJE", "-0SdAVK79lg"]
    assert segs[0].mids == ("/m/068hy", "/m/07q6cd_", "/m/0bt9lr", "/m/0jbk")
    assert (segs[1].start, segs[1].end) == (30.0, 40.0)
    assert segs[0].audio_name == "Y--4gqARaEJE.wav"


def test_split_unbalanced_csv(tmp_path):
    src = tmp_path / "unbalanced.csv"
    lines = [f'id{i:09d}, 0.000, 10.000, "/m/a"\n' for i in range(7)]
    src.write_text("#1\n#2\n#3\n" + "".join(lines))
    out = ds.split_unbalanced_csv_to_partial_csvs(str(src), str(tmp_path / "parts"), rows_per_part=3)
    assert [os.path.basename(p) for p in out] == [f"unbalanced_train_segments_part{i:02d}.csv" for i in range(3)]
    texts = [open(p).read() for p in out]
    assert all(t.startswith("empty\nempty\nempty\n") for t in texts)
    assert "".join(t[len("empty\n") * 3:] for t in texts) == "".join(lines)
    assert [len(ds.read_segments_csv(p)) for p in out] == [3, 3, 1]


def test_pack_format_is_official(packed):
    info, out, rep = packed
    with h5py.File(out, "r") as hf:
        n = hf["audio_name"].shape[0]
        assert hf["audio_name"].dtype == np.dtype("S20")
        assert hf["waveform"].dtype == np.int16 and hf["waveform"].shape == (n, CLIP)
        assert hf["target"].dtype == bool and hf["target"].shape == (n, 5)
        assert hf.attrs["sample_rate"] == SR and hf.attrs["sample_rate"].dtype == np.int32
        # The official loader's reads work.
        name = hf["audio_name"][0].decode()
        assert name.startswith("Y") and name.endswith(".wav")
        assert list(hf.attrs["class_ids"])[0] in ("/m/demo00", b"/m/demo00")
        names = [x.decode() for x in hf["audio_name"][:]]
    assert rep.rows == n
    assert b"" not in names  # no placeholder rows for missing clips
    extras = info["extras"]
    assert extras["missing"] not in names and extras["corrupt"] not in names
    for key in ("44k", "stereo", "long", "short", "hot"):
        assert extras[key] in names
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".tmp" in f]


def test_pack_missing_csv_lists_reasons(packed):
    info, out, rep = packed
    with open(out + ".missing.csv") as f:
        rows = {r["audio_name"]: r["reason"] for r in csv.DictReader(f)}
    assert set(rows) == {info["extras"]["missing"], info["extras"]["corrupt"]}
    assert rows[info["extras"]["missing"]] == "file not found"
    assert rows[info["extras"]["corrupt"]].startswith("decode error")
    assert {m[0] for m in rep.missing} == set(rows)


def test_pack_rows_byte_identical_to_official(packed):
    """32 kHz wav (normal, longer, shorter clips) and 44.1 kHz wav and stereo flac: same bytes as the official
    algorithm computed directly with librosa; hot file clipped instead of aborting."""
    info, out, _ = packed
    with h5py.File(out, "r") as hf:
        names = [x.decode() for x in hf["audio_name"][:]]
        rows = {name: hf["waveform"][i] for i, name in enumerate(names)}
        targets = {name: hf["target"][i] for i, name in enumerate(names)}
    d = info["bal_dir"]
    plain = [n for n in names if n.startswith("Yd")][:3]
    for name in plain + [info["extras"][k] for k in ("long", "short", "44k")]:
        np.testing.assert_array_equal(rows[name], official_pack_row(os.path.join(d, name), CLIP), err_msg=name)
    np.testing.assert_array_equal(rows[info["extras"]["stereo"]], official_pack_row(info["extras"]["stereo_file"], CLIP))
    hot = rows[info["extras"]["hot"]]
    assert hot.max() == 32767 and hot.min() == -32767
    assert targets[info["extras"]["stereo"]].tolist() == [False, True, False, False, False]


def test_pack_unknown_mid_is_clear_error(tmp_path):
    info = make_dataset(str(tmp_path), extras=False)
    append_segment(info["eval_csv"], "xunknown000", ["/m/nope"])
    with pytest.raises(PannsError, match=r"/m/nope.*class_labels_indices\.csv"):
        ds.pack_waveforms_to_hdf5(info["eval_csv"], info["eval_dir"], str(tmp_path / "e.h5"), clip_seconds=1.0,
                                  class_labels_csv=info["labels_csv"], progress=False)
    assert not os.path.exists(tmp_path / "e.h5")


def test_pack_interrupted_leaves_no_output(tmp_path, monkeypatch):
    info = make_dataset(str(tmp_path), extras=False)
    calls = []

    real = ds.packing.decode_row

    def flaky(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(ds.packing, "decode_row", flaky)
    out = tmp_path / "ws" / "eval.h5"
    with pytest.raises(KeyboardInterrupt):
        ds.pack_waveforms_to_hdf5(info["eval_csv"], info["eval_dir"], str(out), clip_seconds=1.0, num_workers=1,
                                  class_labels_csv=info["labels_csv"], progress=False)
    assert os.listdir(out.parent) == []  # neither the output nor a temporary file
    assert not ds.is_complete_waveforms_hdf5(str(out))


def test_pack_cli_mini_and_skip_existing(tmp_path, repo_root):
    info = make_dataset(str(tmp_path), extras=False, per_class={"balanced_train": 3, "eval": 3, "unbalanced_train": 1})
    out = str(tmp_path / "ws" / "eval.h5")
    cmd = [sys.executable, os.path.join(repo_root, "utils", "dataset.py"), "pack_waveforms_to_hdf5",
           f"--csv_path={info['eval_csv']}", f"--audios_dir={info['eval_dir']}", f"--waveforms_hdf5_path={out}",
           "--clip_seconds=1", "--num_workers=1", f"--class_labels_csv={info['labels_csv']}", "--mini_data",
           "--skip_existing", f"--logs_dir={tmp_path / '_logs'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    with h5py.File(out + ".mini", "r") as hf:
        assert hf["waveform"].shape == (10, SR)
    mtime = os.path.getmtime(out + ".mini")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0 and "Skip" in r.stdout
    assert os.path.getmtime(out + ".mini") == mtime
    # A bad argument is one clear line, not a traceback.
    bad = cmd[:3] + ["--csv_path=/nonexistent.csv", f"--audios_dir={info['eval_dir']}", f"--waveforms_hdf5_path={out}",
                     f"--class_labels_csv={info['labels_csv']}", f"--logs_dir={tmp_path / '_logs'}"]
    r = subprocess.run(bad, capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
