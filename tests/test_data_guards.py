"""Guards of the data pipeline against inputs that used to destroy data or pass silently: outputs equal to
inputs, --skip_existing over files packed with other options, malformed CSV rows taken for headers,
inconsistent waveform files, label CSVs that disagree with themselves, nonsense clip options."""
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from data_helpers import make_dataset

from panns import config, packing
from panns import create_indexes as ci
from panns import dataset as ds
from panns.errors import PannsError
from panns.utilities import check_output_path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    info = make_dataset(str(root / "d"), extras=False,
                        per_class={"balanced_train": 1, "eval": 1, "unbalanced_train": 0})
    wave = str(root / "ws" / "wave" / "eval.h5")
    _pack(info, wave)
    return info, wave


def _pack(info, out, **kw):
    args = dict(clip_seconds=1.0, num_workers=1, class_labels_csv=info["labels_csv"], progress=False)
    args.update(kw)
    return ds.pack_waveforms_to_hdf5(info["eval_csv"], info["eval_dir"], str(out), **args)


def _digest(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------------------
# Outputs that are inputs
# ------------------------------------------------------------------------------------------------

def test_index_writers_refuse_to_overwrite_their_inputs_and_waveform_files(small, tmp_path):
    _info, wave = small
    w = str(tmp_path / "w.h5")
    shutil.copy(wave, w)
    before = _digest(w)
    with pytest.raises(PannsError, match="is the input"):
        ci.create_indexes(w, w)
    (tmp_path / "sub").mkdir()
    with pytest.raises(PannsError, match="is the input"):   # the input spelt another way
        ci.create_indexes(w, str(tmp_path / "sub" / ".." / "w.h5"))
    other = str(tmp_path / "other.h5")
    shutil.copy(wave, other)
    with pytest.raises(PannsError, match="existing waveform HDF5"):
        ci.create_indexes(w, other)
    assert _digest(w) == before and packing.is_complete_waveforms_hdf5(other)

    idx = tmp_path / "idx"
    ci.create_indexes(w, str(idx / "balanced_train.h5"))
    bal = _digest(idx / "balanced_train.h5")
    with pytest.raises(PannsError, match="is the input"):
        ci.combine_full_indexes(str(idx), str(idx / "balanced_train.h5"))
    assert _digest(idx / "balanced_train.h5") == bal
    with pytest.raises(PannsError, match="is a folder"):
        ci.combine_full_indexes(str(idx), str(idx))


def test_pack_refuses_output_that_is_its_csv_or_a_folder(small, tmp_path):
    info, _wave = small
    csv_copy = tmp_path / "seg.csv"
    shutil.copy(info["eval_csv"], csv_copy)
    text = csv_copy.read_text()
    with pytest.raises(PannsError, match="is the input"):
        ds.pack_waveforms_to_hdf5(str(csv_copy), info["eval_dir"], str(csv_copy), clip_seconds=1.0,
                                  class_labels_csv=info["labels_csv"], progress=False)
    assert csv_copy.read_text() == text
    folder = tmp_path / "out.h5"
    folder.mkdir()
    with pytest.raises(PannsError, match="is a folder"):
        _pack(info, folder)
    assert set(os.listdir(tmp_path)) == {"seg.csv", "out.h5"}   # no .missing.csv beside it
    assert os.listdir(folder) == []


def test_outputs_that_exist_and_are_not_hdf5_are_refused_not_replaced(small, tmp_path):
    # A typo'd output path naming a notes file, or one of the clips being packed, was replaced by the HDF5
    info, wave = small
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(PannsError, match="notes.txt exists and is not an HDF5 file"):
        _pack(info, notes)
    clip = tmp_path / "Yclip.wav"
    shutil.copy(os.path.join(info["eval_dir"], sorted(os.listdir(info["eval_dir"]))[0]), clip)
    before = _digest(clip)
    with pytest.raises(PannsError, match="Yclip.wav exists and is not an HDF5 file"):
        _pack(info, clip)
    with pytest.raises(PannsError, match="index file .*notes.txt exists and is not an HDF5 file"):
        ci.create_indexes(wave, str(notes))
    assert notes.read_text() == "my notes\n" and _digest(clip) == before
    assert sorted(os.listdir(tmp_path)) == ["Yclip.wav", "notes.txt"]
    empty = tmp_path / "empty.h5"   # an empty file holds nothing to lose: written as before
    empty.touch()
    assert _pack(info, empty).rows > 0


def test_output_paths_ending_in_a_separator_are_refused_before_any_work(small, tmp_path, monkeypatch):
    # 'out/new/' was packed in full, then failed renaming the temp with 'file not found: .../..missing.csv.tmp'
    # (the index writers: NotADirectoryError), leaving the new folder behind
    info, wave = small
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ds, "read_segments_csv", lambda *a: pytest.fail("packing started"))
    with pytest.raises(PannsError, match=r"output new/ ends with a path separator \(a folder\); give a file name"):
        _pack(info, "new" + os.sep)
    with pytest.raises(PannsError, match=r"index file idx/ ends with a path separator"):
        ci.create_indexes(wave, "idx" + os.sep)
    with pytest.raises(PannsError, match=r"index file full/ ends with a path separator"):
        ci.combine_full_indexes(os.path.dirname(wave), "full" + os.sep)
    assert os.listdir(tmp_path) == []


