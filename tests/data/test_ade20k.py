"""ADE20K through the registry on the demo rooms: the images/annotations listing, mmseg's
reduce_zero_label in training batches and eval labels, the eval input's AlignedResize,
and verify's rules for ADE20K files."""
import os
import shutil

import cv2
import numpy as np
from PIL import Image

from src.data import create_dataset, eval_source, list_samples, verify_split
from tests.data.conftest import ade_config

DEMO_VALUES = {0, 1, 4, 6, 8, 9, 16, 23}  # tools/make_demo_data.py ADE_LABELS


def mmseg_reduce_zero_label(raw):
    """mmseg 0.x LoadAnnotations(reduce_zero_label=True), as written upstream."""
    gt = raw.copy()
    gt[gt == 0] = 255
    gt = gt - 1
    gt[gt == 254] = 255
    return gt


def test_listing_pairs_images_with_annotations_of_the_same_name(demo_roots):
    cfg = ade_config(demo_roots[2])
    for split, folder, prefix, count in (("train", "training", "ADE_train_", 6),
                                         ("val", "validation", "ADE_val_", 3)):
        samples = list_samples(cfg, split)
        assert len(samples) == count
        for image, label in samples:
            stem = os.path.basename(image)[: -len(".jpg")]
            assert stem.startswith(prefix) and image.endswith(".jpg")
            assert image == os.path.join(demo_roots[2], "images", folder, stem + ".jpg")
            assert label == os.path.join(demo_roots[2], "annotations", folder, stem + ".png")
            assert set(np.unique(np.asarray(Image.open(label)))) <= DEMO_VALUES


def test_training_batches_hold_class_ids_with_other_ignored(demo_roots):
    data = create_dataset(ade_config(demo_roots[2]), "train")
    seen = set()
    for image, label in data.create_tuple_iterator(output_numpy=True, num_epochs=1):
        assert image.shape == (2, 3, 48, 48) and label.shape == (2, 48, 48)
        seen |= set(np.unique(label).tolist())
    reduced = {v - 1 for v in DEMO_VALUES - {0}}
    assert seen <= reduced | {255} and len(seen & reduced) >= 4


def test_eval_label_is_mmseg_reduced_at_full_size_and_image_is_aligned(demo_roots):
    cfg = ade_config(demo_roots[2])
    source = eval_source(cfg)
    assert len(source) == 3
    for index in range(3):
        image, label, path = source[index]
        raw = np.asarray(Image.open(source.samples[index][1]))
        np.testing.assert_array_equal(label, mmseg_reduce_zero_label(raw))
        # eval_base_size [48, 64] keep ratio (mmcv rescale), then sides up to multiples of 32
        rgb = np.asarray(Image.open(path).convert("RGB"))
        h, w = rgb.shape[:2]
        factor = min(64 / max(h, w), 48 / min(h, w))
        size = (int(w * factor + 0.5), int(h * factor + 0.5))
        aligned = (-(-size[0] // 32) * 32, -(-size[1] // 32) * 32)
        expected = cv2.resize(cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR), aligned,
                              interpolation=cv2.INTER_LINEAR).astype(np.float32)
        back = image.transpose(1, 2, 0) * np.array(cfg.img_norm_std) + np.array(cfg.img_norm_mean)
        assert image.shape == (3, aligned[1], aligned[0])
        np.testing.assert_allclose(back, expected, atol=1e-3)


def test_label_map_from_the_config_reaches_the_labels(demo_roots):
    """dataset.label_map (file value -> value) applies before reduce_zero_label, as in mmseg:
    here the demo paintings (23) become walls (1 -> class 0)."""
    source = eval_source(ade_config(demo_roots[2], "--dataset.label_map={23: 1}"))
    _, label, _ = source[0]
    raw = np.asarray(Image.open(source.samples[0][1]))
    mapped = raw.copy()
    mapped[raw == 23] = 1
    assert (raw == 23).any()
    np.testing.assert_array_equal(label, mmseg_reduce_zero_label(mapped))


def test_verify_applies_the_ade20k_rules_and_lists_every_problem(demo_roots, tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(demo_roots[2], root)
    labels = sorted((root / "annotations" / "training").glob("*.png"))
    images = sorted((root / "images" / "training").glob("*.jpg"))
    raw = np.asarray(Image.open(labels[0])).copy()
    raw[0, :2] = [151, 200]
    Image.fromarray(raw).save(labels[0])
    labels[1].unlink()
    images[2].write_bytes(images[2].read_bytes()[:300])
    problems = verify_split(ade_config(str(root)), "train")
    assert len(problems) == 3, problems
    assert "have no label" in problems[0] and str(images[1]) in problems[0]
    assert problems[1].startswith(f"{labels[0]}: label values [151, 200] outside 0..150 (reduce_zero_label")
    assert problems[2].startswith(f"{images[2]}: corrupt or truncated image")
    assert verify_split(ade_config(demo_roots[2]), "val") == []
