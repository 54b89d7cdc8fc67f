"""Resumable HTTP downloads with a progress bar, and the AudioSet label CSV fetcher.

``download(url, dest)`` writes into ``<dest>.part`` and renames it to ``dest`` only when every
byte has arrived, so ``dest`` is either absent or complete. An interrupted transfer keeps its
``.part`` file; the next call (or the next retry) asks the server for the rest with an HTTP
``Range`` header and appends, falling back to a fresh start when the server ignores ranges.
What the first response said about the file (URL, size, ETag / Last-Modified) is kept beside it in
``<dest>.part.json``; a resume sends ``If-Range`` and starts over when the URL, size or version
differ, so a file that changed on the server (or a ``.part`` of another URL) is never glued onto
old bytes. ``checksum="sha256:<hex>"`` (or ``md5:``) is checked before the rename; a mismatch
removes the download and is reported.
Failures are :class:`DownloadError` (a :class:`PannsError`) with a one-line message: the HTTP
status for 4xx/5xx answers, or "cannot reach <url>" with the reason when there is no network.

CLI (official scripts fetch metadata with wget; ours go through this module)::

    python3 utils/download.py labels [--dest metadata/class_labels_indices.csv] [--url URL]
    python3 utils/download.py file --url URL --dest PATH
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import json
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from tqdm import tqdm

from panns import config
from panns.errors import PannsError, run_cli
from panns.utilities import atomic_write_text, check_output_path

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16
RETRY_WAIT_SECONDS = 1.0  # times the attempt number
USER_AGENT = "panns-download/1.0 (+https://github.com/qiuqiangkong/audioset_tagging_cnn)"


class DownloadError(PannsError):
    """A download failed (HTTP error, no network, truncated transfer)."""


class _Retryable(Exception):
    """Internal: a transfer broke off; worth retrying from the .part file."""


def _part_path(dest: str) -> str:
    return dest + ".part"


def _meta_path(part: str) -> str:
    return part + ".json"


def _read_meta(part: str) -> dict:
    """What the first response said about the file being resumed ({} when unknown)."""
    try:
        with open(_meta_path(part), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _version_of(resp) -> dict:
    """The response's identity of the file: a strong ETag, Last-Modified (either may be absent)."""
    etag = resp.headers.get("ETag")
    return {"etag": etag if etag and not etag.startswith("W/") else None,
            "last_modified": resp.headers.get("Last-Modified")}


def _open(url: str, start: int, timeout: float, if_range: Optional[str] = None):
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
        if if_range:   # the server sends the whole file (200) instead of the rest when it changed
            headers["If-Range"] = if_range
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_from_headers(resp, start: int) -> Optional[int]:
    """Full file size from Content-Range (206) or Content-Length (200); None when unknown."""
    content_range = resp.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = resp.headers.get("Content-Length")
    if length and length.isdigit():
        return int(length) + (start if resp.status == 206 else 0)
    return None


def _transfer_once(url: str, part: str, timeout: float, progress: bool, resume: bool) -> None:
    """One attempt: continue ``part`` from its current size (or from 0) to the end of the file."""
    start = os.path.getsize(part) if (resume and os.path.exists(part)) else 0
    meta = _read_meta(part) if start > 0 else {}
    if meta and meta.get("url") != url:
        # a .part of another URL under this name: appending would splice two files together
        logger.info("%s holds a partial download of another URL; starting over", part)
        start, meta = 0, {}
    try:
        resp = _open(url, start, timeout, meta.get("etag") or meta.get("last_modified"))
    except urllib.error.HTTPError as e:
        if e.code == 416 and start > 0:
            # Range not satisfiable: either the .part already holds the whole file, or it is junk.
            total = None
            cr = e.headers.get("Content-Range") if e.headers else None
            if cr and "/" in cr and cr.rsplit("/", 1)[1].strip().isdigit():
                total = int(cr.rsplit("/", 1)[1].strip())
            if total == start:
                return
            os.remove(part)
            raise _Retryable("server refused the resume range; starting over") from e
        if e.code in (408, 429) or e.code >= 500:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"HTTP {e.code} {e.reason}: {url}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (socket.gaierror, ConnectionRefusedError)) or (
                isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)):
            # No network / no such host: retrying will not help; say so at once.
            raise DownloadError(f"cannot reach {url} ({reason}); check the network connection") from None
        raise _Retryable(f"cannot reach {url}: {reason}") from e

    with resp:
        if start > 0 and resp.status != 206:
            logger.info("server ignored the Range request (or the file changed); downloading %s from the start", url)
            start = 0
        total = _total_from_headers(resp, start)
        version = _version_of(resp)
        known = dict(version, total=total)
        if start > 0 and any(meta.get(k) is not None and known[k] is not None and meta[k] != known[k] for k in known):
            # the server ignored If-Range but the file is not the one the .part began
            os.remove(part)
            raise _Retryable(f"{url} changed on the server since the partial download; starting over")
        if start == 0:   # recorded before the first byte, so an interrupted transfer can be checked
            atomic_write_text(_meta_path(part), json.dumps(dict(version, url=url, total=total)))
        mode = "ab" if start > 0 else "wb"
        bar = None
        if progress:
            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=os.path.basename(part[:-5]), leave=False, file=sys.stderr)
        received = start
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = resp.read(CHUNK_BYTES)
                    except (socket.timeout, ConnectionError, http.client.HTTPException, OSError) as e:
                        raise _Retryable(f"connection lost after {received} bytes: {e}") from e
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and received < total:
            raise _Retryable(f"connection closed after {received} of {total} bytes")
        if total is not None and received > total:
            os.remove(part)
            raise _Retryable(f"received {received} bytes but the server announced {total}; starting over")


