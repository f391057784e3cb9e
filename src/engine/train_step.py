"""One optimisation step with loss scaling, overflow skipping and gradient clipping.

The functional path (``ms.value_and_grad`` + ``ms.amp`` loss scaler + ``ms.amp.all_finite``)
because ``nn.TrainOneStepWithLossScaleCell`` fails on the CPU backend ("Unsupported op
[NPUGetFloatStatusV2] on CPU"). Runs in GRAPH and PYNATIVE mode.

Per call: ``loss * scale`` is differentiated w.r.t. the trainable parameters; gradients are
averaged across ranks (``grad_reducer``, distributed only), divided by the scale, checked
for inf/NaN, clipped to ``clip_grad_norm`` (global norm, optional) and applied with the
iteration's learning rate only when all are finite; the loss scaler then adapts.

Overflow is one decision for all ranks, as in ``nn.TrainOneStepWithLossScaleCell``: each
rank's overflow flag is summed over the ranks (``AllReduce``) and any overflow skips the step
everywhere. Otherwise ranks could disagree -- on Ascend 910A (and 910B in saturation mode)
``ms.amp.all_finite`` reads the device's own float-status register, where an overflow of
this rank's forward/backward shows even when the averaged gradients look finite -- and the
skipping rank's weights and loss scale would drift from the others'. That register
accumulates until cleared, so there it is cleared before the forward/backward (as
``TrainOneStepWithLossScaleCell.start_overflow_check`` does); elsewhere, CPU included, there
is no register (``NPUClearFloatStatusV2`` has no CPU kernel) and nothing is cleared.

The gradients are unscaled here, by the scale this step's forward ran with, not by the
scaler's ``unscale``: in PYNATIVE mode that is MindSpore 2.10's module-level ``@jit``
function ``amp._grad_unscale_map(scale_value, mutable(grads))``, whose compiled graph keeps
the ``scale_value`` Parameter it was first compiled with, and whose cache key names a
Parameter by ``id()``. Once a loss scaler is freed, a later one whose Parameter lands at the
same address reuses that graph and divides by the dead scaler's scale: a TrainStep built
after another was freed (tests, or the Python API building several in one process) applied
1/1024 of its update. tools/repro/ms_jit_parameter_id_reuse.py reproduces it without this
repository; docs/known_issues.md.
"""
import os
from typing import NamedTuple

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype
from mindspore.ops.operations.math_ops import NPUClearFloatStatusV2

from src.models import stochastic
from src.utils.device import ReleasesCompileMemory

_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_grad(reciprocal_scale, grad):
    """``grad / scale`` as MindSpore's ``amp._grad_unscale``: times the float32 reciprocal."""
    return grad * reciprocal_scale.astype(grad.dtype)


def uses_float_status_register(device_target):
    """Whether ``ms.amp.all_finite`` reads the NPU float-status register on ``device_target``
    (the run's ``cfg.device_target``): the condition of MindSpore 2.10's ``amp._all_finite``."""
    if device_target != "Ascend":
        return False
    from mindspore._c_expression import MSContext
    soc = MSContext.get_instance()
    return bool(soc.ascend_soc_supports_feature("amp_loss_scale_train_classic_target")
                or (soc.ascend_soc_supports_feature("train_hq_dtype_line")
                    and os.environ.get("MS_ASCEND_CHECK_OVERFLOW_MODE") == "SATURATION_MODE"))


def set_gradient_fusion(params, split):
    """Assign each parameter's gradient to an all-reduce fusion group (``Parameter.comm_fusion``,
    which ``nn.DistributedGradReducer`` reads when it is built): group 1 up to the first split
    point (a fraction of ``params``), group 2 up to the next, ... Gradients arrive in backward
    order, the head's first, so with a split the head's all-reduce runs while the backbone's
    backward still computes, where a single fused all-reduce waits for every gradient.
    Returns the number of tensors per group."""
    bounds = [int(fraction * len(params)) for fraction in split]
    sizes = [0] * (len(bounds) + 1)
    for index, param in enumerate(params):
        group = sum(index >= bound for bound in bounds)
        param.comm_fusion = group + 1
        sizes[group] += 1
    return sizes


class NetWithLoss(nn.Cell):
    """``loss_fn(net(images), labels) * scale`` (scale: the current loss scale, a Tensor)."""

    def __init__(self, net, loss_fn):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn

    def construct(self, images, labels, scale):
        return self.loss_fn(self.net(images), labels) * scale


class TrainStep(ReleasesCompileMemory):
    """``step(images, labels, lr) -> (loss, overflow, loss_scale_used)``.

    loss: float32 scalar, unscaled; overflow: bool scalar, True when the gradients were not
    finite and the update was skipped; loss_scale_used: the scale this step ran with.
    """

    def __init__(self, net, loss_fn, optimizer, loss_scaler, clip_grad_norm=0.0,
                 grad_reducer=None, *, device_target):
        super().__init__(auto_prefix=False)
        self.net_with_loss = NetWithLoss(net, loss_fn)
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.loss_scaler = loss_scaler
        self.clip_grad_norm = float(clip_grad_norm)
        self.grad_reducer = grad_reducer
        self.grad_fn = ms.value_and_grad(self.net_with_loss, None, self.weights)
        self.distributed = grad_reducer is not None
        self.overflow_sum = ops.AllReduce() if self.distributed else None
        self.clear_float_status = uses_float_status_register(device_target)
        self.clear_status_op = NPUClearFloatStatusV2() if self.clear_float_status else None
        self.hyper_map = ops.HyperMap()

    def construct(self, images, labels, lr):
        scale = self.loss_scaler.scale_value * 1.0  # a copy: adjust() updates the Parameter
        if self.clear_float_status:   # only this step's forward/backward may count
            cleared = self.clear_status_op(Tensor([0] * 8, mstype.int32))
            images = ops.depend(images, cleared)
        scaled_loss, grads = self.grad_fn(images, labels, scale)
        if self.grad_reducer is not None:
            grads = self.grad_reducer(grads)
        # not self.loss_scaler.unscale(grads): a stale compiled graph in PYNATIVE (docstring)
        grads = self.hyper_map(ops.partial(_unscale, ops.reciprocal(scale)), grads)
        finite = ms.amp.all_finite(grads)
        if self.distributed:   # one decision for all ranks: any rank's overflow skips the step
            overflows = self.overflow_sum(ops.cast(ops.logical_not(finite), mstype.float32))
            finite = overflows < 0.5
        if self.clip_grad_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
        if finite:
            self.optimizer(grads, lr)
        self.loss_scaler.adjust(finite)
        return scaled_loss / scale, ops.logical_not(finite), scale


