#!/usr/bin/env bash
# Evaluate a checkpoint on the val split (mIoU / aAcc / mAcc, or ViT top-1/top-5).
# Usage: bash scripts/run_eval.sh [DEVICE_ID] [CONFIG_FILE] [CKPT_PATH] [DATASET_PATH]
# CKPT_PATH: a .ckpt, or an exported .mindir / .onnx (same pre/post-processing).
# The log is printed and written to <output_dir>/eval.log (output_dir from the config).
# Extra --key=value arguments after the four are passed on (e.g. --eval_mode=slide --eval_flip).
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "Usage: bash $0 [DEVICE_ID] [CONFIG_FILE] [CKPT_PATH] [DATASET_PATH] [--key=value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEVICE_ID="$1"
CONFIG_FILE="$2"
CKPT_PATH="$3"
DATASET_PATH="$4"
shift 4
for f in "$CONFIG_FILE" "$CKPT_PATH"; do
    [ -f "$f" ] || { echo "error: file not found: $f" >&2; exit 2; }
done
[ -d "$DATASET_PATH" ] || { echo "error: dataset directory not found: $DATASET_PATH" >&2; exit 2; }
exec "${PYTHON:-python}" "$ROOT/eval.py" --config_path="$CONFIG_FILE" --eval_ckpt_path="$CKPT_PATH" \
    --data_path="$DATASET_PATH" "$@"
