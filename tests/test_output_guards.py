"""HDF5 outputs that used to be destroyed: one recogniser of the project's HDF5 kinds (waveforms, index,
embeddings, framewise) that all four writers ask before any work, and extract_embeddings --overwrite
that replaces the old file only once the new one is complete."""
import glob
import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest
import soundfile as sf

from panns import create_indexes as ci
from panns import dataset as ds
from panns import extract
from panns import inference
from panns import utilities
from panns.errors import PannsError
from data_helpers import cli_error, make_dataset, seeded_checkpoint

SR = 32000
TORCH = "--backend=torch"   # the guards, not the backend, are under test
KINDS = ("waveforms", "index", "embeddings", "framewise")


@pytest.fixture(scope="module")
def files(tmp_path_factory, audioset_labels_csv):
    """One file of each kind, as the project's own writers make them, plus the inputs that made them."""
    d = tmp_path_factory.mktemp("kinds")
    info = make_dataset(str(d / "data"), extras=False, per_class={"balanced_train": 1, "eval": 1,
                                                                   "unbalanced_train": 1})
    ckpt, sed = str(d / "cnn6.pth"), str(d / "sed.pth")
    seeded_checkpoint(ckpt, "Cnn6")
    seeded_checkpoint(sed, "Cnn6_DecisionLevelMax")
    wav = str(d / "a.wav")
    sf.write(wav, (0.2 * np.random.RandomState(0).randn(SR)).astype(np.float32), SR)
    made = {"waveforms": str(d / "waveforms.h5"), "index": str(d / "index.h5"), "embeddings": str(d / "emb.h5"),
            "framewise": str(d / "framewise.h5")}
    ds.pack_waveforms_to_hdf5(info["eval_csv"], info["eval_dir"], made["waveforms"], clip_seconds=1.0,
                              class_labels_csv=info["labels_csv"], progress=False, num_workers=1)
    ci.create_indexes(made["waveforms"], made["index"])
    inference.main(["extract_embeddings", TORCH, f"--checkpoint_path={ckpt}", f"--audio_path={wav}", "--quiet",
                    f"--output_path={made['embeddings']}", "--num_workers=0", "--precision=fp32"])
    inference.main(["sound_event_detection", TORCH, f"--checkpoint_path={sed}", f"--audio_path={wav}", "--no_plot",
                    f"--framewise_output={made['framewise']}", f"--class_labels_csv={audioset_labels_csv}"])
    return {"made": made, "info": info, "ckpt": ckpt, "sed": sed, "wav": wav, "labels": audioset_labels_csv}


def _digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _copy(files, kind: str, tmp_path) -> str:
    out = str(tmp_path / f"existing_{kind}.h5")
    shutil.copy(files["made"][kind], out)
    return out


def _loads_no_model(monkeypatch):
    """Loading a model fails loudly: the check under test must refuse before it."""
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output was refused")
    monkeypatch.setattr(inference.runtime.Runtime, "load", boom)
    monkeypatch.setattr(inference.runtime, "load_model", boom)


def _no_temps(folder) -> bool:
    return glob.glob(os.path.join(str(folder), ".*tmp*")) == []


# ----------------------------------------------------------------------------- the recogniser
def test_each_kind_is_recognised_and_official_layouts_too(files, tmp_path):
    for kind in KINDS:
        assert utilities.hdf5_kind(files["made"][kind]) == kind
    official_wave, official_index = tmp_path / "w.h5", tmp_path / "i.h5"
    with h5py.File(official_wave, "w") as f:   # the official packer's datasets, no attributes
        f.create_dataset("audio_name", data=np.array([b"Yx.wav"], dtype="S20"))
        f.create_dataset("waveform", data=np.zeros((1, 10), np.int16))
        f.create_dataset("target", data=np.zeros((1, 3), bool))
    with h5py.File(official_index, "w") as f:
        f.create_dataset("audio_name", data=np.array([b"Yx.wav"], dtype="S20"))
        f.create_dataset("target", data=np.zeros((1, 3), bool))
        f.create_dataset("hdf5_path", data=np.array([b"w.h5"], dtype="S200"))
        f.create_dataset("index_in_hdf5", data=np.zeros(1, np.int32))
    assert utilities.hdf5_kind(str(official_wave)) == "waveforms"
    assert utilities.hdf5_kind(str(official_index)) == "index"
    (tmp_path / "empty.h5").touch()
    (tmp_path / "notes.h5").write_text("notes\n")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(1))
    assert utilities.hdf5_kind(str(tmp_path / "empty.h5")) == utilities.EMPTY_FILE
    assert utilities.hdf5_kind(str(tmp_path / "notes.h5")) == utilities.NOT_HDF5
    assert utilities.hdf5_kind(str(tmp_path / "other.h5")) == utilities.OTHER_HDF5
    assert utilities.hdf5_kind(str(tmp_path / "missing.h5")) == utilities.NO_FILE


