"""The reference backend: the neutral layers in standard MindSpore operators only.

This is the graph that Ascend and GPU run and that every export (MINDIR, ONNX, AIR)
contains: ``Conv2D`` convolutions, the ``LayerNorm`` primitive, exact (erf) GELU,
``Softmax``, ``BatchMatMul`` and ``ResizeBilinearV2``. It is written the way the papers
describe the layers; ``cpu.py`` computes the same functions faster on a CPU.

Every layer here is the interface of its neutral layer: the cpu backend's layer of the same
name takes and returns the same tensors and holds the same parameters under the same names.
Layouts: ``tokens`` are ``[B, H*W, C]`` (row-major over the map), ``map`` is ``[B, C, H, W]``.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from src.models import stochastic

NAME = "reference"
# The SegFormer head runs its layers one by one, as published (see segformer_head.py).
FOLD_DECODE_HEAD = False


def tokens_to_map(x, height, width):
    """[B, H*W, C] -> [B, C, H, W]."""
    return x.transpose(0, 2, 1).reshape(x.shape[0], x.shape[2], height, width)


def map_to_tokens(x):
    """[B, C, H, W] -> [B, H*W, C]."""
    return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with PyTorch parameter names (``weight``, ``bias``).

    Upstream checkpoints name these ``weight``/``bias`` (``nn.LayerNorm`` would say
    ``gamma``/``beta``), so conversion tables stay 1:1. Computed in float32 whatever the
    input dtype: normalisation statistics are not safe in fp16 under mixed precision.
    """

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        self.weight = ms.Parameter(ops.ones((normalized_shape,), ms.float32), name="weight")
        self.bias = ms.Parameter(ops.zeros((normalized_shape,), ms.float32), name="bias")
        self.eps = eps
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        y, _, _ = self.layer_norm(x.astype(ms.float32), self.weight, self.bias)
        return y.astype(x.dtype)


class GELU(nn.GELU):
    """Exact GELU, ``0.5 * x * (1 + erf(x / sqrt(2)))`` (upstream's ``nn.GELU()``)."""

    def __init__(self):
        super().__init__(approximate=False)


