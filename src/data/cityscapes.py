"""Cityscapes: 19 trainId classes, ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (the labelTrainIds files are
written by ``tools/convert_dataset.py`` from the downloaded polygons / labelIds). The label
files hold trainIds already (0..18, 255 = ignore): no label rule."""
from src.data import segmentation

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
