"""Pretrained catalogue and resumable downloads, against a loopback HTTP server (127.0.0.1 only)."""
import dataclasses
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
import urllib.parse

import pytest
import torch

from panns import download
from panns import pretrained
from panns.errors import PannsError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Server:
    """Serves ``files`` (name -> bytes) with Range support; can cut the first transfer short."""

    def __init__(self, files, drop_first=False, ignore_range=False, etag=False, if_range=True):
        self.files, self.drop_first, self.ignore_range = dict(files), drop_first, ignore_range
        self.etag, self.if_range = etag, if_range   # send an ETag (content hash); honour If-Range
        self.requests = []          # (name, Range header or None)
        self.dropped = set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = urllib.parse.unquote(urllib.parse.urlparse(self.path).path.rsplit("/", 1)[-1])
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                if name not in outer.files:
                    self.send_error(404, "Not Found")
                    return
                data = outer.files[name]
                tag = '"' + hashlib.sha1(data).hexdigest() + '"'
                start = 0
                if rng and outer.etag and outer.if_range and self.headers.get("If-Range") not in (None, tag):
                    rng = None   # RFC 9110: the file changed, so the whole file is sent
                if rng and not outer.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if outer.etag:
                    self.send_header("ETag", tag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.drop_first and name not in outer.dropped:
                    outer.dropped.add(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_SECONDS", 0.0)


def test_catalogue_urls_and_front_ends():
    from panns import models

    e = pretrained.lookup("Cnn14")
    assert e.filename == "Cnn14_mAP=0.431.pth" and e.mAP == pytest.approx(0.431)
    assert e.url == "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
    assert pretrained.lookup("Cnn14_16k_mAP=0.438.pth").model_type == "Cnn14_16k"
    assert pretrained.lookup("Cnn14_DecisionLevelMax").filename == "Cnn14_DecisionLevelMax_mAP=0.385.pth"
    for entry in pretrained.CATALOGUE.values():      # every file names a registered model with its front end
        spec = models.get_model_spec(entry.model_type)
        assert spec.front_end == entry.front_end, entry.model_type
    with pytest.raises(PannsError, match="no published checkpoint"):
        pretrained.lookup("Cnn14_mel32")


def test_download_resumes_after_dropped_connection(tmp_path):
    data = os.urandom(300_000)
    with _Server({"blob.bin": data}, drop_first=True) as srv:
        dest = download.download(srv.url + "/blob.bin", str(tmp_path / "blob.bin"), progress=False)
        assert open(dest, "rb").read() == data
        assert not os.path.exists(dest + ".part")
        # second request continued from where the first stopped
        assert srv.requests[0][1] is None and srv.requests[1][1] == f"bytes={len(data) // 2}-"


def test_download_continues_existing_part_file_and_handles_server_without_ranges(tmp_path):
    data = os.urandom(100_000)
    dest = tmp_path / "x.bin"
    with open(str(dest) + ".part", "wb") as f:
        f.write(data[:40_000])
    with _Server({"x.bin": data}) as srv:
        download.download(srv.url + "/x.bin", str(dest), progress=False)
        assert srv.requests == [("x.bin", "bytes=40000-")]
    assert dest.read_bytes() == data
    dest2 = tmp_path / "y.bin"
    with open(str(dest2) + ".part", "wb") as f:
        f.write(b"garbage")
    with _Server({"y.bin": data}, ignore_range=True) as srv:   # 200 instead of 206: start over
        download.download(srv.url + "/y.bin", str(dest2), progress=False)
    assert dest2.read_bytes() == data


def test_download_errors_are_one_line(tmp_path):
    with _Server({}) as srv:
        with pytest.raises(download.DownloadError, match=r"HTTP 404 .*missing\.bin"):
            download.download(srv.url + "/missing.bin", str(tmp_path / "m.bin"), progress=False)
        port = srv.httpd.server_address[1]
    # server gone: connection refused -> immediate one-line error naming the URL
    url = f"http://127.0.0.1:{port}/files/gone.bin"
    with pytest.raises(download.DownloadError, match="cannot reach") as ei:
        download.download(url, str(tmp_path / "g.bin"), progress=False)
    assert "\n" not in str(ei.value) and url in str(ei.value)
    assert not (tmp_path / "g.bin").exists()


def test_fetch_labels_validates_row_count(tmp_path, audioset_labels_csv):
    good = open(audioset_labels_csv, "rb").read()
    bad = b"index,mid,display_name\n0,/m/a,A\n"
    with _Server({"good.csv": good, "bad.csv": bad}) as srv:
        out = download.fetch_labels(str(tmp_path / "meta" / "labels.csv"), url=srv.url + "/good.csv", progress=False)
        assert open(out, "rb").read() == good
        with pytest.raises(PannsError, match="527"):
            download.fetch_labels(str(tmp_path / "bad.csv"), url=srv.url + "/bad.csv", progress=False)
        assert not (tmp_path / "bad.csv").exists()


def _small_official_checkpoint(path, model_type="Cnn6"):
    from panns import models

    torch.manual_seed(0)
    model = models.create_model(model_type)
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    return model


def _publish(monkeypatch, model_type, data):
    """The catalogue entry of ``model_type`` with the digest of ``data`` (a stand-in for the record's file)."""
    entry = dataclasses.replace(pretrained.CATALOGUE[model_type], checksum="md5:" + hashlib.md5(data).hexdigest())
    monkeypatch.setitem(pretrained.CATALOGUE, model_type, entry)
    return entry


def test_get_checkpoint_downloads_validates_and_caches(tmp_path, monkeypatch):
    src = tmp_path / "src.pth"
    _small_official_checkpoint(str(src))
    entry = _publish(monkeypatch, "Cnn6", src.read_bytes())
    _publish(monkeypatch, "Cnn10", src.read_bytes())
    cache = tmp_path / "cache"
    monkeypatch.setenv("PANNS_CACHE", str(cache))
    with _Server({entry.filename: src.read_bytes()}, drop_first=True) as srv:
        monkeypatch.setenv("PANNS_CHECKPOINT_BASE_URL", srv.url)
        assert pretrained.checkpoint_url(entry.filename) == srv.url + "/Cnn6_mAP%3D0.343.pth?download=1"
        path = pretrained.get_checkpoint("Cnn6", progress=False)
        assert path == str(cache / entry.filename)
        assert open(path, "rb").read() == src.read_bytes()
        assert [r[1] is not None for r in srv.requests] == [False, True]   # resumed with Range
        n = len(srv.requests)
        assert pretrained.get_checkpoint("Cnn6", progress=False) == path   # cached: no new request
        assert len(srv.requests) == n
        # a file that does not load as its model type is rejected and moved aside
        srv.files[pretrained.lookup("Cnn10").filename] = src.read_bytes()   # Cnn6 weights under Cnn10's name
        with pytest.raises(PannsError, match="does not load as Cnn10"):
            pretrained.get_checkpoint("Cnn10", progress=False)
        assert not (cache / pretrained.lookup("Cnn10").filename).exists()


def test_a_published_file_with_another_digest_is_not_installed(tmp_path, monkeypatch):
    """The catalogue's digests are the record's: a mirror (PANNS_CHECKPOINT_BASE_URL) or a transfer that
    delivers other bytes installs nothing, even though those bytes load as the model."""
    src = tmp_path / "src.pth"
    _small_official_checkpoint(str(src))
    entry = pretrained.lookup("Cnn6")
    assert entry.checksum == "md5:e25e26b84585b14c7754c91e48efc9be"   # the record's file, not our stand-in
    cache = tmp_path / "cache"
    monkeypatch.setenv("PANNS_CACHE", str(cache))
    with _Server({entry.filename: src.read_bytes()}) as srv:
        monkeypatch.setenv("PANNS_CHECKPOINT_BASE_URL", srv.url)
        with pytest.raises(PannsError) as ei:
            pretrained.get_checkpoint("Cnn6", progress=False)
    msg = str(ei.value)
    assert "\n" not in msg and "does not match md5 e25e26b8" in msg and "nothing installed" in msg, msg
    assert not cache.exists() or os.listdir(cache) == []
    known = [e.model_type for e in pretrained.CATALOGUE.values() if e.checksum]
    assert {"Cnn14", "Cnn14_DecisionLevelAtt", "ResNet38", "Wavegram_Logmel_Cnn14"} <= set(known)
    for e in pretrained.CATALOGUE.values():   # each digest is well formed (a typo would refuse every download)
        assert e.checksum is None or re.fullmatch("md5:[0-9a-f]{32}", e.checksum), e.model_type


def test_get_checkpoint_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PANNS_CHECKPOINT_BASE_URL", "http://127.0.0.1:9/files")   # discard port: refused
    with pytest.raises(PannsError) as ei:
        pretrained.get_checkpoint("Cnn14", progress=False)
    msg = str(ei.value)
    assert "\n" not in msg and "Cnn14_mAP%3D0.431.pth" in msg and str(tmp_path / "cache") in msg


@pytest.mark.parametrize("if_range", [True, False])
def test_resume_starts_over_when_the_file_changed_on_the_server(tmp_path, if_range):
    """A .part of an older version must not be completed with the new version's tail (silent garbage)."""
    old, new = os.urandom(200_000), os.urandom(200_000)   # same size: only the version tells them apart
    dest = tmp_path / "f.bin"
    with _Server({"f.bin": old}, drop_first=True, etag=True, if_range=if_range) as srv:
        with pytest.raises(download.DownloadError, match="partial data kept"):
            download.download(srv.url + "/f.bin", str(dest), progress=False, retries=0)
        assert os.path.getsize(str(dest) + ".part") == len(old) // 2
        srv.files["f.bin"] = new
        download.download(srv.url + "/f.bin", str(dest), progress=False)
    assert dest.read_bytes() == new
    assert not os.path.exists(str(dest) + ".part") and not os.path.exists(str(dest) + ".part.json")


def test_part_file_of_another_url_is_not_resumed(tmp_path):
    a, b = os.urandom(100_000), os.urandom(100_000)
    dest = tmp_path / "f.bin"
    with _Server({"a.bin": a, "b.bin": b}, drop_first=True) as srv:
        with pytest.raises(download.DownloadError):
            download.download(srv.url + "/a.bin", str(dest), progress=False, retries=0)
        srv.dropped.add("b.bin")
        download.download(srv.url + "/b.bin", str(dest), progress=False)
        assert srv.requests[-1] == ("b.bin", None)   # fresh start, no Range
    assert dest.read_bytes() == b


def test_checksum_mismatch_installs_nothing(tmp_path):
    data = os.urandom(50_000)
    dest = tmp_path / "c.bin"
    with _Server({"c.bin": data}) as srv:
        with pytest.raises(download.DownloadError, match="does not match sha256") as ei:
            download.download(srv.url + "/c.bin", str(dest), progress=False, checksum="sha256:" + "0" * 64)
        assert "\n" not in str(ei.value)
        assert not dest.exists() and not os.path.exists(str(dest) + ".part")
        good = "md5:" + hashlib.md5(data).hexdigest()
        assert download.download(srv.url + "/c.bin", str(dest), progress=False, checksum=good) == str(dest)
    assert dest.read_bytes() == data
    with pytest.raises(download.DownloadError, match="checksum"):
        download.download("http://127.0.0.1:9/x", str(tmp_path / "d.bin"), checksum="crc:12")


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1/x", "http://[::1/x", "http://127.0.0.1:99999/x"])
def test_bad_url_is_one_line(tmp_path, url):
    with pytest.raises(download.DownloadError, match="invalid URL"):
        download.download(url, str(tmp_path / "x.bin"), progress=False)


def test_destination_problems_before_any_request(tmp_path):
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "folder").mkdir()
    with _Server({"x.bin": b"data"}) as srv:
        with pytest.raises(download.DownloadError, match="cannot create the folder"):
            download.download(srv.url + "/x.bin", str(tmp_path / "afile" / "x.bin"), progress=False)
        with pytest.raises(download.DownloadError, match="is a folder"):
            download.download(srv.url + "/x.bin", str(tmp_path / "folder"), progress=False)
        with pytest.raises(download.DownloadError, match="is a folder"):
            download.fetch_labels(str(tmp_path / "folder"), url=srv.url + "/x.bin", progress=False)
        assert srv.requests == []
    assert (tmp_path / "afile").read_text() == "keep"


def test_pretrained_cli_cache_dir_that_is_a_file(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.setenv("PANNS_CHECKPOINT_BASE_URL", "http://127.0.0.1:9/files")
    with pytest.raises(SystemExit) as ei:
        run_cli(lambda: pretrained.main(["download", "--model_type", "Cnn6", "--cache_dir", str(cache), "--quiet"]))
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cache" in err and "FileExistsError" not in err and str(cache) in err


def test_a_closed_pipe_ends_a_listing_quietly(tmp_path):
    """`pretrained.py list | head`: the reader going away is normal use, not an error message."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from panns.errors import run_cli\n"
            "run_cli(lambda: [print('row', i) for i in range(200000)])\n") % os.path.join(ROOT, "pytorch")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"row 0\n"
    p.stdout.close()
    err = p.stderr.read().decode() if p.stderr else ""
    assert p.wait(timeout=60) == 141 and err == "", err