def test_output_starting_with_an_unexpanded_tilde_is_refused(small, tmp_path, monkeypatch):
    # bash passes '--waveforms_hdf5_path=~/ws/eval.h5' as it is: the pack went to a folder named '~' in the
    # current directory while the summary said '~/ws/eval.h5'
    info, wave = small
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(PannsError, match=r"output ~/ws/eval\.h5 starts with '~', which the shell did not expand.*"
                                         + str(tmp_path / "home" / "ws" / "eval.h5")):
        _pack(info, "~/ws/eval.h5")
    with pytest.raises(PannsError, match=r"index file ~/i\.h5 starts with '~'"):
        ci.create_indexes(wave, "~/i.h5")
    assert os.listdir(tmp_path) == []
    # one rule for every output (utilities.check_output_path), e.g. the figure of plot_statistics
    with pytest.raises(PannsError, match=r"--output ~/mAP\.png starts with '~'"):
        check_output_path("~/mAP.png", what="--output")
    with pytest.raises(PannsError, match=r"--output figs/ ends with a path separator"):
        check_output_path("figs" + os.sep, what="--output")
    assert os.listdir(tmp_path) == []
    (tmp_path / "~").mkdir()   # a folder really named '~' here: taken as meant
    assert _pack(info, "~/eval.h5").rows > 0


def test_outputs_through_a_missing_folder_and_back_are_one_line_before_any_work(small, tmp_path, monkeypatch):
    # 'nodir/../x.h5' cannot be opened while nodir does not exist: refused up front, not after packing
    # with an error about a temporary file; nothing is created (neither nodir nor a temp)
    info, wave = small
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ds, "read_segments_csv", lambda *a: pytest.fail("packing started"))
    with pytest.raises(PannsError, match=r"output nodir/\.\./w\.h5 goes through nodir, which does not exist.*"
                                         r"write it as w\.h5"):
        _pack(info, "nodir/../w.h5")
    with pytest.raises(PannsError, match=r"index file nodir/\.\./i\.h5 goes through nodir, which does not exist"):
        ci.create_indexes(wave, "nodir/../i.h5")
    assert os.listdir(tmp_path) == []


def test_unwritable_output_folder_is_not_called_a_full_disk(small):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    _info, wave = small
    with pytest.raises(PannsError, match="cannot write index file /proc/w.h5"):
        ci.create_indexes(wave, "/proc/w.h5")


