"""Catalogue of the official pretrained PANNs checkpoints and a cached, resumable downloader.

The authors published their AudioSet-trained weights on Zenodo (record 3987831) as
``<ModelType>_mAP=<mAP>.pth`` files in the official format ``{'model': state_dict, ...}``.
:func:`get_checkpoint` downloads the file for a model type once into a cache folder
(``$PANNS_CACHE`` or ``~/.cache/panns``), validates it by loading it into the model (strict), and
returns its path on every later call without touching the network. The base URL can be changed
with ``$PANNS_CHECKPOINT_BASE_URL`` (mirrors, tests).

CLI::

    python3 pytorch/pretrained.py list
    python3 pytorch/pretrained.py download --model_type Cnn14      # prints the cached path
    python3 pytorch/pretrained.py path --model_type Cnn14          # where it is / would be cached
"""
from __future__ import annotations

import argparse
import logging
import os
import urllib.parse
from dataclasses import dataclass
from typing import Dict, List, Optional


from panns.download import DownloadError, check_dest
from panns.download import download as http_download
from panns.errors import CheckpointError, PannsError, run_cli
from panns.frontend import FRONT_END_8K, FRONT_END_16K, FRONT_END_32K, FrontEnd

logger = logging.getLogger(__name__)

ZENODO_RECORD = 3987831
DEFAULT_BASE_URL = f"https://zenodo.org/record/{ZENODO_RECORD}/files"


@dataclass(frozen=True)
class PretrainedCheckpoint:
    """One published checkpoint file.

    ``verified``: False where the file name is only known from third-party code that cites an
    earlier version of the record (3960586); the download then may 404 and says so.
    ``checksum``: ``"md5:<hex>"`` as Zenodo lists it, checked after the download when known.
    """

    filename: str
    model_type: str
    mAP: float
    front_end: FrontEnd = FRONT_END_32K
    verified: bool = True
    checksum: Optional[str] = None

    @property
    def sample_rate(self) -> int:
        return self.front_end.sample_rate

    @property
    def url(self) -> str:
        return checkpoint_url(self.filename)


def _entry(model_type: str, mAP: str, front_end=FRONT_END_32K, verified=True, filename=None,
           md5: Optional[str] = None) -> PretrainedCheckpoint:
    return PretrainedCheckpoint(filename or f"{model_type}_mAP={mAP}.pth", model_type, float(mAP), front_end, verified,
                                f"md5:{md5}" if md5 else None)


# mAP as in each file name (the AudioSet eval-set figure; README's model zoo shows the paper's where it differs).
# md5: the record's published digest where it is known (Zenodo lists one per file; these are the digests that
# third-party code checks its downloads of this record against); a download with another digest is not installed.
CATALOGUE: Dict[str, PretrainedCheckpoint] = {c.model_type: c for c in [
    _entry("Cnn14", "0.431", md5="541141fa2ee191a88f24a3219fff024e"),
    _entry("Cnn14_16k", "0.438", FRONT_END_16K),   # the paper reports 0.427; 0.438 is the file name's
    _entry("Cnn14_8k", "0.416", FRONT_END_8K),     # the paper reports 0.406; 0.416 is the file name's
    _entry("Cnn14_DecisionLevelMax", "0.385"),
    _entry("Wavegram_Logmel_Cnn14", "0.439", md5="17fa9ab65af3c0eb5ffbc5f65552c4e1"),
    _entry("Wavegram_Cnn14", "0.389", md5="1e3506ab640371e0b5a417b15fd66d21"),
    _entry("Cnn10", "0.380", md5="bfb1f1f9968938fa8ef4012b8471f5f6"),
    _entry("Cnn6", "0.343", md5="e25e26b84585b14c7754c91e48efc9be"),
    _entry("ResNet22", "0.430", md5="cf36d413096793c4e15dc752a3abd599"),
    _entry("ResNet38", "0.434", md5="bf12f36aaabac4e0855e22d3c3239c1b"),
    _entry("ResNet54", "0.429", md5="4f1f1406d37a29e2379916885e18c5f3"),
    _entry("MobileNetV1", "0.389"),
    _entry("MobileNetV2", "0.383"),
    _entry("LeeNet11", "0.266"),
    _entry("LeeNet24", "0.336"),
    _entry("DaiNet19", "0.295"),
    _entry("Res1dNet31", "0.365"),
    _entry("Res1dNet51", "0.355"),
    # Downloaded from this record with this digest by published third-party code.
    _entry("Cnn14_DecisionLevelAtt", "0.425", md5="c8281ca2b9967244b91d557aa941e8ca"),
    # File names cited by third-party code from the earlier record version 3960586, unverified in
    # 3987831 (the emb512/128/32 mAPs themselves are the paper's Table VII).
    _entry("Cnn14_emb512", "0.420", verified=False),
    _entry("Cnn14_emb128", "0.412", verified=False),
    _entry("Cnn14_emb32", "0.364", verified=False),
]}


def base_url() -> str:
    return os.environ.get("PANNS_CHECKPOINT_BASE_URL", DEFAULT_BASE_URL).rstrip("/")


def checkpoint_url(filename: str) -> str:
    """Zenodo URL of a file; the name is percent-encoded ('=' -> %3D)."""
    return f"{base_url()}/{urllib.parse.quote(filename, safe='')}?download=1"


def cache_dir() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("PANNS_CACHE") or "~/.cache/panns"))


