"""Packing (utils/dataset.py): official HDF5 format, byte-identical rows, missing/corrupt/resampled/stereo
clips, atomic output, CSV parsing and splitting."""
import csv
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from data_helpers import CLIP_SECONDS, SR, append_segment, make_dataset, official_pack_row

from panns import dataset as ds
from panns import packing
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
    # every field quoted (pandas' QUOTE_ALL, sheet exports), with its column header: the same rows
    q = tmp_path / "q.csv"
    q.write_text('"YTID","start_seconds","end_seconds","positive_labels"\n'
                 '"--4gqARaEJE","0.000","10.000","/m/068hy,/m/07q6cd_,/m/0bt9lr,/m/0jbk"\n'
                 '"-0SdAVK79lg","30.000","40.000","/m/0155w"\n')
    assert [(s.ytid, s.start, s.end, s.mids) for s in ds.read_segments_csv(str(q))] == \
        [(s.ytid, s.start, s.end, s.mids) for s in segs]
    # labels separated by ', ' inside the quotes (quoted or bare other fields): four or more of them were refused
    # as 'start/end are not numbers'
    r = tmp_path / "r.csv"
    r.write_text('"--4gqARaEJE","0.000","10.000","/m/068hy, /m/07q6cd_, /m/0bt9lr, /m/0jbk"\n'
                 '--4gqARaEJF, 0, 10, "/m/068hy, /m/07q6cd_, /m/0bt9lr, /m/0jbk"\n')
    assert [s.mids for s in ds.read_segments_csv(str(r))] == [segs[0].mids] * 2


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


def test_split_into_a_folder_with_parts_of_a_longer_csv_refuses_or_removes_them(tmp_path, capsys):
    # a re-split after the CSV shrank left the old extra parts, which scripts/1 and 2 download and pack
    src, parts = tmp_path / "unbalanced.csv", tmp_path / "parts"
    src.write_text("".join(f'id{i:09d}, 0.000, 10.000, "/m/a"\n' for i in range(7)))
    ds.split_unbalanced_csv_to_partial_csvs(str(src), str(parts), rows_per_part=2)   # 4 parts
    names = sorted(os.listdir(parts))
    before = {n: (parts / n).read_text() for n in names}
    assert ds.split_unbalanced_csv_to_partial_csvs(str(src), str(parts), rows_per_part=2)  # the same split: fine
    src.write_text("".join(f'id{i:09d}, 0.000, 10.000, "/m/b"\n' for i in range(3)))   # 2 parts now
    with pytest.raises(PannsError, match=r"parts holds 2 part CSVs that this split of .*unbalanced\.csv \(2 parts\) "
                                         r"would not write.*: unbalanced_train_segments_part02\.csv, "
                                         r"unbalanced_train_segments_part03\.csv\. .*--remove_stale_parts "
                                         r"\(REMOVE_STALE_PARTS=1 for scripts/1_download_dataset\.sh\); "
                                         r"nothing was written"):
        ds.split_unbalanced_csv_to_partial_csvs(str(src), str(parts), rows_per_part=2)
    assert {n: (parts / n).read_text() for n in sorted(os.listdir(parts))} == before
    capsys.readouterr()
    out = ds.split_unbalanced_csv_to_partial_csvs(str(src), str(parts), rows_per_part=2, remove_stale_parts=True)
    assert sorted(os.listdir(parts)) == [os.path.basename(p) for p in out] == names[:2]
    assert "/m/b" in (parts / names[0]).read_text()
    assert ("Removed 2 part CSVs of an earlier split (--remove_stale_parts): unbalanced_train_segments_part02.csv, "
            "unbalanced_train_segments_part03.csv") in capsys.readouterr().out
    # the CLI flag (50,000 rows a part: one part now); other files in the folder are not parts
    (parts / "notes.csv").write_text("mine\n")
    (parts / "unbalanced_train_segments_part09.csv").write_text("old\n")
    ds.main(["split_unbalanced_csv_to_partial_csvs", f"--unbalanced_csv={src}",
             f"--unbalanced_partial_csvs_dir={parts}", "--remove_stale_parts"])
    assert sorted(os.listdir(parts)) == ["notes.csv", names[0]]
    assert "Removed 2 part CSVs" in capsys.readouterr().out


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


