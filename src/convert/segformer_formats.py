"""SegFormer checkpoint formats -> our parameter names (``backbone.*``, ``decode_head.*``).

Each table is a list of (upstream key regex, our name template) rows (the rules are in
``src/convert/common.py``): a group called ``stage0`` is HF's 0-based stage, ours (like
NVlabs) count from 1. A key matching no row is an error unless it matches the format's
SKIP list (tensors upstream keeps that the network does not use). HF splits the fused
``attn.kv`` Linear into ``key`` (first half of the outputs) and ``value``: those rows carry
the part, and the parts are concatenated back.

HF checkpoints come with two naming schemes: the hub's (``save_pretrained`` files,
``segformer.encoder.block.0.0.attention.self.query``) and, since transformers 5, other
names for the modules in memory, which ``torch.save(model.state_dict())`` writes
(``segformer.stages.0.blocks.0.attention.q_proj``).
"""
import re

from src.convert.common import UnmappedKeyError, apply_tables, check_class_count

P = r"(?P<p>weight|bias)"
N = r"(?P<stage>\d)"        # 1-based stage (NVlabs)
N0 = r"(?P<stage0>\d)"      # 0-based stage (HF)
J = r"(?P<j>\d+)"           # block index inside a stage, 0-based everywhere
KV = ("key", "value")       # the parts of the fused attn.kv Linear, in its output order

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

# The HF head after its four input projections (the same names in both schemes).
HF_HEAD = [
    (r"decode_head\.linear_fuse\.weight", "decode_head.linear_fuse.conv.weight"),
    (r"decode_head\.batch_norm\.weight", "decode_head.linear_fuse.bn.gamma"),
    (r"decode_head\.batch_norm\.bias", "decode_head.linear_fuse.bn.beta"),
    (r"decode_head\.batch_norm\.running_mean", "decode_head.linear_fuse.bn.moving_mean"),
    (r"decode_head\.batch_norm\.running_var", "decode_head.linear_fuse.bn.moving_variance"),
    (rf"decode_head\.classifier\.{P}", "decode_head.linear_pred.{p}"),
]

# HF transformers (hub / save_pretrained names, ``segformer.`` prefix removed).
HF_BLOCK = rf"encoder\.block\.{N0}\.{J}\."
HF_TABLE = [
    (rf"encoder\.patch_embeddings\.{N0}\.proj\.{P}", "backbone.patch_embed{stage}.proj.{p}"),
    (rf"encoder\.patch_embeddings\.{N0}\.layer_norm\.{P}", "backbone.patch_embed{stage}.norm.{p}"),
    (rf"{HF_BLOCK}layer_norm_1\.{P}", "backbone.block{stage}.{j}.norm1.{p}"),
    (rf"{HF_BLOCK}attention\.self\.query\.{P}", "backbone.block{stage}.{j}.attn.q.{p}"),
    (rf"{HF_BLOCK}attention\.self\.key\.{P}", "backbone.block{stage}.{j}.attn.kv.{p}", 0, KV),
    (rf"{HF_BLOCK}attention\.self\.value\.{P}", "backbone.block{stage}.{j}.attn.kv.{p}", 1, KV),
    (rf"{HF_BLOCK}attention\.self\.sr\.{P}", "backbone.block{stage}.{j}.attn.sr.{p}"),
    (rf"{HF_BLOCK}attention\.self\.layer_norm\.{P}", "backbone.block{stage}.{j}.attn.norm.{p}"),
    (rf"{HF_BLOCK}attention\.output\.dense\.{P}", "backbone.block{stage}.{j}.attn.proj.{p}"),
    (rf"{HF_BLOCK}layer_norm_2\.{P}", "backbone.block{stage}.{j}.norm2.{p}"),
    (rf"{HF_BLOCK}mlp\.dense1\.{P}", "backbone.block{stage}.{j}.mlp.fc1.{p}"),
    (rf"{HF_BLOCK}mlp\.dwconv\.dwconv\.{P}", "backbone.block{stage}.{j}.mlp.dwconv.dwconv.{p}"),
    (rf"{HF_BLOCK}mlp\.dense2\.{P}", "backbone.block{stage}.{j}.mlp.fc2.{p}"),
    (rf"encoder\.layer_norm\.{N0}\.{P}", "backbone.norm{stage}.{p}"),
    (rf"decode_head\.linear_c\.{N0}\.proj\.{P}", "decode_head.linear_c{stage}.proj.{p}"),
    *HF_HEAD,
]

