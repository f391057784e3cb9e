"""Optimisers with parameter groups: AdamW (torch semantics) and SGD with momentum.

Why our own update rules: MindSpore's ``nn.AdamWeightDecay`` has no bias correction
(``m / (sqrt(v) + eps)`` with raw moments), so its first steps are ~1/(1-beta1) = 10x too
small compared with ``torch.optim.AdamW`` that the SegFormer/ViT recipes were tuned with,
and ``mint.optim.AdamW`` runs on Ascend only. The rules below are ``torch.optim.AdamW``
(computed by the fused ``ops.AdamWeightDecay`` kernel, bias correction folded into its
step size, epsilon and decay) and ``torch.optim.SGD`` (dampening 0, optionally Nesterov);
tests/engine/test_optim.py compares them with torch numerically.

The learning rate is an input of ``construct`` (the per-iteration value from
``schedules.build_lr_schedule``), so a resumed run continues the schedule from its step
counter and graph mode compiles once. Each parameter carries a constant learning-rate
multiplier and weight decay, given by the recipe's ``paramwise`` config with the rule of
mmcv's ``DefaultOptimizerConstructor`` (the one NVlabs' SegFormer and mmseg train with):

* ``custom_keys`` (``{key: {lr_mult, decay_mult}}``) are sorted alphabetically, then by
  length, longest first; the FIRST key that is a substring of the full parameter name
  (``decode_head.linear_fuse.bn.weight``) applies, and only that one;
* a parameter no key matches gets ``weight_decay * norm_decay_mult`` if it belongs to a
  normalisation layer (BatchNorm, LayerNorm, GroupNorm), else ``weight_decay *
  bias_decay_mult`` if it is named ``bias``, else ``weight_decay``; lr x1.

No model family is special-cased here: the recipe YAML names its "head" and its exemptions.
Optimizer state is made of Parameters named ``optimizer.*`` so it is saved with the
weights and restored on resume.
"""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.parameter import ParameterTuple

from src.models.backends import reference
from src.utils.checkpoint import OPTIMIZER_STATE_PREFIX as STATE_PREFIX
from src.utils.errors import UserError

OPTIMIZERS = ("adamw", "sgd")
PARAMWISE_KEYS = ("custom_keys", "bias_decay_mult", "norm_decay_mult")
CUSTOM_KEY_FIELDS = ("lr_mult", "decay_mult")
# Layers whose parameters norm_decay_mult applies to (mmcv: _BatchNorm, _InstanceNorm,
# GroupNorm, LayerNorm); reference.LayerNorm is the models' LayerNorm in every backend.
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm,
               nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
               reference.LayerNorm)


class OptimizerError(UserError, ValueError):
    """An optimiser key in the config has an unusable value."""


