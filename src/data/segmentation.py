"""Semantic segmentation from paired image/label folders: the code the cityscapes, ade20k
and custom dataset modules share (each module names its layout, classes and label rule;
``src/data/registry.py`` turns them into a ``DatasetSpec``)::

    <data_path>/<img_dir>/<split>/**/<name><img_suffix>
    <data_path>/<ann_dir>/<split>/**/<name><seg_map_suffix>     (same relative path)

Label files hold raw values; ``LabelRule`` turns them into class ids ``0..class_num-1``
and ``ignore_label`` (255: counts nowhere) as mmseg 0.x ``LoadAnnotations`` does: first
``label_map`` ({file value: value}, other values unchanged), then ``reduce_zero_label``
(0 -> ignore, k -> k-1, ignore stays ignore; ADE20K's "0 = other"). A value that does not
end up a class id or the ignore label is an error naming the file.

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

import numpy as np

from src.data.listing import Listing, repeated_folders_message, scan_files
from src.data.sampling import ShardSampler, generator_kwargs
from src.data.transforms import (DataError, SegEvalTransform, SegTrainTransform, check_label_size,
                                 read_image, read_label)


# ----------------------------------------------------------------------- label rule --

class LabelRule:
    """Raw label-file values (uint8) -> class ids / ignore_label, by a 256-entry table."""

    def __init__(self, class_num, ignore_label=255, reduce_zero_label=False, label_map=None):
        self.class_num, self.ignore_label = int(class_num), int(ignore_label)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.label_map = dict(label_map or {})
        table = np.arange(256, dtype=np.int64)
        for old, new in self.label_map.items():
            table[old] = new
        if self.reduce_zero_label:
            table = np.where(table == 0, self.ignore_label,
                             np.where(table == self.ignore_label, self.ignore_label, table - 1))
        self.table = table
        self.valid = ((table >= 0) & (table < self.class_num)) | (table == self.ignore_label)
        self.identity = not self.label_map and not self.reduce_zero_label

    @classmethod
    def from_spec(cls, spec):
        return cls(spec.class_num, spec.ignore_label, spec.reduce_zero_label, dict(spec.label_map))

    def _bad_values_message(self, values, path):
        shown = values[:10].tolist()
        outside = f"[0, {self.class_num})"
        if self.identity:
            return (f"{path}: label values {shown} outside {outside} and not the ignore label "
                    f"{self.ignore_label}")
        if not self.label_map:
            return (f"{path}: label values {shown} outside 0..{self.class_num} (reduce_zero_label: "
                    f"0 = other, ignored; k -> class k-1) and not the ignore label {self.ignore_label}")
        steps = "dataset.label_map" + (" then reduce_zero_label" if self.reduce_zero_label else "")
        return (f"{path}: label values {shown} become {self.table[values[:10]].tolist()} through "
                f"{steps}, outside {outside} and not the ignore label {self.ignore_label}")

    def __call__(self, raw, path):
        """Class-id map (uint8) of the raw label ``raw`` read from ``path``."""
        bad = ~self.valid[raw]
        if bad.any():
            raise DataError(self._bad_values_message(np.unique(raw[bad]), path))
        return raw if self.identity else self.table[raw].astype(np.uint8)


def load_pair(image_path, label_path, rule):
    """Read one (image, label) pair: RGB uint8 HWC and the class-id map (``rule`` applied)."""
    image = read_image(image_path)
    raw = read_label(label_path)
    check_label_size(raw, image.shape, label_path, image_path)
    return image, rule(raw, label_path)


# -------------------------------------------------------------- listing and checks --

def split_dirs(spec, split):
    return (os.path.join(spec.root, spec.img_dir, split),
            os.path.join(spec.root, spec.ann_dir, split))


def scan_pairs(spec, split, missing_label_hint=""):
    """``Listing`` of the (image_path, label_path) pairs of ``split``, sorted; problems:
    missing root or split dir, a folder reached twice through symlinks (``walk_files``),
    empty split, images without label, labels without image."""
    listing = Listing(split)
    if not os.path.isdir(spec.root):
        listing.problem(f"dataset root not found: data_path={spec.root!r}")
        return listing
    img_dir, ann_dir = split_dirs(spec, split)
    for what, folder, key in (("image", img_dir, "img_dir"), ("label", ann_dir, "ann_dir")):
        if not os.path.isdir(folder):
            listing.problem(f"{what} directory of split '{split}' not found: {folder} "
                            f"(from data_path + dataset.{key} + split)")
    if not listing.ok:
        return listing
    images, repeated_images = scan_files(img_dir, spec.img_suffix)
    labels, repeated_labels = scan_files(ann_dir, spec.seg_map_suffix)
    for folder, repeated in ((img_dir, repeated_images), (ann_dir, repeated_labels)):
        if repeated:
            listing.problem(repeated_folders_message(folder, repeated), repeated)
    if not images:
        listing.problem(f"empty dataset: no '*{spec.img_suffix}' images under {img_dir}")
        return listing
    expected = {rel[: -len(spec.img_suffix)] + spec.seg_map_suffix: rel for rel in images}
    label_set = set(labels)
    no_label = [os.path.join(img_dir, rel) + f" (expected {os.path.join(ann_dir, lab)})"
                for lab, rel in expected.items() if lab not in label_set]
    if no_label:
        listing.problem(f"{len(no_label)} image(s) of split '{split}' have no label (rule: every "
                        f"image has a '*{spec.seg_map_suffix}' label with the same relative path"
                        f"{missing_label_hint}):", no_label)
    no_image = [os.path.join(ann_dir, lab) for lab in labels if lab not in expected]
    if no_image:
        listing.problem(f"{len(no_image)} label(s) of split '{split}' have no image (rule: every "
                        f"'*{spec.seg_map_suffix}' label has a '*{spec.img_suffix}' image):", no_image)
    listing.samples = [(os.path.join(img_dir, rel), os.path.join(ann_dir, lab))
                       for lab, rel in expected.items() if lab in label_set]
    return listing


def check_pair(spec, sample):
    """Every per-file rule of one pair (decodes completely, label size = image size, label
    values allowed by the label rule); raises DataError naming the file. Returns the
    number of labelled pixels (not ``ignore_label`` once the label rule is applied): 0 means
    the pair teaches nothing (the loss of such a crop is exactly 0)."""
    _, label = load_pair(*sample, LabelRule.from_spec(spec))
    return int(np.count_nonzero(label != spec.ignore_label))


# -------------------------------------------------------------------------- sources --

class SegTrainSource:
    """Random-access training source. A key is ``epoch * len(self) + index`` (see
    ``ShardSampler``); it returns (image float32 CHW, label int32 HW) at crop size."""

    def __init__(self, samples, cfg, seed, rule):
        self.samples = samples
        self.transform = SegTrainTransform(cfg)
        self.rule = rule
        self.seed = int(seed)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = divmod(int(key), len(self.samples))
        image, label = load_pair(*self.samples[index], self.rule)
        rng = np.random.default_rng([self.seed, epoch, index])
        return self.transform(rng, image, label)


class SegEvalSource:
    """Random-access eval source: ``source[i]`` -> (image float32 CHW resized to
    eval_base_size keeping the ratio, label int32 HW at full resolution, image path);
    ``source.load(i)`` -> the untransformed (RGB uint8 image, class-id label)."""

    def __init__(self, samples, cfg, rule):
        self.samples = samples
        self.transform = SegEvalTransform(cfg)
        self.rule = rule

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        return load_pair(*self.samples[index], self.rule)

    def __getitem__(self, index):
        image, label = self.load(index)
        return self.transform(image), label.astype(np.int32), self.samples[index][0]


class _EvalColumns:
    """SegEvalSource without the path column (MindSpore batches arrays only)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        image, label, _ = self.source[self.indices[i]]
        return image, label


