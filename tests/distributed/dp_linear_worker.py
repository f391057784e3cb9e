"""Tiny data-parallel training run, launched by msrun (2 ranks) or directly (1 process).

Trains a 1-layer linear regression (``nn.Dense(4, 1)``, MSE) with plain SGD for a few
steps. Under msrun every rank takes a disjoint shard of the samples and gradients are
averaged with ``nn.DistributedGradReducer`` over MindSpore's collective backend (CPU
here, HCCL/NCCL elsewhere) -- exactly what src/engine does for the real models.

    python dp_linear_worker.py OUT_DIR [--single]

Writes OUT_DIR/rank<r>.npz with the final weights, the sample ids this rank saw, and the
result of ``src.engine.evaluate.all_reduce_counts`` (the metric-count reduction of
distributed evaluation) on counts too large for float32 or int32.
``--single``: no init(), one process trains on shard 0 of 2 only (the "one rank
trained on one shard" comparison).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import mindspore as ms  # noqa: E402
from mindspore import nn  # noqa: E402
from mindspore.communication import get_group_size, get_rank, init  # noqa: E402
from mindspore.context import ParallelMode  # noqa: E402

NUM_SAMPLES = 32
BATCH_PER_RANK = 4
STEPS = 4
LR = 0.1


def make_data():
    """Deterministic inputs/targets shared by every process (and the numpy oracle)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((NUM_SAMPLES, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32) + 0.7).astype(np.float32)
    return x, y


def rank_counts(rank):
    """Per-rank confusion-matrix-like counts, beyond 2**24 and 2**31."""
    return np.array([[0, 1, 2 ** 24 + 1 + rank], [2 ** 33 + 7 * rank, 4095 + rank, 123]], np.int64)


def initial_weights():
    return np.full((1, 4), 0.1, np.float32), np.zeros((1,), np.float32)


def main(out_dir, single):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    if single:
        rank, group_size, shards = 0, 1, 2
    else:
        init()
        rank, group_size = get_rank(), get_group_size()
        shards = group_size
        ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL,
                                     gradients_mean=True, device_num=group_size)
    x, y = make_data()
    ids = np.arange(NUM_SAMPLES)[rank::shards]      # disjoint shard per rank

    w0, b0 = initial_weights()
    net = nn.Dense(4, 1)
    net.weight.set_data(ms.Tensor(w0))
    net.bias.set_data(ms.Tensor(b0))
    opt = nn.SGD(net.trainable_params(), learning_rate=LR)
    loss_fn = nn.MSELoss()

    def forward(xb, yb):
        return loss_fn(net(xb), yb)

    grad_fn = ms.value_and_grad(forward, None, opt.parameters)
    reducer = nn.DistributedGradReducer(opt.parameters, True, group_size) if group_size > 1 else None
    seen = []
    for step in range(STEPS):
        batch = ids[step * BATCH_PER_RANK:(step + 1) * BATCH_PER_RANK]
        seen.extend(batch.tolist())
        _, grads = grad_fn(ms.Tensor(x[batch]), ms.Tensor(y[batch]))
        if reducer is not None:
            grads = reducer(grads)
        opt(grads)
    counts = None
    if reducer is not None:
        from src.engine.evaluate import all_reduce_counts
        counts = all_reduce_counts(rank_counts(rank), group_size)
    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, f"rank{rank}{'_single' if single else ''}.npz"),
             weight=net.weight.asnumpy(), bias=net.bias.asnumpy(), seen=np.array(seen),
             group_size=group_size, counts=counts if counts is not None else np.zeros(0))


if __name__ == "__main__":
    main(sys.argv[1], "--single" in sys.argv[2:])
