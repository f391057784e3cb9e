"""PyTorch -> MindSpore checkpoint conversion: one entry per upstream format.

A format is any object (a module qualifies) with:

    NAME: str                                  e.g. "nvlabs-mit-imagenet"
    matches(state_dict) -> bool                recognises its key names
    convert(state_dict, cfg) -> (dict ms_name -> np.ndarray, list of skipped keys)
    infer_config(state_dict) -> dict           optional: config overrides (model, backbone,
                                               class_num, ...) read from the tensor shapes,
                                               used when no --config_path is given

``state_dict`` is a flat dict name -> float32/int ``np.ndarray`` (``read_state_dict``
already removed the ``state_dict``/``model`` wrapper). Whatever a format converts must be
finite float arrays (``check_values``). ``FORMATS`` is tried in order and
the first match wins, so put the more specific formats first. Adding a format is one
line here. ``tools/convert_model.py`` drives it; ``convert_checkpoint`` is the whole job.
"""
import os

from src.convert import segformer_formats, vit_formats
from src.convert.common import check_values
from src.utils.errors import UserError

FORMATS = [
    *segformer_formats.FORMATS,  # NVlabs/mmseg-0.x fine-tuned, HF transformers, NVlabs ImageNet MiT
    *vit_formats.FORMATS,        # official Segmenter, timm ViT
]


class ConversionError(UserError, RuntimeError):
    """The input is not a checkpoint we can convert, or does not fit the network."""


# --------------------------------------------------------------------------- reading --

WRAPPER_KEYS = ("state_dict", "model")


