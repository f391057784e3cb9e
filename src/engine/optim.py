"""Optimisers with parameter groups: AdamW (torch semantics) and SGD with momentum.

Why our own update rules: MindSpore's ``nn.AdamWeightDecay`` has no bias correction
(``m / (sqrt(v) + eps)`` with raw moments), so its first steps are ~1/(1-beta1) = 10x too
small compared with ``torch.optim.AdamW`` that the SegFormer/ViT recipes were tuned with,
and ``mint.optim.AdamW`` runs on Ascend only. The rules below are ``torch.optim.AdamW``
(computed by the fused ``ops.AdamWeightDecay`` kernel, bias correction folded into its
step size, epsilon and decay) and ``torch.optim.SGD`` (dampening 0, no Nesterov);
tests/engine/test_optim.py compares them with torch numerically.

The learning rate is an input of ``construct`` (the per-iteration value from
``schedules.build_lr_schedule``), so a resumed run continues the schedule from its step
counter and graph mode compiles once. Each parameter carries a constant learning-rate
multiplier and weight decay from its group:

* group "head" = parameters whose name starts with ``decode_head.`` (SegFormer),
  ``decoder.`` (Segmenter) or ``head.`` (ViT classifier): lr x ``head_lr_mult``;
* no weight decay for 1-D parameters (biases, norm scales/shifts) and for names containing
  any of ``no_weight_decay_keys`` (norm, bias, pos_embed, cls_token, cls_emb).

Optimizer state is made of Parameters named ``optimizer.*`` so it is saved with the
weights and restored on resume.
"""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.parameter import ParameterTuple

from src.engine.schedules import group_lr_multipliers
from src.utils.checkpoint import OPTIMIZER_STATE_PREFIX as STATE_PREFIX
from src.utils.errors import UserError

HEAD_PREFIXES = ("decode_head.", "decoder.", "head.")
OPTIMIZERS = ("adamw", "sgd")


class OptimizerError(UserError, ValueError):
    """An optimiser key in the config has an unusable value."""


def is_head_param(name):
    return name.startswith(HEAD_PREFIXES)


def has_no_weight_decay(param, no_weight_decay_keys):
    return param.ndim <= 1 or any(key in param.name for key in no_weight_decay_keys)


def param_groups(net, cfg):
    """Split ``net.trainable_params()`` into up to four groups.

    Returns a list of dicts ``{"name", "params", "lr_mult", "weight_decay"}`` (empty groups
    left out), in a fixed order: encoder/decay, encoder/no_decay, head/decay, head/no_decay.
    """
    mults = group_lr_multipliers(cfg)
    weight_decay = float(cfg.weight_decay)
    if weight_decay < 0:
        raise OptimizerError(f"config key 'weight_decay': must be >= 0, got {cfg.weight_decay}")
    keys = tuple(cfg.no_weight_decay_keys)
    buckets = {}
    for param in net.trainable_params():
        part = "head" if is_head_param(param.name) else "encoder"
        decay = "no_decay" if has_no_weight_decay(param, keys) else "decay"
        buckets.setdefault((part, decay), []).append(param)
    groups = []
    for part in ("encoder", "head"):
        for decay in ("decay", "no_decay"):
            params = buckets.get((part, decay))
            if params:
                groups.append({"name": f"{part}/{decay}", "params": params,
                               "lr_mult": mults[part],
                               "weight_decay": weight_decay if decay == "decay" else 0.0})
    if not groups:
        raise OptimizerError("the network has no trainable parameters")
    return groups


def describe_param_groups(groups):
    """One line per group for the training log."""
    return [f"param group {g['name']}: {len(g['params'])} tensors, "
            f"{sum(p.size for p in g['params']):,} values, lr x{g['lr_mult']:g}, "
            f"weight_decay {g['weight_decay']:g}" for g in groups]