# ----------------------------------------------------------------------------- the four writers
@pytest.mark.parametrize("kind", ["waveforms", "index", "embeddings"])
def test_framewise_output_over_another_kind_is_refused_before_the_model_loads(files, tmp_path, monkeypatch, capsys,
                                                                               kind):
    out = _copy(files, kind, tmp_path)
    before = _digest(out)
    _loads_no_model(monkeypatch)
    code, line = cli_error(inference.main, ["sound_event_detection", TORCH, f"--checkpoint_path={files['sed']}",
                                            f"--audio_path={files['wav']}", "--no_plot",
                                            f"--framewise_output={out}"], monkeypatch, capsys)
    assert code != 0 and out in line and utilities.HDF5_KINDS[kind][0].split(" ", 1)[1] in line
    assert "--framewise_output" in line
    assert _digest(out) == before and _no_temps(tmp_path)


def test_framewise_output_over_a_framewise_file_is_replaced(files, tmp_path, capsys):
    out = _copy(files, "framewise", tmp_path)
    with h5py.File(out, "r+") as f:
        f.attrs["marker"] = 1
    inference.main(["sound_event_detection", TORCH, f"--checkpoint_path={files['sed']}", "--no_plot",
                    f"--audio_path={files['wav']}", f"--framewise_output={out}",
                    f"--class_labels_csv={files['labels']}"])
    with h5py.File(out, "r") as f:
        assert "marker" not in f.attrs and f["framewise/0"].shape[0] > 0


@pytest.mark.parametrize("kind", ["embeddings", "framewise"])
def test_index_over_another_kind_is_refused(files, tmp_path, kind):
    out = _copy(files, kind, tmp_path)
    before = _digest(out)
    with pytest.raises(PannsError, match=f"existing {utilities.HDF5_KINDS[kind][0].split(' ', 1)[1]}"):
        ci.create_indexes(files["made"]["waveforms"], out)
    assert _digest(out) == before and _no_temps(tmp_path)


@pytest.mark.parametrize("kind", ["index", "embeddings", "framewise"])
def test_pack_over_another_kind_is_refused_before_decoding(files, tmp_path, monkeypatch, kind):
    out = _copy(files, kind, tmp_path)
    before = _digest(out)
    info = files["info"]

    def no_decoding(*a, **k):
        raise AssertionError("clips were decoded before the output was refused")
    monkeypatch.setattr(ds.packing, "decode_row", no_decoding)
    with pytest.raises(PannsError, match=f"existing {utilities.HDF5_KINDS[kind][0].split(' ', 1)[1]}"):
        ds.pack_waveforms_to_hdf5(info["eval_csv"], info["eval_dir"], out, clip_seconds=1.0,
                                  class_labels_csv=info["labels_csv"], progress=False, num_workers=1)
    assert _digest(out) == before and _no_temps(tmp_path)
    assert not os.path.exists(out + ".missing.csv")


def test_index_and_pack_still_replace_their_own_kind(files, tmp_path):
    idx = _copy(files, "index", tmp_path)
    assert ci.create_indexes(files["made"]["waveforms"], idx) > 0
    info = files["info"]
    wave = _copy(files, "waveforms", tmp_path)
    rep = ds.pack_waveforms_to_hdf5(info["eval_csv"], info["eval_dir"], wave, clip_seconds=1.0,
                                    class_labels_csv=info["labels_csv"], progress=False, num_workers=1)
    assert rep.replaced and rep.rows > 0 and utilities.hdf5_kind(wave) == "waveforms"


