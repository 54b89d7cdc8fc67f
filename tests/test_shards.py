"""pack_from_shards (utils/shards.py): tar and Parquet shards pack into the rows pack_waveforms_to_hdf5 gives
for the same audio, labels map through the label CSV, bad members are listed, unknown labels reported,
corrupt shards named, interrupted runs resume shard by shard; the flac storage layout: its decoders are exact
and fail in one line, and benchmarks/bench_storage.py runs."""
import csv
import importlib.util
import io
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf

from data_helpers import make_dataset, make_shard_clips, write_parquet_shards, write_tar_shards

from panns import dataset as ds
from panns import shards, storage
from panns.errors import PannsError

SR = 32000


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    labels_csv = make_dataset(os.path.join(root, "demo"), extras=False,
                              per_class={"balanced_train": 1, "eval": 1, "unbalanced_train": 0})["labels_csv"]
    info = make_shard_clips(root, labels_csv)
    info["labels_csv"] = labels_csv
    info["root"] = root
    # The reference: the same audio as files, packed by the file packer.
    info["ref"] = os.path.join(root, "ref.h5")
    ds.pack_waveforms_to_hdf5(info["csv"], info["audios_dir"], info["ref"], clip_seconds=1.0, num_workers=1,
                              class_labels_csv=labels_csv, progress=False)
    info["tars"] = write_tar_shards(os.path.join(root, "tar"), info["clips"])
    info["parquets"] = write_parquet_shards(os.path.join(root, "parquet"), info["clips"])
    return info


def _rows(path):
    with h5py.File(path, "r") as hf:
        names = [x.decode() for x in hf["audio_name"][:]]
        return {n: (storage.read_waveform(hf, i), hf["target"][i]) for i, n in enumerate(names)}, dict(hf.attrs)


@pytest.mark.parametrize("fmt,layout", [("tar", "pcm16"), ("parquet", "flac")])
def test_shards_pack_rows_identical_to_file_packer(clips, tmp_path, fmt, layout):
    out = str(tmp_path / "bal.h5")
    rep = shards.pack_from_shards(os.path.join(clips["root"], fmt, "*." + fmt), out, clip_seconds=1.0, num_workers=2,
                                  class_labels_csv=clips["labels_csv"], storage_name=layout, progress=False)
    ref, _ = _rows(clips["ref"])
    got, attrs = _rows(out)
    assert attrs["storage"] == layout and attrs["sample_rate"] == SR and attrs["clip_samples"] == SR
    assert list(got) == list(ref)  # same names (Y<id>.wav), same order; the corrupt member is not a row
    for name in ref:
        np.testing.assert_array_equal(got[name][0], ref[name][0], err_msg=name)
        assert got[name][1].tolist() == ref[name][1].tolist(), name  # mids, display names, indices all mapped
    assert rep.rows == 6 and not os.path.exists(out + ".parts")
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    if fmt == "tar":
        assert [m[0] for m in rep.missing] == ["Ybroken00000.wav"]
        assert "decode error" in rep.missing[0][1] and "audioset-0000.tar" in rep.missing[0][1]
        with open(out + ".missing.csv") as f:
            assert [r["audio_name"] for r in csv.DictReader(f)] == ["Ybroken00000.wav"]
        assert rep.unknown_labels == {"/m/unknown": 1, "Not a class": 1}
        assert "2 label values (2 distinct) are not in the label CSV" in rep.label_report
    else:
        assert rep.missing == [] and rep.unknown_labels == {}


def test_resume_after_interrupt_packs_each_shard_once(clips, tmp_path, monkeypatch):
    out = str(tmp_path / "bal.h5")
    real = shards._pack_shard
    calls = []

    def interrupted(shard, *a, **k):
        calls.append(os.path.basename(shard))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(shard, *a, **k)

    monkeypatch.setattr(shards, "_pack_shard", interrupted)
    kw = dict(clip_seconds=1.0, num_workers=1, class_labels_csv=clips["labels_csv"], progress=False, skip_existing=True)
    with pytest.raises(KeyboardInterrupt):
        shards.pack_from_shards(clips["tars"][0] + "," + clips["tars"][1], out, **kw)
    assert not os.path.exists(out)
    parts = sorted(os.listdir(out + ".parts"))
    assert [p for p in parts if p.endswith(".h5")] == ["00000_audioset-0000.h5"]  # no temp, no half shard
    monkeypatch.setattr(shards, "_pack_shard", lambda shard, *a, **k: (calls.append(os.path.basename(shard)),
                                                                        real(shard, *a, **k))[1])
    rep = shards.pack_from_shards(clips["tars"][0] + "," + clips["tars"][1], out, **kw)
    assert calls == ["audioset-0000.tar", "audioset-0001.tar", "audioset-0001.tar"]
    assert rep.shards_skipped == 1 and rep.rows == 6
    ref, _ = _rows(clips["ref"])
    got, _ = _rows(out)
    assert list(got) == list(ref) and all((got[n][0] == ref[n][0]).all() for n in ref)


