"""SegFormer checkpoint formats -> our parameter names (``backbone.*``, ``decode_head.*``).

Each table is a list of (upstream key regex, our name template): named groups fill the
template's fields; a group called ``stage0`` is a 0-based index (HF) and fills ``{stage}``
plus one (ours, like NVlabs, count stages from 1). A key matching no row is an error
unless it matches the format's SKIP list (tensors upstream keeps that the network does
not use). HF rows with a third item are halves: HF splits the fused ``attn.kv`` Linear into
``key`` (part 0, first half of the outputs) and ``value`` (part 1); they are concatenated
back along the output axis.
"""
import re

import numpy as np

from src.convert.common import check_class_count
from src.utils.errors import UserError

P = r"(?P<p>weight|bias)"
N = r"(?P<stage>\d)"        # 1-based stage (NVlabs)
N0 = r"(?P<stage0>\d)"      # 0-based stage (HF)
J = r"(?P<j>\d+)"           # block index inside a stage, 0-based everywhere

# ------------------------------------------------------------------------- tables --

# Our backbone names ARE the NVlabs names, so this table is the identity; it exists to
# reject anything that is not a MiT tensor.
NVLABS_BACKBONE = [
    (rf"patch_embed{N}\.(?P<layer>proj|norm)\.{P}", "patch_embed{stage}.{layer}.{p}"),
    (rf"block{N}\.{J}\.(?P<layer>norm1|norm2)\.{P}", "block{stage}.{j}.{layer}.{p}"),
    (rf"block{N}\.{J}\.attn\.(?P<layer>q|kv|sr|norm|proj)\.{P}",
     "block{stage}.{j}.attn.{layer}.{p}"),
    (rf"block{N}\.{J}\.mlp\.(?P<layer>fc1|dwconv\.dwconv|fc2)\.{P}",
     "block{stage}.{j}.mlp.{layer}.{p}"),
    (rf"norm{N}\.{P}", "norm{stage}.{p}"),
]

# NVlabs SegFormerHead / mmseg-0.x names -> ours (BatchNorm: torch -> MindSpore names).
NVLABS_HEAD = [
    (rf"linear_c{N}\.proj\.{P}", "linear_c{stage}.proj.{p}"),
    (r"linear_fuse\.conv\.weight", "linear_fuse.conv.weight"),
    (r"linear_fuse\.bn\.weight", "linear_fuse.bn.gamma"),
    (r"linear_fuse\.bn\.bias", "linear_fuse.bn.beta"),
    (r"linear_fuse\.bn\.running_mean", "linear_fuse.bn.moving_mean"),
    (r"linear_fuse\.bn\.running_var", "linear_fuse.bn.moving_variance"),
    (rf"linear_pred\.{P}", "linear_pred.{p}"),
]