# ----------------------------------------------------------------------------- extract_embeddings' output
@pytest.mark.parametrize("kind", ["waveforms", "index", "framewise"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_extract_over_another_kind_is_one_line_and_leaves_it(files, tmp_path, monkeypatch, capsys, kind, overwrite):
    out = _copy(files, kind, tmp_path)
    before = _digest(out)
    _loads_no_model(monkeypatch)
    code, line = cli_error(inference.main, ["extract_embeddings", TORCH, f"--checkpoint_path={files['ckpt']}",
                                            f"--audio_path={files['wav']}", f"--output_path={out}", "--quiet"]
                           + (["--overwrite"] if overwrite else []), monkeypatch, capsys)
    assert code != 0 and out in line and "not an embeddings file" in line and "--output_path" in line
    assert _digest(out) == before and _no_temps(tmp_path)


@pytest.mark.parametrize("content", ["empty", "other HDF5"])
def test_extract_does_not_resume_into_a_file_that_holds_no_embeddings(files, tmp_path, monkeypatch, capsys, content):
    out = tmp_path / "out.h5"
    if content == "empty":
        out.touch()
    else:
        with h5py.File(out, "w") as f:
            f.create_dataset("x", data=np.zeros(1))
    before = _digest(out)
    argv = ["extract_embeddings", TORCH, f"--checkpoint_path={files['ckpt']}", f"--audio_path={files['wav']}",
            f"--output_path={out}", "--quiet", "--num_workers=0"]
    _loads_no_model(monkeypatch)
    code, line = cli_error(inference.main, argv, monkeypatch, capsys)
    assert code != 0 and "not an embeddings file" in line and "--overwrite" in line
    assert _digest(out) == before   # an empty file is not made an empty HDF5 on the way
    monkeypatch.undo()
    inference.main(argv + ["--overwrite"])   # asked for: replaced
    assert len(extract.read_features(str(out)).audio_names) == 1


def test_feature_writer_refuses_another_kind_without_a_traceback(files, tmp_path):
    out = _copy(files, "waveforms", tmp_path)
    before = _digest(out)
    ex = extract.Extractor.from_checkpoint(files["ckpt"], progress=False, num_workers=0, precision="fp32")
    for overwrite in (False, True):
        with pytest.raises(PannsError, match="existing waveform HDF5, not an embeddings file"):
            extract.extract_to_hdf5(ex, [files["wav"]], out, overwrite=overwrite)
    assert _digest(out) == before and _no_temps(tmp_path)


def test_overwrite_with_a_model_without_embeddings_keeps_the_old_output(files, tmp_path, monkeypatch, capsys):
    out = _copy(files, "embeddings", tmp_path)
    before = _digest(out)
    code, line = cli_error(inference.main, ["extract_embeddings", TORCH, f"--checkpoint_path={files['sed']}",
                                            f"--audio_path={files['wav']}", f"--output_path={out}", "--overwrite",
                                            "--quiet", "--num_workers=0"], monkeypatch, capsys)
    assert code != 0 and "outputs no embedding" in line
    assert _digest(out) == before and _no_temps(tmp_path)


def test_overwrite_that_fails_midway_keeps_the_old_output_and_success_replaces_it(files, tmp_path, monkeypatch):
    out = _copy(files, "embeddings", tmp_path)
    before = _digest(out)
    old = extract.read_features(out)
    second = str(tmp_path / "b.wav")
    sf.write(second, (0.1 * np.random.RandomState(1).randn(SR)).astype(np.float32), SR)
    argv = ["extract_embeddings", TORCH, f"--checkpoint_path={files['ckpt']}", f"--audio_path={second}",
            f"--output_path={out}", "--overwrite", "--quiet", "--num_workers=0", "--precision=fp32"]

    def fails(self, batch):
        raise KeyboardInterrupt   # Ctrl-C in the middle of the run
    monkeypatch.setattr(extract.Extractor, "forward", fails)
    with pytest.raises(KeyboardInterrupt):
        inference.main(argv)
    assert _digest(out) == before and _no_temps(tmp_path)
    monkeypatch.undo()
    inference.main(argv)
    new = extract.read_features(out)
    assert new.audio_names == [second] and old.audio_names == [files["wav"]] and _no_temps(tmp_path)
