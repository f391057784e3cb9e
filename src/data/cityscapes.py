"""Semantic-segmentation datasets (Cityscapes and any dataset laid out like it).

A dataset is described by ``cfg.dataset`` alone, so a custom one needs no code::

    <data_path>/<img_dir>/<split>/**/<name><img_suffix>
    <data_path>/<ann_dir>/<split>/**/<name><seg_map_suffix>     (same relative path)

(Cityscapes: ``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png`` and
``gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png``, made by
``tools/convert_dataset.py``.) Label maps hold class ids ``0..class_num-1``, with
``ignore_label`` (255) for pixels that count nowhere.

Training: ``GeneratorDataset`` over ``SegTrainSource`` (random access), indices drawn by
``ShardSampler`` (shuffle, shard, epoch), then batched with drop_remainder. Each sample's
augmentation uses ``numpy.random.default_rng([seed, epoch, index])``, so a run is
reproducible whatever the number of workers.

Evaluation: ``SegEvalSource[i]`` -> ``(image, label, path)``: the image resized (keep
ratio) to ``eval_base_size``, normalised, float32 CHW; the label at the original
resolution, int32 HW; the image path. The network's logits are resized back to the label
size before the metric (what mmseg does; the MindSpore zoo scored down-scaled labels).
"""
import os
import re

import numpy as np

from src.data.transforms import (DataError, SegEvalTransform, SegTrainTransform, check_label,
                                 read_image, read_label)

MAX_LISTED = 5  # problems quoted in an error message before "... and N more"


def _listing(items):
    shown = "\n  ".join(items[:MAX_LISTED])
    more = f"\n  ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n  {shown}{more}"


