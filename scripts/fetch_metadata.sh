#!/usr/bin/env bash
# Refresh the AudioSet label CSV (527 classes) in metadata/class_labels_indices.csv from its source
# (the file ships with the repository; --force replaces it).
# Usage: bash scripts/fetch_metadata.sh [--dest PATH] [--force]
# A relative --dest is taken from the current directory (the script no longer cds into the repository first).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/python.sh"   # PYTHON: the interpreter PANNs is installed into
"$PYTHON" "$ROOT/utils/download.py" labels "$@"
