"""Embedding extraction: rows equal a direct forward, resume, crash safety, shards, failures."""
import ast
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from panns import audio_io
from panns import extract
from panns import inference
from data_helpers import seeded_checkpoint

SR = 32000
# These tests are about the command line, not the backend: they run torch (--backend auto, the
# default, would export each model to ONNX first; tests/test_onnx.py tests auto and onnxruntime).
TORCH = "--backend=torch"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("extract")
    ckpt = str(d / "cnn6.pth")
    model = seeded_checkpoint(ckpt)
    clips = d / "clips"
    (clips / "sub").mkdir(parents=True)
    rs = np.random.RandomState(0)
    lengths = {"c0.wav": 1.0, "c1.wav": 1.0, "c2.wav": 1.0, "sub/c3.wav": 0.6, "c4.wav": 1.0, "c5.flac": 0.1}
    for name, sec in lengths.items():
        sf.write(str(clips / name), (0.2 * rs.randn(int(sec * SR))).astype(np.float32), SR)
    sf.write(str(clips / "st44.wav"), (0.2 * rs.randn(30000, 2)).astype(np.float32), 44100)
    (clips / "broken.wav").write_bytes(b"RIFF....not really a wav file")
    paths = inference.gather_inputs([str(clips)])
    return {"dir": d, "model": model, "ckpt": ckpt, "paths": paths}


def _reference(model, path):
    wav = audio_io.load_audio(path, SR)
    wav = extract.pad_to_min(wav, model.min_samples)
    with torch.no_grad():
        out = model(torch.from_numpy(wav[None]))
    return out["embedding"][0].numpy(), out["clipwise_output"][0].numpy()


def _extractor(setup, **kw):
    kw.setdefault("num_workers", 1)
    kw.setdefault("batch_size", 2)
    return extract.Extractor.from_checkpoint(setup["ckpt"], precision="fp32", progress=False, **kw)


