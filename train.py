"""Train SegFormer / Segmenter on Cityscapes or ViT on ImageNet, as the config says.

    python train.py --config_path=CONFIG [--data_path=DIR] [--pretrained_ckpt_path=CKPT]
                    [--run_eval=True|False] [--resume_ckpt=CKPT | --auto_resume=True]
                    [--any_config_key=value]

The log goes to stdout and <output_dir>/train.log (train_rank{R}.log per rank when
distributed); checkpoints to <checkpoint_path>. See README "Training".
"""
import os
import sys
import traceback

from src.utils.config import config_from_argv
from src.utils.logger import FileLogger, fail_on_error, train_log_name


def main(argv):
    cfg = config_from_argv(argv)
    from src.engine.startup import check_startup
    from src.engine.trainer import train
    from src.utils.device import setup_runtime

    try:
        rank_id, group_size = setup_runtime(cfg)
        log = FileLogger(os.path.join(cfg.output_dir, train_log_name(rank_id, group_size)))
    except Exception as err:  # noqa: BLE001  (user error or bug: fail_on_error tells them apart)
        fail_on_error(err)
    log(f"config: {cfg.config_path or '(defaults)'}, rank {rank_id}/{group_size}, "
        f"device {cfg.device_target}, seed {cfg.seed}")
    try:
        check_startup(cfg, "train")  # what the run reads or writes later fails now
        train(cfg, rank_id, group_size, log)
    except Exception as err:  # noqa: BLE001
        fail_on_error(err, log)
    except BaseException:
        log.to_file(traceback.format_exc().rstrip())  # the log file keeps why the run stopped
        raise
    log("all train process done")


if __name__ == "__main__":
    main(sys.argv[1:])