def test_corrupt_shard_is_one_line_naming_it(clips, tmp_path, repo_root):
    bad = tmp_path / "bad"
    bad.mkdir()
    data = open(clips["tars"][1], "rb").read()
    (bad / "audioset-0001.tar").write_bytes(data[: len(data) // 2])  # cut in the middle of a member
    with pytest.raises(PannsError, match=r"corrupt shard .*audioset-0001\.tar"):
        shards.pack_from_shards(str(bad / "*.tar"), str(tmp_path / "o.h5"), clip_seconds=1.0,
                                class_labels_csv=clips["labels_csv"], progress=False)
    (bad / "x.parquet").write_bytes(b"PAR1 not really")
    r = subprocess.run([sys.executable, os.path.join(repo_root, "utils", "dataset.py"), "pack_from_shards",
                        f"--shards={bad}/*.parquet", f"--waveforms_hdf5_path={tmp_path / 'p.h5'}", "--clip_seconds=1",
                        f"--class_labels_csv={clips['labels_csv']}", f"--logs_dir={tmp_path / 'logs'}"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "x.parquet" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "p.h5")


def test_cli_tar_flac_layout_and_loader(clips, tmp_path, repo_root):
    """The CLI writes the flac layout; create_indexes and the training dataset read it into the same rows."""
    from panns.create_indexes import create_indexes
    from panns.data_generator import AudioSetDataset

    out = str(tmp_path / "w" / "balanced_train.h5")
    r = subprocess.run([sys.executable, os.path.join(repo_root, "utils", "dataset.py"), "pack_from_shards",
                        f"--shards={os.path.dirname(clips['tars'][0])}", f"--waveforms_hdf5_path={out}",
                        "--clip_seconds=1", "--num_workers=2", "--storage=flac",
                        f"--class_labels_csv={clips['labels_csv']}", f"--logs_dir={tmp_path / 'logs'}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Write 6 clips" in r.stdout and "1 of 7 missing" in r.stdout and "not in the label CSV" in r.stdout
    assert create_indexes(out, str(tmp_path / "i" / "balanced_train.h5")) == 6
    ref, _ = _rows(clips["ref"])
    dset = AudioSetDataset(sample_rate=SR)
    batch = dset.__getitems__([{"hdf5_path": out, "index_in_hdf5": i} for i in range(6)])
    for item in batch:
        np.testing.assert_array_equal(item["waveform"], ref[item["audio_name"]][0] / np.float32(32767.0))
    dset.close()


def test_label_mapper_forms():
    from panns import config

    labels = config.ClassLabels(ids=["/m/a", "/m/b", "/m/c"], labels=["Speech", "Music, loud", "Dog"])
    m = shards.LabelMapper(labels)
    assert m.target(["/m/a", "dog"]).tolist() == [True, False, True]
    assert m.target("Music, loud").tolist() == [False, True, False]  # a display name with a comma
    assert m.target("/m/c,/m/b").tolist() == [False, True, True]
    assert m.target([0, "2", 7]).tolist() == [True, False, True]
    assert m.target(None).tolist() == [False] * 3
    assert dict(m.unknown) == {"7": 1} and m.unlabelled == 1


def test_label_mapper_reads_multi_hot_vectors_as_vectors():
    # [0, 0, 1, 1, 0] was read as class indices: every clip got classes 0 and 1, whatever its labels
    from panns import config

    labels = config.ClassLabels(ids=[f"/m/{k}" for k in range(5)], labels=[f"c{k}" for k in range(5)])
    m = shards.LabelMapper(labels)
    assert m.target([0, 0, 1, 1, 0]).tolist() == [False, False, True, True, False]
    assert m.target([0.0, 1.0, 0.0, 0.0, 0.0]).tolist() == [False, True, False, False, False]
    assert m.target(np.array([True, False, False, False, True])).tolist() == [True, False, False, False, True]
    assert m.target([0, 1, 4]).tolist() == [True, True, False, False, True]   # indices stay indices
    assert not m.unknown and m.labelled == 4
    with pytest.raises(PannsError, match="a 0/1 vector of 7 classes but the label CSV has 5"):
        m.target([0, 1, 0, 0, 0, 0, 0])


def test_flac_workspace_trains_to_the_same_map_as_pcm16(tmp_path):
    """Same generated clips packed both ways; same seed and config: the same eval mAP (flac rows are decoded in
    2 loader workers, pcm16 rows read in the main process)."""
    from test_train import make_workspace, tiny_config

    from panns.create_indexes import create_indexes
    from panns.main import train

    ws, labels = make_workspace(str(tmp_path / "a"), classes_num=3, train_per_class=3, eval_per_class=2,
                                clip_seconds=1.6, seed=1, multi_label_fraction=0.0, event_seconds=(0.9, 1.0))
    data = str(tmp_path / "a" / "dataset")
    ws_flac = str(tmp_path / "flac")
    for split in ("balanced_train", "eval"):
        wav = os.path.join(ws_flac, "hdf5s", "waveforms", f"{split}.h5")
        ds.pack_waveforms_to_hdf5(os.path.join(data, "metadata", f"{split}_segments.csv"),
                                  os.path.join(data, "audios", f"{split}_segments"), wav, sample_rate=16000,
                                  clip_seconds=1.6, class_labels_csv=labels, progress=False, storage="flac")
        create_indexes(wav, os.path.join(ws_flac, "hdf5s", "indexes", f"{split}.h5"))
    kw = dict(batch_size=4, augmentation="none", early_stop=3, eval_every=3, log_every=3)
    pcm = train(tiny_config(ws, labels, **kw))["statistics"]["test"]["mAP"]
    flac = train(tiny_config(ws_flac, labels, num_workers=2, **kw))["statistics"]["test"]["mAP"]
    assert flac == pytest.approx(pcm, abs=1e-6), (pcm, flac)


def _repo_with_labels(tmp_path, repo_root, labels_csv):
    """The scripts use the repository's label CSV: give them the test's (5 demo classes) through a copy of the
    repository's scripts folder next to a metadata folder."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(repo_root, "scripts"), repo / "scripts")
    os.symlink(os.path.join(repo_root, "utils"), repo / "utils")
    os.symlink(os.path.join(repo_root, "pytorch"), repo / "pytorch")
    (repo / "metadata").mkdir()
    shutil.copy(labels_csv, repo / "metadata" / "class_labels_indices.csv")
    return repo


def test_hosted_route_scripts(clips, tmp_path, repo_root):
    """scripts/2_pack_from_shards.sh (tar globs, flac storage, one part per unbalanced shard), then script 3."""

    ws = tmp_path / "ws"
    env = dict(os.environ, EVAL_SHARDS=clips["tars"][1], BALANCED_SHARDS=clips["tars"][0],
               UNBALANCED_SHARDS=os.path.join(os.path.dirname(clips["parquets"][0]), "*.parquet"),
               CLIP_SECONDS="1", STORAGE="flac", NUM_WORKERS="2", PACK_JOBS="2", PYTHON=sys.executable)
    repo = _repo_with_labels(tmp_path, repo_root, clips["labels_csv"])
    r = subprocess.run(["bash", str(repo / "scripts" / "2_pack_from_shards.sh"), str(tmp_path / "unused"), str(ws)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CLIP_SECONDS=1" in r.stdout
    wav = ws / "hdf5s" / "waveforms"
    assert sorted(os.listdir(wav / "unbalanced_train")) == ["unbalanced_train_part00000.h5",
                                                            "unbalanced_train_part00001.h5"]
    r = subprocess.run(["bash", str(repo / "scripts" / "3_create_training_indexes.sh"), str(ws)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    with h5py.File(ws / "hdf5s" / "indexes" / "full_train.h5", "r") as hf:
        # balanced (3 clips; the broken member has no row) + 2 x 3 unbalanced, which hold the balanced 3 again:
        # a clip id in two parts is indexed once (#27), reported
        assert hf["audio_name"].shape == (6,)
    assert "3 rows repeat a clip id of an earlier part; kept once" in r.stdout


def test_hosted_route_script_refuses_or_removes_parts_beyond_a_shorter_shard_list(clips, tmp_path, repo_root):
    """A packed part numbered beyond the unbalanced shards listed now (left by a run over a longer list, or another
    mirror) stops scripts/2_pack_from_shards.sh before anything is packed, in one line naming it (script 3 indexed
    it as current data); REMOVE_STALE_PARTS=1 removes it, its .missing.csv and its half-packed .parts folder."""
    ws = tmp_path / "ws"
    unbalanced = ws / "hdf5s" / "waveforms" / "unbalanced_train"
    unbalanced.mkdir(parents=True)
    stale = unbalanced / "unbalanced_train_part00001.h5"
    shutil.copy(clips["ref"], stale)
    (unbalanced / "unbalanced_train_part00001.h5.missing.csv").write_text("audio_name,reason\n")
    (unbalanced / "unbalanced_train_part00001.h5.parts").mkdir()
    env = dict(os.environ, EVAL_SHARDS=clips["tars"][1], BALANCED_SHARDS=clips["tars"][0],
               UNBALANCED_SHARDS=clips["parquets"][0], CLIP_SECONDS="1", NUM_WORKERS="1", PACK_JOBS="1",
               PYTHON=sys.executable)
    repo = _repo_with_labels(tmp_path, repo_root, clips["labels_csv"])
    script = ["bash", str(repo / "scripts" / "2_pack_from_shards.sh"), str(tmp_path / "unused"), str(ws)]
    r = subprocess.run(script, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: {unbalanced} holds 1 packed parts that no shard of {clips['parquets'][0]} "
                               "maps to (1 shards: parts 00000 to 00000), left by a run over a longer shard list "
                               "or another mirror: unbalanced_train_part00001.h5. "), r.stderr
    assert "REMOVE_STALE_PARTS=1" in r.stderr and "nothing was packed" in r.stderr
    assert stale.is_file() and not (ws / "hdf5s" / "waveforms" / "eval.h5").exists()

    r = subprocess.run(script, capture_output=True, text=True, env=dict(env, REMOVE_STALE_PARTS="1"),
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("Removed 1 packed parts of a run over a longer shard list or another mirror (--remove_stale_parts): "
            "unbalanced_train_part00001.h5\n") in r.stdout
    assert sorted(os.listdir(unbalanced)) == ["unbalanced_train_part00000.h5"]


def test_hosted_route_script_shards_dir_with_space_brackets_and_comma(clips, tmp_path, repo_root):
    """SHARDS_DIR 'my shards [1], copy' with the default globs: the brackets are the folder's name, not a pattern
    (they matched 'my shards 1'), the comma does not split the path in two, and the unbalanced shards are listed
    whole (`ls $UNBALANCED_SHARDS` split the path at the space and stopped after balanced_train)."""
    import shutil

    shards = tmp_path / "my shards [1], copy"
    for sub, picks in (("eval", clips["parquets"][:1]), ("bal_train", clips["parquets"][1:2]),
                       ("unbal_train", clips["parquets"])):
        (shards / "data" / sub).mkdir(parents=True)
        for p in picks:
            shutil.copy(p, shards / "data" / sub)
    repo = _repo_with_labels(tmp_path, repo_root, clips["labels_csv"])
    env = {k: v for k, v in os.environ.items() if k not in ("EVAL_SHARDS", "BALANCED_SHARDS", "UNBALANCED_SHARDS")}
    env.update(CLIP_SECONDS="1", NUM_WORKERS="1", PACK_JOBS="2", PYTHON=sys.executable)
    ws = tmp_path / "ws"
    r = subprocess.run(["bash", str(repo / "scripts" / "2_pack_from_shards.sh"), str(shards), str(ws)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(ws / "hdf5s" / "waveforms" / "unbalanced_train")) == [
        "unbalanced_train_part00000.h5", "unbalanced_train_part00001.h5"]
    # A comma-separated list (which --shards takes) packs one part per shard too, instead of 'No ... match'
    env["UNBALANCED_SHARDS"] = ",".join(clips["parquets"])
    ws2 = tmp_path / "ws2"
    r = subprocess.run(["bash", str(repo / "scripts" / "2_pack_from_shards.sh"), str(shards), str(ws2)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(os.listdir(ws2 / "hdf5s" / "waveforms" / "unbalanced_train")) == 2


def test_list_shards_reads_a_path_with_a_comma_whole_and_a_list_split(clips, tmp_path, capsys):
    """A file, folder or glob whose name holds a comma is one path; otherwise the commas separate shards. The
    `list_shards` sub-command prints what pack_from_shards would read; --allow_none makes no match an empty list."""
    odd = tmp_path / "a,b"
    odd.mkdir()
    for p in clips["parquets"]:
        shutil.copy(p, odd)
    inside = sorted(str(odd / os.path.basename(p)) for p in clips["parquets"])
    assert shards.list_shards(str(odd)) == inside
    assert shards.list_shards(str(odd / "*.parquet")) == inside
    assert shards.list_shards(inside[0]) == inside[:1]
    assert shards.list_shards(",".join(clips["parquets"])) == sorted(clips["parquets"])
    with pytest.raises(PannsError, match="shard not found: .*nope"):
        shards.list_shards(f"{clips['parquets'][0]},{tmp_path / 'nope.tar'}")
    with pytest.raises(PannsError, match="no shards match .*none.*one of the comma-separated"):   # not dropped
        shards.list_shards(f"{clips['parquets'][0]},{tmp_path / 'none' / '*.tar'}")
    literal = tmp_path / "x[1].tar"                    # an existing file is itself, not a pattern matching 'x1.tar'
    shutil.copy(clips["tars"][0], literal)
    assert shards.list_shards(f"{literal},{clips['parquets'][0]}") == sorted([str(literal), clips["parquets"][0]])
    (odd / "sub.tar").mkdir()                          # a folder's subfolder or broken link is no shard
    os.symlink(tmp_path / "gone.parquet", odd / "broken.parquet")
    assert shards.list_shards(str(odd)) == inside
    ds.main(["list_shards", f"--shards={odd}"])
    assert capsys.readouterr().out.split("\n")[:-1] == inside
    ds.main(["list_shards", f"--shards={tmp_path / 'none' / '*.tar'}", "--allow_none"])
    assert capsys.readouterr().out == ""
    with pytest.raises(shards.NoShards, match="no shards match"):
        ds.main(["list_shards", f"--shards={tmp_path / 'none' / '*.tar'}"])


def _flac(samples: np.ndarray, level: float) -> np.ndarray:
    """int16 (T,) or (T, channels) -> FLAC bytes at libsndfile's ``level`` (0..1)."""
    buf = io.BytesIO()
    sf.write(buf, samples, SR, format="FLAC", subtype="PCM_16", compression_level=level)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def _decoder(name):
    if name not in storage.FLAC_DECODERS:
        pytest.skip(f"FLAC decoder {name} not installed")  # requirements.txt installs both
    return name


@pytest.mark.parametrize("decoder", ["miniaudio", "soundfile"])
def test_flac_decoders_are_exact_and_fail_in_one_line(decoder):
    """Every decoder gives the int16 row bit for bit, for streams of our encoder (level 0) and of the default
    levels older files used, on signals that hit every FLAC subframe kind (constant, verbatim, fixed, LPC) and
    the int16 extremes; damaged or mismatched streams are a PannsError naming the row, never a wrong row."""
    _decoder(decoder)
    rs = np.random.RandomState(0)
    n = SR + 123  # not a multiple of any block size: the last frame is short
    t = np.arange(n) / SR
    voiced = np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0) + 0.01 * rs.randn(n)
    signals = {"silence": np.zeros(n), "noise": rs.uniform(-1, 1, n), "voiced": 0.5 * voiced,
               "extremes": np.where(np.arange(n) % 7 < 3, -1.0, 1.0)}
    for name, x in signals.items():
        row = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
        for level in (0.0, 0.5, 1.0):
            out = np.full(n, 7, np.int16)
            data = _flac(row, level) if level else storage.encode_flac(row, SR)
            storage.decode_flac_into(data, out, name, decoder=decoder)
            np.testing.assert_array_equal(out, row, err_msg=f"{name} level {level}")
    row = np.clip(np.round(voiced * 16000), -32768, 32767).astype(np.int16)
    data = storage.encode_flac(row, SR)
    flipped = data.copy()
    flipped[len(data) // 2] ^= 0x5A
    bad = {"truncated": data[: len(data) // 2], "flipped": flipped,
           "garbage": np.frombuffer(b"fLaC" + b"\0x" * 99, np.uint8),
           "stereo": _flac(np.stack([row, row], 1), 0.0)}
    for what, stream in bad.items():
        with pytest.raises(PannsError, match="FLAC row 3 of x.h5") as e:
            storage.decode_flac_into(stream, np.empty(n, np.int16), "row 3 of x.h5", decoder=decoder)
        assert "\n" not in str(e.value), what
    with pytest.raises(PannsError, match=f"holds {n} samples, expected {n + 1}"):
        storage.decode_flac_into(data, np.empty(n + 1, np.int16), decoder=decoder)
    with pytest.raises(PannsError, match="decoder must be one of"):
        storage.decode_flac_into(data, np.empty(n, np.int16), decoder="ffmpeg")


def test_flac_decoding_without_miniaudio_falls_back_to_soundfile(tmp_path, repo_root):
    """miniaudio is optional: without it the layout still reads, through libsndfile."""
    code = ("import sys; sys.modules['miniaudio'] = None\n"  # import miniaudio -> ImportError
            "import numpy as np\n"
            "from panns import storage\n"
            "assert storage.FLAC_DECODERS == ('soundfile',), storage.FLAC_DECODERS\n"
            "row = (np.arange(5000) % 301 - 150).astype(np.int16)\n"
            "out = np.empty(5000, np.int16)\n"
            "storage.decode_flac_into(storage.encode_flac(row, 16000), out)\n"
            "assert (out == row).all()\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                       env=dict(os.environ, PYTHONPATH=os.path.join(repo_root, "pytorch")))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_bench_storage_runs_at_toy_size(tmp_path, capsys, repo_root):
    """benchmarks/bench_storage.py end to end (generation, both packers' layouts, every decoder, the training
    loader with 2 workers) on a few 0.5-s clips, so a changed API cannot break it unnoticed."""
    path = os.path.join(repo_root, "benchmarks", "bench_storage.py")
    spec = importlib.util.spec_from_file_location("bench_storage", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--clips", "3", "--batches", "1", "--batch_size", "2", "--decode_seconds", "0.05",
                "--clip_seconds", "0.5", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    for kind in ("speech", "music"):
        line = next(x for x in out.splitlines() if x.strip().startswith(kind))
        assert all(f" {d} " in line for d in storage.FLAC_DECODERS + ("h5py+soundfile",)), line
    assert "pcm16:" in out and "flac:" in out and "clips/s" in out, out


def test_flac_rows_read_from_the_file_equal_h5py(tmp_path, monkeypatch):
    """FlacRowReader reads row bytes straight from the HDF5 heap (read-only files): the same bytes as h5py for
    rows that fill a heap collection alone or share one, empty rows, a file with a user block; files open for
    writing, and rows the direct read cannot place, go through h5py."""
    rs = np.random.RandomState(0)
    sizes = [0, 3, 5000, 70000, 11, 1200, 0, 40000] * 9
    data = [rs.randint(0, 256, n).astype(np.uint8) for n in sizes]
    for userblock in (0, 1024):
        path = str(tmp_path / f"rows{userblock}.h5")
        with h5py.File(path, "w", userblock_size=userblock) as hf:
            ds = hf.create_dataset("w", shape=(len(sizes),), maxshape=(None,), chunks=(16,),
                                   dtype=h5py.vlen_dtype(np.uint8))
            for i, d in enumerate(data):
                ds[i] = d
        with h5py.File(path, "r") as hf:
            reader = storage.FlacRowReader(hf["w"], 10)
            assert reader.heap is not None
            for i in rs.permutation(len(sizes)):
                assert bytes(reader.heap.row(i)) == data[i].tobytes(), (userblock, i)  # no h5py fallback here
        with h5py.File(path, "a") as hf:
            assert storage.FlacRowReader(hf["w"], 10).heap is None
    rows = [(rs.randn(SR) * 3000).astype(np.int16) for _ in range(3)]
    path = str(tmp_path / "flac.h5")
    with h5py.File(path, "w") as hf:
        w = storage.WaveformWriter(hf, len(rows), SR, "flac")
        for r in rows:
            w.append(storage.encode_flac(r, SR))
        w.finish()

    def unplaceable(self, i):
        raise ValueError("heap object not found")

    with h5py.File(path, "r") as hf:
        reader = storage.FlacRowReader(hf[storage.FLAC_KEY], SR)
        assert reader.heap is not None and all((reader.read(i) == rows[i]).all() for i in range(3))
        monkeypatch.setattr(storage._HeapRows, "row", unplaceable)
        assert all((reader.read(i) == rows[i]).all() for i in range(3))


def _interrupted_after_first_shard(clips, out, monkeypatch, **kw):
    """Pack the first of two shards, then stop (as Ctrl-C would); returns the shards' spec."""
    real = shards._pack_shard
    calls = []

    def interrupted(shard, *a, **k):
        calls.append(shard)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(shard, *a, **k)

    monkeypatch.setattr(shards, "_pack_shard", interrupted)
    spec = clips["tars"][0] + "," + clips["tars"][1]
    with pytest.raises(KeyboardInterrupt):
        shards.pack_from_shards(spec, out, clip_seconds=1.0, num_workers=1, progress=False, skip_existing=True, **kw)
    monkeypatch.setattr(shards, "_pack_shard", real)
    return spec


@pytest.mark.parametrize("change", ["swapped mids", "one class more"])
def test_resume_with_another_label_csv_repacks_the_finished_shards(clips, tmp_path, monkeypatch, change):
    rows = open(clips["labels_csv"]).read().splitlines()
    if change == "swapped mids":
        a, b = rows[1].split(",", 2), rows[2].split(",", 2)
        rows[1], rows[2] = ",".join([a[0], b[1], a[2]]), ",".join([b[0], a[1], b[2]])
    else:
        rows.append(f"{len(rows) - 1},/m/extra,Extra")
    other = tmp_path / "other_labels.csv"
    other.write_text("\n".join(rows) + "\n")
    out = str(tmp_path / "o.h5")
    spec = _interrupted_after_first_shard(clips, out, monkeypatch, class_labels_csv=clips["labels_csv"])
    rep = shards.pack_from_shards(spec, out, clip_seconds=1.0, num_workers=1, progress=False, skip_existing=True,
                                  class_labels_csv=str(other))
    assert rep.shards_skipped == 0   # the part of the first shard had the old label list
    fresh = shards.pack_from_shards(spec, str(tmp_path / "fresh.h5"), clip_seconds=1.0, num_workers=1,
                                    progress=False, class_labels_csv=str(other))
    got, attrs = _rows(out)
    want, _ = _rows(fresh.path)
    assert list(got) == list(want) and all((got[n][1] == want[n][1]).all() for n in want)
    assert list(attrs["class_ids"]) == [r.split(",")[1] for r in rows[1:]]


def test_resume_with_another_label_field_repacks_the_finished_shards(clips, tmp_path, monkeypatch):
    out = str(tmp_path / "o.h5")
    spec = _interrupted_after_first_shard(clips, out, monkeypatch, class_labels_csv=clips["labels_csv"])
    kw = dict(clip_seconds=1.0, num_workers=1, progress=False, class_labels_csv=clips["labels_csv"],
              label_field="no_such_field", allow_unlabelled=True)
    rep = shards.pack_from_shards(spec, out, skip_existing=True, **kw)
    assert rep.shards_skipped == 0   # the first shard's part was packed reading 'labels'
    got, _ = _rows(out)
    want, _ = _rows(shards.pack_from_shards(spec, str(tmp_path / "fresh.h5"), **kw).path)
    assert list(got) == list(want) and not any(got[n][1].any() for n in got)   # no targets from the old field
    # Unchanged fields still reuse the part.
    out2 = str(tmp_path / "o2.h5")
    spec = _interrupted_after_first_shard(clips, out2, monkeypatch, class_labels_csv=clips["labels_csv"],
                                          label_field="no_such_field", allow_unlabelled=True)
    assert shards.pack_from_shards(spec, out2, skip_existing=True, **kw).shards_skipped == 1


def test_resume_with_other_shards_of_the_same_names_repacks_them(clips, tmp_path, monkeypatch):
    # Two configurations whose shards are named alike (shard-0000.tar, ...): a run on A stopped after its first
    # shard, resumed on B, kept A's part for B's first shard: A's clips twice, B's first shard's clips lost
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    for k, (x, y) in enumerate([(clips["tars"][0], clips["tars"][1]), (clips["tars"][1], clips["tars"][0])]):
        shutil.copy(x, a / f"shard-{k:04d}.tar")
        shutil.copy(y, b / f"shard-{k:04d}.tar")
    clips_a = dict(clips, tars=[str(a / "shard-0000.tar"), str(a / "shard-0001.tar")])
    out = str(tmp_path / "o.h5")
    _interrupted_after_first_shard(clips_a, out, monkeypatch, class_labels_csv=clips["labels_csv"])
    kw = dict(clip_seconds=1.0, num_workers=1, progress=False, class_labels_csv=clips["labels_csv"])
    spec_b = str(b / "shard-0000.tar") + "," + str(b / "shard-0001.tar")
    rep = shards.pack_from_shards(spec_b, out, skip_existing=True, **kw)
    assert rep.shards_skipped == 0
    got, _ = _rows(out)
    want, _ = _rows(shards.pack_from_shards(spec_b, str(tmp_path / "fresh.h5"), **kw).path)
    assert list(got) == list(want) and len(set(got)) == 6
    # The same shards resumed: the finished part is still reused.
    out2 = str(tmp_path / "o2.h5")
    spec_a = _interrupted_after_first_shard(clips_a, out2, monkeypatch, class_labels_csv=clips["labels_csv"])
    assert shards.pack_from_shards(spec_a, out2, skip_existing=True, **kw).shards_skipped == 1


def test_skip_existing_output_packed_with_other_options_is_refused(clips, tmp_path):
    out = str(tmp_path / "o.h5")
    kw = dict(clip_seconds=1.0, num_workers=1, progress=False, class_labels_csv=clips["labels_csv"])
    shards.pack_from_shards(clips["tars"][0], out, **kw)
    assert shards.pack_from_shards(clips["tars"][0], out, skip_existing=True, **kw).rows == -1
    with pytest.raises(PannsError, match=r"--skip_existing: .*storage pcm16, not flac"):
        shards.pack_from_shards(clips["tars"][0], out, skip_existing=True, storage_name="flac", **kw)


def test_tar_cut_at_a_member_boundary_is_reported_as_truncated(clips, tmp_path):
    import gzip
    import tarfile

    data = open(clips["tars"][1], "rb").read()
    with tarfile.open(clips["tars"][1]) as tf:
        last = tf.getmembers()[-1]
        boundary = last.offset_data + (last.size + 511) // 512 * 512   # just after the last member's data
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:boundary])
    with pytest.raises(shards.ShardError, match=r"truncated shard .*cut\.tar.*end-of-archive"):
        list(shards.iter_tar(str(cut)))
    whole_gz = tmp_path / "whole.tar.gz"
    whole_gz.write_bytes(gzip.compress(data))
    assert len(list(shards.iter_tar(str(whole_gz)))) == len(list(shards.iter_tar(clips["tars"][1]))) == 3
    cut_gz = tmp_path / "cutgz.tar.gz"
    cut_gz.write_bytes(gzip.compress(data[:boundary]))
    with pytest.raises(shards.ShardError, match="truncated shard"):
        list(shards.iter_tar(str(cut_gz)))


def test_shards_whose_labels_are_all_unknown_are_refused(clips, tmp_path):
    """All-zero targets are refused, as pack_waveforms_to_hdf5 refuses an unknown mid (unless asked for)."""
    # Labels of another ontology (mids the label CSV lacks), as when a data set's own CSV is not passed.
    foreign = [(ytid, ["/m/elsewhere", "Not a class here"], mids, data, ext)
               for ytid, _v, mids, data, ext in clips["clips"][:3]]
    tars = write_tar_shards(str(tmp_path / "tar"), foreign, corrupt_member=False)
    out = str(tmp_path / "o.h5")
    kw = dict(clip_seconds=1.0, num_workers=1, progress=False, class_labels_csv=clips["labels_csv"])
    with pytest.raises(PannsError, match="no label value of .* is in the label CSV .*'/m/elsewhere'"):
        shards.pack_from_shards(tars[0], out, **kw)
    assert not os.path.exists(out) and not os.path.exists(out + ".parts")
    rep = shards.pack_from_shards(tars[0], out, allow_unlabelled=True, **kw)
    got, _ = _rows(rep.path)
    assert got and not any(t.any() for _, t in got.values())


def test_output_that_is_a_shard_of_another_set_is_refused(clips, tmp_path):
    # The output path typed as a shard not among --shards (or any file that is not HDF5) was replaced
    other = tmp_path / "other-0000.tar"
    with open(clips["tars"][1], "rb") as f:
        data = f.read()
    other.write_bytes(data)
    with pytest.raises(PannsError, match="other-0000.tar exists and is not an HDF5 file"):
        shards.pack_from_shards(clips["tars"][0], str(other), clip_seconds=1.0, num_workers=1,
                                class_labels_csv=clips["labels_csv"], progress=False)
    assert other.read_bytes() == data and os.listdir(tmp_path) == ["other-0000.tar"]


def test_parquet_rows_without_a_clip_id_are_refused_not_named_by_row_number(clips, tmp_path):
    # Without a video_id column every shard named its clips Y0.wav, Y1.wav, ...: the same names in every shard,
    # and create_indexes keeps one clip per name (the rest of the data set silently dropped)
    import pyarrow as pa
    import pyarrow.parquet as pq

    kw = dict(clip_seconds=1.0, num_workers=1, progress=False, class_labels_csv=clips["labels_csv"])
    specs = []
    for k in range(2):
        path = str(tmp_path / f"part-{k}.parquet")
        chunk = clips["clips"][3 * k:3 * k + 3]
        pq.write_table(pa.table({"file": [c[0] for c in chunk], "audio": [{"bytes": c[3], "path": None} for c in chunk],
                                 "labels": [c[2] for c in chunk]}), path)
        specs.append(path)
    with pytest.raises(PannsError, match=r"part-0.parquet:row 0: no clip id .*columns: file, labels.*--id_field"):
        shards.pack_from_shards(",".join(specs), str(tmp_path / "o.h5"), **kw)
    rep = shards.pack_from_shards(",".join(specs), str(tmp_path / "o.h5"), id_field="file", **kw)
    got, _ = _rows(rep.path)
    assert sorted(got) == sorted(f"Y{c[0]}.wav" for c in clips["clips"])


def test_shards_without_rows_do_not_point_at_a_missing_list(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "empty.parquet")
    pq.write_table(pa.table({"video_id": pa.array([], pa.string()), "audio": pa.array([], pa.binary()),
                             "labels": pa.array([], pa.list_(pa.string()))}), path)
    with pytest.raises(PannsError, match=r"the shards hold no clips \(1 shards, 0 rows\)"):
        shards.pack_from_shards(path, str(tmp_path / "o.h5"), clip_seconds=1.0, num_workers=1, progress=False)
    assert not os.path.exists(str(tmp_path / "o.h5.missing.csv"))


def test_tar_whose_members_are_not_grouped_by_key_is_refused(clips, tmp_path):
    # 'tar cf x.tar *.flac *.json' puts every audio member before every json: each clip was packed without its
    # labels (all-zero targets) and listed again as missing with its json, and the run succeeded
    import json
    import tarfile

    path = str(tmp_path / "by-extension.tar")
    chosen = clips["clips"][:2]
    members = [(f"{c[0]}{c[4]}", c[3]) for c in chosen] + [(f"{c[0]}.json", json.dumps({"labels": c[2]}).encode())
                                                           for c in chosen]
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(PannsError, match=rf"by-extension.tar is not a WebDataset shard: the files of '{chosen[0][0]}' "
                                         r"are not next to each other.*--sort=name"):
        shards.pack_from_shards(path, str(tmp_path / "o.h5"), clip_seconds=1.0, num_workers=1, progress=False,
                                class_labels_csv=clips["labels_csv"])
    assert not os.path.exists(str(tmp_path / "o.h5"))


def test_the_same_clips_in_two_shards_are_packed_once(clips, tmp_path):
    # A tar and a Parquet copy of the same clips: every clip was written twice (audio_name [a, b, c, a, b, c]),
    # and said nothing; pack_waveforms_to_hdf5 packs a repeated CSV row once and reports it
    tar = write_tar_shards(str(tmp_path / "a"), clips["clips"][:3], corrupt_member=False)[0]
    parquet = write_parquet_shards(str(tmp_path / "b"), clips["clips"][:3])[0]
    kw = dict(clip_seconds=1.0, num_workers=1, class_labels_csv=clips["labels_csv"], progress=False)
    rep = shards.pack_from_shards(f"{tar},{parquet}", str(tmp_path / "o.h5"), **kw)
    ref, _ = _rows(clips["ref"])
    got, _ = _rows(rep.path)
    assert list(got) == list(ref)[:3] and rep.rows == 3   # one row per clip, in shard order
    for name in got:
        np.testing.assert_array_equal(got[name][0], ref[name][0], err_msg=name)
        assert got[name][1].tolist() == ref[name][1].tolist(), name
    assert rep.repeated == 3 and rep.relabelled == 0 and rep.missing == []
    assert rep.repeat_report.startswith("3 repeated clips (a clip id met again in the shards) packed once")
    assert "Yshard00000a.wav in train-00000-of-00001.parquet" in rep.repeat_report
    rep = shards.pack_from_shards(f"{tar},{parquet}", str(tmp_path / "all.h5"), keep_duplicates=True, **kw)
    assert rep.rows == 6 and rep.repeated == 0 and rep.repeat_report == ""
    with h5py.File(rep.path, "r") as hf:
        assert [x.decode() for x in hf["audio_name"][:]] == list(ref)[:3] * 2


def test_shard_repeats_on_the_command_line(clips, tmp_path, capsys):
    """The CLI says what it dropped, and --keep_duplicates packs every copy."""
    tar = write_tar_shards(str(tmp_path / "a"), clips["clips"][:3], corrupt_member=False)[0]
    parquet = write_parquet_shards(str(tmp_path / "b"), clips["clips"][:3])[0]
    argv = ["pack_from_shards", f"--shards={tar},{parquet}", "--clip_seconds=1", "--num_workers=1",
            f"--class_labels_csv={clips['labels_csv']}", f"--logs_dir={tmp_path / 'logs'}"]
    ds.main(argv + [f"--waveforms_hdf5_path={tmp_path / 'once.h5'}"])
    assert "3 repeated clips (a clip id met again in the shards) packed once" in capsys.readouterr().out
    ds.main(argv + [f"--waveforms_hdf5_path={tmp_path / 'all.h5'}", "--keep_duplicates"])
    assert "repeated" not in capsys.readouterr().out
    with h5py.File(tmp_path / "once.h5", "r") as a, h5py.File(tmp_path / "all.h5", "r") as b:
        assert len(a["audio_name"]) == 3 and len(b["audio_name"]) == 6


def _repeats_in_and_across_shards(clips, tmp_path):
    """a/x.tar: clips a, b, c and an undecodable 'broken00000'; b/y.parquet: c with another label, broken00000
    that decodes, d twice. Expected, each clip once: a, b, c (labels of both copies), broken00000, d."""
    from panns import config

    ids = config.read_class_labels(clips["labels_csv"]).ids
    tar = write_tar_shards(str(tmp_path / "a"), clips["clips"][:3])[0]
    c, d = clips["clips"][2], clips["clips"][3]
    good_broken = ("broken00000", None, [ids[0]], clips["clips"][1][3], clips["clips"][1][4])
    rows = [(c[0], None, [ids[3]], c[3], c[4]), good_broken, d, d]
    parquet = write_parquet_shards(str(tmp_path / "b"), rows, per_shard=4)[0]
    return f"{tar},{parquet}"


def test_repeats_in_one_shard_and_across_shards_are_packed_once_with_the_union_of_their_labels(clips, tmp_path):
    spec = _repeats_in_and_across_shards(clips, tmp_path)
    kw = dict(clip_seconds=1.0, num_workers=1, class_labels_csv=clips["labels_csv"], progress=False)
    rep = shards.pack_from_shards(spec, str(tmp_path / "o.h5"), **kw)
    got, _ = _rows(rep.path)
    ref, _ = _rows(clips["ref"])
    c, d = (f"Y{x[0]}.wav" for x in clips["clips"][2:4])
    assert list(got) == list(ref)[:3] + ["Ybroken00000.wav", d]
    np.testing.assert_array_equal(got[c][0], ref[c][0])   # the first occurrence's audio
    assert np.nonzero(got[c][1])[0].tolist() == [0, 2, 3]  # [2, 0] in the tar, mids[3] in the Parquet: the union
    np.testing.assert_array_equal(got[d][0], ref[d][0])
    # broken00000 cannot be decoded in the tar, but its Parquet copy can: packed, not listed as missing
    assert rep.missing == [] and not os.path.exists(rep.path + ".missing.csv")
    assert rep.rows == 5 and rep.repeated == 3 and rep.relabelled == 1
    assert "1 of these clips carried other labels in their repeats" in rep.repeat_report
    rep = shards.pack_from_shards(spec, str(tmp_path / "all.h5"), keep_duplicates=True, **kw)
    assert rep.rows == 7 and [m[0] for m in rep.missing] == ["Ybroken00000.wav"] and rep.relabelled == 0
    # one shard holding a repeat: its part is not simply renamed into the output
    one = write_parquet_shards(str(tmp_path / "one"), [clips["clips"][3]] * 2)[0]
    rep = shards.pack_from_shards(one, str(tmp_path / "one.h5"), **kw)
    assert list(_rows(rep.path)[0]) == [d] and rep.repeated == 1


def test_repeats_across_parts_resume_to_the_uninterrupted_output(clips, tmp_path, monkeypatch):
    spec = _repeats_in_and_across_shards(clips, tmp_path)
    kw = dict(clip_seconds=1.0, num_workers=1, class_labels_csv=clips["labels_csv"], progress=False, skip_existing=True)
    whole = shards.pack_from_shards(spec, str(tmp_path / "whole.h5"), **kw)
    real = shards._pack_shard
    calls = []

    def interrupted(shard, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(shard, *a, **k)

    monkeypatch.setattr(shards, "_pack_shard", interrupted)
    out = str(tmp_path / "resumed.h5")
    with pytest.raises(KeyboardInterrupt):
        shards.pack_from_shards(spec, out, **kw)
    monkeypatch.setattr(shards, "_pack_shard", real)
    rep = shards.pack_from_shards(spec, out, **kw)
    assert rep.shards_skipped == 1 and (rep.rows, rep.repeated, rep.relabelled) == (5, 3, 1)
    with h5py.File(whole.path, "r") as a, h5py.File(out, "r") as b:
        for key in ("audio_name", "target", storage.PCM_KEY):
            np.testing.assert_array_equal(a[key][:], b[key][:], err_msg=key)


def test_skip_existing_packs_again_an_output_holding_repeated_clips(clips, tmp_path):
    # an output packed with keep_duplicates (or before repeats were packed once) is not "already packed"
    spec = _repeats_in_and_across_shards(clips, tmp_path)
    kw = dict(clip_seconds=1.0, num_workers=1, class_labels_csv=clips["labels_csv"], progress=False)
    out = str(tmp_path / "o.h5")
    assert shards.pack_from_shards(spec, out, keep_duplicates=True, **kw).rows == 7
    assert shards.pack_from_shards(spec, out, skip_existing=True, keep_duplicates=True, **kw).rows == -1
    assert shards.pack_from_shards(spec, out, skip_existing=True, **kw).rows == 5
    assert shards.pack_from_shards(spec, out, skip_existing=True, **kw).rows == -1


def _write_tar(path, members):
    """A tar of (name, bytes) members, in the order given."""
    import tarfile

    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def test_skip_existing_repacks_an_output_of_other_shards_or_fields(clips, tmp_path):
    # '--shards 0001.tar --skip_existing' kept an output packed from 0000.tar ("Skip: already packed"), as it kept
    # one packed with another --label_field, or from fewer shards (scripts/2_pack_from_shards.sh numbers the
    # unbalanced parts by shard order: a shard added shifted every later shard onto another part's output)
    out = str(tmp_path / "o.h5")
    kw = dict(clip_seconds=1.0, num_workers=1, progress=False, class_labels_csv=clips["labels_csv"],
              skip_existing=True)
    t0, t1 = clips["tars"][:2]
    names = {t: [f"Y{c[0]}.wav" for c in cs] for t, cs in ((t0, clips["clips"][:3]), (t1, clips["clips"][3:6]))}
    shards.pack_from_shards(t0, out, **kw)
    assert shards.pack_from_shards(t0, out, **kw).rows == -1
    rep = shards.pack_from_shards(t1, out, **kw)
    assert rep.rows == 3   # was -1: skipped
    assert "packed from other shard files (audioset-0000.tar, not audioset-0001.tar" in rep.repack_reason
    assert list(_rows(out)[0]) == names[t1] and rep.replaced
    rep = shards.pack_from_shards(t1, out, label_field="labels", **kw)
    assert rep.rows == 3 and rep.repack_reason == "--label_field auto, not labels"
    assert shards.pack_from_shards(t1, out, label_field="labels", **kw).rows == -1
    both = f"{t0},{t1}"
    rep = shards.pack_from_shards(both, out, label_field="labels", **kw)
    assert "not 2 shards, audioset-0000.tar to audioset-0001.tar" in rep.repack_reason
    assert sorted(_rows(out)[0]) == sorted(names[t0] + names[t1])
    assert shards.pack_from_shards(both, out, label_field="labels", **kw).rows == -1
    # The same shard files in another folder (the shard folder moved): still the output of these shards.
    moved = tmp_path / "moved"
    moved.mkdir()
    for t in (t0, t1):
        shutil.copy(t, moved)
    assert shards.pack_from_shards(str(moved / "*.tar"), out, label_field="labels", **kw).rows == -1
    rep = shards.pack_from_shards(both, out, label_field="labels", keep_duplicates=True, **kw)
    assert "--keep_duplicates" in rep.repack_reason


def test_skip_existing_output_of_an_earlier_version(clips, tmp_path):
    """An output without the shard list: one from a single shard is compared by its shard_source; a joined one
    cannot be compared and is packed again, saying why."""
    kw = dict(clip_seconds=1.0, num_workers=1, progress=False, class_labels_csv=clips["labels_csv"],
              skip_existing=True)
    t0, t1 = clips["tars"][:2]
    single, joined = str(tmp_path / "single.h5"), str(tmp_path / "joined.h5")
    shards.pack_from_shards(t0, single, **kw)
    shards.pack_from_shards(f"{t0},{t1}", joined, **kw)
    for path in (single, joined):
        with h5py.File(path, "r+") as hf:
            del hf.attrs[shards.SHARDS_ATTR]
            if path == joined:
                del hf.attrs[shards.FIELDS_ATTR]   # the earlier version wrote neither into a joined output
    assert shards.pack_from_shards(t0, single, **kw).rows == -1
    rep = shards.pack_from_shards(f"{t0},{t1}", joined, **kw)
    assert rep.rows == 6 and "earlier version, which recorded no list of the shards" in rep.repack_reason
    assert shards.pack_from_shards(f"{t0},{t1}", joined, **kw).rows == -1
    rep = shards.pack_from_shards(t1, single, **kw)
    assert rep.rows == 3 and "packed from audioset-0000.tar" in rep.repack_reason


def test_a_refused_resume_keeps_the_parts_of_earlier_runs(clips, tmp_path, monkeypatch):
    # A resume with a mistyped --label_field re-packed the first shard, found no label and removed the whole
    # .parts folder: the finished shards of the interrupted run were lost
    out = str(tmp_path / "o.h5")
    kw = dict(clip_seconds=1.0, num_workers=1, progress=False, class_labels_csv=clips["labels_csv"],
              skip_existing=True)
    spec = _interrupted_after_first_shard(clips, out, monkeypatch, class_labels_csv=clips["labels_csv"])
    part = os.path.join(out + ".parts", "00000_audioset-0000.h5")
    before = open(part, "rb").read(), open(part + ".missing.csv").read()
    with pytest.raises(PannsError, match=r"no clip of .*audioset-0000\.tar has a label \(label\)"):
        shards.pack_from_shards(spec, out, label_field="label", **kw)
    assert (open(part, "rb").read(), open(part + ".missing.csv").read()) == before
    assert sorted(os.listdir(out + ".parts")) == ["00000_audioset-0000.h5", "00000_audioset-0000.h5.missing.csv"]
    assert shards.pack_from_shards(spec, out, **kw).shards_skipped == 1


def test_tar_made_on_macos_packs_without_its_appledouble_members(clips, tmp_path):
    # macOS tar adds '._<name>' (AppleDouble) beside each file: its empty key stopped the pack with "no clip id ...
    # pass --id_field"
    import json

    members = []
    for ytid, _v, mids, data, ext in clips["clips"][:2]:
        for name, blob in ((f"{ytid}{ext}", data), (f"{ytid}.json", json.dumps({"labels": mids}).encode())):
            members += [(f"._{name}", b"\x00\x05\x16\x07 AppleDouble"), (name, blob)]
    members += [(".DS_Store", b"Bud1"), ("__MACOSX/._x.flac", b"\x00\x05\x16\x07")]
    tar = _write_tar(tmp_path / "mac.tar", members)
    rep = shards.pack_from_shards(tar, str(tmp_path / "o.h5"), clip_seconds=1.0, num_workers=1, progress=False,
                                  class_labels_csv=clips["labels_csv"])
    assert rep.rows == 2 and rep.missing == []
    ref, _ = _rows(clips["ref"])
    got, _ = _rows(rep.path)
    assert list(got) == list(ref)[:2] and all(got[n][1].tolist() == ref[n][1].tolist() for n in got)


def test_tar_json_with_a_byte_order_mark_is_read(clips, tmp_path):
    import json

    ytid, _v, mids, data, ext = clips["clips"][0]
    tar = _write_tar(tmp_path / "bom.tar", [(f"{ytid}{ext}", data),
                                            (f"{ytid}.json", json.dumps({"labels": mids}).encode("utf-8-sig"))])
    rep = shards.pack_from_shards(tar, str(tmp_path / "o.h5"), clip_seconds=1.0, num_workers=1, progress=False,
                                  class_labels_csv=clips["labels_csv"])
    assert rep.rows == 1 and rep.missing == []
    got, _ = _rows(rep.path)
    assert got[f"Y{ytid}.wav"][1].tolist() == _rows(clips["ref"])[0][f"Y{ytid}.wav"][1].tolist()


def test_a_second_audio_member_of_a_tar_sample_is_listed_not_dropped(clips, tmp_path):
    # 'k.30.000.flac' and 'k.40.000.flac' are one WebDataset sample (key 'k': the name up to the first dot); its
    # second audio was dropped without a word
    import json

    (ytid, _v, mids, data, ext), other = clips["clips"][0], clips["clips"][1]
    tar = _write_tar(tmp_path / "two.tar", [(f"{ytid}.30.000{ext}", data), (f"{ytid}.40.000{other[4]}", other[3]),
                                            (f"{ytid}.json", json.dumps({"labels": mids}).encode())])
    more = write_tar_shards(str(tmp_path / "more"), clips["clips"][2:3], corrupt_member=False)[0]
    rep = shards.pack_from_shards(f"{tar},{more}", str(tmp_path / "o.h5"), clip_seconds=1.0, num_workers=1,
                                  progress=False, class_labels_csv=clips["labels_csv"])
    assert rep.rows == 2 and rep.repeated == 0
    assert [m[0] for m in rep.missing] == [f"Y{ytid}.wav"]
    assert f"two.tar:{ytid}.40.000{other[4]}: {shards.EXTRA_AUDIO_REASON}" in rep.missing[0][1]
    got, _ = _rows(rep.path)
    np.testing.assert_array_equal(got[f"Y{ytid}.wav"][0], _rows(clips["ref"])[0][f"Y{ytid}.wav"][0])  # the first
    with open(rep.path + ".missing.csv") as f:
        assert [r["audio_name"] for r in csv.DictReader(f)] == [f"Y{ytid}.wav"]


def test_parquet_rows_with_an_empty_label_list_are_reported(clips, tmp_path):
    # 'labels: []' packed an all-zero target and said nothing; a shard of only such rows was refused as holding
    # label values the label CSV does not know, naming none ("e.g. ")
    rows = [(c[0], None, ([] if k == 1 else c[2]), c[3], c[4]) for k, c in enumerate(clips["clips"][:3])]
    kw = dict(clip_seconds=1.0, num_workers=1, progress=False, class_labels_csv=clips["labels_csv"])
    path = write_parquet_shards(str(tmp_path / "some"), rows)[0]
    rep = shards.pack_from_shards(path, str(tmp_path / "o.h5"), **kw)
    assert rep.rows == 3 and "1 clips have an empty label list (packed with no positive label)" in rep.label_report
    empty = write_parquet_shards(str(tmp_path / "none"), [(c[0], None, [], c[3], c[4]) for c in clips["clips"][:2]])
    with pytest.raises(PannsError, match=r"no clip of .* has a label: 2 clips have an empty label list"):
        shards.pack_from_shards(empty[0], str(tmp_path / "e.h5"), **kw)
