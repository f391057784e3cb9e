"""The compiled training graph of the reference backend (what Ascend runs) holds no float64
tensor, no UniformReal (``ops.uniform``, documented for GPU and CPU only) and no random
kernel with a hidden draw counter (Dropout ...: a resumed run would draw differently): read
from the IR MindSpore writes after compiling the trainer's step cell (``ScheduledTrainStep``
around a SegFormer ``TrainStep``) in GRAPH mode."""
import glob
import os
import re
import subprocess
import sys

from tests.engine.train_helpers import ROOT

COMPILE = """
import numpy as np
import mindspore as ms
from src.engine.amp import build_loss_scaler
from src.engine.optim import build_optimizer
from src.engine.train_step import ScheduledTrainStep, TrainStep
from src.models.backends import load_backend
from src.utils.config import load_config
from tests.engine.train_helpers import tiny_segformer

ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)
cfg = load_config("", ["--optimizer=adamw"])
net = tiny_segformer(drop_path_rate=0.2, kernel_backend="reference")
loss_fn = load_backend("reference").SegmentationCrossEntropy(255)
step = ScheduledTrainStep(TrainStep(net, loss_fn, build_optimizer(net, cfg), build_loss_scaler(cfg),
                                    device_target="CPU"), np.linspace(1e-3, 0, 10),
                          seed=0)
step.set_train(True)
step.compile(ms.Tensor(np.zeros((2, 3, 64, 64), np.float32)),
             ms.Tensor(np.zeros((2, 64, 64), np.int32)))
"""


def compiled_train_graph(directory):
    """The text of the step cell's graph after the frontend's last pass (``*_validate_*``)."""
    env = dict(os.environ, MS_DEV_SAVE_GRAPHS="1", MS_DEV_SAVE_GRAPHS_PATH=str(directory))
    proc = subprocess.run([sys.executable, "-c", COMPILE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = glob.glob(os.path.join(str(directory), "*_validate_*.ir"))
    assert len(found) == 1, sorted(os.listdir(str(directory)))
    with open(found[0]) as f:
        return f.read()


def test_training_graph_has_no_float64_and_no_uniform_real(tmp_path):
    graph = compiled_train_graph(tmp_path)
    operators = set(re.findall(r"= (?:PrimFunc_)?([A-Z]\w*)\(", graph))
    # the graph is the whole step: lr from the schedule, forward with stochastic depth and
    # dropout (the counter-based generator of src/models/stochastic.py), backward, update,
    # overflow check, tallies
    assert {"Gather", "BitwiseXor", "FloorDiv", "AdamWeightDecay", "IsFinite", "LayerNormGrad",
            "AssignAdd"} <= operators, operators
    assert "UniformReal" not in operators
    # no kernel-state random op: its draws would restart in a resumed process
    assert not {"Dropout", "StandardNormal", "UniformInt"} & operators, operators
    # tensors only: MindSpore's own backward rules carry Python-float immediates (F64(...))
    float64 = [line.strip() for line in graph.splitlines()
               if "Tensor[Float64]" in line or "dtype=Float64" in line]
    assert not float64, float64[:5]
