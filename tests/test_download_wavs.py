"""download_wavs (utils/dataset.py) against a loopback HTTP server serving generated media files:
segment cut, format, resumability, failure CSV, retry of transient errors."""
import csv
import functools
import http.server
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from panns import dataset as ds
from panns.errors import PannsError

SRC_SR = 44100
TONES = (440.0, 880.0, 1760.0)  # one tone per second, so the cut segment can be identified


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves /media/<ytid> from the file <ytid>.<ext>; '/media/flaky*' answers 503 on its first request."""

    def log_message(self, *args):
        pass

    def _resolve(self):
        stem = self.path.rsplit("/", 1)[-1]
        for name in os.listdir(self.directory):
            if os.path.splitext(name)[0] == stem:
                return "/" + name
        return self.path

    def do_GET(self):
        self.server.requests.append(self.path)
        if "/flaky" in self.path and self.server.requests.count(self.path) == 1:
            self.send_error(503, "Service Unavailable")
            return
        self.path = self._resolve()
        super().do_GET()

    def do_HEAD(self):
        self.server.requests.append("HEAD " + self.path)
        self.path = self._resolve()
        super().do_HEAD()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    t = np.arange(SRC_SR) / SRC_SR
    mono = 0.5 * np.concatenate([np.sin(2 * np.pi * f * t) for f in TONES])
    stereo = np.stack([mono, mono], axis=1)
    sf.write(root / "wavclip0000.wav", stereo, SRC_SR, subtype="PCM_16")
    sf.write(root / "flacclip000.flac", stereo, SRC_SR)
    sf.write(root / "mp3clip0000.mp3", mono, SRC_SR)
    sf.write(root / "flakyclip00.wav", mono, SRC_SR, subtype="PCM_16")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    srv.requests = []
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _csv(path, ytids, start=1.0, end=2.0):
    with open(path, "w") as f:
        f.write("# created\n# counts\n# YTID, start_seconds, end_seconds, positive_labels\n")
        for y in ytids:
            f.write(f'{y}, {start:.3f}, {end:.3f}, "/m/demo00"\n')
    return str(path)


def _dominant_hz(y, sr):
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)]


def test_download_cut_resume_and_failures(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/media/{{ytid}}"
    csv_path = _csv(tmp_path / "seg.csv", ["wavclip0000", "flacclip000", "mp3clip0000", "gone0000000"])
    audios = tmp_path / "audios"
    rep = ds.download_wavs(csv_path, str(audios), num_workers=3, url_template=url, retry_base_delay=0.01,
                           progress=False)
    assert (rep.downloaded, rep.skipped, len(rep.failed)) == (3, 0, 1)
    for ytid in ("wavclip0000", "flacclip000", "mp3clip0000"):
        path = audios / f"Y{ytid}.wav"
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (32000, 1, "PCM_16")
        y, _ = sf.read(str(path))
        assert abs(len(y) - 32000) <= 320, (ytid, len(y))  # the 1-s segment, 1..2 s
        assert abs(_dominant_hz(y, 32000) - TONES[1]) < 5, ytid  # the second tone: seek went to 1 s
    assert sorted(os.listdir(audios)) == ["Yflacclip000.wav", "Ymp3clip0000.wav", "Ywavclip0000.wav",
                                          ds.FAILURES_CSV_NAME]
    with open(audios / ds.FAILURES_CSV_NAME) as f:
        rows = list(csv.DictReader(f))
    assert [r["YTID"] for r in rows] == ["gone0000000"]
    assert "404" in rows[0]["reason"] and rows[0]["permanent"] == "1"

    # Second run: present clips are skipped without a request, the permanent failure is not retried.
    before = len(server.requests)
    rep2 = ds.download_wavs(csv_path, str(audios), num_workers=2, url_template=url, progress=False)
    assert (rep2.downloaded, rep2.skipped, len(rep2.failed), rep2.not_retried) == (0, 3, 1, 1)
    assert len(server.requests) == before
    # --retry_failed asks again (and fails again).
    rep3 = ds.download_wavs(csv_path, str(audios), url_template=url, retry_failed=True, progress=False)
    assert len(rep3.failed) == 1 and rep3.failed[0].attempts == 1 and rep3.not_retried == 0
    assert any("gone0000000" in r for r in server.requests[before:])
    # A list from a version that called an offline run's DNS failure permanent: that clip is tried again.
    text = (audios / ds.FAILURES_CSV_NAME).read_text()
    reason = next(csv.DictReader(text.splitlines()))["reason"]
    (audios / ds.FAILURES_CSV_NAME).write_text(text.replace(reason, "Failed to resolve 'www.youtube.com' "
                                                                     "([Errno -2] Name or service not known)"))
    before = len(server.requests)
    rep_dns = ds.download_wavs(csv_path, str(audios), url_template=url, progress=False)
    assert rep_dns.not_retried == 0 and any("gone0000000" in r for r in server.requests[before:])

    # A corrupt/partial existing file is not "valid": it is fetched again.
    (audios / "Ywavclip0000.wav").write_bytes(b"RIFF....")
    rep4 = ds.download_wavs(csv_path, str(audios), url_template=url, progress=False)
    assert rep4.downloaded == 1 and rep4.skipped == 2


def test_download_retries_transient_errors(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/media/{{ytid}}"
    csv_path = _csv(tmp_path / "seg.csv", ["flakyclip00"], start=0.0, end=1.0)
    rep = ds.download_wavs(csv_path, str(tmp_path / "a"), url_template=url, retry_base_delay=0.01, progress=False)
    assert rep.downloaded == 1 and not rep.failed
    assert server.requests.count("/media/flakyclip00") >= 2


def test_segment_beyond_media_fails_cleanly(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/media/{{ytid}}"
    csv_path = _csv(tmp_path / "seg.csv", ["wavclip0000"], start=30.0, end=40.0)
    rep = ds.download_wavs(csv_path, str(tmp_path / "a"), url_template=url, progress=False)
    assert len(rep.failed) == 1 and "segment" in rep.failed[0].reason
    assert os.listdir(tmp_path / "a") == [ds.FAILURES_CSV_NAME]  # no temp folders or partial files left


def test_segments_with_no_length_are_refused_before_downloading(server, tmp_path):
    # end == start became ffmpeg '-t 0.000', which ffmpeg reads as no limit: the rest of the video was the clip
    url = f"http://127.0.0.1:{server.server_address[1]}/media/{{ytid}}"
    seg = tmp_path / "seg.csv"
    seg.write_text('wavclip0000, 1.000, 2.000, "/m/demo00"\nflacclip000, 1.000, 1.000, "/m/demo00"\n'
                   'mp3clip0000, 2.000, 1.000, "/m/demo00"\n')
    asked = len(server.requests)
    with pytest.raises(PannsError, match=r"seg\.csv: 2 rows cannot be parsed: line 2 \(end 1\.000 is not after start "
                                         r"1\.000.*line 3 \(end 1\.000 is not after start 2\.000"):
        ds.download_wavs(str(seg), str(tmp_path / "audios"), url_template=url, progress=False)
    assert len(server.requests) == asked and not (tmp_path / "audios").exists()
    # and the cut itself never asks ffmpeg for '-t 0'
    with pytest.raises(RuntimeError, match="segment 1-1 s is empty"):
        ds._cut_segment("media", ds.Segment("x", 1.0, 1.0, ()), str(tmp_path / "o.wav"), 32000)


def test_url_template_needs_placeholder(tmp_path):
    csv_path = _csv(tmp_path / "seg.csv", ["x"])
    with pytest.raises(PannsError, match="ytid"):
        ds.download_wavs(csv_path, str(tmp_path / "a"), url_template="http://127.0.0.1/x", progress=False)


def test_failures_csv_that_is_not_one_is_one_line_and_kept(tmp_path):
    csv_path = _csv(tmp_path / "seg.csv", ["gone0000000"])
    url = "http://127.0.0.1:9/{ytid}"   # never reached: the list is read before any download
    other = tmp_path / "notes.csv"
    other.write_text("name,comment\na,b\n")
    with pytest.raises(PannsError, match="notes.csv is not a download failures list"):
        ds.download_wavs(csv_path, str(tmp_path / "a"), url_template=url, failures_csv=str(other), progress=False)
    assert other.read_text() == "name,comment\na,b\n"
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"YTID,reason\n\x00\x01\xff\xfe")
    with pytest.raises(PannsError, match="bin.csv is not a text file"):
        ds.download_wavs(csv_path, str(tmp_path / "a"), url_template=url, failures_csv=str(binary), progress=False)
    latin = tmp_path / "latin.csv"   # saved by a spreadsheet: Latin-1, spaces after commas
    latin.write_bytes("YTID, start_seconds, end_seconds, reason, permanent, attempts\n"
                      "gone0000000, 1, 2, vid\xe9o supprim\xe9e, 1, 1\n".encode("latin-1"))
    rep = ds.download_wavs(csv_path, str(tmp_path / "a"), url_template=url, failures_csv=str(latin), progress=False)
    assert [r.reason for r in rep.failed] == ["vidéo supprimée"] and rep.failed[0].attempts == 0   # not retried


def test_failures_csv_folder_is_checked_before_downloading(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/media/{{ytid}}"
    csv_path = _csv(tmp_path / "seg.csv", ["gone0000000"])
    (tmp_path / "afile").write_text("x")
    before = len(server.requests)
    with pytest.raises(PannsError, match="afile is a file"):
        ds.download_wavs(csv_path, str(tmp_path / "a"), url_template=url, failures_csv=str(tmp_path / "afile" / "f.csv"),
                         progress=False)
    assert len(server.requests) == before
    rep = ds.download_wavs(csv_path, str(tmp_path / "a"), url_template=url, failures_csv=str(tmp_path / "new" / "f.csv"),
                           progress=False)
    with open(tmp_path / "new" / "f.csv") as f:
        assert [r["YTID"] for r in csv.DictReader(f)] == ["gone0000000"] == [r.segment.ytid for r in rep.failed]


def test_cookies_that_cannot_be_read_are_refused_before_downloading(tmp_path):
    """yt-dlp goes on without a cookie file it cannot read, so the clips that need it would fail one by one."""
    csv_path = _csv(tmp_path / "seg.csv", ["x"])
    url = "http://127.0.0.1:9/{ytid}"   # never reached
    for missing in (tmp_path / "cookies.txt", tmp_path):   # no such file; a folder
        with pytest.raises(PannsError, match=r"--cookies .* is not a readable file"):
            ds.download_wavs(csv_path, str(tmp_path / "a"), url_template=url, cookies=str(missing), progress=False)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("flag,value,expect", [
    ("--num_workers", "0", ">= 1"), ("--num_workers", "-2", ">= 1"), ("--max_retries", "-1", ">= 0"),
    ("--retry_base_delay", "nan", "finite"), ("--retry_base_delay", "-5", ">= 0")])
def test_download_flags_refuse_nonsense_numbers(flag, value, expect, tmp_path, capsys):
    """Were read as 1 worker, no retries and retries without a pause."""
    with pytest.raises(SystemExit) as e:
        ds.main(["download_wavs", "--csv_path", "x.csv", "--audios_dir", str(tmp_path), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be" in err and expect in err
    assert os.listdir(tmp_path) == []


def test_transient_error_classification():
    assert ds.is_transient_error("HTTP Error 429: Too Many Requests")
    assert ds.is_transient_error("Unable to download webpage: HTTP Error 503: Service Unavailable")
    assert ds.is_transient_error("Read timed out.")
    # Offline: DNS cannot resolve the host (yt-dlp's and urllib's wording); the clips are not gone.
    assert ds.is_transient_error("Unable to download webpage: <urlopen error Failed to resolve 'www.youtube.com' "
                                 "([Errno -2] Name or service not known)>")
    assert ds.is_transient_error("[Errno -3] Temporary failure in name resolution")
    assert ds.is_transient_error("[Errno 8] nodename nor servname provided, or not known")
    assert not ds.is_transient_error("Video unavailable. This video has been removed by the uploader")
    assert not ds.is_transient_error("HTTP Error 404: Not Found")


def test_scripts_1_2_3_end_to_end(tmp_path, repo_root):
    """Script 1 downloads metadata and clips from a loopback mirror, scripts 2 and 3 pack and index them."""
    import subprocess

    import h5py

    from panns.demo.data import make_demo_dataset

    src = tmp_path / "src"
    made = make_demo_dataset(str(src), classes_num=2, clip_seconds=1.0, unbalanced_parts=1,
                             clips_per_class={"balanced_train": 1, "eval": 1, "unbalanced_train": 2})
    mirror = tmp_path / "mirror"
    for sub in ("csv", "qa", "media"):
        (mirror / sub).mkdir(parents=True)
    for split in ("eval", "balanced_train", "unbalanced_train"):
        segs = ds.read_segments_csv(str(src / "metadata" / f"{split}_segments.csv"))
        with open(mirror / "csv" / f"{split}_segments.csv", "w") as f:  # the demo files are the segments: start 0
            f.write("#\n#\n#\n" + "".join(f'{s.ytid}, 0.000, 1.000, "{",".join(s.mids)}"\n' for s in segs))
    (mirror / "csv" / "class_labels_indices.csv").write_bytes((src / "metadata" / "class_labels_indices.csv").read_bytes())
    (mirror / "qa" / "qa_true_counts.csv").write_text("label_id,num_rated,num_true\n")
    for paths in made.values():
        for p in paths:
            os.link(p, mirror / "media" / os.path.basename(p)[1:])  # served as /media/<ytid>.wav
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(mirror)))
    srv.requests = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    env = dict(os.environ, CSV_BASE_URL=base, URL_TEMPLATE=base + "/media/{ytid}.wav", NUM_WORKERS="2",
               PARALLEL_PARTS="2", CLIP_SECONDS="1", PACK_JOBS="2")
    # Spaces and a quote in the paths: xargs reads quotes in its input unless -d '\n' (an apostrophe in the
    # data set path stopped the unbalanced parts with "xargs: unmatched single quote")
    data, ws = tmp_path / "it's data train", tmp_path / "ws train"
    try:
        for script, args in (("1_download_dataset.sh", [data]), ("2_pack_waveforms_to_hdf5s.sh", [data, ws]),
                             ("3_create_training_indexes.sh", [ws])):
            r = subprocess.run(["bash", os.path.join(repo_root, "scripts", script)] + [str(a) for a in args],
                               capture_output=True, text=True, env=env, cwd=str(tmp_path))
            assert r.returncode == 0, f"{script}: {r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(os.listdir(data / "audios" / "unbalanced_train_segments" / "unbalanced_train_segments_part00")) == 4 + 1
    with h5py.File(ws / "hdf5s" / "indexes" / "full_train.h5", "r") as hf:
        assert hf["audio_name"].shape == (2 + 4,)  # balanced + the one unbalanced part, not eval
    with h5py.File(ws / "hdf5s" / "indexes" / "eval.h5", "r") as hf:
        assert hf["audio_name"].shape == (2,)


def test_index_script_without_waveforms_or_unbalanced_parts(tmp_path, repo_root):
    """scripts/3_create_training_indexes.sh: a WORKSPACE with no packed waveforms is one line and creates nothing
    (it left an empty hdf5s/indexes tree at a typo'd path); one without unbalanced_train/ (eval and balanced_train
    packed only) is indexed (find's 'No such file or directory' stopped it before full_train.h5)."""
    from data_helpers import make_dataset

    script = os.path.join(repo_root, "scripts", "3_create_training_indexes.sh")
    env = dict(os.environ, PYTHON=sys.executable, CLIP_SECONDS="1", NUM_WORKERS="1", PACK_JOBS="1")
    r = subprocess.run(["bash", script, "wrkspace"], env=env, cwd=str(tmp_path), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: no packed waveforms in wrkspace/hdf5s/waveforms"), r.stderr
    assert os.listdir(tmp_path) == []
    info = make_dataset(str(tmp_path / "data"), extras=False,
                        per_class={"balanced_train": 1, "eval": 1, "unbalanced_train": 1})
    ws = tmp_path / "ws"
    r = subprocess.run(["bash", os.path.join(repo_root, "scripts", "2_pack_waveforms_to_hdf5s.sh"), info["root"],
                        str(ws)], env=env, cwd=str(tmp_path), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import shutil
    shutil.rmtree(ws / "hdf5s" / "waveforms" / "unbalanced_train")
    r = subprocess.run(["bash", script, str(ws)], env=env, cwd=str(tmp_path), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (ws / "hdf5s" / "indexes" / "full_train.h5").is_file()


def test_interrupt_keeps_failure_list(tmp_path, monkeypatch):
    """Ctrl-C: queued clips are cancelled and earlier failure entries of clips not reached are kept."""
    csv_path = _csv(tmp_path / "seg.csv", [f"clip{i:07d}" for i in range(6)])
    audios = tmp_path / "a"
    audios.mkdir()
    with open(audios / ds.FAILURES_CSV_NAME, "w") as f:
        f.write("YTID,start_seconds,end_seconds,reason,permanent,attempts\nclip0000005,1,2,download: HTTP Error 503,0,5\n")
    calls = []

    def fake(seg, opts, fetcher):
        calls.append(seg.ytid)
        if seg.ytid == "clip0000001":
            raise KeyboardInterrupt
        if seg.ytid > "clip0000001":
            time.sleep(0.5)  # slow clips: the main thread must cancel the queue, not wait for it
        return ds.DownloadResult(seg, "failed", "download: HTTP Error 404", True, 1)

    monkeypatch.setattr(ds, "_download_one", fake)
    monkeypatch.setattr(ds, "_Fetcher", lambda opts: type("F", (), {"close": lambda self: None})())
    with pytest.raises(KeyboardInterrupt):
        ds.download_wavs(csv_path, str(audios), num_workers=1, url_template="http://127.0.0.1:9/{ytid}", progress=False)
    assert len(calls) < 6  # the queue was not drained
    with open(audios / ds.FAILURES_CSV_NAME) as f:
        rows = {r["YTID"]: r for r in csv.DictReader(f)}
    assert rows["clip0000000"]["permanent"] == "1" and rows["clip0000005"]["reason"].endswith("503")


def test_ctrl_c_during_retry_backoff_returns_at_once(tmp_path, monkeypatch):
    """A clip waiting out a long retry back-off must not hold Ctrl-C up; stale temp folders of dead runs go."""
    import _thread

    csv_path = _csv(tmp_path / "seg.csv", [f"clip{i:07d}" for i in range(4)])
    audios = tmp_path / "a"
    audios.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = audios / f".tmp_dl_{dead.pid}_1"
    stale.mkdir()
    (stale / "media.webm.part").write_bytes(b"x")

    def backoff(seg, opts, fetcher):
        opts.stop.wait(60)  # what a retry delay does
        return ds.DownloadResult(seg, "failed", "interrupted", False, 1)

    monkeypatch.setattr(ds, "_download_one", backoff)
    monkeypatch.setattr(ds, "_Fetcher", lambda opts: type("F", (), {"close": lambda self: None})())
    threading.Timer(0.5, _thread.interrupt_main).start()
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        ds.download_wavs(csv_path, str(audios), num_workers=2, url_template="http://127.0.0.1:9/{ytid}", progress=False)
    assert time.time() - t0 < 3
    assert not stale.exists()
    assert not [f for f in os.listdir(audios) if ".tmp" in f]
