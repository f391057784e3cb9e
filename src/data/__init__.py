"""Datasets, through one registry (``src/data/registry.py``): ``dataset.name`` picks the
module ``src/data/<name>.py`` (cityscapes, ade20k, custom, imagenet), which owns its file
listing, classes and palette, label rule and checks.

- ``create_dataset(cfg, split, rank_id=0, group_size=1)``: segmentation train batches are
  ("image" float32 [B,3,crop_h,crop_w], "label" int32 [B,crop_h,crop_w], 255 = ignore);
  other splits give eval batches (image at eval_base_size, label at full resolution).
  Classification (imagenet): train ("image" float32 [B,3,S,S], "label" float32
  [B,class_num] soft targets), eval int32 labels [B]. ``split`` is "train", "val" (the
  dataset's own split folders, e.g. ADE20K's training / validation) or a folder name.
- ``list_samples``, ``verify_split`` (every problem of a split, from the same listing;
  ``verify_report`` adds the notes, e.g. label files without a labelled pixel),
  ``train_source`` / ``eval_source`` (random-access segmentation sources),
  ``dataset_spec``, ``class_names``, ``palette``.

Steps per epoch: ``dataset.get_dataset_size()``. Every data problem raises ``DataError``
naming the file and the rule.
"""
from src.data.registry import (DatasetSpec, class_names, create_dataset, dataset_module, dataset_spec,
                               eval_source, list_samples, palette, train_source, verify_report,
                               verify_split)
from src.data.sampling import ShardSampler
from src.data.transforms import DataError

__all__ = ["DataError", "DatasetSpec", "ShardSampler", "class_names", "create_dataset", "dataset_module",
           "dataset_spec", "eval_source", "list_samples", "palette", "train_source", "verify_report",
           "verify_split"]
