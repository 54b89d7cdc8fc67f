"""Peak memory of sound event detection on a 20-minute file on the default path (``--backend auto``),
first run (empty cache: calibration + ONNX export) and cached run, side by side with ``--backend torch``
and ``--backend onnxruntime`` (what auto runs where ONNX Runtime wins the calibration).

Writes the recording and a Cnn14_DecisionLevelMax checkpoint with random weights into --work (the
generators of bench_sed_long.py), then runs ``pytorch/inference.py sound_event_detection --no_plot``
in a child process per case with $PANNS_CACHE under --work, and prints for each:

* job peak: the command's own process, its peak resident memory (VmHWM, sampled every 0.1 s);
* tree peak: the largest sum of resident memory of the command and its descendants (DataLoader
  workers, the export process) seen in those samples;
* ru_maxrss: what wait4 reports (the largest peak of the command or any descendant it waited for);
* the wall time and auto's one log line.

    python3 benchmarks/bench_sed_memory.py                  # 20 minutes
    python3 benchmarks/bench_sed_memory.py --minutes 5 --cases first cached
    python3 benchmarks/bench_sed_memory.py --cases onnxruntime      # the export from an earlier run
"""
import argparse
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout
sys.path.insert(0, HERE)                            # bench_sed_long's generators

from bench_sed_long import prepare_inputs  # noqa: E402


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def run_sampled(cmd: list, env: dict) -> dict:
    """Run ``cmd``; sample the job's VmHWM and the process tree's summed RSS every 0.1 s."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"job": 0, "tree": 0}
    err = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            break
        peak["job"] = max(peak["job"], _rss_kb(proc.pid, "VmHWM"))
        peak["tree"] = max(peak["tree"], _rss_kb(proc.pid) + sum(_rss_kb(k) for k in _descendants(proc.pid)))
        time.sleep(0.1)
    reader.join()
    log = "".join(err)
    if os.waitstatus_to_exitcode(status):
        sys.stderr.write(log)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    lines = [ln.split(": ", 1)[1] for ln in log.splitlines() if "backend auto:" in ln or "to ONNX once" in ln]
    return {"seconds": time.perf_counter() - t0, "job_mb": peak["job"] / 1024, "tree_mb": peak["tree"] / 1024,
            "ru_maxrss_mb": usage.ru_maxrss / 1024, "log": " | ".join(ln[:160] for ln in lines)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="recording length (default: %(default)s)")
    p.add_argument("--model_type", default="Cnn14_DecisionLevelMax", help="SED model (default: %(default)s)")
    p.add_argument("--work", default="/tmp/panns_bench_sed_memory", help="folder for the files (default: %(default)s)")
    p.add_argument("--cases", nargs="+", default=["first", "cached", "torch", "onnxruntime"],
                   choices=["first", "cached", "torch", "onnxruntime"],
                   help="first: default path, empty cache; cached: default path again; torch / onnxruntime: "
                        "--backend torch / onnxruntime (the export cached by the runs before, else made)")
    args = p.parse_args()
    wav, ckpt = prepare_inputs(args.work, args.minutes, args.model_type)
    cache = os.path.join(args.work, "cache")
    env = dict(os.environ, PANNS_CACHE=cache)
    env.pop("PANNS_BACKEND", None)
    base = [sys.executable, "pytorch/inference.py", "sound_event_detection", f"--checkpoint_path={ckpt}",
            f"--audio_path={wav}", "--no_plot"]   # no outputs: the figures' --output_dir is refused with --no_plot
    print(f"SED of {args.minutes:g} min, {args.model_type} (random weights), {os.cpu_count()} CPU cores", flush=True)
    for case in args.cases:
        if case == "first":
            shutil.rmtree(cache, ignore_errors=True)
        r = run_sampled(base + ([f"--backend={case}"] if case in ("torch", "onnxruntime") else []), env)
        label = {"first": "default, first run (empty cache)", "cached": "default, cached run",
                 "torch": "--backend torch", "onnxruntime": "--backend onnxruntime"}[case]
        print(f"{label:34s}: job peak {r['job_mb']:6.0f} MB, tree peak {r['tree_mb']:6.0f} MB, "
              f"ru_maxrss {r['ru_maxrss_mb']:6.0f} MB, {r['seconds']:6.1f} s; {r['log']}", flush=True)
    print("load average (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