def available() -> List[str]:
    """Model types that have a published checkpoint."""
    return list(CATALOGUE)


def lookup(name: str) -> PretrainedCheckpoint:
    """Catalogue entry by model type (``Cnn14``) or file name (``Cnn14_mAP=0.431.pth``)."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    for entry in CATALOGUE.values():
        if name in (entry.filename, os.path.splitext(entry.filename)[0]):
            return entry
    raise PannsError(f"no published checkpoint for {name!r}; give a checkpoint file (--checkpoint_path of the "
                     "inference and fine-tuning commands, a path in the Python API). "
                     f"Published: {', '.join(available())}")


def cached_path(name: str, cache: Optional[str] = None) -> str:
    return os.path.join(cache or cache_dir(), lookup(name).filename)


def published_entry(path: str) -> Optional[PretrainedCheckpoint]:
    """The catalogue entry whose published file name ``path`` is (no folder part), else None."""
    if not path or os.path.dirname(path):
        return None
    return next((e for e in CATALOGUE.values() if e.filename == path), None)


def resolve_published(path: Optional[str], flag: str = "--checkpoint_path") -> Optional[str]:
    """A checkpoint path as given, or, for a bare published file name (``Cnn14_mAP=0.431.pth``, as the
    official commands write it) that is not in the current folder, its copy in the cache. Not in either:
    one line saying where it was looked for and how to get it, instead of 'not found'."""
    entry = published_entry(path) if path and not os.path.exists(path) else None
    if entry is None:
        return path
    cached = os.path.join(cache_dir(), entry.filename)
    if os.path.isfile(cached):
        logger.info("%s %s: not in the current folder, using the cached copy %s", flag, path, cached)
        return cached
    raise CheckpointError(f"checkpoint not found: {path} (the published {entry.model_type} file) is neither in the "
                          f"current folder nor in the cache {cache_dir()}; get it with `python3 pytorch/pretrained.py "
                          f"download --model_type {entry.model_type}`, or leave out {flag} to download it")


def validate_checkpoint(path: str, model_type: str) -> None:
    """Load ``path`` into a fresh ``model_type`` model (strict); CheckpointError if it does not fit."""
    from panns import checkpoint  # loads torch and the models: the catalogue alone stays light

    checkpoint.load_model(path, model_type=model_type)


def get_checkpoint(name: str, cache: Optional[str] = None, download: bool = True, progress: bool = True,
                   validate: bool = True) -> str:
    """Path of the official checkpoint for ``name`` (model type or file name), downloading it once.

    A cached file is reused as is. A new download goes to ``<file>.part`` (resumable), is renamed
    into place, then loaded into the model; a file that does not load is removed and reported.
    """
    entry = lookup(name)
    path = cached_path(entry.model_type, cache)
    if os.path.isfile(path):
        return path
    hint = (f"download {entry.url} and save it as {path} (or give a file's path: --checkpoint_path, or the "
            "path in the Python API; set PANNS_CACHE to use another cache folder)")
    if not download:
        raise CheckpointError(f"checkpoint {entry.filename} is not in the cache; {hint}")
    try:   # before the transfer: a cache folder that is a file or read-only failed only at the first byte
        check_dest(path, "cache file")
    except DownloadError as e:
        raise CheckpointError(f"{e}; set PANNS_CACHE (or --cache_dir) to a writable folder") from None
    logger.info("downloading %s (%s, published mAP %.3f) to %s", entry.filename, entry.model_type, entry.mAP, path)
    try:
        http_download(entry.url, path, progress=progress, checksum=entry.checksum)
    except DownloadError as e:
        unverified = "" if entry.verified else " (this file name is unverified for this record)"
        raise CheckpointError(f"cannot download {entry.filename}: {e}{unverified}; {hint}") from None
    if validate:
        try:
            validate_checkpoint(path, entry.model_type)
        except PannsError as e:
            bad = path + ".invalid"
            os.replace(path, bad)
            raise CheckpointError(f"downloaded {entry.filename} does not load as {entry.model_type} ({e}); "
                                  f"moved to {bad}") from None
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Official pretrained PANNs checkpoints (Zenodo record "
                                                 f"{ZENODO_RECORD}): list, download into the cache, locate.")
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("list", help="print the catalogue (model type, mAP, sample rate, file name)")
    for mode, text in (("download", "download (once) and print the cached path"),
                       ("path", "print where the checkpoint is or would be cached")):
        p = sub.add_parser(mode, help=text)
        p.add_argument("--model_type", required=True, help="model type (e.g. Cnn14) or file name (required)")
        p.add_argument("--cache_dir", default=None, help="cache folder (default: $PANNS_CACHE or ~/.cache/panns)")
        if mode == "download":
            p.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.mode == "list":
        print(f"{'model_type':<24} {'mAP':>5} {'sr':>6}  file")
        for e in CATALOGUE.values():
            mark = ("" if e.verified else "  (unverified)") + ("" if e.checksum else "  (digest not checked)")
            print(f"{e.model_type:<24} {e.mAP:.3f} {e.sample_rate:>6}  {e.filename}{mark}")
    elif args.mode == "path":
        print(cached_path(args.model_type, args.cache_dir))
    else:
        print(get_checkpoint(args.model_type, args.cache_dir, progress=not args.quiet))


if __name__ == "__main__":
    run_cli(main)
