"""Training checkpoints in one place: ``CheckpointManager`` saves (atomically, finite tensors
only), prunes, finds the newest, restores, and guards the directory of one run.

Files in ``checkpoint_path`` (``checkpoint_path/rank_{R}/`` per rank when distributed with
``rank_save_ckpt: all``; otherwise only rank 0 writes):

* ``<model>_<backbone>_<epoch>.ckpt``   -- end of an epoch (``save_checkpoint_epoch_interval``)
* ``<model>_<backbone>_iter_<N>.ckpt``  -- after iteration N (``save_checkpoint_steps``, and
  the last iteration of a ``max_iters`` run)
* ``<model>_<backbone>_best.ckpt``      -- best validation metric so far
* ``.train.lock``                        -- held by the run that writes the directory

Each checkpoint holds the network weights, the optimiser state (``optimizer.*``) and the
training state (``TRAINING_STATE_KEYS``: epoch, global step, loss scale ...), which is all
that an exact resume needs: the data position follows from the global step (see
``Trainer``), every other random draw from the seed.
"""
import os
import re
import socket

import numpy as np
import mindspore as ms

from src.engine.amp import loss_scaler_state, restore_loss_scaler
from src.engine.optim import STATE_PREFIX
from src.utils.checkpoint import (TMP_SUFFIX, TRAINING_STATE_KEYS, CheckpointError, load_checkpoint,
                                  load_into_net, save_checkpoint)
from src.utils.errors import UserError

LOCK_NAME = ".train.lock"


class TrainError(UserError, RuntimeError):
    """Training cannot start or continue (bad resume checkpoint, bad keys ...)."""


class CheckpointDirError(TrainError):
    """The checkpoint directory belongs to another run, is locked, or a tensor is not finite."""


class TrainState:
    """Counters that a resumed run continues from."""

    def __init__(self):
        self.epoch = 0              # completed epochs
        self.global_step = 0        # completed iterations (the lr schedule index)
        self.best_metric = -1.0     # best validation metric so far (-1: none yet)
        self.best_epoch = 0         # its epoch (its iteration when scheduling by max_iters)
        self.overflow_steps = 0     # iterations skipped because of inf/NaN gradients


def checkpoint_prefix(cfg):
    return f"{cfg.model}_{cfg.backbone}"


def checkpoint_dir(cfg, rank_id, group_size):
    if group_size > 1 and cfg.rank_save_ckpt == "all":
        return os.path.join(cfg.checkpoint_path, f"rank_{rank_id}")
    return cfg.checkpoint_path


def training_state_dict(net, optimizer, loss_scaler, state, steps_per_epoch):
    """Everything a resume needs: weights (incl. BatchNorm statistics), optimiser state and
    the scalar training state."""
    params = {p.name: p for p in net.get_parameters()}
    params.update({p.name: p for p in optimizer.get_parameters() if p.name.startswith(STATE_PREFIX)})
    scaler = loss_scaler_state(loss_scaler)
    extra = {
        "epoch": np.array(state.epoch, np.int64),
        "global_step": np.array(state.global_step, np.int64),
        "steps_per_epoch": np.array(steps_per_epoch, np.int64),
        "loss_scale": np.array(scaler["loss_scale"], np.float32),
        "loss_scale_counter": np.array(scaler["loss_scale_counter"], np.int64),
        "best_metric": np.array(state.best_metric, np.float64),
        "best_epoch": np.array(state.best_epoch, np.int64),
        "overflow_steps": np.array(state.overflow_steps, np.int64),
    }
    return params, extra


def is_training_checkpoint(param_dict):
    return all(key in param_dict for key in TRAINING_STATE_KEYS)


def _scalar(param_dict, key):
    return param_dict[key].asnumpy().reshape(-1)[0].item()