# transformers >= 5 in-memory names (``torch.save(model.state_dict())``).
HF5_BLOCK = rf"stages\.{N0}\.blocks\.{J}\."
HF5_TABLE = [
    (rf"stages\.{N0}\.patch_embeddings\.proj\.{P}", "backbone.patch_embed{stage}.proj.{p}"),
    (rf"stages\.{N0}\.patch_embeddings\.layer_norm\.{P}", "backbone.patch_embed{stage}.norm.{p}"),
    (rf"{HF5_BLOCK}layernorm_before\.{P}", "backbone.block{stage}.{j}.norm1.{p}"),
    (rf"{HF5_BLOCK}attention\.q_proj\.{P}", "backbone.block{stage}.{j}.attn.q.{p}"),
    (rf"{HF5_BLOCK}attention\.k_proj\.{P}", "backbone.block{stage}.{j}.attn.kv.{p}", 0, KV),
    (rf"{HF5_BLOCK}attention\.v_proj\.{P}", "backbone.block{stage}.{j}.attn.kv.{p}", 1, KV),
    (rf"{HF5_BLOCK}attention\.sequence_reduction\.sequence_reduction\.{P}",
     "backbone.block{stage}.{j}.attn.sr.{p}"),
    (rf"{HF5_BLOCK}attention\.sequence_reduction\.layer_norm\.{P}",
     "backbone.block{stage}.{j}.attn.norm.{p}"),
    (rf"{HF5_BLOCK}attention\.o_proj\.{P}", "backbone.block{stage}.{j}.attn.proj.{p}"),
    (rf"{HF5_BLOCK}layernorm_after\.{P}", "backbone.block{stage}.{j}.norm2.{p}"),
    (rf"{HF5_BLOCK}mlp\.fc1\.{P}", "backbone.block{stage}.{j}.mlp.fc1.{p}"),
    (rf"{HF5_BLOCK}mlp\.dwconv\.dwconv\.{P}", "backbone.block{stage}.{j}.mlp.dwconv.dwconv.{p}"),
    (rf"{HF5_BLOCK}mlp\.fc2\.{P}", "backbone.block{stage}.{j}.mlp.fc2.{p}"),
    (rf"stages\.{N0}\.layer_norm\.{P}", "backbone.norm{stage}.{p}"),
    (rf"decode_head\.linear_projections\.{N0}\.proj\.{P}", "decode_head.linear_c{stage}.proj.{p}"),
    *HF_HEAD,
]

# Tensors upstream stores that the network does not use.
SKIP_IMAGENET = [r"head\..*"]                                      # ImageNet classifier
SKIP_FINETUNED = [r"decode_head\.conv_seg\..*",  # mmseg BaseDecodeHead's conv, unused by SegFormer
                  r"backbone\.head\..*",          # an ImageNet head some MiT versions kept
                  r".*num_batches_tracked"]
SKIP_HF = [r"classifier\..*", r".*num_batches_tracked"]            # HF ImageNet classifier


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
        return apply_tables(state_dict, [(NVLABS_BACKBONE, "backbone.", "backbone."),
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
        return apply_tables(stripped, [(HF_TABLE, "", "")], SKIP_HF)


class HF5Segformer(_SegFormerFormat):
    """HF transformers >= 5 SegFormer saved from memory (``torch.save(model.state_dict())``:
    ``segformer.stages.*``; semantic segmentation, image classification or bare
    ``SegformerModel``)."""
    NAME = "hf-transformers5-segformer-state-dict"

    @staticmethod
    def matches(state_dict):
        prefixes = ("segformer.stages.0.patch_embeddings.", "stages.0.patch_embeddings.")
        return any(k.startswith(prefixes) for k in state_dict)

    @staticmethod
    def rename(state_dict):
        stripped = {(k[len("segformer."):] if k.startswith("segformer.") else k): v
                    for k, v in state_dict.items()}
        return apply_tables(stripped, [(HF5_TABLE, "", "")], SKIP_HF)


class NvlabsImagenet(_SegFormerFormat):
    """NVlabs ImageNet-pretrained ``mit_bX.pth``: flat MiT names plus an ImageNet ``head``."""
    NAME = "nvlabs-mit-imagenet"

    @staticmethod
    def matches(state_dict):
        return "patch_embed1.proj.weight" in state_dict

    @staticmethod
    def rename(state_dict):
        return apply_tables(state_dict, [(NVLABS_BACKBONE, "", "backbone.")], SKIP_IMAGENET)


# Most specific first: a fine-tuned checkpoint must not be read as an ImageNet one.
FORMATS = [NvlabsFinetuned, HFSegformer, HF5Segformer, NvlabsImagenet]
