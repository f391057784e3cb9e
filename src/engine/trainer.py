"""The training loop: one path for SegFormer, Segmenter and ViT, driven by the config.

    train(cfg, rank_id, group_size, log)      # what train.py calls

Per epoch: every batch goes through ``TrainStep`` (loss-scaled, overflow-skipping) with the
iteration's learning rate from ``build_lr_schedule``; a log line every
``train_log_interval`` steps (seed format plus lr and ETA), when the steps' losses and
overflow flags are read back from the device (not after each step, so that an
accelerator runs ahead of the host); at the end of the epoch the
evaluation hook (``src.engine.evaluate.evaluate``, the code eval.py runs), then checkpoints.

Checkpoints (``checkpoint_path``; ``checkpoint_path/rank_{R}/`` per rank when distributed
with ``rank_save_ckpt: all``, otherwise only rank 0 writes):
``<model>_<backbone>_<epoch>.ckpt`` every ``save_checkpoint_epoch_interval`` epochs and at
the last one (the oldest beyond ``keep_checkpoint_max`` are deleted) and
``<model>_<backbone>_best.ckpt`` when the validation metric (mIoU, top-1 for ViT) improves.
Each holds the network weights, the optimiser state (``optimizer.*``) and the training
state below, and is written atomically (temporary file + rename), so a run killed at any
moment leaves only complete checkpoints.

Resume (``--resume_ckpt=PATH`` or ``--auto_resume=True``: the newest readable training
checkpoint in the checkpoint directory) restores weights, optimiser moments and step,
epoch and global step (hence the learning-rate position), loss scale and its counter, and
the best metric; training continues with the next epoch. The data order of the resumed
epochs is not restored (the sampler has no saved state).
"""
import math
import os
import re
import time

import numpy as np
import mindspore as ms
from mindspore import nn

from src.engine.amp import (apply_amp, build_loss_scaler, check_amp_config, loss_scaler_state,
                            restore_loss_scaler)
from src.engine.loss import build_loss
from src.engine.optim import STATE_PREFIX, build_optimizer, describe_param_groups, param_groups
from src.engine.schedules import build_lr_schedule
from src.engine.train_step import TrainStep, set_gradient_fusion
from src.models import is_segmentation
from src.utils.checkpoint import (TMP_SUFFIX, CheckpointError, load_checkpoint, load_into_net,
                                  save_checkpoint)
from src.utils.checkpoint import TRAINING_STATE_KEYS as STATE_KEYS
from src.utils.errors import UserError
RANK_SAVE_CKPT = ("rank0", "all")


class TrainError(UserError, RuntimeError):
    """Training cannot start or continue (bad resume checkpoint, bad keys ...)."""


class TrainState:
    """Counters that a resumed run continues from."""

    def __init__(self):
        self.epoch = 0              # completed epochs
        self.global_step = 0        # completed iterations (the lr schedule index)
        self.best_metric = -1.0     # best validation metric so far (-1: none yet)
        self.best_epoch = 0
        self.overflow_steps = 0     # iterations skipped because of inf/NaN gradients


# ----------------------------------------------------------------------- checkpoints --

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
    return all(key in param_dict for key in STATE_KEYS)


def _scalar(param_dict, key):
    return param_dict[key].asnumpy().reshape(-1)[0].item()


def restore_training_state(param_dict, net, optimizer, loss_scaler, source):
    """Load a training checkpoint into net/optimizer/scaler; return (TrainState, saved
    steps_per_epoch)."""
    if not is_training_checkpoint(param_dict):
        missing = [k for k in STATE_KEYS if k not in param_dict]
        raise TrainError(f"{source} is not a training checkpoint of train.py (no "
                         f"{', '.join(missing)}); to start from its weights use "
                         f"--pretrained_ckpt_path instead of --resume_ckpt")
    weights = {k: v for k, v in param_dict.items()
               if k not in STATE_KEYS and not k.startswith(STATE_PREFIX)}
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


def _checkpoint_files(directory):
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, f) for f in os.listdir(directory)
            if f.endswith(".ckpt") and not f.startswith(".") and not f.endswith(TMP_SUFFIX)]


