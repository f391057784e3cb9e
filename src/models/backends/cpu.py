"""The cpu backend: the neutral layers of ``reference.py``, computed fast on a CPU.

Each class subclasses its reference twin (same parameters, names, init and interface) and
replaces only how it computes. Two kinds of rewrite, both tested against the same oracles
as the reference backend (HF transformers, timm, torch):

* custom C++ kernels (``cpu_kernels``: exact GELU, LayerNorm, 3x3 depthwise conv on
  channels-last tokens, bilinear resize(-add), fused multi-head attention, an axis swap)
  where MindSpore 2.10's CPU kernels are several times slower than PyTorch's; they take
  float32, so other dtypes (amp) fall back to standard operators;
* standard operators arranged for the CPU: convolutions as im2col + one (Batch)MatMul
  (MindSpore's CPU Conv2D is ~5-10x slower at these shapes), products with transpose flags
  instead of Transposes and BiasAdd instead of broadcasting adds (MindSpore 2.10's CPU
  Transpose and broadcasting kernels keep an 8-16 B per element index table for the
  graph's lifetime), and a loss composed of cheap reductions.

The classes are named ``Cpu<Layer>`` and published under the neutral names at the end of
this module (a class of the same name as its reference parent confuses the source rewrite
behind amp O1, ``mindspore.rewrite``). These graphs depend on a library compiled on this machine and on static shapes: never
exported (``export.py`` always builds the reference backend).
"""
import mindspore as ms
from mindspore import nn, ops

from src.models.backends import cpu_kernels, reference
from src.models.backends.reference import map_to_tokens, tokens_to_map

NAME = "cpu"
# The SegFormer head folds its fuse conv (and BatchNorm at inference) into the per-stage
# linears: the same function with ~15x fewer MACs (segformer_head.py).
FOLD_DECODE_HEAD = True


def _is_float32(x):
    return x.dtype == ms.float32


