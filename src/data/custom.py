"""A segmentation dataset described by the config alone (no code)::

    dataset: {name: custom, img_dir: images, ann_dir: masks,
              img_suffix: .jpg, seg_map_suffix: _mask.png,       (defaults .jpg / .png)
              train_split: training, val_split: validation,    (defaults train / val)
              class_names: [bg, fg], palette: [[0, 0, 0], [255, 0, 0]],
              reduce_zero_label: false, label_map: {}}

``img_dir`` and ``ann_dir`` have no default. Without ``class_names`` the classes are
called class_0.. and get fixed pseudo-random colours.
"""
from src.data import segmentation

TASK = "segmentation"
CLASS_NAMES = ()
PALETTE = ()
LAYOUT = {
    "img_suffix": ".jpg", "seg_map_suffix": ".png",  # mmseg CustomDataset's defaults
    "train_split": "train", "val_split": "val", "reduce_zero_label": False,
}

scan = segmentation.scan_pairs
check_sample = segmentation.check_pair
create_dataset = segmentation.create_seg_dataset
