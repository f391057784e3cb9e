"""One optimisation step with loss scaling, overflow skipping and gradient clipping.

The functional path (``ms.value_and_grad`` + ``ms.amp`` loss scaler + ``ms.amp.all_finite``)
because ``nn.TrainOneStepWithLossScaleCell`` fails on the CPU backend ("Unsupported op
[NPUGetFloatStatusV2] on CPU"). Runs in GRAPH and PYNATIVE mode.

Per call: ``loss * scale`` is differentiated w.r.t. the trainable parameters; gradients are
averaged across ranks (``grad_reducer``, distributed only), divided by the scale, checked
for inf/NaN, clipped to ``clip_grad_norm`` (global norm, optional) and applied with the
iteration's learning rate only when all are finite; the loss scaler then adapts.
"""
import mindspore as ms
from mindspore import nn, ops

from src.utils.device import ReleasesCompileMemory


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

    def construct(self, images, labels, lr):
        scale = self.loss_scaler.scale_value * 1.0  # a copy: adjust() updates the Parameter
        scaled_loss, grads = self.grad_fn(images, labels, scale)
        if self.grad_reducer is not None:
            grads = self.grad_reducer(grads)
        grads = self.loss_scaler.unscale(grads)
        finite = ms.amp.all_finite(grads)
        if self.clip_grad_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
        if finite:
            self.optimizer(grads, lr)
        self.loss_scaler.adjust(finite)
        return scaled_loss / scale, ops.logical_not(finite), scale
