#!/usr/bin/env bash
# Refresh the AudioSet label CSV (527 classes) in metadata/class_labels_indices.csv from its source
# (the file ships with the repository; --force replaces it).
# Usage: bash scripts/fetch_metadata.sh [--dest PATH] [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/python.sh   # PYTHON: the interpreter PANNs is installed into
"$PYTHON" utils/download.py labels "$@"
