"""Mix Transformer (MiT) encoders of SegFormer, mit_b0 .. mit_b5.

The same function as NVlabs ``mix_transformer.py``: overlapping patch embeddings,
efficient self-attention with spatial reduction, Mix-FFN (3x3 depthwise conv + exact
GELU), no position encoding (any input size works; sizes not divisible by 32 follow the
same conv arithmetic as upstream). Cell attribute names mirror the upstream checkpoint
names (``patch_embed1.proj``, ``block1.0.attn.kv``, ``norm1`` ...) so the NVlabs
conversion table is the identity.

Written once against the neutral layers of a kernel backend (``backend``: a module of
``src/models/backends``), which decides how each layer is computed.

``MixVisionTransformer.construct`` returns the four stage outputs as NCHW maps at
strides 4, 8, 16, 32.
"""
import math

import numpy as np
from mindspore import nn
from mindspore.common.initializer import Normal, TruncatedNormal, Zero

from src.models import stochastic
from src.utils.config import ConfigError

# Per-variant hyperparameters (shared/notes/anchors.md section 1).
MIT_SETTINGS = {
    "mit_b0": dict(embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2)),
    "mit_b1": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2)),
    "mit_b2": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 4, 6, 3)),
    "mit_b3": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 4, 18, 3)),
    "mit_b4": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 8, 27, 3)),
    "mit_b5": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 6, 40, 3)),
}
# Common to all variants.
PATCH_SIZES = (7, 3, 3, 3)
STRIDES = (4, 2, 2, 2)
SR_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4
PATCH_NORM_EPS = 1e-5   # patch-embed and spatial-reduction LayerNorms (nn.LayerNorm default)
BLOCK_NORM_EPS = 1e-6   # block norm1/norm2 and stage norm1..norm4


def dense(in_features, out_features):
    """Linear layer with upstream init: trunc_normal(std=0.02) weight, zero bias."""
    return nn.Dense(in_features, out_features, weight_init=TruncatedNormal(sigma=0.02),
                    bias_init=Zero())


def conv_init(kernel_size, out_channels, group=1):
    """Upstream conv init: normal(0, sqrt(2 / fan_out)) weight, fan_out = k*k*out/groups;
    zero bias."""
    fan_out = kernel_size * kernel_size * out_channels // group
    return dict(weight_init=Normal(sigma=math.sqrt(2.0 / fan_out)), bias_init=Zero())


class OverlapPatchEmbed(nn.Cell):
    """Strided conv with kernel > stride (overlapping patches) -> tokens, then LayerNorm."""

    def __init__(self, backend, patch_size, stride, in_chans, embed_dim):
        super().__init__()
        self.proj = backend.PatchEmbedConv(in_chans, embed_dim, patch_size, stride,
                                           padding=patch_size // 2,
                                           **conv_init(patch_size, embed_dim))
        self.norm = backend.LayerNorm(embed_dim, eps=PATCH_NORM_EPS)

    def construct(self, x):
        x, height, width = self.proj(x)
        return self.norm(x), height, width


