"""What the predictors call: a network behind one interface, whatever it was loaded from.

    network = load_network(cfg, path, log)      # .ckpt | .mindir | .onnx
    logits = network(batch)                     # float32 [N, 3, H, W] -> float32 numpy

- ``CellNetwork``: a ``nn.Cell`` (``build_model(cfg)`` + a checkpoint, or any Cell handed to
  the predictors, e.g. during training);
- ``MindirNetwork``: an exported MINDIR (``mindspore.load`` + ``nn.GraphCell``);
- ``OnnxNetwork``: an exported ONNX file (onnxruntime);
- ``src/engine/lite.py`` ``LiteNetwork``: a MINDIR run by MindSpore Lite (Ascend 310/310P).

The predictors (``SegInferencer``, ``ClsInferencer`` in ``src/engine/inference.py``) do all
pre- and post-processing, so a file behaves exactly as the checkpoint it was exported
from. An exported file records its input shape [N, 3, H, W]: -1 marks a dynamic H/W
(``--export_input_shape=1,3,-1,-1``); a fixed H/W only takes inputs of that size
(``InputShapeError`` names the file and both shapes; the segmentation predictor says
which config keys to change), and a fixed N is served by running the batch in chunks of N.
"""
import contextlib
import os

import numpy as np
import mindspore as ms

from src.utils.checkpoint import CheckpointError
from src.utils.errors import InputError

EXPORTED_SUFFIXES = (".mindir", ".onnx")