def test_repacking_an_existing_output_says_it_replaces_it(small, tmp_path):
    info, _wave = small
    out = tmp_path / "e.h5"
    assert not _pack(info, out).replaced
    rep = _pack(info, out)
    assert rep.replaced and "replaced the existing file" in ds.summarize(rep, rep.rows)


# ------------------------------------------------------------------------------------------------
# --skip_existing compares options
# ------------------------------------------------------------------------------------------------

def _swapped_labels(src: str, dst) -> str:
    """The same classes with the first two mids swapped: same count, other targets."""
    rows = config.read_csv_rows(src)
    rows[1][1], rows[2][1] = rows[2][1], rows[1][1]
    dst.write_text("\n".join(",".join(f'"{c}"' if "," in c else c for c in r) for r in rows) + "\n")
    return str(dst)


def test_skip_existing_refuses_a_file_packed_with_other_options(small, tmp_path):
    info, wave = small
    out = tmp_path / "e.h5"
    shutil.copy(wave, out)
    assert _pack(info, out, skip_existing=True).skipped_existing
    for kw, what in ((dict(sample_rate=16000), "sample rate 32000 Hz, not 16000"),
                     (dict(clip_seconds=2.0), "clip length 32000 samples, not 64000"),
                     (dict(storage="flac"), "storage pcm16, not flac"),
                     (dict(class_labels_csv=_swapped_labels(info["labels_csv"], tmp_path / "l.csv")), "label list")):
        with pytest.raises(PannsError, match=f"--skip_existing: .*{what}.*drop --skip_existing"):
            _pack(info, out, skip_existing=True, **kw)
    assert _digest(out) == _digest(wave)


def test_skip_existing_packs_again_when_missing_clips_have_arrived(small, tmp_path):
    # download, pack, download again to fill the gaps, re-run the pack script (always --skip_existing): the old
    # output, without the clips downloaded since, was kept ("Skip: already packed")
    info, _wave = small
    audios = tmp_path / "audios"
    shutil.copytree(info["eval_dir"], audios)
    held = sorted(os.listdir(audios))[0]
    shutil.move(str(audios / held), str(tmp_path / held))
    out = tmp_path / "e.h5"
    kw = dict(clip_seconds=1.0, num_workers=1, class_labels_csv=info["labels_csv"], progress=False)
    first = ds.pack_waveforms_to_hdf5(info["eval_csv"], str(audios), str(out), **kw)
    assert [m[0] for m in first.missing] == [held]
    assert ds.pack_waveforms_to_hdf5(info["eval_csv"], str(audios), str(out), skip_existing=True, **kw).skipped_existing
    shutil.move(str(tmp_path / held), str(audios / held))   # downloaded at last
    again = ds.pack_waveforms_to_hdf5(info["eval_csv"], str(audios), str(out), skip_existing=True, **kw)
    assert not again.skipped_existing and again.rows == first.rows + 1 and not again.missing
    assert ds.pack_waveforms_to_hdf5(info["eval_csv"], str(audios), str(out), skip_existing=True, **kw).skipped_existing


def _targets(path):
    with h5py.File(path, "r") as hf:
        return dict(zip(hf["audio_name"][:].tolist(), hf["target"][:].tolist()))


