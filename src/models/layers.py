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
