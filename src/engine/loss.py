"""Training losses, computed in float32 whatever the network's compute dtype.

* Segmentation (SegFormer, Segmenter): mmseg 0.x's cross entropy over pixels, a neutral
  layer of the kernel backend (``SegmentationCrossEntropy`` in ``src/models/backends``):
  logits come at the model's native resolution and are resized bilinearly
  (align_corners=False) to the label size first, as mmseg does; pixels labelled
  ``ignore_label`` (255) count 0; the config's ``loss`` keys set the normalisation
  (``avg_non_ignore``), ``class_weight`` and the OHEM pixel sampler. No scale factor.
* Classification (ViT): cross entropy against soft targets ``[N, C]`` used as given (the
  ImageNet pipeline already applies ``label_smooth_factor`` and mixup/cutmix), or against
  integer labels ``[N]`` smoothed here as ``onehot * (1 - eps) + eps / C`` -- the same as
  ``torch.nn.functional.cross_entropy(..., label_smoothing=eps)``.
"""
import mindspore as ms
from mindspore import nn, ops

from src.models import is_segmentation
from src.models.backends import get_backend
from src.utils.config import ConfigError


class ClassificationCrossEntropy(nn.Cell):
    """``logits [N, C]``, labels ``[N]`` (int) or ``[N, C]`` (soft targets) -> scalar float32."""

    def __init__(self, label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def construct(self, logits, labels):
        logits = logits.astype(ms.float32)
        num_classes = logits.shape[-1]
        if labels.ndim == 1:
            target = ops.one_hot(labels.astype(ms.int32), num_classes,
                                 ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))
            if self.label_smoothing > 0:
                target = target * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        else:
            target = labels.astype(ms.float32)
        return -(target * ops.log_softmax(logits, axis=-1)).sum(-1).mean()


def segmentation_loss_options(cfg):
    """``cfg.loss`` checked, as keyword arguments of ``SegmentationCrossEntropy``."""
    opts = cfg.loss
    if not isinstance(opts.avg_non_ignore, bool):
        raise ValueError(f"config key 'loss.avg_non_ignore': expected True or False, "
                         f"got {opts.avg_non_ignore!r}")
    weights = opts.class_weight
    if weights is not None:
        if (not isinstance(weights, (list, tuple)) or len(weights) != int(cfg.class_num)
                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                           for w in weights)):
            raise ValueError(f"config key 'loss.class_weight': expected a list of class_num "
                             f"({cfg.class_num}) numbers >= 0, got {weights!r}")
        weights = [float(w) for w in weights]
    thresh = opts.ohem_thresh
    if thresh is not None and (isinstance(thresh, bool) or not isinstance(thresh, (int, float))
                               or not 0.0 < thresh <= 1.0):
        raise ValueError(f"config key 'loss.ohem_thresh': expected a probability in (0, 1] "
                         f"or null (OHEM off), got {thresh!r}")
    min_kept = opts.ohem_min_kept
    if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 0:
        raise ValueError(f"config key 'loss.ohem_min_kept': expected an integer >= 0, "
                         f"got {min_kept!r}")
    return {"avg_non_ignore": opts.avg_non_ignore, "class_weight": weights,
            "ohem_thresh": thresh, "ohem_min_kept": min_kept}


def build_loss(cfg):
    if is_segmentation(cfg):
        return get_backend(cfg).SegmentationCrossEntropy(ignore_index=cfg.ignore_label,
                                                         **segmentation_loss_options(cfg))
    smoothing = float(cfg.label_smooth_factor)
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"config key 'label_smooth_factor': expected a value in [0, 1), "
                         f"got {cfg.label_smooth_factor}")
    return ClassificationCrossEntropy(label_smoothing=smoothing)