def test_skip_existing_packs_again_when_the_segment_csv_changed(small, tmp_path, caplog):
    # scripts/2 always passes --skip_existing: a corrected CSV (a label edited, a clip added) or another
    # --csv_path kept the old output ("Skip: already packed"), and training read the stale labels
    info, _wave = small
    seg = tmp_path / "seg.csv"
    shutil.copy(info["eval_csv"], seg)
    out = tmp_path / "e.h5"
    kw = dict(clip_seconds=1.0, num_workers=1, class_labels_csv=info["labels_csv"], progress=False)

    def pack(csv_path, audios=info["eval_dir"], **more):
        return ds.pack_waveforms_to_hdf5(str(csv_path), str(audios), str(out), skip_existing=True, **kw, **more)

    first = pack(seg)
    assert not first.skipped_existing and pack(seg).skipped_existing
    rows = [r for r in seg.read_text().splitlines() if not r.startswith("#")]
    # the same rows written otherwise (no header lines, other spacing and quoting), or the audio folder moved: kept
    seg.write_text("".join(",".join(f'"{x}"' for x in r.split(", ", 3)[:3]) + ", " + r.split(", ", 3)[3] + "\n"
                           for r in rows))
    moved = tmp_path / "moved"
    shutil.copytree(info["eval_dir"], moved)
    assert pack(seg).skipped_existing and pack(seg, audios=moved).skipped_existing
    # a label edited: packed again, with the new label, and the log says why
    mids = [m for m, _ in config.read_class_labels(info["labels_csv"]).id_to_ix.items()]
    ytid, old_mid = rows[0].split(", ")[0], rows[0].split('"')[1]
    new_mid = next(m for m in mids if m != old_mid)
    seg.write_text("\n".join([rows[0].replace(old_mid, new_mid)] + rows[1:]) + "\n")
    caplog.clear()
    again = pack(seg)
    assert not again.skipped_existing and again.replaced and again.rows == first.rows
    assert "packed from other segment rows than " + str(seg) in caplog.text and "packing it again" in caplog.text
    assert "replaced the existing file: packed from other segment rows" in ds.summarize(again, again.rows)
    labels = config.read_class_labels(info["labels_csv"])
    row = _targets(out)[f"Y{ytid}.wav".encode()]
    assert row[labels.id_to_ix[new_mid]] and not row[labels.id_to_ix[old_mid]]
    assert pack(seg).skipped_existing
    # another --csv_path (one clip fewer): packed again
    fewer = tmp_path / "fewer.csv"
    fewer.write_text("\n".join(rows[1:]) + "\n")
    assert pack(fewer).rows == first.rows - 1
    # --keep_duplicates switched: the rows packed would differ, so packed again (and again when switched back)
    assert not pack(fewer, keep_duplicates=True).skipped_existing and pack(fewer, keep_duplicates=True).skipped_existing
    assert not pack(fewer).skipped_existing
    # an output of an earlier version records no digest: kept as before (no multi-hour re-pack), with a note
    with h5py.File(out, "a") as hf:
        del hf.attrs[packing.SEGMENTS_DIGEST_ATTR]
    kept = pack(seg)
    assert kept.skipped_existing and "cannot be seen" in kept.skip_note and len(_targets(out)) == first.rows - 1