class ScheduledTrainStep(ReleasesCompileMemory):
    """``TrainStep`` driven by its own iteration counter: ``step(images, labels)`` runs
    iteration ``global_step`` at ``lr_schedule[global_step]``, with the dropout and
    stochastic-depth key of (``seed``, ``global_step``) (``src/models/stochastic.py``: a
    resumed run draws what the uninterrupted one drew), and keeps running tallies on the
    device, so that nothing per step has to cross to the host. The trainer reads the
    tallies once per log line (``read_tallies``); with data sinking (``ms.data_sink``) the
    device runs several steps per call and returns only the last one's outputs, so the
    tallies are what it can read at all.

    Tallies since the last read: sum of the losses of the steps that updated (an
    overflowed step's loss may be inf/NaN), how many updated, how many overflowed, and the
    longest run of consecutive overflowed steps (a run may have started before the read);
    plus the last step's loss and overflow flag.
    """

    def __init__(self, train_step, lr_schedule, seed):
        super().__init__(auto_prefix=False)
        self.train_step = train_step
        self.seed_key = Tensor(stochastic.seed_constants(seed))
        self.loss_scaler = train_step.loss_scaler
        i32, f32 = mstype.int32, mstype.float32
        self.lr_schedule = ms.Parameter(Tensor(lr_schedule, f32), "tally.lr_schedule",
                                        requires_grad=False)
        self.global_step = ms.Parameter(Tensor(0, i32), "tally.global_step", requires_grad=False)
        self.loss_sum = ms.Parameter(Tensor(0.0, f32), "tally.loss_sum", requires_grad=False)
        self.updated = ms.Parameter(Tensor(0, i32), "tally.updated", requires_grad=False)
        self.overflowed = ms.Parameter(Tensor(0, i32), "tally.overflowed", requires_grad=False)
        self.consecutive = ms.Parameter(Tensor(0, i32), "tally.consecutive", requires_grad=False)
        self.longest_run = ms.Parameter(Tensor(0, i32), "tally.longest_run", requires_grad=False)
        self.last_loss = ms.Parameter(Tensor(0.0, f32), "tally.last_loss", requires_grad=False)
        self.last_overflow = ms.Parameter(Tensor(0, i32), "tally.last_overflow",
                                          requires_grad=False)
        self.last_scale = ms.Parameter(Tensor(0.0, f32), "tally.last_scale", requires_grad=False)

    def construct(self, images, labels):
        keyed = ops.assign(stochastic.STEP_KEY.key,
                           stochastic.step_key_of(self.global_step, self.seed_key))
        images = ops.depend(images, keyed)
        lr = ops.gather(self.lr_schedule, self.global_step, 0)
        loss, overflow, scale = self.train_step(images, labels, lr)
        skipped = ops.cast(overflow, mstype.int32)
        kept = 1 - skipped
        ops.assign_add(self.global_step, Tensor(1, mstype.int32))
        # select, not multiply: an overflowed step's loss may be inf/NaN
        ops.assign_add(self.loss_sum, ops.select(overflow, ops.zeros_like(loss), loss))
        ops.assign_add(self.updated, kept)
        ops.assign_add(self.overflowed, skipped)
        run = (self.consecutive + 1) * skipped
        ops.assign(self.consecutive, run)
        ops.assign(self.longest_run, ops.maximum(self.longest_run, run))
        ops.assign(self.last_loss, loss)
        ops.assign(self.last_overflow, skipped)
        ops.assign(self.last_scale, scale)
        return loss, overflow, scale

    def start_at(self, global_step):
        """Continue at iteration ``global_step`` (a resumed run)."""
        self.global_step.set_data(Tensor(int(global_step), mstype.int32))

    def read_tallies(self):
        """The tallies since the last read (one wait for the device), then zero them; the
        current run of overflowed steps carries over into the next read's longest run."""
        names = ("loss_sum", "updated", "overflowed", "longest_run", "last_loss", "last_overflow",
                 "last_scale", "consecutive")
        values = {name: getattr(self, name).asnumpy().item() for name in names}
        for name in ("loss_sum", "updated", "overflowed"):
            param = getattr(self, name)
            param.set_data(ops.zeros_like(param))
        self.longest_run.set_data(Tensor(values["consecutive"], mstype.int32))
        return Tallies(values["loss_sum"], values["updated"], values["overflowed"],
                       values["longest_run"], values["last_loss"], bool(values["last_overflow"]),
                       values["last_scale"])


class Tallies(NamedTuple):
    """What ``ScheduledTrainStep.read_tallies`` returns (see there)."""
    loss_sum: float
    updated: int
    overflowed: int
    longest_overflow_run: int
    last_loss: float
    last_overflow: bool
    last_scale: float      # the loss scale the last step ran with
