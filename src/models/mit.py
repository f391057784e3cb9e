"""Mix Transformer (MiT) encoders of SegFormer, mit_b0 .. mit_b5.

The same function as NVlabs ``mix_transformer.py``: overlapping patch embeddings,
efficient self-attention with spatial reduction, Mix-FFN (3x3 depthwise conv + exact
GELU), no position encoding (any input size works; sizes not divisible by 32 follow the
same conv arithmetic as upstream). Cell attribute names mirror the upstream checkpoint
names (``patch_embed1.proj``, ``block1.0.attn.kv``, ``norm1`` ...) so the NVlabs
conversion table is the identity.

``MixVisionTransformer.construct`` returns the four stage outputs as NCHW maps at
strides 4, 8, 16, 32.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal, TruncatedNormal, Zero

from src.models.cpu_kernels import (attention_op, depthwise_conv3x3_nhwc_op, kernels_enabled,
                                   swap_middle_axes_op)
from src.models.layers import GELU, DropPath, Im2ColConv2d, LayerNorm

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
# queries per block of the attention at inference (bounds the score matrix's memory)
ATTENTION_QUERY_CHUNK = 16384
PATCH_NORM_EPS = 1e-5   # patch-embed and spatial-reduction LayerNorms (nn.LayerNorm default)
BLOCK_NORM_EPS = 1e-6   # block norm1/norm2 and stage norm1..norm4


def dense(in_features, out_features):
    """Linear layer with upstream init: trunc_normal(std=0.02) weight, zero bias."""
    return nn.Dense(in_features, out_features, weight_init=TruncatedNormal(sigma=0.02),
                    bias_init=Zero())


def conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, group=1):
    """Conv with upstream init: normal(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups.
    Computed as im2col + matmul (``Im2ColConv2d``: MindSpore's CPU conv kernel is slow)."""
    fan_out = kernel_size * kernel_size * out_channels // group
    return Im2ColConv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad",
                        padding=padding, group=group, has_bias=True,
                        weight_init=Normal(sigma=math.sqrt(2.0 / fan_out)), bias_init=Zero())


def tokens_to_map(x, height, width):
    """[B, H*W, C] -> [B, C, H, W]."""
    return x.transpose(0, 2, 1).reshape(x.shape[0], x.shape[2], height, width)


def map_to_tokens(x):
    """[B, C, H, W] -> [B, H*W, C]."""
    return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)


class OverlapPatchEmbed(nn.Cell):
    """Strided conv with kernel > stride (overlapping patches), then LayerNorm."""

    def __init__(self, patch_size, stride, in_chans, embed_dim):
        super().__init__()
        self.proj = conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = LayerNorm(embed_dim, eps=PATCH_NORM_EPS)
        self.tokens_matmul = ops.BatchMatMul(transpose_a=True, transpose_b=True)

    def construct(self, x):
        if self.proj.im2col:
            # CPU: the im2col product written as cols^T @ W^T gives the tokens [B, L, O]
            # directly, no transpose of the NCHW conv output
            proj = self.proj
            batch, _, height, width = x.shape
            (kh, kw), (sh, sw) = proj.kernel_size, proj.stride
            height = (height + 2 * proj.pad - kh) // sh + 1
            width = (width + 2 * proj.pad - kw) // sw + 1
            cols = ops.unfold(x, (kh, kw), padding=proj.pad, stride=(sh, sw))  # [B, C*kh*kw, L]
            weight = proj.weight.astype(x.dtype).reshape(proj.out_channels, -1)
            weight = ops.broadcast_to(weight, (batch,) + weight.shape)
            x = self.tokens_matmul(cols, weight)  # [B, L, O]
            # BiasAdd on [B*L, O]: a broadcasting Add keeps a 16 B/element table on CPU
            x = ops.bias_add(x.reshape(-1, proj.out_channels), proj.bias.astype(x.dtype))
            x = x.reshape(batch, height * width, proj.out_channels)
            return self.norm(x), height, width
        x = self.proj(x)
        height, width = x.shape[2], x.shape[3]
        return self.norm(map_to_tokens(x)), height, width


