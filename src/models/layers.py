"""Building blocks shared by the model families that are the same on every backend."""
import mindspore as ms
from mindspore import nn, ops

from src.utils.config import ConfigError
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
        # the scale folded into the [B, 1, ...] mask, tiled to x's shape: MindSpore 2.10's CPU
        # Div (``/``) and broadcasting Mul keep 16 B per output element for the graph's lifetime
        mask = mask * (1.0 / self.keep_prob)
        return x * ops.tile(mask.astype(x.dtype), (1,) + x.shape[1:])


# MindSpore's convention: running = momentum * running + (1 - momentum) * batch, i.e. 0.9 here
# is torch's momentum 0.1 (upstream's BatchNorm/SyncBN default). Passed explicitly: MindSpore
# 2.10 announces that both layers' default becomes 0.1 in a later release.
BATCH_NORM_MOMENTUM = 0.9


def batch_norm_2d(num_features, sync_bn=False, device_target="CPU"):
    """BatchNorm over NCHW features: ``nn.SyncBatchNorm`` when ``sync_bn`` is set *and*
    training runs data-parallel on more than one device, plain ``nn.BatchNorm2d`` otherwise.

    The one place this rule lives. SyncBN on a single device only adds communication (and
    fails without ``init()``), the upstream pitfall of configs that hard-code SyncBN.
    Both layers have the same parameter names, so checkpoints move freely between them.
    """
    if not sync_bn or data_parallel_size() == 1:
        return nn.BatchNorm2d(num_features, momentum=BATCH_NORM_MOMENTUM)
    if device_target != "Ascend":
        # MindSpore 2.10 documents SyncBatchNorm for Ascend only; on CPU it has no kernel
        # ("Unsupported op [SyncBatchNorm]").
        raise ConfigError(f"config key 'sync_bn': SyncBatchNorm is not available on device_target "
                          f"'{device_target}' (MindSpore 2.10 supports it on Ascend only); "
                          "set --sync_bn=False")
    return nn.SyncBatchNorm(num_features, momentum=BATCH_NORM_MOMENTUM)