class PatchEmbedConv(nn.Conv2d):
    """A patch-embedding convolution (``nn.Conv2d`` parameters and init) whose output is
    tokens: ``[B, C, H, W]`` -> ``([B, h*w, out_channels], h, w)``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding=0, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad",
                         padding=padding, has_bias=True, **kwargs)

    def construct(self, x):
        x = super().construct(x)
        height, width = x.shape[2], x.shape[3]
        return map_to_tokens(x), height, width


class SpatialReductionConv(nn.Conv2d):
    """MiT's spatial reduction: a conv with kernel = stride = ``ratio`` on tokens seen as a
    map; ``([B, H*W, C], H, W)`` -> ``[B, (H // r) * (W // r), C]``."""

    def __init__(self, channels, ratio, **kwargs):
        super().__init__(channels, channels, ratio, stride=ratio, pad_mode="valid",
                         has_bias=True, **kwargs)

    def construct(self, x, height, width):
        return map_to_tokens(super().construct(tokens_to_map(x, height, width)))


class DepthwiseConv3x3(nn.Conv2d):
    """Mix-FFN's 3x3 depthwise conv (stride 1, padding 1) on tokens seen as a map;
    ``([B, H*W, C], H, W)`` -> ``[B, H*W, C]``."""

    def __init__(self, channels, **kwargs):
        super().__init__(channels, channels, 3, stride=1, pad_mode="pad", padding=1,
                         group=channels, has_bias=True, **kwargs)

    def construct(self, x, height, width):
        return map_to_tokens(super().construct(tokens_to_map(x, height, width)))


class TokensToMap(nn.Cell):
    """``([B, H*W, C], H, W)`` -> ``[B, C, H, W]`` (MiT's stage outputs)."""

    def __init__(self):  # amp O1's mindspore.rewrite needs every Cell to define one
        super().__init__()

    def construct(self, x, height, width):
        return tokens_to_map(x, height, width)


class LinearGELU(nn.Dense):
    """``gelu(x @ W^T + b)``: a Linear followed by exact GELU (the ViT MLP's ``fc1`` and its
    activation; ``nn.Dense`` parameters, so the checkpoint names stay ``fc1.weight/bias``)."""

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        self.gelu = GELU()

    def construct(self, x):
        return self.gelu(super().construct(x))


class Attention(nn.Cell):
    """Multi-head scaled dot-product attention with keys and values from a fused projection.

    ``q [B, N, C]``, ``kv [B, M, 2C]`` (keys in the first C channels, values in the last C, as
    MiT's ``kv`` Linear) -> ``[B, N, C]``: per head softmax(q k^T / sqrt(d)) v, dropout on the
    attention probabilities. The softmax runs in float32 whatever the compute dtype (mixed
    precision), as upstream. The 1/sqrt(d) scale multiplies q ([N, d]) rather than the
    scores ([N, M]).
    """

    def __init__(self, num_heads, head_dim, attn_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.attn_drop = stochastic.Dropout(p=attn_drop)
        self.scores_matmul = ops.BatchMatMul(transpose_b=True)
        self.values_matmul = ops.BatchMatMul()
        self.softmax = ops.Softmax(axis=-1)

    def split_heads(self, x):
        """``[B, N, heads * d]`` -> ``[B, heads, N, d]``."""
        return x.reshape(x.shape[0], -1, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def attend(self, q, k, v):
        """``q, k, v [B, N or M, C]`` -> ``[B, N, C]``."""
        batch, tokens, channels = q.shape
        q, k, v = self.split_heads(q * self.scale), self.split_heads(k), self.split_heads(v)
        attn = self.scores_matmul(q, k)
        attn = self.softmax(attn.astype(ms.float32)).astype(v.dtype)
        x = self.values_matmul(self.attn_drop(attn), v)
        return x.transpose(0, 2, 1, 3).reshape(batch, tokens, channels)

    def construct(self, q, kv):
        channels = q.shape[-1]
        return self.attend(q, kv[:, :, :channels], kv[:, :, channels:])


class SelfAttention(Attention):
    """As ``Attention`` with q, k and v from one fused projection: ``qkv [B, N, 3C]`` (q, k, v
    stacked in that order, as the ViT's ``qkv`` Linear) -> ``[B, N, C]``."""

    def construct(self, qkv):
        channels = qkv.shape[-1] // 3
        return self.attend(qkv[:, :, :channels], qkv[:, :, channels:2 * channels],
                           qkv[:, :, 2 * channels:])


class DropPath(stochastic.StochasticCell):
    """Stochastic depth per sample (timm's ``drop_path``): each sample's residual branch is
    kept with probability ``keep_prob`` and then scaled by ``1 / keep_prob``, or zeroed;
    identity at eval or ``drop_prob == 0``.

    The per-sample draw is ``stochastic.uniform`` (a function of the seed, the global step
    and the layer, in integer ops MindSpore documents for Ascend, GPU and CPU), so a resumed
    run draws what the uninterrupted run drew; ``ops.uniform`` is documented for GPU and CPU
    only, and the Dropout primitive's draws restart in a new process. Drawn in float32 (the
    mask of an amp float16 activation is cast), broadcast over the sample.
    """

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.keep_prob = 1.0 - self.drop_prob

    def sample_scale(self, x):
        """``1 / keep_prob`` or 0 per sample, float32, shaped to multiply ``x``."""
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return self.keep_mask(shape, self.keep_prob) * (1.0 / self.keep_prob)

    def construct(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        return x * self.sample_scale(x).astype(x.dtype)


class UpsampleAdd(nn.Cell):
    """``base + resize(x)``: bilinear (align_corners=False) resize of ``x [B, C, h, w]`` to the
    size of ``base [B, C, H, W]``. The size is a graph value, so a MINDIR exported with a
    dynamic H/W resizes to any input size."""

    def __init__(self):
        super().__init__()
        self.resize = ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=True)

    def construct(self, x, base):
        return base + self.resize(x, ops.shape(base)[2:])


class SegmentationCrossEntropy(nn.Cell):
    """``logits [N, C, h, w]`` (any float dtype), ``labels [N, H, W]`` int -> scalar float32.

    mmseg 0.x's ``CrossEntropyLoss`` (with its ``OHEMPixelSampler``): the logits are resized
    bilinearly (align_corners=False) to the label size; each pixel's loss is ``-log p(label)``,
    times ``class_weight[label]`` if given, times the OHEM weight (0/1) if ``ohem_thresh``
    is set; pixels labelled ``ignore_index`` count 0. The sum is divided by the number of
    non-ignored pixels (``avg_non_ignore``) or by all pixels of the batch (mmseg 0.x's
    default), whatever the weights. A batch without any valid pixel gives 0 (torch gives NaN
    there), so it never trips the overflow check.

    OHEM (``ohem_thresh``, ``ohem_min_kept``): a valid pixel is kept if the softmax
    probability of its label is below ``max(thresh, p_k)``, ``p_k`` the k-th smallest such
    probability of the batch, k = ``min(min_kept * N, valid - 1)``: the hard pixels, at least
    ``min_kept`` per image.
    """

    def __init__(self, ignore_index=255, avg_non_ignore=True, class_weight=None,
                 ohem_thresh=None, ohem_min_kept=100000):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.avg_non_ignore = bool(avg_non_ignore)
        self.class_weight = (None if class_weight is None
                             else ms.Tensor(np.asarray(class_weight, np.float32)))
        self.ohem = ohem_thresh is not None
        self.ohem_thresh = float(ohem_thresh) if self.ohem else 0.0
        self.ohem_min_kept = int(ohem_min_kept)

    def ohem_keep(self, nll, valid):
        """mmseg's OHEMPixelSampler weights (0/1, float32) from the per-pixel ``-log p``."""
        prob = ops.exp(-ops.stop_gradient(nll)).reshape(-1)
        valid = valid.reshape(-1)
        sorted_prob, _ = ops.sort(ops.where(valid, prob, ops.full_like(prob, 2.0)))
        num_valid = valid.astype(ms.int32).sum()
        batch_kept = self.ohem_min_kept * nll.shape[0]
        k = ops.maximum(ops.minimum(num_valid - 1, batch_kept), 0)
        kth = ops.gather(sorted_prob, k.reshape(1), 0).reshape(())
        threshold = ops.maximum(ops.where(num_valid > 0, kth, ops.zeros_like(kth)),
                                self.ohem_thresh)
        keep = ops.logical_and(prob < threshold, valid)
        return keep.astype(ms.float32).reshape(nll.shape)

    def reduce(self, nll, target, valid):
        """The loss from per-pixel ``nll = -log p(target)`` (any shape; ``target`` holds 0
        at ignored pixels, ``valid`` is False there)."""
        weight = valid.astype(ms.float32)
        if self.class_weight is not None:
            weight = weight * ops.gather(self.class_weight, target.reshape(-1), 0).reshape(target.shape)
        if self.ohem:
            weight = weight * self.ohem_keep(nll, valid)
        total = (nll * weight).sum()
        if self.avg_non_ignore:
            return total / ops.maximum(valid.astype(ms.float32).sum(), 1.0)
        return total / float(valid.size)

    def construct(self, logits, labels):
        logits = logits.astype(ms.float32)
        labels = labels.astype(ms.int32)
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = ops.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                                     align_corners=False)
        valid = labels != self.ignore_index
        target = ops.where(valid, labels, ops.zeros_like(labels))
        log_prob = ops.log_softmax(logits, axis=1)
        picked = ops.gather_elements(log_prob, 1, target.expand_dims(1)).squeeze(1)
        return self.reduce(-picked, target, valid)
