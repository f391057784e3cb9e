"""Evaluate a checkpoint on the val split: per-class IoU, mIoU, aAcc, mAcc (SegFormer,
Segmenter) or top-1/top-5 accuracy (ViT). The log also goes to <output_dir>/eval.log.

    python eval.py --config_path=CONFIG --eval_ckpt_path=CKPT|MODEL.mindir|MODEL.onnx [--data_path=DIR]
                   [--eval_mode=whole|slide] [--eval_scales=0.5,0.75,1.0] [--eval_flip]
                   [--any_config_key=value]

An exported .mindir / .onnx file (export.py) is evaluated with the config's pre- and
post-processing, exactly as the checkpoint it came from.
"""
import os
import sys
import time

from src.utils.config import config_from_argv
from src.utils.logger import FileLogger, fail_on_error


def main(argv):
    cfg = config_from_argv(argv)
    from src.engine.evaluate import evaluate
    from src.engine.networks import load_network
    from src.engine.startup import check_startup
    from src.utils.device import setup_runtime_one_device_ok

    log = None
    try:
        log = FileLogger(os.path.join(cfg.output_dir, "eval.log"))
        rank_id, group_size = setup_runtime_one_device_ok(cfg, log)
        check_startup(cfg, "eval")
        net = load_network(cfg, cfg.eval_ckpt_path, log)
        start = time.time()
        evaluate(net, cfg, rank_id, group_size, log, ckpt_name=os.path.basename(cfg.eval_ckpt_path))
        log(f"all eval process done, cost:{time.time() - start:.0f}s")
    except Exception as err:  # noqa: BLE001  (user error or bug: fail_on_error tells them apart)
        fail_on_error(err, log)


if __name__ == "__main__":
    main(sys.argv[1:])
