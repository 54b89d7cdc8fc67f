#!/bin/bash
# Train Cnn14 with the official recipe (full_train, balanced sampling, mixup, batch 32, Adam 1e-3),
# then plot the mAP curves of the workspace's runs.
#
#   bash scripts/4_train.sh [WORKSPACE] [DATASET_DIR] [extra pytorch/main.py train options...]
#
# WORKSPACE defaults to ./workspaces/audioset_tagging, DATASET_DIR to ./datasets/audioset201906 (in the
# official script it was undefined). Extra options override the recipe, e.g. --data_type=balanced_train
# --early_stop=10000 --num_workers=4.
# Label CSV, the rule of scripts/2_pack_waveforms_to_hdf5s.sh (training needs the one the data was packed with):
# LABELS_CSV when set, else DATASET_DIR/metadata/class_labels_indices.csv when it exists (script 1 fetches it),
# else main.py's default, the repository's metadata/class_labels_indices.csv. A --class_labels_csv among the
# extra options wins. Data packed by scripts/2_pack_from_shards.sh with its own LABELS_CSV: pass the same here.
# --cuda is added when PyTorch (in $PYTHON, the interpreter that trains) sees a GPU; --precision=auto trains in
# bf16 on GPUs that compute it natively (A100/H100/RTX 30xx+), fp32 elsewhere (pass --precision=fp32 for the
# official numerics); --compile=auto compiles the training step on CUDA (--compile=off for eager).
# To resume: --resume_iteration=N. Running it again on a workspace whose run folder already holds a run is
# refused (one line: resume it, or add --overwrite to replace it; main.py train --help).
# Afterwards it plots every run in the workspace to results/1_aug.pdf under the current directory.
# Several GPUs: PYTHON="torchrun --nproc_per_node=4" bash scripts/4_train.sh ...   (DDP; batch 32 in total)
# Docker: give the loader workers shared memory (--ipc=host or --shm-size=8g); 64 MB is the default.
# Environment: MODEL_TYPE=Cnn14, LABELS_CSV (above), PYTHON (default: the active venv's python, see
# scripts/python.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/args.sh"   # --help: the usage above; an option where a path belongs: refused
panns_script_args "${BASH_SOURCE[0]}" 2+ "$@"

WORKSPACE="${1:-./workspaces/audioset_tagging}"
DATASET_DIR="${2:-./datasets/audioset201906}"
EXTRA_ARGS=("${@:3}")
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# PYTHON as given (a python, or "torchrun --nproc_per_node=N"), else the one PANNs is installed into
if [ -z "${PYTHON:-}" ]; then . "$REPO/scripts/python.sh"; fi
MODEL_TYPE="${MODEL_TYPE:-Cnn14}"

# The interpreter that trains probes CUDA and plots: PYTHON itself, or the python torchrun runs (its #! line).
# A PYTHON (or torchrun) that is not there, or that lacks torch, is one line here: it was 'sees no CUDA GPU;
# training on the CPU' and then the shell's 'No such file or directory' (or head's, for torchrun off PATH).
# A PYTHON that is an executable file as given is one word (a venv path may hold a space); else it is a command
# line such as "torchrun --nproc_per_node=N", split into words.
if [ -f "$PYTHON" ] && [ -x "$PYTHON" ]; then PY_CMD=("$PYTHON"); else read -r -a PY_CMD <<< "$PYTHON"; fi
PY="${PY_CMD[0]:-}"
if [ -z "$PY" ] || ! command -v "$PY" >/dev/null 2>&1; then
  echo "error: PYTHON=$PYTHON is not an executable; set PYTHON to the python PANNs is installed into" \
       "(or to \"torchrun --nproc_per_node=N\" with torchrun on PATH)" >&2
  exit 1
fi
if [ "$(basename "$PY")" = "torchrun" ]; then
  PY="$(head -n 1 "$(command -v "$PY")" | sed -e 's/^#! *//' -e 's/ .*//')"
fi
# One import of torch (~2 s) both checks the interpreter and asks for a GPU.
if ! HAS_CUDA="$("$PY" -c 'import torch;print(torch.cuda.is_available())' 2>/dev/null)"; then
  echo "error: $PY (from PYTHON=$PYTHON) cannot import torch; set PYTHON to the python PANNs is installed into" >&2
  exit 1
fi
LABELS_FLAG=()
if [ -z "${LABELS_CSV:-}" ] && [ -f "$DATASET_DIR/metadata/class_labels_indices.csv" ]; then
  LABELS_CSV="$DATASET_DIR/metadata/class_labels_indices.csv"
fi
if [ -n "${LABELS_CSV:-}" ]; then
  echo "4_train.sh: label CSV $LABELS_CSV" >&2
  LABELS_FLAG=(--class_labels_csv="$LABELS_CSV")
fi
CUDA_FLAG=()
if [ "$HAS_CUDA" = "True" ]; then
  CUDA_FLAG=(--cuda)
else
  echo "4_train.sh: $PY sees no CUDA GPU; training on the CPU" >&2
fi

# The trainer runs as a child in its own process group that gets this script's Ctrl-C, SIGTERM and hang-up: it
# then stops after its current step with a checkpoint (main.py train --help). Without the hand-over, a signal
# to this script alone (a container's PID 1 on `docker stop` or pod deletion, `kill <pid>`) never reached
# the trainer, which was killed later with everything since its last checkpoint.
TRAINER=""
trap '[ -z "$TRAINER" ] || kill -INT "$TRAINER" 2>/dev/null || true' INT
trap '[ -z "$TRAINER" ] || kill -TERM "$TRAINER" 2>/dev/null || true' TERM HUP
set -m
"${PY_CMD[@]}" "$REPO/pytorch/main.py" train \
  --workspace="$WORKSPACE" \
  --data_type=full_train \
  --sample_rate=32000 \
  --window_size=1024 \
  --hop_size=320 \
  --mel_bins=64 \
  --fmin=50 \
  --fmax=14000 \
  --model_type="$MODEL_TYPE" \
  --loss_type=clip_bce \
  --balanced=balanced \
  --augmentation=mixup \
  --batch_size=32 \
  --learning_rate=1e-3 \
  --resume_iteration=0 \
  --early_stop=1000000 \
  --precision=auto \
  "${LABELS_FLAG[@]}" "${CUDA_FLAG[@]}" "${EXTRA_ARGS[@]}" &
TRAINER=$!
STATUS=0
while :; do   # a trapped signal ends `wait` early: wait again until the trainer has saved and exited
  wait "$TRAINER" && STATUS=0 || STATUS=$?
  kill -0 "$TRAINER" 2>/dev/null || break
done
set +m
trap - INT TERM HUP
[ "$STATUS" -eq 0 ] || exit "$STATUS"
for arg in "${EXTRA_ARGS[@]}"; do   # main.py train printed its help and trained nothing: nothing to plot
  case "$arg" in -h|--help) exit 0 ;; esac
done

# Plot the statistics of every run in the workspace (results/1_aug.pdf, relative to the current directory).
"$PY" "$REPO/utils/plot_statistics.py" plot --dataset_dir="$DATASET_DIR" --workspace="$WORKSPACE" --select=1_aug