# -------------------------------------------------------------------------- dataset --

def create_seg_dataset(spec, cfg, split, samples, rank_id=0, group_size=1):
    """Batched ``mindspore.dataset`` with columns ("image", "label").

    train split: augmented crops, shuffled, sharded (padded), ``cfg.batch_size`` per
    rank with drop_remainder (a batch larger than the rank's share is an error). Other
    splits: eval inputs (image at eval_base_size, label at full size), in order, sharded
    without padding, ``cfg.eval_batch_size`` per batch, the last one possibly smaller.
    """
    import mindspore.dataset as ds

    rule = LabelRule.from_spec(spec)
    if split == spec.train_split:
        sampler = ShardSampler(len(samples), group_size, rank_id, shuffle=True, seed=cfg.seed)
        batch_size = int(cfg.batch_size)
        if batch_size > len(sampler):
            raise DataError(f"batch_size={batch_size} is larger than the {len(sampler)} training samples "
                            f"of this rank ({len(samples)} in {split} / {group_size} rank(s)); with "
                            f"drop_remainder no batch would be formed")
        data = ds.GeneratorDataset(SegTrainSource(samples, cfg, cfg.seed, rule), ["image", "label"],
                                   sampler=sampler, **generator_kwargs(cfg))
        return data.batch(batch_size, drop_remainder=True)

    source = SegEvalSource(samples, cfg, rule)
    indices = list(range(rank_id, len(source), group_size))
    if not indices:
        raise DataError(f"split '{split}' has {len(source)} samples, none for rank {rank_id} of {group_size}")
    batch_size = int(cfg.eval_batch_size)  # the last batch may be smaller: nothing is dropped
    data = ds.GeneratorDataset(_EvalColumns(source, indices), ["image", "label"], shuffle=False,
                               **generator_kwargs(cfg))
    return data.batch(batch_size, drop_remainder=False)
