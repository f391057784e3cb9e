"""Segmentation dataset on a real Cityscapes layout: batches, eval source, sharding,
determinism, and every bad-input case."""
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from src.data import (DataError, ShardSampler, create_dataset, eval_source, list_samples, train_source,
                      verify_split)
from tests.data.conftest import seg_config


def batches(dataset, epochs=1):
    it = dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs)
    return [[(img.copy(), lab.copy()) for img, lab in it] for _ in range(epochs)]


def test_train_batches_have_crop_shape_and_valid_labels(demo_roots):
    cfg = seg_config(demo_roots[0])
    data = create_dataset(cfg, "train")
    assert data.get_dataset_size() == 6 // 2
    (epoch,) = batches(data)
    assert len(epoch) == 3
    for image, label in epoch:
        assert image.shape == (2, 3, 48, 48) and image.dtype == np.float32
        assert label.shape == (2, 48, 48) and label.dtype == np.int32
        values = set(np.unique(label).tolist())
        assert values <= set(range(19)) | {255} and len(values - {255}) >= 1


def test_eval_source_keeps_label_at_full_resolution(demo_roots):
    cfg = seg_config(demo_roots[0])
    source = eval_source(cfg)
    assert len(source) == 3
    image, label, path = source[0]
    assert image.shape == (3, 32, 64) and image.dtype == np.float32  # eval_base_size [32, 64]
    assert label.shape == (64, 128) and label.dtype == np.int32      # original size
    assert path.endswith("_leftImg8bit.png") and os.path.isfile(path)
    # the label is the converted trainId map, untouched
    label_file = path.replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(label, np.asarray(Image.open(label_file)))
    # the image is the file resized as mmcv does (cv2 bilinear), then normalised
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    raw = cv2.resize(rgb, (64, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    back = image.transpose(1, 2, 0) * np.array(cfg.img_norm_std) + np.array(cfg.img_norm_mean)
    np.testing.assert_allclose(back, raw, atol=1e-3)


def test_val_dataset_batches(demo_roots):
    cfg = seg_config(demo_roots[0])
    (epoch,) = batches(create_dataset(cfg, "val"))
    assert len(epoch) == 3
    assert epoch[0][0].shape == (1, 3, 32, 64) and epoch[0][1].shape == (1, 64, 128)


@pytest.mark.parametrize("num_samples,num_shards", [(12, 3), (10, 3), (7, 4), (5, 1)])
def test_shard_sampler_shards_disjoint_covering_and_equal(num_samples, num_shards):
    for epoch in range(3):
        shards = [ShardSampler(num_samples, num_shards, r, shuffle=True, seed=4).indices(epoch)
                  for r in range(num_shards)]
        sizes = {len(s) for s in shards}
        assert sizes == {-(-num_samples // num_shards)}
        union = np.concatenate(shards)
        assert set(union.tolist()) == set(range(num_samples))  # covering
        duplicates = len(union) - len(set(union.tolist()))
        assert duplicates == len(union) - num_samples  # only the wrap-around padding repeats
        if num_samples % num_shards == 0:
            assert duplicates == 0  # disjoint


def test_shard_sampler_reshuffles_each_epoch_and_encodes_epoch():
    sampler = ShardSampler(10, 1, 0, shuffle=True, seed=1)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10, 20))
    assert [k % 10 for k in first] != [k % 10 for k in second]


def test_eval_shards_disjoint_and_covering(demo_roots):
    cfg = seg_config(demo_roots[0])
    full = [lab for _, lab in batches(create_dataset(cfg, "val"))[0]]
    parts = [[lab for _, lab in batches(create_dataset(cfg, "val", rank_id=r, group_size=2))[0]]
             for r in range(2)]
    assert [len(p) for p in parts] == [2, 1]
    merged = parts[0] + parts[1]
    assert len(merged) == len(full)
    for lab in full:  # every sample exactly once
        assert sum(np.array_equal(lab, m) for m in merged) == 1


def test_train_shards_partition_each_epoch(demo_roots):
    """Two ranks over 6 images: each rank gets 3 distinct images per epoch, together all 6
    (images are identified by their unaugmented labels through the source's sample list)."""
    cfg = seg_config(demo_roots[0])
    samples = list_samples(cfg, "train")
    seen = []
    for rank in range(2):
        sampler = ShardSampler(len(samples), 2, rank, shuffle=True, seed=cfg.seed)
        seen.append({k % len(samples) for k in sampler})
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(6))
    data = create_dataset(cfg, "train", rank_id=1, group_size=2)
    assert data.get_dataset_size() == 1  # 3 samples, batch 2, drop_remainder


def test_same_seed_same_batches_other_seed_differs(demo_roots):
    cfg = seg_config(demo_roots[0])
    a = batches(create_dataset(cfg, "train"), epochs=2)
    b = batches(create_dataset(cfg, "train"), epochs=2)
    for ea, eb in zip(a, b):
        for (ia, la), (ib, lb) in zip(ea, eb):
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a[0][0][0], a[1][0][0])  # epochs differ
    c = batches(create_dataset(seg_config(demo_roots[0], "--seed=7"), "train"))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a[0], c[0]))


