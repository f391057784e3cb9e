"""Vision Transformer (ViT) with timm's structure and parameter names.

Names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
``norm``, ``head``), so a timm state dict converts by identity and parameter counts equal
timm's. The encoder (``forward_features``: all tokens after the final norm, no head) is
reused by Segmenter.

Position embeddings are stored for the pretraining grid (``image_size // patch_size``);
an input whose patch grid differs gets them resized on the fly with the rule of the
official Segmenter (``resize_pos_embed``): class token kept, grid resampled bilinearly
with ``align_corners=False``, no antialiasing. (timm's own ``resample_abs_pos_embed``
defaults to bicubic with antialias; HF transformers' ``interpolate_pos_encoding`` uses
bicubic. Both differ numerically from this rule.)

Written once against the neutral layers of a kernel backend (``backend``: a module of
``src/models/backends``), which decides how each layer is computed.
"""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeUniform, TruncatedNormal, Zero, initializer

from src.models import stochastic
from src.utils.config import ConfigError
from src.utils.device import ReleasesCompileMemory

# name -> (embed_dim, depth, num_heads); mlp_ratio 4, qkv bias, as in timm and Segmenter.
VIT_WIDTHS = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

# vit_{tiny,small,base,large}_patch{16,32}_{224,384} -> architecture and pretraining size.
VIT_SETTINGS = {
    f"vit_{width}_patch{patch}_{size}": dict(embed_dim=dim, depth=depth, num_heads=heads,
                                             patch_size=patch, image_size=size)
    for width, (dim, depth, heads) in VIT_WIDTHS.items()
    for patch in (16, 32)
    for size in (224, 384)
}

TIMM_LAYER_NORM_EPS = 1e-6   # timm ViT (partial(nn.LayerNorm, eps=1e-6))


def dense(in_dim, out_dim):
    """Linear layer with timm's ViT init: trunc_normal(std=0.02) weight, zero bias."""
    return nn.Dense(in_dim, out_dim, weight_init=TruncatedNormal(0.02), bias_init=Zero())