def find_resume_checkpoint(directory, log=print):
    """Newest (by mtime) checkpoint in ``directory`` that reads and holds a training state.
    Returns (path, param_dict) or (None, None)."""
    for path in sorted(_checkpoint_files(directory), key=os.path.getmtime, reverse=True):
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


def prune_checkpoints(directory, prefix, keep, log=print):
    """Delete the oldest ``<prefix>_<epoch>.ckpt`` beyond ``keep`` (0 or less: keep all)."""
    if keep <= 0:
        return
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)\.ckpt$")
    found = sorted((int(m.group(1)), name) for name in os.listdir(directory)
                   for m in [pattern.match(name)] if m)
    for _, name in found[:-keep]:
        os.remove(os.path.join(directory, name))
        log(f"removed {name} (keep_checkpoint_max={keep})")


# --------------------------------------------------------------------------- logging --

def format_eta(seconds):
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_step_line(epoch, epochs, step, steps, loss, overflow, loss_scale, step_ms, lr, eta_s):
    """The seed's line (``Epoch 12/200, step:100/1487, loss:0.0827, overflow:False,
    loss_scale:32768.0, step cost:182ms``) plus the learning rate and an ETA."""
    return (f"Epoch {epoch}/{epochs}, step:{step}/{steps}, loss:{loss:.8g}, overflow:{overflow}, "
            f"loss_scale:{loss_scale}, step cost:{step_ms:.0f}ms, lr:{lr:.6e}, "
            f"eta:{format_eta(eta_s)}")


# ---------------------------------------------------------------------------- checks --

def check_train_config(cfg):
    check_amp_config(cfg)
    if cfg.rank_save_ckpt not in RANK_SAVE_CKPT:
        raise TrainError(f"config key 'rank_save_ckpt': '{cfg.rank_save_ckpt}' is not one of "
                         f"{list(RANK_SAVE_CKPT)}")
    for key in ("train_log_interval", "save_checkpoint_epoch_interval", "eval_interval"):
        if int(cfg[key]) < 1:
            raise TrainError(f"config key '{key}': must be >= 1, got {cfg[key]}")
    split = cfg.grad_fusion_split
    if (not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in split)
            or list(split) != sorted(set(split))):
        raise TrainError(f"config key 'grad_fusion_split': expected increasing fractions between 0 "
                         f"and 1 (e.g. [0.4]; [] for one all-reduce), got {split}")
    if float(cfg.clip_grad_norm) < 0:
        raise TrainError(f"config key 'clip_grad_norm': must be >= 0 (0: off), got {cfg.clip_grad_norm}")
    if cfg.resume_ckpt and not os.path.isfile(cfg.resume_ckpt):
        raise TrainError(f"config key 'resume_ckpt': no such file: {cfg.resume_ckpt}")


# ---------------------------------------------------------------------------- driver --

