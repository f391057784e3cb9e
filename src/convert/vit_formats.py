"""ViT / Segmenter checkpoint formats -> our parameter names.

Our ViT uses timm's names and our Segmenter the official rstrudel/segmenter names, so the
tables below are identities: they exist to accept exactly the tensors we know and reject
everything else (DeiT distillation tokens, layer scale, register tokens, avg-pool
``fc_norm`` ... are other architectures).

- ``timm-vit``: a timm ``VisionTransformer`` state dict (``.pth`` / ``.safetensors``).
  ``cfg.model == 'vit'``: identity, classifier ``head`` included;
  ``cfg.model == 'segmenter'``: names prefixed ``encoder.``, the ImageNet ``head`` (and
  an in21k ``pre_logits``) skipped; the decoder stays freshly initialised.
- ``hf-transformers-vit``: an HF transformers ``ViTForImageClassification`` / ``ViTModel``,
  under either naming scheme: the hub's (``save_pretrained`` files, ``vit.encoder.layer.0.
  attention.attention.query``) or the transformers >= 5 in-memory names that
  ``torch.save(model.state_dict())`` writes (``vit.layers.0.attention.q_proj``). Renamed to
  timm's names (query/key/value fused into ``attn.qkv``), then converted as ``timm-vit``.
- ``segmenter-official``: rstrudel/segmenter checkpoints (``{'model': state_dict, ...}``,
  the wrapper is removed by ``read_state_dict``): ``encoder.*`` + ``decoder.*``; the
  encoder's ImageNet ``encoder.head`` is skipped (Segmenter never uses it).

Class-dependent tensors (ViT ``head``; Segmenter ``decoder.cls_emb``/``decoder.mask_norm``
or ``decoder.head``) whose class count differs from ``cfg.class_num`` are an error, unless
``cfg.drop_head`` is true: then they are skipped, reported, and left freshly initialised
(the model's ``classifier_prefixes``, read by ``src/utils/checkpoint.py``, lets them be missing
at load time).
"""
import re

from src.convert.common import apply_tables, check_class_count
from src.utils.errors import UserError

# timm ViT encoder tensors (identical names in our VisionTransformer).
VIT_ENCODER = [
    r"cls_token",
    r"pos_embed",
    r"patch_embed\.proj\.(weight|bias)",
    r"blocks\.\d+\.(norm1|norm2)\.(weight|bias)",
    r"blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)",
    r"blocks\.\d+\.mlp\.(fc1|fc2)\.(weight|bias)",
    r"norm\.(weight|bias)",
]
VIT_HEAD = [r"head\.(weight|bias)"]
VIT_CLASS_TENSORS = {"head.weight": 0, "head.bias": 0}          # name -> class axis
TIMM_PRE_LOGITS = [r"pre_logits\.fc\.(weight|bias)"]   # in21k representation layer

# Official Segmenter decoders (names after ``decoder.``).
MASK_TRANSFORMER = [
    r"cls_emb",
    r"proj_dec\.(weight|bias)",
    r"blocks\.\d+\.(norm1|norm2)\.(weight|bias)",
    r"blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)",
    r"blocks\.\d+\.mlp\.(fc1|fc2)\.(weight|bias)",
    r"proj_patch",
    r"proj_classes",
    r"decoder_norm\.(weight|bias)",
    r"mask_norm\.(weight|bias)",
]
MASK_TRANSFORMER_CLASS_TENSORS = {"decoder.cls_emb": 1, "decoder.mask_norm.weight": 0,
                                  "decoder.mask_norm.bias": 0}
LINEAR_DECODER = [r"head\.(weight|bias)"]
LINEAR_DECODER_CLASS_TENSORS = {"decoder.head.weight": 0, "decoder.head.bias": 0}

