"""ImageNet-style classification datasets (ViT): ``<data_path>/<split>/<class>/*<img_suffix>``.

Class index = position of the class folder in the sorted list of train folders (the
ImageFolder convention); the val split must use the same folder names.

Training (the MindSpore zoo ViT recipe, vit_README seed): decode + RandomResizedCrop
(scale ``crop_min``..1, ratio 3/4..4/3, ``interpolation``) -> horizontal flip ->
AutoAugment or RandAugment (``autoaugment``) -> normalise -> CHW; the label becomes a
one-hot soft target with ``label_smooth_factor`` smoothing; after batching, MixUp
(``mixup`` alpha) and/or CutMix (``cutmix`` alpha; one of the two per batch when both
are on) mix images and targets. Train batches: image float32 [B,3,S,S], label float32
[B, class_num] (rows sum to 1) -- the loss is a soft-target cross entropy.

Evaluation: decode -> resize the short side to ``eval_image_size / 0.875`` -> center
crop ``eval_image_size`` -> normalise -> CHW; label int32 [B].

Random ops of ``mindspore.dataset`` draw from the global dataset seed, set from
``cfg.seed`` here; with one worker a run is repeatable.
"""
import os

import numpy as np

from src.data.listing import Listing
from src.data.sampling import ShardSampler, generator_kwargs
from src.data.transforms import DataError, read_image

TASK = "classification"
CLASS_NAMES = ()  # the class folders' names, read from disk
PALETTE = ()
LAYOUT = {"img_dir": "", "ann_dir": "", "img_suffix": ".JPEG", "seg_map_suffix": "",
          "train_split": "train", "val_split": "val", "reduce_zero_label": False}

EVAL_CROP_RATIO = 0.875  # resize to size / 0.875 then center-crop size (224 <- 256)


def _class_folders(folder):
    return sorted(e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e)))


def scan(spec, split):
    """``Listing`` of (path, class_index) for ``split``; class indices from the train
    split's folders. Problems: missing root or split dir, no class folders, val classes
    unknown to train, more classes than class_num, empty train class folders, no images."""
    listing = Listing(split)
    root, suffix = spec.root, spec.img_suffix.lower()
    if not os.path.isdir(root):
        listing.problem(f"dataset root not found: data_path={root!r}")
        return listing
    folders = {}
    for name in dict.fromkeys((spec.train_split, split)):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            listing.problem(f"split directory '{name}' not found: {folder} "
                            f"(expected <data_path>/{name}/<class>/)")
        elif not _class_folders(folder):
            listing.problem(f"empty dataset: no class folders in {folder} "
                            f"(expected {folder}/<class>/*{spec.img_suffix})")
        else:
            folders[name] = _class_folders(folder)
    if not listing.ok:
        return listing
    classes = folders[spec.train_split]
    unknown = sorted(set(folders[split]) - set(classes))
    if unknown:
        listing.problem(f"{os.path.join(root, split)}: class folders {unknown[:5]} are not in the "
                        f"train split (rule: val classes are a subset of train classes)")
    if len(classes) > spec.class_num:
        listing.problem(f"{os.path.join(root, split)}: {len(classes)} class folders but class_num="
                        f"{spec.class_num} (rule: class_num >= number of classes)")
    empty = []
    for index, name in enumerate(classes):
        folder = os.path.join(root, split, name)
        if not os.path.isdir(folder):
            continue  # a val split may lack some classes
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(suffix))
        if not files and split == spec.train_split:
            empty.append(folder)
        listing.samples.extend((os.path.join(folder, f), index) for f in files)
    if empty:
        listing.problem(f"{len(empty)} class folder(s) hold no '*{spec.img_suffix}' images:", empty)
    if not listing.samples:
        listing.problem(f"empty dataset: no '*{spec.img_suffix}' images under {os.path.join(root, split)}")
    return listing


def check_sample(spec, sample):
    """The image decodes completely (DataError naming the file otherwise). Returns None:
    a class label has no pixels to count (see ``segmentation.check_pair``)."""
    read_image(sample[0])
    return None


def check_encoded(data, path):
    """Cheap truncation test of an encoded JPEG/PNG (full decoding happens in C++, whose
    errors do not name the file): the end-of-image marker must be there."""
    head, tail = bytes(data[:8]), bytes(data[-1024:])
    if head.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in tail:
            raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        if b"IEND" not in tail:
            raise DataError(f"{path}: truncated PNG (no IEND chunk)")
    else:
        raise DataError(f"{path}: not a JPEG or PNG file (unknown signature {head[:4]!r})")


