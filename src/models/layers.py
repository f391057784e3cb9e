"""Building blocks shared by the model families (MiT, ViT, Segmenter)."""
import mindspore as ms
from mindspore import nn, ops


class DropPath(nn.Cell):
    """Stochastic depth per sample (timm's drop_path): identity at eval or p == 0."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.keep_prob = 1.0 - self.drop_prob

    def construct(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = ops.floor(self.keep_prob + ops.uniform(shape, ms.Tensor(0.0, x.dtype),
                                                      ms.Tensor(1.0, x.dtype), dtype=x.dtype))
        return x / self.keep_prob * mask


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with PyTorch parameter names (``weight``, ``bias``).

    Upstream checkpoints name these ``weight``/``bias`` (``nn.LayerNorm`` here would say
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
        dtype = x.dtype
        y, _, _ = self.layer_norm(x.astype(ms.float32), self.weight, self.bias)
        return y.astype(dtype)