def test_worker_processes_do_not_change_the_samples(demo_roots):
    one = batches(create_dataset(seg_config(demo_roots[0]), "train"))[0]
    two = batches(create_dataset(seg_config(demo_roots[0], "--dataset_num_parallel_workers=2"), "train"))[0]
    for (ia, la), (ib, lb) in zip(one, two):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)


# ------------------------------------------------------------------------- bad input --

@pytest.fixture
def broken_root(demo_roots, tmp_path):
    """A private copy of the tiny Cityscapes tree to damage."""
    root = tmp_path / "city"
    shutil.copytree(demo_roots[0], root)
    return root


def _first(root, split, sub, suffix):
    folder = root / sub / split
    return sorted(folder.rglob("*" + suffix))[0]


def _raises(cfg, split, *fragments):
    with pytest.raises(DataError) as info:
        list_samples(cfg, split)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_missing_root(tmp_path):
    cfg = seg_config(str(tmp_path / "nowhere"))
    _raises(cfg, "train", "dataset root not found", "nowhere")
    with pytest.raises(DataError, match="dataset root not found"):
        create_dataset(cfg, "train")


def test_missing_split_dir(broken_root):
    shutil.rmtree(broken_root / "gtFine" / "val")
    _raises(seg_config(str(broken_root)), "val", "label directory of split 'val' not found",
            os.path.join("gtFine", "val"))
    _raises(seg_config(str(broken_root)), "test", "image directory of split 'test' not found")


def test_image_without_label(broken_root):
    label = _first(broken_root, "train", "gtFine", "_gtFine_labelTrainIds.png")
    label.unlink()
    message = _raises(seg_config(str(broken_root)), "train", "have no label", str(label))
    assert "convert_dataset.py" in message


def test_label_without_image(broken_root):
    image = _first(broken_root, "train", "leftImg8bit", "_leftImg8bit.png")
    image.unlink()
    _raises(seg_config(str(broken_root)), "train", "have no image", "labelTrainIds.png")


def test_empty_dataset(broken_root):
    for image in (broken_root / "leftImg8bit" / "val").rglob("*.png"):
        image.unlink()
    _raises(seg_config(str(broken_root)), "val", "empty dataset", os.path.join("leftImg8bit", "val"))


def _source(cfg):
    return train_source(cfg)