def test_skip_existing_advice_names_the_scripts_setting_too(packed, tmp_path):
    """scripts/2_*.sh pass --skip_existing themselves: the advice to drop it names SKIP_EXISTING=0 as well."""
    info, out, _ = packed
    hint = r"drop --skip_existing \(SKIP_EXISTING=0 in scripts/2_\*\.sh\) to re-pack it"
    kw = dict(clip_seconds=CLIP_SECONDS, class_labels_csv=info["labels_csv"], skip_existing=True, progress=False)
    with pytest.raises(PannsError, match=f"other options .*; remove it or {hint}$"):
        ds.pack_waveforms_to_hdf5(info["bal_csv"], info["bal_dir"], out, sample_rate=16000, **kw)
    old = str(tmp_path / "balanced_train.h5")   # packed by an earlier version: no digest of its CSV
    shutil.copy(out, old)
    with h5py.File(old, "a") as hf:
        del hf.attrs[packing.SEGMENTS_DIGEST_ATTR]
    rep = ds.pack_waveforms_to_hdf5(info["bal_csv"], info["bal_dir"], old, **kw)
    assert rep.skipped_existing and re.search(f"cannot be seen; {hint}$", rep.skip_note), rep.skip_note


def test_skip_existing_reads_a_kept_output_in_one_open(packed, monkeypatch):
    """--skip_existing asks a kept output whether it is complete, what it was packed with and from which rows in
    one open (it was opened once per question), besides the kind check that every writer makes."""
    info, out, _ = packed
    opened = []
    real = h5py.File

    def counting(name, *a, **k):
        opened.append(os.path.abspath(str(name)))
        return real(name, *a, **k)

    monkeypatch.setattr(h5py, "File", counting)
    rep = ds.pack_waveforms_to_hdf5(info["bal_csv"], info["bal_dir"], out, clip_seconds=CLIP_SECONDS,
                                    class_labels_csv=info["labels_csv"], skip_existing=True, progress=False)
    assert rep.skipped_existing
    assert opened.count(os.path.abspath(out)) == 2, opened   # utilities.hdf5_kind, packing.read_kept_output


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
    np.testing.assert_array_equal(rows[info["extras"]["stereo"]],
                                  official_pack_row(info["extras"]["stereo_file"], CLIP))
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
    assert not ds.packing.is_complete_waveforms_hdf5(str(out))


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


# ------------------------------------------------------------------------------------------------
# Inputs, interrupts and full disks
# ------------------------------------------------------------------------------------------------

def _pack(info, out, **kw):
    args = dict(clip_seconds=1.0, num_workers=1, class_labels_csv=info["labels_csv"], progress=False)
    args.update(kw)
    return ds.pack_waveforms_to_hdf5(info["eval_csv"], info["eval_dir"], str(out), **args)


def test_headerless_csv_keeps_every_row_and_bad_rows_name_their_lines(tmp_path):
    rows = [f'id{i:09d}, 0.000, 10.000, "/m/a"' for i in range(4)]
    with_header = tmp_path / "h.csv"
    with_header.write_text("# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n" + "\n".join(rows) + "\n")
    plain = tmp_path / "p.csv"
    plain.write_text("\n".join(rows) + "\n")
    split_style = tmp_path / "s.csv"
    split_style.write_text("empty\nempty\nempty\n" + "\n".join(rows) + "\n")
    for p in (with_header, plain, split_style):
        assert [s.ytid for s in ds.read_segments_csv(str(p))] == [f"id{i:09d}" for i in range(4)], p
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([rows[0], "garbage", rows[1], 'id3, zero, 10.0, "/m/a"', rows[2]]) + "\n")
    with pytest.raises(PannsError, match=r"2 rows cannot be parsed: line 2 .*line 4 "):
        ds.read_segments_csv(str(bad))
    parts = ds.split_unbalanced_csv_to_partial_csvs(str(plain), str(tmp_path / "parts"), rows_per_part=3)
    assert sum(len(ds.read_segments_csv(p)) for p in parts) == 4  # the official split lost the first 3 rows


