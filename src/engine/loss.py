"""Training losses, computed in float32 whatever the network's compute dtype.

* Segmentation (SegFormer, Segmenter): plain cross entropy over pixels, a neutral layer of
  the kernel backend (``SegmentationCrossEntropy`` in ``src/models/backends``): logits come
  at the model's native resolution and are resized bilinearly (align_corners=False) to the
  label size first, as mmseg does; pixels labelled ``ignore_label`` (255) are left out and
  the mean is over the remaining pixels. No class weights, no scale factor (the zoo
  SegFormer multiplied by 0.4 and used hard-coded weights).
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


def build_loss(cfg):
    if is_segmentation(cfg):
        return get_backend(cfg).SegmentationCrossEntropy(ignore_index=cfg.ignore_label)
    smoothing = float(cfg.label_smooth_factor)
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"config key 'label_smooth_factor': expected a value in [0, 1), "
                         f"got {cfg.label_smooth_factor}")
    return ClassificationCrossEntropy(label_smoothing=smoothing)
