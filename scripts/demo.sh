#!/usr/bin/env bash
# Offline end-to-end demo of the whole PANNs pipeline on a generated AudioSet-layout data set.
#
#   bash scripts/demo.sh [OUT_DIR]          (default: demo_out/ in the repository; DEMO_QUICK=1 for a reduced run)
#
# Runs the same entry points you run on AudioSet: generate data (and the example clip with its ground
# truth) -> pack waveforms -> indexes -> main.py train (Cnn6, and Cnn6_DecisionLevelAvg for SED) ->
# evaluation mAP -> plot -> audio tagging + sound event detection of the example clip -> embedding
# extraction -> a frozen-base fine-tune whose checkpoint tags new clips. CPU only, no network.
# Each stage is checked against the generated truth (utils/demo_checks.py); the run ends with a
# table and exits 1 when a check failed. Re-running replaces the previous outputs in OUT_DIR cleanly.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/args.sh"   # --help: the usage above; an option where a path belongs: refused
panns_script_args "${BASH_SOURCE[0]}" 1 "$@"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# OUT_DIR relative to the directory the script was started from (it was taken relative to the repository).
OUT="$(mkdir -p -- "${1:-$ROOT/demo_out}" && cd -- "${1:-$ROOT/demo_out}" && pwd)"
cd "$ROOT"
# Re-running replaces dataset/, workspace/, results/ ... in OUT_DIR: only in a folder the demo made (its marker
# file, or the files an earlier demo run left), never in a folder of the user's that happens to hold such names
# (bash scripts/demo.sh ~/project deleted ~/project/dataset, workspace and results).
MARKER="$OUT/.panns_demo_out"
if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/example_clip_truth.csv" ] && \
   [ ! -f "$OUT/checks.jsonl" ]; then
  echo "error: $OUT already holds files the demo did not make; give the demo a new or empty folder" \
       "(it replaces its dataset/, workspace/ and results/ there)" >&2
  exit 2
fi
touch "$MARKER"
QUICK="${DEMO_QUICK:-0}"
. "$ROOT/scripts/python.sh"   # PYTHON: as given, else the active venv's python, else says what to do
PY="$PYTHON"

if [ "$QUICK" = "1" ]; then   # every stage runs, nothing is expected to learn: checks are reported, not enforced
  CLIP_SECONDS=1; BAL=2; EVAL=1; UNBAL=1; ITERS=2; EVAL_EVERY=2; BATCH=4; FT_ITERS=2; FT_CLIPS=4
else
  CLIP_SECONDS=2; BAL=6; EVAL=3; UNBAL=4; ITERS=60; EVAL_EVERY=20; BATCH=8; FT_ITERS=20; FT_CLIPS=10
fi
MODEL="${DEMO_MODEL:-Cnn6}"
SED_MODEL="${DEMO_SED_MODEL:-Cnn6_DecisionLevelAvg}"
DATASET_DIR="$OUT/dataset"
WORKSPACE="$OUT/workspace"
RESULTS="$OUT/results"
LABELS="$DATASET_DIR/metadata/class_labels_indices.csv"
CLIP="$OUT/example_clip.wav"            # the same generator output as resources/example_clip.wav
TRUTH="$OUT/example_clip_truth.csv"
step() { printf '\n==== %s ====\n' "$*"; }
check() { "$PY" utils/demo_checks.py "$1" --out "$OUT" "${@:2}" || true; }   # rows are judged in the table
START=$(date +%s)

rm -rf "$DATASET_DIR" "$WORKSPACE" "$RESULTS" "$OUT/finetune_data" "$OUT/finetune_new" "$OUT/finetune_ws" \
  "$OUT/embeddings.h5"* "$OUT/checks.jsonl" "$OUT/checks.md" "$CLIP" "$TRUTH"
mkdir -p "$RESULTS"

step "1/9 Generate a small AudioSet-layout data set (10 synthetic sound classes, ${CLIP_SECONDS}-s clips) and the example clip with its ground truth"
"$PY" utils/make_demo_dataset.py --dataset_dir "$DATASET_DIR" --clip_seconds "$CLIP_SECONDS" \
  --balanced_per_class "$BAL" --eval_per_class "$EVAL" --unbalanced_per_class "$UNBAL" --unbalanced_parts 2 \
  --event_fraction 0.5 1.0 --multi_label_fraction 0.4
