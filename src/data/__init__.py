"""Datasets: ``create_dataset(cfg, split, rank_id=0, group_size=1)``.

- Segmentation (``cfg.dataset.name`` cityscapes or custom): train batches are
  ("image" float32 [B,3,crop_h,crop_w], "label" int32 [B,crop_h,crop_w], 255 = ignore);
  other splits give eval batches (image at eval_base_size, label at full resolution).
  For evaluation with file names use ``SegEvalSource`` directly.
- Classification (``cfg.dataset.name`` imagenet, or ``cfg.model`` vit): train batches are
  ("image" float32 [B,3,S,S], "label" float32 [B,class_num] soft targets); eval batches
  have int32 labels [B].

Steps per epoch: ``dataset.get_dataset_size()``. Every data problem raises ``DataError``
naming the file and the rule.
"""
from src.data.cityscapes import SegEvalSource, SegTrainSource, ShardSampler, create_seg_dataset, list_samples
from src.data.imagenet import create_imagenet_dataset
from src.data.transforms import DataError
from src.data.verify import is_classification, verify_split

__all__ = ["create_dataset", "SegEvalSource", "SegTrainSource", "ShardSampler", "DataError",
           "list_samples", "verify_split"]


def create_dataset(cfg, split, rank_id=0, group_size=1):
    """Batched ``mindspore.dataset`` of ``split`` ("train", "val", or the names in
    cfg.dataset.train_split / val_split) for rank ``rank_id`` of ``group_size``."""
    if is_classification(cfg):
        return create_imagenet_dataset(cfg, split, rank_id, group_size)
    return create_seg_dataset(cfg, split, rank_id, group_size)