def _scan(folder, suffix):
    """Relative paths (sorted) of the files under ``folder`` whose name ends with ``suffix``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(suffix):
                found.append(os.path.relpath(os.path.join(dirpath, name), folder))
    return found


def split_dirs(cfg, split):
    root = cfg.data_path
    return (os.path.join(root, cfg.dataset.img_dir, split),
            os.path.join(root, cfg.dataset.ann_dir, split))


def list_samples(cfg, split):
    """[(image_path, label_path), ...] of ``split``, sorted; every structural problem
    (missing root or split dir, image without label, label without image, empty split)
    is a DataError listing the files at fault."""
    d = cfg.dataset
    if not os.path.isdir(cfg.data_path):
        raise DataError(f"dataset root not found: data_path={cfg.data_path!r}")
    img_dir, ann_dir = split_dirs(cfg, split)
    for what, folder in (("image", img_dir), ("label", ann_dir)):
        if not os.path.isdir(folder):
            raise DataError(f"{what} directory of split '{split}' not found: {folder} "
                            f"(from data_path + dataset.{'img_dir' if what == 'image' else 'ann_dir'} + split)")
    images = _scan(img_dir, d.img_suffix)
    labels = _scan(ann_dir, d.seg_map_suffix)
    if not images:
        raise DataError(f"empty dataset: no '*{d.img_suffix}' images under {img_dir}")
    expected = {rel[: -len(d.img_suffix)] + d.seg_map_suffix: rel for rel in images}
    label_set = set(labels)
    no_label = [os.path.join(img_dir, rel) + f" (expected {os.path.join(ann_dir, lab)})"
                for lab, rel in expected.items() if lab not in label_set]
    if no_label:
        hint = ""
        if d.seg_map_suffix.endswith("_labelTrainIds.png"):
            hint = f"\n(Cityscapes: run `python tools/convert_dataset.py {cfg.data_path}` first)"
        raise DataError(f"{len(no_label)} image(s) of split '{split}' have no label "
                        f"(rule: every image has a '*{d.seg_map_suffix}' label with the same relative path):"
                        f"{_listing(no_label)}{hint}")
    no_image = [os.path.join(ann_dir, lab) for lab in labels if lab not in expected]
    if no_image:
        raise DataError(f"{len(no_image)} label(s) of split '{split}' have no image "
                        f"(rule: every '*{d.seg_map_suffix}' label has a '*{d.img_suffix}' image):"
                        f"{_listing(no_image)}")
    return [(os.path.join(img_dir, rel), os.path.join(ann_dir, lab)) for lab, rel in expected.items()]


def check_class_table(cfg):
    """class_num must agree with dataset.class_names (when names are given)."""
    names = cfg.dataset.class_names
    if names and len(names) != cfg.class_num:
        raise DataError(f"config: class_num={cfg.class_num} but dataset.class_names has {len(names)} "
                        f"names; set both for a custom dataset")
    palette = cfg.dataset.palette
    if palette and len(palette) < len(names):
        raise DataError(f"config: dataset.palette has {len(palette)} colours for {len(names)} classes")


def load_pair(image_path, label_path, class_num, ignore_label):
    """Read and validate one (image, label) pair."""
    image = read_image(image_path)
    label = read_label(label_path)
    check_label(label, image.shape, label_path, image_path, class_num, ignore_label)
    return image, label


# ----------------------------------------------------------------------- submission --
#
# The Cityscapes evaluation server (and cityscapesscripts' evalPixelLevelSemanticLabeling,
# which it runs) finds the prediction of ``<city>_<seq>_<frame>_gtFine_labelIds.png`` as the
# one file matching ``<city>_<seq>_<frame>*.png`` and reads labelIds, not trainIds.

BENCHMARK_ID = re.compile(r"^([A-Za-z]+)_(\d{6})_(\d{6})(?=[_.])")
SUBMISSION_CLASSES = 19


def benchmark_id(image_path):
    """``city_seq_frame`` of a Cityscapes image file name (DataError if it has none)."""
    match = BENCHMARK_ID.match(os.path.basename(image_path))
    if not match:
        raise DataError(f"{image_path}: a Cityscapes submission names each prediction after its "
                        f"image's <city>_<sequence>_<frame> id (e.g. "
                        f"frankfurt_000000_000294_leftImg8bit.png); this file name has none")
    return "_".join(match.groups())


def train_id_to_label_id():
    """[256] uint8 lookup table trainId -> Cityscapes labelId (cityscapesscripts' labels
    table); other values map to 0 ('unlabeled', not evaluated)."""
    from cityscapesscripts.helpers.labels import trainId2label
    table = np.zeros(256, dtype=np.uint8)
    for train_id in range(SUBMISSION_CLASSES):
        table[train_id] = trainId2label[train_id].id
    return table


def check_submission(cfg, image_paths):
    """Before any work: the model predicts the 19 evaluated classes and every image has an id."""
    if int(cfg.class_num) != SUBMISSION_CLASSES:
        raise DataError(f"format_only: the Cityscapes submission takes the {SUBMISSION_CLASSES} "
                        f"evaluated classes (trainIds), but class_num={cfg.class_num}")
    for path in image_paths:
        benchmark_id(path)


def submission_file(image_path, pred, lut):
    """(file name, labelIds uint8 [H, W]) of one prediction (trainIds [H, W]): the image's
    name with a .png extension, as mmseg's format_only writes it."""
    benchmark_id(image_path)
    name = os.path.splitext(os.path.basename(image_path))[0] + ".png"
    return name, lut[np.asarray(pred, dtype=np.uint8)]


# -------------------------------------------------------------------------- sources --

class SegTrainSource:
    """Random-access training source. A key is ``epoch * len(self) + index`` (see
    ``ShardSampler``); it returns (image float32 CHW, label int32 HW) at crop size."""

    def __init__(self, samples, cfg, seed):
        self.samples = samples
        self.transform = SegTrainTransform(cfg)
        self.class_num = int(cfg.class_num)
        self.ignore_label = int(cfg.ignore_label)
        self.seed = int(seed)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = divmod(int(key), len(self.samples))
        image, label = load_pair(*self.samples[index], self.class_num, self.ignore_label)
        rng = np.random.default_rng([self.seed, epoch, index])
        return self.transform(rng, image, label)