class Softmax(nn.Cell):
    """Softmax over the last axis. Its gradient, y * (dy - sum(dy * y)), takes the row sums
    as a matmul with a ones vector: MindSpore 2.10's CPU ReduceSum over the last axis (what
    the built-in gradient uses) is ~8x slower than that matmul on the attention scores,
    which halves the softmax backward there."""

    def __init__(self):
        super().__init__()
        self.softmax = ops.Softmax(axis=-1)
        self.matmul = ops.MatMul()

    def construct(self, x):
        return self.softmax(x)

    def bprop(self, x, out, dout):
        prod = dout * out
        length = prod.shape[-1]
        row_sums = self.matmul(prod.reshape(-1, length), ops.ones((length, 1), prod.dtype))
        return (out * (dout - row_sums.reshape(prod.shape[:-1] + (1,))),)


class EfficientAttention(nn.Cell):
    """Multi-head attention whose keys/values come from a spatially reduced sequence
    (conv with kernel = stride = sr_ratio, then LayerNorm); ``kv`` is one fused Linear
    (first half keys, second half values), as upstream.

    Written for few copies: the products are (Batch)MatMuls with transpose flags (their
    gradients too need no explicit transposes, unlike ``ops.matmul``'s), the 1/sqrt(d)
    scale multiplies q ([N, d]) rather than the scores ([N, M], 16x larger at stage 1),
    and with one head (stage 1, the longest sequence) q and the output are not permuted
    at all. On CPU the spatial reduction is computed from the tokens directly
    (``_reduce_tokens``), and (float32, no attention dropout in training) the attention itself
    is one custom kernel (``cpu_kernels.attention_op``) that reads the heads in place from the
    q and kv projections and never stores the [N, M] scores (stage 1 of B0 at 1024x2048:
    2 x 1 GiB in the graph otherwise).
    """

    def __init__(self, dim, num_heads, sr_ratio, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = dense(dim, dim)
        self.kv = dense(dim, dim * 2)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = LayerNorm(dim, eps=PATCH_NORM_EPS)
            self.patch_matmul = ops.MatMul(transpose_b=True)
        self.kv_matmul = ops.MatMul(transpose_b=True)
        self.scores_matmul = ops.BatchMatMul(transpose_b=True)
        self.values_matmul = ops.BatchMatMul()
        # CPU: the softmax with the faster gradient; elsewhere the fused kernels
        self.softmax = Softmax() if ms.get_context("device_target") == "CPU" else ops.Softmax(axis=-1)
        self.use_cpu_kernel = kernels_enabled()
        if self.use_cpu_kernel:
            self.fused_attention = attention_op()
            self.swap_axes = swap_middle_axes_op()

    def construct(self, x, height, width):
        batch, tokens, dim = x.shape
        q = self.q(x)
        if self.sr_ratio > 1:
            # the token formulation needs static sizes (the crop test); a dynamic-shape
            # export gets the conv
            if self.sr.im2col and not ops.is_sequence_value_unknown(ops.shape(x)):
                x = self.norm(self._reduce_tokens(x, height, width))
            else:
                x = self.norm(map_to_tokens(self.sr(tokens_to_map(x, height, width))))
        if self.use_cpu_kernel and q.dtype == ms.float32 and not (self.training and self.attn_drop.p > 0):
            kv = self.kv(x).reshape(batch, -1, 2, self.num_heads, self.head_dim)
            x = self.fused_attention(q.reshape(batch, tokens, self.num_heads, self.head_dim), kv)[0]
            return self.proj_drop(self.proj(x.reshape(batch, tokens, dim)))
        q = q * self.scale
        # keys and values from the halves of the fused kv weight: two products instead of
        # one and two slices of its output (MindSpore's CPU StridedSlice of [B, M, 2C] costs
        # ~5x the products; slicing the [2C, C] weight is cheap)
        x = x.reshape(-1, dim)
        weight, bias = self.kv.weight.astype(x.dtype), self.kv.bias.astype(x.dtype)
        k = ops.bias_add(self.kv_matmul(x, weight[:dim]), bias[:dim])           # [B*M, C]
        v = ops.bias_add(self.kv_matmul(x, weight[dim:]), bias[dim:])
        if self.num_heads == 1:
            k, v = k.reshape(batch, -1, dim), v.reshape(batch, -1, dim)
        else:  # [B, heads, N or M, head_dim]
            q = q.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
            k = k.reshape(batch, -1, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
            v = v.reshape(batch, -1, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        if self.training or ops.is_sequence_value_unknown(ops.shape(q)):  # or dynamic export
            x = self._attend(q, k, v)
        elif q.shape[-2] <= ATTENTION_QUERY_CHUNK:
            x = self._attend(q, k, v)
        else:
            # inference on large inputs: the [queries, keys] score matrix one block of
            # queries at a time (stage 1 of B0 at 1024x2048: 2 x 1 GiB of scores at once)
            x = ops.concat([self._attend(q[..., start:start + ATTENTION_QUERY_CHUNK, :], k, v)
                            for start in range(0, q.shape[-2], ATTENTION_QUERY_CHUNK)], axis=-2)
        if self.num_heads > 1:
            x = x.transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))

    def _attend(self, q, k, v):
        attn = self.scores_matmul(q, k)
        if attn.dtype != ms.float32:  # mixed precision: softmax statistics in fp32, as upstream
            attn = self.softmax(attn.astype(ms.float32)).astype(v.dtype)
        else:
            attn = self.softmax(attn)
        return self.values_matmul(self.attn_drop(attn), v)

    def _reduce_tokens(self, x, height, width):
        """The spatial-reduction conv (kernel = stride = r, no padding) on tokens [B, H*W, C]:
        the r x r patches do not overlap, so they are gathered by one reshape/transpose and
        multiplied by the weight as [B*M, r*r*C] @ [r*r*C, C]: no NCHW transposes and no
        im2col copy. Rows/columns beyond the last whole patch are dropped, as the conv does."""
        batch, _, channels = x.shape
        r = self.sr_ratio
        out_h, out_w = height // r, width // r
        if height % r or width % r:
            x = x.reshape(batch, height, width, channels)[:, :out_h * r, :out_w * r, :]
        # [B*h', i, w', (j, c)] -> [B*h', w', i, (j, c)]: one row per patch, (i, j, c) order;
        # the weight [C, C, i, j] -> [C, (i, j), C] to match
        x = x.reshape(batch * out_h, r, out_w, r * channels)
        weight = self.sr.weight.astype(x.dtype)
        if self.use_cpu_kernel and x.dtype == ms.float32:
            x = self.swap_axes(x)
            weight = self.swap_axes(weight.reshape(channels, channels, r * r, 1))
        else:
            x = x.transpose(0, 2, 1, 3)
            weight = weight.transpose(0, 2, 3, 1)
        x = x.reshape(batch * out_h * out_w, r * r * channels)
        weight = weight.reshape(channels, -1)
        y = ops.bias_add(self.patch_matmul(x, weight), self.sr.bias.astype(x.dtype))
        return y.reshape(batch, out_h * out_w, channels)


class DWConv(nn.Cell):
    """3x3 depthwise conv on the token sequence seen as a map (Mix-FFN's position cue).

    On CPU (float32) one custom kernel convolves the channels-last tokens in place of
    transpose -> im2col conv -> transpose (``cpu_kernels``); elsewhere the NCHW conv.
    """

    def __init__(self, dim):
        super().__init__()
        self.dwconv = conv2d(dim, dim, 3, stride=1, padding=1, group=dim)
        self.use_cpu_kernel = kernels_enabled()
        if self.use_cpu_kernel:
            self.conv_nhwc = depthwise_conv3x3_nhwc_op()

    def construct(self, x, height, width):
        if self.use_cpu_kernel and x.dtype == ms.float32:
            batch, tokens, channels = x.shape
            y = self.conv_nhwc(x.reshape(batch, height, width, channels), self.dwconv.weight,
                               self.dwconv.bias)
            return y.reshape(batch, tokens, channels)
        return map_to_tokens(self.dwconv(tokens_to_map(x, height, width)))


class MixFFN(nn.Cell):
    """fc1 -> depthwise 3x3 conv -> exact (erf) GELU -> fc2."""

    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = dense(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = GELU()
        self.fc2 = dense(hidden_dim, dim)
        self.drop = nn.Dropout(p=drop)

    def construct(self, x, height, width):
        x = self.act(self.dwconv(self.fc1(x), height, width))
        return self.drop(self.fc2(self.drop(x)))


class Block(nn.Cell):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)); stochastic depth."""

    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio=MLP_RATIO, drop=0.0, attn_drop=0.0,
                 drop_path=0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio, attn_drop=attn_drop,
                                       proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop=drop)

    def construct(self, x, height, width):
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MixVisionTransformer(nn.Cell):
    """Four stages of (overlapping patch embed -> blocks -> LayerNorm)."""

    def __init__(self, embed_dims, num_heads, depths, in_chans=3, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1):
        super().__init__()
        self.embed_dims = tuple(embed_dims)
        # stochastic depth rate grows linearly from 0 to drop_path_rate over all blocks
        rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        channels = (in_chans,) + self.embed_dims[:-1]
        start = 0
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}",
                    OverlapPatchEmbed(PATCH_SIZES[i], STRIDES[i], channels[i], embed_dims[i]))
            setattr(self, f"block{i + 1}", nn.CellList([
                Block(embed_dims[i], num_heads[i], SR_RATIOS[i], drop=drop_rate,
                      attn_drop=attn_drop_rate, drop_path=rates[start + j])
                for j in range(depths[i])]))
            setattr(self, f"norm{i + 1}", LayerNorm(embed_dims[i], eps=BLOCK_NORM_EPS))
            start += depths[i]
        # CPU: the stage outputs' token -> NCHW layout change without a Transpose kernel
        self.use_cpu_kernel = kernels_enabled()
        if self.use_cpu_kernel:
            self.swap_axes = swap_middle_axes_op()

    def _stage(self, x, patch_embed, blocks, norm):
        x, height, width = patch_embed(x)
        for block in blocks:
            x = block(x, height, width)
        x = norm(x)
        if self.use_cpu_kernel and x.dtype == ms.float32:
            batch, tokens, channels = x.shape
            x = self.swap_axes(x.reshape(batch, tokens, channels, 1))
            return x.reshape(batch, channels, height, width)
        return tokens_to_map(x, height, width)

    def construct(self, x):
        c1 = self._stage(x, self.patch_embed1, self.block1, self.norm1)
        c2 = self._stage(c1, self.patch_embed2, self.block2, self.norm2)
        c3 = self._stage(c2, self.patch_embed3, self.block3, self.norm3)
        c4 = self._stage(c3, self.patch_embed4, self.block4, self.norm4)
        return c1, c2, c3, c4


def mit(name, drop_path_rate=0.1, drop_rate=0.0, in_chans=3):
    """Build ``mit_b0`` .. ``mit_b5`` by name."""
    if name not in MIT_SETTINGS:
        raise ValueError(f"config key 'backbone': unknown MiT variant '{name}', expected one of "
                         f"{sorted(MIT_SETTINGS)}")
    return MixVisionTransformer(in_chans=in_chans, drop_rate=drop_rate,
                                drop_path_rate=drop_path_rate, **MIT_SETTINGS[name])