# HF ViT (``vit.`` prefix removed) -> timm names, both naming schemes.
I = r"(?P<i>\d+)"
P = r"(?P<p>weight|bias)"
QKV = ("query", "key", "value")  # the parts of timm's fused attn.qkv, in its output order
HF_VIT_TABLE = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (rf"embeddings\.patch_embeddings\.projection\.{P}", "patch_embed.proj.{p}"),
    (rf"layernorm\.{P}", "norm.{p}"),
    (rf"classifier\.{P}", "head.{p}"),
    # hub names
    (rf"encoder\.layer\.{I}\.layernorm_before\.{P}", "blocks.{i}.norm1.{p}"),
    (rf"encoder\.layer\.{I}\.attention\.attention\.query\.{P}", "blocks.{i}.attn.qkv.{p}", 0, QKV),
    (rf"encoder\.layer\.{I}\.attention\.attention\.key\.{P}", "blocks.{i}.attn.qkv.{p}", 1, QKV),
    (rf"encoder\.layer\.{I}\.attention\.attention\.value\.{P}", "blocks.{i}.attn.qkv.{p}", 2, QKV),
    (rf"encoder\.layer\.{I}\.attention\.output\.dense\.{P}", "blocks.{i}.attn.proj.{p}"),
    (rf"encoder\.layer\.{I}\.layernorm_after\.{P}", "blocks.{i}.norm2.{p}"),
    (rf"encoder\.layer\.{I}\.intermediate\.dense\.{P}", "blocks.{i}.mlp.fc1.{p}"),
    (rf"encoder\.layer\.{I}\.output\.dense\.{P}", "blocks.{i}.mlp.fc2.{p}"),
    # transformers >= 5 in-memory names
    (rf"layers\.{I}\.layernorm_before\.{P}", "blocks.{i}.norm1.{p}"),
    (rf"layers\.{I}\.attention\.q_proj\.{P}", "blocks.{i}.attn.qkv.{p}", 0, QKV),
    (rf"layers\.{I}\.attention\.k_proj\.{P}", "blocks.{i}.attn.qkv.{p}", 1, QKV),
    (rf"layers\.{I}\.attention\.v_proj\.{P}", "blocks.{i}.attn.qkv.{p}", 2, QKV),
    (rf"layers\.{I}\.attention\.o_proj\.{P}", "blocks.{i}.attn.proj.{p}"),
    (rf"layers\.{I}\.layernorm_after\.{P}", "blocks.{i}.norm2.{p}"),
    (rf"layers\.{I}\.mlp\.fc1\.{P}", "blocks.{i}.mlp.fc1.{p}"),
    (rf"layers\.{I}\.mlp\.fc2\.{P}", "blocks.{i}.mlp.fc2.{p}"),
]
SKIP_HF_VIT = [r"pooler\.dense\.(weight|bias)"]  # ViTModel's pooler: no classifier uses it

# Tokens/layers of other ViT flavours: named in the error so users know why.
UNSUPPORTED = {
    "dist_token": "a DeiT distilled model (distillation token)",
    "reg_token": "a ViT with register tokens",
    "fc_norm.weight": "a ViT with global average pooling (fc_norm)",
    "blocks.0.ls1.gamma": "a ViT with layer scale (DeiT-III/CaiT style)",
    "blocks.0.attn.q_norm.weight": "a ViT with q/k normalisation",
    "patch_embed.norm.weight": "a ViT with a patch-embedding norm",
    "norm_pre.weight": "a ViT with a pre-norm (CLIP style)",
}


class ViTConversionError(UserError, ValueError):
    """A ViT/Segmenter checkpoint that does not fit the configured network."""


def _known(key, patterns):
    return any(re.fullmatch(p, key) for p in patterns)


def _check_supported(state_dict, prefix):
    for key, what in UNSUPPORTED.items():
        if prefix + key in state_dict:
            raise ViTConversionError(f"tensor '{prefix + key}' marks {what}; only the "
                                     f"plain timm/Segmenter ViT (class token, absolute position "
                                     f"embedding) is supported")


# ------------------------------------------------------------- architecture reading --

