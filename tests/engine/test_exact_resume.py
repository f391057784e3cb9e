"""Exact resume: a real training run SIGKILLed in the middle of an epoch, after a step
checkpoint, and resumed with --auto_resume ends with the same weights, optimiser moments and
loss scale as an uninterrupted run, bit for bit.

The run is scheduled by iterations (max_iters 10 at 4 steps per epoch: a partial last
epoch), writes a step checkpoint every 3 iterations, and resumes from iteration 3 (step 3
of epoch 1), so the resumed process must start the sampler in the middle of an epoch.
Stochastic depth (drop_path_rate 0.3) and the head's channel dropout (0.3) are on: their
draws are a function of (seed, global step, layer) (src/models/stochastic.py), so the
resumed process draws the masks the uninterrupted one drew (MindSpore's own random kernels
keep a draw counter that a new process restarts).
Augmentation (crop, flip, scale, photometric) is on.
"""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from src.utils.checkpoint import load_checkpoint
from tests.engine.train_helpers import ROOT, demo_data, seg_demo_args


def train_cmd(city, out, kernel_backend, mode):
    args = [arg for arg in seg_demo_args(city, out) if not arg.startswith("--mode=")]
    return [sys.executable, os.path.join(ROOT, "train.py"),
            "--config_path=config/segformer.b0.demo.yaml", *args, f"--mode={mode}",
            "--epoch_size=0", "--max_iters=10", "--save_checkpoint_steps=3",
            "--warmup_iters=3", "--lr=1e-3", "--run_eval=False", "--keep_checkpoint_max=0",
            "--train_log_interval=1", "--loss_scale_type=dynamic", "--loss_scale=1024",
            "--loss_scale_window=2", "--drop_path_rate=0.3", "--decoder_dropout=0.3",
            f"--kernel_backend={kernel_backend}"]


def start(cmd, out, extra=()):
    os.makedirs(out, exist_ok=True)
    console = open(os.path.join(out, "console.txt"), "ab")
    return subprocess.Popen(cmd + list(extra), cwd=ROOT, stdout=console, stderr=subprocess.STDOUT)


def read(path):
    return open(path).read() if os.path.exists(path) else ""


@pytest.mark.slow
# the reference backend in GRAPH: Ascend's graph (tests/engine/test_resume.py resumes the cpu
# backend bit for bit; PYNATIVE draws the same keys: test_trainer.py, test_stochastic.py)
@pytest.mark.parametrize("kernel_backend, mode", [("reference", "GRAPH")])
def test_killed_mid_epoch_after_step_checkpoint_resumes_bit_for_bit(tmp_path, kernel_backend, mode):
    city, _ = demo_data()
    ref_dir, run_dir = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    ref = start(train_cmd(city, ref_dir, kernel_backend, mode), ref_dir)
    proc = start(train_cmd(city, run_dir, kernel_backend, mode), run_dir)
    log_path = os.path.join(run_dir, "train.log")
    end = time.time() + 300
    # global step 5 = epoch 2, step 1: after the iteration-3 checkpoint, in the middle of
    # an epoch, before the iteration-6 checkpoint
    while "Epoch 2/3, step:1/4" not in read(log_path):
        assert proc.poll() is None and time.time() < end, read(os.path.join(run_dir, "console.txt"))
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    ckpt_dir = os.path.join(run_dir, "ckpt")
    assert sorted(os.listdir(ckpt_dir)) == [".train.lock", "segformer_mit_b0_iter_3.ckpt"]

    resumed = start(train_cmd(city, run_dir, kernel_backend, mode), run_dir, ["--auto_resume=True"])
    assert resumed.wait(timeout=300) == 0, read(os.path.join(run_dir, "console.txt"))[-3000:]
    assert ref.wait(timeout=300) == 0, read(os.path.join(ref_dir, "console.txt"))[-3000:]
    log = read(log_path)
    assert re.search(r"removed the stale lock .*\.train\.lock", log)
    assert re.search(r"resumed from \S+iter_3\.ckpt: epoch 0/3 done, global step 3,", log)
    resumed_lines = log[log.index("resumed from"):].splitlines()
    assert [line for line in resumed_lines if line.startswith("Epoch 1/3, step:")][0].startswith(
        "Epoch 1/3, step:4/4")

    final = [load_checkpoint(os.path.join(d, "ckpt", "segformer_mit_b0_iter_10.ckpt"))
             for d in (ref_dir, run_dir)]
    assert sorted(final[0]) == sorted(final[1])
    assert int(final[0]["global_step"].asnumpy()) == 10
    assert int(final[0]["optimizer.step"].asnumpy()) == 10
    different = [name for name in final[0]
                 if not np.array_equal(final[0][name].asnumpy(), final[1][name].asnumpy())]
    assert not different, different
    assert not os.path.exists(os.path.join(ckpt_dir, ".train.lock"))  # released at the end
