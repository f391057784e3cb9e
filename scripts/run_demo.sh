#!/usr/bin/env bash
# The whole pipeline on generated demo data, on CPU, no arguments:
#   demo data -> labelTrainIds (convert_dataset) -> train SegFormer-B0 -> eval (mIoU)
#   -> infer PNGs -> export MINDIR
# Everything goes under data/ and demo_run/segformer_b0/ in the repository; each step
# prints where its artefacts went. Uses $PYTHON if set, else the `python` on PATH
# (python3 if there is no `python`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif command -v python >/dev/null 2>&1; then
    PY=python
else
    PY=python3
fi

CONFIG=config/segformer.b0.demo.yaml
DATA=data/demo_cityscapes
RUN=demo_run/segformer_b0          # logs, checkpoints, PNGs and the MINDIR go here
CKPT_DIR=$RUN/checkpoint
START=$(date +%s)

step() {
    echo
    echo "==> [$(( $(date +%s) - START ))s] $*"
}

step "1/6 generate the demo datasets (Cityscapes, ADE20K and ImageNet layouts)"
"$PY" tools/make_demo_data.py --out "$DATA" --imagenet_out data/demo_imagenet

step "2/6 convert polygons to *_gtFine_labelTrainIds.png"
"$PY" tools/convert_dataset.py "$DATA" --nproc 2

step "3/6 train SegFormer-B0 ($CONFIG)"
rm -rf "$CKPT_DIR"   # a fresh run: no checkpoints of an earlier demo mixed in
"$PY" train.py --config_path="$CONFIG" --data_path="$DATA" --output_dir="$RUN" \
    --checkpoint_path="$CKPT_DIR"
CKPT=$(ls "$CKPT_DIR"/segformer_mit_b0_[0-9]*.ckpt 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$CKPT" ]; then
    echo "error: training wrote no checkpoint to $CKPT_DIR" >&2
    exit 1
fi

step "4/6 evaluate $CKPT on the val split"
"$PY" eval.py --config_path="$CONFIG" --eval_ckpt_path="$CKPT" --data_path="$DATA" \
    --output_dir="$RUN"

step "5/6 segment the val images"
"$PY" infer.py --config_path="$CONFIG" --infer_ckpt_path="$CKPT" --data_path="$DATA" \
    --output_dir="$RUN" --infer_output_path="$RUN/infer" --infer_log_interval=2

step "6/6 export MINDIR"
"$PY" export.py --config_path="$CONFIG" --export_ckpt_path="$CKPT" --export_format=MINDIR \
    --export_file_name="$RUN/segformer.b0.demo"

echo
echo "demo done in $(( $(date +%s) - START ))s. Artefacts:"
echo "  dataset          $ROOT/$DATA"
echo "  training log     $ROOT/$RUN/train.log"
echo "  checkpoints      $ROOT/$CKPT_DIR/"
echo "  evaluation log   $ROOT/$RUN/eval.log   (mIoU: $(grep '===> mIoU' "$RUN/eval.log" | tail -n 1 | sed 's/===> mIoU: //; s/, ckpt.*//'))"
echo "  PNG predictions  $ROOT/$RUN/infer/"
echo "  MINDIR           $ROOT/$RUN/segformer.b0.demo.mindir"