"$PY" utils/make_demo_dataset.py --example_clip "$CLIP"

step "2/9 Pack waveforms to HDF5 (utils/dataset.py pack_waveforms_to_hdf5)"
pack() {  # csv audios_dir out.h5
  "$PY" utils/dataset.py pack_waveforms_to_hdf5 --csv_path "$1" --audios_dir "$2" --waveforms_hdf5_path "$3" \
    --clip_seconds "$CLIP_SECONDS" --class_labels_csv "$LABELS" --num_workers 2 --logs_dir "$OUT/logs"
}
pack "$DATASET_DIR/metadata/eval_segments.csv" "$DATASET_DIR/audios/eval_segments" "$WORKSPACE/hdf5s/waveforms/eval.h5"
pack "$DATASET_DIR/metadata/balanced_train_segments.csv" "$DATASET_DIR/audios/balanced_train_segments" \
  "$WORKSPACE/hdf5s/waveforms/balanced_train.h5"
for part in 00 01; do
  pack "$DATASET_DIR/metadata/unbalanced_partial_csvs/unbalanced_train_segments_part$part.csv" \
    "$DATASET_DIR/audios/unbalanced_train_segments/unbalanced_train_segments_part$part" \
    "$WORKSPACE/hdf5s/waveforms/unbalanced_train/unbalanced_train_part$part.h5"
done

step "3/9 Create training indexes (utils/create_indexes.py)"
for name in eval balanced_train unbalanced_train/unbalanced_train_part00 unbalanced_train/unbalanced_train_part01; do
  "$PY" utils/create_indexes.py create_indexes --waveforms_hdf5_path "$WORKSPACE/hdf5s/waveforms/$name.h5" \
    --indexes_hdf5_path "$WORKSPACE/hdf5s/indexes/$name.h5"
done
"$PY" utils/create_indexes.py combine_full_indexes --indexes_hdf5s_dir "$WORKSPACE/hdf5s/indexes" \
  --full_indexes_hdf5_path "$WORKSPACE/hdf5s/indexes/full_train.h5"

