"""Convert an exported (static-shape) MINDIR file to ONNX.

Why not ``mindspore.export(..., file_format="ONNX")``: MindSpore 2.10's built-in ONNX
exporter has no converter for ``Erf`` (exact GELU, in every model here) and exports the
bilinear resize (``ResizeBilinearV2``, SegFormer's decoder and the Segmenter/ViT position
embedding) either not at all or with "asymmetric" coordinates, i.e. numerically wrong for
align_corners=False. The MINDIR graph, in contrast, is a flat list of primitives with
their constant arguments and the static shape of every output, which maps onto ONNX
opset 17 one primitive at a time (tables below). A primitive without a mapping is an error
naming it; nothing is approximated.

    mindir_to_onnx("model.mindir", "model.onnx")
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mindspore.train import mind_ir_pb2

from src.utils.errors import UserError

OPSET = 17  # LayerNormalization

_MS_TO_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64,
                9: np.bool_, 10: np.float16, 11: np.float64}
_NUMPY_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
                  np.dtype(np.float64): TensorProto.DOUBLE, np.dtype(np.int32): TensorProto.INT32,
                  np.dtype(np.int64): TensorProto.INT64, np.dtype(np.bool_): TensorProto.BOOL,
                  np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
_A = mind_ir_pb2.AttributeProto
_UNARY = {"Erf": "Erf", "Sqrt": "Sqrt", "ReLU": "Relu", "Exp": "Exp", "Tanh": "Tanh",
          "Sigmoid": "Sigmoid", "Neg": "Neg", "Abs": "Abs", "Log": "Log", "Reciprocal": "Reciprocal"}
_BINARY = {"Add": "Add", "Sub": "Sub", "Mul": "Mul", "Div": "Div", "RealDiv": "Div",
           "Muls": "Mul", "MatMulExt": "MatMul", "Maximum": "Max", "Minimum": "Min", "Pow": "Pow"}
_SKIPPED = ("UpdateState",)                 # side-effect bookkeeping, no data
_ALIASES = ("Load", "Depend", "Identity")   # output = first input


class OnnxConversionError(UserError, RuntimeError):
    """The MINDIR graph holds something this converter cannot express in ONNX."""


def _tensor_value(t):
    dtype = _MS_TO_NUMPY.get(t.data_type)
    if dtype is None:
        raise OnnxConversionError(f"constant tensor of MindIR data type {t.data_type} not supported")
    if t.external_data.ByteSize():
        raise OnnxConversionError("MINDIR with external weight files (> 2 GB) is not supported")
    data = np.frombuffer(t.raw_data, dtype=dtype).copy()
    return data.reshape(tuple(t.dims))


def _attr_value(a):
    """Python value of a MindIR attribute: int/float/bool/str, tuple, ndarray, or None."""
    # Scalars stand in ``i``/``f``/``d`` at top level and in ``ints``/``floats`` inside tuples.
    if a.type in (_A.INT64, _A.INT32, _A.INT8, _A.INT16, _A.UINT8, _A.UINT64, _A.UINT32):
        return int(a.ints[0]) if len(a.ints) else int(a.i)
    if a.type == _A.BOOL:
        return bool(a.ints[0]) if len(a.ints) else bool(a.i)
    if a.type == _A.FLOAT:
        return float(a.floats[0]) if len(a.floats) else float(a.f)
    if a.type == _A.DOUBLE:
        return float(a.doubles[0]) if len(a.doubles) else float(a.d)
    if a.type == _A.STRING:
        return a.s.decode() if isinstance(a.s, bytes) else a.s
    if a.type in (_A.TUPLE, _A.LIST):
        return tuple(_attr_value(v) for v in a.values)
    if a.type in (_A.TENSORS, _A.TENSOR):
        return _tensor_value(a.tensors[0])
    if a.type in (_A.UMONAD, _A.IOMONAD, _A.NONE):
        return None
    raise OnnxConversionError(f"MindIR attribute type {a.type} not supported")


def _out_shapes(node):
    """Static output shape(s) MindSpore recorded on the node (list for tuple outputs)."""
    for a in node.attribute:
        if a.name == "shape":
            if a.type == _A.TENSORS:
                return [list(a.tensors[0].dims)]
            if a.type == _A.TUPLE:
                return [list(v.tensors[0].dims) if v.tensors else None for v in a.values]
    return [None]


def _short(name):
    return name.rsplit(":", 1)[-1] if ":" in name else name


class _Converter:
    def __init__(self, model):
        self.graph = model.graph
        self.prims = {p.name: p for p in model.primitives}
        self.consts = {}        # MindIR name -> python value
        self.alias = {}         # MindIR name -> ONNX name (or tuple of ONNX names)
        self.shapes = {}        # ONNX name -> static shape
        self.nodes, self.inits = [], []
        self.counter = 0

    # ------------------------------------------------------------------ helpers --

    def fresh(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def const_input(self, value, dtype=None):
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh("const")
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ref(self, name):
        """ONNX name of a MindIR input (following aliases); constants become initializers."""
        if name in self.alias:
            return self.alias[name]
        if name in self.consts:
            value = self.consts[name]
            arr = np.asarray(value)
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            onnx_name = self.const_input(arr)
            self.alias[name] = onnx_name
            return onnx_name
        raise OnnxConversionError(f"MINDIR input '{name}' is produced by nothing the converter knows")

    def const(self, name, what):
        if name not in self.consts:
            raise OnnxConversionError(f"{what} must be a constant in the MINDIR graph (got '{name}')")
        return self.consts[name]

    def emit(self, op, inputs, outputs=None, shape=None, **attrs):
        outputs = outputs or [self.fresh(op)]
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        if shape is not None:
            self.shapes[outputs[0]] = shape
        return outputs[0]

    # ------------------------------------------------------------------ convert --

    def run(self):
        g = self.graph
        for p in g.parameter:
            arr = _tensor_value(p)
            name = _short(p.name)
            self.inits.append(numpy_helper.from_array(arr, name))
            self.alias[p.name] = name
            self.shapes[name] = list(arr.shape)
        inputs = []
        for i in g.input:
            t = i.tensor[0]
            name = _short(i.name)
            self.alias[i.name] = name
            dims = list(t.dims)
            if any(d < 0 for d in dims):
                raise OnnxConversionError("ONNX conversion needs a static input shape, got "
                                          f"{dims}; export ONNX with fixed N,C,H,W")
            inputs.append(helper.make_tensor_value_info(
                name, _NUMPY_TO_ONNX[np.dtype(_MS_TO_NUMPY[t.data_type])], dims))
            self.shapes[name] = dims
        for node in g.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = _attr_value(node.attribute[0])
        for node in g.node:
            if node.op_type != "Constant":
                self.convert(node)
        outputs = []
        for o in g.output:
            src = self.alias.get(o.name)
            if not isinstance(src, str):
                raise OnnxConversionError(f"graph output '{o.name}' is not a single tensor")
            t = o.tensor[0]
            name = "output" if len(g.output) == 1 else _short(o.name)
            self.emit("Identity", [src], [name])
            outputs.append(helper.make_tensor_value_info(
                name, _NUMPY_TO_ONNX[np.dtype(_MS_TO_NUMPY[t.data_type])], list(t.dims)))
        graph = helper.make_graph(self.nodes, "network", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="mindir_to_onnx")
        return model

    def convert(self, node):
        op = node.op_type.split("::")[-1].split(":")[0]
        ins = list(node.input)
        out = node.output[0]
        shapes = _out_shapes(node)
        shape = shapes[0]
        if op in _SKIPPED:
            return
        if op in _ALIASES:
            self.alias[out] = self.ref(ins[0])
            return
        if op == "MakeTuple":
            self.alias[out] = tuple(self.ref(i) for i in ins)
            return
        if op == "TupleGetItem":
            items = self.ref(ins[0])
            self.alias[out] = items[int(self.const(ins[1], "TupleGetItem index"))]
            return
        handler = getattr(self, "op_" + op, None)
        if op in _UNARY:
            self.alias[out] = self.emit(_UNARY[op], [self.ref(ins[0])], shape=shape)
        elif op in _BINARY:
            self.alias[out] = self.emit(_BINARY[op], [self.ref(ins[0]), self.ref(ins[1])], shape=shape)
        elif handler is not None:
            self.alias[out] = handler(node, ins, shapes)
        else:
            raise OnnxConversionError(f"MindSpore primitive '{op}' has no ONNX mapping in "
                                      f"src/engine/mindir_to_onnx.py")
        # Every output's static shape, as MindSpore recorded it: handlers that need an input's
        # rank (MatMul transposes, StridedSlice) read it from here.
        result = self.alias[out]
        results = result if isinstance(result, tuple) else (result,)
        for name, static in zip(results, shapes):
            if isinstance(name, str) and static is not None:
                self.shapes.setdefault(name, static)

    def _prim_attrs(self, node):
        prim = self.prims.get(node.op_type.split("::")[-1])
        return {a.name: _attr_value(a) for a in prim.attribute} if prim else {}

    # ------------------------------------------------------------- primitives --

    def op_Square(self, node, ins, shapes):
        x = self.ref(ins[0])
        return self.emit("Mul", [x, x], shape=shapes[0])

    def op_Reshape(self, node, ins, shapes):
        target = shapes[0] if shapes[0] is not None else list(self.const(ins[1], "Reshape shape"))
        return self.emit("Reshape", [self.ref(ins[0]), self.const_input(target, np.int64)], shape=target)

    def op_BroadcastTo(self, node, ins, shapes):
        return self.emit("Expand", [self.ref(ins[0]), self.const_input(shapes[0], np.int64)],
                         shape=shapes[0])

    def op_Transpose(self, node, ins, shapes):
        perm = [int(p) for p in self.const(ins[1], "Transpose perm")]
        return self.emit("Transpose", [self.ref(ins[0])], shape=shapes[0], perm=perm)

    def op_ExpandDims(self, node, ins, shapes):
        return self.op_Reshape(node, ins[:1], shapes)

    def op_Squeeze(self, node, ins, shapes):
        return self.op_Reshape(node, ins[:1], shapes)

    def op_Cast(self, node, ins, shapes):
        raise OnnxConversionError("Cast (mixed precision) in the graph: export with amp_level O0")

    # MindSpore's data_format enum (op_enum.str_to_enum): NCHW 0, NHWC 1, NCDHW 14.
    _CHANNEL_FIRST, _CHANNEL_LAST = (0, 14), (1,)

    def _format(self, ins, index, op):
        fmt = int(self.const(ins[index], f"{op} data_format")) if len(ins) > index else 0
        if fmt not in self._CHANNEL_FIRST + self._CHANNEL_LAST:
            raise OnnxConversionError(f"{op} with data_format enum {fmt} is not supported")
        return fmt

    def op_BiasAdd(self, node, ins, shapes):
        rank = len(shapes[0])
        bias = self.ref(ins[1])
        # The bias runs along the channel axis: 1 for NCHW/NCDHW (the last one for rank 2),
        # the last one for NHWC; ONNX Add broadcasts from the right, so channel-first biases
        # become [1, C, 1, ...].
        if rank > 2 and self._format(ins, 2, "BiasAdd") in self._CHANNEL_FIRST:
            channels = shapes[0][1]
            bias = self.emit("Reshape", [bias, self.const_input([1, channels] + [1] * (rank - 2),
                                                                  np.int64)])
        return self.emit("Add", [self.ref(ins[0]), bias], shape=shapes[0])

    def op_MatMul(self, node, ins, shapes, batched=False):
        a, b = self.ref(ins[0]), self.ref(ins[1])
        trans_a = bool(self.const(ins[2], "MatMul transpose_a")) if len(ins) > 2 else False
        trans_b = bool(self.const(ins[3], "MatMul transpose_b")) if len(ins) > 3 else False
        for flag, idx in ((trans_a, 0), (trans_b, 1)):
            if flag:
                operand = self.shapes.get(a if idx == 0 else b)
                if operand is None:  # the swapped axes are the last two: the rank must be known
                    raise OnnxConversionError(f"{node.op_type}: transposed operand of unknown rank")
                rank = len(operand)
                perm = list(range(rank - 2)) + [rank - 1, rank - 2]
                t = self.emit("Transpose", [a if idx == 0 else b], perm=perm)
                a, b = (t, b) if idx == 0 else (a, t)
        return self.emit("MatMul", [a, b], shape=shapes[0])

    def op_BatchMatMul(self, node, ins, shapes):
        return self.op_MatMul(node, ins, shapes)

    def op_Softmax(self, node, ins, shapes):
        axis = self.const(ins[1], "Softmax axis")
        axis = axis[0] if isinstance(axis, tuple) else axis
        return self.emit("Softmax", [self.ref(ins[0])], shape=shapes[0], axis=int(axis))

    def _reduce(self, onnx_op, ins, shapes, keep_index, axes_as_input):
        """MindSpore reduce ``(x, axis, keep_dims[, skip_mode])``: an empty axis reduces every
        axis, or none when ``skip_mode`` (ReduceSum) is set."""
        x = self.ref(ins[0])
        axis = self.const(ins[1], "reduce axis")
        axes = [int(a) for a in axis] if isinstance(axis, (tuple, list, np.ndarray)) else [int(axis)]
        keep = int(bool(self.const(ins[keep_index], "reduce keep_dims")))
        if not axes:
            if len(ins) > keep_index + 1 and bool(self.const(ins[keep_index + 1], "skip_mode")):
                return self.emit("Identity", [x], shape=shapes[0])
            if x not in self.shapes:
                raise OnnxConversionError(f"{onnx_op} over all axes of a tensor of unknown rank")
            axes = list(range(len(self.shapes[x])))
        if axes_as_input:       # opset 13+: ReduceSum takes the axes as an input
            return self.emit(onnx_op, [x, self.const_input(axes, np.int64)], shape=shapes[0],
                             keepdims=keep)
        return self.emit(onnx_op, [x], shape=shapes[0], axes=axes, keepdims=keep)

    def op_ReduceSum(self, node, ins, shapes):
        return self._reduce("ReduceSum", ins, shapes, 2, axes_as_input=True)

    def op_ReduceMean(self, node, ins, shapes):
        # opset 17's ReduceMean still takes its axes as an attribute (an input from opset 18)
        return self._reduce("ReduceMean", ins, shapes, 2, axes_as_input=False)

    def op_Concat(self, node, ins, shapes):
        tensors = self.ref(ins[0])
        axis = int(self.const(ins[1], "Concat axis"))
        return self.emit("Concat", list(tensors), shape=shapes[0], axis=axis)

    def op_StridedSlice(self, node, ins, shapes):
        begin = list(self.const(ins[1], "StridedSlice begin"))
        end = list(self.const(ins[2], "StridedSlice end"))
        strides = list(self.const(ins[3], "StridedSlice strides"))
        masks = [int(self.const(i, "StridedSlice mask")) for i in ins[4:9]]
        begin_mask, end_mask, ellipsis_mask, new_axis_mask, shrink_mask = masks
        if ellipsis_mask or new_axis_mask:
            raise OnnxConversionError("StridedSlice with ellipsis/new-axis masks is not supported")
        in_shape = self.shapes.get(self.ref(ins[0]))
        starts, ends = [], []
        for i, (b, e, s) in enumerate(zip(begin, end, strides)):
            if begin_mask >> i & 1:
                b = 0 if s > 0 else -1
            if end_mask >> i & 1:
                e = np.iinfo(np.int64).max if s > 0 else np.iinfo(np.int64).min
            if shrink_mask >> i & 1:
                e, s = (b + 1 if b != -1 else np.iinfo(np.int64).max), 1
                strides[i] = 1
            starts.append(b)
            ends.append(e)
        axes = list(range(len(begin)))
        sliced = self.emit("Slice", [self.ref(ins[0]), self.const_input(starts, np.int64),
                                     self.const_input(ends, np.int64),
                                     self.const_input(axes, np.int64),
                                     self.const_input(strides, np.int64)])
        if shrink_mask or in_shape is None:
            return self.emit("Reshape", [sliced, self.const_input(shapes[0], np.int64)],
                             shape=shapes[0])
        self.shapes[sliced] = shapes[0]
        return sliced

    def op_LayerNorm(self, node, ins, shapes):
        axis = int(self.const(ins[3], "LayerNorm begin_norm_axis"))
        params_axis = int(self.const(ins[4], "LayerNorm begin_params_axis"))
        eps = float(self.const(ins[5], "LayerNorm epsilon"))
        rank = len(shapes[0])
        if (axis % rank) != (params_axis % rank):
            raise OnnxConversionError("LayerNorm with begin_norm_axis != begin_params_axis")
        y = self.emit("LayerNormalization", [self.ref(ins[0]), self.ref(ins[1]), self.ref(ins[2])],
                      shape=shapes[0], axis=axis, epsilon=eps)
        return (y, None, None)

    def op_BatchNorm(self, node, ins, shapes):
        if bool(self.const(ins[5], "BatchNorm is_training")):
            raise OnnxConversionError("BatchNorm in training mode in the graph: export an "
                                      "inference network (net.set_train(False))")
        eps = float(self.const(ins[6], "BatchNorm epsilon"))
        if self._format(ins, 8, "BatchNorm") not in self._CHANNEL_FIRST:
            raise OnnxConversionError("BatchNorm with data_format NHWC is not supported")
        y = self.emit("BatchNormalization", [self.ref(i) for i in ins[:5]], shape=shapes[0],
                      epsilon=eps)
        return (y, None, None, None, None)

    def op_ResizeBilinearV2(self, node, ins, shapes):
        align = bool(self.const(ins[2], "ResizeBilinearV2 align_corners"))
        half = bool(self.const(ins[3], "ResizeBilinearV2 half_pixel_centers"))
        mode = "align_corners" if align else ("half_pixel" if half else "asymmetric")
        return self.emit("Resize", [self.ref(ins[0]), "", "", self.const_input(shapes[0], np.int64)],
                         shape=shapes[0], mode="linear", coordinate_transformation_mode=mode)

    def op_GeLU(self, node, ins, shapes):
        """MindSpore's ``GeLU`` primitive (``nn.GELU(approximate=True)``, ``ops.gelu`` with
        ``approximate='tanh'``) is the tanh form, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715
        x^3))), not erf: writing erf here would differ by up to 4e-4. (The exact GELU that
        every model here uses reaches the MINDIR as Div/Erf/Add/Mul.)"""
        x = self.ref(ins[0])
        cube = self.emit("Mul", [self.emit("Mul", [x, x]), x])
        inner = self.emit("Add", [x, self.emit("Mul", [cube, self.const_input(np.float32(0.044715))])])
        scaled = self.emit("Mul", [inner, self.const_input(np.float32(np.sqrt(2.0 / np.pi)))])
        one = self.emit("Add", [self.emit("Tanh", [scaled]), self.const_input(np.float32(1.0))])
        half = self.emit("Mul", [x, self.const_input(np.float32(0.5))])
        return self.emit("Mul", [half, one], shape=shapes[0])

    def op_PadV3(self, node, ins, shapes):
        """``ops.pad`` (Segmenter pads its input to a multiple of the patch size). MindSpore
        lists the paddings as (begin, end) pairs per axis from the last axis backwards (as
        torch.nn.functional.pad); ONNX wants all begins, then all ends, from the first axis.
        Negative paddings crop in both."""
        attrs = self._prim_attrs(node)
        mode = str(attrs.get("mode", "constant"))
        if mode != "constant":
            raise OnnxConversionError(f"PadV3 mode '{mode}' is not supported (constant only)")
        if not attrs.get("paddings_contiguous", True):  # ops.pad always writes pairs
            raise OnnxConversionError("PadV3 with paddings_contiguous=False is not supported")
        paddings = [int(p) for p in np.asarray(self.const(ins[1], "PadV3 paddings")).ravel()]
        pairs = [(paddings[2 * i], paddings[2 * i + 1]) for i in range(len(paddings) // 2)]
        rank = len(shapes[0])
        begins, ends = [0] * rank, [0] * rank
        for i, (begin, end) in enumerate(pairs):
            begins[rank - 1 - i], ends[rank - 1 - i] = begin, end
        inputs = [self.ref(ins[0]), self.const_input(begins + ends, np.int64)]
        if len(ins) > 2:
            value = np.asarray(self.const(ins[2], "PadV3 constant value")).reshape(())
            inputs.append(self.const_input(value.astype(np.float32) if value.dtype == np.float64
                                           else value))
        return self.emit("Pad", inputs, shape=shapes[0], mode="constant")

    def op_Conv2D(self, node, ins, shapes):
        attrs = self._prim_attrs(node)
        pad_mode = str(attrs.get("pad_mode", "pad")).lower()
        kwargs = dict(strides=list(attrs["stride"][2:]), dilations=list(attrs["dilation"][2:]),
                      group=int(attrs.get("group", 1)))
        if pad_mode == "same":
            kwargs["auto_pad"] = "SAME_UPPER"
        else:
            top, bottom, left, right = ((0, 0, 0, 0) if pad_mode == "valid"
                                        else tuple(attrs["pad_list"]))
            kwargs["pads"] = [top, left, bottom, right]
        if str(attrs.get("format", "NCHW")) != "NCHW":
            raise OnnxConversionError("Conv2D with a data format other than NCHW")
        return self.emit("Conv", [self.ref(ins[0]), self.ref(ins[1])], shape=shapes[0], **kwargs)


    def op_Im2Col(self, node, ins, shapes):
        """``ops.unfold``: [B, C, H, W] -> [B, C, kh*kw, L]. ONNX has no im2col; a depthwise
        Conv whose C*kh*kw filters are one-hot (filter c*kh*kw + i*kw + j picks offset (i, j)
        of channel c) produces the same values exactly (x*1 plus zeros), then a Reshape."""
        attrs = self._prim_attrs(node)
        kh, kw = attrs["ksizes"]
        if str(attrs.get("padding_mode", "CALCULATED")).upper() != "CALCULATED":
            raise OnnxConversionError(f"Im2Col padding_mode {attrs['padding_mode']} not supported")
        pads = list(attrs.get("pads", (0, 0)))
        if len(pads) == 1:      # one value for all sides
            pads = pads * 4
        elif len(pads) == 2:    # (height, width), both sides
            pads = [pads[0], pads[0], pads[1], pads[1]]
        top, bottom, left, right = pads
        x = self.ref(ins[0])
        channels = self.shapes[x][1]
        picker = np.zeros((channels * kh * kw, 1, kh, kw), dtype=np.float32)
        for c in range(channels):
            for i in range(kh):
                for j in range(kw):
                    picker[(c * kh + i) * kw + j, 0, i, j] = 1.0
        cols = self.emit("Conv", [x, self.const_input(picker)], group=channels,
                         kernel_shape=[kh, kw], strides=list(attrs["strides"]),
                         dilations=list(attrs["dilations"]), pads=[top, left, bottom, right])
        return self.emit("Reshape", [cols, self.const_input(shapes[0], np.int64)], shape=shapes[0])


def mindir_to_onnx(mindir_path, onnx_path):
    """Write the ONNX equivalent of ``mindir_path`` to ``onnx_path``; returns the ONNX model."""
    model = mind_ir_pb2.ModelProto()
    with open(mindir_path, "rb") as f:
        model.ParseFromString(f.read())
    if len(model.functions):
        raise OnnxConversionError("MINDIR with sub-graphs (control flow in construct) is not supported")
    onnx_model = _Converter(model).run()
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, onnx_path)
    return onnx_model
