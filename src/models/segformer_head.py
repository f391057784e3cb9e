"""SegFormer's all-MLP decode head (NVlabs ``SegFormerHead``).

Per stage a Linear maps C_i -> C (``linear_c{i}.proj``); the maps of stages 2-4 are
upsampled bilinearly (align_corners=False) to the stage-1 size (1/4 of the input); the
four are concatenated in the order [c4, c3, c2, c1] (the order the fuse conv's weights
expect); ``linear_fuse`` = 1x1 conv (no bias) + BatchNorm + ReLU; channel dropout
(``Dropout2d``); ``linear_pred``
= 1x1 conv to ``num_classes``. Output: logits at 1/4 of the input resolution.
Layer init is the framework default (PyTorch's default in upstream, too).

How it is computed: the kernel backend decides (``backend.FOLD_DECODE_HEAD``, set once at
build as ``fold_fuse``). Unfolded (the reference backend), the layers run one by one as
written above: the published model, op by op. Folded (the cpu backend): the linears, the
bilinear upsampling and the 1x1 fuse conv are all linear maps and upsampling acts per
channel, so (W_i = the fuse conv's weight columns of stage i, A_i/b_i = ``linear_c{i}.proj``)

    fuse(concat_i up(A_i x_i + b_i)) = sum_i up((W_i A_i) x_i) + sum_i W_i b_i

(bilinear weights sum to 1: a constant passes through ``up`` unchanged). Each stage is
then one [C, C_i] matmul at its own resolution instead of a [C, 4C] conv at stride 4
(SegFormer-B0 at 512x1024: ~0.6 GMAC in the head instead of ~9; the 4C-channel concat is
gone), computed channel-first on the NCHW stage maps (no transposes); the summed bias is
added at the coarsest stage, before upsampling, and the upsampled maps are summed by the
backend's ``UpsampleAdd``. At inference the BatchNorm (a per-channel affine map with its
running statistics) is folded in as well. Same function and parameters; fp32 results
differ by rounding only.

The upsampling is ``ResizeBilinearV2`` with the size as a graph value (a MINDIR exported
with dynamic H/W resizes to any input size).
"""
import mindspore as ms
from mindspore import nn, ops

from src.models import stochastic


