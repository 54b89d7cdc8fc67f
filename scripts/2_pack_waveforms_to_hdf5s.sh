#!/bin/bash
# Pack the downloaded clips into waveform HDF5s (eval, balanced_train, one per unbalanced part).
#
#   bash scripts/2_pack_waveforms_to_hdf5s.sh [DATASET_DIR] [WORKSPACE]
#       defaults: ./datasets/audioset201906  ./workspaces/audioset_tagging
#
# Finished outputs are kept (--skip_existing: they only appear, complete, once a part is done), so an
# interrupted run can simply be started again. A kept output must have been packed with the same SAMPLE_RATE,
# CLIP_SECONDS, STORAGE and label list: re-running with other options stops with one line naming the file
# ("... remove it or drop --skip_existing"). To re-pack, remove the files to redo, or run with SKIP_EXISTING=0,
# which replaces every output (the official behaviour).
# Labels: LABELS_CSV when set, else the data set's own DATASET_DIR/metadata/class_labels_indices.csv (script 1
# fetches it), else the repository's metadata/class_labels_indices.csv; scripts/4_train.sh picks the same one.
# Environment overrides:
#   PACK_JOBS=<cores>     unbalanced parts packed at the same time (one decoding process each)
#   NUM_WORKERS=<cores>   decoding processes for eval and balanced_train
#   SAMPLE_RATE=32000  PYTHON=(default: the active venv's python)
#   CLIP_SECONDS=10       every clip is cut or zero-padded to this length (AudioSet clips are 10 s; set it to
#                         your clips' length for other data, or short clips become mostly zeros)
#   STORAGE=pcm16|flac    flac: lossless FLAC rows, about half the disk; decoded in the training loader workers
#   LABELS_CSV=<path>     label CSV (default: the rule above)
#   SKIP_EXISTING=1       0: re-pack and replace outputs that are already there
#   REMOVE_STALE_PARTS=0  1: remove packed unbalanced parts that no part CSV maps to (left by an earlier split of a
#                         longer CSV; script 3 would index them as current data). Without it they stop the script
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/args.sh"   # --help: the usage above; an option where a path belongs: refused
panns_script_args "${BASH_SOURCE[0]}" 2 "$@"

DATASET_DIR="${1:-./datasets/audioset201906}"
WORKSPACE="${2:-./workspaces/audioset_tagging}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$REPO/scripts/python.sh"   # PYTHON: as given, else the active venv's python (scripts/python.sh)
CORES="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
PACK_JOBS="${PACK_JOBS:-$CORES}"
NUM_WORKERS="${NUM_WORKERS:-$CORES}"
SAMPLE_RATE="${SAMPLE_RATE:-32000}"
CLIP_SECONDS="${CLIP_SECONDS:-10}"
STORAGE="${STORAGE:-pcm16}"
echo "Clips are cut or zero-padded to CLIP_SECONDS=$CLIP_SECONDS s at $SAMPLE_RATE Hz, storage $STORAGE"

# LABELS_CSV as given, else the data set's own label CSV when it has one (script 1 fetches it), else the
# repository default.
if [ -z "${LABELS_CSV:-}" ]; then
  LABELS_CSV="$DATASET_DIR/metadata/class_labels_indices.csv"
  if [ ! -f "$LABELS_CSV" ]; then LABELS_CSV="$REPO/metadata/class_labels_indices.csv"; fi
fi
SKIP_FLAG="--skip_existing"
if [ "${SKIP_EXISTING:-1}" = "0" ]; then SKIP_FLAG=""; fi

WAVEFORMS="$WORKSPACE/hdf5s/waveforms"
# A DATASET_DIR without the segment CSVs (a typo, or script 1 not run) is one line before any workspace folder is
# made (an empty WORKSPACE tree was left behind).
if [ ! -f "$DATASET_DIR/metadata/eval_segments.csv" ]; then
  echo "error: $DATASET_DIR/metadata/eval_segments.csv not found; give the DATASET_DIR that" \
       "scripts/1_download_dataset.sh downloaded into, or run it first" >&2
  exit 2
fi
mkdir -p "$WAVEFORMS/unbalanced_train"
PARTS_DIR="$DATASET_DIR/metadata/unbalanced_partial_csvs"

# Packed parts that no part CSV maps to were left by an earlier split of a longer unbalanced CSV (script 1 names or,
# with REMOVE_STALE_PARTS=1, removes its part CSVs): script 3 would index them into full_train.h5 as current data.
# Refused before anything is packed, or removed (with their .missing.csv) when REMOVE_STALE_PARTS=1; the same check
# as scripts/2_pack_from_shards.sh (utils/dataset.py check_packed_parts).
if [ -d "$PARTS_DIR" ]; then
  STALE_FLAG=""
  if [ "${REMOVE_STALE_PARTS:-0}" = "1" ]; then STALE_FLAG="--remove_stale_parts"; fi
  # shellcheck disable=SC2086  # STALE_FLAG is empty or one flag
  "$PYTHON" "$REPO/utils/dataset.py" check_packed_parts --packed_dir="$WAVEFORMS/unbalanced_train" \
    --part_csvs_dir="$PARTS_DIR" $STALE_FLAG
fi

pack() {  # pack CSV AUDIOS_DIR OUT.h5 WORKERS
  # shellcheck disable=SC2086  # SKIP_FLAG is empty or one flag
  "$PYTHON" "$REPO/utils/dataset.py" pack_waveforms_to_hdf5 --csv_path="$1" --audios_dir="$2" \
    --waveforms_hdf5_path="$3" --num_workers="$4" --sample_rate="$SAMPLE_RATE" --clip_seconds="$CLIP_SECONDS" \
    --class_labels_csv="$LABELS_CSV" --storage="$STORAGE" $SKIP_FLAG
}

pack "$DATASET_DIR/metadata/eval_segments.csv" "$DATASET_DIR/audios/eval_segments" \
  "$WAVEFORMS/eval.h5" "$NUM_WORKERS"
pack "$DATASET_DIR/metadata/balanced_train_segments.csv" "$DATASET_DIR/audios/balanced_train_segments" \
  "$WAVEFORMS/balanced_train.h5" "$NUM_WORKERS"

pack_part() {  # unbalanced_train_segments_partNN.csv -> unbalanced_train/unbalanced_train_partNN.h5
  local csv="$1" part nn
  part="$(basename "$csv" .csv)"
  nn="${part##*_part}"
  pack "$csv" "$DATASET_DIR/audios/unbalanced_train_segments/$part" \
    "$WAVEFORMS/unbalanced_train/unbalanced_train_part$nn.h5" 1
}
export -f pack pack_part
export PYTHON REPO DATASET_DIR WAVEFORMS SAMPLE_RATE CLIP_SECONDS STORAGE LABELS_CSV SKIP_FLAG
if [ -d "$PARTS_DIR" ]; then
  find "$PARTS_DIR" -name 'unbalanced_train_segments_part*.csv' | sort | \
    xargs -P "$PACK_JOBS" -d '\n' -I{} bash -c 'set -euo pipefail; pack_part "$1"' _ {}
else   # a download that stopped before the split (or a data set without the unbalanced part)
  echo "No $DATASET_DIR/metadata/unbalanced_partial_csvs (script 1 splits the unbalanced CSV there);" \
       "packed eval and balanced_train only"
fi

echo "Packed waveforms in $WAVEFORMS"
