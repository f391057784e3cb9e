"""The training loop: one path for SegFormer, Segmenter and ViT, driven by the config.

    train(cfg, rank_id, group_size, log)      # what train.py calls

Every batch goes through ``TrainStep`` (loss-scaled, overflow-skipping) with the
iteration's learning rate from ``build_lr_schedule``; a log line every
``train_log_interval`` steps (seed format plus lr and ETA), when the steps' losses and
overflow flags are read back from the device (not after each step, so that an
accelerator runs ahead of the host). The run lasts ``epoch_size`` epochs or ``max_iters``
iterations; evaluation (``src.engine.evaluate.evaluate``, the code eval.py runs) and
checkpoints follow the schedule (see ``Trainer``; files and resume: ``checkpoints.py``).

Exact resume: a checkpoint holds the global step G; the resumed run starts the sampler at
epoch G // steps_per_epoch (``ShardSampler.set_epoch``) and reads its first
G % steps_per_epoch batches without training on them; augmentation draws are
seeded per (seed, epoch, sample), so the resumed run reads the same
batches with the same augmentation, at the same lr, optimiser moments and loss scale;
dropout and stochastic depth draw from a key set before each step from (seed, global step)
(``src/models/stochastic.py``), so their masks are the uninterrupted run's too.

Stops with a clear error after ``max_consecutive_overflow_steps`` non-finite steps in a
row, before saving a non-finite tensor, and on SIGINT/SIGTERM (naming the position and the
checkpoint to resume from).
"""
import math
import os
import signal
import time

import numpy as np
import mindspore as ms
from mindspore import nn

from src.data.sampling import find_shard_sampler
from src.engine.amp import apply_amp, build_loss_scaler, check_amp_config
from src.engine.checkpoints import CheckpointManager, TrainError, TrainState, restore_training_state
from src.engine.loss import build_loss
from src.engine.optim import build_optimizer, describe_param_groups, param_groups
from src.engine.schedules import build_lr_schedule, total_iterations
from src.engine.train_step import TrainStep, set_gradient_fusion
from src.models import is_segmentation
from src.models.stochastic import number_streams, set_step
from src.utils.checkpoint import load_checkpoint

RANK_SAVE_CKPT = ("rank0", "all")


class TrainInterrupted(TrainError):
    """SIGINT/SIGTERM stopped the run (the message says where and how to resume)."""


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

def _int_key(cfg, key, minimum):
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TrainError(f"config key '{key}': expected an integer >= {minimum}, got {value!r}")
    return value


