"""Parameter and MAC counting by walking a network's own Cells (``tools/get_flops.py``).

    report = count_model(net, (1, 3, 1024, 2048))   # PYNATIVE mode
    report.total_macs, report.params, report.table(max_depth=2)

How: the network's real ``construct`` code runs once in PYNATIVE mode on a zero input,
with every compute kernel swapped for a *shape-only stand-in* that records its cost and
returns a tensor of the right shape (zeros, or its input when the shape is unchanged):

* leaf Cells with a rule below (``nn.Dense``, ``nn.Conv2d``, LayerNorm, BatchNorm), and
  activations/dropout (identity, free);
* the functional ops the models call inside composite Cells, looked up as
  ``ops.matmul`` / ``ops.interpolate`` / ``ops.softmax`` on ``mindspore.ops`` (the same
  idea as ptflops' patching of ``torch.nn.functional``), and operator instances stored on
  a Cell (``self.resize = ops.ResizeBilinearV2(...)``; ``MatMul``, ``BatchMatMul``,
  ``Softmax``). This is how the attention products ``q @ k^T`` and ``attn @ v`` (and
  Segmenter's mask products) are counted: from their actual operand shapes.

What is left running for real is data movement (reshape, transpose, concat, add, slicing),
so counting SegFormer-B0 at 1024x2048 takes seconds, not the minute a real CPU forward
takes; memory use is that of one forward pass (activations are allocated, as zeros).
Every other leaf Cell runs its real ``construct``; one that owns parameters but has no
rule, and an operator instance on a Cell that has no rule, are listed in
``report.uncounted`` (their cost, if any, is missing from the total). An operator called
another way (``x @ y``, ``mint.*``) is not seen at all: the tests compare the totals with
PyTorch's FlopCounterMode on reference models, so a model change that hides work fails
there.

Conventions (those of fvcore, which the MMClassification ``get_flops`` and the ViT
numbers 17.58 GMAC @224 use; one fused multiply-add = 1 MAC):

* conv: ``N * C_out * H_out * W_out * (C_in / groups) * k_h * k_w``; bias not counted;
* dense: ``numel(input) * C_out``; bias not counted;
* matmul ``[..., M, K] @ [..., K, N]``: ``batch * M * K * N``;
* LayerNorm: 5 per element (with affine); BatchNorm (inference): 2 per element;
* interpolation: one per source tap per output element (nearest 1, bilinear 4,
  bicubic 16, linear 2, trilinear 8); fvcore counts bilinear as 4 as well;
* not counted: softmax, activations (GELU, ReLU), dropout / drop-path, residual adds,
  scaling, L2 normalisation, reshapes/transposes/concat, bias additions.

Params = values of the trainable Parameters (what PyTorch/HF report); BatchNorm running
statistics are Parameters in MindSpore but buffers in PyTorch and are reported apart.
"""
import contextlib
import math

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from src.models.backends.reference import DropPath, LayerNorm
from src.utils.errors import UserError


class FlopCountError(UserError, RuntimeError):
    """The network cannot be counted as asked (wrong mode, shapes that do not fit ...)."""


# --------------------------------------------------------------------- leaf rules --
# Each rule: (cell, input tensor) -> (output shape, MACs). Shapes are checked the way the
# real kernel would, since no real kernel runs to catch a mismatch.

def _dense_rule(cell, x):
    if x.shape[-1] != cell.in_channels:
        raise FlopCountError(f"Dense({cell.in_channels}->{cell.out_channels}) got input "
                             f"{tuple(x.shape)}")
    if cell.activation_flag:
        raise FlopCountError("Dense with a fused activation is not supported by the counter")
    return tuple(x.shape[:-1]) + (cell.out_channels,), x.size * cell.out_channels


