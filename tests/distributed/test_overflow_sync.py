"""Ranks skip an overflowed step together (src/engine/train_step.py).

A real 2-rank msrun job on CPU (tests/distributed/overflow_worker.py): only rank 1's
gradients are non-finite at one step. Both ranks must report the overflow, skip the update
and halve the loss scale, and end with bit-identical weights.
"""
import os

import numpy as np
import pytest

from tests.distributed.launch_utils import run_msrun_two_ranks

pytestmark = pytest.mark.slow   # subprocesses: a real 2-rank msrun job

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "overflow_worker.py")
STEPS, BAD_STEP, LOSS_SCALE = 3, 1, 1024.0


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overflow")
    out, logs = tmp / "out", tmp / "logs"
    run_msrun_two_ranks(WORKER, out, logs, timeout=240)
    return [np.load(out / f"rank{r}.npz") for r in (0, 1)]


@pytest.mark.parametrize("phase", ["register", "graph"])
def test_one_ranks_overflow_skips_the_step_on_every_rank(ranks, phase):
    r0, r1 = ({key[len(phase) + 1:]: r[key] for key in r.files if key.startswith(phase + "_")}
              for r in ranks)
    expected = [step == BAD_STEP for step in range(STEPS)]
    assert r0["overflow"].tolist() == r1["overflow"].tolist() == expected
    assert r0["scale"].tolist() == r1["scale"].tolist() == [LOSS_SCALE, LOSS_SCALE / 2, LOSS_SCALE / 2]
    assert int(r0["opt_steps"]) == int(r1["opt_steps"]) == STEPS - 1
    assert np.isfinite(r0["weight"]).all() and np.isfinite(r0["bias"]).all()
    np.testing.assert_array_equal(r0["weight"], r1["weight"])
    np.testing.assert_array_equal(r0["bias"], r1["bias"])
