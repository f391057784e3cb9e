#!/usr/bin/env bash
# Data-parallel training on the Ascend cards of this server, wired by an HCCL rank table
# (write one with tools/hccl_tools.py). One train.py process per card, in the background.
#
# Usage:
#   bash scripts/run_distribute_train.sh DEVICE_NUM RANK_TABLE_FILE CONFIG_FILE
#        [DATASET_PATH] [PRETRAINED_CKPT_PATH] [RUN_EVAL] [--key=value ...]
#   e.g. bash scripts/run_distribute_train.sh 8 ./hccl_8p_01234567_10.0.0.1.json \
#        config/segformer.b0.1024x1024.city.yaml ./data/cityscapes/
#
# Optional arguments may be "" to keep the config's value; trailing --key=value pairs go to
# train.py. Rank r runs in run_distribute_train/device<DEVICE_ID>/ (its working directory:
# train.log, output/, checkpoint/ for rank 0) with RANK_TABLE_FILE, RANK_SIZE, RANK_ID and
# DEVICE_ID exported. Relative data/checkpoint paths are resolved against the directory you
# launch from, exactly as for train.py.
#
# The table holds physical card ids; DEVICE_ID is the id the process opens: the card's index
# among the cards this machine sees (its /dev/davinci<N> files: in a container that mounts
# cards 4-7 they are 0-3), then its index in ASCEND_RT_VISIBLE_DEVICES when that is set
# (see src/utils/ascend_cards.py).
#
# Environment:
#   PYTHON     interpreter to run (default: python on PATH)
#   RUN_DIR    parent of the per-rank directories (default ./run_distribute_train)
#   SERVER_ID  this server's server_id, for a rank table that lists several servers
#   BIND_CORE  1 (default): pin each rank to its share of CPU cores with taskset; 0: off
#              (the same variable and default as run_distribute_train_msrun.sh)
#   DEV_DIR    where the card device files davinci<N> are (default /dev)
#   DRY_RUN    1: validate everything, print each rank's environment and command, start nothing
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USAGE="Usage: bash scripts/run_distribute_train.sh DEVICE_NUM RANK_TABLE_FILE CONFIG_FILE [DATASET_PATH] [PRETRAINED_CKPT_PATH] [RUN_EVAL] [--key=value ...]"

source "$ROOT/scripts/common.sh"
split_args 3 6 "$@"
DEVICE_NUM="${POSITIONAL[0]}"
[[ "$DEVICE_NUM" =~ ^[1-9][0-9]*$ ]] || die "DEVICE_NUM must be a positive integer, got '$DEVICE_NUM'"
RANK_TABLE_FILE="$(abs_path "${POSITIONAL[1]}")"
CONFIG_FILE="$(abs_path "${POSITIONAL[2]}")"
DATASET_PATH="${POSITIONAL[3]:-}"
PRETRAINED_CKPT_PATH="${POSITIONAL[4]:-}"
RUN_EVAL="${POSITIONAL[5]:-}"
[[ -f "$RANK_TABLE_FILE" ]] || die "RANK_TABLE_FILE not found: $RANK_TABLE_FILE (write one with tools/hccl_tools.py)"
[[ -f "$CONFIG_FILE" ]] || die "CONFIG_FILE not found: $CONFIG_FILE"
if [[ -n "$DATASET_PATH" ]]; then
  DATASET_PATH="$(abs_path "$DATASET_PATH")"
  [[ -d "$DATASET_PATH" ]] || die "DATASET_PATH is not a directory: $DATASET_PATH"
fi
if [[ -n "$PRETRAINED_CKPT_PATH" ]]; then
  PRETRAINED_CKPT_PATH="$(abs_path "$PRETRAINED_CKPT_PATH")"
  [[ -f "$PRETRAINED_CKPT_PATH" ]] || die "PRETRAINED_CKPT_PATH not found: $PRETRAINED_CKPT_PATH"
fi
case "$RUN_EVAL" in
  ""|True|False|true|false) ;;
  *) die "RUN_EVAL must be True or False, got '$RUN_EVAL'" ;;
esac

resolve_python   # every rank runs this same interpreter
[[ -f "$ROOT/train.py" ]] || die "$ROOT/train.py not found"

