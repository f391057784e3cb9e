#!/usr/bin/env bash
# Training on one device, in the background; the log goes to $RUN_DIR/train.log.
#
# Usage:
#   bash scripts/run_standalone_train.sh DEVICE_ID CONFIG_FILE [DATASET_PATH] [PRETRAINED_CKPT_PATH] [RUN_EVAL] [--key=value ...]
#   e.g. bash scripts/run_standalone_train.sh 0 config/segformer.b0.512x1024.city.yaml ./data/cityscapes/
#        bash scripts/run_standalone_train.sh 0 config/segformer.b0.demo.yaml data/demo_cityscapes "" False
#
# Optional arguments may be "" to keep the config's value (data_path, pretrained_ckpt_path,
# run_eval); a PRETRAINED_CKPT_PATH also sets load_ckpt=True. Trailing --key=value pairs go
# to train.py (e.g. --auto_resume=True). train.py runs in the current directory, so relative
# paths in the config mean what they mean for `python train.py`; checkpoints go to the
# config's checkpoint_path.
#
# Environment:
#   RUN_DIR     log directory, passed as --output_dir (default ./run_standalone_train)
#   PYTHON      interpreter (default: python on PATH)
#   FOREGROUND  1: run in the foreground (exit status = train.py's) instead of in the background
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USAGE="Usage: bash scripts/run_standalone_train.sh DEVICE_ID CONFIG_FILE [DATASET_PATH] [PRETRAINED_CKPT_PATH] [RUN_EVAL] [--key=value ...]"

source "$ROOT/scripts/common.sh"
split_args 2 5 "$@"
DEVICE_ID="${POSITIONAL[0]}"
CONFIG_FILE="${POSITIONAL[1]}"
DATASET_PATH="${POSITIONAL[2]:-}"
PRETRAINED_CKPT_PATH="${POSITIONAL[3]:-}"
RUN_EVAL="${POSITIONAL[4]:-}"
[[ "$DEVICE_ID" =~ ^[0-9]+$ ]] || die "DEVICE_ID must be a non-negative integer, got '$DEVICE_ID'"
[[ -f "$CONFIG_FILE" ]] || die "CONFIG_FILE not found: $CONFIG_FILE"
[[ -z "$DATASET_PATH" || -d "$DATASET_PATH" ]] || die "DATASET_PATH is not a directory: $DATASET_PATH"
[[ -z "$PRETRAINED_CKPT_PATH" || -f "$PRETRAINED_CKPT_PATH" ]] || die "PRETRAINED_CKPT_PATH not found: $PRETRAINED_CKPT_PATH"
case "$RUN_EVAL" in
  ""|True|False|true|false) ;;
  *) die "RUN_EVAL must be True or False, got '$RUN_EVAL'" ;;
esac
resolve_python

ARGS=("--config_path=$CONFIG_FILE")
[[ -n "$DATASET_PATH" ]] && ARGS+=("--data_path=$DATASET_PATH")
[[ -n "$PRETRAINED_CKPT_PATH" ]] && ARGS+=("--pretrained_ckpt_path=$PRETRAINED_CKPT_PATH" "--load_ckpt=True")
[[ -n "$RUN_EVAL" ]] && ARGS+=("--run_eval=$RUN_EVAL")
RUN_DIR="$(abs_path "${RUN_DIR:-run_standalone_train}")"
ARGS+=("--output_dir=$RUN_DIR")
mkdir -p "$RUN_DIR"
LOG="$RUN_DIR/train.log"

export DEVICE_ID RANK_ID=0 RANK_SIZE=1
# stdout and stderr are appended to train.log itself (train.py's logger notices and does not
# write its lines twice), so a crash's traceback lands in the same file.
if [[ "${FOREGROUND:-0}" == "1" ]]; then
  exec "$PYTHON" "$ROOT/train.py" "${ARGS[@]}" ${OVERRIDES[@]+"${OVERRIDES[@]}"} >> "$LOG" 2>&1
fi
nohup "$PYTHON" "$ROOT/train.py" "${ARGS[@]}" ${OVERRIDES[@]+"${OVERRIDES[@]}"} >> "$LOG" 2>&1 &
echo "training started in the background (pid $!); log: $LOG"
