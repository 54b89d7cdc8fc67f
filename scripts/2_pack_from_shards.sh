#!/bin/bash
# The hosted route (no YouTube): pack AudioSet shards downloaded from the Hugging Face Hub into the same
# waveform HDF5s that scripts 1 + 2 produce (eval, balanced_train, one file per unbalanced shard), then
# continue with scripts/3_create_training_indexes.sh and 4_train.sh as usual.
#
#   bash scripts/2_pack_from_shards.sh SHARDS_DIR [WORKSPACE=./workspaces/audioset_tagging]
#
# Download the shards first, on a machine with internet (nothing here downloads), e.g. Parquet
# (FLAC 48/44.1 kHz; balanced ~50 GB, unbalanced ~2.4 TB):
#   huggingface-cli download agkphysics/AudioSet --repo-type dataset --include 'data/eval/*' 'data/bal_train/*' \
#       --local-dir SHARDS_DIR            (add 'data/unbal_train/*' for the full set)
# The default globs below match that layout. For WebDataset tar shards, set the globs, e.g. the 16 kHz copy:
#   huggingface-cli download confit/audioset-16khz-wds --repo-type dataset --include '20k/*' --local-dir SHARDS_DIR
#   EVAL_SHARDS='SHARDS_DIR/20k/test/*.tar' BALANCED_SHARDS='SHARDS_DIR/20k/train/*.tar' UNBALANCED_SHARDS= \
#       SAMPLE_RATE=16000 bash scripts/2_pack_from_shards.sh SHARDS_DIR     (then train a *_16k model)
#
# Resumable: finished outputs are kept and a half-packed output resumes shard by shard (--skip_existing). A kept
# output must have been packed with the same SAMPLE_RATE, CLIP_SECONDS, STORAGE and label list: other options
# stop with one line naming the file (a finished shard's part packed with other options is packed again); one
# packed from other shard files (a shard added renumbers the parts after it) or another LABEL_FIELD/ID_FIELD is
# packed again. To re-pack, remove the files to redo, or run with SKIP_EXISTING=0 (every output is packed again
# and replaced).
# Environment overrides:
#   EVAL_SHARDS, BALANCED_SHARDS, UNBALANCED_SHARDS   shard globs (an empty UNBALANCED_SHARDS skips it)
#   STORAGE=pcm16|flac   flac: lossless, about half the disk; decoded in the loader workers
#   SAMPLE_RATE=32000  CLIP_SECONDS=10 (AudioSet clips are 10 s; shorter clips are zero-padded)
#   NUM_WORKERS=<cores>  decoding processes    PACK_JOBS=<cores>/2 unbalanced shards at a time
#   LABEL_FIELD, ID_FIELD  json key / column of the labels and of the YouTube id (default: detected)
#   LABELS_CSV=<path>    label CSV the shards' labels are mapped through (default: the repository's
#                        metadata/class_labels_indices.csv, the AudioSet classes); train with the same one
#                        (LABELS_CSV=<path> bash scripts/4_train.sh ..., or --class_labels_csv)
#   SKIP_EXISTING=1      0: re-pack and replace outputs that are already there
#   REMOVE_STALE_PARTS=0 1: remove packed unbalanced parts that no unbalanced shard maps to (numbered beyond a
#                        shorter shard list: left by a run over a longer list or another mirror; script 3 would
#                        index them as current data). Without it they stop the script before anything is packed
#   PYTHON=(default: the active venv's python)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/args.sh"   # --help: the usage above; an option where a path belongs: refused
panns_script_args "${BASH_SOURCE[0]}" 2 "$@"

SHARDS_DIR="${1:?usage: bash scripts/2_pack_from_shards.sh SHARDS_DIR [WORKSPACE]}"
WORKSPACE="${2:-./workspaces/audioset_tagging}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$REPO/scripts/python.sh"   # PYTHON: as given, else the active venv's python (scripts/python.sh)
CORES="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
NUM_WORKERS="${NUM_WORKERS:-$CORES}"
PACK_JOBS="${PACK_JOBS:-$(( CORES > 1 ? CORES / 2 : 1 ))}"
SAMPLE_RATE="${SAMPLE_RATE:-32000}"
CLIP_SECONDS="${CLIP_SECONDS:-10}"
STORAGE="${STORAGE:-pcm16}"
# SHARDS_DIR as a literal part of the default globs: its glob characters ([, *, ?) bracketed, so a folder named
# 'ws[1]' is itself and not a pattern that matches 'ws1'.
glob_escape() { sed -e 's/\[/[[]/g' -e 's/\*/[*]/g' -e 's/?/[?]/g'; }
SHARDS_GLOB_DIR="$(printf '%s' "$SHARDS_DIR" | glob_escape)"
EVAL_SHARDS="${EVAL_SHARDS-$SHARDS_GLOB_DIR/data/eval/*.parquet}"
BALANCED_SHARDS="${BALANCED_SHARDS-$SHARDS_GLOB_DIR/data/bal_train/*.parquet}"
UNBALANCED_SHARDS="${UNBALANCED_SHARDS-$SHARDS_GLOB_DIR/data/unbal_train/*.parquet}"
LABELS_CSV="${LABELS_CSV:-$REPO/metadata/class_labels_indices.csv}"
SKIP_FLAG="--skip_existing"
if [ "${SKIP_EXISTING:-1}" = "0" ]; then SKIP_FLAG=""; fi
WAVEFORMS="$WORKSPACE/hdf5s/waveforms"
mkdir -p "$WAVEFORMS/unbalanced_train"
echo "Clips are cut or zero-padded to CLIP_SECONDS=$CLIP_SECONDS s at $SAMPLE_RATE Hz, storage $STORAGE"

