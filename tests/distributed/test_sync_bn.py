"""The SyncBN rule: SyncBatchNorm only when asked for AND data-parallel over > 1 device."""
import mindspore as ms
import pytest
from mindspore import nn
from mindspore.context import ParallelMode

from src.models import build_model
from src.models.layers import batch_norm_2d
from src.utils.config import load_config
from src.utils.device import data_parallel_size


@pytest.fixture()
def data_parallel():
    """Pretend setup_runtime configured data parallelism over ``n`` ranks (no init())."""
    def configure(n):
        ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL,
                                     gradients_mean=True, device_num=n)
    ms.set_device("CPU")
    yield configure
    ms.reset_auto_parallel_context()


def test_single_device_gets_plain_batchnorm_even_with_sync_bn(data_parallel):
    assert data_parallel_size() == 1
    cfg = load_config("", ["--model=segformer", "--backbone=mit_b0", "--sync_bn=True",
                           "--class_num=3"])
    bn = build_model(cfg).decode_head.linear_fuse.bn
    assert type(bn) is nn.BatchNorm2d            # pylint: disable=unidiomatic-typecheck
    data_parallel(1)                             # msrun --worker_num=1: still one device
    assert data_parallel_size() == 1
    assert type(batch_norm_2d(8, sync_bn=True)) is nn.BatchNorm2d


def test_two_ranks(data_parallel):
    data_parallel(2)
    assert data_parallel_size() == 2
    assert type(batch_norm_2d(8, sync_bn=False)) is nn.BatchNorm2d
    # MindSpore 2.10 has no SyncBatchNorm kernel for CPU: a clear config error up front
    # instead of "Unsupported op [SyncBatchNorm] on CPU" from inside the first step.
    with pytest.raises(ValueError, match="'sync_bn': SyncBatchNorm is not available on "
                                         "device_target 'CPU'"):
        batch_norm_2d(8, sync_bn=True)


def test_sync_bn_is_refused_on_gpu_too(data_parallel):
    """MindSpore 2.10's SyncBatchNorm documents Ascend only."""
    data_parallel(2)
    with pytest.raises(ValueError, match="device_target 'GPU'.*Ascend only"):
        batch_norm_2d(8, sync_bn=True, device_target="GPU")


def test_batchnorm_running_statistics_follow_torch_momentum():
    """The head BatchNorm's running statistics update as torch's BatchNorm2d (momentum 0.1)."""
    import numpy as np
    import torch

    x = np.random.default_rng(0).standard_normal((4, 3, 5, 6)).astype(np.float32) * 2 + 1
    ours = batch_norm_2d(3)
    ours.set_train(True)
    ours(ms.Tensor(x))
    ref = torch.nn.BatchNorm2d(3).train()
    ref(torch.from_numpy(x))
    np.testing.assert_allclose(ours.moving_mean.asnumpy(), ref.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.asnumpy(), ref.running_var.numpy(), rtol=1e-5)