def _out_size(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def _im2col_conv(conv, x, pad):
    """``conv`` (an ``nn.Conv2d``, group 1 or depthwise) on NCHW ``x`` as im2col + BatchMatMul:
    the same dot product per output over the same window, so equal to the conv up to float32
    rounding. The BatchMatMul primitive, not ``ops.matmul``: the latter's gradient transposes
    both operands."""
    batch, channels, height, width = x.shape
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    out_h, out_w = _out_size(height, kh, sh, pad), _out_size(width, kw, sw, pad)
    # [B, C*kh*kw, out_h*out_w], channel-major like the weight [out, C/group, kh, kw]
    cols = ops.unfold(x, (kh, kw), padding=pad, stride=(sh, sw))
    weight = conv.weight.astype(x.dtype)
    if conv.group == 1:
        weight = weight.reshape(conv.out_channels, -1)
        y = conv.batch_matmul(ops.broadcast_to(weight, (batch,) + weight.shape), cols)
    else:  # depthwise: one (1 x kh*kw) @ (kh*kw x L) product per channel
        cols = cols.reshape(batch, channels, kh * kw, out_h * out_w)
        weight = weight.reshape(1, channels, 1, kh * kw)
        y = conv.batch_matmul(ops.broadcast_to(weight, (batch, channels, 1, kh * kw)), cols)
    y = y.reshape(batch, conv.out_channels, out_h, out_w)
    return ops.bias_add(y, conv.bias.astype(x.dtype))


class CpuLayerNorm(reference.LayerNorm):
    """One custom kernel forward and one backward: MindSpore's LayerNorm/LayerNormGrad are
    ~3x slower than PyTorch's at these shapes. Normalises in float32, as the reference."""

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__(normalized_shape, eps)
        self.layer_norm_kernel = cpu_kernels.layer_norm_op()
        self.eps_tensor = ms.Tensor([eps], ms.float32)

    def construct(self, x):
        y, _, _ = self.layer_norm_kernel(x.astype(ms.float32), self.weight, self.bias,
                                         self.eps_tensor)
        return y.astype(x.dtype)


class CpuGELU(reference.GELU):
    """float32: one custom kernel forward and one backward (MindSpore 2.10's Erf is ~30x
    slower than PyTorch's GELU at [8, 197, 3072]); other dtypes: the reference formula."""

    def __init__(self):
        super().__init__()
        self.gelu_erf = cpu_kernels.gelu_erf_op()

    def construct(self, x):
        if _is_float32(x):
            return self.gelu_erf(x)
        return super().construct(x)


class CpuPatchEmbedConv(reference.PatchEmbedConv):
    """The conv as im2col written as ``cols^T @ W^T``: the tokens ``[B, L, O]`` come out of
    the product directly, with no transpose of an NCHW conv output."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding=0, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, **kwargs)
        self.pad = padding
        self.tokens_matmul = ops.BatchMatMul(transpose_a=True, transpose_b=True)

    def construct(self, x):
        batch = x.shape[0]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        height = _out_size(x.shape[2], kh, sh, self.pad)
        width = _out_size(x.shape[3], kw, sw, self.pad)
        cols = ops.unfold(x, (kh, kw), padding=self.pad, stride=(sh, sw))  # [B, C*kh*kw, L]
        weight = self.weight.astype(x.dtype).reshape(self.out_channels, -1)
        x = self.tokens_matmul(cols, ops.broadcast_to(weight, (batch,) + weight.shape))
        x = ops.bias_add(x.reshape(-1, self.out_channels), self.bias.astype(x.dtype))
        return x.reshape(batch, height * width, self.out_channels), height, width


class CpuSpatialReductionConv(reference.SpatialReductionConv):
    """Kernel = stride = r, no padding: the r x r patches do not overlap, so they are gathered
    from the tokens by one reshape and an axis swap, and multiplied by the weight as
    ``[B*M, r*r*C] @ [r*r*C, C]``: no NCHW transposes and no im2col copy. Rows/columns beyond
    the last whole patch are dropped, as the conv does."""

    def __init__(self, channels, ratio, **kwargs):
        super().__init__(channels, ratio, **kwargs)
        self.ratio = ratio
        self.patch_matmul = ops.MatMul(transpose_b=True)
        self.swap_axes = cpu_kernels.swap_middle_axes_op()

    def construct(self, x, height, width):
        batch, _, channels = x.shape
        r = self.ratio
        out_h, out_w = height // r, width // r
        if height % r or width % r:
            x = x.reshape(batch, height, width, channels)[:, :out_h * r, :out_w * r, :]
        # [B*h', i, w', (j, c)] -> [B*h', w', i, (j, c)]: one row per patch, (i, j, c) order;
        # the weight [C, C, i, j] -> [C, (i, j), C] to match
        x = x.reshape(batch * out_h, r, out_w, r * channels)
        weight = self.weight.astype(x.dtype)
        if _is_float32(x):
            x = self.swap_axes(x)
            weight = self.swap_axes(weight.reshape(channels, channels, r * r, 1))
        else:
            x = x.transpose(0, 2, 1, 3)
            weight = weight.transpose(0, 2, 3, 1)
        x = x.reshape(batch * out_h * out_w, r * r * channels)
        y = ops.bias_add(self.patch_matmul(x, weight.reshape(channels, -1)),
                         self.bias.astype(x.dtype))
        return y.reshape(batch, out_h * out_w, channels)


class CpuDepthwiseConv3x3(reference.DepthwiseConv3x3):
    """float32: one custom kernel on the channels-last tokens (no transposes, no im2col);
    other dtypes: im2col + BatchMatMul on the map."""

    def __init__(self, channels, **kwargs):
        super().__init__(channels, **kwargs)
        self.conv_nhwc = cpu_kernels.depthwise_conv3x3_nhwc_op()
        self.batch_matmul = ops.BatchMatMul()

    def construct(self, x, height, width):
        if _is_float32(x):
            batch, tokens, channels = x.shape
            y = self.conv_nhwc(x.reshape(batch, height, width, channels), self.weight, self.bias)
            return y.reshape(batch, tokens, channels)
        return map_to_tokens(_im2col_conv(self, tokens_to_map(x, height, width), pad=1))


class CpuTokensToMap(reference.TokensToMap):
    """float32: the layout change by the axis-swap kernel instead of a Transpose."""

    def __init__(self):
        super().__init__()
        self.swap_axes = cpu_kernels.swap_middle_axes_op()

    def construct(self, x, height, width):
        if _is_float32(x):
            batch, tokens, channels = x.shape
            x = self.swap_axes(x.reshape(batch, tokens, channels, 1))
            return x.reshape(batch, channels, height, width)
        return super().construct(x, height, width)


class CpuLinearGELU(reference.LinearGELU):
    """float32: the product, then the bias added inside the GELU kernel (one pass over the
    [tokens, hidden] activations instead of BiasAdd then GELU)."""

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        self.gelu = CpuGELU()
        self.weight_matmul = ops.MatMul(transpose_b=True)
        self.gelu_bias = cpu_kernels.gelu_erf_bias_op()

    def construct(self, x):
        if not _is_float32(x):
            return super().construct(x)
        shape = x.shape
        h = self.weight_matmul(x.reshape(-1, shape[-1]), self.weight)
        return self.gelu_bias(h, self.bias).reshape(shape[:-1] + (-1,))


class Softmax(nn.Cell):
    """Softmax over the last axis. Its gradient, y * (dy - sum(dy * y)), takes the row sums
    as a matmul with a ones vector: MindSpore 2.10's CPU ReduceSum over the last axis (what
    the built-in gradient uses) is ~8x slower than that matmul on attention scores."""

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


def _fused_attention_applies(cell, x):
    """The attention kernels: float32, and no dropout on the probabilities (they never
    materialise them)."""
    return _is_float32(x) and not (cell.training and cell.attn_drop.p > 0)


class CpuAttention(reference.Attention):
    """float32 without attention dropout: one kernel that reads the heads in place from q and
    the fused kv (no head transposes) and never stores the [N, M] scores (stage 1 of B0 at
    1024x2048: 2 x 1 GiB otherwise); else the reference math with the CPU softmax."""

    def __init__(self, num_heads, head_dim, attn_drop=0.0):
        super().__init__(num_heads, head_dim, attn_drop)
        self.softmax = Softmax()
        self.fused_attention = cpu_kernels.attention_op()

    def construct(self, q, kv):
        if not _fused_attention_applies(self, q):
            return super().construct(q, kv)
        batch, tokens, channels = q.shape
        q = q.reshape(batch, tokens, self.num_heads, self.head_dim)
        kv = kv.reshape(batch, -1, 2, self.num_heads, self.head_dim)
        return self.fused_attention(q, kv)[0].reshape(batch, tokens, channels)


class CpuSelfAttention(reference.SelfAttention):
    """As ``Attention``, q, k and v read in place from the fused ``qkv`` projection."""

    def __init__(self, num_heads, head_dim, attn_drop=0.0):
        super().__init__(num_heads, head_dim, attn_drop)
        self.softmax = Softmax()
        self.fused_attention = cpu_kernels.self_attention_op()

    def construct(self, qkv):
        if not _fused_attention_applies(self, qkv):
            return super().construct(qkv)
        batch, tokens, _ = qkv.shape
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        x = self.fused_attention(qkv)[0]
        return x.reshape(batch, tokens, self.num_heads * self.head_dim)


class CpuUpsampleAdd(reference.UpsampleAdd):
    """float32: one kernel that resizes and adds, so a sum of upsampled maps keeps one
    full-size map alive (and MindSpore 2.10's CPU ResizeBilinearGrad is slow)."""

    def __init__(self):
        super().__init__()
        self.resize_add = cpu_kernels.resize_bilinear_add_op()

    def construct(self, x, base):
        if _is_float32(x):
            return self.resize_add(x, base)
        return super().construct(x, base)


def _class_max(z):
    """Max over axis 1 of ``[B, C, L]`` by halving (overlapping halves are harmless for a
    max): ~2x faster than ReduceMax over a middle axis on CPU."""
    b, c, length = z.shape
    while c > 1:
        half = (c + 1) // 2
        z = ops.maximum(ops.slice(z, (0, 0, 0), (b, half, length)),
                        ops.slice(z, (0, c - half, 0), (b, half, length)))
        c = half
    return z


class _Log(nn.Cell):
    """``ops.log`` whose gradient ``dout / x`` is the RealDiv primitive. The built-in gradient
    divides with Div, whose MindSpore 2.10 CPU kernel keeps two 8-byte index tables per
    element for the graph's lifetime even for same-shape operands; RealDiv computes the same
    float32 quotient without them."""

    def __init__(self):
        super().__init__()
        self.real_div = ops.RealDiv()

    def construct(self, x):
        return ops.log(x)

    def bprop(self, x, out, dout):
        return (self.real_div(dout, x),)


class CpuSegmentationCrossEntropy(reference.SegmentationCrossEntropy):
    """The same loss composed from ops with fast CPU kernels: log-sum-exp written out over
    the class axis (MindSpore 2.10's LogSoftmaxGrad over axis 1 of [2, 19, 512, 512] took
    ~0.5 s) with the class sum as a matmul (ReduceSum over a middle axis is ~3x slower), and
    the upsampling by the bilinear kernel."""

    def __init__(self, ignore_index=255, **options):
        super().__init__(ignore_index, **options)
        self.log = _Log()
        self.resize = cpu_kernels.resize_bilinear_op()

    def construct(self, logits, labels):
        logits = logits.astype(ms.float32)
        labels = labels.astype(ms.int32)
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = self.resize(logits, labels)
        n, c, height, width = logits.shape
        logits = logits.reshape(n, c, height * width)
        labels = labels.reshape(n, 1, height * width)
        # -log_softmax at the label = log(sum(exp(z - max))) - (z - max)[label]
        valid = labels != self.ignore_index
        target = ops.where(valid, labels, ops.zeros_like(labels))
        # any per-pixel shift gives the same value and gradient; the max keeps exp in range;
        # tiled, not broadcast (a broadcasting Sub keeps an index table)
        shift = ops.tile(ops.stop_gradient(_class_max(logits)), (1, c, 1))
        shifted = logits - shift
        sum_exp = ops.matmul(ops.ones((1, c), ms.float32), ops.exp(shifted))
        picked = ops.gather_elements(shifted, 1, target)
        return self.reduce(self.log(sum_exp) - picked, target, valid)


class CpuDropPath(reference.DropPath):
    """The same per-sample draw (``stochastic.uniform``, a function of seed, global step and
    layer), without a broadcasting multiply: the factor is tiled to ``x``'s shape, as
    MindSpore 2.10's CPU broadcasting Mul keeps 16 B per output element for the graph's
    lifetime.
    """

    def sample_scale(self, x):
        return ops.tile(super().sample_scale(x), (1,) + x.shape[1:])


# The neutral layers of this backend (the names the models use; see reference.py)
LayerNorm = CpuLayerNorm
GELU = CpuGELU
PatchEmbedConv = CpuPatchEmbedConv
SpatialReductionConv = CpuSpatialReductionConv
DepthwiseConv3x3 = CpuDepthwiseConv3x3
TokensToMap = CpuTokensToMap
LinearGELU = CpuLinearGELU
Attention = CpuAttention
SelfAttention = CpuSelfAttention
UpsampleAdd = CpuUpsampleAdd
SegmentationCrossEntropy = CpuSegmentationCrossEntropy
DropPath = CpuDropPath