class MLP(nn.Cell):
    """Linear over the channels of an NCHW map, returning NCHW."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.proj = nn.Dense(in_dim, out_dim)

    def construct(self, x):
        batch, _, height, width = x.shape
        x = self.proj(x.reshape(batch, x.shape[1], -1).transpose(0, 2, 1))
        return x.transpose(0, 2, 1).reshape(batch, -1, height, width)


class ConvBNReLU(nn.Cell):
    """mmcv ConvModule(k=1, norm=BN, act=ReLU): the conv has no bias because BN follows."""

    def __init__(self, in_channels, out_channels, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, has_bias=False)
        self.bn = norm_layer(out_channels)  # eps 1e-5, torch momentum 0.1
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(x)))


class SegFormerHead(nn.Cell):
    def __init__(self, backend, in_channels, embed_dim, num_classes, dropout=0.1,
                 norm_layer=nn.BatchNorm2d):
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.linear_c1 = MLP(c1, embed_dim)
        self.linear_c2 = MLP(c2, embed_dim)
        self.linear_c3 = MLP(c3, embed_dim)
        self.linear_c4 = MLP(c4, embed_dim)
        self.linear_fuse = ConvBNReLU(4 * embed_dim, embed_dim, norm_layer=norm_layer)
        # mmseg BaseDecodeHead: Dropout2d, whole channels of each image zeroed (and the rest
        # scaled by 1 / (1 - p)), not single values
        self.dropout = stochastic.Dropout2d(p=dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1, has_bias=True)
        self.resize = ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=True)
        self.embed_dim = embed_dim
        self.fold_fuse = backend.FOLD_DECODE_HEAD
        self.upsample_add = backend.UpsampleAdd()
        self.batch_matmul = ops.BatchMatMul()
        self.fold_matmul = ops.MatMul()

    def construct(self, features):
        if self.fold_fuse:
            return self._folded(features)
        c1, c2, c3, c4 = features
        # = ops.interpolate(bilinear, align_corners=False), but with the size taken as a
        # graph value: a MINDIR exported with dynamic H/W then resizes to any input size.
        size = ops.shape(c1)[2:]
        _c4 = self.resize(self.linear_c4(c4), size)
        _c3 = self.resize(self.linear_c3(c3), size)
        _c2 = self.resize(self.linear_c2(c2), size)
        _c1 = self.linear_c1(c1)
        x = self.linear_fuse(ops.concat((_c4, _c3, _c2, _c1), axis=1))
        return self.linear_pred(self.dropout(x))

    def _folded(self, features):
        """The same function with the fuse conv (and at inference the BatchNorm) folded into
        the per-stage linears (see the module docstring)."""
        c1, c2, c3, c4 = features
        dtype = c1.dtype
        # the fuse conv's column blocks follow the concat order [c4, c3, c2, c1]
        w4, b4 = self._fold_stage(0, self.linear_c4.proj)
        w3, b3 = self._fold_stage(1, self.linear_c3.proj)
        w2, b2 = self._fold_stage(2, self.linear_c2.proj)
        w1, b1 = self._fold_stage(3, self.linear_c1.proj)
        bias = b4 + b3 + b2 + b1
        bn = self.linear_fuse.bn
        # amp O2 wraps the BatchNorm (float32 island): then it runs as a layer
        fold_bn = not self.training and hasattr(bn, "moving_mean")
        if fold_bn:
            # inference BatchNorm = per-channel scale and shift with the running statistics
            # (scale broadcast explicitly: a broadcasting Mul keeps a 16 B/element table on CPU)
            scale = bn.gamma / ops.sqrt(bn.moving_variance + bn.eps)
            w4 = w4 * ops.broadcast_to(scale.reshape(-1, 1), w4.shape)
            w3 = w3 * ops.broadcast_to(scale.reshape(-1, 1), w3.shape)
            w2 = w2 * ops.broadcast_to(scale.reshape(-1, 1), w2.shape)
            w1 = w1 * ops.broadcast_to(scale.reshape(-1, 1), w1.shape)
            bias = (bias - bn.moving_mean) * scale + bn.beta
        # the bias passes through the upsampling unchanged: add it where the map is smallest
        # (BiasAdd, not a broadcasting Add: the latter keeps a 16 B/element table on CPU)
        y4 = ops.bias_add(self._channel_matmul(w4.astype(dtype), c4), bias.astype(dtype))
        x = self._channel_matmul(w1.astype(dtype), c1)
        x = self.upsample_add(self._channel_matmul(w2.astype(dtype), c2), x)
        x = self.upsample_add(self._channel_matmul(w3.astype(dtype), c3), x)
        x = self.upsample_add(y4, x)
        if not fold_bn:
            x = bn(x)
        x = self.dropout(self.linear_fuse.relu(x))
        pred = self.linear_pred
        logits = self._channel_matmul(pred.weight.reshape(pred.out_channels, -1).astype(x.dtype), x)
        return ops.bias_add(logits, pred.bias.astype(x.dtype))

    def _fold_stage(self, index, proj):
        """(W_i A_i, W_i b_i) in float32 for the stage whose columns of the fuse weight are
        block ``index``. Folded in float32 whatever the compute dtype (amp), from the
        parameters themselves: under amp O2/O3 a tensor passed into a method is cast to
        float16 at the call. The MatMul primitive, not ``ops.matmul``: the latter's gradient
        transposes both operands (a CPU Transpose keeps an 8 B/element index table)."""
        fuse = self.linear_fuse.conv.weight.astype(ms.float32).reshape(self.embed_dim, -1)
        block = fuse[:, index * self.embed_dim:(index + 1) * self.embed_dim]
        weight = self.fold_matmul(block, proj.weight.astype(ms.float32))              # [C, C_i]
        bias = self.fold_matmul(block, proj.bias.astype(ms.float32).reshape(-1, 1))  # [C, 1]
        return weight, bias.reshape(-1)

    def _channel_matmul(self, weight, x):
        """1x1 conv without bias on an NCHW map: [O, C] @ [B, C, H*W] -> [B, O, H, W]. A
        BatchMatMul with the weight broadcast: its gradient needs no transposes of x (those
        of ``ops.matmul``'s gradient cost as much as the product here)."""
        batch, channels, height, width = x.shape
        weight = ops.broadcast_to(weight, (batch,) + weight.shape)
        y = self.batch_matmul(weight, x.reshape(batch, channels, -1))
        return y.reshape(batch, -1, height, width)
