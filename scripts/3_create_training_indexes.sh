#!/bin/bash
# Index files for eval, balanced_train and every unbalanced part, the combined full_train index, and the
# DCASE 2017 task 4 black list (skipped with a message when its inputs are missing).
#
#   bash scripts/3_create_training_indexes.sh [WORKSPACE]     (default ./workspaces/audioset_tagging)
#
# Index files store waveform paths relative to themselves, so the workspace can be moved afterwards.
# An unbalanced part index whose packed part is gone (deleted, or a part of an earlier split) is removed, and
# named, before full_train is combined: combine_full_indexes refuses an index whose waveforms are missing.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/args.sh"   # --help: the usage above; an option where a path belongs: refused
panns_script_args "${BASH_SOURCE[0]}" 1 "$@"

WORKSPACE="${1:-./workspaces/audioset_tagging}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$REPO/scripts/python.sh"   # PYTHON: as given, else the active venv's python (scripts/python.sh)

WAVEFORMS="$WORKSPACE/hdf5s/waveforms"
INDEXES="$WORKSPACE/hdf5s/indexes"
# A WORKSPACE with no packed waveforms (a typo, or script 2 not run yet) is one line, and leaves no empty
# hdf5s/indexes tree at that path.
if [ ! -d "$WAVEFORMS" ]; then
  echo "error: no packed waveforms in $WAVEFORMS; give the WORKSPACE that scripts/2_pack_waveforms_to_hdf5s.sh" \
       "(or 2_pack_from_shards.sh) packed into, or run it first" >&2
  exit 2
fi
mkdir -p "$INDEXES/unbalanced_train"

index() {  # index WAVEFORMS.h5 INDEX.h5
  "$PYTHON" "$REPO/utils/create_indexes.py" create_indexes --waveforms_hdf5_path="$1" --indexes_hdf5_path="$2"
}

index "$WAVEFORMS/eval.h5" "$INDEXES/eval.h5"
index "$WAVEFORMS/balanced_train.h5" "$INDEXES/balanced_train.h5"
[ ! -d "$WAVEFORMS/unbalanced_train" ] || find "$WAVEFORMS/unbalanced_train" -name 'unbalanced_train_part*.h5' | sort | while IFS= read -r part; do
  index "$part" "$INDEXES/unbalanced_train/$(basename "$part")"
done

"$PYTHON" "$REPO/utils/create_indexes.py" remove_stale_indexes --indexes_hdf5s_dir="$INDEXES/unbalanced_train"
"$PYTHON" "$REPO/utils/create_indexes.py" combine_full_indexes \
  --indexes_hdf5s_dir="$INDEXES" --full_indexes_hdf5_path="$INDEXES/full_train.h5"

if [ -f "$REPO/utils/create_black_list.py" ]; then
  "$PYTHON" "$REPO/utils/create_black_list.py" dcase2017task4 --workspace="$WORKSPACE"
fi
