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

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype
from mindspore.ops.operations.math_ops import NPUClearFloatStatusV2

from src.utils.device import ReleasesCompileMemory

_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_grad(reciprocal_scale, grad):
    """``grad / scale`` as MindSpore's ``amp._grad_unscale``: times the float32 reciprocal."""
    return grad * reciprocal_scale.astype(grad.dtype)


def uses_float_status_register():
    """Whether ``ms.amp.all_finite`` reads the NPU float-status register on this device: the
    condition of MindSpore 2.10's ``amp._all_finite``."""
    if ms.get_context("device_target") != "Ascend":
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
                 grad_reducer=None):
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
        self.clear_float_status = uses_float_status_register()
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