_adamw_update = ops.MultitypeFuncGraph("adamw_update")
_sgd_update = ops.MultitypeFuncGraph("sgd_update")
# One fused kernel per tensor (updates the parameter and its state in place). Written out
# as tensor arithmetic, AdamW was ~12 graph nodes per parameter tensor, each with its own
# compiled-graph state and output buffer (SegFormer-B0: 189 tensors, ~70 MiB of the train
# graph) and a pass over the tensor each.
_adam_weight_decay = ops.AdamWeightDecay()
_apply_momentum = ops.ApplyMomentum()


@_adamw_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Number",
                        "Number", "Tensor", "Tensor", "Tensor", "Tensor")
def _adamw_param(lr, step_size, eps, decay_scale, beta1, beta2, lr_mult, weight_decay, param,
                 exp_avg, exp_avg_sq, grad):
    """torch.optim.AdamW for one tensor, by ``ops.AdamWeightDecay`` (no bias correction:
    ``p -= L * (m / (sqrt(v) + E) + D * p)``). torch's bias-corrected step

        p -= lr * wd * p + (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

    is that with L = lr * sqrt(bc2) / bc1 (``lr * step_size``), E = eps * sqrt(bc2) and
    D = wd * bc1 / sqrt(bc2) (``weight_decay * decay_scale``); moments as in torch."""
    group_lr = lr * lr_mult
    return _adam_weight_decay(param, exp_avg, exp_avg_sq, group_lr * step_size, beta1, beta2,
                              eps, decay_scale * weight_decay, grad.astype(param.dtype))


@_sgd_update.register("Tensor", "Tensor", "Number", "Number", "Tensor", "Tensor", "Tensor")
def _sgd_param(lr, momentum, lr_mult, weight_decay, param, buf, grad):
    """torch.optim.SGD (dampening 0, nesterov False) for one tensor: ``ops.ApplyMomentum``
    (in place: buf = momentum * buf + g; p -= lr * buf) on g = grad + weight_decay * p."""
    grad = grad.astype(param.dtype)
    if weight_decay != 0.0:
        grad = grad + param * weight_decay
    return _apply_momentum(param, buf, lr * lr_mult, grad, momentum)


# The Taylor series of expm1 up to y ** 8 / 8!: the first term left out, y ** 9 / 9!, is
# below 3e-8 * |y| (half a float32 ulp) for |y| <= SERIES_LIMIT
SERIES_TERMS = 8
SERIES_LIMIT = 0.5


def one_minus_power(beta, log_beta, step):
    """``1 - beta ** step`` (torch AdamW's bias correction) in float32, within 1.6e-7 of its
    float64 value (measured up to step 2 ** 24, betas 0.5-0.9999), from float32 tensors
    ``beta`` and ``log_beta = log(beta)`` (taken on the host in float64).

    ``1 - pow(beta, step)`` cancels while ``beta ** step`` is close to 1 (6.7e-6 relative
    error for beta 0.999 at step 2 on MindSpore 2.10's CPU kernels; their Expm1 does no
    better), so there, for ``y = step * log_beta`` down to -SERIES_LIMIT, it is ``-expm1(y)``
    by its Taylor series; further out ``1 - pow(beta, step)`` no longer cancels (within
    1.5e-7 there; ``1 - exp(y)`` would be 1.8e-6 off on MindSpore's CPU Exp)."""
    y = step * log_beta
    near = ops.maximum(y, -SERIES_LIMIT)   # the branch not taken stays finite
    series = ops.ones_like(y)
    for n in range(SERIES_TERMS, 1, -1):
        series = 1.0 + series * near / n
    return ops.select(y > -SERIES_LIMIT, -near * series, 1.0 - ops.pow(beta, step))


def _log(beta):
    return math.log(beta) if beta > 0.0 else -math.inf   # beta 0: 1 - 0 ** step = 1


