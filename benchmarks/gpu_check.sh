#!/bin/bash
# One prepared check of the GPU paths (device, golden outputs and front end with TF32 off/on, SpecAugment, loader, training in fp32/bf16/fp16/compile,
# exact resume, inference GPU vs CPU, fp16 fine-tune); prints one Markdown table and its total time (goal: at most
# 6 minutes on an H100/H200).
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--steps 200]      # on a GPU box
#   bash benchmarks/gpu_check.sh --dry-run [--out DIR]          # CPU, toy size (run by the tests)
#
# Exit status 0 when every row is ok. Logs, checkpoints and table.md stay in --out (default: a temp folder).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" "$REPO/benchmarks/gpu_check.py" "$@"
