"""Re-runs and crashes that used to strand a user or give silent wrong results (#27): extraction
resumed with the same files spelled differently, a second writer on a busy output, decode workers
of a packer killed with -9, label/segment CSVs in Latin-1, a full disk while saving a checkpoint."""
import errno
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from panns import checkpoint, config, extract
from panns.errors import PannsError
from data_helpers import seeded_checkpoint

SR = 32000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cnn6(tmp_path_factory):
    d = tmp_path_factory.mktemp("reruns")
    path = str(d / "cnn6.pth")
    seeded_checkpoint(path)
    return path


def test_extraction_resumed_with_absolute_paths_writes_no_duplicates(cnn6, tmp_path, monkeypatch):
    rs = np.random.RandomState(0)
    (tmp_path / "clips").mkdir()
    for k in range(3):
        sf.write(str(tmp_path / "clips" / f"c{k}.wav"), (0.1 * rs.randn(SR // 2)).astype(np.float32), SR)
    monkeypatch.chdir(tmp_path)
    relative = [os.path.join("clips", f"c{k}.wav") for k in range(3)]
    ex = extract.Extractor.from_checkpoint(cnn6, progress=False, num_workers=0, batch_size=2)
    out = "features.h5"
    extract.extract_to_hdf5(ex, relative[:2], out)
    absolute = [os.path.abspath(p) for p in relative] + [os.path.join(".", relative[0])]
    summary = extract.extract_to_hdf5(ex, absolute, out)
    assert summary["extracted"] == 1 and summary["rows"] == 3
    feats = extract.read_features(out)
    assert feats.audio_names[:2] == relative[:2] and len(feats.audio_names) == 3
    # resumed from another folder with relative spellings: still the same files
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    summary = extract.extract_to_hdf5(ex, [os.path.join("..", p) for p in relative], os.path.join("..", out))
    assert summary["extracted"] == 0 and summary["rows"] == 3


def test_a_second_writer_on_a_busy_output_is_told_it_is_in_use(cnn6, tmp_path):
    import h5py

    out = str(tmp_path / "busy.h5")
    with h5py.File(out, "w") as f:
        f.create_dataset("x", data=np.zeros(1))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, h5py
        f = h5py.File({out!r}, "r+")
        print("open", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        ex = extract.Extractor.from_checkpoint(cnn6, progress=False, num_workers=0)
        for overwrite in (False, True):
            with pytest.raises(PannsError, match="in use by another process"):
                extract.extract_to_hdf5(ex, [], out, overwrite=overwrite)
        assert os.path.exists(out)   # --overwrite did not delete the running job's file
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"   # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_decode_workers_exit_when_the_packer_is_killed(tmp_path):
    """kill -9 of the parent while its workers are blocked sending big results (the case that hung
    forever: each worker kept the parent's end of its own pipe open, so its send never failed)."""
    script = textwrap.dedent("""
        import os, sys, time
        import numpy as np
        from panns import packing
        def big(n):
            return np.zeros(4_000_000, np.uint8)   # larger than a pipe buffer: send blocks until read
        with packing.OrderedPool(big, 3) as pool:
            print(" ".join(str(p.pid) for p in pool.procs), flush=True)
            it = pool.imap(range(100))
            next(it)
            time.sleep(600)   # never reads the other results
    """)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "pytorch"))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 3
    time.sleep(1.0)   # the workers have their jobs and are blocked in send
    assert all(_alive(p) for p in pids)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, 9)
    assert not left, f"decode workers {left} outlived their killed parent"


def test_latin1_label_and_segment_csvs_are_read(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes("index,mid,display_name\n0,/m/01,Caf\xe9 chatter\n1,/m/02,Ni\xf1o\n".encode("latin-1"))
    cl = config.read_class_labels(str(labels))
    assert cl.labels == ["Café chatter", "Niño"]
    utf16 = tmp_path / "labels16.csv"
    utf16.write_bytes("index,mid,display_name\n0,/m/01,Café\n".encode("utf-16"))
    assert config.read_class_labels(str(utf16)).labels == ["Café"]
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"index,mid,display_name\n\x00\x01\x02\xff\xfe")
    with pytest.raises(PannsError, match="binary.csv.*not a text file"):
        config.read_class_labels(str(binary))
    from panns import dataset

    seg = tmp_path / "segments.csv"
    seg.write_bytes('# Segments csv: caf\xe9\n# YTID, start_seconds, end_seconds, positive_labels\n'
                    'abc, 0.000, 10.000, "/m/01"\n'.encode("latin-1"))
    assert [s.ytid for s in dataset.read_segments_csv(str(seg))] == ["abc"]
    from panns import finetune_data

    sf.write(str(tmp_path / "a.wav"), np.zeros(1600, np.float32), 16000)
    lst = tmp_path / "train.csv"
    lst.write_bytes("path,label\na.wav,caf\xe9\n".encode("cp1252"))
    assert finetune_data.read_list_csv(str(lst)) == [(str(tmp_path / "a.wav"), ["café"])]


def test_disk_full_while_saving_a_checkpoint_is_one_line_naming_it(tmp_path, monkeypatch):
    real_open = open
    path = str(tmp_path / "latest.pth")

    def full_disk_open(file, mode="r", *a, **k):
        return real_open("/dev/full", mode, *a, **k) if "w" in mode else real_open(file, mode, *a, **k)

    monkeypatch.setattr(checkpoint, "open", full_disk_open, raising=False)
    with pytest.raises(PannsError, match=r"disk full while writing .*latest\.pth") as e:
        checkpoint.save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}})
    assert "\n" not in str(e.value) and not os.listdir(tmp_path)   # no temp file left
    assert getattr(e.value.__cause__, "errno", None) == errno.ENOSPC


