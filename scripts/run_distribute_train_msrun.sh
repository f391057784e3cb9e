#!/usr/bin/env bash
# Data-parallel training launched by MindSpore's msrun: no rank table, works on Ascend,
# GPU and CPU. Runs in the foreground until every worker exits; the exit status is msrun's.
#
# Usage:
#   bash scripts/run_distribute_train_msrun.sh WORKER_NUM CONFIG_FILE
#        [DATASET_PATH] [PRETRAINED_CKPT_PATH] [RUN_EVAL] [--key=value ...]
#   e.g. bash scripts/run_distribute_train_msrun.sh 8 config/segformer.b0.1024x1024.city.yaml ./data/cityscapes/
#        MASTER_PORT=8119 bash scripts/run_distribute_train_msrun.sh 2 config/segformer.b0.demo.yaml "" "" False --device_target=CPU
#
# Optional arguments may be "" to keep the config's value; trailing --key=value pairs go to
# train.py. Every worker runs in the current directory (config paths mean what they mean for
# train.py); logs: $LOG_DIR/worker_<rank>.log and $LOG_DIR/scheduler.log.
#
# msrun exports DEVICE_ID = the worker's local rank 0..LOCAL_WORKER_NUM-1: on Ascend the
# id of a card among those this machine sees (in a container that mounts cards 4-7: 0-3),
# or among ASCEND_RT_VISIBLE_DEVICES when set. With device_target Ascend this script checks
# that every local worker has a card and prints which (see src/utils/ascend_cards.py).
#
# Environment:
#   MASTER_ADDR       scheduler address (default 127.0.0.1)
#   MASTER_PORT       scheduler port (default 8118)
#   LOG_DIR           per-worker logs (default ./run_distribute_train_msrun)
#   LOCAL_WORKER_NUM  workers on this machine (default WORKER_NUM; with NODE_RANK for multi-node)
#   NODE_RANK         this machine's index in a multi-node job (default: msrun assigns)
#   CLUSTER_TIME_OUT  seconds a worker waits for the others (default 600)
#   BIND_CORE         1 (default): msrun pins each worker to its share of CPU cores (on
#                     Ascend the cores near its card); 0: off. The same variable and
#                     default as run_distribute_train.sh
#   TAIL_WORKER_LOG   worker whose log msrun echoes to the console (default 0; -1: all)
#   DEV_DIR           where the Ascend card device files davinci<N> are (default /dev)
#   PYTHON            interpreter (default: python on PATH). msrun starts workers as plain
#                     `python`, so this interpreter's directory is put first on PATH.
#   DRY_RUN           1: validate, print the environment and the msrun command, start nothing
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USAGE="Usage: bash scripts/run_distribute_train_msrun.sh WORKER_NUM CONFIG_FILE [DATASET_PATH] [PRETRAINED_CKPT_PATH] [RUN_EVAL] [--key=value ...]"

source "$ROOT/scripts/common.sh"
split_args 2 5 "$@"
WORKER_NUM="${POSITIONAL[0]}"
[[ "$WORKER_NUM" =~ ^[1-9][0-9]*$ ]] || die "WORKER_NUM must be a positive integer, got '$WORKER_NUM'"
CONFIG_FILE="$(abs_path "${POSITIONAL[1]}")"
DATASET_PATH="${POSITIONAL[2]:-}"
PRETRAINED_CKPT_PATH="${POSITIONAL[3]:-}"
RUN_EVAL="${POSITIONAL[4]:-}"
[[ -f "$CONFIG_FILE" ]] || die "CONFIG_FILE not found: $CONFIG_FILE"
[[ -z "$DATASET_PATH" || -d "$DATASET_PATH" ]] || die "DATASET_PATH is not a directory: $DATASET_PATH"
[[ -z "$PRETRAINED_CKPT_PATH" || -f "$PRETRAINED_CKPT_PATH" ]] || die "PRETRAINED_CKPT_PATH not found: $PRETRAINED_CKPT_PATH"
case "$RUN_EVAL" in
  ""|True|False|true|false) ;;
  *) die "RUN_EVAL must be True or False, got '$RUN_EVAL'" ;;
esac

MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-8118}"
LOCAL_WORKER_NUM="${LOCAL_WORKER_NUM:-$WORKER_NUM}"
CLUSTER_TIME_OUT="${CLUSTER_TIME_OUT:-600}"
BIND="$(bind_core)" || exit 2
LOG_DIR="$(abs_path "${LOG_DIR:-run_distribute_train_msrun}")"
[[ "$MASTER_PORT" =~ ^[0-9]+$ && "$MASTER_PORT" -ge 1024 && "$MASTER_PORT" -le 65535 ]] \
  || die "MASTER_PORT must be a port number in 1024..65535, got '$MASTER_PORT'"