EXTRA_FLAGS=""  # field names have no spaces; word-split on purpose below
if [ -n "${LABEL_FIELD:-}" ]; then EXTRA_FLAGS="$EXTRA_FLAGS --label_field=$LABEL_FIELD"; fi
if [ -n "${ID_FIELD:-}" ]; then EXTRA_FLAGS="$EXTRA_FLAGS --id_field=$ID_FIELD"; fi

pack() {  # pack SHARDS OUT.h5 WORKERS
  # shellcheck disable=SC2086
  "$PYTHON" "$REPO/utils/dataset.py" pack_from_shards --shards="$1" --waveforms_hdf5_path="$2" \
    --num_workers="$3" --sample_rate="$SAMPLE_RATE" --clip_seconds="$CLIP_SECONDS" --storage="$STORAGE" \
    --class_labels_csv="$LABELS_CSV" $SKIP_FLAG $EXTRA_FLAGS
}
export -f pack
export PYTHON REPO SAMPLE_RATE CLIP_SECONDS STORAGE LABELS_CSV SKIP_FLAG EXTRA_FLAGS

# The unbalanced shards as pack_from_shards reads a --shards value (a glob, a folder, a file or a comma-separated
# list), one path a line. The shell's own `ls $UNBALANCED_SHARDS` split a path with a space into two, listed a
# folder's bare file names and skipped a comma-separated list as matching nothing.
UNBALANCED_LIST=""
if [ -n "$UNBALANCED_SHARDS" ]; then
  UNBALANCED_LIST="$("$PYTHON" "$REPO/utils/dataset.py" list_shards --shards="$UNBALANCED_SHARDS" --allow_none)"
  if [ -z "$UNBALANCED_LIST" ]; then
    echo "No unbalanced shards match $UNBALANCED_SHARDS; packed eval and balanced_train only"
  fi
fi
# Packed parts numbered beyond the unbalanced shards listed now (a run over a longer shard list, or another mirror)
# would be indexed by script 3 as current data: refused before anything is packed, or removed (with their
# .missing.csv) when REMOVE_STALE_PARTS=1; the same check as scripts/2_pack_waveforms_to_hdf5s.sh. No unbalanced
# shards at all (skipped, or deleted once packed) leaves packed parts alone.
if [ -n "$UNBALANCED_LIST" ]; then
  STALE_FLAG=""
  if [ "${REMOVE_STALE_PARTS:-0}" = "1" ]; then STALE_FLAG="--remove_stale_parts"; fi
  # shellcheck disable=SC2086  # STALE_FLAG is empty or one flag
  "$PYTHON" "$REPO/utils/dataset.py" check_packed_parts --packed_dir="$WAVEFORMS/unbalanced_train" \
    --shards="$UNBALANCED_SHARDS" $STALE_FLAG
fi

pack "$EVAL_SHARDS" "$WAVEFORMS/eval.h5" "$NUM_WORKERS"
pack "$BALANCED_SHARDS" "$WAVEFORMS/balanced_train.h5" "$NUM_WORKERS"

if [ -n "$UNBALANCED_LIST" ]; then
  # One output per shard (unbalanced_train_partNNNNN.h5, the name script 3 indexes), PACK_JOBS at a time; each
  # shard's path glob-escaped, as --shards reads it as a pattern when it holds [, * or ?.
  printf '%s\n' "$UNBALANCED_LIST" | glob_escape | awk '{printf "%05d %s\n", NR - 1, $0}' | \
    while read -r nn shard; do echo "$shard"; echo "$WAVEFORMS/unbalanced_train/unbalanced_train_part$nn.h5"; done | \
    xargs -P "$PACK_JOBS" -n 2 -d '\n' bash -c 'set -euo pipefail; pack "$1" "$2" 2' _
fi

echo "Packed waveforms in $WAVEFORMS; next: bash scripts/3_create_training_indexes.sh $WORKSPACE"
