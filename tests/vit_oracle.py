"""Independent ViT / Segmenter references for the tests (PyTorch).

- HF transformers ``ViTForImageClassification`` / ``ViTModel`` with random weights (every
  tensor perturbed, so a swapped bias or LayerNorm would show), and its state dict
  written under timm's names (``attn.qkv`` = concat(q, k, v) along the output axis).
- ``resize_pos_embed``: the position-embedding resize rule of the official Segmenter
  (``segm/model/utils.py``): class token kept, grid ``F.interpolate(mode='bilinear')``
  (align_corners=False). HF's ``interpolate_pos_encoding`` is bicubic, so the tests feed HF
  an embedding already resized by this function instead.
- ``MaskTransformerRef`` / ``segmenter_reference``: the Mask Transformer decoder and the
  Segmenter forward written from the paper (Strudel et al. 2021, sec. 3.2) and the
  official description (anchors.md section 2), with the official parameter names.

The name mappings are written from the upstream key lists, independently of
``src/convert``.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

# timm widths: name -> (hidden, layers, heads); mlp 4x
HF_WIDTHS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
             "large": (1024, 24, 16)}


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def hf_vit(width="tiny", patch=16, image_size=32, num_labels=10, eps=1e-6, seed=0):
    """HF ViT classifier in eval mode, all tensors random."""
    hidden, layers, heads = HF_WIDTHS[width]
    config = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=4 * hidden, hidden_act="gelu", layer_norm_eps=eps,
                       image_size=image_size, patch_size=patch, num_labels=num_labels,
                       qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = ViTForImageClassification(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("bias"):
                tensor.copy_(0.1 * noise)
            elif "layernorm" in name:            # LayerNorm scale
                tensor.copy_(1.0 + 0.2 * noise)
            elif name.endswith(("cls_token", "position_embeddings")):
                tensor.copy_(0.5 * noise)
            else:                                # Linear / conv: a stable scale
                fan_in = int(np.prod(tensor.shape[1:]))
                tensor.copy_(noise / np.sqrt(fan_in))
    return model


def hf_to_timm(hf_state):
    """HF ``ViTForImageClassification`` state dict -> timm ViT names (numpy)."""
    sd = {k: v.detach().cpu().numpy() for k, v in hf_state.items()}
    out = {
        "cls_token": sd["vit.embeddings.cls_token"],
        "pos_embed": sd["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["vit.layernorm.weight"],
        "norm.bias": sd["vit.layernorm.bias"],
    }
    if "classifier.weight" in sd:
        out["head.weight"] = sd["classifier.weight"]
        out["head.bias"] = sd["classifier.bias"]
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("vit.layers.")}
    for i in sorted(layers):
        src, dst = f"vit.layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"attn.qkv.{part}"] = np.concatenate(
                [sd[src + f"attention.{p}_proj.{part}"] for p in ("q", "k", "v")], axis=0)
            out[dst + f"attn.proj.{part}"] = sd[src + f"attention.o_proj.{part}"]
            out[dst + f"norm1.{part}"] = sd[src + f"layernorm_before.{part}"]
            out[dst + f"norm2.{part}"] = sd[src + f"layernorm_after.{part}"]
            out[dst + f"mlp.fc1.{part}"] = sd[src + f"mlp.fc1.{part}"]
            out[dst + f"mlp.fc2.{part}"] = sd[src + f"mlp.fc2.{part}"]
    return out


def resize_pos_embed(pos_embed, old_grid, new_grid):
    """Official Segmenter rule: ``[1, 1 + h*w, D]`` -> ``[1, 1 + H*W, D]``."""
    cls_tok, grid = pos_embed[:, :1], pos_embed[0, 1:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([cls_tok, grid], dim=1)


def hf_at_size(model, old_grid, height, width):
    """A copy of the HF ``model`` for inputs of ``height x width`` whose position
    embedding is the native one resized by ``resize_pos_embed`` (no HF interpolation)."""
    config = ViTConfig.from_dict(model.config.to_dict())
    config.image_size = (height, width)
    config._attn_implementation = "eager"
    resized = ViTForImageClassification(config).eval()
    patch = config.patch_size
    state = dict(model.state_dict())
    key = "vit.embeddings.position_embeddings"
    with torch.no_grad():
        state[key] = resize_pos_embed(state[key], old_grid, (height // patch, width // patch))
    resized.load_state_dict(state)
    return resized


# ------------------------------------------------------------------- Mask Transformer --

class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block; official Segmenter LayerNorms use eps 1e-5."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.mlp = _Attention(dim, heads), _Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MaskTransformerRef(nn.Module):
    """Segmenter's Mask Transformer (eval mode: no dropout / drop path)."""

    def __init__(self, n_cls, d_encoder, n_layers=2, seed=0):
        super().__init__()
        d = d_encoder
        self.n_cls = n_cls
        self.proj_dec = nn.Linear(d_encoder, d)
        self.cls_emb = nn.Parameter(torch.zeros(1, n_cls, d))
        self.blocks = nn.ModuleList([_Block(d, d // 64) for _ in range(n_layers)])
        self.decoder_norm = nn.LayerNorm(d)
        self.proj_patch = nn.Parameter(torch.zeros(d, d))
        self.proj_classes = nn.Parameter(torch.zeros(d, d))
        self.mask_norm = nn.LayerNorm(n_cls)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                noise = torch.randn(p.shape, generator=gen)
                if name.endswith("bias"):
                    p.copy_(0.1 * noise)
                elif "norm" in name:
                    p.copy_(1.0 + 0.2 * noise)
                elif name == "cls_emb":
                    p.copy_(noise)
                else:
                    p.copy_(noise / np.sqrt(p.shape[-1]))

    def forward(self, patches, grid):
        """patches ``[B, N, d_enc]`` (class token removed) -> masks ``[B, n_cls, gh, gw]``."""
        x = self.proj_dec(patches)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        feats, cls = x[:, :-self.n_cls] @ self.proj_patch, x[:, -self.n_cls:] @ self.proj_classes
        feats = feats / feats.norm(dim=-1, keepdim=True)
        cls = cls / cls.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(feats @ cls.transpose(1, 2))          # [B, N, n_cls]
        return masks.transpose(1, 2).reshape(x.shape[0], self.n_cls, grid[0], grid[1])


class LinearDecoderRef(nn.Module):
    def __init__(self, n_cls, d_encoder, seed=0):
        super().__init__()
        self.n_cls = n_cls
        self.head = nn.Linear(d_encoder, n_cls)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) / np.sqrt(d_encoder))
            self.head.bias.copy_(0.1 * torch.randn(n_cls, generator=gen))

    def forward(self, patches, grid):
        x = self.head(patches)
        return x.transpose(1, 2).reshape(x.shape[0], self.n_cls, grid[0], grid[1])


def segmenter_reference(hf_model, decoder, image, patch, old_grid):
    """Segmenter forward: zero-pad to a multiple of ``patch``, HF ViT encoder (position
    embedding resized by the Segmenter rule), drop the class token, decode, bilinear
    upsample to the padded size, crop the padding."""
    _, _, h, w = image.shape
    pad_h, pad_w = (-h) % patch, (-w) % patch
    padded = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
    hp, wp = h + pad_h, w + pad_w
    encoder = hf_at_size(hf_model, old_grid, hp, wp).vit
    with torch.no_grad():
        tokens = encoder(padded).last_hidden_state[:, 1:]
        masks = decoder(tokens, (hp // patch, wp // patch))
        masks = F.interpolate(masks, size=(hp, wp), mode="bilinear", align_corners=False)
    return masks[:, :, :h, :w]


def official_segmenter_state(hf_model, decoder):
    """An official-Segmenter-format state dict: ``encoder.*`` (timm names, with the unused
    ImageNet ``encoder.head``) and ``decoder.*``."""
    state = {"encoder." + k: v for k, v in hf_to_timm(hf_model.state_dict()).items()}
    state.update({"decoder." + k: v.detach().numpy() for k, v in decoder.state_dict().items()})
    return state