# HF transformers (hub / save_pretrained names, ``segformer.`` prefix removed).
HF_BLOCK = rf"encoder\.block\.{N0}\.{J}\."
HF_TABLE = [
    (rf"encoder\.patch_embeddings\.{N0}\.proj\.{P}", "backbone.patch_embed{stage}.proj.{p}"),
    (rf"encoder\.patch_embeddings\.{N0}\.layer_norm\.{P}", "backbone.patch_embed{stage}.norm.{p}"),
    (rf"{HF_BLOCK}layer_norm_1\.{P}", "backbone.block{stage}.{j}.norm1.{p}"),
    (rf"{HF_BLOCK}attention\.self\.query\.{P}", "backbone.block{stage}.{j}.attn.q.{p}"),
    (rf"{HF_BLOCK}attention\.self\.key\.{P}", "backbone.block{stage}.{j}.attn.kv.{p}", 0),
    (rf"{HF_BLOCK}attention\.self\.value\.{P}", "backbone.block{stage}.{j}.attn.kv.{p}", 1),
    (rf"{HF_BLOCK}attention\.self\.sr\.{P}", "backbone.block{stage}.{j}.attn.sr.{p}"),
    (rf"{HF_BLOCK}attention\.self\.layer_norm\.{P}", "backbone.block{stage}.{j}.attn.norm.{p}"),
    (rf"{HF_BLOCK}attention\.output\.dense\.{P}", "backbone.block{stage}.{j}.attn.proj.{p}"),
    (rf"{HF_BLOCK}layer_norm_2\.{P}", "backbone.block{stage}.{j}.norm2.{p}"),
    (rf"{HF_BLOCK}mlp\.dense1\.{P}", "backbone.block{stage}.{j}.mlp.fc1.{p}"),
    (rf"{HF_BLOCK}mlp\.dwconv\.dwconv\.{P}", "backbone.block{stage}.{j}.mlp.dwconv.dwconv.{p}"),
    (rf"{HF_BLOCK}mlp\.dense2\.{P}", "backbone.block{stage}.{j}.mlp.fc2.{p}"),
    (rf"encoder\.layer_norm\.{N0}\.{P}", "backbone.norm{stage}.{p}"),
    (rf"decode_head\.linear_c\.{N0}\.proj\.{P}", "decode_head.linear_c{stage}.proj.{p}"),
    (r"decode_head\.linear_fuse\.weight", "decode_head.linear_fuse.conv.weight"),
    (r"decode_head\.batch_norm\.weight", "decode_head.linear_fuse.bn.gamma"),
    (r"decode_head\.batch_norm\.bias", "decode_head.linear_fuse.bn.beta"),
    (r"decode_head\.batch_norm\.running_mean", "decode_head.linear_fuse.bn.moving_mean"),
    (r"decode_head\.batch_norm\.running_var", "decode_head.linear_fuse.bn.moving_variance"),
    (rf"decode_head\.classifier\.{P}", "decode_head.linear_pred.{p}"),
]

# Tensors upstream stores that the network does not use.
SKIP_IMAGENET = [r"head\..*"]                                      # ImageNet classifier
SKIP_FINETUNED = [r"decode_head\.conv_seg\..*",  # mmseg BaseDecodeHead's conv, unused by SegFormer
                  r"backbone\.head\..*",          # an ImageNet head some MiT versions kept
                  r".*num_batches_tracked"]
SKIP_HF = [r"classifier\..*", r".*num_batches_tracked"]            # HF ImageNet classifier


class UnmappedKeyError(UserError, ValueError):
    """A tensor the table does not know, or half of a fused tensor."""


def _skipped(key, patterns):
    return any(re.fullmatch(p, key) for p in patterns)


def _rename(key, table, prefix=""):
    """(our name, part) for ``key`` by the first matching row; part is None or 0/1 (kv)."""
    for row in table:
        match = re.fullmatch(row[0], key)
        if match:
            fields = match.groupdict()
            if "stage0" in fields:
                fields["stage"] = int(fields.pop("stage0")) + 1
            return prefix + row[1].format(**fields), (row[2] if len(row) > 2 else None)
    return None, None


def _apply(state_dict, rows, skip):
    """rows: list of (table, key prefix to strip, ms prefix). Returns (converted, skipped)."""
    converted, parts, skipped = {}, {}, []
    for key in sorted(state_dict):
        value = state_dict[key]
        name, part = None, None
        for table, strip, add in rows:
            if key.startswith(strip):
                name, part = _rename(key[len(strip):], table, add)
                if name:
                    break
        if name is None:
            if _skipped(key, skip):
                skipped.append(key)
                continue
            raise UnmappedKeyError(f"unexpected tensor '{key}' {tuple(np.shape(value))}: "
                                   f"no conversion-table row matches it")
        if part is None:
            converted[name] = np.asarray(value)
        else:
            parts.setdefault(name, {})[part] = np.asarray(value)
    for name, halves in parts.items():
        if set(halves) != {0, 1}:
            which = "key" if 0 not in halves else "value"
            raise UnmappedKeyError(f"'{name}': the HF '{which}' half of the fused kv is missing")
        converted[name] = np.concatenate([halves[0], halves[1]], axis=0)
    return converted, skipped


# ---------------------------------------------------------------- shape inference --