def check_url(url: str) -> None:
    """DownloadError unless ``url`` is an http(s) URL (urllib's own errors were tracebacks)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port   # noqa: B018  (raises ValueError for a bad port)
    except ValueError as e:
        raise DownloadError(f"invalid URL {url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(f"invalid URL {url!r}: expected http://... or https://...")


def check_dest(dest: str, what: str = "destination") -> None:
    """DownloadError, before any transfer, when ``dest`` is a folder or its folder cannot be made or
    written; then the folder is made."""
    try:
        check_output_path(dest, what=what)
    except PannsError as e:
        raise DownloadError(str(e)) from None
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)


def _file_digest(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _parse_checksum(checksum: str) -> tuple:
    algorithm, _, digest = checksum.partition(":")
    algorithm = algorithm.lower()
    if not digest or algorithm not in ("md5", "sha1", "sha256", "sha512"):
        raise DownloadError(f"checksum {checksum!r} must be '<md5|sha1|sha256|sha512>:<hex digest>'")
    return algorithm, digest.strip().lower()


def download(url: str, dest: str, progress: bool = True, resume: bool = True, timeout: float = 30.0,
             retries: int = 3, retry_wait: Optional[float] = None, checksum: Optional[str] = None) -> str:
    """Download ``url`` to ``dest`` (atomic rename of ``dest.part``); returns ``dest``.

    ``resume``: continue an existing ``.part`` file with an HTTP Range request (only when it began
    with the same URL and file version). ``retries``: how many times a broken transfer is resumed
    before giving up (waits ``retry_wait`` x attempt s). ``checksum``: ``"sha256:<hex>"`` (or md5,
    sha1, sha512) the complete file must have; on a mismatch nothing is installed.
    """
    retry_wait = RETRY_WAIT_SECONDS if retry_wait is None else retry_wait
    check_url(url)
    expected = _parse_checksum(checksum) if checksum else None
    dest = os.path.abspath(dest)
    check_dest(dest)
    part = _part_path(dest)
    if not resume:
        for p in (part, _meta_path(part)):
            if os.path.exists(p):
                os.remove(p)
    last_error = ""
    for attempt in range(retries + 1):
        try:
            _transfer_once(url, part, timeout, progress, resume=True)
            if expected and _file_digest(part, expected[0]) != expected[1]:
                # resuming a wrong file cannot fix it: remove it so the next run starts clean
                for p in (part, _meta_path(part)):
                    if os.path.exists(p):
                        os.remove(p)
                raise DownloadError(f"{url}: the downloaded file does not match {expected[0]} {expected[1]} "
                                    "(corrupted in transfer or changed on the server); removed, nothing installed")
            os.replace(part, dest)
            if os.path.exists(_meta_path(part)):
                os.remove(_meta_path(part))
            return dest
        except _Retryable as e:
            last_error = str(e)
            if attempt < retries:
                logger.warning("download of %s interrupted (%s); retrying (%d/%d)", url, e, attempt + 1, retries)
                time.sleep(retry_wait * (attempt + 1))
    kept = f"; partial data kept in {part}, re-run to resume" if os.path.exists(part) else ""
    raise DownloadError(f"{last_error} (gave up after {retries + 1} attempts){kept}")


def validate_labels_csv(path: str, expected_rows: int = config.AUDIOSET_CLASSES_NUM) -> None:
    """Raise PannsError unless ``path`` is a label CSV with ``expected_rows`` classes."""
    labels = config.read_class_labels(path)
    if labels.classes_num != expected_rows:
        raise PannsError(f"{path} lists {labels.classes_num} classes, expected {expected_rows}")


def fetch_labels(dest: Optional[str] = None, url: Optional[str] = None, progress: bool = True,
                 force: bool = False) -> str:
    """Fetch the AudioSet label CSV into ``dest`` (default: the repository's metadata/)."""
    dest = os.path.abspath(dest or config.DEFAULT_LABELS_CSV)
    check_dest(dest, "label CSV")   # a folder here failed only after the download
    if os.path.isfile(dest) and not force:
        validate_labels_csv(dest)
        logger.info("label CSV already present: %s", dest)
        return dest
    tmp = dest + ".download"
    download(url or config.LABELS_CSV_URL, tmp, progress=progress, resume=False)
    try:
        validate_labels_csv(tmp)
    except PannsError as e:
        os.remove(tmp)
        raise PannsError(f"downloaded label CSV is not valid ({e}); not installed") from None
    os.replace(tmp, dest)
    return dest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Download helpers (label CSV, any file, resumable).")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("labels", help="fetch the AudioSet label CSV (527 classes) into metadata/")
    p.add_argument("--dest", default=config.DEFAULT_LABELS_CSV,
                   help="where to write the CSV (default: <repo>/metadata/class_labels_indices.csv)")
    p.add_argument("--url", default=config.LABELS_CSV_URL, help="source URL (default: the official AudioSet CSV)")
    p.add_argument("--force", action="store_true", help="download again even if the file exists")
    p = sub.add_parser("file", help="download one URL to a path (resumable)")
    p.add_argument("--url", required=True, help="URL to fetch")
    p.add_argument("--dest", required=True, help="destination file")
    p.add_argument("--checksum", default=None,
                   help="expected digest of the file, '<md5|sha1|sha256|sha512>:<hex>' (default: not checked)")
    for p in sub.choices.values():
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.mode == "labels":
        path = fetch_labels(args.dest, args.url, progress=not args.quiet, force=args.force)
    else:
        path = download(args.url, args.dest, progress=not args.quiet, checksum=args.checksum)
    print(path)


if __name__ == "__main__":
    run_cli(main)
