"""Cityscapes: 19 trainId classes, ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (the labelTrainIds files are
written by ``tools/convert_dataset.py`` from the downloaded polygons / labelIds). The label
files hold trainIds already (0..18, 255 = ignore): no label rule."""
import os
import re

import numpy as np

from src.data import segmentation
from src.data.transforms import DataError

TASK = "segmentation"

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)

PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

LAYOUT = {
    "img_dir": "leftImg8bit", "ann_dir": "gtFine",
    "img_suffix": "_leftImg8bit.png", "seg_map_suffix": "_gtFine_labelTrainIds.png",
    "train_split": "train", "val_split": "val", "reduce_zero_label": False,
}


def scan(spec, split):
    hint = ""
    if spec.seg_map_suffix.endswith("_labelTrainIds.png"):  # the files convert_dataset.py writes
        hint = f"; Cityscapes: run `python tools/convert_dataset.py {spec.root}` first"
    return segmentation.scan_pairs(spec, split, missing_label_hint=hint)


check_sample = segmentation.check_pair
create_dataset = segmentation.create_seg_dataset


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
