"""Checks an entry point runs before any work: what a run will read or write later (the val
split of the evaluation after each epoch, the checkpoint folder, the evaluation settings)
fails now, naming the key, not after the first epoch has trained.

    check_startup(cfg, "train")      # train.py; "eval" for eval.py, "infer" for infer.py

The values themselves (enums, list lengths) are checked when the config loads
(``src/utils/config.py``).
"""
import os
import tempfile

from src.data import DataError, list_samples
from src.models import is_segmentation
from src.utils.config import ConfigError

COMMANDS = ("train", "eval", "infer")


def check_writable_dir(path, key):
    """``path`` is, or can be made, a folder this process can write files into. The probe
    leaves nothing behind (folders it created are removed): a run that fails later on
    another check has written nothing."""
    path = os.path.abspath(path)
    created = []
    missing = path
    while not os.path.lexists(missing):
        created.append(missing)
        missing = os.path.dirname(missing)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as err:
        raise ConfigError(f"config key '{key}': cannot write into {path} "
                          f"({err.strerror or err}); give a writable folder") from None
    finally:
        for folder in created:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:  # not created after all, or another process writes there now
                break


def _check_eval_settings(cfg):
    """The evaluation settings as the inferencer reads them (slide windows, scales ...)."""
    if is_segmentation(cfg):
        from src.engine.inference import SegInferencer
        SegInferencer(None, cfg)


def _check_val_split(cfg, why):
    try:
        list_samples(cfg, "val")
    except DataError as err:
        raise DataError(f"{why}, but the val split cannot be read: {err}") from None


def check_startup(cfg, command):
    """Everything ``command`` ("train", "eval", "infer") will need later, checked now."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    if command == "train":
        if cfg.save_checkpoint:
            check_writable_dir(cfg.checkpoint_path, "checkpoint_path")
        if cfg.run_eval:
            _check_eval_settings(cfg)
            _check_val_split(cfg, "run_eval=True evaluates after each epoch "
                                  "(--run_eval=False turns it off)")
    elif command == "eval":
        _check_eval_settings(cfg)
        _check_val_split(cfg, "eval.py evaluates the val split")
    else:
        _check_eval_settings(cfg)