class Trainer:
    """Owns the network, optimiser, step cell and state of one training run (one rank)."""

    def __init__(self, cfg, net, train_data, rank_id=0, group_size=1, log=print, evaluate_fn=None):
        self.cfg, self.net, self.data = cfg, net, train_data
        self.rank_id, self.group_size, self.log = rank_id, group_size, log
        self.evaluate_fn = evaluate_fn
        self.steps_per_epoch = int(train_data.get_dataset_size())
        self.epochs = int(cfg.epoch_size)
        self.lr_schedule = build_lr_schedule(cfg, self.steps_per_epoch)
        groups = param_groups(net, cfg)
        for line in describe_param_groups(groups):
            log(line)
        self.optimizer = build_optimizer(net, cfg, groups)
        self.loss_scaler = build_loss_scaler(cfg)
        self.state = TrainState()
        self.is_writer = rank_id == 0 or cfg.rank_save_ckpt == "all"
        self.ckpt_dir = checkpoint_dir(cfg, rank_id, group_size)
        self.prefix = checkpoint_prefix(cfg)
        self.metric_name = "mIoU" if is_segmentation(cfg) else "top1"
        self.train_net = apply_amp(net, cfg.amp_level)
        reducer = None
        if group_size > 1:
            sizes = set_gradient_fusion(self.optimizer.parameters, cfg.grad_fusion_split)
            log(f"gradient all-reduce: {len(sizes)} fusion group(s) of {sizes} tensors "
                f"(grad_fusion_split {list(cfg.grad_fusion_split)})")
            reducer = nn.DistributedGradReducer(self.optimizer.parameters, mean=True,
                                                degree=group_size)
        self.step_cell = TrainStep(self.train_net, build_loss(cfg), self.optimizer,
                                   self.loss_scaler, cfg.clip_grad_norm, reducer)
        self.step_cell.set_train(True)

    # -- resume ------------------------------------------------------------------------
    def resume(self, path, param_dict=None):
        param_dict = param_dict if param_dict is not None else load_checkpoint(path)
        self.state, saved_steps = restore_training_state(param_dict, self.net, self.optimizer,
                                                         self.loss_scaler, path)
        if self.state.epoch >= self.epochs:
            raise TrainError(f"{path} is from epoch {self.state.epoch}, the run has epoch_size "
                             f"{self.epochs}: nothing left to train (raise --epoch_size to go on)")
        if saved_steps != self.steps_per_epoch:
            self.log(f"warning: {path} was trained with {saved_steps} steps per epoch, this run "
                     f"has {self.steps_per_epoch}; the lr schedule restarts from epoch "
                     f"{self.state.epoch} of the new schedule")
        self.state.global_step = self.state.epoch * self.steps_per_epoch
        self.log(f"resumed from {path}: epoch {self.state.epoch}/{self.epochs} done, global step "
                 f"{self.state.global_step}, next lr {self.lr_schedule[self.state.global_step]:.6e}, "
                 f"loss_scale {float(self.loss_scaler.scale_value.asnumpy())}, best "
                 f"{self.state.best_metric:.6f} (epoch {self.state.best_epoch})")

    # -- checkpoints -------------------------------------------------------------------
    def save(self, name):
        params, extra = training_state_dict(self.net, self.optimizer, self.loss_scaler,
                                            self.state, self.steps_per_epoch)
        path = save_checkpoint(params, os.path.join(self.ckpt_dir, name), extra=extra)
        self.log(f"saved checkpoint {path}")
        return path

    def _epoch_name(self, epoch):
        return f"{self.prefix}_{epoch}.ckpt"

    # -- loop --------------------------------------------------------------------------
    def _wants_eval(self, epoch):
        cfg = self.cfg
        if not cfg.run_eval or self.evaluate_fn is None:
            return False
        scheduled = epoch >= cfg.eval_start_epoch and (epoch - cfg.eval_start_epoch) % cfg.eval_interval == 0
        return scheduled or epoch == self.epochs

    def _wants_save(self, epoch):
        return (self.cfg.save_checkpoint and self.is_writer
                and (epoch % self.cfg.save_checkpoint_epoch_interval == 0 or epoch == self.epochs))

    def _end_of_epoch(self, epoch):
        cfg = self.cfg
        save_epoch = self._wants_save(epoch)
        if self._wants_eval(epoch):
            ckpt_name = self._epoch_name(epoch) if save_epoch else f"epoch {epoch}"
            metrics = self.evaluate_fn(self.train_net, cfg, self.rank_id, self.group_size,
                                       self.log, ckpt_name)
            metric = float(metrics["metric"])
            if math.isfinite(metric) and metric > self.state.best_metric:
                self.state.best_metric, self.state.best_epoch = metric, epoch
                self.log(f"new best {metrics['metric_name']}: {metric:.6f} at epoch {epoch}")
                if cfg.save_best_ckpt and cfg.save_checkpoint and self.is_writer:
                    self.save(f"{self.prefix}_best.ckpt")
        if save_epoch:
            self.save(self._epoch_name(epoch))
            prune_checkpoints(self.ckpt_dir, self.prefix, int(cfg.keep_checkpoint_max), self.log)

    def fit(self):
        cfg, state = self.cfg, self.state
        if self.is_writer:
            remove_stale_temporaries(self.ckpt_dir, self.log)
        start_epoch = state.epoch
        total_steps = self.epochs * self.steps_per_epoch
        self.log(f"training {cfg.model} {cfg.backbone}: epochs {start_epoch + 1}..{self.epochs}, "
                 f"{self.steps_per_epoch} steps per epoch, batch {cfg.batch_size} x {self.group_size} "
                 f"device(s), amp {cfg.amp_level}, loss scale {cfg.loss_scale_type}, mode {cfg.mode}")
        iterator = self.data.create_tuple_iterator(num_epochs=self.epochs - start_epoch)
        interval = int(cfg.train_log_interval)
        for epoch in range(start_epoch + 1, self.epochs + 1):
            self.net.set_train(True)
            epoch_start = last_time = time.time()
            losses, epoch_overflows, step = [], 0, 0
            # (loss, overflow) of the steps since the last log line, left on the device: the
            # host waits for the device once per log line, not after every step
            pending = []
            for step, (images, labels) in enumerate(iterator, start=1):
                lr = self.lr_schedule[state.global_step]
                loss, overflow, scale = self.step_cell(images, labels, ms.Tensor(lr, ms.float32))
                state.global_step += 1
                pending.append((loss, overflow))
                if step % interval == 0 or step == self.steps_per_epoch:
                    for loss, overflow in pending:
                        loss, overflow = float(loss.asnumpy()), bool(overflow.asnumpy())
                        if overflow:
                            epoch_overflows += 1
                            state.overflow_steps += 1
                        else:
                            losses.append(loss)
                    now = time.time()
                    step_s = (now - last_time) / len(pending)
                    eta = step_s * (total_steps - state.global_step)
                    self.log(format_step_line(epoch, self.epochs, step, self.steps_per_epoch, loss,
                                              overflow, float(scale.asnumpy()), step_s * 1000, lr, eta))
                    last_time, pending = now, []
            if step != self.steps_per_epoch:
                raise TrainError(f"epoch {epoch} had {step} steps, the dataset announced "
                                 f"{self.steps_per_epoch}")
            state.epoch = epoch
            mean_loss = float(np.mean(losses)) if losses else float("nan")
            self.log(f"Epoch {epoch}/{self.epochs} done: mean loss {mean_loss:.8g}, "
                     f"{epoch_overflows} overflowed step(s) skipped ({state.overflow_steps} in all), "
                     f"epoch cost {time.time() - epoch_start:.1f}s")
            self._end_of_epoch(epoch)
        if state.best_epoch:
            self.log(f"best {self.metric_name}: {state.best_metric:.6f} at epoch {state.best_epoch}")
        return state