step "4/9 Train $MODEL (tagging, embeddings) and $SED_MODEL (sound event detection) with pytorch/main.py train (official recipe, balanced sampling; mixup off so $ITERS CPU steps suffice)"
train() {  # model_type eval_every
  "$PY" pytorch/main.py train --workspace "$WORKSPACE" --data_type full_train --model_type "$1" \
    --loss_type clip_bce --balanced balanced --augmentation none --batch_size "$BATCH" --learning_rate 1e-3 \
    --early_stop "$ITERS" --eval_every "$2" --save_every "$ITERS" --num_workers 1 \
    --class_labels_csv "$LABELS" --log_every 10
}
train "$MODEL" "$EVAL_EVERY"
train "$SED_MODEL" "$ITERS"
CKPT="$(find "$WORKSPACE/checkpoints" -path "*/$MODEL/*" -name "${ITERS}_iterations.pth" | head -n 1)"
SED_CKPT="$(find "$WORKSPACE/checkpoints" -path "*/$SED_MODEL/*" -name "${ITERS}_iterations.pth" | head -n 1)"
STATS="$(find "$WORKSPACE/statistics" -path "*/$MODEL/*" -name statistics.json | head -n 1)"

step "5/9 Evaluation (mAP over the eval set, from $STATS; then the final checkpoint with main.py evaluate)"
"$PY" - "$STATS" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
print("\n".join(f"iteration {r['iteration']:>4}: eval mAP {r['mAP']:.3f}, mAUC {r['mAUC']:.3f}, d-prime {r['d_prime']:.2f}"
                for r in s["test"]))
PYEOF
check map --statistics "$STATS" --min 0.5
# The final checkpoint scored on its own (main.py evaluate): the same figures as the run's last evaluation.
"$PY" pytorch/main.py evaluate --workspace "$WORKSPACE" --checkpoint_path "$CKPT" --num_workers 1 --show 3 \
    --output "$RESULTS/eval_per_class.json"
check evaluate --results "$RESULTS/eval_per_class.json" --statistics "$STATS"

step "6/9 Plot mAP vs iteration (utils/plot_statistics.py)"
"$PY" utils/plot_statistics.py plot_runs --workspace "$WORKSPACE" --output "$RESULTS/mAP.png"

step "7/9 Audio tagging and sound event detection of the example clip (pytorch/inference.py); truth: $TRUTH"
cat "$TRUTH"
# The model saw ${CLIP_SECONDS}-s clips: tag the 7-s clip in windows of that length (max over windows).
"$PY" pytorch/inference.py audio_tagging --checkpoint_path "$CKPT" --audio_path "$CLIP" --top_k 5 \
  --segment_seconds "$CLIP_SECONDS" --hop_seconds 0.5 --aggregate max --output "$RESULTS/example_clip_tags.json"
check tagging --results "$RESULTS/example_clip_tags.json" --truth "$TRUTH" --top 3
"$PY" pytorch/inference.py sound_event_detection --checkpoint_path "$SED_CKPT" --audio_path "$CLIP" \
  --output_dir "$RESULTS" --events_csv "$RESULTS/example_clip_events.csv" --min_duration 0.2
cat "$RESULTS/example_clip_events.csv"
check sed --events "$RESULTS/example_clip_events.csv" --truth "$TRUTH"

step "8/9 Extract embeddings of the eval clips (pytorch/inference.py extract_embeddings)"
"$PY" pytorch/inference.py extract_embeddings --checkpoint_path "$CKPT" \
  --audio_path "$DATASET_DIR/audios/eval_segments" --output_path "$OUT/embeddings.h5" --batch_size 16
check embeddings --embeddings "$OUT/embeddings.h5" --segments_csv "$DATASET_DIR/metadata/eval_segments.csv" \
  --labels_csv "$LABELS"

step "9/9 Fine-tune Transfer_$MODEL (frozen base, new head) on a 4-class folder data set (pytorch/finetune_template.py), then tag new clips with it"
"$PY" utils/make_demo_dataset.py --class_folders_dir "$OUT/finetune_data" --classes_num 4 \
  --folder_clips_per_class "$FT_CLIPS" --clip_seconds "$CLIP_SECONDS" --event_fraction 0.8 1.0 --seed 5
"$PY" pytorch/finetune_template.py train --model_type "Transfer_$MODEL" --pretrained_checkpoint_path "$CKPT" --freeze_base \
  --dataset_dir "$OUT/finetune_data" --eval_fraction 0.3 --workspace "$OUT/finetune_ws" --iterations "$FT_ITERS" \
  --eval_every "$(( FT_ITERS / 2 > 0 ? FT_ITERS / 2 : 1 ))" --batch_size 8 \
  --clip_seconds "$CLIP_SECONDS" --num_workers 0
FT_RUN="$(dirname "$(find "$OUT/finetune_ws" -name 'best.pth' | head -n 1)")"
check finetune --metrics "$FT_RUN/metrics.jsonl" --min 0.9
"$PY" utils/make_demo_dataset.py --class_folders_dir "$OUT/finetune_new" --classes_num 4 \
  --folder_clips_per_class 3 --clip_seconds "$CLIP_SECONDS" --event_fraction 0.8 1.0 --seed 6
"$PY" pytorch/inference.py audio_tagging --checkpoint_path "$FT_RUN/best.pth" --audio_path "$OUT/finetune_new" \
  --top_k 4 --output "$RESULTS/finetuned_tags.json" > /dev/null
check folder_tagging --results "$RESULTS/finetuned_tags.json" --min 0.9

ELAPSED=$(( $(date +%s) - START ))
step "Done in ${ELAPSED} s. Outputs:"
cat <<EOT
  data set (AudioSet layout)   $DATASET_DIR
  example clip + truth         $CLIP, $TRUTH
  packed HDF5 + indexes        $WORKSPACE/hdf5s
  checkpoints                  $CKPT
                               $SED_CKPT
  statistics (pkl + json)      $(dirname "$STATS")
  training logs                $WORKSPACE/logs
  mAP plot                     $RESULTS/mAP.png
  SED figure + events          $RESULTS/example_clip.png, $RESULTS/example_clip_events.csv
  embeddings                   $OUT/embeddings.h5
  fine-tuned checkpoint        $FT_RUN/best.pth
EOT

step "Checks against the generated truth ($(nproc) cores, ${ELAPSED} s)"
if [ "$QUICK" = "1" ]; then
  "$PY" utils/demo_checks.py table --out "$OUT" || echo "(reduced run: too few steps to learn; checks not enforced)"
else
  "$PY" utils/demo_checks.py table --out "$OUT"
fi
