"""The demo's self-checks: every stage's result compared with the truth the demo generated.

``scripts/demo.sh`` calls one sub-command per stage; each appends a row (stage, result, expected,
pass) to ``<out>/checks.jsonl``; ``table`` prints them as a table, writes ``<out>/checks.md`` and
exits 1 when any row failed. The truth comes from ``utils/make_demo_dataset.py`` (segment CSVs,
class folders, ``<clip>_truth.csv``), never from constants here; the thresholds are the only
numbers in this file.

    demo_checks.py map --out OUT --statistics statistics.json [--min 0.5]
    demo_checks.py tagging --out OUT --results tags.json --truth clip_truth.csv [--top 3]
    demo_checks.py sed --out OUT --events events.csv --truth clip_truth.csv
    demo_checks.py embeddings --out OUT --embeddings emb.h5 --segments_csv eval_segments.csv --labels_csv L
    demo_checks.py finetune --out OUT --metrics metrics.jsonl [--min 0.9]
    demo_checks.py folder_tagging --out OUT --results tags.json [--min 0.9]
    demo_checks.py table --out OUT
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from panns.errors import PannsError, run_cli
from panns.utilities import atomic_write_text

Interval = Tuple[float, float]
OK, FAIL = "✔", "✘"


def _add_row(out: str, stage: str, result: str, expected: str, passed: bool) -> bool:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "checks.jsonl"), "a") as f:
        f.write(json.dumps({"stage": stage, "result": result, "expected": expected, "pass": bool(passed)}) + "\n")
    print(f"check: {stage}: {result} (expected {expected}) {OK if passed else FAIL}")
    return passed


def _normalise(label: str) -> str:
    """Class folders name classes with '_' for ' ' (``Low_tone``); compare labels either way."""
    return label.replace("_", " ").strip().lower()


def read_truth(path: str) -> List[Tuple[str, float, float]]:
    """(label, onset, offset) rows of a ``<clip>_truth.csv`` written by make_demo_dataset."""
    with open(path, newline="") as f:
        return [(r["label"], float(r["onset"]), float(r["offset"])) for r in csv.DictReader(f)]


def read_events(path: str) -> List[Tuple[str, float, float]]:
    """(label, onset, offset) rows of an ``inference.py --events_csv`` file."""
    with open(path, newline="") as f:
        return [(r["label"], float(r["onset"]), float(r["offset"])) for r in csv.DictReader(f)]


def interval_iou(a: Sequence[Interval], b: Interval, hop: float = 0.01) -> float:
    """Frame IoU (``hop``-s frames) of the union of intervals ``a`` with interval ``b``."""
    end = max([b[1]] + [x[1] for x in a])
    t = np.arange(0.0, end + hop, hop) + hop / 2
    pa = np.zeros_like(t, dtype=bool)
    for on, off in a:
        pa |= (t >= on) & (t < off)
    pb = (t >= b[0]) & (t < b[1])
    union = (pa | pb).sum()
    return float((pa & pb).sum() / union) if union else 0.0


def match_events(detected: Sequence[Tuple[str, float, float]], truth: Sequence[Tuple[str, float, float]],
                 tolerance: float = 0.5, min_iou: float = 0.5) -> List[Tuple[str, bool, str]]:
    """For each true event: (label, found, how). Found when a detected event of its class has onset and
    offset within ``tolerance`` s, or the detections of its class that overlap it cover it with frame
    IoU >= ``min_iou`` (detections elsewhere are reported separately, not counted against it)."""
    out = []
    for label, on, off in truth:
        mine = [(a, b) for lb, a, b in detected if _normalise(lb) == _normalise(label) and a < off and on < b]
        close = [(a, b) for a, b in mine if abs(a - on) <= tolerance and abs(b - off) <= tolerance]
        iou = interval_iou(mine, (on, off)) if mine else 0.0
        if close:
            how = f"{close[0][0]:.1f}-{close[0][1]:.1f} s"
        elif mine:
            how = f"IoU {iou:.2f}"
        else:
            how = "not detected"
        out.append((label, bool(close) or iou >= min_iou, how))
    return out


def check_map(a) -> bool:
    with open(a.statistics) as f:
        stats = json.load(f)
    last = stats["test"][-1]
    degenerate = int(last.get("degenerate_classes", 0))
    return _add_row(a.out, "Cnn6 eval mAP", f"{last['mAP']:.3f} (iteration {last['iteration']}, "
                    f"{degenerate} constant classes)", f">= {a.min} and no constant classes",
                    last["mAP"] >= a.min and degenerate == 0)


def check_evaluate(a) -> bool:
    """main.py evaluate of the run's final checkpoint gives the run's own last evaluation (same clips, same
    model, the same evaluation path): standalone scores are the ones training logged."""
    with open(a.statistics) as f:
        last = json.load(f)["test"][-1]
    with open(a.results) as f:
        ev = json.load(f)
    same = abs(ev["mAP"] - last["mAP"]) < 1e-6 and ev["clips"] == last.get("clips", ev["clips"])
    return _add_row(a.out, "main.py evaluate of the final checkpoint", f"mAP {ev['mAP']:.4f} over {ev['clips']} clips",
                    f"the run's evaluation at iteration {last['iteration']}: {last['mAP']:.4f}", same)


def check_tagging(a) -> bool:
    with open(a.results) as f:
        tags = json.load(f)["results"][0]["tags"]
    top = [t["label"] for t in tags[:a.top]]
    truth = sorted({lb for lb, _, _ in read_truth(a.truth)})
    ok = {_normalise(t) for t in truth} <= {_normalise(t) for t in top}
    return _add_row(a.out, "tagging of the example clip", "top %d: %s" % (a.top, ", ".join(top)),
                    "%s in the top %d" % (", ".join(truth), a.top), ok)


def check_sed(a) -> bool:
    truth = read_truth(a.truth)
    matches = match_events(read_events(a.events), truth, a.tolerance, a.min_iou)
    found = sum(m[1] for m in matches)
    detected = read_events(a.events)
    extra = [f"{lb} {on:.1f}-{off:.1f} s" for lb, on, off in detected    # overlapping no true event of its class
             if not any(_normalise(lb) == _normalise(t) and on < b and a < off for t, a, b in truth)]
    result = (f"{found}/{len(truth)} found: " + "; ".join(f"{lb} {how}" for lb, _, how in matches)
              + (f"; other detections: {', '.join(extra)}" if extra else ""))
    expected = ("; ".join(f"{lb} {on:.1f}-{off:.1f} s" for lb, on, off in truth)
                + f" (each within {a.tolerance} s or IoU >= {a.min_iou})")
    return _add_row(a.out, "SED events of the example clip", result, expected, found == len(truth))


def _segment_labels(segments_csv: str, labels_csv: str) -> Dict[str, set]:
    """{'Y<ytid>.wav': {class names}} from an AudioSet segment CSV and its label list."""
    with open(labels_csv, newline="") as f:
        name_of = {r["mid"]: r["display_name"] for r in csv.DictReader(f)}
    out = {}
    with open(segments_csv) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            ytid, _start, _end, mids = line.split(", ", 3)
            out[f"Y{ytid}.wav"] = {name_of[m] for m in mids.strip().strip('"').split(",")}
    return out


def check_embeddings(a) -> bool:
    with h5py.File(a.embeddings, "r") as f:
        names = [os.path.basename(n.decode() if isinstance(n, bytes) else str(n)) for n in f["audio_name"][()]]
        emb = f["embedding"][()].astype(np.float64)
    truth = _segment_labels(a.segments_csv, a.labels_csv)
    labels = [truth[n] for n in names]
    unit = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(axis=1)
    acc = float(np.mean([bool(labels[i] & labels[j]) for i, j in enumerate(nearest)]))
    return _add_row(a.out, "embeddings: nearest neighbour shares a class",
                    f"{acc:.2f} of {len(names)} eval clips (cosine, leave-one-out)", f">= {a.min}", acc >= a.min)


def check_finetune(a) -> bool:
    with open(a.metrics) as f:
        records = [json.loads(line) for line in f if line.strip()]
    best = max((r for r in records if "accuracy" in r), key=lambda r: r["accuracy"])
    return _add_row(a.out, "fine-tune accuracy on held-out clips",
                    f"{best['accuracy']:.2f} (iteration {best.get('iteration', '-')})", f">= {a.min}",
                    best["accuracy"] >= a.min)


def check_folder_tagging(a) -> bool:
    """Top-1 label of each tagged clip against its class folder (``<dir>/<label>/<clip>.wav``)."""
    with open(a.results) as f:
        results = json.load(f)["results"]
    right = [_normalise(r["tags"][0]["label"]) == _normalise(os.path.basename(os.path.dirname(r["audio_path"])))
             for r in results if r.get("tags")]
    acc = float(np.mean(right)) if right else 0.0
    return _add_row(a.out, "tagging new clips with the fine-tuned checkpoint",
                    f"top-1 right for {sum(right)}/{len(results)} clips ({acc:.2f})", f">= {a.min}", acc >= a.min)


def table(a) -> bool:
    path = os.path.join(a.out, "checks.jsonl")
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise PannsError(f"no checks recorded in {path}")
    lines = ["| stage | result | expected | |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['result']} | {r['expected']} | {OK if r['pass'] else FAIL} |" for r in rows]
    failed = [r["stage"] for r in rows if not r["pass"]]
    text = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(a.out, "checks.md"), text)
    print(text, end="")
    print(f"{len(rows) - len(failed)}/{len(rows)} checks passed" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return not failed


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="check", required=True)

    def add(name, func, **kw):
        s = sub.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        s.add_argument("--out", required=True, help="demo output folder (checks.jsonl is written there)")
        for k, v in kw.items():
            s.add_argument(f"--{k}", **v)
        s.set_defaults(func=func)

    req = dict(required=True)
    add("map", check_map, statistics=req, min=dict(type=float, default=0.5, help="lowest passing eval mAP"))
    add("evaluate", check_evaluate, results=req, statistics=req)
    add("tagging", check_tagging, results=req, truth=req, top=dict(type=int, default=3, help="top-k to search"))
    add("sed", check_sed, events=req, truth=req,
        tolerance=dict(type=float, default=0.5, help="onset/offset tolerance (s)"),
        min_iou=dict(type=float, default=0.5, help="frame IoU that also counts as found"))
    add("embeddings", check_embeddings, embeddings=req, segments_csv=req, labels_csv=req,
        min=dict(type=float, default=0.8, help="lowest passing nearest-neighbour accuracy"))
    add("finetune", check_finetune, metrics=req, min=dict(type=float, default=0.9, help="lowest passing accuracy"))
    add("folder_tagging", check_folder_tagging, results=req,
        min=dict(type=float, default=0.9, help="lowest passing top-1 accuracy"))
    add("table", table)
    a = p.parse_args(argv)
    if a.check == "table":
        if not table(a):
            sys.exit(1)
        return
    try:
        a.func(a)
    except Exception as e:  # a stage whose output is missing or unreadable is a failed row, not a gap
        _add_row(a.out, a.check, f"no result: {type(e).__name__}: {e}", "an output to check", False)


if __name__ == "__main__":
    run_cli(main)