def _conv_out_size(size, kernel, stride, dilation, pad_mode, pad_before, pad_after):
    if pad_mode == "same":
        return -(-size // stride)
    if pad_mode == "valid":
        pad_before = pad_after = 0
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _conv2d_rule(cell, x):
    if cell.data_format != "NCHW":
        raise FlopCountError(f"Conv2d with data_format {cell.data_format} is not supported")
    if x.ndim != 4 or x.shape[1] != cell.in_channels:
        raise FlopCountError(f"Conv2d({cell.in_channels}->{cell.out_channels}) got input "
                             f"{tuple(x.shape)}")
    pad = cell.padding
    top, bottom, left, right = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
    (kh, kw), (sh, sw), (dh, dw) = cell.kernel_size, cell.stride, cell.dilation
    out_h = _conv_out_size(x.shape[2], kh, sh, dh, cell.pad_mode, top, bottom)
    out_w = _conv_out_size(x.shape[3], kw, sw, dw, cell.pad_mode, left, right)
    if out_h < 1 or out_w < 1:
        raise FlopCountError(f"Conv2d kernel {cell.kernel_size} does not fit input {tuple(x.shape)}")
    out = (x.shape[0], cell.out_channels, out_h, out_w)
    macs = x.shape[0] * cell.out_channels * out_h * out_w * (cell.in_channels // cell.group) * kh * kw
    return out, macs


def _layer_norm_rule(cell, x):
    return tuple(x.shape), 5 * x.size


def _batch_norm_rule(cell, x):
    return tuple(x.shape), 2 * x.size


def _free_rule(cell, x):
    return tuple(x.shape), 0


# type -> (operator name, rule). Looked up along the class's MRO, so subclasses inherit.
LEAF_RULES = {
    nn.Dense: ("dense", _dense_rule),
    nn.Conv2d: ("conv", _conv2d_rule),
    LayerNorm: ("norm", _layer_norm_rule),
    nn.LayerNorm: ("norm", _layer_norm_rule),
    nn.BatchNorm2d: ("norm", _batch_norm_rule),
    nn.SyncBatchNorm: ("norm", _batch_norm_rule),
    nn.GELU: (None, _free_rule),
    nn.ReLU: (None, _free_rule),
    nn.Dropout: (None, _free_rule),
    DropPath: (None, _free_rule),
}

# interpolation taps per output element (see the module docstring)
INTERPOLATE_TAPS = {"nearest": 1, "linear": 2, "bilinear": 4, "bicubic": 16, "trilinear": 8}


def _leaf_rule(cell):
    """The rule of the nearest class in ``cell``'s MRO that has one, unless a class before it
    defines its own ``construct`` (a layer built on ``nn.Conv2d`` that also changes layout,
    say): that cell runs for real, and the operators it calls are counted."""
    for klass in type(cell).__mro__:
        if klass in LEAF_RULES:
            return LEAF_RULES[klass]
        if "construct" in vars(klass):
            return None
    return None


class FlopsReport:
    """What ``count_model`` found. MACs per operator and per Cell (Cells include their
    descendants); parameters per Cell."""

    def __init__(self, input_shape, output_shapes, records, params, buffers, cell_names,
                 cell_params, uncounted):
        self.input_shape = tuple(input_shape)
        self.output_shapes = output_shapes
        self.records = records              # [(cell name, operator, MACs)], in call order
        self.params = params                # trainable parameter values
        self.buffers = buffers              # non-trainable Parameters (BatchNorm statistics)
        self.cell_names = cell_names        # every Cell name, '' = the whole model
        self.cell_params = cell_params      # name -> trainable values below it
        self.uncounted = uncounted          # leaf Cells with parameters and no rule

    @property
    def total_macs(self):
        return sum(macs for _, _, macs in self.records)

    def by_operator(self):
        totals = {}
        for _, op, macs in self.records:
            totals[op] = totals.get(op, 0) + macs
        return totals

    def macs_of(self, name):
        """MACs of Cell ``name`` and everything called inside it ('' = whole model)."""
        if not name:
            return self.total_macs
        return sum(m for scope, _, m in self.records if scope == name or scope.startswith(name + "."))

    def partition(self, depth):
        """[(name, MACs)] that add up to the total: the Cells ``depth`` levels down, and
        ``"<name> (own)"`` for work a shallower Cell does itself (e.g. the decode head's
        interpolation) rather than in a child."""
        parts = {}
        for scope, _, macs in self.records:
            levels = scope.split(".") if scope else []
            key = ".".join(levels[:depth]) if len(levels) >= depth else f"{scope or 'model'} (own)"
            parts[key] = parts.get(key, 0) + macs
        return list(parts.items())

    def table(self, max_depth=2):
        rows = [("model", f"{self.params:,}", format_count(self.total_macs))]
        for name in self.cell_names:
            if not name or name.count(".") + 1 > max_depth:
                continue
            macs, params = self.macs_of(name), self.cell_params[name]
            if macs or params:
                rows.append(("  " * (name.count(".") + 1) + name, f"{params:,}", format_count(macs)))
        widths = [max(len(r[i]) for r in rows + [("module", "#params", "#MACs")]) for i in range(3)]
        lines = [f"{'module':<{widths[0]}}  {'#params':>{widths[1]}}  {'#MACs':>{widths[2]}}",
                 "-" * (sum(widths) + 4)]
        lines += [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        return "\n".join(lines)


def format_count(value):
    """17582000000 -> '17.582G'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3f}{unit}"
    return str(int(value))


class _Counter:
    def __init__(self):
        self.records = []
        self.scope = [""]   # names of the Cells being executed, innermost last

    def add(self, op, macs):
        if op is not None:
            self.records.append((self.scope[-1], op, int(macs)))

    # -- stand-ins for functional ops ---------------------------------------------------
    def matmul(self, input, other, transpose_a=False, transpose_b=False):  # noqa: A002
        a, b = tuple(input.shape), tuple(other.shape)
        if transpose_a and len(a) >= 2:
            a = a[:-2] + (a[-1], a[-2])
        if transpose_b and len(b) >= 2:
            b = b[:-2] + (b[-1], b[-2])
        if len(a) < 2 or len(b) < 2:
            raise FlopCountError(f"ops.matmul of shapes {a} and {b}: vectors are not supported")
        if a[-1] != b[-2]:
            raise FlopCountError(f"ops.matmul of shapes {a} and {b}: inner sizes differ")
        try:
            batch = tuple(np.broadcast_shapes(a[:-2], b[:-2]))
        except ValueError:
            raise FlopCountError(f"ops.matmul of shapes {a} and {b}: batch sizes do not "
                                 f"broadcast") from None
        self.add("matmul", math.prod(batch) * a[-2] * a[-1] * b[-1])
        return ops.zeros(batch + (a[-2], b[-1]), input.dtype)

    def interpolate(self, input, size=None, scale_factor=None, mode="nearest",  # noqa: A002
                    align_corners=None, recompute_scale_factor=None):
        spatial = tuple(input.shape[2:])
        if size is not None:
            out = (size,) * len(spatial) if isinstance(size, int) else tuple(size)
        elif scale_factor is not None:
            factors = ((scale_factor,) * len(spatial) if isinstance(scale_factor, (int, float))
                       else tuple(scale_factor))
            out = tuple(int(math.floor(s * f)) for s, f in zip(spatial, factors))
        else:
            raise FlopCountError("ops.interpolate needs size or scale_factor")
        if mode not in INTERPOLATE_TAPS:
            raise FlopCountError(f"ops.interpolate mode '{mode}' has no counting rule; known: "
                                 f"{sorted(INTERPOLATE_TAPS)}")
        shape = tuple(input.shape[:2]) + tuple(int(s) for s in out)
        self.add("interpolate", INTERPOLATE_TAPS[mode] * math.prod(shape))
        return ops.zeros(shape, input.dtype)

    @staticmethod
    def softmax(input, axis=-1, *, dtype=None):  # noqa: A002
        return input if dtype is None else input.astype(dtype)

    # -- stand-ins for operator instances stored on Cells ---------------------------------
    def primitive(self, prim):
        """The stand-in for ``prim`` (an ``ops.Primitive``), or None if it has no rule."""
        if isinstance(prim, ops.ResizeBilinearV2):
            def resize(x, size):
                size = size.asnumpy().tolist() if isinstance(size, ms.Tensor) else size
                return self.interpolate(x, size=tuple(int(v) for v in size), mode="bilinear")
            return resize
        if isinstance(prim, (ops.MatMul, ops.BatchMatMul)):
            return lambda x, y: self.matmul(x, y, prim.transpose_a, prim.transpose_b)
        if isinstance(prim, ops.Softmax):
            return lambda x: x
        if isinstance(prim, ops.Conv2D):
            return lambda x, w: self.conv2d(prim, x, w)
        if isinstance(prim, ops.BiasAdd):
            return lambda x, b: x
        return None

    def conv2d(self, prim, x, weight):
        """The ``Conv2D`` primitive of an ``nn.Conv2d`` whose ``construct`` is its own."""
        out_channels, in_per_group, kh, kw = weight.shape
        pad = prim.pad if prim.pad_mode.lower() == "pad" else 0
        top, bottom, left, right = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
        strides, dilations = prim.stride[-2:], prim.dilation[-2:]
        out_h = _conv_out_size(x.shape[2], kh, strides[0], dilations[0], prim.pad_mode.lower(),
                               top, bottom)
        out_w = _conv_out_size(x.shape[3], kw, strides[1], dilations[1], prim.pad_mode.lower(),
                               left, right)
        self.add("conv", x.shape[0] * out_channels * out_h * out_w * in_per_group * kh * kw)
        return ops.zeros((x.shape[0], out_channels, out_h, out_w), x.dtype)

    # -- Cell wrappers ----------------------------------------------------------------
    def leaf(self, name, cell, op, rule):
        def construct(x, *args, **kwargs):
            shape, macs = rule(cell, x)
            self.scope.append(name)
            self.add(op, macs)
            self.scope.pop()
            return x if shape == tuple(x.shape) else ops.zeros(shape, x.dtype)
        return construct

    def composite(self, name, cell):
        real = type(cell).construct

        def construct(*args, **kwargs):
            self.scope.append(name)
            try:
                return real(cell, *args, **kwargs)
            finally:
                self.scope.pop()
        return construct


FUNCTIONAL_STAND_INS = ("matmul", "interpolate", "softmax")


def _report_call(primitive, label, uncounted):
    def call(*args):
        if label not in uncounted:
            uncounted.append(label)
        return primitive(*args)
    return call


@contextlib.contextmanager
def _stand_ins(net, counter):
    """Swap kernels for counting stand-ins; everything is restored on exit."""
    wrapped, swapped, uncounted, param_leaves = [], [], [], []
    saved_ops = {name: getattr(ops, name) for name in FUNCTIONAL_STAND_INS}
    try:
        for name, cell in net.cells_and_names():
            found = _leaf_rule(cell)
            if found is not None:
                construct = counter.leaf(name, cell, *found)
            else:
                construct = counter.composite(name, cell)
                if not cell.name_cells() and any(True for _ in cell.get_parameters(expand=False)):
                    param_leaves.append((name, f"{name} ({type(cell).__name__})"))
                for attr, value in list(vars(cell).items()):
                    if isinstance(value, ops.Primitive):
                        stand_in = counter.primitive(value)
                        if stand_in is None:  # reported if the forward pass calls it
                            stand_in = _report_call(value, f"{name}.{attr} "
                                                    f"({type(value).__name__})", uncounted)
                        object.__setattr__(cell, attr, stand_in)
                        swapped.append((cell, attr, value))
            object.__setattr__(cell, "construct", construct)
            wrapped.append(cell)
        for name in FUNCTIONAL_STAND_INS:
            setattr(ops, name, getattr(counter, name))
        yield uncounted
        # a leaf with parameters but no rule of its own is counted when its operators were
        counted = {scope for scope, _, _ in counter.records}
        uncounted[:0] = [label for name, label in param_leaves if name not in counted]
    finally:
        for name, fn in saved_ops.items():
            setattr(ops, name, fn)
        for cell, attr, value in swapped:
            object.__setattr__(cell, attr, value)
        for cell in wrapped:
            cell.__dict__.pop("construct", None)


def _shapes(out):
    if isinstance(out, (tuple, list)):
        return [s for item in out for s in _shapes(item)]
    return [tuple(out.shape)]


def count_params(net):
    """(trainable values, non-trainable Parameter values) of ``net``."""
    trainable = sum(p.size for p in net.trainable_params())
    total = sum(p.size for p in net.get_parameters())
    return trainable, total - trainable


def _check_reference_backend(net):
    """Counting needs the layers as published: the reference kernel backend (the cpu
    backend's custom kernels are opaque to the counter, and its SegFormer head is folded)."""
    for name, cell in net.cells_and_names():
        if type(cell).__module__ == "src.models.backends.cpu":
            raise FlopCountError(f"layer '{name}' ({type(cell).__name__}) is from the cpu kernel "
                                 "backend: build the network with kernel_backend: reference "
                                 "to count it")


def count_model(net, input_shape):
    """Count the MACs of one forward pass of ``net`` (inference mode) on an input of
    ``input_shape`` (e.g. ``(1, 3, 1024, 2048)``) and its parameters. PYNATIVE mode."""
    if ms.get_context("mode") != ms.PYNATIVE_MODE:
        raise FlopCountError("count_model runs the network's Python code: call "
                             "ms.set_context(mode=ms.PYNATIVE_MODE) first")
    _check_reference_backend(net)
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise FlopCountError(f"input shape must be (N, C, H, W) with positive sizes, got {input_shape}")
    was_training = net.training
    net.set_train(False)
    counter = _Counter()
    try:
        with _stand_ins(net, counter) as uncounted:
            out = net(ops.zeros(input_shape, ms.float32))
    finally:
        net.set_train(was_training)
    params, buffers = count_params(net)
    names = [name for name, _ in net.cells_and_names()]
    cell_params = {name: sum(p.size for p in cell.trainable_params())
                   for name, cell in net.cells_and_names()}
    return FlopsReport(input_shape, _shapes(out), counter.records, params, buffers, names,
                       cell_params, uncounted)