def restore_training_state(param_dict, net, optimizer, loss_scaler, source):
    """Load a training checkpoint into net/optimizer/scaler; return (TrainState, saved
    steps_per_epoch)."""
    if not is_training_checkpoint(param_dict):
        missing = [k for k in TRAINING_STATE_KEYS if k not in param_dict]
        raise TrainError(f"{source} is not a training checkpoint of train.py (no "
                              f"{', '.join(missing)}); to start from its weights use "
                              f"--pretrained_ckpt_path instead of --resume_ckpt")
    weights = {k: v for k, v in param_dict.items()
               if k not in TRAINING_STATE_KEYS and not k.startswith(STATE_PREFIX)}
    load_into_net(net, weights, strict=True, source=source)
    opt_state = [p for p in optimizer.get_parameters() if p.name.startswith(STATE_PREFIX)]
    missing = [p.name for p in opt_state if p.name not in param_dict]
    if missing:
        raise TrainError(f"{source}: optimiser state '{missing[0]}' is missing ({len(missing)} "
                              f"tensors); was it saved with another optimizer than "
                              f"'{type(optimizer).__name__}'?")
    for param in opt_state:
        value = param_dict[param.name]
        if tuple(value.shape) != tuple(param.shape):
            raise TrainError(f"{source}: optimiser state '{param.name}' has shape "
                                  f"{tuple(value.shape)}, expected {tuple(param.shape)}")
        param.set_data(ms.Tensor(value.asnumpy(), param.dtype))
    restore_loss_scaler(loss_scaler, _scalar(param_dict, "loss_scale"),
                        _scalar(param_dict, "loss_scale_counter"))
    state = TrainState()
    state.epoch = int(_scalar(param_dict, "epoch"))
    state.global_step = int(_scalar(param_dict, "global_step"))
    state.best_metric = float(_scalar(param_dict, "best_metric"))
    state.best_epoch = int(_scalar(param_dict, "best_epoch"))
    state.overflow_steps = int(_scalar(param_dict, "overflow_steps"))
    return state, int(_scalar(param_dict, "steps_per_epoch"))


def checkpoint_files(directory):
    """Complete ``*.ckpt`` files of ``directory`` (temporary files left out)."""
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, f) for f in os.listdir(directory)
            if f.endswith(".ckpt") and not f.startswith(".") and not f.endswith(TMP_SUFFIX)]


def find_resume_checkpoint(directory, log=print):
    """Newest (by mtime) checkpoint in ``directory`` that reads and holds a training state.
    Returns (path, param_dict) or (None, None)."""
    for path in sorted(checkpoint_files(directory), key=os.path.getmtime, reverse=True):
        try:
            param_dict = load_checkpoint(path)
        except CheckpointError as err:
            log(f"auto_resume: skipping {path}: {err}")
            continue
        if is_training_checkpoint(param_dict):
            return path, param_dict
        log(f"auto_resume: skipping {path}: no training state")
    return None, None


