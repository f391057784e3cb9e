"""Evaluation metrics: a confusion matrix for segmentation, top-k counts for classification.

Segmentation follows cityscapesscripts' ``evalPixelLevelSemanticLabeling`` (and mmseg):
one confusion matrix accumulated over every pixel of every image at the label's full
resolution; pixels labelled ``ignore_label`` do not count; a class's IoU is
TP / (TP + FP + FN) and is NaN when the class is absent from both prediction and
ground truth, and mIoU / mAcc average over the non-NaN classes only.
"""
import numpy as np


class ConfusionMatrix:
    """``matrix[gt, pred]`` pixel counts over ``num_classes`` classes (int64)."""

    def __init__(self, num_classes, ignore_label=255):
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, label):
        """Add one image. ``pred`` and ``label``: integer arrays of the same shape."""
        pred = np.asarray(pred)
        label = np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        keep = label != self.ignore_label
        gt = label[keep].astype(np.int64)
        pr = pred[keep].astype(np.int64)
        n = self.num_classes
        if gt.size and (gt.min() < 0 or gt.max() >= n):
            bad = gt[(gt < 0) | (gt >= n)][0]
            raise ValueError(f"label value {bad} is outside [0, {n}) and is not the ignore "
                             f"label {self.ignore_label}")
        if pr.size and (pr.min() < 0 or pr.max() >= n):
            bad = pr[(pr < 0) | (pr >= n)][0]
            raise ValueError(f"prediction value {bad} is outside [0, {n})")
        self.matrix += np.bincount(gt * n + pr, minlength=n * n).reshape(n, n)

    def add(self, matrix):
        """Add a confusion matrix counted elsewhere (another rank)."""
        self.matrix += np.asarray(matrix, dtype=np.int64).reshape(self.matrix.shape)

    def compute(self):
        """Per-class IoU and Acc (NaN for absent classes), mIoU, mAcc, aAcc."""
        return segmentation_scores(self.matrix)


def segmentation_scores(matrix):
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    gt_pixels = matrix.sum(axis=1)
    pred_pixels = matrix.sum(axis=0)
    union = gt_pixels + pred_pixels - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_pixels > 0, tp / gt_pixels, np.nan)
    total = matrix.sum()
    return {
        "IoU": iou,
        "Acc": acc,
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
    }


def _nanmean(values):
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


def topk_correct(logits, labels, ks=(1, 5)):
    """Number of samples whose label is among the k highest logits, for each k.

    ``logits``: [N, C]; ``labels``: [N] class indices (or [N, C] one-hot / soft targets,
    whose argmax is used). A k larger than C counts every sample. Ties rank the lower
    class index first (stable sort), so a constant row is not counted right by luck.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)
    order = np.argsort(-logits, axis=1, kind="stable")
    hits = order == labels.reshape(-1, 1)
    return [int(hits[:, :min(k, logits.shape[1])].any(axis=1).sum()) for k in ks]