class InputShapeError(InputError):
    """A batch does not fit the fixed input shape of an exported file."""


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Network:
    """Base: ``network(batch)`` -> float32 numpy outputs of a float32 NCHW numpy batch.

    ``input_shape``: [N, 3, H, W] the network takes (-1: any), or None when it takes any
    shape (a Cell). ``source``: the file it came from, for messages."""

    input_shape = None
    source = "the network"

    @property
    def fixed_hw(self):
        """(H, W) when the network only takes that size, else None."""
        if self.input_shape is None or min(self.input_shape[2:]) < 0:
            return None
        return tuple(self.input_shape[2:])

    @contextlib.contextmanager
    def inference_mode(self):
        yield self

    def run(self, batch):
        raise NotImplementedError

    def __call__(self, batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        fixed = self.fixed_hw
        if fixed is not None and tuple(batch.shape[2:]) != fixed:
            raise InputShapeError(f"{self.source} takes a fixed input {list(self.input_shape)} "
                                  f"(N, C, H, W); got a batch of {list(batch.shape)}")
        size = self.input_shape[0] if self.input_shape and self.input_shape[0] > 0 else None
        if size is None or len(batch) == size:
            return self.run(batch)
        # A file exported for N images takes exactly N: run the batch in chunks of N, the last
        # one padded with zeros, and keep the rows that belong to real images.
        outputs = []
        for start in range(0, len(batch), size):
            chunk = batch[start:start + size]
            real = len(chunk)
            if real < size:
                chunk = np.concatenate([chunk, np.zeros((size - real,) + chunk.shape[1:],
                                                        np.float32)])
            outputs.append(self.run(chunk)[:real])
        return np.concatenate(outputs)


class CellNetwork(Network):
    """A ``nn.Cell``; ``inference_mode()`` switches it to inference and back."""

    def __init__(self, cell, source="the network"):
        self.cell = cell
        self.source = source

    @contextlib.contextmanager
    def inference_mode(self):
        was_training = self.cell.training
        self.cell.set_train(False)
        try:
            yield self
        finally:
            self.cell.set_train(was_training)

    def run(self, batch):
        out = self.cell(ms.Tensor(batch))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.astype(ms.float32).asnumpy()


def as_network(net):
    """``net`` as a ``Network`` (a Cell is wrapped; None stays None for config-only use)."""
    if net is None or isinstance(net, Network):
        return net
    if isinstance(net, ms.nn.Cell):
        return CellNetwork(net, source=type(net).__name__)
    raise TypeError(f"expected a mindspore.nn.Cell or a src.engine.networks.Network, "
                    f"got {type(net).__name__}")


def mindir_input_shape(path):
    """[N, C, H, W] recorded for the first input of a MINDIR file (-1: dynamic)."""
    from mindspore.train import mind_ir_pb2
    model = mind_ir_pb2.ModelProto()
    with open(path, "rb") as f:
        model.ParseFromString(f.read())
    inputs = list(model.graph.input)
    if len(inputs) != 1 or not inputs[0].tensor:
        raise CheckpointError(f"{path}: expected a MINDIR with one image input, found "
                              f"{len(inputs)} graph inputs")
    return [int(d) for d in inputs[0].tensor[0].dims]


def _check_image_input(shape, path):
    if len(shape) != 4 or shape[1] != 3:
        raise CheckpointError(f"{path}: its input has shape {shape}; expected an image batch "
                              f"[N, 3, H, W] (a file written by export.py)")
    return shape


class MindirNetwork(Network):
    """An exported MINDIR run by MindSpore itself (``mindspore.load`` + ``nn.GraphCell``)."""

    def __init__(self, path):
        self.source = path
        try:
            self.input_shape = _check_image_input(mindir_input_shape(path), path)
            self.graph = ms.nn.GraphCell(ms.load(path))
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001  (protobuf and MindSpore raise various types)
            raise CheckpointError(f"{path}: not a readable MINDIR file ({_first_line(err)})") from None

    def run(self, batch):
        out = self.graph(ms.Tensor(batch))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.astype(ms.float32).asnumpy()


class OnnxNetwork(Network):
    """An exported ONNX file run by onnxruntime (CPU)."""

    def __init__(self, path):
        self.source = path
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError(f"{path}: running an ONNX file needs onnxruntime "
                                  f"(pip install onnxruntime)") from None
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001  (onnxruntime raises its own exception types)
            raise CheckpointError(f"{path}: not a readable ONNX file ({_first_line(err)})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            raise CheckpointError(f"{path}: expected one float32 image input, found "
                                  f"{[(i.name, i.type) for i in inputs]}")
        self.input_name = inputs[0].name
        # onnxruntime names a dynamic dimension with a string (or None)
        self.input_shape = _check_image_input(
            [d if isinstance(d, int) and d > 0 else -1 for d in inputs[0].shape], path)

    def run(self, batch):
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


def load_trained_net(cfg, ckpt_path, log=print):
    """``build_model(cfg)`` with every weight from ``ckpt_path`` (a train.py checkpoint or a
    converted one), in inference mode. Anything missing, unexpected or mis-shaped is a
    CheckpointError naming the checkpoint, the config's model and the first bad tensor."""
    from src.models import build_model
    from src.utils.checkpoint import is_training_state, load_checkpoint, load_into_net

    if not ckpt_path:
        raise CheckpointError("no checkpoint given (--eval_ckpt_path / --infer_ckpt_path / "
                              "--export_ckpt_path)")
    params = load_checkpoint(ckpt_path)
    weights = {k: v for k, v in params.items() if not is_training_state(k)}
    net = build_model(cfg)
    what = model_description(cfg)
    try:
        loaded, _ = load_into_net(net, weights, strict=True, source=ckpt_path)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint does not fit the config ({what}): {err}") from None
    net.set_train(False)
    log(f"loaded {len(loaded)} tensors from {ckpt_path} ({what})")
    return net


def model_description(cfg):
    what = f"model={cfg.model} backbone={cfg.backbone} class_num={cfg.class_num}"
    if cfg.model == "segmenter":
        what += f" decoder={cfg.decoder}"
    return what


def load_network(cfg, path, log=print):
    """The network stored at ``path``: a checkpoint (built from ``cfg``), or an exported
    ``.mindir`` / ``.onnx`` file (which holds its own graph; ``cfg`` then only describes
    the pre/post-processing and the class count)."""
    if not path:
        raise CheckpointError("no checkpoint or exported model given (--eval_ckpt_path / "
                              "--infer_ckpt_path: a .ckpt, .mindir or .onnx file)")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in EXPORTED_SUFFIXES:
        return CellNetwork(load_trained_net(cfg, path, log), source=path)
    if not os.path.isfile(path):
        raise CheckpointError(f"exported model not found: {path}")
    network = MindirNetwork(path) if suffix == ".mindir" else OnnxNetwork(path)
    log(f"loaded {suffix[1:].upper()} {path} (input {network.input_shape}; "
        f"pre/post-processing from the config: class_num={cfg.class_num})")
    return network