def test_scripts_find_the_installed_python_or_say_what_to_do(tmp_path):
    """scripts/*.sh source scripts/python.sh: $PYTHON, else the active venv's python, else python3 only
    if it imports torch, else one line (not a ModuleNotFoundError far into the run)."""
    import shutil

    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(REPO, "scripts", "python.sh"), tmp_path / "scripts" / "python.sh")
    stub = tmp_path / "bin"   # a python3 on PATH without torch
    stub.mkdir()
    (stub / "python3").write_text("#!/bin/sh\nexit 1\n")
    (stub / "python3").chmod(0o755)
    venv = tmp_path / "venv_elsewhere" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\nexit 0\n")   # stands for a venv's python (imports torch: succeeds)
    (venv / "python").chmod(0o755)

    def source(**env):
        base = {"PATH": f"{stub}:/usr/bin:/bin", "HOME": str(tmp_path)}
        return subprocess.run(["bash", "-c", f'set -euo pipefail; . "{tmp_path}/scripts/python.sh"; echo "$PYTHON"'],
                              env={**base, **env}, capture_output=True, text=True)

    got = source(VIRTUAL_ENV=str(venv.parent))
    assert got.returncode == 0 and got.stdout.strip() == str(venv / "python")
    got = source(PYTHON=sys.executable)
    assert got.returncode == 0 and got.stdout.strip() == sys.executable
    got = source()
    assert got.returncode == 1 and got.stdout == ""
    assert len(got.stderr.strip().splitlines()) == 1 and "activate the environment" in got.stderr
    got = source(PYTHON=str(tmp_path / "nope"))
    assert got.returncode == 1 and "PYTHON=" in got.stderr
    got = source(PYTHON=str(stub / "python3"))   # there, but without torch: one line, not a traceback later
    assert got.returncode == 1 and got.stderr == f"error: PYTHON={stub}/python3 cannot import torch; set PYTHON to " \
                                                 "the python PANNs is installed into\n", got.stderr


@pytest.mark.parametrize("script", ["1_download_dataset.sh", "2_pack_waveforms_to_hdf5s.sh", "2_pack_from_shards.sh",
                                    "3_create_training_indexes.sh", "4_train.sh", "demo.sh"])
