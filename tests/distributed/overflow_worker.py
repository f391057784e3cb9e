"""Two msrun ranks run ``TrainStep`` where only rank 1 overflows at one step.

    python overflow_worker.py OUT_DIR

A linear classifier (``nn.Dense(4, 3)``, the repo's SGD, dynamic loss scale) trains on the
same clean batch on both ranks, except at step ``BAD_STEP``, where rank 1's batch holds an
inf, so only rank 1's own gradients are non-finite. Two phases:

* ``register`` (PYNATIVE): ``ms.amp.all_finite`` answers as the float-status register of
  Ascend 910A does -- from this rank's own forward/backward, before the gradient all-reduce --
  so only rank 1 reports the overflow locally. On CPU the inf would otherwise reach rank 0
  through the averaged gradients and hide a missing overflow reduction.
* ``graph`` (GRAPH, MindSpore's own ``all_finite``): the compiled step with the overflow
  all-reduce runs on the CPU collective backend.

Writes OUT_DIR/rank<r>.npz: per phase the final weights, the loss scale after each step,
the overflow flag of each step and the optimiser's step count.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import mindspore as ms  # noqa: E402
from mindspore import nn  # noqa: E402
from mindspore.communication import get_group_size, get_rank, init  # noqa: E402
from mindspore.context import ParallelMode  # noqa: E402

from src.engine.amp import build_loss_scaler  # noqa: E402
from src.engine.loss import ClassificationCrossEntropy  # noqa: E402
from src.engine.optim import build_optimizer  # noqa: E402
from src.engine.train_step import TrainStep  # noqa: E402
from src.utils.config import load_config  # noqa: E402

STEPS = 3
BAD_STEP = 1
LOSS_SCALE = 1024.0
CLEAN = np.array([[0.5, -1.0, 2.0, 0.1], [1.5, 0.3, -0.7, 0.2]], np.float32)
LABELS = np.array([0, 1], np.int32)


def batch(rank, step):
    x = CLEAN.copy()
    if rank == 1 and step == BAD_STEP:
        x[0, 1] = np.inf
    return x


class LocalStatus:
    """Emulates the float-status register: the finiteness of this rank's own gradients, read
    by the grad reducer's wrapper before the all-reduce, is what ``all_finite`` reports."""

    def __init__(self):
        self.finite = True

    def wrap(self, reducer):
        status = self

        class RecordingReducer(nn.Cell):
            def __init__(self):
                super().__init__()
                self.reducer = reducer

            def construct(self, grads):
                status.finite = all(np.isfinite(g.asnumpy()).all() for g in grads)
                return self.reducer(grads)
        return RecordingReducer()

    def all_finite(self, grads):
        return ms.Tensor(self.finite)


def train(rank, group_size, local_status=None):
    ms.set_seed(0)
    cfg = load_config("", ["--loss_scale_type=dynamic", f"--loss_scale={LOSS_SCALE}",
                           "--loss_scale_window=1000", "--optimizer=sgd", "--lr=0.1"])
    net = nn.Dense(4, 3)
    net.weight.set_data(ms.Tensor(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)))
    net.bias.set_data(ms.Tensor(np.zeros(3, np.float32)))
    opt = build_optimizer(net, cfg)
    scaler = build_loss_scaler(cfg)
    reducer = nn.DistributedGradReducer(opt.parameters, True, group_size)
    if local_status is not None:
        reducer = local_status.wrap(reducer)
    step = TrainStep(net, ClassificationCrossEntropy(), opt, scaler, grad_reducer=reducer,
                     device_target="CPU")
    overflows, scales = [], []
    for i in range(STEPS):
        _, overflow, _ = step(ms.Tensor(batch(rank, i)), ms.Tensor(LABELS), ms.Tensor(0.1, ms.float32))
        overflows.append(bool(overflow.asnumpy()))
        scales.append(float(scaler.scale_value.asnumpy()))
    return {"weight": net.weight.asnumpy(), "bias": net.bias.asnumpy(), "overflow": overflows,
            "scale": scales, "opt_steps": int(opt.step.asnumpy())}


def main(out_dir):
    ms.set_device("CPU")
    init()
    rank, group_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=group_size)
    results = {}
    ms.set_context(mode=ms.PYNATIVE_MODE)
    status = LocalStatus()
    real_all_finite, ms.amp.all_finite = ms.amp.all_finite, status.all_finite
    try:
        results["register"] = train(rank, group_size, status)
    finally:
        ms.amp.all_finite = real_all_finite
    ms.set_context(mode=ms.GRAPH_MODE)
    results["graph"] = train(rank, group_size)
    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"),
             **{f"{phase}_{key}": np.array(value) for phase, r in results.items()
                for key, value in r.items()})


if __name__ == "__main__":
    main(sys.argv[1])
