"""Inference: window placement, count map, slide == whole where it must, resize semantics,
multi-scale + flip, and the whole test path against a PyTorch re-implementation of
mmseg's EncoderDecoder.slide_inference / whole_inference / aug_test."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import mindspore as ms
from mindspore import nn

from src.engine.inference import (SegInferencer, coverage_count, resize_logits, scaled_size,
                                  slide_windows)
from src.utils.config import load_config

ms.set_context(mode=ms.PYNATIVE_MODE)


def mmseg_windows(h_img, w_img, crop, stride):
    """mmseg v0.x ``slide_inference`` loop, written as upstream writes it."""
    h_crop, w_crop = crop
    h_stride, w_stride = stride
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            out.append((y1, y2, x1, x2))
    return out


def make_cfg(**overrides):
    cfg = load_config("", [f"--{k}={v}" for k, v in overrides.items()])
    return cfg


class PixelNet(nn.Cell):
    """Per-pixel MLP (1x1 convs): translation-equivariant with no border effects."""

    def __init__(self, classes=4):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1, has_bias=True)
        self.b = nn.Conv2d(8, classes, 1, has_bias=True)

    def construct(self, x):
        return self.b(ms.ops.tanh(self.a(x)))


class StridedNet(nn.Cell):
    """3x3 conv with stride 2 then 1x1: output at 1/2 resolution, border-dependent."""

    def __init__(self, classes=3):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=2, pad_mode="pad", padding=1, has_bias=True)
        self.b = nn.Conv2d(6, classes, 1, has_bias=True)

    def construct(self, x):
        return self.b(ms.ops.relu(self.a(x)))


# --------------------------------------------------------------------- windows --

def test_cityscapes_windows_closed_form():
    # 1024x2048, crop 1024, stride 768: three windows, the last moved back to the edge.
    boxes = slide_windows(1024, 2048, (1024, 1024), (768, 768))
    assert boxes == [(0, 1024, 0, 1024), (0, 1024, 768, 1792), (0, 1024, 1024, 2048)]
    count = coverage_count(boxes, 1024, 2048)
    expected_row = np.concatenate([np.full(768, 1), np.full(1792 - 768, 2), np.full(256, 1)])
    assert np.array_equal(count, np.tile(expected_row, (1024, 1)))


@pytest.mark.parametrize("seed", range(3))
def test_windows_match_mmseg_formula(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        h, w = rng.integers(1, 300, size=2)
        crop = tuple(rng.integers(1, 200, size=2))
        stride = tuple(int(rng.integers(1, c + 1)) for c in crop)  # stride <= crop
        boxes = slide_windows(int(h), int(w), crop, stride)
        assert boxes == mmseg_windows(int(h), int(w), crop, stride)
        count = coverage_count(boxes, h, w)
        assert count.min() >= 1  # every pixel covered, as mmseg asserts
        brute = np.zeros((h, w))
        for y1, y2, x1, x2 in mmseg_windows(int(h), int(w), crop, stride):
            brute[y1:y2, x1:x2] += 1
        assert np.array_equal(count, brute)


# ---------------------------------------------------------------------- resize --

@pytest.mark.parametrize("src,dst", [((7, 9), (28, 36)), ((30, 20), (13, 11)), ((5, 5), (5, 17))])
def test_resize_logits_matches_torch_bilinear(src, dst):
    x = np.random.default_rng(0).standard_normal((2, 3) + src).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(resize_logits(x, dst), ref, rtol=1e-5, atol=1e-5)


def test_multiscale_sizes_follow_mmcv_rescale():
    cfg = make_cfg(eval_base_size="[1024,2048]", eval_scales="[0.5,0.75,1.0,1.25,1.5,1.75]",
                   eval_flip="true")
    inf = SegInferencer(None, cfg)
    sizes = [s for s, flip in inf.views(1024, 2048) if not flip]
    assert sizes == [(512, 1024), (768, 1536), (1024, 2048), (1280, 2560), (1536, 3072),
                     (1792, 3584)]
    # A 375x500 photo: mmcv fits it by the short edge, rounding half up.
    for r in (0.5, 1.0, 1.75):
        h_s, w_s = int(1024 * r), int(2048 * r)
        factor = min(max(h_s, w_s) / 500, min(h_s, w_s) / 375)
        expected = (int(375 * factor + 0.5), int(500 * factor + 0.5))
        inf.scales = [r]
        assert inf.views(375, 500)[0][0] == expected
    assert scaled_size((1024, 2048), 0.75) == (768, 1536)


# -------------------------------------------------------------- slide vs whole --

def test_slide_equals_whole_for_translation_equivariant_net():
    net = PixelNet(classes=4)
    net.set_train(False)
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    whole = SegInferencer(net, make_cfg(class_num=4, eval_mode="whole", eval_base_size="[50,70]"))
    slide = SegInferencer(net, make_cfg(class_num=4, eval_mode="slide", eval_base_size="[50,70]",
                                        eval_crop_size="[32,32]", eval_stride="[20,24]"))
    np.testing.assert_allclose(slide.predict_scores(image), whole.predict_scores(image),
                               rtol=1e-5, atol=1e-5)


def test_flip_of_mirror_symmetric_net_equals_single_view_softmax():
    net = PixelNet(classes=4)
    net.set_train(False)
    image = np.random.default_rng(2).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    one = SegInferencer(net, make_cfg(class_num=4, eval_base_size="[24,40]"))
    flip = SegInferencer(net, make_cfg(class_num=4, eval_base_size="[24,40]", eval_flip="true"))
    logits = one.predict_scores(image)
    soft = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    np.testing.assert_allclose(flip.predict_scores(image), soft, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------ PyTorch mmseg reference --

def torch_twin(ms_net):
    """The same StridedNet in PyTorch (weights copied)."""
    a = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1)
    b = torch.nn.Conv2d(6, ms_net.b.out_channels, 1)
    with torch.no_grad():
        for t, m in ((a, ms_net.a), (b, ms_net.b)):
            t.weight.copy_(torch.from_numpy(m.weight.asnumpy()))
            t.bias.copy_(torch.from_numpy(m.bias.asnumpy()))
    return lambda x: b(torch.relu(a(x)))


def mmseg_reference(torch_net, image, base_size, ratios, flip, mode, crop, stride, mean, std,
                    size_divisor=0):
    """mmseg v0.x MultiScaleFlipAug + EncoderDecoder.aug_test, re-implemented in PyTorch;
    ``size_divisor``: NVlabs' AlignedResize (mmcv.imrescale, then mmcv.imresize of that result
    to sides rounded up to the divisor)."""
    import cv2
    h_ori, w_ori = image.shape[:2]

    def encode_decode(x):
        return F.interpolate(torch_net(x), size=x.shape[2:], mode="bilinear", align_corners=False)

    def inference(x):
        if mode == "slide":
            preds = x.new_zeros((1, 3, x.shape[2], x.shape[3]))
            count = x.new_zeros((1, 1, x.shape[2], x.shape[3]))
            for y1, y2, x1, x2 in mmseg_windows(x.shape[2], x.shape[3], crop, stride):
                logit = encode_decode(x[:, :, y1:y2, x1:x2])
                preds += F.pad(logit, (x1, preds.shape[3] - x2, y1, preds.shape[2] - y2))
                count[:, :, y1:y2, x1:x2] += 1
            logit = preds / count
        else:
            logit = encode_decode(x)
        return F.interpolate(logit, size=(h_ori, w_ori), mode="bilinear", align_corners=False)

    outputs = []
    for r in ratios:
        w_s, h_s = int(base_size[1] * r), int(base_size[0] * r)
        factor = min(max(w_s, h_s) / max(h_ori, w_ori), min(w_s, h_s) / min(h_ori, w_ori))
        size = (int(w_ori * factor + 0.5), int(h_ori * factor + 0.5))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if size_divisor:
            aligned = (int(np.ceil(size[0] / size_divisor)) * size_divisor,
                       int(np.ceil(size[1] / size_divisor)) * size_divisor)
            resized = cv2.resize(resized, aligned, interpolation=cv2.INTER_LINEAR)
        resized = resized.astype(np.float32)
        for f in ((False, True) if flip else (False,)):
            img = resized[:, ::-1] if f else resized
            x = torch.from_numpy(((img - mean) / std).transpose(2, 0, 1)[None].copy())
            with torch.no_grad():
                out = F.softmax(inference(x), dim=1)
            outputs.append(out.flip(dims=(3,)) if f else out)
    return (sum(outputs) / len(outputs))[0].numpy()


@pytest.mark.parametrize("mode,ratios,flip,divisor", [("whole", [1.0], False, 0), ("slide", [1.0], False, 0),
                                                      ("slide", [0.5, 1.25], True, 0),
                                                      ("whole", [1.0, 0.75], False, 16)])
def test_matches_pytorch_mmseg_reference(mode, ratios, flip, divisor):
    ms.set_seed(0)
    net = StridedNet(classes=3)
    net.set_train(False)
    image = np.random.default_rng(3).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    cfg = make_cfg(class_num=3, eval_mode=mode, eval_base_size="[40,80]",
                   eval_crop_size="[24,32]", eval_stride="[16,20]",
                   eval_scales="[" + ",".join(map(str, ratios)) + "]", eval_flip=str(flip).lower(),
                   eval_size_divisor=divisor)
    inf = SegInferencer(net, cfg)
    scores = inf.predict_scores(image)
    if len(ratios) == 1 and not flip:  # single view: logits; compare as softmax
        scores = np.exp(scores - scores.max(0)) / np.exp(scores - scores.max(0)).sum(0)
    mean = np.asarray(cfg.img_norm_mean, np.float32)
    std = np.asarray(cfg.img_norm_std, np.float32)
    ref = mmseg_reference(torch_twin(net), image, (40, 80), ratios, flip, mode, (24, 32), (16, 20),
                          mean, std, divisor)
    assert scores.shape == (3, 45, 61)
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-5)
    assert np.array_equal(inf.predict(image), ref.argmax(0))


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="eval_mode"):
        SegInferencer(None, make_cfg(eval_mode="sliding"))
    with pytest.raises(ValueError, match="eval_crop_size"):
        SegInferencer(None, make_cfg(eval_crop_size="[0,10]"))
    with pytest.raises(ValueError, match="eval_stride"):
        SegInferencer(None, make_cfg(eval_mode="slide", eval_crop_size="[16,16]",
                                     eval_stride="[8,20]"))
    with pytest.raises(ValueError, match="eval_scales"):
        SegInferencer(None, make_cfg(eval_scales="[]"))
    with pytest.raises(ValueError, match="eval_size_divisor"):
        SegInferencer(None, make_cfg(eval_size_divisor="-32"))
