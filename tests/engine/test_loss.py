"""Losses against torch.nn.functional.cross_entropy (values and gradients)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import mindspore as ms

from src.engine.loss import ClassificationCrossEntropy, SegmentationCrossEntropy, build_loss
from src.utils.config import load_config
from tests.engine.train_helpers import pynative_mode  # noqa: F401 (autouse)



def ms_value_and_grad(loss_fn, logits, labels):
    value, grad = ms.value_and_grad(loss_fn, grad_position=0)(ms.Tensor(logits), ms.Tensor(labels))
    return float(value.asnumpy()), grad.asnumpy()


def torch_value_and_grad(fn, logits):
    t = torch.tensor(logits, requires_grad=True)
    value = fn(t)
    value.backward()
    return float(value.detach()), t.grad.numpy()


def test_segmentation_ce_resizes_logits_and_ignores_255_like_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 6, 7)).astype(np.float32) * 3  # native 1/4-ish resolution
    labels = rng.integers(0, 5, (2, 13, 17)).astype(np.int32)           # label size, odd on purpose
    labels[0, :4] = 255
    labels[1, :, :3] = 255
    ours = ms_value_and_grad(SegmentationCrossEntropy(255), logits, labels)
    ref = torch_value_and_grad(lambda t: F.cross_entropy(
        F.interpolate(t, size=(13, 17), mode="bilinear", align_corners=False),
        torch.tensor(labels, dtype=torch.long), ignore_index=255), logits)
    assert ours[0] == pytest.approx(ref[0], rel=1e-5)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-7)


def test_segmentation_ce_same_size_fp16_logits_and_all_ignored():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((1, 3, 4, 4)).astype(np.float16)
    labels = rng.integers(0, 3, (1, 4, 4)).astype(np.int32)
    loss = SegmentationCrossEntropy(255)(ms.Tensor(logits), ms.Tensor(labels))
    assert loss.dtype == ms.float32  # computed in float32 whatever the compute dtype
    ref = F.cross_entropy(torch.tensor(logits.astype(np.float32)), torch.tensor(labels, dtype=torch.long))
    assert float(loss.asnumpy()) == pytest.approx(float(ref), rel=1e-5)
    # no valid pixel: 0 with zero gradients (torch would give NaN), so no spurious overflow
    value, grad = ms_value_and_grad(SegmentationCrossEntropy(255), logits.astype(np.float32),
                                    np.full((1, 4, 4), 255, np.int32))
    assert value == 0.0 and not grad.any()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_classification_ce_integer_labels_with_label_smoothing_like_torch(smoothing):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 10)).astype(np.float32) * 2
    labels = rng.integers(0, 10, (6,)).astype(np.int32)
    ours = ms_value_and_grad(ClassificationCrossEntropy(smoothing), logits, labels)
    ref = torch_value_and_grad(lambda t: F.cross_entropy(
        t, torch.tensor(labels, dtype=torch.long), label_smoothing=smoothing), logits)
    assert ours[0] == pytest.approx(ref[0], rel=1e-5)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-7)


def test_classification_ce_soft_targets_used_as_given_like_torch():
    # mixup / smoothed one-hot targets come from the data pipeline: no second smoothing
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 5)).astype(np.float32)
    targets = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
    ours = ms_value_and_grad(ClassificationCrossEntropy(0.1), logits, targets)
    ref = torch_value_and_grad(lambda t: F.cross_entropy(t, torch.tensor(targets)), logits)
    assert ours[0] == pytest.approx(ref[0], rel=1e-5)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-7)


def test_build_loss_by_model_family():
    assert isinstance(build_loss(load_config("", ["--model=segformer"])), SegmentationCrossEntropy)
    assert isinstance(build_loss(load_config("", ["--model=vit"])), ClassificationCrossEntropy)
    with pytest.raises(ValueError, match="label_smooth_factor"):
        build_loss(load_config("", ["--model=vit", "--label_smooth_factor=1.5"]))