def test_empty_inputs_are_one_line_errors(tmp_path):
    from panns.create_indexes import create_indexes

    info = make_dataset(str(tmp_path / "d"), extras=False)
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("# a\n# b\n# c\n")
    out = tmp_path / "ws" / "x.h5"
    with pytest.raises(PannsError, match="lists no segments"):
        ds.pack_waveforms_to_hdf5(str(empty_csv), info["eval_dir"], str(out), class_labels_csv=info["labels_csv"])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(PannsError, match="no audio files"):
        ds.pack_waveforms_to_hdf5(info["eval_csv"], str(tmp_path / "nothing"), str(out),
                                  class_labels_csv=info["labels_csv"])
    assert not out.exists()
    with h5py.File(tmp_path / "zero.h5", "w") as hf:  # a 0-row file as older packers wrote it
        hf.create_dataset("audio_name", shape=(0,), dtype="S20")
        hf.create_dataset("waveform", shape=(0, 100), dtype=np.int16)
        hf.create_dataset("target", shape=(0, 5), dtype=bool)
    with pytest.raises(PannsError, match="holds no clips"):
        create_indexes(str(tmp_path / "zero.h5"), str(tmp_path / "idx.h5"))
    assert not (tmp_path / "idx.h5").exists()


def test_truncated_file_listed_and_short_clips_counted(tmp_path, caplog):
    import logging

    import soundfile as sf

    info = make_dataset(str(tmp_path / "d"), extras=False)
    y = 0.3 * np.sin(np.arange(3 * SR) / 5.0)
    full = tmp_path / "full.wav"
    sf.write(full, y, SR, subtype="PCM_16")
    data = full.read_bytes()
    (tmp_path / "d" / "audios" / "eval_segments" / "Yxtrunc00000.wav").write_bytes(data[:44 + 2 * 19840])
    append_segment(info["eval_csv"], "xtrunc00000", ["/m/demo00"])
    sf.write(tmp_path / "d" / "audios" / "eval_segments" / "Yxshort00000.wav", y[:SR // 4], SR, subtype="PCM_16")
    append_segment(info["eval_csv"], "xshort00000", ["/m/demo00"])
    sf.write(tmp_path / "d" / "audios" / "eval_segments" / "Yxnolab00000.wav", y[:SR], SR, subtype="PCM_16")
    append_segment(info["eval_csv"], "xnolab00000", [])   # '""': packed, with no positive label, and said so
    with caplog.at_level(logging.INFO):
        rep = _pack(info, tmp_path / "e.h5")
    reasons = dict(rep.missing)
    assert reasons["Yxtrunc00000.wav"].endswith("header says 3.00 s, only 0.62 s present")
    assert rep.short == 1 and "Clip length 1 s (32000 samples at 32000 Hz)" in caplog.text
    assert "1 clips are shorter than 0.5 x the clip length" in ds.summarize(rep, rep.rows + 1)
    with h5py.File(tmp_path / "e.h5", "r") as hf:
        names = [n.decode() for n in hf["audio_name"][:]]
        assert not hf["target"][names.index("Yxnolab00000.wav")].any()
    assert rep.unlabelled == 1 and "1 clips have no label in the CSV" in ds.summarize(rep, rep.rows + 1)


def test_stale_temp_of_dead_run_is_removed(tmp_path):
    info = make_dataset(str(tmp_path / "d"), extras=False)
    out = tmp_path / "ws" / "e.h5"
    out.parent.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out.parent / f".e.h5.tmp{dead.pid}"
    stale.write_bytes(b"x" * 1000)
    _pack(info, out)
    assert sorted(os.listdir(out.parent)) == ["e.h5"]


def test_disk_full_before_and_while_writing(tmp_path, monkeypatch):
    import errno
    import shutil as _shutil
    from collections import namedtuple

    from panns import create_indexes as ci
    from panns import storage, utilities
    from panns.utilities import DiskFullError

    info = make_dataset(str(tmp_path / "d"), extras=False)
    out = tmp_path / "ws" / "e.h5"
    usage = namedtuple("usage", "total used free")
    real_usage = _shutil.disk_usage
    monkeypatch.setattr(utilities.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 100_000, 100_000))
    with pytest.raises(DiskFullError, match=r"e\.h5 .*MB needed"):
        _pack(info, out)
    assert os.listdir(out.parent) == []
    monkeypatch.setattr(utilities.shutil, "disk_usage", real_usage)
    real = storage.WaveformWriter.append

    def fill(self, row):  # the disk fills at the third row (the free-space check cannot foresee everything)
        if self.rows == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, row)

    monkeypatch.setattr(storage.WaveformWriter, "append", fill)
    with pytest.raises(DiskFullError, match=r"disk full while writing .*e\.h5"):
        _pack(info, out, storage="flac")
    assert os.listdir(out.parent) == []
    monkeypatch.setattr(storage.WaveformWriter, "append", real)
    _pack(info, out)
    monkeypatch.setattr(ci.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 100_000, 100_000))
    with pytest.raises(DiskFullError, match=r"idx\.h5"):
        ci.create_indexes(str(out), str(tmp_path / "ws" / "idx.h5"))
    monkeypatch.setattr(ci.shutil, "disk_usage", real_usage)
    monkeypatch.setattr(ci, "_write_index_datasets", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(DiskFullError, match=r"idx\.h5"):
        ci.create_indexes(str(out), str(tmp_path / "ws" / "idx.h5"))
    assert sorted(os.listdir(out.parent)) == ["e.h5"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 6 MB tmpfs, where mounting is allowed (root on Linux); skipped elsewhere."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the injected-ENOSPC test covers the same path)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_tmpfs_pack_and_index_end_in_one_line(tmp_path, tiny_tmpfs, repo_root):
    info = make_dataset(str(tmp_path / "d"), extras=False, per_class={"balanced_train": 1, "eval": 40,
                                                                       "unbalanced_train": 0})
    base = [sys.executable, os.path.join(repo_root, "utils", "dataset.py"), "pack_waveforms_to_hdf5",
            f"--csv_path={info['eval_csv']}", f"--audios_dir={info['eval_dir']}", "--clip_seconds=1",
            f"--class_labels_csv={info['labels_csv']}", f"--logs_dir={tmp_path / 'logs'}", "--num_workers=2"]
    for storage_name in ("pcm16", "flac"):  # pcm16: refused up front; flac: stopped while writing
        r = subprocess.run(base + [f"--waveforms_hdf5_path={tiny_tmpfs / 'eval.h5'}", f"--storage={storage_name}"],
                           capture_output=True, text=True)
        assert r.returncode == 2, (storage_name, r.returncode, r.stderr)
        assert r.stderr.startswith("error: disk full while writing") and "eval.h5" in r.stderr
        assert r.stderr.count("\n") == 1 and "MB needed" in r.stderr
        assert [f for f in os.listdir(tiny_tmpfs) if f.endswith(".h5") or ".tmp" in f] == []


def test_ctrl_c_with_two_workers_stops_fast_and_leaves_no_temp(tmp_path, repo_root):
    """SIGINT while 2 workers decode: exit within seconds, rc 130, no output and no temporary file."""
    import signal
    import time

    info = make_dataset(str(tmp_path / "d"), extras=False, per_class={"balanced_train": 1, "eval": 20,
                                                                       "unbalanced_train": 0})
    out = tmp_path / "ws" / "eval.h5"
    # Slow decoding (0.2 s per clip) so that the interrupt lands mid-pack.
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from panns import packing, dataset\n"
            "real = packing.decode_row\n"
            "def slow(job):\n    time.sleep(0.2)\n    return real(job)\n"
            "packing.decode_row = slow\n"
            "sys.argv = ['dataset.py', 'pack_waveforms_to_hdf5', '--csv_path=%s', '--audios_dir=%s', "
            "'--waveforms_hdf5_path=%s', '--clip_seconds=1', '--num_workers=2', '--class_labels_csv=%s', "
            "'--logs_dir=%s']\n"
            "from panns.errors import run_cli\nrun_cli(dataset.main)\n") % (
        os.path.join(repo_root, "pytorch"), info["eval_csv"], info["eval_dir"], out, info["labels_csv"],
        tmp_path / "logs")
    for attempt in range(3):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5 + 0.3 * attempt)
        p.send_signal(signal.SIGINT)
        t0 = time.time()
        _out, err = p.communicate(timeout=20)
        assert time.time() - t0 < 5, "Ctrl-C took too long"
        assert p.returncode == 130, err
        assert "Traceback" not in err and err.strip().splitlines()[-1] == "error: interrupted"
        assert not out.exists() and [f for f in os.listdir(out.parent)] == []