def _mult(value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise OptimizerError(f"config key '{key}': expected a number >= 0, got {value!r}")
    return float(value)


def _check_mapping(value, where, allowed):
    """``value`` is a mapping whose keys are among ``allowed``; else an OptimizerError."""
    if not isinstance(value, dict):
        raise OptimizerError(f"config key '{where}': expected a mapping with keys "
                             f"{list(allowed)}, got {value!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise OptimizerError(f"config key '{where}.{unknown[0]}': unknown, expected one of "
                             f"{list(allowed)}")


def check_paramwise(cfg):
    """The ``paramwise`` config as ``(custom_keys in match order, bias_decay_mult,
    norm_decay_mult)``; ``custom_keys`` maps each key to ``(lr_mult, decay_mult)``."""
    paramwise = cfg.paramwise
    _check_mapping(paramwise, "paramwise", PARAMWISE_KEYS)
    custom = paramwise.get("custom_keys") or {}
    if not isinstance(custom, dict):
        raise OptimizerError(f"config key 'paramwise.custom_keys': expected a mapping "
                             f"{{name substring: {{lr_mult, decay_mult}}}}, got {custom!r}")
    rules = {}
    # mmcv: sorted(sorted(keys), key=len, reverse=True) -- alphabetical, then longest first
    for key in sorted(sorted(custom), key=len, reverse=True):
        where = f"paramwise.custom_keys.{key}"
        spec = custom[key]
        if not isinstance(key, str) or not key:
            raise OptimizerError(f"config key 'paramwise.custom_keys': keys must be non-empty "
                                 f"parameter-name substrings, got {key!r}")
        _check_mapping(spec, where, CUSTOM_KEY_FIELDS)
        rules[key] = tuple(_mult(spec.get(f, 1.0), f"{where}.{f}") for f in CUSTOM_KEY_FIELDS)
    return (rules, _mult(paramwise.get("bias_decay_mult", 1.0), "paramwise.bias_decay_mult"),
            _mult(paramwise.get("norm_decay_mult", 1.0), "paramwise.norm_decay_mult"))


def lr_multipliers(cfg):
    """``{rule: lr_mult}`` for tools/vis_lr.py's curves: "default" (x1) and each custom key
    with another multiplier."""
    rules, _, _ = check_paramwise(cfg)
    return {"default": 1.0, **{f"custom_keys.{k}": lr for k, (lr, _) in rules.items() if lr != 1.0}}


def _norm_param_names(net):
    names = set()
    for _, cell in net.cells_and_names():
        if isinstance(cell, NORM_LAYERS):
            names.update(p.name for p in cell.get_parameters(expand=False))
    return names


def param_rule(name, is_norm, rules, bias_decay_mult, norm_decay_mult):
    """``(rule, lr_mult, decay_mult)`` of one parameter by mmcv's rule (module docstring)."""
    for key, (lr_mult, decay_mult) in rules.items():
        if key in name:
            return f"custom_keys.{key}", lr_mult, decay_mult
    if is_norm:
        return "norm layers", 1.0, norm_decay_mult
    if name.rsplit(".", 1)[-1] == "bias":
        return "bias", 1.0, bias_decay_mult
    return "default", 1.0, 1.0


def param_groups(net, cfg):
    """Split ``net.trainable_params()`` by the rule that applies to each (module docstring).

    Returns a list of dicts ``{"name", "params", "lr_mult", "weight_decay"}``, one per rule
    that matched a parameter, in the order of first appearance in the network."""
    weight_decay = float(cfg.weight_decay)
    if weight_decay < 0:
        raise OptimizerError(f"config key 'weight_decay': must be >= 0, got {cfg.weight_decay}")
    rules, bias_mult, norm_mult = check_paramwise(cfg)
    norm_names = _norm_param_names(net)
    groups = {}
    for param in net.trainable_params():
        rule, lr_mult, decay_mult = param_rule(param.name, param.name in norm_names, rules,
                                               bias_mult, norm_mult)
        group = groups.setdefault(rule, {"name": rule, "params": [], "lr_mult": lr_mult,
                                         "weight_decay": weight_decay * decay_mult})
        group["params"].append(param)
    if not groups:
        raise OptimizerError("the network has no trainable parameters")
    return list(groups.values())


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


@_sgd_update.register("Tensor", "Tensor", "Bool", "Number", "Number", "Tensor", "Tensor",
                      "Tensor")
def _sgd_param(lr, momentum, nesterov, lr_mult, weight_decay, param, buf, grad):
    """torch.optim.SGD (dampening 0) for one tensor: ``ops.ApplyMomentum`` (in place:
    buf = momentum * buf + g; p -= lr * buf, or with Nesterov p -= lr * (g + momentum * buf))
    on g = grad + weight_decay * p."""
    grad = grad.astype(param.dtype)
    if weight_decay != 0.0:
        grad = grad + param * weight_decay
    if nesterov:
        # ApplyMomentum(use_nesterov=True) steps with the buffer from BEFORE the update
        # (p -= lr * (g + momentum * buf_old)), not torch's rule: written out
        new_buf = ops.assign(buf, buf * momentum + grad)
        return ops.assign_sub(param, (grad + new_buf * momentum) * (lr * lr_mult))
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
    """``torch.optim.SGD`` with momentum (coupled L2 weight decay, dampening 0), Nesterov
    momentum if ``nesterov`` (Segmenter: timm's ``sgd`` is ``SGD(nesterov=True)``)."""

    def __init__(self, groups, momentum=0.9, nesterov=False):
        super().__init__(groups)
        self.nesterov = bool(nesterov)
        self.momentum = ms.Tensor(float(momentum), ms.float32)
        self.momentum_buffer = self.parameters.clone(prefix=STATE_PREFIX + "momentum_buffer",
                                                     init="zeros")

    def construct(self, grads, lr):
        self._next_step()
        update = ops.partial(_sgd_update, lr, self.momentum, self.nesterov)
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
        if not isinstance(cfg.nesterov, bool):
            raise OptimizerError(f"config key 'nesterov': expected True or False, got {cfg.nesterov!r}")
        if cfg.nesterov and float(cfg.momentum) == 0.0:
            raise OptimizerError("config key 'nesterov': Nesterov momentum needs 'momentum' > 0 "
                                 "(torch's rule), got momentum 0")
        return SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise OptimizerError(f"config key 'optimizer': '{cfg.optimizer}' is not one of {list(OPTIMIZERS)}")
