"""SegFormer's all-MLP decode head (NVlabs ``SegFormerHead``).

Per stage a Linear maps C_i -> C (``linear_c{i}.proj``); the maps of stages 2-4 are
upsampled bilinearly (align_corners=False) to the stage-1 size (1/4 of the input); the
four are concatenated in the order [c4, c3, c2, c1] (the order the fuse conv's weights
expect); ``linear_fuse`` = 1x1 conv (no bias) + BatchNorm + ReLU; dropout; ``linear_pred``
= 1x1 conv to ``num_classes``. Output: logits at 1/4 of the input resolution.
Layer init is the framework default (PyTorch's default in upstream, too).
"""
from mindspore import nn, ops


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
        self.bn = norm_layer(out_channels)  # eps 1e-5, momentum 0.9 (= torch's 0.1)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(x)))


class SegFormerHead(nn.Cell):
    def __init__(self, in_channels, embed_dim, num_classes, dropout=0.1, norm_layer=nn.BatchNorm2d):
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.linear_c1 = MLP(c1, embed_dim)
        self.linear_c2 = MLP(c2, embed_dim)
        self.linear_c3 = MLP(c3, embed_dim)
        self.linear_c4 = MLP(c4, embed_dim)
        self.linear_fuse = ConvBNReLU(4 * embed_dim, embed_dim, norm_layer=norm_layer)
        self.dropout = nn.Dropout(p=dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1, has_bias=True)
        self.resize = ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=True)

    def construct(self, features):
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
