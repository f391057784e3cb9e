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
    """``path`` is a folder this process can write files into, or one it can create. Nothing
    is created (ranks of one run probe the same folder at once, and a run refused by a later
    check has written nothing): an existing folder gets a probe file, removed at once; for a
    missing one, its nearest existing ancestor must be a writable folder."""
    path = os.path.abspath(path)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing} is a file, not a folder"
    elif existing == path:
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
                pass
        except OSError as err:
            problem = err.strerror or str(err)
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable, so the folder cannot be created"
    if problem:
        raise ConfigError(f"config key '{key}': cannot write into {path} ({problem}); give a "
                          f"writable folder")


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