def remove_stale_temporaries(directory, log=print):
    """Temporary files of a run killed during a checkpoint write (never read back)."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(TMP_SUFFIX):
            os.remove(os.path.join(directory, name))
            log(f"removed the partial checkpoint {name} of an interrupted run")


def prune_checkpoints(directory, prefix, keep, log=print, kind=""):
    """Delete the oldest ``<prefix>_<kind><N>.ckpt`` beyond ``keep`` (0 or less: keep all);
    kind "" are the epoch files, "iter_" the iteration files (each kind counted apart)."""
    if keep <= 0:
        return
    pattern = re.compile(rf"^{re.escape(prefix)}_{kind}(\d+)\.ckpt$")
    found = sorted((int(m.group(1)), name) for name in os.listdir(directory)
                   for m in [pattern.match(name)] if m)
    for _, name in found[:-keep]:
        os.remove(os.path.join(directory, name))
        log(f"removed {name} (keep_checkpoint_max={keep})")


def first_non_finite(params):
    """Name of the first floating tensor of ``params`` holding inf/NaN, or None."""
    for name, value in params.items():
        array = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return name, int(array.size - np.isfinite(array).sum()), int(array.size)
    return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointManager:
    """The checkpoint directory of one run (one rank).

    ``open(resuming)`` takes the directory: the lock file (a second run into the same
    directory fails while this one lives; a lock whose process is gone on this host is
    stale and taken over), then refuses checkpoints of another run unless ``resuming``
    (``--resume_ckpt`` / ``--auto_resume``) or ``overwrite_checkpoints: True`` (which deletes
    them first, so that pruning and auto_resume never mix two runs). ``close()`` releases it.
    A run that writes no checkpoint (``save_checkpoint: False``, or a rank other than 0 with
    ``rank_save_ckpt: rank0``) only reads.
    """

    def __init__(self, cfg, rank_id=0, group_size=1, log=print):
        self.cfg, self.log = cfg, log
        self.directory = checkpoint_dir(cfg, rank_id, group_size)
        self.prefix = checkpoint_prefix(cfg)
        self.is_writer = rank_id == 0 or cfg.rank_save_ckpt == "all"
        self.enabled = bool(cfg.save_checkpoint) and self.is_writer
        self.lock_path = os.path.join(self.directory, LOCK_NAME)
        self.last_saved = None
        self._locked = False
        self._created = []  # folders open() made, innermost first: close() removes them if empty

    # -- the directory -------------------------------------------------------------------
    def own_files(self):
        """This model's checkpoint files in the directory (what a new run would overwrite)."""
        pattern = re.compile(rf"^{re.escape(self.prefix)}_(\d+|iter_\d+|best)\.ckpt$")
        return sorted(p for p in checkpoint_files(self.directory)
                      if pattern.match(os.path.basename(p)))

    def _acquire_lock(self):
        me = f"{socket.gethostname()} {os.getpid()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    host, pid = open(self.lock_path).read().split()
                    pid = int(pid)
                except (OSError, ValueError):
                    host, pid = "?", -1
                if host == socket.gethostname() and pid > 0 and not _pid_alive(pid):
                    os.remove(self.lock_path)
                    self.log(f"removed the stale lock {self.lock_path} of process {pid} (no longer "
                             f"running)")
                    continue
                raise CheckpointDirError(
                    f"checkpoint_path {self.directory} is in use by another training run (lock "
                    f"{self.lock_path} held by process {pid} on {host}); give this run another "
                    f"--checkpoint_path, or delete the lock file if that run is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._locked = True
            return
        raise CheckpointDirError(f"cannot take the lock {self.lock_path}")

    def open(self, resuming):
        if not self.enabled:  # a run that writes no checkpoint cannot overwrite any
            return
        folder = os.path.abspath(self.directory)
        while not os.path.exists(folder):
            self._created.append(folder)
            folder = os.path.dirname(folder)
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as err:
            raise CheckpointDirError(f"config key 'checkpoint_path': cannot create "
                                     f"{self.directory}: {err.strerror}") from None
        self._acquire_lock()
        remove_stale_temporaries(self.directory, self.log)
        existing = self.own_files()
        if existing and not resuming:
            if not self.cfg.overwrite_checkpoints:
                self.close()
                raise CheckpointDirError(
                    f"checkpoint_path {self.directory} holds {len(existing)} checkpoint(s) of "
                    f"another run (e.g. {os.path.basename(existing[0])}); continue that run with "
                    f"--auto_resume=True, replace it with --overwrite_checkpoints=True, or give "
                    f"another --checkpoint_path")
            for path in existing:
                os.remove(path)
            self.log(f"overwrite_checkpoints: removed {len(existing)} checkpoint(s) of an earlier "
                     f"run from {self.directory}")

    def close(self):
        if self._locked:
            self._locked = False
            try:
                os.remove(self.lock_path)
            except FileNotFoundError:
                pass
        # a run that stopped before its first checkpoint leaves no trace of its directory
        for folder in self._created:
            try:
                os.rmdir(folder)
            except OSError:  # not empty (a checkpoint was written) or already gone
                break
        self._created = []

    # -- saving --------------------------------------------------------------------------
    def save(self, name, net, optimizer, loss_scaler, state, steps_per_epoch):
        """Write ``name`` atomically; a non-finite tensor is an error naming it (nothing is
        written: a diverged state must not replace a good checkpoint)."""
        params, extra = training_state_dict(net, optimizer, loss_scaler, state, steps_per_epoch)
        bad = first_non_finite(params)
        if bad is not None:
            tensor, count, size = bad
            raise CheckpointDirError(
                f"not saving {name} at global step {state.global_step}: tensor '{tensor}' holds "
                f"{count} non-finite value(s) of {size} (the run diverged; lower the lr or check "
                f"the data){self.resume_hint()}")
        path = save_checkpoint(params, os.path.join(self.directory, name), extra=extra)
        self.last_saved = path
        self.log(f"saved checkpoint {path}")
        return path

    def epoch_name(self, epoch):
        return f"{self.prefix}_{epoch}.ckpt"

    def iter_name(self, step):
        return f"{self.prefix}_iter_{step}.ckpt"

    def best_name(self):
        return f"{self.prefix}_best.ckpt"

    def prune(self, kind):
        prune_checkpoints(self.directory, self.prefix, int(self.cfg.keep_checkpoint_max), self.log,
                          kind)

    # -- resuming ------------------------------------------------------------------------
    def resume_source(self):
        """(path, param_dict) to resume from, or (None, None) for a fresh start."""
        cfg = self.cfg
        if cfg.resume_ckpt:
            return cfg.resume_ckpt, load_checkpoint(cfg.resume_ckpt)
        if cfg.auto_resume:
            path, param_dict = find_resume_checkpoint(self.directory, self.log)
            if path is None:
                self.log(f"auto_resume: no training checkpoint in {self.directory}, starting "
                         f"from scratch")
            return path, param_dict
        return None, None

    def latest(self):
        """The newest complete checkpoint of this run's directory (None: none)."""
        files = [p for p in self.own_files() if not p.endswith("_best.ckpt")]
        return max(files, key=os.path.getmtime) if files else None

    def resume_hint(self):
        """'; resume from X with --auto_resume=True' for the messages of a stopped run."""
        latest = self.last_saved if self.last_saved and os.path.exists(self.last_saved) else self.latest()
        latest = latest or self.cfg.resume_ckpt or None
        if latest is None:
            return "; no checkpoint of this run was written (nothing to resume)"
        return (f"; last checkpoint {latest}: resume with --auto_resume=True (or "
                f"--resume_ckpt={latest})")
