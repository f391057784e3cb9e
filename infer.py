"""Segment every image under a path and write PNGs (SegFormer, Segmenter).

    python infer.py --config_path=CONFIG --infer_ckpt_path=CKPT --data_path=IMAGES
                    [--infer_output_path=DIR] [--any_config_key=value]

For each image ``<stem>.<ext>``: ``<stem>_gray.png`` (trainIds, palette PNG),
``<stem>_color.png``, ``<stem>_overlap.png`` and a copy of the original, each switched by
``infer_save_gray_img`` / ``infer_save_color_img`` / ``infer_save_overlap_img`` /
``infer_copy_original_img``. The log also goes to <output_dir>/infer.log. Exit code 1 if
any image could not be read (the others are still written).
"""
import os
import sys

from src.utils.config import config_from_argv
from src.utils.logger import FileLogger, fail, fail_on_error


def main(argv):
    cfg = config_from_argv(argv)
    from src.engine.infer_images import plan_inference, run_inference
    from src.engine.inference import load_trained_net
    from src.engine.startup import check_startup
    from src.models import is_segmentation
    from src.utils.device import setup_runtime_one_device_ok

    if not is_segmentation(cfg):
        fail(f"infer.py writes segmentation maps; config model={cfg.model!r} is not a "
             f"segmentation model (use eval.py for ViT accuracy)")
    log = None
    try:
        log = FileLogger(os.path.join(cfg.output_dir, "infer.log"))
        setup_runtime_one_device_ok(cfg, log)
        plan = plan_inference(cfg)  # bad input/output paths fail before the model is loaded
        check_startup(cfg, "infer")
        net = load_trained_net(cfg, cfg.infer_ckpt_path, log)
        _, failures = run_inference(net, cfg, plan, log)
    except Exception as err:  # noqa: BLE001  (user error or bug: fail_on_error tells them apart)
        fail_on_error(err, log)
    if failures:
        log(f"{len(failures)} image(s) could not be read and were skipped:")
        for _, reason in failures:
            log(f"  {reason}")
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
