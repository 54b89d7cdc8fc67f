#!/bin/bash
# Download AudioSet: the five metadata CSVs, then the audio of every segment (eval, balanced, 41 unbalanced parts).
#
#   bash scripts/1_download_dataset.sh [DATASET_DIR]        (default ./datasets/audioset201906)
#
# Resumable: files already there are kept, clips already downloaded are skipped, and clips whose video is gone
# (listed in <audios dir>/download_failures.csv) are not retried unless RETRY_FAILED=1.
# Environment overrides:
#   NUM_WORKERS=4       parallel downloads per CSV          PARALLEL_PARTS=1  unbalanced parts at the same time
#   MINI_DATA=0         1: only the first 10 clips of each CSV (debug)
#   REMOVE_STALE_PARTS=0  1: remove part CSVs of an earlier split of a longer unbalanced CSV (without it the
#                       split stops and names them: they would be downloaded and packed as current data)
#   URL_TEMPLATE=...    video URL with {ytid} (default YouTube; point it at a mirror)
#   CSV_BASE_URL=...    where the metadata CSVs come from (default Google's storage.googleapis.com/us_audioset/
#                       youtube_corpus/v1; a mirror must hold csv/<name>.csv and qa/qa_true_counts.csv)
#   PYTHON=(default: the active venv's python)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/args.sh"   # --help: the usage above; an option where a path belongs: refused
panns_script_args "${BASH_SOURCE[0]}" 1 "$@"

DATASET_DIR="${1:-./datasets/audioset201906}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$REPO/scripts/python.sh"   # PYTHON: as given, else the active venv's python (scripts/python.sh)
CSV_BASE_URL="${CSV_BASE_URL:-http://storage.googleapis.com/us_audioset/youtube_corpus/v1}"  # no trailing /
DEFAULT_URL_TEMPLATE='https://www.youtube.com/watch?v={ytid}'
URL_TEMPLATE="${URL_TEMPLATE:-$DEFAULT_URL_TEMPLATE}"
NUM_WORKERS="${NUM_WORKERS:-4}"
PARALLEL_PARTS="${PARALLEL_PARTS:-1}"
MINI_DATA="${MINI_DATA:-0}"
RETRY_FAILED="${RETRY_FAILED:-0}"
REMOVE_STALE_PARTS="${REMOVE_STALE_PARTS:-0}"

EXTRA_FLAGS=""  # plain flags without spaces, word-split on purpose below
if [ "$MINI_DATA" = "1" ]; then EXTRA_FLAGS="$EXTRA_FLAGS --mini_data"; fi
if [ "$RETRY_FAILED" = "1" ]; then EXTRA_FLAGS="$EXTRA_FLAGS --retry_failed"; fi

# fetch URL DEST: keep DEST if it is already there, else download it atomically. A failed download
# (no network, a wrong CSV_BASE_URL) ends the script with one line naming the file and what to do.
fetch() {
  local url="$1" dest="$2" status=0 reason=""
  if [ -s "$dest" ]; then echo "Already have $dest"; return 0; fi
  if command -v curl >/dev/null 2>&1; then   # curl's own message (last try) goes into the one error line
    reason="$(curl -fsSL --retry 3 -o "$dest.part" "$url" 2>&1)" && mv "$dest.part" "$dest" || status=$?
  elif command -v wget >/dev/null 2>&1; then
    { wget -q -O "$dest.part" "$url" && mv "$dest.part" "$dest"; } || status=$?
  else
    "$PYTHON" "$REPO/utils/download.py" file --url "$url" --dest "$dest" || status=$?
  fi
  if [ "$status" -ne 0 ]; then
    rm -f "$dest.part"
    reason="$(printf '%s\n' "$reason" | tail -n 1)"
    echo "error: could not download $url to $dest${reason:+ ($reason)}; check the network (or set" \
         "CSV_BASE_URL to a mirror holding csv/ and qa/) and run the script again: files already there are kept" >&2
    return "$status"
  fi
}

# Metadata
META="$DATASET_DIR/metadata"
mkdir -p "$META"
for name in eval_segments balanced_train_segments unbalanced_train_segments class_labels_indices; do
  fetch "$CSV_BASE_URL/csv/$name.csv" "$META/$name.csv"
done
fetch "$CSV_BASE_URL/qa/qa_true_counts.csv" "$META/qa_true_counts.csv"

# The AudioSet label CSV is also the repository default (config.DEFAULT_LABELS_CSV) used by training and
# inference; install it there when missing (only for the official source, never a mirror's/test's CSV).
DEFAULT_CSV_BASE_URL="http://storage.googleapis.com/us_audioset/youtube_corpus/v1"
if [ "$CSV_BASE_URL" = "$DEFAULT_CSV_BASE_URL" ] && [ ! -f "$REPO/metadata/class_labels_indices.csv" ]; then
  mkdir -p "$REPO/metadata"
  cp "$META/class_labels_indices.csv" "$REPO/metadata/class_labels_indices.csv"
fi

# Split the unbalanced CSV into parts of 50,000 clips (41 parts for AudioSet).
SPLIT_FLAG=""
if [ "$REMOVE_STALE_PARTS" = "1" ]; then SPLIT_FLAG="--remove_stale_parts"; fi
# shellcheck disable=SC2086  # SPLIT_FLAG is empty or one flag
"$PYTHON" "$REPO/utils/dataset.py" split_unbalanced_csv_to_partial_csvs \
  --unbalanced_csv="$META/unbalanced_train_segments.csv" \
  --unbalanced_partial_csvs_dir="$META/unbalanced_partial_csvs" $SPLIT_FLAG

download() {  # download CSV AUDIOS_DIR
  "$PYTHON" "$REPO/utils/dataset.py" download_wavs --csv_path="$1" --audios_dir="$2" \
    --num_workers="$NUM_WORKERS" --url_template="$URL_TEMPLATE" $EXTRA_FLAGS
}

download "$META/eval_segments.csv" "$DATASET_DIR/audios/eval_segments"
download "$META/balanced_train_segments.csv" "$DATASET_DIR/audios/balanced_train_segments"

# Unbalanced parts, PARALLEL_PARTS at a time.
download_part() {
  local csv="$1" part
  part="$(basename "$csv" .csv)"
  download "$csv" "$DATASET_DIR/audios/unbalanced_train_segments/$part"
}
export -f download download_part
export PYTHON REPO NUM_WORKERS URL_TEMPLATE DATASET_DIR EXTRA_FLAGS
find "$META/unbalanced_partial_csvs" -name 'unbalanced_train_segments_part*.csv' | sort | \
  xargs -P "$PARALLEL_PARTS" -d '\n' -I{} bash -c 'set -euo pipefail; download_part "$1"' _ {}

echo "Download finished: $DATASET_DIR"
