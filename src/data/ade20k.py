"""ADE20K (SceneParsing, ``ADEChallengeData2016``): 150 classes::

    images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    annotations/{training,validation}/ADE_{train,val}_<8 digits>.png   (same name)

Annotation values: 0 = "other" (not one of the 150), k = class k-1 (1..150), so
``reduce_zero_label`` is on: 0 -> ignore (255), k -> k-1, as mmseg's ``ADE20KDataset``.
Predictions (and ``infer.py``'s gray PNGs) hold class indices 0..149; the benchmark's
submission format is those values + 1.

Class names and palette are mmseg's ``ADE20KDataset`` ones, in its order (index =
class id), so converted mmseg/NVlabs/HF checkpoints and their logs line up; "bed " keeps
mmseg's trailing space for the same reason.
"""
import os

import numpy as np

from src.data import segmentation
from src.data.transforms import DataError

TASK = "segmentation"

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain",
    "plant", "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house",
    "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop",
    "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent",
    "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)

PALETTE = (  # RGB, one per class id
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),  # 0-4
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),  # 5-9
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),  # 10-14
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),  # 15-19
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),  # 20-24
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),  # 25-29
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),  # 30-34
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),  # 35-39
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255),  # 40-44
    (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),  # 45-49
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),  # 50-54
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),  # 55-59
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),  # 60-64
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),  # 65-69
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173),  # 70-74
    (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),  # 75-79
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184),  # 80-84
    (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),  # 85-89
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),  # 90-94
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),  # 95-99
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),  # 100-104
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255),  # 105-109
    (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),  # 110-114
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),  # 115-119
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),  # 120-124
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),  # 125-129
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),  # 130-134
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),  # 135-139
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),  # 140-144
    (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),  # 145-149
)

LAYOUT = {
    "img_dir": "images", "ann_dir": "annotations", "img_suffix": ".jpg", "seg_map_suffix": ".png",
    "train_split": "training", "val_split": "validation", "reduce_zero_label": True,
}

scan = segmentation.scan_pairs
check_sample = segmentation.check_pair
create_dataset = segmentation.create_seg_dataset


# ----------------------------------------------------------------------- submission --
#
# The SceneParsing benchmark takes one PNG per test image, named as the image, holding the
# annotation values 1..150 (mmseg's ADE20KDataset.results2img: prediction + 1).

SUBMISSION_CLASSES = 150


def check_submission(cfg, image_paths):
    """Before any work: the model predicts the benchmark's 150 classes."""
    if int(cfg.class_num) != SUBMISSION_CLASSES:
        raise DataError(f"format_only: the ADE20K submission takes the {SUBMISSION_CLASSES} "
                        f"classes, but class_num={cfg.class_num}")


def submission_lookup():
    """Nothing to look up: the submission value is the class index + 1."""
    return None


def submission_file(image_path, pred, _lookup):
    """(file name, uint8 [H, W] values 1..150) of one prediction (class indices [H, W])."""
    name = os.path.splitext(os.path.basename(image_path))[0] + ".png"
    return name, (np.asarray(pred, dtype=np.int32) + 1).astype(np.uint8)