def infer_config(converted):
    """Config overrides (model, backbone, decoder_dim, class_num) read from the shapes of
    converted tensors (our names), so no --config_path is needed."""
    from src.models.mit import MIT_SETTINGS
    from src.models.segformer import DECODER_DIMS
    dims, depths = [], []
    for stage in range(1, 5):
        key = f"backbone.patch_embed{stage}.proj.weight"
        if key not in converted:
            raise UnmappedKeyError(f"missing tensor '{key}' (needed to tell the MiT variant)")
        dims.append(int(converted[key].shape[0]))
        depths.append(len({m.group(1) for k in converted
                           for m in [re.match(rf"backbone\.block{stage}\.(\d+)\.", k)] if m}))
    variants = [name for name, s in MIT_SETTINGS.items()
                if tuple(s["embed_dims"]) == tuple(dims) and tuple(s["depths"]) == tuple(depths)]
    if not variants:
        raise UnmappedKeyError(f"no MiT variant has embed_dims {dims} and depths {depths}")
    out = {"model": "segformer", "backbone": variants[0]}
    if "decode_head.linear_c1.proj.weight" in converted:
        decoder_dim = int(converted["decode_head.linear_c1.proj.weight"].shape[0])
        if decoder_dim != DECODER_DIMS[variants[0]]:
            out["decoder_dim"] = decoder_dim
    if "decode_head.linear_pred.weight" in converted:
        out["class_num"] = int(converted["decode_head.linear_pred.weight"].shape[0])
    return out


# -------------------------------------------------------------------------- formats --

CLASSIFIER = {"decode_head.linear_pred.weight": 0, "decode_head.linear_pred.bias": 0}  # name -> class axis


class _SegFormerFormat:
    @classmethod
    def convert(cls, state_dict, cfg=None):
        converted, skipped = cls.rename(state_dict)
        return check_class_count(converted, skipped, cfg, CLASSIFIER)

    @classmethod
    def infer_config(cls, state_dict):
        return infer_config(cls.rename(state_dict)[0])


class NvlabsFinetuned(_SegFormerFormat):
    """NVlabs SegFormer / mmseg-0.x fine-tuned checkpoint: ``backbone.*``, ``decode_head.*``."""
    NAME = "nvlabs-segformer-finetuned"

    @staticmethod
    def matches(state_dict):
        return "backbone.patch_embed1.proj.weight" in state_dict

    @staticmethod
    def rename(state_dict):
        return _apply(state_dict, [(NVLABS_BACKBONE, "backbone.", "backbone."),
                                   (NVLABS_HEAD, "decode_head.", "decode_head.")], SKIP_FINETUNED)


class HFSegformer(_SegFormerFormat):
    """HF transformers SegFormer (``segformer.encoder.*``; semantic segmentation, image
    classification or bare ``SegformerModel``), ``pytorch_model.bin`` or ``model.safetensors``."""
    NAME = "hf-transformers-segformer"

    @staticmethod
    def matches(state_dict):
        prefixes = ("segformer.encoder.patch_embeddings.", "encoder.patch_embeddings.")
        return any(k.startswith(prefixes) for k in state_dict)

    @staticmethod
    def rename(state_dict):
        stripped = {(k[len("segformer."):] if k.startswith("segformer.") else k): v
                    for k, v in state_dict.items()}
        return _apply(stripped, [(HF_TABLE, "", "")], SKIP_HF)


class NvlabsImagenet(_SegFormerFormat):
    """NVlabs ImageNet-pretrained ``mit_bX.pth``: flat MiT names plus an ImageNet ``head``."""
    NAME = "nvlabs-mit-imagenet"

    @staticmethod
    def matches(state_dict):
        return "patch_embed1.proj.weight" in state_dict

    @staticmethod
    def rename(state_dict):
        return _apply(state_dict, [(NVLABS_BACKBONE, "", "backbone.")], SKIP_IMAGENET)


# Most specific first: a fine-tuned checkpoint must not be read as an ImageNet one.
FORMATS = [NvlabsFinetuned, HFSegformer, NvlabsImagenet]