def describe_encoder(state_dict, prefix=""):
    """(embed_dim, depth, patch_size, (grid_h, grid_w) or None) from tensor shapes."""
    key = prefix + "patch_embed.proj.weight"
    if key not in state_dict:
        raise ViTConversionError(f"tensor '{key}' missing (truncated state dict?)")
    weight = state_dict[key]
    embed_dim, patch = int(weight.shape[0]), int(weight.shape[-1])
    blocks = {int(m.group(1)) for k in state_dict
              for m in [re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k)] if m}
    depth = max(blocks) + 1 if blocks else 0
    missing_blocks = sorted(set(range(depth)) - blocks)
    if missing_blocks:
        raise ViTConversionError(f"block {prefix}blocks.{missing_blocks[0]} missing while "
                                 f"blocks up to {depth - 1} exist (truncated state dict?)")
    grid = None
    if prefix + "pos_embed" in state_dict:
        tokens = int(state_dict[prefix + "pos_embed"].shape[1]) - 1
        side = int(round(tokens ** 0.5))
        grid = (side, side) if side * side == tokens else None
    return embed_dim, depth, patch, grid


def _variants(embed_dim, depth, patch):
    from src.models.vit import VIT_SETTINGS
    return [name for name, s in VIT_SETTINGS.items()
            if (s["embed_dim"], s["depth"], s["patch_size"]) == (embed_dim, depth, patch)]


def _infer_backbone(state_dict, prefix):
    """(backbone name, image_size override or None) from the shapes."""
    from src.models.vit import VIT_SETTINGS
    embed_dim, depth, patch, grid = describe_encoder(state_dict, prefix)
    names = _variants(embed_dim, depth, patch)
    if not names:
        raise ViTConversionError(f"no ViT variant has embed_dim {embed_dim}, depth {depth}, "
                                 f"patch {patch} (supported: {sorted(VIT_SETTINGS)})")
    if grid is None:
        raise ViTConversionError(f"'{prefix}pos_embed' does not hold a square grid; pass "
                                 f"--config_path/--backbone/--image_size explicitly")
    size = grid[0] * patch
    exact = [n for n in names if VIT_SETTINGS[n]["image_size"] == size]
    if exact:
        return exact[0], None
    return names[-1], size


