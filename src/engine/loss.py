"""Training losses, computed in float32 whatever the network's compute dtype.

* Segmentation (SegFormer, Segmenter): plain cross entropy over pixels. Logits come at the
  model's native resolution and are resized bilinearly (align_corners=False) to the label
  size first, as mmseg does; pixels labelled ``ignore_label`` (255) are left out and the
  mean is over the remaining pixels. No class weights, no scale factor (the zoo SegFormer
  multiplied by 0.4 and used hard-coded weights). A batch without any valid pixel gives 0
  (torch gives NaN there), so it never trips the overflow check.
  On CPU the same function is composed from cheap ops (see ``SegmentationCrossEntropy``):
  MindSpore 2.10's LogSoftmaxGrad over the class axis and the resize were ~0.6 s of a
  ~3.7 s SegFormer-B0 train step at 2x512x512.
* Classification (ViT): cross entropy against soft targets ``[N, C]`` used as given (the
  ImageNet pipeline already applies ``label_smooth_factor`` and mixup/cutmix), or against
  integer labels ``[N]`` smoothed here as ``onehot * (1 - eps) + eps / C`` -- the same as
  ``torch.nn.functional.cross_entropy(..., label_smoothing=eps)``.
"""
import mindspore as ms
from mindspore import nn, ops

from src.models import is_segmentation
from src.models.cpu_kernels import kernels_enabled, resize_bilinear_op


def _class_max(z):
    """Max over axis 1 of ``[B, C, L]`` by halving (overlapping halves are harmless for a
    max): ~2x faster than ReduceMax over a middle axis on CPU."""
    b, c, length = z.shape
    while c > 1:
        half = (c + 1) // 2
        z = ops.maximum(ops.slice(z, (0, 0, 0), (b, half, length)),
                        ops.slice(z, (0, c - half, 0), (b, half, length)))
        c = half
    return z


class _Log(nn.Cell):
    """``ops.log`` whose gradient ``dout / x`` is the RealDiv primitive. The built-in gradient
    divides with Div, whose MindSpore 2.10 CPU kernel keeps two 8-byte index tables per element
    for the graph's lifetime even for same-shape operands (16 B per label pixel here); RealDiv
    computes the same float32 quotient without them."""

    def __init__(self):
        super().__init__()
        self.real_div = ops.RealDiv()

    def construct(self, x):
        return ops.log(x)

    def bprop(self, x, out, dout):
        return (self.real_div(dout, x),)


class SegmentationCrossEntropy(nn.Cell):
    """``logits [N, C, h, w]`` (any float dtype), ``labels [N, H, W]`` int -> scalar float32.

    On CPU the loss is composed from ops with fast CPU kernels (same value and gradient up
    to float32 rounding): log-sum-exp written out over the class axis (LogSoftmaxGrad over
    axis 1 of [2, 19, 512, 512] took ~0.5 s) with the class sum as a matmul (ReduceSum over a
    middle axis is ~3x slower), and the upsampling by the custom bilinear kernel
    (``cpu_kernels.resize_bilinear_op``; MindSpore's ResizeBilinearGrad is slow on CPU).
    Ascend/GPU run the fused LogSoftmax and ResizeBilinear.
    """

    def __init__(self, ignore_index=255):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.composed = ms.get_context("device_target") == "CPU"
        self.log = _Log()
        self.use_cpu_kernel = kernels_enabled()
        if self.use_cpu_kernel:
            self.resize = resize_bilinear_op()

    def construct(self, logits, labels):
        logits = logits.astype(ms.float32)
        labels = labels.astype(ms.int32)
        if not self.composed:
            return self._fused(logits, labels)
        if logits.shape[-2:] != labels.shape[-2:]:
            if self.use_cpu_kernel:
                logits = self.resize(logits, labels)
            else:
                logits = ops.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                                         align_corners=False)
        n, c, height, width = logits.shape
        return self._composed(logits.reshape(n, c, height * width),
                              labels.reshape(n, 1, height * width))

    def _composed(self, logits, labels):
        """``logits [B, C, L]``, ``labels [B, 1, L]``: -log_softmax at the label, mean over
        valid pixels, as log(sum(exp(z - max))) - (z - max)[label]."""
        valid = labels != self.ignore_index
        target = ops.where(valid, labels, ops.zeros_like(labels))
        weight = valid.astype(ms.float32)
        # any per-pixel shift gives the same value and gradient; the max keeps exp in range
        # tiled, not broadcast: a broadcasting Sub keeps a 16 B/element index table on CPU
        shift = ops.tile(ops.stop_gradient(_class_max(logits)), (1, logits.shape[1], 1))
        shifted = logits - shift
        sum_exp = ops.matmul(ops.ones((1, logits.shape[1]), ms.float32), ops.exp(shifted))
        picked = ops.gather_elements(shifted, 1, target)
        return ((self.log(sum_exp) - picked) * weight).sum() / ops.maximum(weight.sum(), 1.0)

    def _fused(self, logits, labels):
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = ops.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                                     align_corners=False)
        valid = labels != self.ignore_index
        target = ops.where(valid, labels, ops.zeros_like(labels))
        log_prob = ops.log_softmax(logits, axis=1)
        picked = ops.gather_elements(log_prob, 1, target.expand_dims(1)).squeeze(1)
        weight = valid.astype(ms.float32)
        return -(picked * weight).sum() / ops.maximum(weight.sum(), 1.0)


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
        return SegmentationCrossEntropy(ignore_index=cfg.ignore_label)
    smoothing = float(cfg.label_smooth_factor)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"config key 'label_smooth_factor': expected a value in [0, 1), "
                         f"got {cfg.label_smooth_factor}")
    return ClassificationCrossEntropy(label_smoothing=smoothing)