def _to_numpy(value, key, path):
    import torch
    if not isinstance(value, torch.Tensor):
        raise ConversionError(f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype != torch.float32:
        value = value.float()  # fp16/bf16 checkpoints: MindSpore parameters are fp32
    return value.numpy()


def _unwrap(obj, path):
    """{'state_dict': sd} / {'model': sd} / {'meta', 'state_dict'} -> sd."""
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def read_state_dict(path):
    """Read ``.pth``/``.pt``/``.bin`` (torch, weights only) or ``.safetensors`` into numpy."""
    if not path:
        raise ConversionError("no input checkpoint given (--pt_model_path)")
    if not os.path.isfile(path):
        raise ConversionError(f"input checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise ConversionError(f"input checkpoint is empty (0 bytes): {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file  # torch, not numpy: bf16 files exist
        try:
            raw = load_file(path)
        except Exception as err:  # noqa: BLE001  (safetensors raises several types)
            raise ConversionError(f"cannot read {path} as safetensors: {_first_line(err)} "
                                  f"(truncated or not a safetensors file?)") from None
        return {k: _to_numpy(v, k, path) for k, v in raw.items()}
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (zip/pickle/unpickler errors)
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: {_first_line(err)} "
                              f"(truncated, not a checkpoint, or it needs pickled code, which "
                              f"weights_only loading refuses)") from None
    state_dict = _unwrap(obj, path)
    return {k: _to_numpy(v, k, path) for k, v in state_dict.items()}


def _first_line(err):
    """``TypeName: first sentence of the message`` (torch's zip errors run to a paragraph)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text.split('. ')[0]}" if text else type(err).__name__


# ------------------------------------------------------------------------ dispatching --

def detect_format(state_dict, path=""):
    for fmt in FORMATS:
        if fmt.matches(state_dict):
            return fmt
    sample = ", ".join(sorted(state_dict)[:5])
    raise ConversionError(f"{path}: unrecognised checkpoint layout (first keys: {sample}); "
                          f"supported: {', '.join(f.NAME for f in FORMATS)}")


def check_against_net(converted, net, allow_missing=()):
    """Every converted tensor must exist in ``net`` with the same shape; every net parameter
    must be converted unless its name starts with one of ``allow_missing``.

    Returns the list of net parameters left out (allowed ones).
    """
    net_shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    mis_shaped = [n for n in net_shapes
                  if n in converted and tuple(converted[n].shape) != net_shapes[n]]
    if mis_shaped:  # in network order, so the first stem/embedding tensor is named first
        name = mis_shaped[0]
        raise ConversionError(f"tensor '{name}' has shape {tuple(converted[name].shape)}, the "
                              f"network expects {net_shapes[name]} ({len(mis_shaped)} mis-shaped; "
                              f"wrong variant or class_num?)")
    unexpected = [n for n in converted if n not in net_shapes]
    if unexpected:
        first = unexpected[0]
        raise ConversionError(f"unexpected tensor '{first}' {tuple(converted[first].shape)}: "
                              f"the network built from the config has no such parameter "
                              f"({len(unexpected)} unexpected; wrong model or variant?)")
    missing = [n for n in net_shapes if n not in converted]
    bad = [n for n in missing if not n.startswith(tuple(allow_missing))]
    if bad:
        raise ConversionError(f"{len(bad)} network parameters have no source tensor, first "
                              f"'{bad[0]}' (checkpoint of another model or truncated state dict?)")
    return missing


# ------------------------------------------------------------------------- the job --

def _absent_components(converted, net):
    """Top-level sub-networks (``decode_head``, ``decoder`` ...) with no converted tensor at
    all: a backbone-only checkpoint legitimately lacks them. A partly covered one is not."""
    present = {name.split(".", 1)[0] for name in converted}
    tops = {p.name.split(".", 1)[0] for p in net.get_parameters()}
    return tuple(sorted(t + "." for t in tops - present))


def resolve_config(state_dict, fmt, config_path="", overrides=(), log=print):
    """The config the converted weights are checked against: the given YAML (+ overrides),
    or model/backbone/class_num read from the checkpoint's shapes (+ overrides)."""
    from src.utils.config import load_config
    if config_path:
        return load_config(config_path, list(overrides))
    if not hasattr(fmt, "infer_config"):
        raise ConversionError(f"format {fmt.NAME} cannot tell the model variant from the "
                              f"checkpoint; pass --config_path=config/<model>.yaml")
    try:
        inferred = fmt.infer_config(state_dict)
    except ValueError as err:
        raise ConversionError(f"{fmt.NAME}: {err}") from None
    log("no --config_path: inferred from tensor shapes: "
        + " ".join(f"{k}={v}" for k, v in inferred.items()))
    return load_config("", [f"--{k}={v}" for k, v in inferred.items()] + list(overrides))


def _variant_hint(state_dict, fmt):
    """'; the checkpoint holds backbone=mit_b1 ...' when the format can tell (for errors)."""
    try:
        inferred = fmt.infer_config(state_dict)
    except Exception:  # noqa: BLE001  (a hint only; the error itself is already clear)
        return ""
    return "; the checkpoint holds " + " ".join(f"{k}={v}" for k, v in inferred.items())


def convert_checkpoint(pt_path, ms_path, config_path="", overrides=(), log=print):
    """Read ``pt_path``, convert it by the first matching format, check every tensor against
    the network built from the config, write ``ms_path`` atomically. ``overrides``: config
    ``--key=value`` strings (``--drop_head=True``, ``--class_num=5`` ...).
    Returns a summary dict; raises ConversionError/ConfigError naming the offending key."""
    from mindspore.nn.utils import no_init_parameters
    from src.models import build_model
    from src.utils.checkpoint import classifier_prefixes, count_by_prefix, save_checkpoint

    state_dict = read_state_dict(pt_path)
    fmt = detect_format(state_dict, pt_path)
    log(f"{pt_path}: {len(state_dict)} tensors, format {fmt.NAME}")
    cfg = resolve_config(state_dict, fmt, config_path, overrides, log)
    try:
        converted, skipped = fmt.convert(state_dict, cfg)
        check_values(converted, state_dict)
    except ValueError as err:
        raise ConversionError(f"{pt_path} ({fmt.NAME}): {err}") from None
    with no_init_parameters():  # shapes only: skip the (slow) random init
        net = build_model(cfg)
    allow_missing = _absent_components(converted, net)
    if cfg.drop_head:
        allow_missing += classifier_prefixes(net)
    try:
        missing = check_against_net(converted, net, allow_missing)
    except ConversionError as err:
        raise ConversionError(f"{pt_path}: {err}{_variant_hint(state_dict, fmt)}") from None
    save_checkpoint(converted, ms_path)
    log(f"converted {len(converted)} tensors, skipped {len(skipped)}"
        + (f" ({count_by_prefix(skipped)})" if skipped else "")
        + f", missing {len(missing)}"
        + (f" (stay freshly initialised when loaded: {count_by_prefix(missing)})"
           if missing else ""))
    log(f"wrote {ms_path} (model={cfg.model} backbone={cfg.backbone} class_num={cfg.class_num})")
    return {"format": fmt.NAME, "converted": sorted(converted), "skipped": skipped,
            "missing": missing, "cfg": cfg}
