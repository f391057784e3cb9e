"""An exported model run by MindSpore Lite (Ascend 310/310P, or Lite's CPU/GPU backends).

    network = LiteNetwork("model.mindir", device="Ascend", device_id=0)
    SegInferencer(network, cfg).predict(image)      # the pre/post-processing of eval.py

``LiteNetwork`` is one more ``src/engine/networks.py`` ``Network``: the file is built with
``mindspore_lite`` (``Context`` -> ``Model.build_from_file`` -> ``predict``), everything
else (resize, normalisation, slide windows, resize back, argmax) is the predictor's, the
same code that serves checkpoints and MINDIR files through MindSpore. The file is a MINDIR
from export.py, or what ``converter_lite`` made of it for the Ascend backend (README,
"Deploying exported models"). A dynamic input is resized to each batch's shape.

``mindspore_lite`` is imported on use: where it is absent (it has no wheel for every
Python; none for 3.11 in the package registry) the error names the wheel to install.
"""
import os
import sys

import numpy as np

from src.engine.networks import Network
from src.utils.checkpoint import CheckpointError
from src.utils.config import ConfigError
from src.utils.errors import UserError

# device_target -> the Lite context target
LITE_TARGETS = {"Ascend": "ascend", "CPU": "cpu", "GPU": "gpu"}
LITE_DOWNLOADS = "https://www.mindspore.cn/lite/docs/en/master/use/downloads.html"


class LiteUnavailableError(UserError, RuntimeError):
    """MindSpore Lite's Python package cannot be imported here."""


def import_lite():
    try:
        import mindspore_lite
    except ImportError as err:
        python = f"cp{sys.version_info.major}{sys.version_info.minor}"
        raise LiteUnavailableError(
            f"MindSpore Lite is not installed for this Python ({err}). Install the "
            f"mindspore_lite wheel of the Lite package for your device and Python "
            f"(mindspore_lite-<version>-{python}-linux_<arch>.whl; Ascend 310/310P: the "
            f"cloud-inference package with the Ascend backend, next to its CANN toolkit) "
            f"from {LITE_DOWNLOADS}, or `pip install mindspore-lite` where a wheel exists "
            f"for this Python") from None
    return mindspore_lite


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class LiteNetwork(Network):
    """A model file built and run by MindSpore Lite on ``device`` (Ascend | CPU | GPU)."""

    def __init__(self, path, device="Ascend", device_id=0):
        if device not in LITE_TARGETS:
            raise ConfigError(f"config key 'device_target': '{device}' is not a MindSpore Lite "
                             f"device; expected one of {sorted(LITE_TARGETS)}")
        mslite = import_lite()
        if not os.path.isfile(path):
            raise CheckpointError(f"model file not found: {path}")
        self.source = path
        context = mslite.Context()
        context.target = [LITE_TARGETS[device]]
        if device == "Ascend":
            context.ascend.device_id = int(device_id)
        elif device == "GPU":
            context.gpu.device_id = int(device_id)
        self.model = mslite.Model()
        try:
            self.model.build_from_file(path, mslite.ModelType.MINDIR, context)
        except (RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: MindSpore Lite could not build the model on "
                                  f"{device} ({_first_line(err)})") from None
        self.inputs = self.model.get_inputs()
        if len(self.inputs) != 1 or len(self.inputs[0].shape) != 4 or self.inputs[0].shape[1] != 3:
            raise CheckpointError(f"{path}: expected one image input [N, 3, H, W], found "
                                  f"{[list(t.shape) for t in self.inputs]}")
        self.input_shape = [int(d) if int(d) > 0 else -1 for d in self.inputs[0].shape]

    def run(self, batch):
        if list(self.inputs[0].shape) != list(batch.shape):
            # a dynamic dimension is fixed for each new shape before the data goes in
            self.model.resize(self.inputs, [list(batch.shape)])
        self.inputs[0].set_data_from_numpy(batch)
        outputs = self.model.predict(self.inputs)
        return np.asarray(outputs[0].get_data_to_numpy(), dtype=np.float32)
