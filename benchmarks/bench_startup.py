"""Start-up of the commands that build a model: what the front end's weights cost a fresh process.

In fresh processes, alternately, ``--repeats`` times (medians printed side by side):

1. ``from panns import models; models.create_model(MODEL)``: imports and the model, as every ``inference.py``,
   ``main.py train`` and ``panns.load`` process builds it (the front end from ``panns.frontend_modules``);
2. the same plus torchlibrosa's own ``Spectrogram`` and ``LogmelFilterBank`` (librosa and scipy compute the
   window and the mel filterbank: what building a model cost before);
3. the whole ``inference.py audio_tagging`` command on a 1-s clip with a random-weight checkpoint (``--backend
   torch``), wall time.

    python3 benchmarks/bench_startup.py [--model_type Cnn14] [--repeats 5] [--work DIR]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

from panns import checkpoint, models  # noqa: E402

BUILD = """
import sys, time
t0 = time.perf_counter()
from panns import checkpoint, models
m = models.create_model(sys.argv[1], classes_num=527)
if sys.argv[2] == "torchlibrosa":
    import torchlibrosa.stft as tl
    fe = checkpoint.ModelConfig.from_registry(sys.argv[1], classes_num=527)
    tl.Spectrogram(n_fft=fe.window_size, hop_length=fe.hop_size, win_length=fe.window_size, window="hann",
                   center=True, pad_mode="reflect", freeze_parameters=True)
    tl.LogmelFilterBank(sr=fe.sample_rate, n_fft=fe.window_size, n_mels=fe.mel_bins, fmin=fe.fmin, fmax=fe.fmax,
                        ref=1.0, amin=1e-10, top_db=None, freeze_parameters=True)
print(time.perf_counter() - t0)
"""


def timed(cmd, env) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd[:3])} failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.strip().splitlines()[-1]) if cmd[1] == "-c" else wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="Cnn14")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", default=None, help="folder for the checkpoint and the clip (default: a temp folder)")
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="bench_startup_")
    os.makedirs(work, exist_ok=True)
    ckpt, clip = os.path.join(work, "model.pth"), os.path.join(work, "clip.wav")
    torch.manual_seed(0)
    model = models.create_model(a.model_type, classes_num=527)
    mc = checkpoint.ModelConfig.from_registry(a.model_type, classes_num=527)
    checkpoint.save_checkpoint(ckpt, {"model": model.state_dict(), "config": mc.to_dict(), "iteration": 0})
    sf.write(clip, (0.1 * np.random.RandomState(0).randn(model.sample_rate)).astype(np.float32), model.sample_rate)
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "pytorch")}
    rows = {"build, panns front end": [], "build + torchlibrosa's front end": [], "inference.py audio_tagging": []}
    tag = [sys.executable, os.path.join(ROOT, "pytorch", "inference.py"), "audio_tagging", "--checkpoint_path", ckpt,
           "--audio_path", clip, "--backend", "torch", "--top_k", "3"]
    for _ in range(a.repeats):
        rows["build, panns front end"].append(timed([sys.executable, "-c", BUILD, a.model_type, "panns"], env))
        rows["build + torchlibrosa's front end"].append(
            timed([sys.executable, "-c", BUILD, a.model_type, "torchlibrosa"], env))
        rows["inference.py audio_tagging"].append(timed(tag, env))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{a.model_type}, fresh processes, median of {a.repeats} (CPU: {os.cpu_count()} cores)")
    for k, v in rows.items():
        print(f"  {k:34s} {med[k]:6.2f} s   ({', '.join(f'{x:.2f}' for x in v)})")
    old, new = med["build + torchlibrosa's front end"], med["build, panns front end"]
    print(f"  building a model: {old - new:.2f} s less per process ({old / new:.2f}x faster start-up); the "
          f"tagging command took {med['inference.py audio_tagging']:.2f} s")


if __name__ == "__main__":
    main()
