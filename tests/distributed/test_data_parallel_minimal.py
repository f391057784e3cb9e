"""MindSpore's collective backend really does data parallelism on this machine.

Two ranks started by ``msrun`` (127.0.0.1 only) train a linear regression on disjoint
shards with ``nn.DistributedGradReducer``. Oracle: plain numpy gradient descent on the
union of both ranks' batches (equal batch sizes, so the mean of the per-rank mean-loss
gradients equals the gradient of the mean loss over the union).
"""
import importlib.util
import os
import sys

import numpy as np
import pytest

from tests.distributed.launch_utils import python_env, run, run_msrun_two_ranks

pytestmark = pytest.mark.slow   # subprocesses: a real 2-rank msrun job

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dp_linear_worker.py")


def _worker_module():
    spec = importlib.util.spec_from_file_location("dp_linear_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numpy_sgd(batches_per_step, x, y, w, b, lr):
    """SGD on MSE(x @ w.T + b, y), one update per list of sample ids."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    for ids in batches_per_step:
        err = x[ids] @ w.T + b - y[ids]                 # [n, 1]
        w = w - lr * (2.0 / len(ids)) * (err.T @ x[ids])
        b = b - lr * (2.0 / len(ids)) * err.sum(axis=0)
    return w, b


def test_two_ranks_average_gradients_over_disjoint_shards(tmp_path):
    wk = _worker_module()
    out, logs = tmp_path / "out", tmp_path / "logs"
    run_msrun_two_ranks(WORKER, out, logs, timeout=120)
    single = run([sys.executable, WORKER, str(out), "--single"], python_env(), timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]

    r0, r1, s0 = (np.load(out / name) for name in ("rank0.npz", "rank1.npz", "rank0_single.npz"))
    assert int(r0["group_size"]) == 2 and int(r1["group_size"]) == 2
    # each rank saw its own half of the samples, none twice, none shared
    assert set(r0["seen"]).isdisjoint(r1["seen"])
    assert len(set(r0["seen"])) == len(r0["seen"]) == wk.STEPS * wk.BATCH_PER_RANK
    # after training on different data both ranks hold bit-identical weights
    np.testing.assert_array_equal(r0["weight"], r1["weight"])
    np.testing.assert_array_equal(r0["bias"], r1["bias"])

    # distributed evaluation's count reduction is exact beyond float32/int32 ranges
    np.testing.assert_array_equal(r0["counts"], wk.rank_counts(0) + wk.rank_counts(1))
    np.testing.assert_array_equal(r1["counts"], r0["counts"])

    x, y = wk.make_data()
    w0, b0 = wk.initial_weights()
    k = wk.BATCH_PER_RANK
    union = [np.concatenate([r0["seen"][s * k:(s + 1) * k], r1["seen"][s * k:(s + 1) * k]])
             for s in range(wk.STEPS)]
    w_dp, b_dp = numpy_sgd(union, x, y, w0, b0, wk.LR)
    np.testing.assert_allclose(r0["weight"], w_dp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r0["bias"], b_dp, rtol=1e-5, atol=1e-6)

    # one process on shard 0 alone follows the shard-only trajectory, not the union one
    shard0 = [s0["seen"][s * k:(s + 1) * k] for s in range(wk.STEPS)]
    np.testing.assert_array_equal(s0["seen"], r0["seen"])
    w_one, b_one = numpy_sgd(shard0, x, y, w0, b0, wk.LR)
    np.testing.assert_allclose(s0["weight"], w_one, rtol=1e-5, atol=1e-6)
    assert np.abs(s0["weight"] - r0["weight"]).max() > 1e-2
