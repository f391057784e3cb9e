"""ImageNet-style pipeline: soft targets, mixup/cutmix, eval order, sharding, bad input."""
import shutil

import numpy as np
import pytest

from src.data import DataError, create_dataset, list_samples, verify_split
from tests.data.conftest import cls_config

NUM_CLASSES = 4  # the demo folder's classes (class_num of the demo config)


def run(dataset):
    return [(i.copy(), l.copy()) for i, l in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)]


def test_train_targets_are_smoothed_one_hot_without_mixing(demo_roots):
    cfg = cls_config(demo_roots[1], "--mixup=0.0", "--cutmix=0.0", "--label_smooth_factor=0.2")
    out = run(create_dataset(cfg, "train"))
    assert len(out) == (NUM_CLASSES * 5) // 4
    hi, lo = 1 - 0.2 + 0.2 / NUM_CLASSES, 0.2 / NUM_CLASSES  # closed form of label smoothing
    for images, targets in out:
        assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32
        assert targets.shape == (4, NUM_CLASSES) and targets.dtype == np.float32
        np.testing.assert_allclose(np.sort(targets, 1), np.tile([lo, lo, lo, hi], (4, 1)), rtol=1e-6)


def test_mixup_and_cutmix_mix_targets_and_keep_their_sum(demo_roots):
    for flag in ("--mixup=1.0", "--cutmix=1.0"):
        cfg = cls_config(demo_roots[1], flag, "--label_smooth_factor=0.0", "--batch_size=5")
        targets = np.concatenate([t for _, t in run(create_dataset(cfg, "train"))])
        np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-5)
        mixed = ((targets > 1e-6) & (targets < 1 - 1e-6)).any(1)
        assert mixed.mean() > 0.5, flag  # alpha 1: lambda ~ U(0, 1), rarely exactly 0 or 1


def test_eval_labels_follow_sorted_class_folders(demo_roots):
    cfg = cls_config(demo_roots[1])
    out = run(create_dataset(cfg, "val"))
    labels = np.concatenate([l for _, l in out])
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, np.repeat(np.arange(NUM_CLASSES), 2))
    assert out[0][0].shape == (4, 3, 32, 32)


def test_eval_shards_disjoint_and_covering(demo_roots):
    cfg = cls_config(demo_roots[1], "--eval_batch_size=1")
    full = run(create_dataset(cfg, "val"))
    parts = [run(create_dataset(cfg, "val", rank_id=r, group_size=3)) for r in range(3)]
    assert sum(len(p) for p in parts) == len(full)
    merged = [img for p in parts for img, _ in p]
    for img, _ in full:
        assert sum(np.array_equal(img, m) for m in merged) == 1


def test_train_is_reproducible_with_one_worker(demo_roots):
    cfg = cls_config(demo_roots[1])
    a, b = run(create_dataset(cfg, "train")), run(create_dataset(cfg, "train"))
    for (ia, ta), (ib, tb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ta, tb)


@pytest.fixture
def broken_root(demo_roots, tmp_path):
    root = tmp_path / "imagenet"
    shutil.copytree(demo_roots[1], root)
    return root


def test_truncated_and_corrupt_jpeg_named(broken_root):
    files = sorted((broken_root / "train").rglob("*.JPEG"))
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    files[1].write_bytes(b"\xff\xd8" + b"\x00" * 200 + b"\xff\xd9")  # right markers, no image
    cfg = cls_config(str(broken_root))
    problems = verify_split(cfg, "train")
    assert len(problems) == 2
    assert str(files[0]) in problems[0] and "corrupt or truncated" in problems[0]
    assert str(files[1]) in problems[1]
    with pytest.raises(RuntimeError, match="truncated JPEG"):
        run(create_dataset(cfg, "train"))


def test_layout_errors(broken_root, tmp_path):
    with pytest.raises(DataError, match="dataset root not found"):
        list_samples(cls_config(str(tmp_path / "none")), "train")
    with pytest.raises(DataError, match="split directory 'test' not found"):
        list_samples(cls_config(str(broken_root)), "test")
    with pytest.raises(DataError, match="4 class folders but class_num=3"):
        list_samples(cls_config(str(broken_root), "--class_num=3"), "train")
    empty = sorted((broken_root / "train").iterdir())[2]
    for f in empty.iterdir():
        f.unlink()
    with pytest.raises(DataError, match="hold no") as info:
        list_samples(cls_config(str(broken_root)), "train")
    assert str(empty) in str(info.value)
    (broken_root / "val" / "n99999999").mkdir()
    with pytest.raises(DataError, match=r"\['n99999999'\] are not in the train split"):
        list_samples(cls_config(str(broken_root)), "val")


def test_batch_larger_than_dataset(demo_roots):
    with pytest.raises(DataError, match="batch_size=21 is larger than the 20 samples"):
        create_dataset(cls_config(demo_roots[1], "--batch_size=21"), "train")


def test_eval_batch_larger_than_split_gives_one_short_batch(demo_roots):
    out = run(create_dataset(cls_config(demo_roots[1], "--eval_batch_size=64"), "val"))
    assert [len(l) for _, l in out] == [2 * NUM_CLASSES]