# The full config (YAML chain + command line) must load, and must target Ascend: a rank
# table is HCCL's. Relative input paths are made absolute here because each rank runs in
# its own directory.
ARGS=("--config_path=$CONFIG_FILE" "--run_distribute=True")
[[ -n "$DATASET_PATH" ]] && ARGS+=("--data_path=$DATASET_PATH")
[[ -n "$PRETRAINED_CKPT_PATH" ]] && ARGS+=("--pretrained_ckpt_path=$PRETRAINED_CKPT_PATH")
[[ -n "$RUN_EVAL" ]] && ARGS+=("--run_eval=$RUN_EVAL")
ARGS+=("${OVERRIDES[@]}")
RESOLVED="$("$PYTHON" - "$ROOT" "$PWD" "${ARGS[@]}" <<'EOF'
import os, sys
root, launch_dir, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, root)
from src.utils.config import ConfigError, load_config
try:
    cfg = load_config("", argv)
except ConfigError as err:
    sys.exit(f"error: config: {err}")
if cfg.device_target != "Ascend":
    sys.exit(f"error: a rank table launches HCCL on Ascend, but device_target is "
             f"'{cfg.device_target}' ({argv[0][len('--config_path='):]}); for GPU/CPU use "
             "scripts/run_distribute_train_msrun.sh")
for key in ("data_path", "pretrained_ckpt_path", "resume_ckpt"):
    value = cfg[key]
    if value and not os.path.isabs(value):
        value = os.path.normpath(os.path.join(launch_dir, value))
        print(f"--{key}={value}")
    if key == "data_path" and not os.path.isdir(value):
        sys.exit(f"error: data_path is not a directory: {value}")
EOF
)" || exit 2
while IFS= read -r line; do [[ -n "$line" ]] && ARGS+=("$line"); done <<< "$RESOLVED"

# Validate the table and get this server's (rank_id, device_id) pairs.
PLAN="$("$PYTHON" "$ROOT/src/utils/rank_table.py" "$RANK_TABLE_FILE" --device_num "$DEVICE_NUM" \
        ${SERVER_ID:+--server_id "$SERVER_ID"})" || exit 2
RANK_SIZE="$(head -n 1 <<< "$PLAN")"; RANK_SIZE="${RANK_SIZE#RANK_SIZE=}"
mapfile -t RANKS < <(tail -n +2 <<< "$PLAN")

DEV_DIR="${DEV_DIR:-/dev}"
PHYSICAL=()
for pair in "${RANKS[@]}"; do PHYSICAL+=("${pair#* }"); done
mapfile -t DEVICE_IDS < <("$PYTHON" "$ROOT/src/utils/ascend_cards.py" "${PHYSICAL[@]}" \
                          --dev_dir "$DEV_DIR" || echo FAILED)
[[ "${DEVICE_IDS[-1]}" != FAILED ]] || exit 2
if [[ "${DRY_RUN:-0}" != "1" ]]; then
  for dev in "${PHYSICAL[@]}"; do
    [[ -e "$DEV_DIR/davinci$dev" ]] || die "no Ascend device $DEV_DIR/davinci$dev on this machine: this script \
starts HCCL training on Ascend cards. On GPU or CPU use scripts/run_distribute_train_msrun.sh; \
DRY_RUN=1 prints what would be started."
  done
fi

CORES="$(nproc 2>/dev/null || echo 1)"
CORES_PER_RANK=$(( CORES / DEVICE_NUM ))
BIND="$(bind_core)" || exit 2
if [[ $CORES_PER_RANK -lt 1 ]] || ! command -v taskset >/dev/null; then BIND=0; fi

RUN_DIR="$(abs_path "${RUN_DIR:-run_distribute_train}")"
echo "rank table $RANK_TABLE_FILE: RANK_SIZE=$RANK_SIZE, $DEVICE_NUM rank(s) on this server; logs in $RUN_DIR/device<id>/train.log"
i=0
for pair in "${RANKS[@]}"; do
  rank_id="${pair% *}"; device_id="${DEVICE_IDS[$i]}"
  dir="$RUN_DIR/device$device_id"
  cmd=(env "RANK_TABLE_FILE=$RANK_TABLE_FILE" "RANK_SIZE=$RANK_SIZE" "RANK_ID=$rank_id" "DEVICE_ID=$device_id")
  if [[ $BIND == 1 ]]; then
    cmd+=(taskset -c "$(( i * CORES_PER_RANK ))-$(( (i + 1) * CORES_PER_RANK - 1 ))")
  fi
  cmd+=("$PYTHON" "$ROOT/train.py" "${ARGS[@]}")
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf 'rank %s: cd %q &&' "$rank_id" "$dir"; printf ' %q' "${cmd[@]}"; printf ' > train.log 2>&1\n'
  else
    mkdir -p "$dir"
    (cd "$dir" && exec "${cmd[@]}" > train.log 2>&1) &
    echo "rank $rank_id: device $device_id, pid $!, log $dir/train.log"
  fi
  i=$(( i + 1 ))
done
