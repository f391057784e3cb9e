"""Building blocks shared by the model families (MiT, ViT, Segmenter)."""
import mindspore as ms
from mindspore import nn, ops

from src.utils.device import data_parallel_size


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
        # drawn in float32: the CPU kernel of ops.uniform has no float16 (amp O2/O3 training)
        mask = ops.floor(self.keep_prob + ops.uniform(shape, ms.Tensor(0.0, ms.float32),
                                                      ms.Tensor(1.0, ms.float32), dtype=ms.float32))
        return x / self.keep_prob * mask.astype(x.dtype)


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


def batch_norm_2d(num_features, sync_bn=False):
    """BatchNorm over NCHW features: ``nn.SyncBatchNorm`` when ``sync_bn`` is set *and*
    training runs data-parallel on more than one device, plain ``nn.BatchNorm2d`` otherwise.

    The one place this rule lives. SyncBN on a single device only adds communication (and
    fails without ``init()``), the upstream pitfall of configs that hard-code SyncBN.
    Both layers have the same parameter names, so checkpoints move freely between them.
    """
    if not sync_bn or data_parallel_size() == 1:
        return nn.BatchNorm2d(num_features)
    target = ms.get_context("device_target")
    if target not in ("Ascend", "GPU"):
        # MindSpore 2.10 has no SyncBatchNorm kernel on CPU ("Unsupported op [SyncBatchNorm]").
        raise ValueError(f"config key 'sync_bn': SyncBatchNorm is not available on device_target "
                         f"'{target}' (MindSpore has kernels for Ascend and GPU only); "
                         "set --sync_bn=False")
    return nn.SyncBatchNorm(num_features)
