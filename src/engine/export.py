"""Export a network to MINDIR, AIR or ONNX (export.py's engine).

- MINDIR: ``mindspore.export``; works on every backend. An input shape with -1 for H and
  W (``--export_input_shape=1,3,-1,-1``) gives a MINDIR that accepts any image size,
  where the network's construct supports dynamic shapes.
- AIR: ``mindspore.export`` on Ascend only (the format is Ascend's graph IR).
- ONNX: MINDIR first, then ``src/engine/mindir_to_onnx.py`` (MindSpore's own ONNX exporter
  cannot express exact GELU or half-pixel bilinear resize); static shapes only.

The exported network is the model built on the reference kernel backend (standard
operators only: what Ascend, GPU, MindSpore Lite and onnxruntime run), never the cpu
backend, whose custom kernels live in a library compiled on the exporting machine.
The exported network is the model itself: input = the normalised image [N, 3, H, W]
(``img_norm_mean`` / ``img_norm_std``, RGB), output = its logits (segmentation: at the
network's native resolution, 1/4 of the input for SegFormer; ViT: [N, class_num]).
"""
import copy
import os
import tempfile

import numpy as np
import mindspore as ms

from src.models.backends import BACKENDS
from src.utils.errors import UserError

EXPORT_FORMATS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


class ExportError(UserError, RuntimeError):
    """The export cannot be done as configured; the message says why and what to change."""


EXPORT_BACKEND = "reference"


def export_config(cfg):
    """``cfg`` with the kernel backend every export is built on."""
    cfg = copy.deepcopy(cfg)
    cfg.kernel_backend = EXPORT_BACKEND
    return cfg


def _check_backend(net):
    """Refuse a network holding a layer of another backend than ``EXPORT_BACKEND``."""
    for name, cell in net.cells_and_names():
        module = type(cell).__module__
        for backend in BACKENDS:
            if backend != EXPORT_BACKEND and module == f"src.models.backends.{backend}":
                raise ExportError(f"layer '{name}' ({type(cell).__name__}) is from the "
                                  f"'{backend}' kernel backend; an export must be built on the "
                                  f"'{EXPORT_BACKEND}' backend (build it from export_config(cfg))")


def default_file_name(cfg):
    """The config file's name without extension (as the seed's export does)."""
    if cfg.config_path:
        name = os.path.basename(cfg.config_path)
        for ext in (".yaml", ".yml"):
            if name.endswith(ext):
                return name[: -len(ext)]
        return name
    return f"{cfg.model}_{cfg.backbone}"


def output_path(cfg, fmt):
    """Where the export goes: ``export_file_name`` (or the default) with the format's suffix."""
    name = cfg.export_file_name or default_file_name(cfg)
    suffix = EXPORT_FORMATS[fmt]
    return name if name.lower().endswith(suffix) else name + suffix


def input_shape(cfg):
    """``export_input_shape`` as [N, C, H, W]; -1 marks a dynamic H/W (MINDIR only)."""
    shape = [int(v) for v in cfg.export_input_shape]
    if len(shape) != 4 or shape[1] != 3 or shape[0] < 1:
        raise ExportError(f"config key 'export_input_shape' must be N,3,H,W with N >= 1, got "
                          f"{list(cfg.export_input_shape)}")
    for dim in shape[2:]:
        if dim == 0 or dim < -1:
            raise ExportError(f"config key 'export_input_shape': H and W must be positive, or -1 "
                              f"for dynamic, got {shape}")
    return shape


def _check_writable(path):
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test_"):
            pass
    except OSError as err:
        raise ExportError(f"cannot write the export file {path}: {err.strerror or err}") from None


def check_export(cfg):
    """Validate the export settings before any work; returns (format, input shape, path)."""
    fmt = str(cfg.export_format).upper()
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"config key 'export_format': '{cfg.export_format}' is not one of "
                          f"{sorted(EXPORT_FORMATS)}")
    if fmt == "AIR" and ms.get_context("device_target") != "Ascend":
        raise ExportError(f"AIR needs Ascend: the AIR format is produced by the Ascend "
                          f"toolchain, and this run's device_target is "
                          f"{ms.get_context('device_target')}. Use --export_format=MINDIR "
                          f"(or ONNX) here, or run on an Ascend machine with "
                          f"--device_target=Ascend")
    shape = input_shape(cfg)
    if -1 in shape[2:] and fmt != "MINDIR":
        raise ExportError(f"a dynamic H/W (-1 in export_input_shape) is supported for MINDIR "
                          f"only, not {fmt}")
    path = output_path(cfg, fmt)
    _check_writable(path)
    return fmt, shape, path


def _check_runs(net, example, shape):
    """Run ``net`` once on the export input: MindSpore writes a graph for an input the
    network cannot take (too small for its strides, not a multiple of the ViT patch), and
    only loading the file fails."""
    try:
        net(example)
    except (RuntimeError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"the network cannot run on export_input_shape {shape} ({first}); "
                          f"nothing was written. Give an N,3,H,W it takes, e.g. the config's "
                          f"image size") from None


def export_network(net, cfg, log=print):
    """Export ``net`` as configured (``export_format``, ``export_file_name``,
    ``export_input_shape``). Returns the path written."""
    fmt, shape, path = check_export(cfg)
    dynamic = -1 in shape[2:]
    _check_backend(net)
    net.set_train(False)
    if dynamic:
        example = ms.Tensor(shape=[d if d > 0 else None for d in shape], dtype=ms.float32)
    else:
        example = ms.Tensor(np.zeros(shape, dtype=np.float32))
    if not dynamic:
        _check_runs(net, example, shape)
    stem = path[: -len(EXPORT_FORMATS[fmt])]
    try:
        if fmt == "ONNX":
            from src.engine.mindir_to_onnx import mindir_to_onnx
            with tempfile.TemporaryDirectory() as tmp:
                ms.export(net, example, file_name=os.path.join(tmp, "net"), file_format="MINDIR")
                mindir_to_onnx(os.path.join(tmp, "net.mindir"), path)
        else:
            ms.export(net, example, file_name=stem, file_format=fmt)
    except (RuntimeError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if dynamic:
            raise ExportError(f"this network cannot be exported with a dynamic H/W ({first}); "
                              f"use a fixed export_input_shape") from None
        raise
    log(f"exported {cfg.model} {cfg.backbone} ({fmt}, input {shape}) to {os.path.abspath(path)}")
    return path
