"""Segment every image under a path and write PNGs (SegFormer, Segmenter).

    python infer.py --config_path=CONFIG --infer_ckpt_path=CKPT|MODEL.mindir|MODEL.onnx --data_path=IMAGES|VIDEO
                    [--infer_output_path=DIR] [--format_only=True] [--any_config_key=value]

For each image ``<stem>.<ext>``: ``<stem>_gray.png`` (trainIds, palette PNG),
``<stem>_color.png``, ``<stem>_overlap.png`` and a copy of the original, each switched by
``infer_save_gray_img`` / ``infer_save_color_img`` / ``infer_save_overlap_img`` /
``infer_copy_original_img``. The log also goes to <output_dir>/infer.log. Exit code 1 if
any image could not be read (the others are still written). ``--format_only=True`` writes
only the benchmark's submission files instead (Cityscapes: labelIds PNGs named after each
image's city_seq_frame id, flat, plus <dataset>_submission.zip). A video file (or, with
``--infer_video=True``, a folder of frames) gives ``<name>_overlay.mp4`` instead, with a
progress bar (src/engine/infer_video.py). Every image goes through the
Python API (src/apis.py ``inference_model``) with the config's test settings; an exported
.mindir / .onnx file gets the same pre- and post-processing as its checkpoint.
"""
import os
import sys

from src.utils.config import config_from_argv
from src.utils.logger import FileLogger, fail, fail_on_error


def main(argv):
    cfg = config_from_argv(argv)
    from src.apis import build_inference_model, inference_model
    from src.engine.infer_images import plan_inference, report_failures, run_inference
    from src.engine.infer_video import is_video_input, plan_video, run_video
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
        video = is_video_input(cfg)
        # bad input/output paths and settings fail before the model is loaded
        plan = plan_video(cfg) if video else plan_inference(cfg)
        check_startup(cfg, "infer")
        model = build_inference_model(cfg, cfg.infer_ckpt_path or "", log)
        _, failures = (run_video if video else run_inference)(
            lambda image: inference_model(model, image), cfg, plan, log)
    except Exception as err:  # noqa: BLE001  (user error or bug: fail_on_error tells them apart)
        fail_on_error(err, log)
    if report_failures(failures, log):
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