def test_pack_script_without_dataset_is_one_line_and_creates_nothing(tmp_path, repo_root):
    """A mistyped DATASET_DIR: one error line, and no empty workspace tree left in the current directory."""
    script = os.path.join(repo_root, "scripts", "2_pack_waveforms_to_hdf5s.sh")
    r = subprocess.run(["bash", script, "datset"], env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                       text=True, cwd=str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("error: datset/metadata/eval_segments.csv not found"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and os.listdir(tmp_path) == []


def test_pack_script_skip_existing_refuses_changed_sample_rate(tmp_path, repo_root):
    info = make_dataset(str(tmp_path / "data"), extras=False,
                        per_class={"balanced_train": 1, "eval": 1, "unbalanced_train": 1})
    env = dict(os.environ, PYTHON=sys.executable, CLIP_SECONDS="1", NUM_WORKERS="1", PACK_JOBS="1")
    script = os.path.join(repo_root, "scripts", "2_pack_waveforms_to_hdf5s.sh")
    ws = str(tmp_path / "ws")
    r = subprocess.run(["bash", script, info["root"], ws], env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", script, info["root"], ws], env=dict(env, SAMPLE_RATE="16000"), capture_output=True,
                       text=True, cwd=str(tmp_path))
    assert r.returncode != 0 and "sample rate 32000 Hz, not 16000" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------
# Segment CSVs: a malformed first row is reported, not taken for a header
# ------------------------------------------------------------------------------------------------

def test_malformed_rows_among_the_first_three_lines_are_reported(tmp_path):
    good = 'id000000001, 0.000, 10.000, "/m/a"'
    bad = tmp_path / "bad.csv"
    bad.write_text('id000000000, 0:00, 10.000, "/m/a"\n' + good + "\n")
    with pytest.raises(PannsError, match=r"1 rows cannot be parsed: line 1 "):
        ds.read_segments_csv(str(bad))
    with pytest.raises(PannsError, match=r"line 1 "):
        ds.split_unbalanced_csv_to_partial_csvs(str(bad), str(tmp_path / "parts"))
    assert not (tmp_path / "parts").exists()
    header = tmp_path / "h.csv"
    header.write_text("YTID, start_seconds, end_seconds, positive_labels\n" + good + "\n")
    assert [s.ytid for s in ds.read_segments_csv(str(header))] == ["id000000001"]
    late = tmp_path / "late.csv"
    late.write_text((good + "\n") * 3 + "empty\n")   # 'empty' is a header only among the first three lines
    with pytest.raises(PannsError, match="line 4 "):
        ds.read_segments_csv(str(late))


@pytest.mark.parametrize("start, end, why", [("10.000", "10.000", "end 10.000 is not after start 10.000"),
                                             ("10.000", "9.000", "end 9.000 is not after start 10.000"),
                                             ("-1.000", "9.000", "start -1.000 is negative"),
                                             ("nan", "10.000", "start/end must be finite numbers"),
                                             ("0.000", "inf", "start/end must be finite numbers")])
def test_segments_with_no_length_are_refused_by_pack_and_split(small, tmp_path, start, end, why):
    # a zero-length segment became ffmpeg '-t 0.000' (no limit): the rest of the video saved as the clip
    info, _wave = small
    good = 'id000000001, 0.000, 10.000, "/m/a"'
    bad = tmp_path / "bad.csv"
    bad.write_text(f'# a\n# b\n# c\n{good}\nid000000002, {start}, {end}, "/m/a"\n')
    with pytest.raises(PannsError, match=rf"{bad}: 1 rows cannot be parsed: line 5 \({why}"):
        ds.read_segments_csv(str(bad))
    with pytest.raises(PannsError, match=r"bad\.csv: 1 rows cannot be parsed: line 5 "):
        ds.pack_waveforms_to_hdf5(str(bad), info["eval_dir"], str(tmp_path / "o.h5"), clip_seconds=1.0,
                                  num_workers=1, class_labels_csv=info["labels_csv"], progress=False)
    with pytest.raises(PannsError, match=r"bad\.csv: 1 rows cannot be parsed: line 5 "):
        ds.split_unbalanced_csv_to_partial_csvs(str(bad), str(tmp_path / "parts"))
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]


# ------------------------------------------------------------------------------------------------
# Inconsistent waveform files and index parts
# ------------------------------------------------------------------------------------------------

def _waveform_file(path, names=3, targets=(3, 5), rows=3):
    with h5py.File(path, "w") as hf:
        hf.create_dataset("audio_name", data=np.array([f"Y{i:011d}.wav".encode() for i in range(names)], dtype="S20"))
        hf.create_dataset("target", data=np.ones(targets, dtype=bool))
        hf.create_dataset("waveform", data=np.zeros((rows, 100), dtype=np.int16))
        hf.attrs["sample_rate"] = 32000
    return str(path)


@pytest.mark.parametrize("shape,problem", [
    (dict(targets=(2, 5)), "audio_name 3, target 2"),
    (dict(targets=(3,)), r"'target' has shape \(3,\)"),
    (dict(rows=1), "waveform rows 1"),
])
def test_create_indexes_refuses_inconsistent_waveform_files(tmp_path, shape, problem):
    w = _waveform_file(tmp_path / "w.h5", **shape)
    with pytest.raises(PannsError, match=f"w.h5 is an inconsistent waveform HDF5 .*{problem}"):
        ci.create_indexes(w, str(tmp_path / "i.h5"))
    assert not (tmp_path / "i.h5").exists()
    assert not packing.is_complete_waveforms_hdf5(w)


def test_combine_names_the_part_that_is_not_an_index(small, tmp_path, repo_root):
    _info, wave = small
    parts = tmp_path / "parts"
    parts.mkdir()
    shutil.copy(wave, parts / "balanced_train.h5")   # the waveforms folder given by mistake
    with pytest.raises(PannsError, match=r"balanced_train.h5 is not an index file .*waveform HDF5"):
        ci.combine_full_indexes(str(parts), str(tmp_path / "full.h5"))
    (parts / "balanced_train.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)   # corrupt
    r = subprocess.run([sys.executable, os.path.join(repo_root, "utils", "create_indexes.py"), "combine_full_indexes",
                        f"--indexes_hdf5s_dir={parts}", f"--full_indexes_hdf5_path={tmp_path / 'full.h5'}"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "balanced_train.h5" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_long_clip_ids_combine_and_ordinary_ones_keep_s20(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n")
    audios = tmp_path / "audios"
    audios.mkdir()
    import soundfile as sf

    seg = tmp_path / "seg.csv"
    ids = ["my_long_recording_name_001", "abcdefghijk"]
    seg.write_text("".join(f'{i}, 0.000, 1.000, "/m/a"\n' for i in ids))
    for i in ids:
        sf.write(str(audios / f"Y{i}.wav"), np.zeros(32000), 32000, subtype="PCM_16")
    w = str(tmp_path / "w" / "balanced_train.h5")
    ds.pack_waveforms_to_hdf5(str(seg), str(audios), w, clip_seconds=1.0, class_labels_csv=str(labels),
                              progress=False)
    idx = tmp_path / "idx"
    ci.create_indexes(w, str(idx / "balanced_train.h5"))
    assert ci.combine_full_indexes(str(idx), str(tmp_path / "full.h5")) == 2
    with h5py.File(tmp_path / "full.h5", "r") as hf:
        assert [x.decode() for x in hf["audio_name"][:]] == [f"Y{i}.wav" for i in ids]
    short = str(tmp_path / "short" / "balanced_train.h5")
    seg.write_text('abcdefghijk, 0.000, 1.000, "/m/a"\n')
    ds.pack_waveforms_to_hdf5(str(seg), str(audios), short, clip_seconds=1.0, class_labels_csv=str(labels),
                              progress=False)
    ci.create_indexes(short, str(tmp_path / "idx2" / "balanced_train.h5"))
    ci.combine_full_indexes(str(tmp_path / "idx2"), str(tmp_path / "full2.h5"))
    with h5py.File(tmp_path / "full2.h5", "r") as hf:
        assert hf["audio_name"].dtype == np.dtype("S20")


# ------------------------------------------------------------------------------------------------
# Label CSVs and clip options
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,error", [
    ("0,/m/a,A\n1,/m/a,B\n", "line 3 repeats the mid '/m/a' of line 2"),
    ("0,/m/a,A\n2,/m/b,B\n", "line 3 has index '2', expected 1"),
    ("1,/m/a,A\n0,/m/b,B\n", "line 2 has index '1', expected 0"),
])
def test_label_csv_that_disagrees_with_itself_is_refused(tmp_path, body, error):
    p = tmp_path / "l.csv"
    p.write_text("index,mid,display_name\n" + body)
    with pytest.raises(PannsError, match=error):
        config.read_class_labels(str(p))


def test_label_csv_blank_lines_are_skipped_and_indexes_still_checked(tmp_path):
    # an editor's trailing blank lines (or a blank line between rows) were 'line 4 has 0 columns'
    p = tmp_path / "l.csv"
    p.write_text("index,mid,display_name\r\n0,/m/a,A\r\n\r\n1,/m/b,B\r\n\r\n , ,\r\n\r\n")
    labels = config.read_class_labels(str(p))
    assert labels.ids == ["/m/a", "/m/b"] and labels.labels == ["A", "B"]
    p.write_text("index,mid,display_name\n0,/m/a,A\n\n2,/m/b,B\n")   # the index check counts classes, not lines
    with pytest.raises(PannsError, match="line 4 has index '2', expected 1"):
        config.read_class_labels(str(p))


def test_label_csv_fields_are_stripped(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text('index, mid, display_name\n0, /m/a, Speech\n1, /m/b, "Male speech, man speaking"\n')
    labels = config.read_class_labels(str(p))
    assert labels.ids == ["/m/a", "/m/b"] and labels.labels == ["Speech", "Male speech, man speaking"]


@pytest.mark.parametrize("flag,value", [("--clip_seconds", "nan"), ("--clip_seconds", "inf"), ("--clip_seconds", "0"),
                                        ("--sample_rate", "1"), ("--sample_rate", "-32000")])
def test_nonsense_clip_options_are_argument_errors(small, tmp_path, repo_root, flag, value):
    info, _wave = small
    r = subprocess.run([sys.executable, os.path.join(repo_root, "utils", "dataset.py"), "pack_waveforms_to_hdf5",
                        f"--csv_path={info['eval_csv']}", f"--audios_dir={info['eval_dir']}",
                        f"--waveforms_hdf5_path={tmp_path / 'o.h5'}", f"{flag}={value}",
                        f"--logs_dir={tmp_path / 'logs'}"], capture_output=True, text=True)
    assert r.returncode == 2 and f"argument {flag}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    with pytest.raises(PannsError, match=flag):
        _pack(info, tmp_path / "o.h5", **{flag[2:]: float(value) if flag == "--clip_seconds" else int(value)})


def test_split_unbalanced_refuses_a_part_that_is_its_input(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    src = parts / "unbalanced_train_segments_part00.csv"
    text = "".join(f'id{i:09d}, 0.000, 10.000, "/m/a"\n' for i in range(4))
    src.write_text(text)
    with pytest.raises(PannsError, match="is the input"):
        ds.split_unbalanced_csv_to_partial_csvs(str(src), str(parts), rows_per_part=3)
    assert src.read_text() == text   # the input is intact
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PannsError, match="is a file"):
        ds.split_unbalanced_csv_to_partial_csvs(str(src), str(tmp_path / "afile" / "sub"))


def test_plot_of_statistics_without_evaluations_is_refused_not_an_empty_figure(tmp_path):
    import pickle

    from panns import plot_statistics

    empty, full = tmp_path / "empty.pkl", tmp_path / "full.pkl"
    empty.write_bytes(pickle.dumps({"bal": [], "test": []}))
    full.write_bytes(pickle.dumps({"bal": [], "test": [{"iteration": 0, "average_precision": np.array([0.5, 0.7])}]}))
    out = tmp_path / "p.png"
    with pytest.raises(PannsError, match="empty.pkl holds no mAP yet"):
        plot_statistics.plot_runs([str(empty)], str(out))
    assert not out.exists()
    assert plot_statistics.plot_runs([str(empty), str(full)], str(out)) == str(out) and out.stat().st_size > 0


@pytest.mark.parametrize("size", [0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000])
def test_a_wav_written_to_a_pipe_is_whole_not_truncated(tmp_path, size):
    """ffmpeg, sox and others write a WAV to a pipe with an "unknown" data size: it was refused as truncated
    ('header says 67108.86 s, only 1.00 s present'), so packing dropped such clips and raise-mode readers failed."""
    import soundfile as sf

    from panns import audio_io

    path = str(tmp_path / "Ypiped000000.wav")
    x = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    sf.write(path, x, 16000, subtype="PCM_16")
    raw = bytearray(open(path, "rb").read())
    assert raw[36:40] == b"data"   # soundfile's plain 44-byte header
    raw[4:8] = raw[40:44] = size.to_bytes(4, "little")
    open(path, "wb").write(bytes(raw))
    data, sr = audio_io.read_audio(path, on_truncated="raise")
    assert sr == 16000 and data.shape == (1, 16000)
    assert np.allclose(data[0], x, atol=1 / 32768)
    assert not audio_io.is_truncated(path)


def test_a_failed_repack_keeps_the_output_and_its_missing_list(small, tmp_path):
    """A re-pack that packs nothing (a wrong --audios_dir, every clip undecodable) keeps the earlier output, and
    now its .missing.csv too: it was replaced by the attempt's list (every clip 'file not found') beside a file
    that holds them."""
    import soundfile as sf

    info, _ = small
    out = tmp_path / "eval.h5"
    _pack(info, out)
    (tmp_path / "eval.h5.missing.csv").write_text("audio_name,reason\nYkept.wav,file not found\n")
    kept = _digest(out), _digest(str(out) + ".missing.csv")
    elsewhere = tmp_path / "other_audio"
    elsewhere.mkdir()
    sf.write(str(elsewhere / "Ynot_listed.wav"), np.zeros(1600, np.float32), 16000)
    with pytest.raises(PannsError, match=r"none of the .* is in .*other_audio \(first: Y.*: file not found\); nothing "
                                         r"packed, and .*eval.h5 and its .missing.csv are kept as they were"):
        ds.pack_waveforms_to_hdf5(info["eval_csv"], str(elsewhere), str(out), clip_seconds=1.0,
                                  class_labels_csv=info["labels_csv"], progress=False)
    assert (_digest(out), _digest(str(out) + ".missing.csv")) == kept
    # without an earlier output, the list says why nothing was written
    fresh = tmp_path / "fresh.h5"
    with pytest.raises(PannsError, match=r"\(listed in .*fresh.h5.missing.csv\); nothing packed"):
        ds.pack_waveforms_to_hdf5(info["eval_csv"], str(elsewhere), str(fresh), clip_seconds=1.0,
                                  class_labels_csv=info["labels_csv"], progress=False)
    assert not fresh.exists() and "file not found" in (tmp_path / "fresh.h5.missing.csv").read_text()


def test_a_flac_cut_short_streams_what_is_there_with_a_warning(tmp_path, caplog):
    """Long files are decoded block by block (audio_io.stream_audio): a FLAC cut short raised soundfile's
    'flac decoder lost sync' mid-stream, a traceback that stopped the other files of the run too."""
    import logging

    import soundfile as sf

    from panns import audio_io

    path = str(tmp_path / "cut.flac")
    sf.write(path, (0.1 * np.random.RandomState(0).randn(8000 * 20)).astype(np.float32), 8000)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:len(raw) // 2])
    with caplog.at_level(logging.WARNING):
        got = np.concatenate(list(audio_io.stream_audio(path, 8000, block_seconds=0.5)))
    assert 0 < len(got) < 8000 * 20
    assert "truncated file" in caplog.text and "header says 20.00 s" in caplog.text


def test_flac_storage_at_a_rate_flac_cannot_hold_is_refused_before_any_decoding(small, tmp_path, monkeypatch):
    # --storage flac --sample_rate 700000 decoded every clip, then listed each as a decode error
    info, _ = small
    monkeypatch.setattr(packing, "decode_row", lambda *a: pytest.fail("a clip was decoded"))
    with pytest.raises(PannsError, match="--storage flac cannot hold audio at 700000 Hz"):
        _pack(info, tmp_path / "x.h5", storage="flac", sample_rate=700000)
    assert not list(tmp_path.iterdir())
