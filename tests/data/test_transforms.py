"""Segmentation augmentations: alignment, crop rule, resize semantics, pad/normalise."""
import cv2
import numpy as np
import pytest
from scipy import ndimage

from src.data.transforms import (SegTrainTransform, cat_max_ratio_crop_box, photometric_distortion,
                                 rescale_size)
from src.utils.config import load_config

# Well separated colours: the class of a pixel can be read back from its colour.
COLOURS = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10], [10, 250, 250],
                    [250, 10, 250]], np.float32)
IGNORE = 255


def make_pair(seed, height=96, width=160, block=16):
    """Blocky label (with some ignore blocks) and an image whose colour encodes it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, len(COLOURS) + 1, size=(height // block, width // block))
    label = np.kron(coarse, np.ones((block, block), np.int64)).astype(np.uint8)
    label[label == len(COLOURS)] = IGNORE
    image = np.zeros((height, width, 3), np.uint8)
    for k, colour in enumerate(COLOURS):
        image[label == k] = colour
    image[label == IGNORE] = 128
    return image, label


def label_from_image(image):
    """Nearest colour -> class; grey (ignore blocks) -> IGNORE."""
    candidates = np.concatenate([COLOURS, [[128, 128, 128]]])
    dist = ((image[..., None, :].astype(np.float32) - candidates) ** 2).sum(-1)
    out = dist.argmin(-1).astype(np.int64)
    out[out == len(COLOURS)] = IGNORE
    return out


def interior(label, margin=2):
    """Pixels at least ``margin`` away from any class boundary (bilinear blends edges)."""
    edges = np.zeros(label.shape, bool)
    edges[:, 1:] |= label[:, 1:] != label[:, :-1]
    edges[1:, :] |= label[1:, :] != label[:-1, :]
    return ~ndimage.binary_dilation(edges, iterations=margin)


def make_cfg(**overrides):
    args = [f"--{k}={v}" for k, v in overrides.items()]
    return load_config("", ["--base_size=[96,160]", "--crop_size=[64,64]", "--ratio_range=[0.5,2.0]",
                            "--img_norm_mean=[0,0,0]", "--img_norm_std=[1,1,1]", *args])


def denormalised(image_chw):
    return np.clip(np.rint(image_chw.transpose(1, 2, 0)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(12))
def test_each_geometric_step_keeps_image_and_label_aligned(seed):
    transform = SegTrainTransform(make_cfg(photometric_distortion="false"))
    rng = np.random.default_rng(100 + seed)
    image, label = make_pair(seed)
    for step in transform.steps:
        image, label = step(rng, image, label)
        if step == transform.finish:
            view = denormalised(image)
        else:
            view = image
        derived = label_from_image(np.ascontiguousarray(view))
        keep = interior(np.asarray(label))
        if step == transform.finish:  # padding: image 0 (black -> nearest colour any), label 255
            keep &= np.asarray(label) != IGNORE
        assert keep.mean() > 0.3, "test layout too fine for the margin"
        np.testing.assert_array_equal(derived[keep], np.asarray(label, np.int64)[keep],
                                      err_msg=f"misaligned after {step.__name__}")


def test_flip_happens_and_mirrors_both():
    transform = SegTrainTransform(make_cfg(flip_prob=1.0))
    image, label = make_pair(1)
    flipped_image, flipped_label = transform.flip(np.random.default_rng(0), image, label)
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])
    np.testing.assert_array_equal(flipped_label, label[:, ::-1])


@pytest.mark.parametrize("seed", range(20))
def test_photometric_distortion_is_a_per_pixel_colour_map(seed):
    """Same input colour -> same output colour everywhere, so it cannot move content."""
    image, label = make_pair(seed)
    noisy = np.clip(image.astype(np.int32) + np.random.default_rng(seed).integers(-40, 40, image.shape),
                    0, 255).astype(np.uint8)
    out = photometric_distortion(np.random.default_rng(seed), noisy)
    assert out.shape == noisy.shape and out.dtype == np.uint8
    keys = noisy.reshape(-1, 3).astype(np.int64) @ np.array([1, 256, 65536])
    values = out.reshape(-1, 3).astype(np.int64) @ np.array([1, 256, 65536])
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    same_key = k[1:] == k[:-1]
    assert np.all(v[1:][same_key] == v[:-1][same_key])


def test_photometric_brightness_alone_matches_closed_form():
    """Only the brightness branch taken -> clip(img + delta), delta in [-32, 32]."""
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    seen = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        draws = np.random.default_rng(seed)
        if not draws.integers(2):
            continue
        delta = draws.uniform(-32, 32)
        mode = draws.integers(2)
        branches = [draws.integers(2) for _ in range(3)]  # contrast(mode 1)|sat, hue, contrast(mode 0)
        if any(branches):
            continue
        expected = np.clip(image.astype(np.float32) + delta, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(photometric_distortion(rng, image), expected)
        assert mode in (0, 1)
        seen += 1
    assert seen > 3


@pytest.mark.parametrize("seed", range(30))
def test_resize_keeps_aspect_and_follows_ratio_range(seed):
    transform = SegTrainTransform(make_cfg(base_size=[1024, 2048]))
    image = np.zeros((1024, 2048, 3), np.uint8)
    label = np.zeros((1024, 2048), np.uint8)
    r = np.random.default_rng(seed).random() * 1.5 + 0.5  # mmseg: U(0.5, 2.0) of base
    out_image, out_label = transform.resize(np.random.default_rng(seed), image, label)
    assert out_image.shape[:2] == out_label.shape
    # mmseg: scale = int(base * r) per side; mmcv.imrescale: factor fits long and short edge
    scale = (int(1024 * r), int(2048 * r))
    factor = min(max(scale) / 2048, min(scale) / 1024)
    assert out_image.shape[:2] == (int(1024 * factor + 0.5), int(2048 * factor + 0.5))
    assert abs(out_image.shape[0] - 1024 * r) <= 2 and abs(out_image.shape[1] - 2048 * r) <= 2


def test_rescale_size_fits_long_and_short_edge():
    # a portrait image into a landscape scale: the long edge is bounded by max(scale)
    assert rescale_size(2000, 1000, (512, 1024)) == (1024, 512)
    assert rescale_size(1024, 2048, (1024, 2048)) == (1024, 2048)
    assert rescale_size(500, 1000, (1024, 2048)) == (1024, 2048)
    assert rescale_size(300, 400, (256, 512)) == (256, 341)  # 400*256/300 = 341.33


def _crop_ok(label, box, ratio):
    y0, y1, x0, x1 = box
    values, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
    counts = counts[values != IGNORE]
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


def test_cat_max_ratio_crop_follows_the_mmseg_rule():
    """Oracle: mmseg draws up to 11 boxes (offset ~ randint(0, margin + 1) for h, then w)
    and keeps the first that passes, else the last one drawn."""
    label = np.zeros((200, 200), np.uint8)
    label[110:, 110:] = 1        # a second class in one corner
    label[:, :20] = IGNORE       # ignored pixels must not count
    crop = (64, 64)
    passed = 0
    for seed in range(60):
        draws = np.random.default_rng(seed)
        boxes = []
        for _ in range(11):
            y0 = int(draws.integers(0, 200 - 64 + 1))
            x0 = int(draws.integers(0, 200 - 64 + 1))
            boxes.append((y0, y0 + 64, x0, x0 + 64))
        expected = next((b for b in boxes if _crop_ok(label, b, 0.75)), boxes[-1])
        got = cat_max_ratio_crop_box(np.random.default_rng(seed), label, crop, 0.75, IGNORE)
        assert got == expected
        passed += _crop_ok(label, got, 0.75)
    assert 20 < passed < 60  # both branches (a passing box, the last box) are exercised


def test_cat_max_ratio_is_honoured_when_valid_crops_are_common():
    """Left half one class (crops there fail the rule), right half mixed blocks: with the
    rule every chosen crop passes; without it (ratio 1.0) many would not."""
    rng = np.random.default_rng(0)
    label = np.zeros((128, 256), np.uint8)
    label[:, 128:] = np.kron(rng.integers(0, 3, (8, 8)), np.ones((16, 16), np.int64))
    with_rule = [_crop_ok(label, cat_max_ratio_crop_box(np.random.default_rng(s), label, (64, 64), 0.75,
                                                        IGNORE), 0.75) for s in range(40)]
    without = [_crop_ok(label, cat_max_ratio_crop_box(np.random.default_rng(s), label, (64, 64), 1.0,
                                                      IGNORE), 0.75) for s in range(40)]
    assert all(with_rule)
    assert sum(without) < 35


def test_cat_max_ratio_one_means_a_single_draw():
    label = np.zeros((100, 100), np.uint8)
    box = cat_max_ratio_crop_box(np.random.default_rng(3), label, (32, 32), 1.0, IGNORE)
    draws = np.random.default_rng(3)
    y0, x0 = int(draws.integers(0, 69)), int(draws.integers(0, 69))
    assert box == (y0, y0 + 32, x0, x0 + 32)


def test_finish_normalises_then_pads_image_zero_label_ignore():
    cfg = load_config("", ["--crop_size=[40,50]"])
    transform = SegTrainTransform(cfg)
    image = np.full((30, 20, 3), 200, np.uint8)
    label = np.full((30, 20), 3, np.uint8)
    out_image, out_label = transform.finish(None, image, label)
    assert out_image.shape == (3, 40, 50) and out_image.dtype == np.float32
    assert out_label.shape == (40, 50) and out_label.dtype == np.int32
    mean, std = np.array(cfg.img_norm_mean), np.array(cfg.img_norm_std)
    np.testing.assert_allclose(out_image[:, 0, 0], (200 - mean) / std, rtol=1e-6)
    assert np.all(out_image[:, 30:, :] == 0) and np.all(out_image[:, :, 20:] == 0)
    assert np.all(out_label[30:, :] == IGNORE) and np.all(out_label[:, 20:] == IGNORE)
    assert np.all(out_label[:30, :20] == 3)


def test_full_transform_output_is_crop_sized_and_label_values_preserved():
    transform = SegTrainTransform(make_cfg())
    image, label = make_pair(7)
    for seed in range(10):
        out_image, out_label = transform(np.random.default_rng(seed), image, label)
        assert out_image.shape == (3, 64, 64) and out_label.shape == (64, 64)
        assert set(np.unique(out_label)) <= set(np.unique(label).tolist()) | {IGNORE}


def test_resize_uses_nearest_for_labels_and_bilinear_for_images():
    label = np.array([[0, 5], [7, 9]], np.uint8)
    image = np.array([[[0] * 3, [100] * 3], [[200] * 3, [50] * 3]], np.uint8)
    transform = SegTrainTransform(make_cfg(base_size=[5, 7], ratio_range=[1.0, 1.0]))
    out_image, out_label = transform.resize(np.random.default_rng(0), image, label)
    # 2x2 into (5, 7) keeping the ratio: factor min(7/2, 5/2) = 2.5 -> 5x5
    np.testing.assert_array_equal(out_label, cv2.resize(label, (5, 5), interpolation=cv2.INTER_NEAREST))
    np.testing.assert_array_equal(out_image, cv2.resize(image, (5, 5), interpolation=cv2.INTER_LINEAR))
