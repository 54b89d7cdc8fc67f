"""``panns.load`` time with a cached ONNX export against ``backend="torch"``, and one export for one
checkpoint under two file names.

Writes a Cnn14 checkpoint with random weights as ``a.pth`` and a copy ``b.pth`` into --work, an empty
$PANNS_CACHE there, then in fresh processes (imports not timed, only the ``panns.load`` call):

1. ``panns.load("a.pth", backend="onnxruntime")``: the export, made once;
2. alternately, ``--repeats`` times: ``panns.load("b.pth", backend="onnxruntime")`` (another file name:
   the cached export must be found) and ``panns.load("b.pth", backend="torch")``;

and prints each time, the medians, their ratio and how many export files the cache holds.

    python3 benchmarks/bench_api_load.py [--model_type Cnn14] [--repeats 3]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pytorch"))  # the `panns` package in a checkout

CHILD = """
import json, logging, sys, time
import panns
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
t0 = time.perf_counter()
m = panns.load(sys.argv[1], model_type=sys.argv[2], backend=sys.argv[3], device="cpu")
print(json.dumps({"seconds": time.perf_counter() - t0, "backend": m.runtime.backend_name}))
"""


def load_once(path: str, model_type: str, backend: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, path, model_type, backend], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit("load failed")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["exports"] = sum("to ONNX once" in ln for ln in proc.stderr.splitlines())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="Cnn14")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", default="/tmp/panns_bench_api_load")
    args = p.parse_args()
    import torch

    from panns import models

    os.makedirs(args.work, exist_ok=True)
    a, b = os.path.join(args.work, "a.pth"), os.path.join(args.work, "b.pth")
    if not os.path.exists(a):
        torch.manual_seed(0)
        torch.save({"model": models.create_model(args.model_type).state_dict()}, a)
    shutil.copyfile(a, b)
    cache = os.path.join(args.work, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, PANNS_CACHE=cache, PYTHONPATH=os.path.join(ROOT, "pytorch"))
    env.pop("PANNS_BACKEND", None)
    first = load_once(a, args.model_type, "onnxruntime", env)
    print(f"a.pth, onnxruntime, empty cache: {first['seconds']:6.2f} s ({first['exports']} export line)", flush=True)
    times = {"onnxruntime": [], "torch": []}
    exports = 0
    for _ in range(args.repeats):
        for backend in ("onnxruntime", "torch"):
            r = load_once(b, args.model_type, backend, env)
            times[backend].append(r["seconds"])
            exports += r["exports"]
            print(f"b.pth, {backend:11s}: {r['seconds']:6.2f} s", flush=True)
    files = [f for f in os.listdir(os.path.join(cache, "onnx")) if f.endswith(".onnx")]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median load: onnxruntime (cached export, other file name) {med['onnxruntime']:.2f} s, torch "
          f"{med['torch']:.2f} s: {med['onnxruntime'] / med['torch']:.2f}x; export files in the cache: {len(files)}; "
          f"export lines after the first load: {exports}")
    print("load average (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
