"""Building blocks shared by the model families (MiT, ViT, Segmenter)."""
import mindspore as ms
from mindspore import nn, ops

from src.models.cpu_kernels import gelu_erf_op, kernels_enabled, layer_norm_op
from src.utils.device import data_parallel_size


class DropPath(nn.Cell):
    """Stochastic depth per sample (timm's drop_path): identity at eval or p == 0."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.keep_prob = 1.0 - self.drop_prob

    def construct(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        # drawn in float32: the CPU kernel of ops.uniform has no float16 (amp O2/O3 training)
        mask = ops.floor(self.keep_prob + ops.uniform(shape, ms.Tensor(0.0, ms.float32),
                                                      ms.Tensor(1.0, ms.float32), dtype=ms.float32))
        # the scale folded into the [B, 1, ...] mask, tiled to x's shape: MindSpore 2.10's CPU
        # Div (``/``) and broadcasting Mul keep 16 B per output element for the graph's lifetime
        mask = mask * (1.0 / self.keep_prob)
        return x * ops.tile(mask.astype(x.dtype), (1,) + x.shape[1:])


class Im2ColConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, names and init) computed on CPU as im2col + matmul.

    MindSpore 2.10's CPU Conv2D kernel is several times slower than ``ops.unfold`` + one
    matmul at SegFormer's shapes, forward and backward: ~5x for the strided patch
    embeddings, ~4-10x for the 3x3 depthwise conv of Mix-FFN (``group == channels``),
    see benchmarks/bench_models.py. Same arithmetic (one dot product per output over the
    same window), so results match ``nn.Conv2d`` to float32 rounding. Supports what the
    models use: NCHW, ``pad_mode="pad"`` or ``"valid"``, no dilation, ``group`` 1 or
    ``in_channels == out_channels == group`` (depthwise).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad_mode="pad",
                 padding=0, group=1, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         pad_mode=pad_mode, padding=padding, group=group, **kwargs)
        if pad_mode not in ("pad", "valid") or not isinstance(padding, int):
            raise ValueError(f"Im2ColConv2d: pad_mode 'pad'/'valid' with one int padding "
                             f"expected, got pad_mode={pad_mode!r} padding={padding!r}")
        if group not in (1, in_channels) or (group > 1 and out_channels != in_channels):
            raise ValueError(f"Im2ColConv2d: group must be 1 or depthwise (group == in == out "
                             f"channels), got in={in_channels} out={out_channels} group={group}")
        self.pad = padding if pad_mode == "pad" else 0
        # Ascend/GPU have fast conv kernels: there the native nn.Conv2d path runs.
        self.im2col = ms.get_context("device_target") == "CPU"
        self.batch_matmul = ops.BatchMatMul()

    def construct(self, x):
        if not self.im2col:
            return super().construct(x)
        batch, channels, height, width = x.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        out_h = (height + 2 * self.pad - kh) // sh + 1
        out_w = (width + 2 * self.pad - kw) // sw + 1
        # [B, C*kh*kw, out_h*out_w], channel-major like the weight [out, C/group, kh, kw]
        cols = ops.unfold(x, (kh, kw), padding=self.pad, stride=(sh, sw))
        weight = self.weight.astype(x.dtype)
        # The BatchMatMul primitive, not ops.matmul: the latter's gradient transposes both
        # operands, and each CPU Transpose kernel keeps an 8 B/element index table.
        if self.group == 1:
            weight = weight.reshape(self.out_channels, -1)
            y = self.batch_matmul(ops.broadcast_to(weight, (batch,) + weight.shape), cols)
        else:  # depthwise: one (1 x kh*kw) @ (kh*kw x L) product per channel
            cols = cols.reshape(batch, channels, kh * kw, out_h * out_w)
            weight = weight.reshape(1, channels, 1, kh * kw)
            y = self.batch_matmul(ops.broadcast_to(weight, (batch, channels, 1, kh * kw)), cols)
        y = y.reshape(batch, self.out_channels, out_h, out_w)
        if self.has_bias:
            # BiasAdd: a broadcasting Add keeps a 16 B/element index table on CPU
            y = ops.bias_add(y, self.bias.astype(x.dtype))
        return y


class GELU(nn.GELU):
    """Exact (erf) GELU, ``0.5 * x * (1 + erf(x / sqrt(2)))``.

    On CPU, float32: one custom kernel forward and one backward (``cpu_kernels``; MindSpore
    2.10's Erf is ~30x slower than PyTorch's GELU at [8, 197, 3072]). Other CPU dtypes (amp)
    or with the kernels off: the formula written out with ``ops.erf``, which MindSpore 2.10
    runs faster than its fused GeLU/GeLUGrad CPU kernels. Ascend/GPU: their fused GeLU.
    """

    def __init__(self):
        super().__init__(approximate=False)
        self.composed = ms.get_context("device_target") == "CPU"
        self.use_cpu_kernel = kernels_enabled()
        if self.use_cpu_kernel:
            self.gelu_erf = gelu_erf_op()

    def construct(self, x):
        if self.use_cpu_kernel and x.dtype == ms.float32:
            return self.gelu_erf(x)
        if not self.composed:
            return super().construct(x)
        return x * 0.5 * (1.0 + ops.erf(x * 0.7071067811865476))


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with PyTorch parameter names (``weight``, ``bias``).

    Upstream checkpoints name these ``weight``/``bias`` (``nn.LayerNorm`` here would say
    ``gamma``/``beta``), so conversion tables stay 1:1. Computed in float32 whatever the
    input dtype: normalisation statistics are not safe in fp16 under mixed precision.
    On CPU a custom kernel (``cpu_kernels``) replaces MindSpore's LayerNorm/LayerNormGrad,
    which are ~3x slower than PyTorch's at these shapes.
    """

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        self.weight = ms.Parameter(ops.ones((normalized_shape,), ms.float32), name="weight")
        self.bias = ms.Parameter(ops.zeros((normalized_shape,), ms.float32), name="bias")
        self.eps = eps
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.use_cpu_kernel = kernels_enabled()
        if self.use_cpu_kernel:
            self.layer_norm_kernel = layer_norm_op()
            self.eps_tensor = ms.Tensor([eps], ms.float32)

    def construct(self, x):
        dtype = x.dtype
        if self.use_cpu_kernel:
            y, _, _ = self.layer_norm_kernel(x.astype(ms.float32), self.weight, self.bias,
                                             self.eps_tensor)
        else:
            y, _, _ = self.layer_norm(x.astype(ms.float32), self.weight, self.bias)
        return y.astype(dtype)


def batch_norm_2d(num_features, sync_bn=False):
    """BatchNorm over NCHW features: ``nn.SyncBatchNorm`` when ``sync_bn`` is set *and*
    training runs data-parallel on more than one device, plain ``nn.BatchNorm2d`` otherwise.

    The one place this rule lives. SyncBN on a single device only adds communication (and
    fails without ``init()``), the upstream pitfall of configs that hard-code SyncBN.
    Both layers have the same parameter names, so checkpoints move freely between them.
    """
    if not sync_bn or data_parallel_size() == 1:
        return nn.BatchNorm2d(num_features)
    target = ms.get_context("device_target")
    if target not in ("Ascend", "GPU"):
        # MindSpore 2.10 has no SyncBatchNorm kernel on CPU ("Unsupported op [SyncBatchNorm]").
        raise ValueError(f"config key 'sync_bn': SyncBatchNorm is not available on device_target "
                         f"'{target}' (MindSpore has kernels for Ascend and GPU only); "
                         "set --sync_bn=False")
    return nn.SyncBatchNorm(num_features)
