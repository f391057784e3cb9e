#!/usr/bin/env bash
# Segment every image under DATASET_PATH with an exported model on MindSpore Lite and write
# the PNGs infer.py writes (<stem>_gray/_color/_overlap.png) under OUTPUT_PATH.
# Usage: bash scripts/run_infer_lite.sh [MINDIR_PATH] [DATASET_PATH] [OUTPUT_PATH] [DEVICE] [--key=value ...]
# MINDIR_PATH: export.py's MINDIR, or converter_lite's output for Ascend 310/310P (README).
# DATASET_PATH: an image, a folder (searched recursively) or a Cityscapes root (its val split).
# DEVICE: Ascend | CPU | GPU (where Lite runs the model); the card is DEVICE_ID (default 0).
# The config is config/<MINDIR file name>.yaml (export.py's default name) unless
# --config_path=CONFIG is passed; further --key=value arguments are passed on.
# Needs the mindspore_lite wheel (and the mindspore CPU wheel for the pre/post-processing).
set -euo pipefail
USAGE="Usage: bash $0 [MINDIR_PATH] [DATASET_PATH] [OUTPUT_PATH] [DEVICE] [--key=value ...]
  DEVICE: Ascend | CPU | GPU; the card is \$DEVICE_ID (default 0)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/common.sh"
split_args 4 4 "$@"
MODEL_PATH="${POSITIONAL[0]}"
DATASET_PATH="${POSITIONAL[1]}"
OUTPUT_PATH="${POSITIONAL[2]}"
DEVICE="${POSITIONAL[3]}"
case "$DEVICE" in
    Ascend|CPU|GPU) ;;
    *) die "DEVICE '$DEVICE' is not one of Ascend, CPU, GPU" ;;
esac
[ -f "$MODEL_PATH" ] || die "model file not found: $MODEL_PATH (MINDIR_PATH)"
[ -e "$DATASET_PATH" ] || die "input not found: $DATASET_PATH (DATASET_PATH)"
DEVICE_ID="${DEVICE_ID:-0}"
[[ "$DEVICE_ID" =~ ^[0-9]+$ ]] || die "DEVICE_ID=$DEVICE_ID must be a non-negative integer"
resolve_python
exec "$PYTHON" "$ROOT/tools/infer_lite.py" --infer_ckpt_path="$MODEL_PATH" --data_path="$DATASET_PATH" \
    --infer_output_path="$OUTPUT_PATH" --device_target="$DEVICE" --device_id="$DEVICE_ID" \
    "${OVERRIDES[@]+"${OVERRIDES[@]}"}"