def test_scripts_help_and_an_option_for_a_path(tmp_path, script):
    """--help prints the script's usage; an option where a path belongs is one error line. Both create nothing
    (--help was taken for a path: mkdir's 'unrecognized option', or a default workspace made in the current
    directory before 'segment CSV not found: --help/...')."""
    path = os.path.join(REPO, "scripts", script)
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", path, "--help"], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "bash scripts/" + script in r.stdout and r.stderr == "", r.stdout + r.stderr
    r = subprocess.run(["bash", path, "--early_stop=10"], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: --early_stop=10: the arguments are paths"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    paths = {"1_download_dataset.sh": 1, "2_pack_waveforms_to_hdf5s.sh": 2, "2_pack_from_shards.sh": 2,
             "3_create_training_indexes.sh": 1, "demo.sh": 1}.get(script)
    if paths:   # an argument past the paths (an unquoted path with a space) was ignored: the job ran on the rest
        r = subprocess.run(["bash", path] + ["my"] * paths + ["out"], cwd=str(tmp_path), env=env,
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: unexpected argument 'out': bash "), r.stderr
        r = subprocess.run(["bash", path] + ["my"] * paths + ["--help"], cwd=str(tmp_path), env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0 and "bash scripts/" + script in r.stdout, r.stdout + r.stderr
    assert os.listdir(tmp_path) == []


def test_inference_script_resolves_relative_paths_from_the_callers_directory(tmp_path):
    """scripts/0_inference.sh cds into the repository: an AUDIO_PATH or PYTHON relative to where the user started it
    is made absolute first (it named a file under the repository, or nothing)."""
    (tmp_path / "my clips").mkdir()
    (tmp_path / "my clips" / "clip.wav").write_bytes(b"")
    log = tmp_path / "calls.log"
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "python"   # records the inference calls; 'downloads' a checkpoint path
    fake.write_text('#!/bin/bash\ncase "$1" in\n  */pretrained.py|pytorch/pretrained.py) echo /ckpt.pth ;;\n'
                    f'  *) printf "%s\\n" "$@" >> "{log}" ;;\nesac\n')
    fake.chmod(0o755)
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "0_inference.sh")], cwd=str(tmp_path),
                       env=dict(os.environ, PYTHON="bin/python", AUDIO_PATH="my clips/clip.wav", CUDA_FLAG=""),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    args = log.read_text().splitlines()
    assert args.count(f"--audio_path={tmp_path}/my clips/clip.wav") == 2, args
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "0_inference.sh"), "my clips/clip.wav"],
                       cwd=str(tmp_path), env=dict(os.environ, PYTHON=str(fake)), capture_output=True, text=True)
    assert r.returncode == 2 and "takes no arguments; name the clip with AUDIO_PATH=" in r.stderr, r.stderr
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "0_inference.sh"), "--help"], cwd=str(tmp_path),
                       env=dict(os.environ, PYTHON=str(fake)), capture_output=True, text=True)
    assert r.returncode == 0 and "AUDIO_PATH" in r.stdout and log.read_text().count("--audio_path") == 2
    # a clip that is not there: one line before any checkpoint download (~300 MB each, for nothing)
    fake.write_text(f'#!/bin/bash\necho "$@" >> "{log}"\n')
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "0_inference.sh")], cwd=str(tmp_path),
                       env=dict(os.environ, PYTHON=str(fake), AUDIO_PATH="nope.wav", CUDA_FLAG=""),
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == f"error: audio file not found: {tmp_path}/nope.wav (AUDIO_PATH)\n"
    assert "pretrained.py" not in log.read_text()


