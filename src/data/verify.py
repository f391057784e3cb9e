"""Scan a whole dataset split and list every problem (tools/verify_dataset.py, and
``--check_data=True`` before training), like mmcls' verify_dataset.

Segmentation: layout problems (missing dirs, unpaired files, empty split) and, for every
pair, corrupt/truncated image or label, label size != image size, label values outside
[0, class_num) and not ignore_label. ImageNet-style: layout problems and every image
fully decodable.
"""
import multiprocessing

from src.data import cityscapes, imagenet
from src.data.transforms import DataError, read_image


def _check_pair(args):
    image_path, label_path, class_num, ignore_label = args
    try:
        cityscapes.load_pair(image_path, label_path, class_num, ignore_label)
    except DataError as err:
        return str(err)
    return None


def _check_image(path):
    try:
        read_image(path)
    except DataError as err:
        return str(err)
    return None


def _run(fn, jobs, nproc):
    if nproc <= 1:
        results = map(fn, jobs)
        return [r for r in results if r]
    with multiprocessing.Pool(nproc) as pool:
        return [r for r in pool.imap(fn, jobs, chunksize=8) if r]


def verify_seg_split(cfg, split, nproc=1):
    """All problems of a segmentation split, as messages (empty list: all good)."""
    try:
        cityscapes.check_class_table(cfg)
        samples = cityscapes.list_samples(cfg, split)
    except DataError as err:
        return [str(err)]
    jobs = [(img, lab, int(cfg.class_num), int(cfg.ignore_label)) for img, lab in samples]
    return _run(_check_pair, jobs, nproc)


def verify_imagenet_split(cfg, split, nproc=1):
    try:
        samples = imagenet.list_samples(cfg, split)
    except DataError as err:
        return [str(err)]
    return _run(_check_image, [path for path, _ in samples], nproc)


def verify_split(cfg, split, nproc=1):
    if is_classification(cfg):
        return verify_imagenet_split(cfg, split, nproc)
    return verify_seg_split(cfg, split, nproc)


def is_classification(cfg):
    return cfg.dataset.name == "imagenet" or cfg.model == "vit"


def raise_on_problems(problems):
    if problems:
        listed = "\n  ".join(problems)
        raise DataError(f"dataset check failed, {len(problems)} problem(s):\n  {listed}")
