"""Sound event detection speed: ``inference.py sound_event_detection --no_plot`` against the
``panns_inference`` package's ``SoundEventDetection`` on the same clips and the same weights.

The real package is used when it is installed (``pip install panns-inference``; not a
requirement of this project); otherwise its code path is rebuilt here (``librosa.load(path,
sr=32000, mono=True)`` then ``model(audio[None])`` with the official model class) and the
printout says so. Both sides use the same generated checkpoint, the same clips and the same
number of threads; times are best of --repeats with model loading included. Our side runs twice:
with the default backend (auto: ONNX Runtime on this CPU; its one-off export is timed apart) and
with ``--backend torch``. The framewise outputs of both sides are compared before timing.

panns_inference downloads at import and construction when its files are missing, so it runs
with HOME pointed at a temporary folder holding ``panns_data/class_labels_indices.csv`` (the
repository's copy) and the generated checkpoint. It re-downloads any checkpoint under 3e8 bytes
(overwriting the file): a full-size Cnn14_DecisionLevelMax state dict is ~327 MB, and the size
is checked and printed before the package is touched.

    python3 benchmarks/bench_sed_vs_panns_inference.py --clips 8 --seconds 10
"""
import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata

import h5py
import librosa   # what panns_inference's users decode with
import numpy as np
import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

from panns import checkpoint, inference, models  # noqa: E402

REDOWNLOAD_BELOW = 3e8   # panns_inference fetches the checkpoint again when the file is smaller
PACKAGE_MODEL = "Cnn14_DecisionLevelMax"   # the only SED model panns_inference builds itself


def _load_average() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime not available"


def _quiet():
    """Both sides print (official lines, 'Checkpoint path: ...'); only the figures matter here."""
    return contextlib.redirect_stdout(io.StringIO())


def _package_side(home: str, ckpt: str, model_type: str):
    """(name, run(paths) -> [framewise (frames, classes)]) for the real package, or None with the
    reason when it cannot run offline."""
    if model_type != PACKAGE_MODEL:
        return None, f"panns_inference builds only {PACKAGE_MODEL}"
    size = os.path.getsize(ckpt)
    if size < REDOWNLOAD_BELOW:
        return None, f"the checkpoint is {size / 1e6:.0f} MB, under the {REDOWNLOAD_BELOW / 1e6:.0f} MB below which " \
                     "panns_inference would download over it"
    os.environ["HOME"] = home   # read by panns_inference at import (labels) and construction (checkpoint)
    try:   # imported late on purpose: it reads HOME (and may download) at import
        from panns_inference import SoundEventDetection  # pyright: ignore[reportMissingImports]  (optional)
    except ImportError:
        return None, "not installed (pip install panns-inference)"

    def run(paths):
        with _quiet():
            sed = SoundEventDetection(checkpoint_path=ckpt, device="cpu")
        out = []
        for path in paths:
            audio, _ = librosa.load(path, sr=32000, mono=True)
            out.append(sed.inference(audio[None, :])[0])
        return out

    try:
        v = metadata.version("panns-inference")
    except metadata.PackageNotFoundError:
        v = "?"
    return (f"panns_inference {v} (the installed package)", run), None


