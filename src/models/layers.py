"""Building blocks shared by the model families that are the same on every backend."""
from mindspore import nn

from src.utils.config import ConfigError
from src.utils.device import data_parallel_size


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
