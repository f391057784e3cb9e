"""Rules shared by the checkpoint formats (segformer_formats.py, vit_formats.py)."""

from src.utils.errors import UserError


class ClassCountError(UserError, ValueError):
    """The checkpoint's classifier has another class count than the config."""


def check_class_count(converted, skipped, cfg, class_tensors):
    """``class_tensors`` (name -> class axis) must hold ``cfg.class_num`` classes; with
    ``cfg.drop_head`` a different count is skipped (reported) instead of an error, leaving
    the classifier freshly initialised for fine-tuning on other classes."""
    present = [k for k in class_tensors if k in converted]
    if cfg is None or not present:
        return converted, skipped
    got = int(converted[present[0]].shape[class_tensors[present[0]]])
    if got == cfg.class_num:
        return converted, skipped
    if not cfg.get("drop_head", False):
        raise ClassCountError(f"'{present[0]}' has {got} classes but config key 'class_num' "
                              f"is {cfg.class_num}; pass --class_num={got}, or "
                              f"--drop_head=True to leave the classifier freshly initialised")
    kept = {k: v for k, v in converted.items() if k not in class_tensors}
    return kept, list(skipped) + [f"{k} ({got} classes, class_num {cfg.class_num})"
                                  for k in present]
