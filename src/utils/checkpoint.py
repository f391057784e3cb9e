"""Checkpoint I/O in one place: atomic writes, loads that report what did not match.

Every checkpoint is written to a temporary file in the target directory and renamed into
place, so a run killed mid-write never leaves a partial ``*.ckpt`` under the final name.
Temporary files start with ``.`` and end in ``.tmp.ckpt``; ``find_latest`` ignores them.
"""
import os

import numpy as np
import mindspore as ms

from src.utils.errors import UserError

TMP_SUFFIX = ".tmp.ckpt"

# A train.py checkpoint holds, beside the network weights, the optimiser state (names under
# OPTIMIZER_STATE_PREFIX) and the trainer's dot-less scalars (TRAINING_STATE_KEYS); eval,
# infer and export skip both (is_training_state).
OPTIMIZER_STATE_PREFIX = "optimizer."
TRAINING_STATE_KEYS = ("epoch", "global_step", "steps_per_epoch", "loss_scale",
                       "loss_scale_counter", "best_metric", "best_epoch", "overflow_steps")


def is_training_state(name):
    """True for checkpoint entries of train.py that are not network weights."""
    return name.startswith(OPTIMIZER_STATE_PREFIX) or name in TRAINING_STATE_KEYS


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be read, or does not fit the network."""


def _to_tensor(value):
    if isinstance(value, ms.Parameter):
        return ms.Tensor(value.asnumpy())
    if isinstance(value, ms.Tensor):
        return value
    return ms.Tensor(np.asarray(value))


def save_checkpoint(params, path, extra=None):
    """Atomically write ``params`` (a Cell, or a dict name -> Parameter/Tensor/ndarray).

    ``extra``: dict of additional scalars/arrays stored beside the weights (training
    state: epoch, step, loss scale, best metric ...).
    """
    path = os.path.abspath(path)
    if not path.endswith(".ckpt"):
        raise CheckpointError(f"checkpoint path must end with .ckpt: {path}")
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    if isinstance(params, ms.nn.Cell):
        items = {p.name: p for p in params.get_parameters()}
    else:
        items = dict(params)
    save_list = [{"name": k, "data": _to_tensor(v)} for k, v in items.items()]
    for key, value in (extra or {}).items():
        if key in items:
            raise CheckpointError(f"extra key '{key}' collides with a parameter name")
        save_list.append({"name": key, "data": _to_tensor(value)})
    tmp = os.path.join(directory, f".{os.path.basename(path)[:-5]}.{os.getpid()}{TMP_SUFFIX}")
    try:
        ms.save_checkpoint(save_list, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(path):
    """Read a MindSpore checkpoint into a dict name -> Parameter, with a clear error."""
    if not path:
        raise CheckpointError("no checkpoint path given")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        return ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError with long texts
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid MindSpore "
                              f"checkpoint or truncated ({first})") from None


def match_params(net, param_dict):
    """Compare a checkpoint with a network.

    Returns (matched dict, missing names, unexpected names, mismatched [(name, ckpt shape,
    net shape)]). Names are the network's parameter names.
    """
    net_params = {p.name: p for p in net.get_parameters()}
    matched, mismatched = {}, []
    for name, param in net_params.items():
        if name not in param_dict:
            continue
        value = param_dict[name]
        if tuple(value.shape) != tuple(param.shape):
            mismatched.append((name, tuple(value.shape), tuple(param.shape)))
        else:
            matched[name] = value
    missing = [n for n in net_params if n not in param_dict]
    unexpected = [n for n in param_dict if n not in net_params]
    return matched, missing, unexpected, mismatched


def load_into_net(net, param_dict, strict=True, allow_missing=(), source="checkpoint"):
    """Load ``param_dict`` into ``net``.

    strict: any missing, unexpected or mis-shaped tensor is an error naming it.
    allow_missing: name prefixes that may stay freshly initialised (e.g. a decode head
    when fine-tuning from a backbone checkpoint); they are returned so callers report them.
    Returns (loaded names, missing names).
    """
    matched, missing, unexpected, mismatched = match_params(net, param_dict)
    if mismatched:
        name, got, want = mismatched[0]
        raise CheckpointError(f"{source}: tensor '{name}' has shape {got}, the network expects "
                              f"{want} ({len(mismatched)} mis-shaped; wrong model variant?)")
    bad_missing = [n for n in missing if not any(n.startswith(p) for p in allow_missing)]
    if strict and bad_missing:
        raise CheckpointError(f"{source}: {len(bad_missing)} network parameters missing from the "
                              f"checkpoint, first '{bad_missing[0]}' (wrong model or variant?)")
    if strict and unexpected:
        raise CheckpointError(f"{source}: {len(unexpected)} unexpected tensors, first "
                              f"'{unexpected[0]}' (wrong model or variant?)")
    ms.load_param_into_net(net, matched, strict_load=False)
    return sorted(matched), missing


def find_latest(directory, prefix=""):
    """Newest complete ``*.ckpt`` in ``directory`` (by mtime), skipping temporary files."""
    if not os.path.isdir(directory):
        return None
    candidates = [os.path.join(directory, f) for f in os.listdir(directory)
                  if f.endswith(".ckpt") and not f.startswith(".") and f.startswith(prefix)
                  and not f.endswith(TMP_SUFFIX)]
    candidates.sort(key=os.path.getmtime, reverse=True)
    return candidates[0] if candidates else None


def encoder_prefixes(net):
    """Name prefixes of the network's pretrained encoder, as the model class declares them
    (``encoder_prefixes``; none for a plain classifier): a backbone-only checkpoint holds
    those names only."""
    return tuple(getattr(net, "encoder_prefixes", ()))


def classifier_prefixes(net):
    """Name prefixes of the network's class-count-dependent parameters, as the model class
    declares them (``classifier_prefixes``): a checkpoint converted with drop_head=True lacks
    them when class_num changed."""
    return tuple(getattr(net, "classifier_prefixes", ()))


def count_by_prefix(names):
    """``['decode_head.a', 'decode_head.b']`` -> ``'decode_head.* (2)'`` (first name part)."""
    counts = {}
    for name in names:
        top = name.split(".", 1)[0].split(" ", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{k}.* ({v})" for k, v in sorted(counts.items()))


def load_pretrained(net, path, log=print):
    """Load converted pretrained weights (``tools/convert_model.py`` output) into ``net``.

    A backbone-only checkpoint (every name under the model's ``encoder_prefixes``, e.g.
    ``backbone.``) leaves the rest of the network freshly initialised; a checkpoint converted with ``drop_head=True``
    may lack the classifier (the model's ``classifier_prefixes``). Whatever stays freshly initialised is
    reported by name prefix and count; anything else missing, and anything mis-shaped or
    unexpected, is an error. Returns (loaded names, missing names).
    """
    param_dict = load_checkpoint(path)
    if not param_dict:
        raise CheckpointError(f"pretrained checkpoint {path} holds no tensors")
    allow_missing = classifier_prefixes(net)
    encoder = encoder_prefixes(net)
    if encoder and all(name.startswith(encoder) for name in param_dict):
        allow_missing += tuple(sorted({p.name.split(".", 1)[0] + "." for p in net.get_parameters()
                                       if not p.name.startswith(encoder)}))
    loaded, missing = load_into_net(net, param_dict, strict=True, allow_missing=allow_missing,
                                    source=path)
    log(f"loaded {len(loaded)} pretrained tensors from {path}"
        + (f"; freshly initialised: {count_by_prefix(missing)}" if missing else ""))
    return loaded, missing