def test_rows_equal_direct_forward_and_failures_listed(setup, tmp_path, capsys, audioset_labels_csv):
    out = tmp_path / "feats.h5"
    with pytest.raises(SystemExit) as exit_info:   # broken.wav failed: exit status 1, as audio_tagging's
        inference.main(["extract_embeddings", TORCH, f"--checkpoint_path={setup['ckpt']}",
                        f"--audio_path={setup['dir'] / 'clips'}", f"--output_path={out}",
                        f"--class_labels_csv={audioset_labels_csv}", "--batch_size=2", "--num_workers=1",
                        "--precision=fp32", "--quiet"])
    assert exit_info.value.code == 1
    assert "Extracted 7 clips (1 failed)" in capsys.readouterr().out
    feats = extract.read_features(str(out))
    good = [p for p in setup["paths"] if not p.endswith("broken.wav")]
    assert sorted(feats.audio_names) == sorted(good)
    assert feats.embedding.shape == (7, 512) and feats.clipwise_output.shape == (7, 527)
    assert feats.embedding.dtype == np.float32
    for name, emb, clip in zip(feats.audio_names, feats.embedding, feats.clipwise_output):
        ref_emb, ref_clip = _reference(setup["model"], name)
        np.testing.assert_allclose(emb, ref_emb, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(clip, ref_clip, rtol=1e-4, atol=1e-6)
    with h5py.File(out, "r") as f:
        assert f.attrs["model_type"] == "Cnn6" and f.attrs["sample_rate"] == SR and f.attrs["num_rows"] == 7
        assert f.attrs["mel_bins"] == 64 and f.attrs["precision"] == "fp32" and f.attrs["window_size"] == 1024
        assert f["labels"].shape == (527,) and f["labels"][3].decode() == "Class 3, synthetic"
    failed = (tmp_path / "feats.h5.failed.csv").read_text().splitlines()
    assert failed[0] == "audio_path,error" and len(failed) == 2 and "broken.wav" in failed[1]
    # Python API: same rows, input order; waveforms give the same answer as files
    ex = _extractor(setup)
    fs = ex.embed_files(good[:3])
    assert fs.audio_names == good[:3]
    np.testing.assert_allclose(fs.embedding, feats.embedding[[feats.audio_names.index(p) for p in good[:3]]],
                               rtol=1e-4, atol=1e-5)
    fw = ex.embed_waveforms([audio_io.load_audio(p, SR) for p in good[:3]])
    np.testing.assert_allclose(fw.embedding, fs.embedding, rtol=1e-4, atol=1e-5)


def test_resume_after_partial_run_has_no_duplicates(setup, tmp_path):
    paths = setup["paths"]
    full, part = str(tmp_path / "full.h5"), str(tmp_path / "part.h5")
    ex = _extractor(setup, segment_seconds=0.5)      # crop/pad every clip to 0.5 s: one length, full batches
    extract.extract_to_hdf5(ex, paths, full)
    extract.extract_to_hdf5(ex, paths[: len(paths) // 2], part)
    n_half = len(extract.read_features(part).audio_names)
    summary = extract.extract_to_hdf5(ex, paths, part)
    assert summary["extracted"] == len(paths) - 1 - n_half      # only the missing ones (broken.wav fails)
    a, b = extract.read_features(full), extract.read_features(part)
    assert len(b.audio_names) == len(set(b.audio_names)) == len(paths) - 1
    ia = {n: i for i, n in enumerate(a.audio_names)}
    order = [ia[n] for n in b.audio_names]
    np.testing.assert_allclose(b.embedding, a.embedding[order], rtol=1e-5, atol=1e-6)
    # other settings are refused instead of mixed into the same file
    with pytest.raises(extract.PannsError, match="segment_seconds"):
        extract.extract_to_hdf5(_extractor(setup), paths, part)


def test_killed_run_leaves_valid_file_and_resumes(setup, tmp_path):
    out = str(tmp_path / "crash.h5")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{os.path.join(REPO, 'pytorch')!r}]
        from panns import extract
        orig = extract.FeatureWriter.append
        calls = []
        def append(self, *a, **k):
            orig(self, *a, **k)
            calls.append(1)
            if len(calls) == 2:          # hard kill after two committed batches: no cleanup runs
                os.kill(os.getpid(), signal.SIGKILL)
        extract.FeatureWriter.append = append
        ex = extract.Extractor.from_checkpoint({setup['ckpt']!r}, precision="fp32", batch_size=1, num_workers=0,
                                               progress=False)
        extract.extract_to_hdf5(ex, {setup['paths']!r}, {out!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    feats = extract.read_features(out)                  # readable, two committed rows
    assert len(feats.audio_names) == 2
    with h5py.File(out, "r") as f:
        assert f.attrs["num_rows"] == 2
    # simulate a death between writing rows and committing them: rows past num_rows are dropped
    with h5py.File(out, "r+") as f:
        for k in ("audio_name", "embedding", "clipwise_output"):
            f[k].resize(3, axis=0)
        f["audio_name"][2] = "half-written"
    ex = _extractor(setup, batch_size=4)
    summary = extract.extract_to_hdf5(ex, setup["paths"], out)
    assert summary["extracted"] == len(setup["paths"]) - 1 - 2
    feats = extract.read_features(out)
    assert len(feats.audio_names) == len(set(feats.audio_names)) == len(setup["paths"]) - 1
    assert "half-written" not in feats.audio_names
    for name, emb in list(zip(feats.audio_names, feats.embedding))[1:2]:
        np.testing.assert_allclose(emb, _reference(setup["model"], name)[0], rtol=1e-4, atol=1e-5)


def test_rank_shards_are_merged(setup, tmp_path):
    out = str(tmp_path / "dist.h5")
    ex = _extractor(setup, num_workers=0)
    paths = setup["paths"]
    s1 = extract.extract_to_hdf5(ex, paths, out, rank=1, world_size=2)   # rank 1 finishes first
    assert s1["output"] == out + ".rank1.h5" and os.path.exists(out + ".rank1.h5")
    s0 = extract.extract_to_hdf5(ex, paths, out, rank=0, world_size=2)   # rank 0: its share, then merge
    assert s0["rows"] == s0["extracted"] == len(paths) - 1 and s0["failed"] == 1
    assert not os.path.exists(out + ".rank0.h5") and not os.path.exists(out + ".rank1.h5")
    assert "broken.wav" in open(out + ".failed.csv").read()
    feats = extract.read_features(out)
    assert sorted(feats.audio_names) == sorted(p for p in paths if not p.endswith("broken.wav"))


def test_full_disk_is_one_line_and_keeps_committed_rows(setup, tmp_path, monkeypatch, audioset_labels_csv):
    import errno
    import glob
    import shutil

    from panns.utilities import DiskFullError

    out = tmp_path / "feats.h5"
    argv = ["extract_embeddings", TORCH, f"--checkpoint_path={setup['ckpt']}", f"--audio_path={setup['dir'] / 'clips'}",
            f"--output_path={out}", f"--class_labels_csv={audioset_labels_csv}", "--batch_size=2",
            "--num_workers=0", "--quiet"]
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(DiskFullError, match="feats.h5"):    # checked before h5py writes anything
        inference.main(argv)
    assert not out.exists() and glob.glob(str(tmp_path / ".*tmp*")) == []
    monkeypatch.undo()
    # the disk fills after the first batch: one line, and the file keeps the rows committed so far
    calls = {"n": 0}
    real_setitem = h5py.Dataset.__setitem__

    def setitem(self, key, value):
        if self.name == "/embedding" and len(value):
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    with pytest.raises(DiskFullError, match="feats.h5"):
        inference.main(argv)
    monkeypatch.undo()
    assert len(extract.read_features(str(out)).audio_names) == 2
    with pytest.raises(SystemExit, match="1"):   # space again: resumes and completes (broken.wav: status 1)
        inference.main(argv)
    assert len(extract.read_features(str(out)).audio_names) == len(setup["paths"]) - 1   # broken.wav fails


def test_extract_subcommand_has_one_owner():
    """extract.py owns extract_embeddings (flags and handler); inference.py imports the module into its
    table like any other import, and extract.py imports nothing from inference.py (no circle)."""
    def imported(module) -> set:
        tree = ast.parse(open(module.__file__, encoding="utf-8").read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    assert "panns.extract" in imported(inference)
    assert not {"panns.inference", "inference"} & imported(extract)
    assert inference.SUBCOMMANDS["extract_embeddings"][0] is extract
    args = inference.build_parser().parse_args(["extract_embeddings", "--audio_path=x.wav", "--output_path=o.h5"])
    assert args.backend == "auto" and args.segment_seconds is None and not args.overwrite


def test_input_list_in_latin1_names_the_files(tmp_path):
    """A .txt list of inputs saved in Latin-1 (a Windows editor's default) names the same files as its UTF-8
    twin; comments and blank lines are skipped, relative names resolve beside the list."""
    from panns import runtime

    names = ["caf\u00e9.wav", "na\u00efve.wav"]
    for n in names:
        sf.write(str(tmp_path / n), np.zeros(800, np.float32), SR)
    text = "# clips\n\n" + "\n".join(names) + "\n"
    (tmp_path / "utf8.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "latin1.txt").write_bytes(text.encode("latin-1"))
    want = [str(tmp_path / n) for n in names]
    assert runtime.gather_inputs([str(tmp_path / "utf8.txt")]) == want
    assert runtime.gather_inputs([str(tmp_path / "latin1.txt")]) == want


def test_a_file_with_no_sample_left_at_the_model_rate_is_a_failure(setup, tmp_path, capsys):
    """1 sample at 96 kHz is none at 32 kHz: it was extracted as the embedding of zero padding (silence)."""
    clips = tmp_path / "clips"
    clips.mkdir()
    sf.write(str(clips / "ok.wav"), np.full(SR, 0.1, np.float32), SR)
    sf.write(str(clips / "one.wav"), np.full(1, 0.5, np.float32), 96000)
    out = tmp_path / "feats.h5"
    with pytest.raises(SystemExit) as exit_info:
        inference.main(["extract_embeddings", TORCH, f"--checkpoint_path={setup['ckpt']}", f"--audio_path={clips}",
                        f"--output_path={out}", "--num_workers=1", "--precision=fp32", "--quiet"])
    assert exit_info.value.code == 1 and "Extracted 1 clips (1 failed)" in capsys.readouterr().out
    failed = (tmp_path / "feats.h5.failed.csv").read_text().splitlines()
    assert len(failed) == 2 and "one.wav" in failed[1] and "no sample is left at 32000 Hz" in failed[1]


def test_a_file_name_that_is_not_utf8_is_refused_before_the_model_loads(setup, tmp_path, monkeypatch, capsys):
    # the rows' names are HDF5 text: h5py raised UnicodeEncodeError after the first batch, a traceback
    from data_helpers import cli_error

    clips = tmp_path / "clips"
    clips.mkdir()
    raw = os.path.join(os.fsencode(str(clips)), b"caf\xe9.wav")   # as an old zip unpacks it
    with open(raw, "wb") as f, open(setup["paths"][0], "rb") as g:
        f.write(g.read())
    out = tmp_path / "feats.h5"
    code, line = cli_error(inference.main, ["extract_embeddings", TORCH, "--checkpoint_path=missing.pth",
                                            f"--audio_path={clips}", f"--output_path={out}"], monkeypatch, capsys)
    assert code == 2 and r"1 file name(s) are not UTF-8 text" in line and r"caf\xe9.wav" in line, line
    assert not os.path.exists(out)


def test_audio_decoded_by_ffmpeg_gives_writable_waveforms(setup, monkeypatch):
    # ffmpeg's samples are a view of its output bytes: every mono file at the model's rate (an .m4a, an .opus)
    # printed torch's 'The given NumPy array is not writable' warning in the middle of the progress bar
    import warnings

    if audio_io.ffmpeg_exe() is None:
        pytest.skip("no ffmpeg")
    monkeypatch.setattr(audio_io, "read_audio", lambda path, on_truncated="warn": audio_io._decode_ffmpeg(path))
    mono = [p for p in setup["paths"] if p.endswith("c0.wav")][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _i, wav, err, _n = extract._DecodeDataset([mono], SR, None, 1)[0]
    assert err is None and wav.shape == (SR,)


def test_inputs_are_one_file_however_spelt_and_hidden_files_are_left_out(tmp_path, monkeypatch):
    """'a.wav', './a.wav' and '/abs/a.wav' ran the same file two or three times (SED wrote a.png and a_1.png), and
    a folder copied from a Mac holds '._a.wav' AppleDouble files, each failing to decode (exit status 1)."""
    from panns import runtime

    clips = tmp_path / "clips"
    (clips / ".hidden").mkdir(parents=True)
    for name in ("a.wav", "b.wav", ".hidden/c.wav"):
        sf.write(str(clips / name), np.zeros(800, np.float32), SR)
    (clips / "._a.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    monkeypatch.chdir(tmp_path)
    assert runtime.gather_inputs(["clips/a.wav", "./clips/a.wav", str(clips / "a.wav"), "clips/../clips/b.wav"]) \
        == [os.path.join("clips", "a.wav"), os.path.join("clips", "b.wav")]
    assert runtime.gather_inputs(["clips"]) == [os.path.join("clips", "a.wav"), os.path.join("clips", "b.wav")]
