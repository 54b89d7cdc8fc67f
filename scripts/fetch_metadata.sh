#!/usr/bin/env bash
# Fetch the AudioSet label CSV (527 classes) into metadata/class_labels_indices.csv.
# Usage: bash scripts/fetch_metadata.sh [--dest PATH] [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 utils/download.py labels "$@"