def resume_source(cfg, ckpt_dir, log=print):
    """(path, param_dict) to resume from, or (None, None) for a fresh start."""
    if cfg.resume_ckpt:
        return cfg.resume_ckpt, load_checkpoint(cfg.resume_ckpt)
    if cfg.auto_resume:
        path, param_dict = find_resume_checkpoint(ckpt_dir, log)
        if path is None:
            log(f"auto_resume: no training checkpoint in {ckpt_dir}, starting from scratch")
        return path, param_dict
    return None, None


def train(cfg, rank_id=0, group_size=1, log=print):
    """Build everything from ``cfg`` and train; returns the final TrainState."""
    from src.data import create_dataset
    from src.engine.evaluate import evaluate
    from src.models import build_model
    from src.utils.checkpoint import load_pretrained

    check_train_config(cfg)
    ms.set_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed))
    data = create_dataset(cfg, "train", rank_id, group_size)
    net = build_model(cfg)
    ckpt_dir = checkpoint_dir(cfg, rank_id, group_size)
    resume_path, resume_dict = resume_source(cfg, ckpt_dir, log)
    if resume_path is None and cfg.load_ckpt:
        if not cfg.pretrained_ckpt_path:
            raise TrainError("load_ckpt=True but pretrained_ckpt_path is empty; give "
                             "--pretrained_ckpt_path=FILE or --load_ckpt=False to train from scratch")
        load_pretrained(net, cfg.pretrained_ckpt_path, log)
    trainer = Trainer(cfg, net, data, rank_id, group_size, log, evaluate_fn=evaluate)
    if resume_path is not None:
        trainer.resume(resume_path, resume_dict)
    return trainer.fit()
