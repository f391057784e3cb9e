"""Independent SegFormer reference for the tests: HF transformers' implementation with
random weights and random BatchNorm statistics, plus the upstream on-disk formats written
from it (HF hub names, NVlabs/mmseg fine-tuned names, NVlabs ImageNet ``mit_bX.pth``).

The name mappings here are written from the upstream projects' key lists (anchors.md),
independently of ``src/convert``.
"""
import os

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import SegformerConfig, SegformerForSemanticSegmentation

# Paper variants (NVlabs mix_transformer.py); heads and sr ratios are common.
HF_VARIANTS = {
    "mit_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "mit_b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "mit_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "mit_b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "mit_b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "mit_b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
}


def hf_config(variant, num_labels=19, drop_path_rate=0.1):
    return SegformerConfig(num_labels=num_labels, num_attention_heads=[1, 2, 5, 8],
                           sr_ratios=[8, 4, 2, 1], drop_path_rate=drop_path_rate,
                           **HF_VARIANTS[variant])


def hf_segformer(variant, num_labels=19, seed=0):
    """HF SegFormer in eval mode, every tensor random (BN statistics included), with the
    block/stage LayerNorm eps set to the original 1e-6 (HF builds them with 1e-5; the
    patch-embed and spatial-reduction norms are 1e-5 in both)."""
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(hf_config(variant, num_labels)).eval()
    for stage in model.segformer.stages:
        stage.layer_norm.eps = 1e-6
        for block in stage.blocks:
            block.layernorm_before.eps = 1e-6
            block.layernorm_after.eps = 1e-6
    # HF's init draws the weight matrices from N(0, 0.02): rescale them to unit gain
    # (std 1/sqrt(fan_in)) so attention is peaked and GELU sees O(1) inputs (an error in the
    # attention scale or the GELU form then shows). It leaves norms at 1/0, biases at 0 and
    # BN statistics at 0/1, which would hide swapped norms or biases: draw those.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if tensor.ndim > 1:
                tensor.mul_(1.0 / (float(tensor.std()) * tensor[0].numel() ** 0.5))
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen) * 1.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(0.2 * noise)
            else:  # LayerNorm / BatchNorm scale
                tensor.copy_(1.0 + 0.2 * noise)
    return model


def hub_state_dict(model, directory):
    """The tensors exactly as ``save_pretrained`` writes them (the hub's legacy names)."""
    model.save_pretrained(directory)
    return load_file(os.path.join(directory, "model.safetensors"))


def save_hf(model, directory):
    """Write ``model.safetensors`` (save_pretrained) and ``pytorch_model.bin`` (the same
    tensors through torch.save, as older hub repos store them). Returns both paths."""
    state = hub_state_dict(model, directory)
    bin_path = os.path.join(directory, "pytorch_model.bin")
    torch.save(state, bin_path)
    return os.path.join(directory, "model.safetensors"), bin_path


def to_nvlabs(hub):
    """HF hub names -> NVlabs/mmseg-0.x fine-tuned names (``backbone.*``, ``decode_head.*``)."""
    out = {}
    for key, value in hub.items():
        parts = key.split(".")
        if key.startswith("segformer.encoder.patch_embeddings."):
            stage = int(parts[3]) + 1
            layer = {"proj": "proj", "layer_norm": "norm"}[parts[4]]
            out[f"backbone.patch_embed{stage}.{layer}.{parts[5]}"] = value
        elif key.startswith("segformer.encoder.layer_norm."):
            out[f"backbone.norm{int(parts[3]) + 1}.{parts[4]}"] = value
        elif key.startswith("segformer.encoder.block."):
            stage, block, rest = int(parts[3]) + 1, parts[4], ".".join(parts[5:])
            prefix = f"backbone.block{stage}.{block}."
            if rest.startswith("attention.self.key."):
                pname = rest.rsplit(".", 1)[1]
                value_half = hub[key.replace(".key.", ".value.")]
                out[prefix + "attn.kv." + pname] = torch.cat([value, value_half], 0)
                continue
            if rest.startswith("attention.self.value."):
                continue
            for hf_name, nv_name in (("layer_norm_1", "norm1"), ("layer_norm_2", "norm2"),
                                     ("attention.self.query", "attn.q"),
                                     ("attention.self.sr", "attn.sr"),
                                     ("attention.self.layer_norm", "attn.norm"),
                                     ("attention.output.dense", "attn.proj"),
                                     ("mlp.dense1", "mlp.fc1"), ("mlp.dense2", "mlp.fc2"),
                                     ("mlp.dwconv.dwconv", "mlp.dwconv.dwconv")):
                if rest.startswith(hf_name + "."):
                    out[prefix + nv_name + rest[len(hf_name):]] = value
                    break
            else:
                raise KeyError(key)
        elif key.startswith("decode_head.linear_c."):
            out[f"decode_head.linear_c{int(parts[2]) + 1}.proj.{parts[4]}"] = value
        elif key == "decode_head.linear_fuse.weight":
            out["decode_head.linear_fuse.conv.weight"] = value
        elif key.startswith("decode_head.batch_norm."):
            out["decode_head.linear_fuse.bn." + parts[2]] = value
        elif key.startswith("decode_head.classifier."):
            out["decode_head.linear_pred." + parts[2]] = value
        else:
            raise KeyError(key)
    return out


def save_nvlabs_finetuned(hub, path, num_classes):
    """mmseg-0.x style: {'meta', 'state_dict'} with the unused conv_seg and BN counters."""
    state = to_nvlabs(hub)
    width = state["decode_head.linear_pred.weight"].shape[1]
    state["decode_head.conv_seg.weight"] = torch.randn(num_classes, width, 1, 1)
    state["decode_head.conv_seg.bias"] = torch.randn(num_classes)
    assert "decode_head.linear_fuse.bn.num_batches_tracked" in state
    torch.save({"meta": {"iter": 160000, "CLASSES": ["c%d" % i for i in range(num_classes)]},
                "state_dict": state}, path)
    return path


def save_nvlabs_imagenet(hub, path):
    """NVlabs ``mit_bX.pth``: flat backbone names plus a 1000-class ``head``."""
    state = {k[len("backbone."):]: v for k, v in to_nvlabs(hub).items()
             if k.startswith("backbone.")}
    width = state["norm4.weight"].shape[0]
    state["head.weight"] = torch.randn(1000, width)
    state["head.bias"] = torch.randn(1000)
    torch.save(state, path)
    return path


def ms_name(nvlabs_name):
    """NVlabs fine-tuned name -> our parameter name (BatchNorm: MindSpore's names)."""
    for torch_name, ms in (("bn.weight", "bn.gamma"), ("bn.bias", "bn.beta"),
                           ("bn.running_mean", "bn.moving_mean"),
                           ("bn.running_var", "bn.moving_variance")):
        if nvlabs_name.endswith(torch_name):
            return nvlabs_name[: -len(torch_name)] + ms
    return nvlabs_name


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
