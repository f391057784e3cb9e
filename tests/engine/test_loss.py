"""Losses against torch.nn.functional.cross_entropy (values and gradients)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import mindspore as ms
from mindspore import nn

from src.engine.loss import ClassificationCrossEntropy, build_loss
from src.models.backends import load_backend
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


class GraphValueAndGrad(nn.Cell):
    """The loss and its gradient w.r.t. the logits compiled as one GRAPH, as in training."""

    def __init__(self, loss_fn):
        super().__init__()
        self.grad_fn = ms.value_and_grad(loss_fn, grad_position=0)

    def construct(self, logits, labels):
        return self.grad_fn(logits, labels)


def seg_value_and_grad(mode, kernel_backend, logits, labels):
    loss_fn = load_backend(kernel_backend).SegmentationCrossEntropy(255)
    if mode == "PYNATIVE":
        return ms_value_and_grad(loss_fn, logits, labels)
    ms.set_context(mode=ms.GRAPH_MODE)  # the autouse fixture restores PYNATIVE
    value, grad = GraphValueAndGrad(loss_fn)(ms.Tensor(logits), ms.Tensor(labels))
    return float(value.asnumpy()), grad.asnumpy()


def torch_seg_value_and_grad(logits, labels):
    size = labels.shape[-2:]
    return torch_value_and_grad(lambda t: F.cross_entropy(
        F.interpolate(t, size=size, mode="bilinear", align_corners=False),
        torch.tensor(labels, dtype=torch.long), ignore_index=255), logits)


@pytest.mark.parametrize("mode", ["PYNATIVE", "GRAPH"])
@pytest.mark.parametrize("logits_hw, labels_hw", [
    ((6, 7), (13, 17)),   # non-integer factors, odd sizes
    ((8, 8), (32, 32)),   # 4x as SegFormer's 1/4-resolution logits
    ((5, 6), (15, 12)),   # 3x / 2x
    ((1, 2), (4, 6)),     # a one-pixel axis
    ((8, 6), (4, 3)),     # downsampling
    ((9, 9), (9, 9)),     # logits at the label size (Segmenter): no resize
])
def test_segmentation_ce_value_and_grad_like_torch(mode, kernel_backend, logits_hw, labels_hw):
    # torch: F.interpolate(bilinear, align_corners=False) + F.cross_entropy(ignore_index=255)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5) + logits_hw).astype(np.float32) * 3
    labels = rng.integers(0, 5, (3,) + labels_hw).astype(np.int32)
    labels[0, :2] = 255      # some ignored pixels
    labels[1] = 255          # a batch element without any valid pixel
    labels[2, :, -1:] = 255
    ours = seg_value_and_grad(mode, kernel_backend, logits, labels)
    ref = torch_seg_value_and_grad(logits, labels)
    assert ours[0] == pytest.approx(ref[0], rel=1e-5)
    # atol: softmax - onehot cancels to ~0 at some pixels; float32 rounding there (either
    # path) is ~1e-6 of the largest gradient entry
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-5 * np.abs(ref[1]).max())
    assert not ours[1][1].any()  # the all-ignored element gets no gradient


@pytest.mark.parametrize("mode", ["PYNATIVE", "GRAPH"])
def test_segmentation_ce_large_logits_like_torch(mode, kernel_backend):
    # the per-pixel max shift keeps exp in range: logits of +-1e4 give torch's finite values
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((2, 4, 4, 4)).astype(np.float32) * 1e4
    labels = rng.integers(0, 4, (2, 16, 16)).astype(np.int32)
    labels[1, 3:] = 255
    ours = seg_value_and_grad(mode, kernel_backend, logits, labels)
    ref = torch_seg_value_and_grad(logits, labels)
    assert np.isfinite(ours[0]) and ours[0] == pytest.approx(ref[0], rel=1e-5)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-5 * np.abs(ref[1]).max())


def test_segmentation_ce_same_size_fp16_logits_and_all_ignored(kernel_backend):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((1, 3, 4, 4)).astype(np.float16)
    labels = rng.integers(0, 3, (1, 4, 4)).astype(np.int32)
    loss_cls = load_backend(kernel_backend).SegmentationCrossEntropy
    loss = loss_cls(255)(ms.Tensor(logits), ms.Tensor(labels))
    assert loss.dtype == ms.float32  # computed in float32 whatever the compute dtype
    ref = F.cross_entropy(torch.tensor(logits.astype(np.float32)), torch.tensor(labels, dtype=torch.long))
    assert float(loss.asnumpy()) == pytest.approx(float(ref), rel=1e-5)
    # no valid pixel: 0 with zero gradients (torch would give NaN), so no spurious overflow
    value, grad = ms_value_and_grad(loss_cls(255), logits.astype(np.float32),
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


def test_build_loss_by_model_family_on_the_configured_backend(kernel_backend):
    loss = build_loss(load_config("", ["--model=segformer", f"--kernel_backend={kernel_backend}"]))
    assert type(loss) is load_backend(kernel_backend).SegmentationCrossEntropy
    assert isinstance(build_loss(load_config("", ["--model=vit"])), ClassificationCrossEntropy)
    with pytest.raises(ValueError, match="label_smooth_factor"):
        build_loss(load_config("", ["--model=vit", "--label_smooth_factor=1.5"]))


def loss_case():
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((2, 4, 5, 6)) * 2).astype(np.float32)
    labels = rng.integers(0, 4, (2, 10, 12)).astype(np.int32)
    labels[0, :3] = 255
    labels[1, :, :2] = 255
    return logits, labels


def torch_mmseg_loss(logits, labels, avg_non_ignore, class_weight=None, ohem=None):
    """mmseg 0.x's decode-head loss written in torch: OHEMPixelSampler.sample (thresh form)
    then CrossEntropyLoss(class_weight, avg_non_ignore) with reduction 'mean'."""
    def fn(t):
        seg_logit = F.interpolate(t, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        label = torch.tensor(labels, dtype=torch.long)
        valid = label != 255
        seg_weight = None
        if ohem is not None:
            thresh, min_kept = ohem
            with torch.no_grad():
                seg_weight = seg_logit.new_zeros(label.size())
                valid_seg_weight = seg_weight[valid]
                prob = F.softmax(seg_logit, dim=1)
                tmp = label.clone().unsqueeze(1)
                tmp[tmp == 255] = 0
                prob = prob.gather(1, tmp).squeeze(1)
                sort_prob, _ = prob[valid].sort()
                min_threshold = (sort_prob[min(min_kept * label.size(0), sort_prob.numel() - 1)]
                                 if sort_prob.numel() > 0 else 0.0)
                threshold = max(min_threshold, thresh)
                valid_seg_weight[prob[valid] < threshold] = 1.0
                seg_weight[valid] = valid_seg_weight
        weight = None if class_weight is None else torch.tensor(class_weight)
        loss = F.cross_entropy(seg_logit, label, weight=weight, reduction="none", ignore_index=255)
        if seg_weight is not None:
            loss = loss * seg_weight
        if avg_non_ignore:
            return loss.sum() / (label.numel() - (label == 255).sum().item())
        return loss.mean()
    return fn


@pytest.mark.parametrize("mode", ["PYNATIVE", "GRAPH"])
@pytest.mark.parametrize("avg_non_ignore,class_weight,ohem", [
    (False, None, None),                        # mmseg 0.x default: over all pixels
    (True, [0.5, 2.0, 1.0, 0.0], None),
    (False, [0.5, 2.0, 1.0, 3.0], (0.3, 5)),    # threshold decides
    (True, None, (0.001, 20)),                  # min_kept decides
])
def test_segmentation_ce_options_match_mmseg(mode, kernel_backend, avg_non_ignore, class_weight, ohem):
    logits, labels = loss_case()
    options = {"avg_non_ignore": avg_non_ignore, "class_weight": class_weight,
               "ohem_thresh": None if ohem is None else ohem[0],
               "ohem_min_kept": 100000 if ohem is None else ohem[1]}
    loss_fn = load_backend(kernel_backend).SegmentationCrossEntropy(255, **options)
    if mode == "PYNATIVE":
        ours = ms_value_and_grad(loss_fn, logits, labels)
    else:
        ms.set_context(mode=ms.GRAPH_MODE)  # the autouse fixture restores PYNATIVE
        value, grad = GraphValueAndGrad(loss_fn)(ms.Tensor(logits), ms.Tensor(labels))
        ours = float(value.asnumpy()), grad.asnumpy()
    ref = torch_value_and_grad(torch_mmseg_loss(logits, labels, avg_non_ignore, class_weight, ohem),
                               logits)
    assert ours[0] == pytest.approx(ref[0], rel=1e-5)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-4, atol=1e-5 * np.abs(ref[1]).max())


def test_ohem_keeps_what_the_options_say():
    """Guards the parity test above against a degenerate draw: the threshold case keeps more
    than min_kept pixels per image, the min_kept case exactly min_kept * N of the valid ones."""
    logits, labels = loss_case()
    logits = ms.ops.interpolate(ms.Tensor(logits), size=labels.shape[-2:], mode="bilinear",
                                align_corners=False)
    ref = load_backend("reference")
    for thresh, min_kept, check in ((0.3, 5, lambda n: n > 10), (0.001, 20, lambda n: n == 40)):
        loss_fn = ref.SegmentationCrossEntropy(255, ohem_thresh=thresh, ohem_min_kept=min_kept)
        nll = -ms.ops.log_softmax(logits, axis=1)
        target = ms.Tensor(np.where(labels == 255, 0, labels))
        picked = ms.ops.gather_elements(nll, 1, target.expand_dims(1)).squeeze(1)
        kept = loss_fn.ohem_keep(picked, ms.Tensor(labels != 255)).asnumpy()
        assert check(int(kept.sum())) and not kept[labels == 255].any()


@pytest.mark.parametrize("key,value,match", [
    ("class_weight", [1.0, 2.0], r"'loss.class_weight'.*class_num \(19\)"),
    ("class_weight", [-1.0] * 19, r"'loss.class_weight'.*>= 0"),
    ("ohem_thresh", 1.5, r"'loss.ohem_thresh'.*\(0, 1\]"),
    ("ohem_min_kept", -3, r"'loss.ohem_min_kept'.*>= 0"),
])
def test_bad_loss_options_are_clear_errors(key, value, match):
    cfg = load_config("", ["--model=segformer"], values={"loss": {key: value}})
    with pytest.raises(ValueError, match=match):
        build_loss(cfg)


def test_recipes_set_their_upstream_loss_normalisation():
    assert load_config("config/segformer.b0.1024x1024.city.yaml").loss.avg_non_ignore is False
    assert load_config("config/segmenter.tiny.mask.768x768.city.yaml").loss.avg_non_ignore is True