def encoder_keys(depth):
    """Every tensor name of a timm ViT encoder with ``depth`` blocks (no head)."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys += [f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"]
    return keys + ["norm.weight", "norm.bias"]


def _check_encoder(state_dict, prefix, cfg):
    """The checkpoint's encoder against ``cfg.backbone``/``cfg.image_size``: supported
    flavour, variant, every tensor present, position-embedding grid; errors carry hints."""
    from src.models.vit import to_2tuple, vit_settings
    _check_supported(state_dict, prefix)
    want = vit_settings(cfg.backbone)
    embed_dim, depth, patch, _ = describe_encoder(state_dict, prefix)
    if (embed_dim, depth, patch) != (want["embed_dim"], want["depth"], want["patch_size"]):
        found = _variants(embed_dim, depth, patch)
        raise ViTConversionError(
            f"checkpoint encoder has embed_dim {embed_dim}, depth {depth}, patch {patch} "
            f"({' / '.join(found) if found else 'no known variant'}), but config key "
            f"'backbone' is '{cfg.backbone}' (embed_dim {want['embed_dim']}, depth "
            f"{want['depth']}, patch {want['patch_size']})")
    missing = [prefix + k for k in encoder_keys(depth) if prefix + k not in state_dict]
    if missing:
        raise ViTConversionError(f"{len(missing)} encoder tensors missing, first '{missing[0]}' "
                                 f"(truncated state dict?)")
    key = prefix + "pos_embed"
    image_size = to_2tuple(cfg.image_size if cfg.image_size is not None
                           else want["image_size"], "image_size")
    grid = (image_size[0] // patch, image_size[1] // patch)
    tokens = int(state_dict[key].shape[1]) - 1
    if tokens != grid[0] * grid[1]:
        side = int(round(tokens ** 0.5))
        hint = (f"; it was trained at {side * patch}x{side * patch}: pass --image_size="
                f"{side * patch} (and train/evaluate with the same image_size)"
                if side * side == tokens else "")
        raise ViTConversionError(f"'{key}' holds {tokens} position tokens, the network built "
                                 f"for image_size {list(image_size)} expects {grid[0]}x{grid[1]}"
                                 f" = {grid[0] * grid[1]}{hint}")


def _segmenter_pos_embed(state_dict, prefix, cfg):
    """Segmenter trains its position embedding at the crop grid (upstream resamples the
    pretrained one once, at model creation): a square grid other than ``cfg.image_size``'s
    is resampled to it here (bilinear, the model's ``resize_pos_embed``); a copy."""
    import mindspore as ms
    import numpy as np
    from src.models.vit import resize_pos_embed, to_2tuple, vit_settings
    key = prefix + "pos_embed"
    patch = int(state_dict[prefix + "patch_embed.proj.weight"].shape[-1])
    tokens = int(state_dict[key].shape[1]) - 1
    side = int(round(tokens ** 0.5))
    want = to_2tuple(cfg.image_size if cfg.image_size is not None
                     else vit_settings(cfg.backbone)["image_size"], "image_size")
    grid = (want[0] // patch, want[1] // patch)
    if side * side != tokens or (side, side) == grid:
        return state_dict   # nothing to do, or _check_encoder explains what is wrong
    resized = resize_pos_embed(ms.Tensor(np.asarray(state_dict[key], np.float32)), (side, side), grid)
    return {**state_dict, key: resized.asnumpy()}


def _model(cfg):
    model = cfg.model
    if model not in ("vit", "segmenter"):
        raise ViTConversionError(f"a ViT checkpoint converts into model 'vit' or 'segmenter', "
                                 f"but config key 'model' is '{model}'")
    return model


# -------------------------------------------------------------------------- formats --

class TimmViT:
    """timm ViT state dict -> ViT classifier (identity) or Segmenter encoder (``encoder.``)."""
    NAME = "timm-vit"

    @staticmethod
    def matches(state_dict):
        return "patch_embed.proj.weight" in state_dict and "cls_token" in state_dict

    @staticmethod
    def infer_config(state_dict):
        backbone, image_size = _infer_backbone(state_dict, "")
        out = {"model": "vit", "backbone": backbone}
        if image_size is not None:
            out["image_size"] = image_size
        if "head.weight" in state_dict:
            out["class_num"] = int(state_dict["head.weight"].shape[0])
        return out

    @classmethod
    def convert(cls, state_dict, cfg=None):
        cfg = cfg if cfg is not None else _inferred_config(cls, state_dict)
        model = _model(cfg)
        if model == "segmenter":
            state_dict = _segmenter_pos_embed(state_dict, "", cfg)
        _check_encoder(state_dict, "", cfg)
        prefix = "encoder." if model == "segmenter" else ""
        # an in21k head sits on a pre_logits layer (Linear + tanh) this ViT does not have
        has_pre_logits = "pre_logits.fc.weight" in state_dict
        if has_pre_logits and model == "vit" and not cfg.get("drop_head", False):
            raise ViTConversionError("the checkpoint's head sits on an in21k 'pre_logits' layer "
                                     "that this ViT does not have; pass --drop_head=True to "
                                     "convert the encoder and leave the head freshly initialised")
        converted, skipped = {}, []
        for key in sorted(state_dict):
            value = state_dict[key]
            if _known(key, VIT_ENCODER):
                converted[prefix + key] = value
            elif _known(key, VIT_HEAD + TIMM_PRE_LOGITS):
                if model == "segmenter" or has_pre_logits:
                    skipped.append(key)   # Segmenter has no encoder head; see pre_logits above
                else:
                    converted[key] = value
            else:
                raise ViTConversionError(f"unexpected tensor '{key}' {tuple(value.shape)}: not "
                                         f"part of a timm ViT (no conversion-table row matches)")
        if model == "segmenter":
            return converted, skipped
        return check_class_count(converted, skipped, cfg, VIT_CLASS_TENSORS)


class HFViT:
    """HF transformers ViT (hub or transformers >= 5 in-memory names) -> timm names, then
    ``TimmViT``: a ViT classifier, or a Segmenter encoder."""
    NAME = "hf-transformers-vit"

    @staticmethod
    def matches(state_dict):
        return any(k in state_dict for k in ("vit.embeddings.patch_embeddings.projection.weight",
                                             "embeddings.patch_embeddings.projection.weight"))

    @staticmethod
    def rename(state_dict):
        stripped = {(k[len("vit."):] if k.startswith("vit.") else k): v
                    for k, v in state_dict.items()}
        return apply_tables(stripped, [(HF_VIT_TABLE, "", "")], SKIP_HF_VIT)

    @classmethod
    def infer_config(cls, state_dict):
        return TimmViT.infer_config(cls.rename(state_dict)[0])

    @classmethod
    def convert(cls, state_dict, cfg=None):
        timm, skipped = cls.rename(state_dict)
        converted, more = TimmViT.convert(timm, cfg)
        return converted, skipped + more


class OfficialSegmenter:
    """rstrudel/segmenter checkpoint (``encoder.*``, ``decoder.*``) -> our Segmenter."""
    NAME = "segmenter-official"

    @staticmethod
    def matches(state_dict):
        return ("encoder.patch_embed.proj.weight" in state_dict
                and any(k.startswith("decoder.") for k in state_dict))

    @staticmethod
    def infer_config(state_dict):
        backbone, image_size = _infer_backbone(state_dict, "encoder.")
        out = {"model": "segmenter", "backbone": backbone}
        if image_size is not None:
            out["image_size"] = image_size
        if "decoder.cls_emb" in state_dict:
            out["decoder"] = "mask_transformer"
            out["class_num"] = int(state_dict["decoder.cls_emb"].shape[1])
            out["decoder_layers"] = _decoder_layers(state_dict)
        elif "decoder.head.weight" in state_dict:
            out["decoder"] = "linear"
            out["class_num"] = int(state_dict["decoder.head.weight"].shape[0])
        return out

    @classmethod
    def convert(cls, state_dict, cfg=None):
        cfg = cfg if cfg is not None else _inferred_config(cls, state_dict)
        if _model(cfg) != "segmenter":
            raise ViTConversionError("this is a Segmenter checkpoint (encoder.*, decoder.*); "
                                     "convert it with --model=segmenter")
        state_dict = _segmenter_pos_embed(state_dict, "encoder.", cfg)
        _check_encoder(state_dict, "encoder.", cfg)
        is_mask = "decoder.cls_emb" in state_dict
        ckpt_decoder = "mask_transformer" if is_mask else "linear"
        if ckpt_decoder != cfg.decoder:
            raise ViTConversionError(f"the checkpoint has a {ckpt_decoder} decoder but config key "
                                     f"'decoder' is '{cfg.decoder}'; pass --decoder={ckpt_decoder}")
        if is_mask and _decoder_layers(state_dict) != cfg.decoder_layers:
            layers = _decoder_layers(state_dict)
            raise ViTConversionError(f"the checkpoint's Mask Transformer has {layers} blocks but "
                                     f"config key 'decoder_layers' is {cfg.decoder_layers}; pass "
                                     f"--decoder_layers={layers}")
        decoder_table = MASK_TRANSFORMER if is_mask else LINEAR_DECODER
        class_tensors = MASK_TRANSFORMER_CLASS_TENSORS if is_mask else LINEAR_DECODER_CLASS_TENSORS
        converted, skipped = {}, []
        for key in sorted(state_dict):
            value = state_dict[key]
            if key.startswith("encoder.") and _known(key[8:], VIT_ENCODER):
                converted[key] = value
            elif key.startswith("encoder.") and _known(key[8:], VIT_HEAD):
                skipped.append(key)   # the encoder's ImageNet classifier: Segmenter never uses it
            elif key.startswith("decoder.") and _known(key[8:], decoder_table):
                converted[key] = value
            else:
                raise ViTConversionError(f"unexpected tensor '{key}' {tuple(value.shape)}: not "
                                         f"part of an official Segmenter with a {ckpt_decoder} "
                                         f"decoder (no conversion-table row matches)")
        return check_class_count(converted, skipped, cfg, class_tensors)


def _decoder_layers(state_dict):
    return len({m.group(1) for k in state_dict
                for m in [re.match(r"decoder\.blocks\.(\d+)\.", k)] if m})


def _inferred_config(fmt, state_dict):
    from src.utils.config import load_config
    return load_config("", [f"--{k}={v}" for k, v in fmt.infer_config(state_dict).items()])


# Most specific first.
FORMATS = [OfficialSegmenter, TimmViT, HFViT]
