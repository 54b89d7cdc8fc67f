#!/usr/bin/env bash
# Refresh the AudioSet label CSV (527 classes) in metadata/class_labels_indices.csv from its source
# (the file ships with the repository; --force replaces it).
# Usage: bash scripts/fetch_metadata.sh [--dest PATH] [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 utils/download.py labels "$@"