def test_fetch_metadata_dest_is_relative_to_the_callers_directory(tmp_path):
    """scripts/fetch_metadata.sh --dest labels.csv run from another directory writes there, not into the
    repository (the script cd'ed into the repository before handing --dest on)."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/bash\n[ "$1" = -c ] && exit 0\necho "$PWD" "$@" >> "{log}"\n')
    fake.chmod(0o755)
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "fetch_metadata.sh"), "--dest", "labels.csv"],
                       cwd=str(tmp_path), env=dict(os.environ, PYTHON=str(fake)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert log.read_text() == f"{tmp_path} {REPO}/utils/download.py labels --dest labels.csv\n"


def _two_clips(tmp_path, *rows: str):
    """Label CSV of classes /m/a, /m/b, /m/c; silent clips Yabc.wav and Ydef.wav in audios/; a segment CSV of
    ``rows`` ('<ytid> <mid>,<mid>', one a row). Returns (label CSV, segment CSV)."""
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n2,/m/c,C\n")
    (tmp_path / "audios").mkdir()
    for ytid in ("abc", "def"):
        sf.write(str(tmp_path / "audios" / f"Y{ytid}.wav"), np.zeros(1600, np.float32), 16000)
    seg = tmp_path / "segments.csv"
    seg.write_text("".join(f'{row.split()[0]}, 0.000, 10.000, "{row.split()[1]}"\n' for row in rows))
    return labels, seg


def test_repeated_clip_ids_are_packed_and_indexed_once(tmp_path, capsys):
    import h5py

    from panns import create_indexes, dataset

    labels, seg = _two_clips(tmp_path, "abc /m/a", "def /m/b", "abc /m/a")
    wav_dir = tmp_path / "waveforms"
    rep = dataset.pack_waveforms_to_hdf5(str(seg), str(tmp_path / "audios"), str(wav_dir / "balanced_train.h5"),
                                         sample_rate=16000, clip_seconds=0.1, class_labels_csv=str(labels),
                                         progress=False)
    assert rep.rows == 2 and rep.repeated == 1 and "1 repeated rows" in dataset.summarize(rep, 3)
    rep = dataset.pack_waveforms_to_hdf5(str(seg), str(tmp_path / "audios"), str(wav_dir / "dup.h5"),
                                         sample_rate=16000, clip_seconds=0.1, class_labels_csv=str(labels),
                                         progress=False, keep_duplicates=True)
    assert rep.rows == 3
    # the same clip in another part (two shards, balanced + unbalanced): indexed once in full_train
    with h5py.File(wav_dir / "dup.h5", "r") as src, h5py.File(wav_dir / "unbalanced_train_part00.h5", "w") as dst:
        for key in src:
            dst.create_dataset(key, data=src[key][:])
        dst.attrs.update(dict(src.attrs))
    idx = tmp_path / "indexes"
    assert create_indexes.create_indexes(str(wav_dir / "balanced_train.h5"), str(idx / "balanced_train.h5")) == 2
    assert create_indexes.create_indexes(str(wav_dir / "unbalanced_train_part00.h5"),
                                         str(idx / "unbalanced_train_part00.h5")) == 2   # its repeated row: once
    assert "indexed once" in capsys.readouterr().out
    assert create_indexes.combine_full_indexes(str(idx), str(tmp_path / "full_train.h5")) == 2
    full = create_indexes.read_index(str(tmp_path / "full_train.h5"), load_targets=True)
    assert sorted(full.audio_names.tolist()) == [b"Yabc.wav", b"Ydef.wav"]
    assert create_indexes.combine_full_indexes(str(idx), str(tmp_path / "all.h5"), keep_duplicates=True) == 4


def test_a_clip_listed_twice_with_other_labels_is_packed_once_with_all_its_labels(tmp_path, caplog):
    # the packer kept the first row and dropped the second row's labels without a word
    import h5py

    from panns import dataset

    labels, seg = _two_clips(tmp_path, "abc /m/a", "def /m/b", "abc /m/c,/m/a", "def /m/b")
    kw = dict(sample_rate=16000, clip_seconds=0.1, class_labels_csv=str(labels), progress=False)

    def targets(path):
        with h5py.File(path, "r") as hf:
            return [(n.decode(), t.nonzero()[0].tolist()) for n, t in zip(hf["audio_name"][:], hf["target"][:])]

    rep = dataset.pack_waveforms_to_hdf5(str(seg), str(tmp_path / "audios"), str(tmp_path / "once.h5"), **kw)
    assert rep.rows == 2 and rep.repeated == 2
    assert targets(tmp_path / "once.h5") == [("Yabc.wav", [0, 2]), ("Ydef.wav", [1])]
    assert "2 repeated rows packed once (first row kept, labels of its rows merged; 1 clips got labels from a " \
           "later row): line 3 (abc), line 4 (def)" in caplog.text
    assert "with the labels of all its rows" in dataset.summarize(rep, 4)
    # --keep_duplicates (official): every row as it is
    rep = dataset.pack_waveforms_to_hdf5(str(seg), str(tmp_path / "audios"), str(tmp_path / "all.h5"),
                                         keep_duplicates=True, **kw)
    assert targets(tmp_path / "all.h5") == [("Yabc.wav", [0]), ("Ydef.wav", [1]), ("Yabc.wav", [0, 2]),
                                            ("Ydef.wav", [1])]


def test_shards_without_labels_are_refused_unless_asked_for(tmp_path):
    import io

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from panns import shards

    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n0,/m/a,A\n")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, np.float32), 16000, format="WAV")
    pq.write_table(pa.table({"video_id": ["abc"], "audio": [{"bytes": buf.getvalue(), "path": "abc.wav"}]}),
                   str(tmp_path / "train-00000.parquet"))
    kwargs = dict(sample_rate=16000, clip_seconds=0.1, class_labels_csv=str(labels), progress=False)
    out = str(tmp_path / "packed.h5")
    with pytest.raises(PannsError, match="has a label.*--label_field.*--allow_unlabelled"):
        shards.pack_from_shards(str(tmp_path / "*.parquet"), out, **kwargs)
    assert not os.path.exists(out)
    assert shards.pack_from_shards(str(tmp_path / "*.parquet"), out, allow_unlabelled=True, **kwargs).rows == 1


def test_a_folder_given_as_checkpoint_is_named_as_a_folder(tmp_path):
    import panns

    with pytest.raises(PannsError, match="is a folder"):
        checkpoint.load_model(str(tmp_path))
    with pytest.raises(PannsError, match="is a folder"):
        panns.load(str(tmp_path))