def to_2tuple(value, key):
    """``384`` or ``[384, 512]`` -> ``(384, 384)`` / ``(384, 512)``; anything else is an error."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"config key '{key}': expected an int or [height, width], got {value!r}")


def resize_pos_embed(pos_embed, old_grid, new_grid, num_prefix_tokens=1):
    """Resize ``[1, prefix + old_h*old_w, D]`` to ``new_grid`` (Segmenter's rule).

    Prefix (class) tokens are kept; the grid is resampled bilinearly, align_corners=False,
    in float32.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    prefix = pos_embed[:, :num_prefix_tokens]
    grid = pos_embed[:, num_prefix_tokens:].astype(ms.float32)
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).transpose(0, 3, 1, 2)
    grid = ops.interpolate(grid, size=tuple(new_grid), mode="bilinear", align_corners=False)
    grid = grid.transpose(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return ops.concat((prefix, grid.astype(pos_embed.dtype)), axis=1)


class PatchEmbed(nn.Cell):
    """Non-overlapping ``patch_size`` convolution: ``[B, 3, H, W]`` -> ``[B, H/p * W/p, D]``."""

    def __init__(self, backend, patch_size, embed_dim, in_channels=3):
        super().__init__()
        self.patch_size = patch_size
        # torch's default Conv2d init (kaiming_uniform a=sqrt(5)); timm keeps it for ViT.
        self.proj = backend.PatchEmbedConv(in_channels, embed_dim, patch_size, patch_size,
                                           weight_init=HeUniform(negative_slope=math.sqrt(5)),
                                           bias_init=Zero())

    def construct(self, x):
        return self.proj(x)[0]


class Attention(nn.Cell):
    """Multi-head self-attention with a fused ``qkv`` projection (q, k, v stacked in order)."""

    def __init__(self, backend, dim, num_heads, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.qkv = dense(dim, dim * 3)
        self.attention = backend.SelfAttention(num_heads, dim // num_heads, attn_drop=attn_drop)
        self.proj = dense(dim, dim)
        self.proj_drop = stochastic.Dropout(p=proj_drop)

    def construct(self, x):
        return self.proj_drop(self.proj(self.attention(self.qkv(x))))


class Mlp(nn.Cell):
    """fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout (``fc1`` holds its activation)."""

    def __init__(self, backend, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = backend.LinearGELU(dim, hidden_dim, weight_init=TruncatedNormal(0.02),
                                      bias_init=Zero())
        self.fc2 = dense(hidden_dim, dim)
        # one random layer per use: each draws its own mask (see stochastic.StochasticCell)
        self.drop1 = stochastic.Dropout(p=drop)
        self.drop2 = stochastic.Dropout(p=drop)

    def construct(self, x):
        return self.drop2(self.fc2(self.drop1(self.fc1(x))))


class Block(nn.Cell):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, backend, dim, num_heads, mlp_ratio=4.0, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, eps=TIMM_LAYER_NORM_EPS):
        super().__init__()
        self.norm1 = backend.LayerNorm(dim, eps=eps)
        self.attn = Attention(backend, dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        # one per branch: the two branches draw their own per-sample masks (timm's
        # drop_path1 / drop_path2)
        self.drop_path1 = backend.DropPath(drop_path)
        self.drop_path2 = backend.DropPath(drop_path)
        self.norm2 = backend.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(backend, dim, int(dim * mlp_ratio), drop=drop)

    def construct(self, x):
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class VisionTransformer(ReleasesCompileMemory):
    """ViT with a class token. ``class_num=0``: an encoder without ``head``.

    ``construct``: ``[B, 3, H, W]`` -> logits ``[B, class_num]`` (class token after ``norm``);
    ``forward_features``: ``[B, 1 + H/p * W/p, D]`` (class token first). H and W must be
    multiples of the patch size.
    """

    def __init__(self, backend, patch_size, embed_dim, depth, num_heads, image_size,
                 class_num=1000, mlp_ratio=4.0, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 eps=TIMM_LAYER_NORM_EPS):
        super().__init__()
        image_size = to_2tuple(image_size, "image_size")
        if image_size[0] % patch_size or image_size[1] % patch_size:
            raise ConfigError(f"config key 'image_size': {list(image_size)} is not a multiple of "
                              f"the patch size {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.class_num = class_num
        # the class-count-dependent parameters (a checkpoint converted with drop_head=True
        # lacks them); read by src/utils/checkpoint.py and src/convert
        self.classifier_prefixes = ("head.",) if class_num else ()
        self.grid_size = (image_size[0] // patch_size, image_size[1] // patch_size)
        num_patches = self.grid_size[0] * self.grid_size[1]

        self.patch_embed = PatchEmbed(backend, patch_size, embed_dim)
        self.cls_token = ms.Parameter(initializer(TruncatedNormal(0.02), (1, 1, embed_dim),
                                                  ms.float32), name="cls_token")
        self.pos_embed = ms.Parameter(initializer(TruncatedNormal(0.02),
                                                  (1, num_patches + 1, embed_dim), ms.float32),
                                      name="pos_embed")
        self.pos_drop = stochastic.Dropout(p=drop_rate)
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.CellList([
            Block(backend, embed_dim, num_heads, mlp_ratio, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=rates[i], eps=eps)
            for i in range(depth)])
        self.norm = backend.LayerNorm(embed_dim, eps=eps)
        self.head = dense(embed_dim, class_num) if class_num > 0 else None

    def forward_features(self, x):
        h, w = x.shape[2], x.shape[3]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"ViT input {h}x{w} is not a multiple of the patch size "
                             f"{self.patch_size} (pad it first)")
        x = self.patch_embed(x)
        cls_token = ops.broadcast_to(self.cls_token, (x.shape[0], 1, self.embed_dim))
        x = ops.concat((cls_token.astype(x.dtype), x), axis=1)
        pos_embed = resize_pos_embed(self.pos_embed, self.grid_size,
                                     (h // self.patch_size, w // self.patch_size))
        x = self.pos_drop(x + pos_embed.astype(x.dtype))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def construct(self, x):
        x = self.forward_features(x)
        if self.head is None:
            return x
        return self.head(x[:, 0])


def vit_settings(backbone):
    if backbone not in VIT_SETTINGS:
        raise ConfigError(f"config key 'backbone': unknown ViT variant '{backbone}', expected one "
                          f"of {sorted(VIT_SETTINGS)}")
    return dict(VIT_SETTINGS[backbone])


def create_vit(backbone, class_num, backend, image_size=None, drop_rate=0.0,
               drop_path_rate=0.0, eps=TIMM_LAYER_NORM_EPS, attn_drop_rate=0.0):
    """A ViT of a named variant; ``image_size`` (int or [H, W]) overrides the pretraining
    size that fixes the ``pos_embed`` grid; ``class_num=0`` builds the encoder only."""
    settings = vit_settings(backbone)
    if image_size is not None:
        settings["image_size"] = image_size
    if not isinstance(class_num, int) or isinstance(class_num, bool) or class_num < 0:
        raise ConfigError(f"config key 'class_num': expected a non-negative int, got {class_num!r}")
    return VisionTransformer(backend, class_num=class_num, drop_rate=drop_rate,
                             attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                             eps=eps, **settings)


def build_vit(cfg, backend):
    """The ViT classifier of ``cfg.backbone`` with ``cfg.class_num`` outputs."""
    if cfg.class_num < 1:
        raise ConfigError(f"config key 'class_num': a classifier needs >= 1 class, got {cfg.class_num}")
    return create_vit(cfg.backbone, cfg.class_num, backend, image_size=cfg.image_size,
                      drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