[[ "$LOCAL_WORKER_NUM" =~ ^[1-9][0-9]*$ && "$LOCAL_WORKER_NUM" -le "$WORKER_NUM" ]] \
  || die "LOCAL_WORKER_NUM must be an integer in 1..WORKER_NUM ($WORKER_NUM), got '$LOCAL_WORKER_NUM'"
[[ -z "${NODE_RANK:-}" || "$NODE_RANK" =~ ^[0-9]+$ ]] || die "NODE_RANK must be an integer, got '$NODE_RANK'"

# msrun starts every worker as `python` from PATH: make that the interpreter the user runs.
resolve_python
export PATH="$(dirname "$PYTHON"):$PATH"
[[ "$(python -c 'import sys; print(sys.prefix)')" == "$("$PYTHON" -c 'import sys; print(sys.prefix)')" ]] \
  || die "'python' in $(dirname "$PYTHON") is not $PYTHON; msrun would start a different interpreter"
[[ -f "$ROOT/train.py" ]] || die "$ROOT/train.py not found"

ARGS=("--config_path=$CONFIG_FILE" "--run_distribute=True")
[[ -n "$DATASET_PATH" ]] && ARGS+=("--data_path=$DATASET_PATH")
[[ -n "$PRETRAINED_CKPT_PATH" ]] && ARGS+=("--pretrained_ckpt_path=$PRETRAINED_CKPT_PATH")
[[ -n "$RUN_EVAL" ]] && ARGS+=("--run_eval=$RUN_EVAL")
ARGS+=("${OVERRIDES[@]}")

# The full config must load, its data must exist and, on Ascend, every local worker must have
# a card before WORKER_NUM processes start; the scheduler port must be free when the
# scheduler runs here. Prints each local worker's DEVICE_ID and card (Ascend).
DEV_DIR="${DEV_DIR:-/dev}"
CARDS="$("$PYTHON" - "$ROOT" "$MASTER_ADDR" "$MASTER_PORT" "${NODE_RANK:-0}" "$LOCAL_WORKER_NUM" \
         "$DEV_DIR" "${ARGS[@]}" <<'EOF'
import os, socket, sys
root, addr, port, node_rank = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
local_workers, dev_dir, argv = int(sys.argv[5]), sys.argv[6], sys.argv[7:]
sys.path.insert(0, root)
from src.utils.ascend_cards import VISIBLE_ENV, CardError, local_cards, visible_devices, worker_cards
from src.utils.config import ConfigError, load_config
try:
    cfg = load_config("", argv)
except ConfigError as err:
    sys.exit(f"error: config: {err}")
if not os.path.isdir(cfg.data_path):
    sys.exit(f"error: data_path is not a directory: {cfg.data_path}")
if cfg.device_target == "Ascend":
    try:
        cards = local_cards(dev_dir)
        visible = visible_devices(os.environ.get(VISIBLE_ENV), cards, dev_dir)
        for device_id, card in enumerate(worker_cards(local_workers, cards, visible, dev_dir)):
            print(f"worker {device_id}: DEVICE_ID={device_id}, card "
                  + ("? (no davinci<N> files here)" if card is None else os.path.join(dev_dir, f"davinci{card}")))
    except CardError as err:
        sys.exit(f"error: LOCAL_WORKER_NUM={local_workers}: {err}")
if node_rank == 0 and addr in ("127.0.0.1", "localhost", socket.gethostname()):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as err:
            sys.exit(f"error: MASTER_PORT {port} on {addr} is not free ({err.strerror}); "
                     "set MASTER_PORT to a free port")
EOF
)" || exit 2

CMD=("$PYTHON" -m mindspore.parallel.cluster.run "--worker_num=$WORKER_NUM"
     "--local_worker_num=$LOCAL_WORKER_NUM" "--master_addr=$MASTER_ADDR" "--master_port=$MASTER_PORT"
     "--log_dir=$LOG_DIR" "--join=True" "--cluster_time_out=$CLUSTER_TIME_OUT" "--bind_core=$([[ $BIND == 1 ]] && echo True || echo False)"
     "--tail_worker_log=${TAIL_WORKER_LOG:-0}")
[[ -n "${NODE_RANK:-}" ]] && CMD+=("--node_rank=$NODE_RANK")
CMD+=("$ROOT/train.py" "${ARGS[@]}")

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  echo "PATH=$PATH"
  printf '%q ' "${CMD[@]}"; echo
  [[ -z "$CARDS" ]] || echo "$CARDS"
  exit 0
fi
echo "msrun: $WORKER_NUM worker(s) ($LOCAL_WORKER_NUM here), scheduler $MASTER_ADDR:$MASTER_PORT, logs $LOG_DIR/worker_<rank>.log"
[[ -z "$CARDS" ]] || echo "$CARDS"
mkdir -p "$LOG_DIR"
exec "${CMD[@]}"
