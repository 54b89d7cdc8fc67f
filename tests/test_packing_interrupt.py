"""Ctrl-C stops utils/dataset.py pack_waveforms_to_hdf5 for good: exit status 130, one line on stderr, no output
under its final name and no temporary file, also when Python drops the KeyboardInterrupt because the signal landed
inside a finalizer ("Exception ignored in: ..."; the packer went on and wrote the whole output). The packer runs
as a subprocess through a small driver that slows decoding down (the product has no test hook)."""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from panns import packing

CLIPS = 40

# Runs utils/dataset.py as the command line does, with decoding slowed (forked workers inherit the patch) and,
# with FINALIZER_SIGINT=N, a SIGINT sent by the packer to itself from inside a __del__ after its N-th row: Python
# runs the handler there, cannot raise, prints "Exception ignored in" and goes on (deterministic, not a race).
DRIVER = """
import os, runpy, signal, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], "pytorch"))
from panns import packing
real_decode, real_add = packing.decode_row, packing.PackedFile.add
packing.decode_row = lambda job: (time.sleep(float(os.environ["DECODE_DELAY"])), real_decode(job))[1]
class Bomb:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):   # bytecode for the handler to run at, still inside __del__
            pass
rows = [0]
def add(self, *a):
    real_add(self, *a)
    rows[0] += 1
    if rows[0] == int(os.environ.get("FINALIZER_SIGINT", "0")):
        Bomb()   # collected at once: its __del__ runs here
packing.PackedFile.add = add
sys.argv = [os.path.join(sys.argv[1], "utils", "dataset.py")] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """CLIPS one-second wavs and their segment CSV (one AudioSet label each)."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(CLIPS):
        sf.write(str(root / f"Yclip{i:07d}.wav"), (rng.standard_normal(32000) * 0.1).astype("float32"), 32000,
                 subtype="PCM_16")
        lines.append(f'clip{i:07d}, 0.000, 1.000, "/m/09x0r"')
    (root / "seg.csv").write_text("\n".join(lines) + "\n")
    return root


def _start(clips, out, repo_root, **env):
    cmd = [sys.executable, "-c", DRIVER, repo_root, "pack_waveforms_to_hdf5", f"--csv_path={clips / 'seg.csv'}",
           f"--audios_dir={clips}", f"--waveforms_hdf5_path={out}", "--clip_seconds=1", "--num_workers=2",
           f"--logs_dir={out.parent / '_logs'}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **env))


def _assert_stopped(p, out, within: float):
    try:
        stdout, stderr = p.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"the packer did not stop within {within} s of Ctrl-C")
    assert p.returncode == 130, stdout + stderr
    assert stderr == "error: interrupted\n", stderr   # one line: no traceback, no "Exception ignored in"
    left = sorted(n for n in os.listdir(out.parent) if n != "_logs")
    assert left == [], left   # no output, no temporary, no list of missing clips


def test_ctrl_c_while_writing_stops_the_packer_with_130_and_no_output(clips, tmp_path, repo_root):
    out = tmp_path / "ws" / "eval.h5"
    p = _start(clips, out, repo_root, DECODE_DELAY="0.1")   # 40 clips, 2 workers: about 2 s of packing
    deadline = time.monotonic() + 60
    while not glob.glob(str(out.parent / ".eval.h5.tmp*")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the packer ended before it was interrupted"
    p.send_signal(signal.SIGINT)
    _assert_stopped(p, out, within=10)


def test_ctrl_c_dropped_inside_a_finalizer_still_stops_the_packer(clips, tmp_path, repo_root):
    out = tmp_path / "ws" / "eval.h5"
    p = _start(clips, out, repo_root, DECODE_DELAY="0", FINALIZER_SIGINT="5")
    _assert_stopped(p, out, within=60)


def test_ctrl_c_while_the_output_is_opened_keeps_the_existing_one(tmp_path, monkeypatch):
    """Ctrl-C after the temporary file exists but before the writer is set up (what a signal just as writing
    starts hits): the output there stays as it was and the temporary goes. The clean-up was not told of the
    interrupt and renamed the empty temporary over the output."""
    out = tmp_path / "eval.h5"
    out.write_bytes(b"the output of an earlier run")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(packing.storage, "WaveformWriter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with packing.PackedFile(str(out), 4, 100, "pcm16"):
            pass
    assert out.read_bytes() == b"the output of an earlier run" and os.listdir(tmp_path) == ["eval.h5"]


def test_main_run_in_process_gives_back_ctrl_c_and_forgets_it(clips, tmp_path):
    """``dataset.main`` called in the caller's own process (a notebook, a test session) puts back the SIGINT
    handler and ``sys.unraisablehook`` it found, and a Ctrl-C it saw does not stop later packing there. The
    handler stayed installed with its record: a later Ctrl-C handled elsewhere left every pack of that process
    raising KeyboardInterrupt (a pytest worker died of it)."""
    from panns import dataset as ds

    handler, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    labels = tmp_path / "labels.csv"
    labels.write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n')
    args = [f"--csv_path={clips / 'seg.csv'}", f"--audios_dir={clips}", "--clip_seconds=1", "--num_workers=1",
            f"--class_labels_csv={labels}", f"--logs_dir={tmp_path / '_logs'}"]
    ds.main(["pack_waveforms_to_hdf5", *args, f"--waveforms_hdf5_path={tmp_path / 'a.h5'}"])
    assert signal.getsignal(signal.SIGINT) is handler and sys.unraisablehook is hook
    with pytest.raises(KeyboardInterrupt):   # a Ctrl-C inside the command is its own, and stops it
        with packing.catch_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is handler and sys.unraisablehook is hook
    rep = ds.pack_waveforms_to_hdf5(str(clips / "seg.csv"), str(clips), str(tmp_path / "b.h5"), clip_seconds=1.0,
                                    class_labels_csv=str(labels), progress=False)
    assert rep is not None and os.path.isfile(tmp_path / "b.h5")
