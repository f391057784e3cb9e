"""The training loop: one path for SegFormer, Segmenter and ViT, driven by the config.

    train(cfg, rank_id, group_size, log)      # what train.py calls

Every batch goes through ``ScheduledTrainStep`` (``TrainStep``: loss-scaled,
overflow-skipping; at the learning rate ``build_lr_schedule`` gives its own iteration
counter), one device call per step or, sinking data on Ascend/GPU (``sink_plan``), one per
``sink_size`` steps. A log line every ``train_log_interval`` steps (seed format plus lr and
ETA; when sinking, at the end of the device call that reaches it), when the step cell's
loss and overflow tallies are read back from the device (not after each step, so that an
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
from src.engine.train_step import ScheduledTrainStep, TrainStep, set_gradient_fusion
from src.models import is_segmentation
from src.models.stochastic import number_streams
from src.utils.checkpoint import load_checkpoint

RANK_SAVE_CKPT = ("rank0", "all")
SINK_DEVICES = ("Ascend", "GPU")      # where ms.data_sink runs (MindSpore 2.10 refuses CPU)


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
    for key in ("max_iters", "save_checkpoint_steps", "epoch_size", "eval_interval_iters"):
        _int_key(cfg, key, 0)
    if cfg.max_iters > 0 and cfg.epoch_size > 0:
        raise TrainError(f"config keys 'epoch_size'={cfg.epoch_size} and 'max_iters'={cfg.max_iters} "
                         f"are both set; schedule by one of them (set the other to 0)")
    if cfg.max_iters == 0 and cfg.epoch_size == 0:
        raise TrainError("config keys 'epoch_size' and 'max_iters' are both 0; set one of them")
    if isinstance(cfg.sink_size, bool) or not isinstance(cfg.sink_size, int) or (
            cfg.sink_size != -1 and cfg.sink_size < 1):
        raise TrainError(f"config key 'sink_size': expected -1 (the largest that fits) or an "
                         f"integer >= 1, got {cfg.sink_size!r}")
    for key in ("overwrite_checkpoints", "auto_resume", "dataset_sink_mode"):
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


def sink_plan(cfg, steps_per_epoch, total_iters):
    """``(sink_size, log line)``: the steps per device call when sinking data
    (``ms.data_sink``, Ascend/GPU), 0 when stepping batch by batch.

    Checkpoints, evaluation and epoch ends happen between device calls, so the sink size
    must divide the steps per epoch and every such interval; ``sink_size: -1`` takes the
    largest that does (the zoo's default, one sink per epoch, when nothing else interferes).
    """
    if not cfg.dataset_sink_mode:
        return 0, "dataset sink: off (dataset_sink_mode False), one device call per step"
    if cfg.device_target not in SINK_DEVICES:
        return 0, (f"dataset sink: MindSpore sinks data on {' and '.join(SINK_DEVICES)} only; on "
                   f"{cfg.device_target} one device call per step")
    intervals = {"the steps per epoch": steps_per_epoch}
    if cfg.save_checkpoint_steps:
        intervals["save_checkpoint_steps"] = int(cfg.save_checkpoint_steps)
    if int(cfg.max_iters) > 0:
        if cfg.eval_interval_iters:
            intervals["eval_interval_iters"] = int(cfg.eval_interval_iters)
        intervals["max_iters"] = total_iters
    largest = math.gcd(*intervals.values())
    listed = ", ".join(f"{key} ({value})" for key, value in intervals.items())
    size = largest if cfg.sink_size == -1 else int(cfg.sink_size)
    if any(value % size for value in intervals.values()):
        raise TrainError(f"config key 'sink_size'={size} must divide {listed}: a sink runs that "
                         f"many steps in one device call, and checkpoints, evaluation and epoch "
                         f"ends happen between calls (sink_size -1 picks the largest that does: "
                         f"{largest})")
    return size, (f"dataset sink: {size} steps per device call (sink_size {cfg.sink_size}; "
                  f"divides {listed}); log lines and overflow checks between calls")


def unused_pretrained_warning(cfg):
    """The warning for a pretrained_ckpt_path that load_ckpt=False leaves unread, or None.

    A warning, not an error: a config may keep its default pretrained path while training
    from scratch (load_ckpt: False), and a path given on the command line cannot be told
    from one in the config."""
    if cfg.load_ckpt or not cfg.pretrained_ckpt_path:
        return None
    return (f"warning: pretrained_ckpt_path={cfg.pretrained_ckpt_path} is not loaded because "
            f"load_ckpt=False: training starts from the initial weights; add --load_ckpt=True "
            f"to load it")


# ---------------------------------------------------------------------------- driver --

class Trainer:
    """Owns the network, optimiser, step cell and state of one training run (one rank).

    The run lasts ``total_iters`` iterations (``max_iters``, or ``epoch_size`` epochs); the
    epochs follow from the dataset size (the last one may be partial). Evaluation and
    checkpoints: per epoch (``eval_interval``, ``save_checkpoint_epoch_interval``) when
    scheduling by epochs, per iteration (``eval_interval_iters``) with ``max_iters``; step
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
        train_step = TrainStep(self.train_net, build_loss(cfg), self.optimizer, self.loss_scaler,
                               cfg.clip_grad_norm, reducer, device_target=cfg.device_target)
        self.step_cell = ScheduledTrainStep(train_step, self.lr_schedule, int(cfg.seed))
        self.step_cell.set_train(True)
        self.sink_size, self.sink_note = sink_plan(cfg, self.steps_per_epoch, self.total_iters)
        self.jit_config = (ms.JitConfig(jit_level=cfg.jit_level)
                           if str(cfg.mode).upper() == "GRAPH" else None)
        self._sink = self._iterator = None
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

    def _zero_loss_warning(self, epoch, steps):
        """An epoch whose every step had a loss of exactly 0: a cross entropy is 0 only when
        no pixel counts (every label pixel ignore_label, the loss of an all-ignored batch
        being 0 by the mmseg convention) or the model is saturated; the run goes on."""
        cfg = self.cfg
        if is_segmentation(cfg):
            why = (f"its batches most likely hold no labelled pixel (every label pixel "
                   f"ignore_label={cfg.ignore_label}), so nothing is learnt")
        else:
            why = "the model predicts every training target with certainty"
        return (f"warning: all {steps} step(s) of epoch {epoch} had a loss of exactly 0: {why}; "
                f"check the data with python tools/verify_dataset.py "
                f"{cfg.config_path or 'CONFIG'} --data_path={cfg.data_path}")

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

    def _eval_due(self, step):
        """Whether a max_iters run evaluates after iteration ``step`` (besides the last)."""
        every = int(self.cfg.eval_interval_iters)
        return bool(every) and step % every == 0

    def _after_step(self):
        """Iteration-based evaluation and step checkpoints, after the step ``global_step``."""
        cfg, step = self.cfg, self.state.global_step
        last = step == self.total_iters
        save_step = self.checkpoints.enabled and (
            (cfg.save_checkpoint_steps and step % cfg.save_checkpoint_steps == 0)
            or (self.by_iters and last))
        if self.by_iters and self._can_eval() and (self._eval_due(step) or last):
            self._evaluate(step, self.checkpoints.iter_name(step) if save_step else f"iteration {step}")
        if save_step:
            self.save(self.checkpoints.iter_name(step))
            self.checkpoints.prune("iter_")

    def _read_back(self, totals, steps):
        """Read the step cell's tallies (the one wait for the device per log line or sink), add
        them to the epoch's ``totals`` and stop after ``max_consecutive_overflow_steps``
        overflowed steps in a row. ``steps``: how many ran since the last read. Returns the
        tallies."""
        tallies = self.step_cell.read_tallies()
        if tallies.updated + tallies.overflowed != steps:
            raise RuntimeError(f"the step cell counted {tallies.updated} + {tallies.overflowed} "
                               f"steps since the last read, the trainer ran {steps}")
        totals["loss_sum"] += tallies.loss_sum
        totals["updated"] += tallies.updated
        totals["overflows"] += tallies.overflowed
        self.state.overflow_steps += tallies.overflowed
        limit = int(self.cfg.max_consecutive_overflow_steps)
        if tallies.longest_overflow_run >= limit:
            raise TrainError(
                f"stopped at {self.position}: {tallies.longest_overflow_run} consecutive steps had "
                f"non-finite (inf/NaN) gradients and were skipped (max_consecutive_overflow_steps="
                f"{limit}; {self.state.overflow_steps} overflowed steps in all, loss scale now "
                f"{float(self.loss_scaler.scale_value.asnumpy())}): the run diverged; lower --lr, "
                f"check the data, or use a dynamic loss scale{self.checkpoints.resume_hint()}")
        return tallies

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

    def _run_steps(self, epoch, first, last_step, sampler):
        """Train steps ``first``..``last_step`` of ``epoch``; yields the epoch's step number after
        each device call: every step, or every ``sink_size`` steps when sinking. A resumed
        epoch that starts in its middle runs step by step (a sink cannot skip batches)."""
        if self.sink_size and first == 1:
            if self._sink is None:
                if sampler is not None:
                    sampler.set_epoch(epoch - 1)
                self._sink = ms.data_sink(self.step_cell, self.data, sink_size=self.sink_size,
                                          jit_config=self.jit_config)
            for step in range(self.sink_size, last_step + 1, self.sink_size):
                self._sink()   # its return value is the last step's only: tallies say the rest
                yield step
            return
        if self._iterator is None:
            # sinking resumes at the next epoch: this iterator reads the resumed one only
            epochs = 1 if self.sink_size else self.epochs - epoch + 1
            self._iterator = self.data.create_tuple_iterator(num_epochs=epochs)
        if first > 1:
            self.log(f"reading {first - 1} batch(es) of epoch {epoch} without training, to "
                     f"continue at its step {first}")
        for step, (images, labels) in enumerate(self._iterator, start=1):
            if step < first:
                # the batches this epoch trained on before the resume: MindSpore wants an
                # epoch read whole, and skipping them keeps the later batches in place
                continue
            self.step_cell(images, labels)
            yield step
            if step == last_step < self.steps_per_epoch:
                # the partial last epoch of a max_iters run (leaving an epoch early is only
                # safe at the end: the next epoch would start at its end marker)
                return

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
        self.step_cell.start_at(state.global_step)
        total = self.total_iters
        schedule = (f"{total} iterations (max_iters; {self.epochs} epochs)" if self.by_iters
                    else f"epochs {start_epoch + 1}..{self.epochs}")
        self.log(f"training {cfg.model} {cfg.backbone}: {schedule}, {spe} steps per epoch, "
                 f"batch {cfg.batch_size} x {self.group_size} device(s), "
                 f"amp {cfg.amp_level}, loss scale {cfg.loss_scale_type}, mode {cfg.mode}")
        self.log(self.sink_note)
        interval = int(cfg.train_log_interval)
        for epoch in range(start_epoch + 1, self.epochs + 1):
            self.net.set_train(True)
            epoch_start = last_time = time.time()
            totals = {"loss_sum": 0.0, "updated": 0, "overflows": 0}
            first = skip + 1 if epoch == start_epoch + 1 else 1
            last_step = min(spe, total - (epoch - 1) * spe)
            step = previous = logged = first - 1
            for step in self._run_steps(epoch, first, last_step, sampler):
                state.global_step = g = (epoch - 1) * spe + step
                self.position = (f"epoch {epoch}/{self.epochs}, step {step}/{spe} (global step "
                                 f"{g}/{total})")
                # read back before a checkpoint or evaluation: a diverged run stops first
                at_checkpoint = ((cfg.save_checkpoint_steps and g % cfg.save_checkpoint_steps == 0)
                                 or (self.by_iters and self._eval_due(g)))
                crossed_log_point = step // interval != previous // interval
                if crossed_log_point or step == last_step or at_checkpoint:
                    tallies = self._read_back(totals, step - logged)
                    now = time.time()
                    step_s = (now - last_time) / (step - logged)
                    eta = step_s * (total - g)
                    self.log(format_step_line(epoch, self.epochs, step, spe, tallies.last_loss,
                                              tallies.last_overflow, tallies.last_scale,
                                              step_s * 1000, float(self.lr_schedule[g - 1]), eta))
                    last_time, logged = now, step
                if step == spe:
                    state.epoch = epoch
                self._after_step()
                previous = step
            if step != last_step:
                raise TrainError(f"epoch {epoch} had {step} steps, the dataset announced {spe}")
            # overflowed steps are left out of the mean: their loss may be inf/NaN
            mean = (f"{totals['loss_sum'] / totals['updated']:.8g}" if totals["updated"]
                    else "n/a (every step overflowed)")
            self.log(f"Epoch {epoch}/{self.epochs} done: mean loss {mean}, "
                     f"{totals['overflows']} overflowed step(s) skipped ({state.overflow_steps} in "
                     f"all), epoch cost {time.time() - epoch_start:.1f}s")
            if totals["updated"] and totals["loss_sum"] == 0:  # (cross entropies are >= 0)
                self.log(self._zero_loss_warning(epoch, totals["updated"]))
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
    unused = unused_pretrained_warning(cfg)
    if unused:
        log(unused)
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
