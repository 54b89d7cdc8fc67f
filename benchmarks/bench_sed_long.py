"""Peak memory and time of sound event detection on one long file (default: 1 hour, 32 kHz mono).

Writes a synthetic recording (tones and noise bursts) and a Cnn14_DecisionLevelMax checkpoint with
random weights into --work, then runs ``pytorch/inference.py sound_event_detection`` on it in a
child process and prints the child's peak resident memory (ru_maxrss) and wall time. Long files
are decoded, run and written window by window, so the peak should not grow with the length.

    python3 benchmarks/bench_sed_long.py                          # 60 minutes, figure + events CSV
    python3 benchmarks/bench_sed_long.py --minutes 10 --framewise_output fw.h5 --no_plot
"""
import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout


def write_recording(path: str, minutes: float, sr: int = 32000) -> None:
    rs = np.random.RandomState(0)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for m in range(int(np.ceil(minutes))):
            n = int(min(1.0, minutes - m) * 60 * sr)
            t = np.arange(n) / sr
            y = 0.02 * rs.randn(n) + 0.3 * np.sin(2 * np.pi * (300 + 50 * m) * t) * ((t % 7) < 2)
            f.write(y.astype(np.float32))


def write_checkpoint(path: str, model_type: str) -> None:
    import torch

    from panns import checkpoint, models

    torch.manual_seed(0)
    model = models.create_model(model_type)
    torch.save({"model": model.state_dict(), "config": checkpoint.ModelConfig.from_registry(model_type).to_dict()},
               path)


def prepare_inputs(work: str, minutes: float, model_type: str):
    """(recording path, checkpoint path) in ``work``, each generated once and reused by later runs."""
    os.makedirs(work, exist_ok=True)
    wav = os.path.join(work, f"long_{minutes:g}min.wav")
    ckpt = os.path.join(work, f"{model_type}.pth")
    if not os.path.exists(wav):
        write_recording(wav, minutes)
    if not os.path.exists(ckpt):
        write_checkpoint(ckpt, model_type)
    return wav, ckpt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="recording length (default: %(default)s)")
    p.add_argument("--model_type", default="Cnn14_DecisionLevelMax", help="SED model (default: %(default)s)")
    p.add_argument("--work", default="/tmp/panns_bench_sed", help="folder for the files (default: %(default)s)")
    p.add_argument("--no_plot", action="store_true", help="pass --no_plot")
    p.add_argument("--framewise_output", default=None, help="pass --framewise_output (a file name in --work)")
    args = p.parse_args()
    wav, ckpt = prepare_inputs(args.work, args.minutes, args.model_type)
    cmd = [sys.executable, os.path.join(ROOT, "pytorch", "inference.py"), "sound_event_detection",
           f"--checkpoint_path={ckpt}", f"--audio_path={wav}", f"--events_csv={os.path.join(args.work, 'events.csv')}"]
    # the figure goes to --work; --output_dir (the figures' folder only) is refused with --no_plot
    cmd.append("--no_plot" if args.no_plot else f"--output_dir={args.work}")
    if args.framewise_output:
        cmd.append(f"--framewise_output={os.path.join(args.work, args.framewise_output)}")
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.time() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024   # Linux: KiB
    print(proc.stdout.strip())
    print(f"{args.model_type}, {args.minutes:g}-min file: exit {proc.returncode}, wall {wall:.0f} s, "
          f"peak RSS {peak_mb:.0f} MB")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
