#!/usr/bin/env bash
# The two official inference examples: audio tagging with Cnn14 and sound event detection with
# Cnn14_DecisionLevelMax. Checkpoints come from the official Zenodo record (downloaded once into
# $PANNS_CACHE or ~/.cache/panns); the label CSV is metadata/class_labels_indices.csv (in the repository).
#
# Override with environment variables:
#   AUDIO_PATH   clip to analyse (default: resources/R9_ZSCveAHg_7s.wav if present, else resources/example_clip.wav)
#   CUDA_FLAG    "--cuda" to run on the GPU (default: on when a GPU is visible)
#   TAGGING_MODEL / SED_MODEL   model types (default Cnn14 / Cnn14_DecisionLevelMax)
#   BACKEND      what runs the model (default: the CLI's auto = the path a cached calibration found
#                fastest on this CPU, torch for short jobs; "torch" forces torch, as PANNS_BACKEND=torch does)
set -euo pipefail
# --help prints the text above; an argument is refused (it was ignored: the examples ran, checkpoint downloads and
# all, on the default clip instead of the file named).
. "$(dirname "${BASH_SOURCE[0]}")/args.sh"
case "${1-}" in
  -h|--help) panns_script_usage "${BASH_SOURCE[0]}"; exit 0 ;;
esac
if [ "$#" -gt 0 ]; then
  echo "error: 0_inference.sh takes no arguments; name the clip with AUDIO_PATH=<file> bash scripts/0_inference.sh" >&2
  exit 2
fi
# AUDIO_PATH and PYTHON given relative to the directory the script was started from: made absolute before the
# cd into the repository (they named a file there, or nothing: 'cd /tmp && AUDIO_PATH=clip.wav bash .../0_inference.sh'
# analysed the repository's clip.wav or failed to find one).
case "${AUDIO_PATH:-/}" in /*) ;; *) AUDIO_PATH="$PWD/$AUDIO_PATH" ;; esac
case "${PYTHON:-/}" in /*) ;; */*) PYTHON="$PWD/$PYTHON" ;; esac
cd "$(dirname "$0")/.."
. scripts/python.sh   # PYTHON: the interpreter PANNs is installed into

if [ -z "${AUDIO_PATH:-}" ]; then
  if [ -f resources/R9_ZSCveAHg_7s.wav ]; then AUDIO_PATH=resources/R9_ZSCveAHg_7s.wav
  else AUDIO_PATH=resources/example_clip.wav; fi
fi
if [ ! -e "$AUDIO_PATH" ]; then   # before the checkpoints (~300 MB each) are downloaded for nothing
  echo "error: audio file not found: $AUDIO_PATH (AUDIO_PATH)" >&2
  exit 2
fi
TAGGING_MODEL="${TAGGING_MODEL:-Cnn14}"
BACKEND_FLAG="${BACKEND:+--backend=$BACKEND}"
SED_MODEL="${SED_MODEL:-Cnn14_DecisionLevelMax}"
if [ -z "${CUDA_FLAG+x}" ]; then
  CUDA_FLAG=$("$PYTHON" -c "import torch; print('--cuda' if torch.cuda.is_available() else '')")
fi

# The label CSV ships with the repository; fetch it again only if it was deleted.
[ -f metadata/class_labels_indices.csv ] || "$PYTHON" utils/download.py labels

# ------ Inference audio tagging result with pretrained model. ------
CHECKPOINT_PATH=$("$PYTHON" pytorch/pretrained.py download --model_type="$TAGGING_MODEL")
"$PYTHON" pytorch/inference.py audio_tagging \
    --model_type="$TAGGING_MODEL" \
    --checkpoint_path="$CHECKPOINT_PATH" \
    --audio_path="$AUDIO_PATH" \
    $CUDA_FLAG $BACKEND_FLAG

# ------ Inference sound event detection result with pretrained model. ------
CHECKPOINT_PATH=$("$PYTHON" pytorch/pretrained.py download --model_type="$SED_MODEL")
"$PYTHON" pytorch/inference.py sound_event_detection \
    --model_type="$SED_MODEL" \
    --checkpoint_path="$CHECKPOINT_PATH" \
    --audio_path="$AUDIO_PATH" \
    $CUDA_FLAG $BACKEND_FLAG
