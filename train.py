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
from src.utils.logger import FileLogger, fail, train_log_name


def main(argv):
    cfg = config_from_argv(argv)
    from src.data import DataError
    from src.engine.amp import AmpConfigError
    from src.engine.optim import OptimizerError
    from src.engine.schedules import ScheduleError
    from src.engine.trainer import TrainError, train
    from src.utils.checkpoint import CheckpointError
    from src.utils.device import RuntimeSetupError, setup_runtime

    user_errors = (AmpConfigError, CheckpointError, DataError, OptimizerError, RuntimeSetupError,
                   ScheduleError, TrainError, OSError, ValueError)
    try:
        rank_id, group_size = setup_runtime(cfg)
        log = FileLogger(os.path.join(cfg.output_dir, train_log_name(rank_id, group_size)))
    except user_errors as err:
        fail(err)
    log(f"config: {cfg.config_path or '(defaults)'}, rank {rank_id}/{group_size}, "
        f"device {cfg.device_target}, seed {cfg.seed}")
    try:
        train(cfg, rank_id, group_size, log)
    except user_errors as err:
        log.to_file(f"error: {err}")
        fail(err)
    except BaseException:
        log.to_file(traceback.format_exc().rstrip())  # the log file keeps the cause of a crash
        raise
    log("all train process done")


if __name__ == "__main__":
    main(sys.argv[1:])
