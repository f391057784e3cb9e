#!/usr/bin/env bash
# Segment every image under DATASET_PATH and write <stem>_gray/_color/_overlap PNGs.
# Usage: bash scripts/run_infer.sh [DEVICE_ID] [CONFIG_FILE] [CKPT_PATH] [DATASET_PATH] [OUTPUT_PATH](optional)
# CKPT_PATH: a .ckpt, or an exported .mindir / .onnx (same pre/post-processing).
# DATASET_PATH: an image, a folder (searched recursively), a Cityscapes root (its val split)
# or a video file (-> <name>_overlay.mp4).
# OUTPUT_PATH defaults to infer_output_path from the config (./infer_result/).
# The log is printed and written to <output_dir>/infer.log. Extra --key=value arguments
# after the positional ones are passed on.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "Usage: bash $0 [DEVICE_ID] [CONFIG_FILE] [CKPT_PATH] [DATASET_PATH] [OUTPUT_PATH](optional)" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEVICE_ID="$1"
CONFIG_FILE="$2"
CKPT_PATH="$3"
DATASET_PATH="$4"
shift 4
ARGS=(--config_path="$CONFIG_FILE" --infer_ckpt_path="$CKPT_PATH" --data_path="$DATASET_PATH")
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
    ARGS+=(--infer_output_path="$1")
    shift
fi
for f in "$CONFIG_FILE" "$CKPT_PATH"; do
    [ -f "$f" ] || { echo "error: file not found: $f" >&2; exit 2; }
done
[ -e "$DATASET_PATH" ] || { echo "error: input not found: $DATASET_PATH" >&2; exit 2; }
exec "${PYTHON:-python}" "$ROOT/infer.py" "${ARGS[@]}" "$@"
