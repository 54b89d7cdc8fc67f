"""Sound event detection speed: ``inference.py sound_event_detection --no_plot`` against
panns_inference's ``SoundEventDetection.inference`` on the same clips and the same weights.

panns_inference decodes with ``librosa.load(path, sr=32000, mono=True)`` and runs
``model(audio[None])``; when the package is not installed that exact code path is timed instead
(its model class is the official Cnn14_DecisionLevelMax, numerically ours). Both sides use random
weights of the same model and the same number of threads; times are best of --repeats.

    python3 benchmarks/bench_sed_vs_panns_inference.py --clips 8 --seconds 10
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

from panns import checkpoint, inference, models  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=8, help="number of clips (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default: %(default)s)")
    p.add_argument("--model_type", default="Cnn14_DecisionLevelMax", help="SED model (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="best of (default: %(default)s)")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="bench_sed_")
    rs = np.random.RandomState(0)
    paths = []
    for i in range(args.clips):
        path = os.path.join(work, f"clip{i}.wav")
        sf.write(path, (0.1 * rs.randn(int(args.seconds * 44100))).astype(np.float32), 44100)
        paths.append(path)
    torch.manual_seed(0)
    model = models.create_model(args.model_type).eval()
    ckpt = os.path.join(work, "sed.pth")
    torch.save({"model": model.state_dict()}, ckpt)
    labels_csv = os.path.join(ROOT, "metadata", "class_labels_indices.csv")

    def ours() -> None:
        argv = ["sound_event_detection", f"--model_type={args.model_type}", f"--checkpoint_path={ckpt}",
                "--no_plot", f"--class_labels_csv={labels_csv}", "--audio_path", *paths]
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                inference.main(argv)
            finally:
                sys.stdout = stdout

    try:
        from panns_inference import SoundEventDetection   # the real package, if installed

        def theirs() -> None:
            import librosa

            sed = SoundEventDetection(checkpoint_path=ckpt, device="cpu")
            for path in paths:
                audio, _ = librosa.load(path, sr=32000, mono=True)
                sed.inference(audio[None, :])
        which = "panns_inference"
    except ImportError:
        def theirs() -> None:
            import librosa

            ref = models.create_model(args.model_type)
            ref.load_state_dict(checkpoint.load_checkpoint(ckpt)["model"])
            ref.eval()
            for path in paths:
                audio, _ = librosa.load(path, sr=32000, mono=True)
                with torch.no_grad():
                    ref(torch.from_numpy(audio[None, :]))
        which = "panns_inference's code path (package not installed)"

    best = {"ours": float("inf"), "theirs": float("inf")}
    for _ in range(args.repeats):
        for name, fn in (("theirs", theirs), ("ours", ours)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    print(f"{args.clips} clips of {args.seconds:g} s (44.1 kHz wav), {args.model_type}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats} (model loading included)")
    print(f"  {which}: {best['theirs']:.1f} s")
    print(f"  inference.py sound_event_detection --no_plot: {best['ours']:.1f} s "
          f"({best['theirs'] / best['ours']:.2f}x)")


if __name__ == "__main__":
    main()
