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
"""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeUniform, TruncatedNormal, Zero, initializer

from src.models.cpu_kernels import (gelu_erf_bias_op, kernels_enabled, self_attention_op,
                                   swap_middle_axes_op)
from src.models.layers import GELU, DropPath, Im2ColConv2d, LayerNorm
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
    raise ValueError(f"config key '{key}': expected an int or [height, width], got {value!r}")


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

    def __init__(self, patch_size, embed_dim, in_channels=3):
        super().__init__()
        self.patch_size = patch_size
        # torch's default Conv2d init (kaiming_uniform a=sqrt(5)); timm keeps it for ViT.
        # Im2ColConv2d: MindSpore's CPU conv kernel is ~10x slower at this shape.
        self.proj = Im2ColConv2d(in_channels, embed_dim, kernel_size=patch_size,
                                 stride=patch_size, pad_mode="valid", has_bias=True,
                                 weight_init=HeUniform(negative_slope=math.sqrt(5)),
                                 bias_init=Zero())
        # CPU: NCHW -> tokens without a Transpose kernel (its 8 B/element index table)
        self.use_cpu_kernel = kernels_enabled()
        if self.use_cpu_kernel:
            self.swap_axes = swap_middle_axes_op()

    def construct(self, x):
        x = self.proj(x)
        b, c, h, w = x.shape
        if self.use_cpu_kernel and x.dtype == ms.float32:
            return self.swap_axes(x.reshape(b, c, h * w, 1)).reshape(b, h * w, c)
        return x.reshape(b, c, h * w).transpose(0, 2, 1)


class Attention(nn.Cell):
    """Multi-head self-attention with a fused ``qkv`` projection (q, k, v stacked in order).

    On CPU (float32, no attention dropout in training) one custom kernel (``cpu_kernels``)
    reads q, k and v per head straight from the ``[B, N, 3, heads, head_dim]`` projection and
    writes ``[B, N, heads, head_dim]``: no head transposes (MindSpore 2.10's CPU Transpose
    keeps an 8 B/element index table per kernel for the graph's lifetime: ~0.5 GiB for
    ViT-B at batch 8) and no [N, N] scores in the graph.
    """

    def __init__(self, dim, num_heads, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = dense(dim, dim * 3)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop)
        # q @ k^T with k in its [B, heads, N, head_dim] layout: no separate transpose of k
        self.matmul_qk = ops.BatchMatMul(transpose_b=True)
        # primitives, not ops.matmul: its gradient adds Transposes (and their CPU index tables)
        self.matmul_av = ops.BatchMatMul()
        self.use_cpu_kernel = kernels_enabled()
        if self.use_cpu_kernel:
            self.fused_attention = self_attention_op()

    def split_heads(self, t, b, n):
        """``[B, N, heads * head_dim]`` -> ``[B, heads, N, head_dim]``."""
        return t.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, x):
        b, n, c = x.shape
        # Slice the [B, N, 3C] projection on its last axis, then move heads forward per
        # tensor. The usual reshape to [B, N, 3, heads, hd], transpose to [3, B, heads, N, hd]
        # and qkv[0], qkv[1], qkv[2] is far slower on CPU: MindSpore 2.10's StridedSlice on
        # that 5-D tensor made everything between the two projections ~3x slower (ViT-B,
        # batch 8); results are bitwise equal. (Slices rather than ops.split: as fast, and
        # StridedSlice is what src/engine/mindir_to_onnx.py converts.)
        qkv = self.qkv(x)
        if self.use_cpu_kernel and qkv.dtype == ms.float32 and not (self.training and self.attn_drop.p > 0):
            x = self.fused_attention(qkv.reshape(b, n, 3, self.num_heads, self.head_dim))[0]
            return self.proj_drop(self.proj(x.reshape(b, n, c)))
        q = self.split_heads(qkv[:, :, :c], b, n)
        k = self.split_heads(qkv[:, :, c:2 * c], b, n)
        v = self.split_heads(qkv[:, :, 2 * c:], b, n)
        # scale q (N x hd values) rather than attn (N x N)
        attn = self.matmul_qk(q * self.scale, k)
        # softmax in float32 whatever the compute dtype (mixed precision safety)
        attn = ops.softmax(attn.astype(ms.float32), axis=-1).astype(v.dtype)
        attn = self.attn_drop(attn)
        x = self.matmul_av(attn, v).transpose(0, 2, 1, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Cell):
    """fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout.

    On CPU (float32) fc1's bias is added inside the GELU kernel (``cpu_kernels``): one pass
    over the [tokens, 4 * dim] activations instead of BiasAdd then GELU."""

    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = dense(dim, hidden_dim)
        self.act = GELU()
        self.fc2 = dense(hidden_dim, dim)
        self.drop = nn.Dropout(p=drop)
        self.use_cpu_kernel = kernels_enabled()
        if self.use_cpu_kernel:
            self.fc1_matmul = ops.MatMul(transpose_b=True)
            self.gelu_bias = gelu_erf_bias_op()

    def construct(self, x):
        if self.use_cpu_kernel and x.dtype == ms.float32:
            shape = x.shape
            h = self.fc1_matmul(x.reshape(-1, shape[-1]), self.fc1.weight)
            x = self.gelu_bias(h, self.fc1.bias).reshape(shape[:-1] + (-1,))
        else:
            x = self.act(self.fc1(x))
        return self.drop(self.fc2(self.drop(x)))


class Block(nn.Cell):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop=0.0, attn_drop=0.0, drop_path=0.0,
                 eps=TIMM_LAYER_NORM_EPS):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def construct(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(ReleasesCompileMemory):
    """ViT with a class token. ``class_num=0``: an encoder without ``head``.

    ``construct``: ``[B, 3, H, W]`` -> logits ``[B, class_num]`` (class token after ``norm``);
    ``forward_features``: ``[B, 1 + H/p * W/p, D]`` (class token first). H and W must be
    multiples of the patch size.
    """

    def __init__(self, patch_size, embed_dim, depth, num_heads, image_size, class_num=1000,
                 mlp_ratio=4.0, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 eps=TIMM_LAYER_NORM_EPS):
        super().__init__()
        image_size = to_2tuple(image_size, "image_size")
        if image_size[0] % patch_size or image_size[1] % patch_size:
            raise ValueError(f"config key 'image_size': {list(image_size)} is not a multiple of "
                             f"the patch size {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.class_num = class_num
        self.grid_size = (image_size[0] // patch_size, image_size[1] // patch_size)
        num_patches = self.grid_size[0] * self.grid_size[1]

        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = ms.Parameter(initializer(TruncatedNormal(0.02), (1, 1, embed_dim),
                                                  ms.float32), name="cls_token")
        self.pos_embed = ms.Parameter(initializer(TruncatedNormal(0.02),
                                                  (1, num_patches + 1, embed_dim), ms.float32),
                                      name="pos_embed")
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.CellList([
            Block(embed_dim, num_heads, mlp_ratio, drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=rates[i], eps=eps)
            for i in range(depth)])
        self.norm = LayerNorm(embed_dim, eps=eps)
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
        raise ValueError(f"config key 'backbone': unknown ViT variant '{backbone}', expected one "
                         f"of {sorted(VIT_SETTINGS)}")
    return dict(VIT_SETTINGS[backbone])


def create_vit(backbone, class_num, image_size=None, drop_rate=0.0, drop_path_rate=0.0,
               eps=TIMM_LAYER_NORM_EPS, attn_drop_rate=0.0):
    """A ViT of a named variant; ``image_size`` (int or [H, W]) overrides the pretraining
    size that fixes the ``pos_embed`` grid; ``class_num=0`` builds the encoder only."""
    settings = vit_settings(backbone)
    if image_size is not None:
        settings["image_size"] = image_size
    if not isinstance(class_num, int) or isinstance(class_num, bool) or class_num < 0:
        raise ValueError(f"config key 'class_num': expected a non-negative int, got {class_num!r}")
    return VisionTransformer(class_num=class_num, drop_rate=drop_rate,
                             attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                             eps=eps, **settings)


def build_vit(cfg):
    """The ViT classifier of ``cfg.backbone`` with ``cfg.class_num`` outputs."""
    if cfg.class_num < 1:
        raise ValueError(f"config key 'class_num': a classifier needs >= 1 class, got {cfg.class_num}")
    return create_vit(cfg.backbone, cfg.class_num, image_size=cfg.image_size,
                      drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
