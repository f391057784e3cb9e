"""Mixed precision levels and loss scaling, from the config.

``amp_level`` (weights always stay float32; these decide the compute dtype):

* ``O0`` -- everything float32.
* ``O1`` -- only MindSpore's white-list operations (Conv, Dense, MatMul, BatchMatMul) run in
  float16; everything else -- LayerNorm, BatchNorm, softmax, GELU, resizing -- float32.
* ``O2`` -- the whole network in float16 except BatchNorm/SyncBatchNorm and LayerNorm cells
  (ours and ``nn.LayerNorm``), which run in float32; the models compute attention softmax
  in float32 themselves.
* ``O3`` -- the whole network cast to float16 (MindSpore's O3; BatchNorm included). Our
  LayerNorm still normalises in float32 internally.

The network output is cast back to float32 and the loss is computed in float32 at every
level (``loss.py``).

Loss scaling (``loss_scale_type``): ``dynamic`` -- ``ms.amp.DynamicLossScaler(loss_scale,
loss_scale_factor, loss_scale_window)``: the scale is divided by the factor on every step
whose gradients are not finite (that step is skipped) and multiplied by it after
``loss_scale_window`` consecutive finite steps; ``fixed`` -- constant ``loss_scale``;
``none`` -- scale 1. Whatever the type, a step with non-finite gradients is skipped.
"""
import contextlib
import os
import tempfile

import mindspore as ms
from mindspore import nn

from src.models.backends.reference import LayerNorm
from src.utils.errors import UserError

AMP_LEVELS = ("O0", "O1", "O2", "O3")
LOSS_SCALE_TYPES = ("dynamic", "fixed", "none")


class AmpConfigError(UserError, ValueError):
    """An unusable mixed-precision / loss-scale setting in the config."""


def check_amp_config(cfg):
    """Validate the amp keys before anything is built (clear message instead of a deep crash)."""
    if cfg.amp_level not in AMP_LEVELS:
        raise AmpConfigError(f"config key 'amp_level': '{cfg.amp_level}' is not one of {list(AMP_LEVELS)}")
    if cfg.loss_scale_type not in LOSS_SCALE_TYPES:
        raise AmpConfigError(f"config key 'loss_scale_type': '{cfg.loss_scale_type}' is not one of "
                             f"{list(LOSS_SCALE_TYPES)}")
    if cfg.loss_scale_type != "none" and float(cfg.loss_scale) < 1.0:
        raise AmpConfigError(f"config key 'loss_scale': must be >= 1, got {cfg.loss_scale}")
    if cfg.loss_scale_type == "dynamic":
        factor = float(cfg.loss_scale_factor)
        if factor < 2 or factor != int(factor):
            raise AmpConfigError(f"config key 'loss_scale_factor': must be an integer >= 2 "
                                 f"(MindSpore's DynamicLossScaler), got {cfg.loss_scale_factor}")
        if int(cfg.loss_scale_window) < 1:
            raise AmpConfigError(f"config key 'loss_scale_window': must be >= 1, got "
                                 f"{cfg.loss_scale_window}")


def apply_amp(net, amp_level):
    """Return ``net`` prepared for ``amp_level`` (the same Cell for O0)."""
    if amp_level not in AMP_LEVELS:
        raise AmpConfigError(f"config key 'amp_level': '{amp_level}' is not one of {list(AMP_LEVELS)}")
    if amp_level == "O0":
        return net
    if amp_level == "O2":
        black_list = ms.amp.get_black_list() + [LayerNorm, nn.SyncBatchNorm]
        return ms.amp.custom_mixed_precision(net, black_list=black_list, dtype=ms.float16)
    with _rewrite_scratch_dir():
        return ms.amp.auto_mixed_precision(net, amp_level, dtype=ms.float16)


@contextlib.contextmanager
def _rewrite_scratch_dir():
    """O1 goes through mindspore.rewrite, which writes generated network source into
    ``./rewritten_network/`` of the *current* directory and imports it from there. Run it
    from a per-process scratch folder instead, so users' working directories stay clean and
    parallel runs cannot collide. The folder is kept: graph compilation re-reads the source.
    """
    scratch = os.path.join(tempfile.gettempdir(), f"ms_amp_rewrite_{os.getpid()}")
    os.makedirs(scratch, exist_ok=True)
    previous = os.getcwd()
    os.chdir(scratch)
    try:
        yield
    finally:
        os.chdir(previous)


def build_loss_scaler(cfg):
    """The loss scaler for ``loss_scale_type`` (an ``ms.amp`` LossScaler)."""
    check_amp_config(cfg)
    if cfg.loss_scale_type == "dynamic":
        return ms.amp.DynamicLossScaler(float(cfg.loss_scale), int(cfg.loss_scale_factor),
                                        int(cfg.loss_scale_window))
    if cfg.loss_scale_type == "fixed":
        return ms.amp.StaticLossScaler(float(cfg.loss_scale))
    return ms.amp.StaticLossScaler(1.0)


def loss_scaler_state(scaler):
    """Checkpointable state of a scaler: scale value and (dynamic) clean-step counter."""
    counter = getattr(scaler, "counter", None)
    return {"loss_scale": float(scaler.scale_value.asnumpy()),
            "loss_scale_counter": int(counter.asnumpy()) if counter is not None else 0}


def restore_loss_scaler(scaler, loss_scale, counter):
    scaler.scale_value.set_data(ms.Tensor(float(loss_scale), ms.float32))
    if getattr(scaler, "counter", None) is not None:
        scaler.counter.set_data(ms.Tensor(int(counter), ms.int32))