def _index_of(cfg, path):
    return [i for i, pair in enumerate(list_samples(cfg, "train")) if str(path) in pair][0]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_png(broken_root, damage):
    image = _first(broken_root, "train", "leftImg8bit", "_leftImg8bit.png")
    data = image.read_bytes()
    image.write_bytes(b"not a png at all" if damage == "garbage" else data[: len(data) // 2])
    cfg = seg_config(str(broken_root))
    with pytest.raises(DataError, match="corrupt or truncated image") as info:
        _source(cfg)[_index_of(cfg, image)]
    assert str(image) in str(info.value)
    problems = verify_split(cfg, "train")
    assert len(problems) == 1 and str(image) in problems[0]
    # through the MindSpore pipeline the message survives, naming the file
    with pytest.raises(RuntimeError, match="corrupt or truncated image"):
        batches(create_dataset(cfg, "train"))


def test_label_size_differs_from_image(broken_root):
    label = _first(broken_root, "train", "gtFine", "_gtFine_labelTrainIds.png")
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(label)
    cfg = seg_config(str(broken_root))
    with pytest.raises(DataError, match="label size 20x10 .* differs from its image") as info:
        _source(cfg)[_index_of(cfg, label)]
    assert str(label) in str(info.value)


def test_label_values_out_of_range(broken_root):
    label = _first(broken_root, "train", "gtFine", "_gtFine_labelTrainIds.png")
    values = np.asarray(Image.open(label)).copy()
    values[0, :3] = [19, 40, 254]
    Image.fromarray(values).save(label)
    cfg = seg_config(str(broken_root))
    with pytest.raises(DataError, match=r"label values \[19, 40, 254\] outside \[0, 19\)") as info:
        _source(cfg)[_index_of(cfg, label)]
    assert str(label) in str(info.value)


def test_verify_lists_every_problem_and_check_data_stops_before_training(broken_root):
    labels = sorted((broken_root / "gtFine" / "train").rglob("*_gtFine_labelTrainIds.png"))
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(labels[0])
    Image.fromarray(np.full((64, 128), 77, np.uint8)).save(labels[1])
    cfg = seg_config(str(broken_root))
    problems = verify_split(cfg, "train")
    assert len(problems) == 2
    assert str(labels[0]) in problems[0] and str(labels[1]) in problems[1]
    with pytest.raises(DataError, match="2 problem"):
        create_dataset(seg_config(str(broken_root), "--check_data=true"), "train")


def test_batch_larger_than_dataset(demo_roots):
    with pytest.raises(DataError, match="batch_size=7 is larger than the 6 training samples"):
        create_dataset(seg_config(demo_roots[0], "--batch_size=7"), "train")
    with pytest.raises(DataError, match="batch_size=4 is larger than the 3 training samples"):
        create_dataset(seg_config(demo_roots[0], "--batch_size=4"), "train", rank_id=0, group_size=2)


def test_class_names_must_match_class_num(demo_roots):
    with pytest.raises(DataError, match="class_num=5 but dataset.class_names has 19"):
        create_dataset(seg_config(demo_roots[0], "--class_num=5"), "train")


def test_custom_dataset_needs_only_config(tmp_path):
    """A two-class dataset with its own layout and suffixes, no code."""
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for n in range(3):
            img_dir, ann_dir = tmp_path / "images" / split, tmp_path / "masks" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            ann_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(img_dir / f"s{n}.jpg")
            Image.fromarray((rng.random((40, 60)) > 0.5).astype(np.uint8)).save(ann_dir / f"s{n}_mask.png")
    cfg = seg_config(str(tmp_path), "--class_num=2", "--base_size=[40,60]", "--crop_size=[32,32]",
                     "--dataset.img_dir=images", "--dataset.ann_dir=masks", "--dataset.img_suffix=.jpg",
                     "--dataset.seg_map_suffix=_mask.png", "--dataset.train_split=training",
                     "--dataset.val_split=validation", "--dataset.class_names=[bg,fg]",
                     "--dataset.palette=[[0,0,0],[255,0,0]]")
    (epoch,) = batches(create_dataset(cfg, "training"))
    assert len(epoch) == 1 and epoch[0][1].shape == (2, 32, 32)
    assert set(np.unique(epoch[0][1]).tolist()) <= {0, 1, 255}
    assert len(eval_source(cfg)) == 3