class ImageFolderSource:
    """Random-access source of (encoded image bytes uint8, class index int32)."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        path, label = self.samples[int(key) % len(self.samples)]
        data = np.fromfile(path, dtype=np.uint8)
        check_encoded(data, path)
        return data, np.int32(label)


def _interpolation(name):
    from mindspore.dataset.vision import Inter
    try:
        return Inter[name.upper()]
    except KeyError:
        raise DataError(f"config: interpolation={name!r} is not one of "
                        f"{[m.name for m in Inter]}") from None


def _auto_augment(name, interpolation):
    import mindspore.dataset.vision as vision
    if name in ("", "none"):
        return []
    if name == "autoaugment":
        return [vision.AutoAugment(vision.AutoAugmentPolicy.IMAGENET, interpolation)]
    if name == "randaugment":
        return [vision.RandAugment(num_ops=2, magnitude=9, interpolation=interpolation)]
    raise DataError(f"config: autoaugment={name!r}; expected '', 'autoaugment' or 'randaugment'")


def eval_image_ops(cfg):
    """The evaluation transform of a decoded RGB uint8 image (HWC) -> float32 CHW: resize
    the short side to ``eval_image_size / 0.875``, centre-crop ``eval_image_size``,
    normalise. One list for the eval dataset and the Python API (src/apis.py)."""
    import mindspore.dataset.vision as vision
    size = int(cfg.eval_image_size)
    return [vision.Resize(int(size / EVAL_CROP_RATIO), interpolation=_interpolation(cfg.interpolation)),
            vision.CenterCrop(size),
            vision.Normalize(list(cfg.img_norm_mean), list(cfg.img_norm_std)), vision.HWC2CHW()]


def create_dataset(spec, cfg, split, samples, rank_id=0, group_size=1):
    import mindspore.dataset as ds
    import mindspore.dataset.transforms as transforms
    import mindspore.dataset.vision as vision

    is_train = split == spec.train_split
    ds.config.set_seed(int(cfg.seed))
    inter = _interpolation(cfg.interpolation)
    mean, std = list(cfg.img_norm_mean), list(cfg.img_norm_std)
    batch_size = int(cfg.batch_size if is_train else cfg.eval_batch_size)
    sampler = ShardSampler(len(samples), group_size, rank_id, shuffle=is_train, seed=cfg.seed, pad=is_train)
    if len(sampler) == 0:
        raise DataError(f"split '{split}' has {len(samples)} samples, none for rank {rank_id} of {group_size}")
    if is_train and batch_size > len(sampler):
        raise DataError(f"batch_size={batch_size} is larger than the "
                        f"{len(sampler)} samples of split '{split}' on this rank ({len(samples)} in all, "
                        f"{group_size} rank(s)); with drop_remainder no batch would be formed")
    data = ds.GeneratorDataset(ImageFolderSource(samples), ["image", "label"], sampler=sampler,
                               **generator_kwargs(cfg))
    workers = max(1, int(cfg.dataset_num_parallel_workers))

    if is_train:
        size = int(cfg.train_image_size)
        ops = [vision.RandomCropDecodeResize(size, scale=(float(cfg.crop_min), 1.0),
                                             ratio=(3 / 4, 4 / 3), interpolation=inter),
               vision.RandomHorizontalFlip(0.5)]
        ops += _auto_augment(cfg.autoaugment, inter)
        ops += [vision.Normalize(mean, std), vision.HWC2CHW()]
        data = data.map(ops, input_columns="image", num_parallel_workers=workers)
        data = data.map([transforms.OneHot(int(cfg.class_num), smoothing_rate=float(cfg.label_smooth_factor)),
                         transforms.TypeCast(np.float32)], input_columns="label")
        data = data.batch(batch_size, drop_remainder=True)
        mixers = []
        if cfg.mixup > 0:
            mixers.append(vision.MixUpBatch(alpha=float(cfg.mixup)))
        if cfg.cutmix > 0:
            mixers.append(vision.CutMixBatch(vision.ImageBatchFormat.NCHW, alpha=float(cfg.cutmix)))
        if mixers:
            mixer = mixers[0] if len(mixers) == 1 else transforms.RandomChoice(mixers)
            data = data.map(mixer, input_columns=["image", "label"])
        return data

    data = data.map([vision.Decode()] + eval_image_ops(cfg), input_columns="image",
                    num_parallel_workers=workers)
    return data.batch(batch_size, drop_remainder=False)
