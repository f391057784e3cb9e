"""Evaluation loops shared by eval.py and eval during training.

    metrics = evaluate(net, cfg, rank_id=0, group_size=1, log=print, ckpt_name="")

- ``evaluate_segmentation``: every image of the dataset's val split (``dataset.val_split``)
  through ``SegInferencer`` (whole / slide, scales, flip from the config), the prediction
  at the image's original resolution compared with the full-resolution label in one
  confusion matrix (``src/engine/metrics.py``). Returns
  ``{"mIoU", "mAcc", "aAcc", "IoU": {class: iou}, "Acc": {class: acc}, "num_images",
  "metric_name": "mIoU", "metric": mIoU}``.
- ``evaluate_classification``: top-1 / top-5 accuracy over the val split. Returns
  ``{"top1", "top5", "num_images", "metric_name": "top1", "metric": top1}``.

With ``group_size > 1`` each rank evaluates every ``group_size``-th sample and the counts
are summed over ranks, so every rank returns the metrics of the whole split. ``net``
is a ``nn.Cell`` (switched to inference mode and restored to its previous mode afterwards)
or a ``src/engine/networks.py`` ``Network`` (an exported MINDIR / ONNX file).
Log lines follow the SegFormer seed (``eval image 100/500 done, step cost: 593ms``,
``===> class: road, IoU: ...``, ``===> mIoU: ..., ckpt: ...``).
"""
import time

import numpy as np
import mindspore as ms
from mindspore import ops

from src.engine.inference import SegInferencer
from src.engine.metrics import ConfusionMatrix, topk_correct
from src.engine.networks import as_network

RULE = "=" * 63
TITLE = "=" * 22 + " Evaluation Result " + "=" * 22

# Counts travel between ranks as float32 "digits" of 12 bits, in one AllReduce: MindSpore's
# CPU AllReduce takes only float32/float16 (int32 fails: "Select CPU operator[AllReduce]
# fail! Unsupported data type!"), and float32 adds integers exactly below 2**24, so a sum of
# 12-bit digits is exact for up to 4096 ranks. Six digits hold any non-negative int64.
_DIGIT_BITS = 12
_DIGITS = 6


def all_reduce_counts(counts, group_size):
    """Sum a non-negative int64 count array over ``group_size`` ranks (identity on one rank)."""
    counts = np.asarray(counts, dtype=np.int64)
    if group_size == 1:
        return counts
    mask = (1 << _DIGIT_BITS) - 1
    digits = np.stack([(counts >> (_DIGIT_BITS * i)) & mask for i in range(_DIGITS)])
    summed = ops.AllReduce()(ms.Tensor(digits.astype(np.float32))).asnumpy().astype(np.int64)
    return sum(summed[i] << (_DIGIT_BITS * i) for i in range(_DIGITS))


class _Progress:
    """``eval image i/n done, step cost: Xms`` every ``interval`` items and at the end;
    the cost is the mean time per item since the previous line."""

    def __init__(self, total, interval, what, log):
        self.total, self.interval, self.what, self.log = total, max(1, int(interval)), what, log
        self.done = self.reported = 0
        self.last = time.time()

    def step(self):
        self.done += 1
        if self.done % self.interval == 0 or self.done == self.total:
            now = time.time()
            cost = (now - self.last) * 1000.0 / (self.done - self.reported)
            self.log(f"eval {self.what} {self.done}/{self.total} done, step cost: {cost:.0f}ms")
            self.last, self.reported = now, self.done


def format_segmentation_result(metrics, ckpt_name=""):
    lines = [TITLE]
    lines += [f"===> class: {name}, IoU: {iou}" for name, iou in metrics["IoU"].items()]
    lines += [RULE,
              f"===> aAcc: {metrics['aAcc']}, mAcc: {metrics['mAcc']}",
              f"===> mIoU: {metrics['mIoU']}, ckpt: {ckpt_name}",
              RULE]
    return lines


def format_classification_result(metrics, ckpt_name=""):
    return [TITLE,
            f"===> Total data: {metrics['num_images']}, top1 accuracy: {metrics['top1']}, "
            f"top5 accuracy: {metrics['top5']}, ckpt: {ckpt_name}",
            f"accuracy={metrics['top1']:.6f}",
            RULE]


def evaluate_segmentation(net, cfg, rank_id=0, group_size=1, log=print, ckpt_name=""):
    """mIoU / mAcc / aAcc of ``net`` on the val split (see the module docstring)."""
    from src.data import class_names, eval_source

    source = eval_source(cfg, "val")
    indices = range(rank_id, len(source), group_size)
    inferencer = SegInferencer(net, cfg)
    matrix = ConfusionMatrix(int(cfg.class_num), int(cfg.ignore_label))
    with inferencer.net.inference_mode():
        log(f"eval dataset size:{len(source)}")
        progress = _Progress(len(indices), cfg.eval_log_interval, "image", log)
        for index in indices:
            image, label = source.load(index)
            matrix.update(inferencer.predict(image), label)
            progress.step()
    matrix.matrix = all_reduce_counts(matrix.matrix, group_size)
    scores = matrix.compute()
    names = class_names(cfg)
    metrics = {
        "mIoU": scores["mIoU"], "mAcc": scores["mAcc"], "aAcc": scores["aAcc"],
        "IoU": dict(zip(names, scores["IoU"].tolist())),
        "Acc": dict(zip(names, scores["Acc"].tolist())),
        "num_images": len(source), "metric_name": "mIoU", "metric": scores["mIoU"],
    }
    for line in format_segmentation_result(metrics, ckpt_name):
        log(line)
    return metrics


def evaluate_classification(net, cfg, rank_id=0, group_size=1, log=print, ckpt_name=""):
    """Top-1 / top-5 accuracy of ``net`` on the val split (see the module docstring)."""
    from src.data import create_dataset

    data = create_dataset(cfg, "val", rank_id, group_size)
    counts = np.zeros(3, dtype=np.int64)  # samples, top-1 hits, top-5 hits
    network = as_network(net)
    with network.inference_mode():
        batches = data.get_dataset_size()
        log(f"eval dataset size:{batches} batches of up to {cfg.eval_batch_size}")
        progress = _Progress(batches, cfg.eval_log_interval, "batch", log)
        for batch in data.create_dict_iterator(num_epochs=1, output_numpy=True):
            top1, top5 = topk_correct(network(batch["image"]), batch["label"], (1, 5))
            counts += (len(batch["label"]), top1, top5)
            progress.step()
    total, top1, top5 = all_reduce_counts(counts, group_size).tolist()
    metrics = {"top1": top1 / total if total else float("nan"),
               "top5": top5 / total if total else float("nan"),
               "num_images": total, "metric_name": "top1"}
    metrics["metric"] = metrics["top1"]
    for line in format_classification_result(metrics, ckpt_name):
        log(line)
    return metrics


def evaluate(net, cfg, rank_id=0, group_size=1, log=print, ckpt_name=""):
    """``evaluate_segmentation`` or ``evaluate_classification`` by ``cfg.model``."""
    from src.models import is_segmentation

    fn = evaluate_segmentation if is_segmentation(cfg) else evaluate_classification
    return fn(net, cfg, rank_id=rank_id, group_size=group_size, log=log, ckpt_name=ckpt_name)