def _rebuilt_side(ckpt: str, model_type: str):
    """panns_inference's code path with this repository's official model class."""
    def run(paths):
        ref = models.create_model(model_type)
        ref.load_state_dict(checkpoint.load_checkpoint(ckpt)["model"])
        ref.eval()
        out = []
        for path in paths:
            audio, _ = librosa.load(path, sr=32000, mono=True)
            with torch.no_grad():
                out.append(ref(torch.from_numpy(audio[None, :]))["framewise_output"][0].numpy())
        return out
    return "panns_inference's code path, rebuilt here", run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=8, help="number of clips (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default: %(default)s)")
    p.add_argument("--model_type", default=PACKAGE_MODEL, help="SED model (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="best of (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed |ours - theirs| of a framewise probability (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (checkpoint, clips, export)")
    args = p.parse_args()
    print("load before:", _load_average())
    work = tempfile.mkdtemp(prefix="bench_sed_")
    try:
        run_benchmark(args, work)
    finally:
        if args.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("load after:", _load_average())


def run_benchmark(args, work: str) -> None:
    home = os.path.join(work, "home")
    data = os.path.join(home, "panns_data")
    os.makedirs(data)
    shutil.copy(os.path.join(ROOT, "metadata", "class_labels_indices.csv"), data)
    labels_csv = os.path.join(data, "class_labels_indices.csv")
    rs = np.random.RandomState(0)
    paths = []
    for i in range(args.clips):
        path = os.path.join(work, f"clip{i}.wav")
        sf.write(path, (0.1 * rs.randn(int(args.seconds * 44100))).astype(np.float32), 44100)
        paths.append(path)
    torch.manual_seed(0)
    model = models.create_model(args.model_type).eval()
    ckpt = os.path.join(data, f"{args.model_type}.pth")
    torch.save({"model": model.state_dict()}, ckpt)
    del model
    print(f"checkpoint: {os.path.getsize(ckpt) / 1e6:.1f} MB ({{'model': state_dict}}, random weights); "
          f"panns_inference re-downloads files under {REDOWNLOAD_BELOW / 1e6:.0f} MB")

    theirs, why_not = _package_side(home, ckpt, args.model_type)
    if theirs is None:
        print(f"the real panns_inference does not run here: {why_not}")
        theirs = _rebuilt_side(ckpt, args.model_type)
    which, run_theirs = theirs

    h5 = os.path.join(work, "framewise_{}.h5")

    def ours(backend: str, framewise: bool = False) -> None:
        argv = ["sound_event_detection", f"--model_type={args.model_type}", f"--checkpoint_path={ckpt}",
                "--no_plot", f"--class_labels_csv={labels_csv}", "--audio_path", *paths]
        if backend != "auto":          # auto is the default: the official command line as users type it
            argv.append(f"--backend={backend}")
        if framewise:
            argv.append(f"--framewise_output={h5.format(backend)}")
        with _quiet():
            inference.main(argv)

    # Untimed first runs: the one-off ONNX export (timed apart) and the outputs to compare.
    t0 = time.perf_counter()
    ours("auto", framewise=True)
    first_auto = time.perf_counter() - t0
    ours("torch", framewise=True)

    names = {"theirs": which, "auto": "inference.py sound_event_detection --no_plot (default: --backend auto)",
             "torch": "inference.py sound_event_detection --no_plot --backend torch"}
    best = {k: float("inf") for k in names}
    ref = None
    for _ in range(args.repeats):
        for key in ("theirs", "auto", "torch"):
            t0 = time.perf_counter()
            if key == "theirs":
                out = run_theirs(paths)
                ref = out if ref is None else ref
            else:
                ours(key)
            best[key] = min(best[key], time.perf_counter() - t0)

    worst = {}
    for backend in ("auto", "torch"):
        with h5py.File(h5.format(backend), "r") as f:
            diffs = []
            for k, theirs_fw in enumerate(ref):
                mine = f[f"framewise/{k}"][()]
                if mine.shape != theirs_fw.shape:
                    raise SystemExit(f"framewise shapes differ on clip {k}: ours {mine.shape}, theirs {theirs_fw.shape}")
                diffs.append(float(np.abs(mine - theirs_fw).max()))
        worst[backend] = max(diffs)

    print(f"{args.clips} clips of {args.seconds:g} s (44.1 kHz wav), {args.model_type}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats} (model loading included)")
    print(f"  ran: {which}")
    width = max(len(v) for v in names.values())
    for key in ("theirs", "auto", "torch"):
        ratio = "" if key == "theirs" else f"  ({best['theirs'] / best[key]:.2f}x panns_inference)"
        print(f"  {names[key]:<{width}}  {best[key]:6.1f} s{ratio}")
    print(f"  first --backend auto run (ONNX export into an empty cache, once per checkpoint): {first_auto:.1f} s")
    print(f"framewise outputs, largest |ours - theirs| over {len(ref)} clips x {ref[0].shape} : "
          f"auto {worst['auto']:.2e}, torch {worst['torch']:.2e} (tolerance {args.tolerance:g})")
    if max(worst.values()) > args.tolerance:
        raise SystemExit("framewise outputs differ more than the tolerance")


if __name__ == "__main__":
    main()