class EfficientAttention(nn.Cell):
    """Multi-head attention whose keys/values come from a spatially reduced sequence
    (conv with kernel = stride = sr_ratio, then LayerNorm); ``kv`` is one fused Linear
    (first half keys, second half values), as upstream."""

    def __init__(self, backend, dim, num_heads, sr_ratio, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.q = dense(dim, dim)
        self.kv = dense(dim, dim * 2)
        self.attention = backend.Attention(num_heads, dim // num_heads, attn_drop=attn_drop)
        self.proj = dense(dim, dim)
        self.proj_drop = stochastic.Dropout(p=proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = backend.SpatialReductionConv(dim, sr_ratio, **conv_init(sr_ratio, dim))
            self.norm = backend.LayerNorm(dim, eps=PATCH_NORM_EPS)

    def construct(self, x, height, width):
        q = self.q(x)
        if self.sr_ratio > 1:
            x = self.norm(self.sr(x, height, width))
        x = self.attention(q, self.kv(x))
        return self.proj_drop(self.proj(x))


class DWConv(nn.Cell):
    """3x3 depthwise conv on the token sequence seen as a map (Mix-FFN's position cue)."""

    def __init__(self, backend, dim):
        super().__init__()
        self.dwconv = backend.DepthwiseConv3x3(dim, **conv_init(3, dim, group=dim))

    def construct(self, x, height, width):
        return self.dwconv(x, height, width)


class MixFFN(nn.Cell):
    """fc1 -> depthwise 3x3 conv -> exact (erf) GELU -> fc2."""

    def __init__(self, backend, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = dense(dim, hidden_dim)
        self.dwconv = DWConv(backend, hidden_dim)
        self.act = backend.GELU()
        self.fc2 = dense(hidden_dim, dim)
        # one random layer per use: each draws its own mask (see stochastic.StochasticCell)
        self.drop1 = stochastic.Dropout(p=drop)
        self.drop2 = stochastic.Dropout(p=drop)

    def construct(self, x, height, width):
        x = self.act(self.dwconv(self.fc1(x), height, width))
        return self.drop2(self.fc2(self.drop1(x)))


class Block(nn.Cell):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)); stochastic depth."""

    def __init__(self, backend, dim, num_heads, sr_ratio, mlp_ratio=MLP_RATIO, drop=0.0,
                 attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = backend.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientAttention(backend, dim, num_heads, sr_ratio, attn_drop=attn_drop,
                                       proj_drop=drop)
        # one per branch: the two branches draw their own per-sample masks (timm's
        # drop_path1 / drop_path2)
        self.drop_path1 = backend.DropPath(drop_path)
        self.drop_path2 = backend.DropPath(drop_path)
        self.norm2 = backend.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(backend, dim, int(dim * mlp_ratio), drop=drop)

    def construct(self, x, height, width):
        x = x + self.drop_path1(self.attn(self.norm1(x), height, width))
        return x + self.drop_path2(self.mlp(self.norm2(x), height, width))


class MixVisionTransformer(nn.Cell):
    """Four stages of (overlapping patch embed -> blocks -> LayerNorm)."""

    def __init__(self, backend, embed_dims, num_heads, depths, in_chans=3, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1):
        super().__init__()
        self.embed_dims = tuple(embed_dims)
        # stochastic depth rate grows linearly from 0 to drop_path_rate over all blocks
        rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        channels = (in_chans,) + self.embed_dims[:-1]
        start = 0
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}",
                    OverlapPatchEmbed(backend, PATCH_SIZES[i], STRIDES[i], channels[i],
                                      embed_dims[i]))
            setattr(self, f"block{i + 1}", nn.CellList([
                Block(backend, embed_dims[i], num_heads[i], SR_RATIOS[i], drop=drop_rate,
                      attn_drop=attn_drop_rate, drop_path=rates[start + j])
                for j in range(depths[i])]))
            setattr(self, f"norm{i + 1}", backend.LayerNorm(embed_dims[i], eps=BLOCK_NORM_EPS))
            start += depths[i]
        self.to_map = backend.TokensToMap()

    def _stage(self, x, patch_embed, blocks, norm):
        x, height, width = patch_embed(x)
        for block in blocks:
            x = block(x, height, width)
        return self.to_map(norm(x), height, width)

    def construct(self, x):
        c1 = self._stage(x, self.patch_embed1, self.block1, self.norm1)
        c2 = self._stage(c1, self.patch_embed2, self.block2, self.norm2)
        c3 = self._stage(c2, self.patch_embed3, self.block3, self.norm3)
        c4 = self._stage(c3, self.patch_embed4, self.block4, self.norm4)
        return c1, c2, c3, c4


def mit(name, backend, drop_path_rate=0.1, drop_rate=0.0, in_chans=3):
    """Build ``mit_b0`` .. ``mit_b5`` by name, on the kernel backend ``backend``."""
    if name not in MIT_SETTINGS:
        raise ConfigError(f"config key 'backbone': unknown MiT variant '{name}', expected one of "
                          f"{sorted(MIT_SETTINGS)}")
    return MixVisionTransformer(backend, in_chans=in_chans, drop_rate=drop_rate,
                                drop_path_rate=drop_path_rate, **MIT_SETTINGS[name])