class SegEvalSource:
    """Random-access eval source: ``source[i]`` -> (image float32 CHW resized to
    eval_base_size keeping the ratio, label int32 HW at full resolution, image path)."""

    def __init__(self, cfg, split=None):
        check_class_table(cfg)
        self.samples = list_samples(cfg, split or cfg.dataset.val_split)
        self.transform = SegEvalTransform(cfg)
        self.class_num = int(cfg.class_num)
        self.ignore_label = int(cfg.ignore_label)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        image_path, label_path = self.samples[index]
        image, label = load_pair(image_path, label_path, self.class_num, self.ignore_label)
        return self.transform(image), label.astype(np.int32), image_path


class _EvalColumns:
    """SegEvalSource without the path column (MindSpore batches arrays only)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        image, label, _ = self.source[self.indices[i]]
        return image, label


class ShardSampler:
    """Indices for one shard, re-drawn every epoch.

    Each epoch: a permutation of ``range(num_samples)`` seeded by (seed, epoch) (or the
    identity when not shuffling), padded by wrapping around to a multiple of
    ``num_shards`` (so every rank runs the same number of steps), then shard ``shard_id``
    takes every ``num_shards``-th element. Shards are disjoint when num_samples divides
    evenly, and together always cover every sample. Yields ``epoch * num_samples + index``
    so the source knows the epoch (for the augmentation seed).
    """

    def __init__(self, num_samples, num_shards=1, shard_id=0, shuffle=True, seed=0, pad=True):
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} must be in [0, num_shards={num_shards})")
        self.num_samples, self.num_shards, self.shard_id = num_samples, num_shards, shard_id
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.epoch = 0

    def indices(self, epoch):
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
                 if self.shuffle else np.arange(self.num_samples))
        if self.pad:
            total = -(-self.num_samples // self.num_shards) * self.num_shards
            order = np.resize(order, total)  # wraps around
        return order[self.shard_id::self.num_shards]

    def __len__(self):
        if self.pad:
            return -(-self.num_samples // self.num_shards)
        return len(range(self.shard_id, self.num_samples, self.num_shards))

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter((epoch * self.num_samples + self.indices(epoch)).tolist())


# -------------------------------------------------------------------------- dataset --

def _generator_kwargs(cfg):
    workers = max(1, int(cfg.dataset_num_parallel_workers))
    return dict(num_parallel_workers=workers, python_multiprocessing=workers > 1)


def create_seg_dataset(cfg, split, rank_id=0, group_size=1):
    """Batched ``mindspore.dataset`` with columns ("image", "label").

    train split: augmented crops, shuffled, sharded (padded), ``cfg.batch_size`` per
    rank with drop_remainder (a batch larger than the rank's share is an error). Other
    splits: eval inputs (image at eval_base_size, label at full size), in order, sharded
    without padding, ``cfg.eval_batch_size`` per batch, the last one possibly smaller.
    """
    import mindspore.dataset as ds

    check_class_table(cfg)
    is_train = split == cfg.dataset.train_split
    if cfg.check_data:
        from src.data.verify import raise_on_problems, verify_seg_split
        raise_on_problems(verify_seg_split(cfg, split))

    if is_train:
        samples = list_samples(cfg, split)
        sampler = ShardSampler(len(samples), group_size, rank_id, shuffle=True, seed=cfg.seed)
        batch_size = int(cfg.batch_size)
        if batch_size > len(sampler):
            raise DataError(f"batch_size={batch_size} is larger than the {len(sampler)} training samples "
                            f"of this rank ({len(samples)} in {split} / {group_size} rank(s)); with "
                            f"drop_remainder no batch would be formed")
        data = ds.GeneratorDataset(SegTrainSource(samples, cfg, cfg.seed), ["image", "label"],
                                   sampler=sampler, **_generator_kwargs(cfg))
        return data.batch(batch_size, drop_remainder=True)

    source = SegEvalSource(cfg, split)
    indices = list(range(rank_id, len(source), group_size))
    if not indices:
        raise DataError(f"split '{split}' has {len(source)} samples, none for rank {rank_id} of {group_size}")
    batch_size = int(cfg.eval_batch_size)  # the last batch may be smaller: nothing is dropped
    data = ds.GeneratorDataset(_EvalColumns(source, indices), ["image", "label"], shuffle=False,
                               **_generator_kwargs(cfg))
    return data.batch(batch_size, drop_remainder=False)