def check_train_config(cfg):
    check_amp_config(cfg)
    if cfg.rank_save_ckpt not in RANK_SAVE_CKPT:
        raise TrainError(f"config key 'rank_save_ckpt': '{cfg.rank_save_ckpt}' is not one of "
                         f"{list(RANK_SAVE_CKPT)}")
    for key in ("train_log_interval", "save_checkpoint_epoch_interval", "eval_interval",
                "max_consecutive_overflow_steps"):
        _int_key(cfg, key, 1)
    for key in ("max_iters", "save_checkpoint_steps", "epoch_size"):
        _int_key(cfg, key, 0)
    if cfg.max_iters > 0 and cfg.epoch_size > 0:
        raise TrainError(f"config keys 'epoch_size'={cfg.epoch_size} and 'max_iters'={cfg.max_iters} "
                         f"are both set; schedule by one of them (set the other to 0)")
    if cfg.max_iters == 0 and cfg.epoch_size == 0:
        raise TrainError("config keys 'epoch_size' and 'max_iters' are both 0; set one of them")
    for key in ("overwrite_checkpoints", "auto_resume"):
        if not isinstance(cfg[key], bool):
            raise TrainError(f"config key '{key}': expected True or False, got {cfg[key]!r}")
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
    """Owns the network, optimiser, step cell and state of one training run (one rank).

    The run lasts ``total_iters`` iterations (``max_iters``, or ``epoch_size`` epochs); the
    epochs follow from the dataset size (the last one may be partial). Evaluation and
    checkpoints: per epoch (``eval_interval``, ``save_checkpoint_epoch_interval``) when
    scheduling by epochs, per iteration (``eval_interval``) with ``max_iters``; step
    checkpoints every ``save_checkpoint_steps`` iterations in either mode.
    """

    def __init__(self, cfg, net, train_data, rank_id=0, group_size=1, log=print, evaluate_fn=None,
                 checkpoints=None):
        self.cfg, self.net, self.data = cfg, net, train_data
        self.rank_id, self.group_size, self.log = rank_id, group_size, log
        self.evaluate_fn = evaluate_fn
        self.steps_per_epoch = int(train_data.get_dataset_size())
        self.by_iters = int(cfg.max_iters) > 0
        self.total_iters = total_iterations(cfg, self.steps_per_epoch)
        self.epochs = -(-self.total_iters // self.steps_per_epoch)
        self.lr_schedule = build_lr_schedule(cfg, self.steps_per_epoch)
        groups = param_groups(net, cfg)
        for line in describe_param_groups(groups):
            log(line)
        self.optimizer = build_optimizer(net, cfg, groups)
        self.loss_scaler = build_loss_scaler(cfg)
        self.state = TrainState()
        self.checkpoints = checkpoints or CheckpointManager(cfg, rank_id, group_size, log)
        self.metric_name = "mIoU" if is_segmentation(cfg) else "top1"
        # dropout and stochastic depth draw as a function of (seed, global step, layer):
        # a resumed run draws what the uninterrupted run drew (src/models/stochastic.py)
        self.random_layers = number_streams(net)
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
        self.consecutive_overflows = 0
        self.position = ""          # "epoch E/N, step S/M (global step G)" of the last step

    # -- resume ------------------------------------------------------------------------
    def resume(self, path, param_dict=None):
        param_dict = param_dict if param_dict is not None else load_checkpoint(path)
        self.state, saved_steps = restore_training_state(param_dict, self.net, self.optimizer,
                                                         self.loss_scaler, path)
        if saved_steps != self.steps_per_epoch:
            if self.state.global_step % saved_steps:
                raise TrainError(f"{path} was written in the middle of an epoch of {saved_steps} "
                                 f"steps; this run has {self.steps_per_epoch} steps per epoch "
                                 f"(other dataset, batch or device count), so its data position "
                                 f"cannot be continued: resume with the same settings")
            self.log(f"warning: {path} was trained with {saved_steps} steps per epoch, this run "
                     f"has {self.steps_per_epoch}; the lr schedule restarts from epoch "
                     f"{self.state.epoch} of the new schedule")
            self.state.global_step = self.state.epoch * self.steps_per_epoch
        if self.state.global_step >= self.total_iters:
            raise TrainError(f"{path} is from global step {self.state.global_step} (epoch "
                             f"{self.state.epoch}), the run has {self.total_iters} iterations: "
                             f"nothing left to train (raise --epoch_size or --max_iters to go on)")
        self.state.epoch = self.state.global_step // self.steps_per_epoch
        self.log(f"resumed from {path}: epoch {self.state.epoch}/{self.epochs} done, global step "
                 f"{self.state.global_step}, next lr {self.lr_schedule[self.state.global_step]:.6e}, "
                 f"loss_scale {float(self.loss_scaler.scale_value.asnumpy())}, best "
                 f"{self.state.best_metric:.6f} ({self._unit()} {self.state.best_epoch})")

    # -- checkpoints -------------------------------------------------------------------
    def _unit(self):
        return "iteration" if self.by_iters else "epoch"

    def save(self, name):
        return self.checkpoints.save(name, self.net, self.optimizer, self.loss_scaler, self.state,
                                     self.steps_per_epoch)

    def _evaluate(self, at, ckpt_name):
        """Evaluate; a new best metric (at epoch or iteration ``at``) writes the best file."""
        cfg = self.cfg
        metrics = self.evaluate_fn(self.train_net, cfg, self.rank_id, self.group_size,
                                   self.log, ckpt_name)
        self.net.set_train(True)
        metric = float(metrics["metric"])
        if math.isfinite(metric) and metric > self.state.best_metric:
            self.state.best_metric, self.state.best_epoch = metric, at
            self.log(f"new best {metrics['metric_name']}: {metric:.6f} at {self._unit()} {at}")
            if cfg.save_best_ckpt and self.checkpoints.enabled:
                self.save(self.checkpoints.best_name())

    # -- loop --------------------------------------------------------------------------
    def _can_eval(self):
        return self.cfg.run_eval and self.evaluate_fn is not None

    def _end_of_epoch(self, epoch):
        cfg = self.cfg
        save_epoch = self.checkpoints.enabled and (
            epoch % cfg.save_checkpoint_epoch_interval == 0 or epoch == self.epochs)
        scheduled = (epoch >= cfg.eval_start_epoch
                     and (epoch - cfg.eval_start_epoch) % cfg.eval_interval == 0)
        if self._can_eval() and (scheduled or epoch == self.epochs):
            self._evaluate(epoch, self.checkpoints.epoch_name(epoch) if save_epoch else f"epoch {epoch}")
        if save_epoch:
            self.save(self.checkpoints.epoch_name(epoch))
            self.checkpoints.prune("")

    def _after_step(self):
        """Iteration-based evaluation and step checkpoints, after the step ``global_step``."""
        cfg, step = self.cfg, self.state.global_step
        last = step == self.total_iters
        save_step = self.checkpoints.enabled and (
            (cfg.save_checkpoint_steps and step % cfg.save_checkpoint_steps == 0)
            or (self.by_iters and last))
        if self.by_iters and self._can_eval() and (step % cfg.eval_interval == 0 or last):
            self._evaluate(step, self.checkpoints.iter_name(step) if save_step else f"iteration {step}")
        if save_step:
            self.save(self.checkpoints.iter_name(step))
            self.checkpoints.prune("iter_")

    def _read_back(self, pending, totals):
        """Read the pending (loss, overflow) flags; count overflowed steps and stop after
        ``max_consecutive_overflow_steps`` in a row. Returns the last (loss, overflow)."""
        loss = overflow = None
        for loss, overflow in pending:
            loss, overflow = float(loss.asnumpy()), bool(overflow.asnumpy())
            if overflow:
                totals["overflows"] += 1
                self.state.overflow_steps += 1
                self.consecutive_overflows += 1
            else:
                totals["losses"].append(loss)
                self.consecutive_overflows = 0
        limit = int(self.cfg.max_consecutive_overflow_steps)
        if self.consecutive_overflows >= limit:
            raise TrainError(
                f"stopped at {self.position}: {self.consecutive_overflows} consecutive steps had "
                f"non-finite (inf/NaN) gradients and were skipped (max_consecutive_overflow_steps="
                f"{limit}; {self.state.overflow_steps} overflowed steps in all, loss scale now "
                f"{float(self.loss_scaler.scale_value.asnumpy())}): the run diverged; lower --lr, "
                f"check the data, or use a dynamic loss scale{self.checkpoints.resume_hint()}")
        return loss, overflow

    def fit(self):
        """Train to the end; SIGINT/SIGTERM stop after the current step with a TrainInterrupted
        naming where the run stopped and the checkpoint to resume from."""
        previous = {sig: signal.signal(sig, _raise_interrupted)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._fit()
        except (TrainInterrupted, KeyboardInterrupt) as err:
            name = str(err) if isinstance(err, TrainInterrupted) else "SIGINT"
            raise TrainInterrupted(f"interrupted by {name} after {self.position or 'no step'}"
                                   f"{self.checkpoints.resume_hint()}") from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _fit(self):
        cfg, state = self.cfg, self.state
        spe = self.steps_per_epoch
        start_epoch, skip = divmod(state.global_step, spe)
        sampler = find_shard_sampler(self.data)
        if sampler is not None:
            sampler.set_epoch(start_epoch)
        elif state.global_step:
            raise TrainError("this dataset has no ShardSampler, so a resumed run cannot continue "
                             "its data order")
        total = self.total_iters
        schedule = (f"{total} iterations (max_iters; {self.epochs} epochs)" if self.by_iters
                    else f"epochs {start_epoch + 1}..{self.epochs}")
        self.log(f"training {cfg.model} {cfg.backbone}: {schedule}, {spe} steps per epoch, "
                 f"batch {cfg.batch_size} x {self.group_size} device(s), "
                 f"amp {cfg.amp_level}, loss scale {cfg.loss_scale_type}, mode {cfg.mode}")
        iterator = self.data.create_tuple_iterator(num_epochs=self.epochs - start_epoch)
        interval = int(cfg.train_log_interval)
        for epoch in range(start_epoch + 1, self.epochs + 1):
            self.net.set_train(True)
            epoch_start = last_time = time.time()
            totals = {"losses": [], "overflows": 0}
            first = skip + 1 if epoch == start_epoch + 1 else 1
            last_step = min(spe, total - (epoch - 1) * spe)
            step = first - 1
            # (loss, overflow) of the steps since the last log line, left on the device: the
            # host waits for the device once per log line, not after every step
            pending = []
            if first > 1:
                self.log(f"reading {first - 1} batch(es) of epoch {epoch} without training, to "
                         f"continue at its step {first}")
            for step, (images, labels) in enumerate(iterator, start=1):
                if step < first:
                    # the batches this epoch trained on before the resume: MindSpore wants an
                    # epoch read whole, and skipping them keeps the later batches in place
                    continue
                lr = self.lr_schedule[state.global_step]
                set_step(cfg.seed, state.global_step)
                loss, overflow, scale = self.step_cell(images, labels, ms.Tensor(lr, ms.float32))
                state.global_step += 1
                self.position = (f"epoch {epoch}/{self.epochs}, step {step}/{spe} (global step "
                                 f"{state.global_step}/{total})")
                pending.append((loss, overflow))
                # read back before a checkpoint or evaluation: a diverged run stops first
                g = state.global_step
                at_checkpoint = ((cfg.save_checkpoint_steps and g % cfg.save_checkpoint_steps == 0)
                                 or (self.by_iters and g % cfg.eval_interval == 0))
                if step % interval == 0 or step == last_step or at_checkpoint:
                    loss_v, overflow_v = self._read_back(pending, totals)
                    now = time.time()
                    step_s = (now - last_time) / len(pending)
                    eta = step_s * (total - state.global_step)
                    self.log(format_step_line(epoch, self.epochs, step, spe, loss_v, overflow_v,
                                              float(scale.asnumpy()), step_s * 1000, lr, eta))
                    last_time, pending = now, []
                if step == spe:
                    state.epoch = epoch
                self._after_step()
                if step == last_step < spe:
                    # the partial last epoch of a max_iters run (leaving an epoch early is
                    # only safe at the end: the next epoch would start at its end marker)
                    break
            if step != last_step:
                raise TrainError(f"epoch {epoch} had {step} steps, the dataset announced {spe}")
            losses = totals["losses"]
            # overflowed steps are left out of the mean: their loss may be inf/NaN
            mean = f"{float(np.mean(losses)):.8g}" if losses else "n/a (every step overflowed)"
            self.log(f"Epoch {epoch}/{self.epochs} done: mean loss {mean}, "
                     f"{totals['overflows']} overflowed step(s) skipped ({state.overflow_steps} in "
                     f"all), epoch cost {time.time() - epoch_start:.1f}s")
            if step == spe and not self.by_iters:
                self._end_of_epoch(epoch)
        if state.best_epoch:
            self.log(f"best {self.metric_name}: {state.best_metric:.6f} at {self._unit()} "
                     f"{state.best_epoch}")
        return state


def _raise_interrupted(signum, _frame):
    raise TrainInterrupted(signal.Signals(signum).name)


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
    checkpoints = CheckpointManager(cfg, rank_id, group_size, log)
    resume_path, resume_dict = checkpoints.resume_source()
    if resume_path is None and cfg.load_ckpt:
        if not cfg.pretrained_ckpt_path:
            raise TrainError("load_ckpt=True but pretrained_ckpt_path is empty; give "
                             "--pretrained_ckpt_path=FILE or --load_ckpt=False to train from scratch")
        load_pretrained(net, cfg.pretrained_ckpt_path, log)
    trainer = Trainer(cfg, net, data, rank_id, group_size, log, evaluate, checkpoints)
    if resume_path is not None:
        trainer.resume(resume_path, resume_dict)
    checkpoints.open(resuming=bool(cfg.resume_ckpt or cfg.auto_resume))
    try:
        return trainer.fit()
    finally:
        checkpoints.close()