class _GroupedOptimizer(nn.Cell):
    """Flattens groups into per-parameter constants (order = ``self.parameters``)."""

    def __init__(self, groups):
        super().__init__(auto_prefix=False)
        params, lr_mults, weight_decays = [], [], []
        for group in groups:
            for param in group["params"]:
                params.append(param)
                lr_mults.append(float(group["lr_mult"]))
                weight_decays.append(float(group["weight_decay"]))
        self.parameters = ParameterTuple(params)
        self.lr_mults = tuple(lr_mults)
        self.weight_decays = tuple(weight_decays)
        self.hyper_map = ops.HyperMap()
        self.step = ms.Parameter(ms.Tensor(0, ms.int32), name=STATE_PREFIX + "step",
                                 requires_grad=False)

    def _next_step(self):
        step = self.step + 1
        return ops.depend(step, ops.assign(self.step, step))


class AdamW(_GroupedOptimizer):
    """``torch.optim.AdamW`` (decoupled weight decay, bias-corrected moments, amsgrad off)."""

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(groups)
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.beta1_f32 = ms.Tensor(self.beta1, ms.float32)
        self.beta2_f32 = ms.Tensor(self.beta2, ms.float32)
        # The kernel averages with the float32 betas (1 - 0.999f is 1.3e-5 off 0.001): bias
        # corrections from those same values make the first step lr * sign(g), as torch's.
        # Their logarithms are taken on the host in float64; the graph computes in float32
        # only (Ascend has next to no float64 arithmetic), see one_minus_power.
        self.log_beta1 = ms.Tensor(_log(float(self.beta1_f32.asnumpy())), ms.float32)
        self.log_beta2 = ms.Tensor(_log(float(self.beta2_f32.asnumpy())), ms.float32)
        self.exp_avg = self.parameters.clone(prefix=STATE_PREFIX + "exp_avg", init="zeros")
        self.exp_avg_sq = self.parameters.clone(prefix=STATE_PREFIX + "exp_avg_sq", init="zeros")

    def construct(self, grads, lr):
        step = self._next_step().astype(ms.float32)   # exact up to 2 ** 24 steps
        bias_correction1 = one_minus_power(self.beta1_f32, self.log_beta1, step)
        sqrt_bias_correction2 = ops.sqrt(one_minus_power(self.beta2_f32, self.log_beta2, step))
        step_size = sqrt_bias_correction2 / bias_correction1
        eps = self.eps * sqrt_bias_correction2
        decay_scale = bias_correction1 / sqrt_bias_correction2
        update = ops.partial(_adamw_update, lr, step_size, eps, decay_scale, self.beta1_f32,
                             self.beta2_f32)
        return self.hyper_map(update, self.lr_mults, self.weight_decays, self.parameters,
                              self.exp_avg, self.exp_avg_sq, grads)


class SGD(_GroupedOptimizer):
    """``torch.optim.SGD`` with momentum (coupled L2 weight decay, dampening 0)."""

    def __init__(self, groups, momentum=0.9):
        super().__init__(groups)
        self.momentum = ms.Tensor(float(momentum), ms.float32)
        self.momentum_buffer = self.parameters.clone(prefix=STATE_PREFIX + "momentum_buffer",
                                                     init="zeros")

    def construct(self, grads, lr):
        self._next_step()
        update = ops.partial(_sgd_update, lr, self.momentum)
        return self.hyper_map(update, self.lr_mults, self.weight_decays, self.parameters,
                              self.momentum_buffer, grads)


def build_optimizer(net, cfg, groups=None):
    """The optimiser named by ``cfg.optimizer`` over ``param_groups(net, cfg)``."""
    groups = groups if groups is not None else param_groups(net, cfg)
    name = str(cfg.optimizer).lower()
    if name == "adamw":
        betas = tuple(float(b) for b in cfg.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise OptimizerError(f"config key 'betas': expected two values in [0, 1), got {cfg.betas}")
        return AdamW(groups, betas=betas)
    if name == "sgd":
        if not 0.0 <= float(cfg.momentum) < 1.0:
            raise OptimizerError(f"config key 'momentum': expected a value in [0, 1), got {cfg.momentum}")
        return SGD(groups, momentum=cfg.momentum)
    raise OptimizerError(f"config key 'optimizer': '{cfg.optimizer}' is not one of {list(OPTIMIZERS)}")
