"""Kill real training processes with SIGKILL (during a checkpoint write, then mid-epoch),
resume with --auto_resume, and compare with an uninterrupted run of the same config:
same losses before the kill (same seed), and after resuming the same epoch/step
positions with the same learning rate and loss scale, and the same final state bit for bit
(the cpu kernel backend, GRAPH; tests/engine/test_exact_resume.py: the reference one)."""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from src.engine.checkpoints import LOCK_NAME
from src.utils.checkpoint import TMP_SUFFIX, load_checkpoint
from tests.engine.train_helpers import ROOT, demo_data, seg_demo_args

STEP_LINE = re.compile(r"^Epoch (\d+)/3, step:(\d+)/4, loss:(\S+), overflow:(\S+), "
                       r"loss_scale:(\S+), step cost:\d+ms, lr:(\S+), eta:\S+$")


def train_args(city, out):
    # dynamic loss scale with a window of 3 clean steps: the scale doubles during the run, so
    # the logged scale shows whether the scale and its counter were restored.
    # Stochastic depth and the head's dropout are on: their draws are a function of (seed,
    # global step, layer) (src/models/stochastic.py), also when the two processes compete for
    # the cores (MindSpore 2.10's CPU Dropout kernel drew different masks then).
    return [sys.executable, os.path.join(ROOT, "train.py"),
            "--config_path=config/segformer.b0.demo.yaml", *seg_demo_args(city, out),
            "--epoch_size=3", "--warmup_iters=3", "--lr=1e-3", "--run_eval=False",
            "--save_checkpoint_epoch_interval=1", "--keep_checkpoint_max=5",
            "--train_log_interval=1", "--loss_scale_type=dynamic", "--loss_scale=1024",
            "--loss_scale_window=3", "--drop_path_rate=0.1", "--decoder_dropout=0.1"]


def start(args, out, extra=()):
    os.makedirs(out, exist_ok=True)
    console = open(os.path.join(out, "console.txt"), "ab")
    return subprocess.Popen(list(args) + list(extra), cwd=ROOT, stdout=console,
                            stderr=subprocess.STDOUT)


def steps_in(log_text):
    """{(epoch, step): (loss, overflow, loss_scale, lr)} from the seed-format lines."""
    return {(int(m[1]), int(m[2])): m.groups()[2:] for m in
            map(STEP_LINE.match, log_text.splitlines()) if m}


def read(path):
    return open(path).read() if os.path.exists(path) else ""


def wait_until(proc, condition, what, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        if proc.poll() is not None:
            pytest.fail(f"training exited (code {proc.returncode}) before {what}")
        time.sleep(0.001)
    proc.kill()
    pytest.fail(f"timeout waiting for {what}")


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_and_mid_epoch_then_resume(tmp_path):
    city, _ = demo_data()
    ref_dir, run_dir = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    ckpt_dir = os.path.join(run_dir, "ckpt")
    log_path = os.path.join(run_dir, "train.log")

    # 1. the run that is killed while writing the epoch-2 checkpoint
    proc = start(train_args(city, run_dir), run_dir)

    def epoch2_write_started():
        names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
        return any(n.startswith(".segformer_mit_b0_2.") and n.endswith(TMP_SUFFIX)
                   or n == "segformer_mit_b0_2.ckpt" for n in names)

    wait_until(proc, epoch2_write_started, "the epoch-2 checkpoint write")
    proc.kill()
    proc.wait()
    names = sorted(n for n in os.listdir(ckpt_dir) if n != LOCK_NAME)  # the lock a kill leaves
    caught_mid_write = "segformer_mit_b0_2.ckpt" not in names
    if caught_mid_write:  # the partial file exists only under its temporary name
        assert names[0].endswith(TMP_SUFFIX) and names[1:] == ["segformer_mit_b0_1.ckpt"], names
    first_part = steps_in(read(log_path))

    # meanwhile: the uninterrupted reference run
    ref = start(train_args(city, ref_dir), ref_dir)

    # 2. resume; killed again in the middle of epoch 3
    proc = start(train_args(city, run_dir), run_dir, ["--auto_resume=True"])
    wait_until(proc, lambda: (3, 2) in steps_in(read(log_path)), "epoch 3 step 2")
    proc.kill()
    proc.wait()
    log_after_second = read(log_path)
    resumed_from = re.findall(r"resumed from (\S+): epoch (\d+)/3 done, global step (\d+)",
                              log_after_second)
    expected_epoch = 1 if caught_mid_write else 2
    assert resumed_from[0][0].endswith(f"segformer_mit_b0_{expected_epoch}.ckpt")
    assert resumed_from[0][1:] == (str(expected_epoch), str(4 * expected_epoch))
    if caught_mid_write:
        assert "removed the partial checkpoint .segformer_mit_b0_2." in log_after_second

    # 3. resume again: from the epoch-2 checkpoint written by the second process
    proc = start(train_args(city, run_dir), run_dir, ["--auto_resume=True"])
    assert proc.wait(timeout=300) == 0, read(os.path.join(run_dir, "console.txt"))[-3000:]
    assert ref.wait(timeout=300) == 0, read(os.path.join(ref_dir, "console.txt"))[-3000:]
    log = read(log_path)
    assert re.findall(r"resumed from \S+: epoch (\d+)/3 done", log)[1] == "2"
    assert log.rstrip().endswith("all train process done")

    reference = steps_in(read(os.path.join(ref_dir, "train.log")))
    assert len(reference) == 12
    # same seed and config: identical losses (and everything else) before the first kill
    for key, value in first_part.items():
        assert value == reference[key], key
    assert len(first_part) >= 8  # epochs 1 and 2 ran before the kill
    # every step the resumed processes ran sits at the uninterrupted run's position, with
    # its learning rate and loss scale (the scale doubles every 3 clean steps: restored
    # scale *and* counter)
    resumed_text = log[log.index("resumed from"):]
    resumed_lines = [m.groups() for m in map(STEP_LINE.match, resumed_text.splitlines()) if m]
    assert resumed_lines[0][:2] == (str(expected_epoch + 1), "1")
    for epoch, step, _, overflow, scale, lr in resumed_lines:
        _, ref_overflow, ref_scale, ref_lr = reference[(int(epoch), int(step))]
        assert (lr, scale, overflow) == (ref_lr, ref_scale, ref_overflow), (epoch, step)

    # final checkpoints of both runs: same counters, optimiser step continued across resumes,
    # and (dropout and stochastic depth drawn per (seed, step, layer)) the same tensors, bit
    # for bit, after two kills
    finals = []
    for run in (ref_dir, run_dir):
        final = load_checkpoint(os.path.join(run, "ckpt", "segformer_mit_b0_3.ckpt"))
        assert int(final["epoch"].asnumpy()) == 3
        assert int(final["global_step"].asnumpy()) == 12
        assert int(final["optimizer.step"].asnumpy()) == 12
        assert float(final["loss_scale"].asnumpy()) == float(reference[(3, 4)][2]) * 2  # doubled at step 12
        finals.append({name: value.asnumpy() for name, value in final.items()})
    assert sorted(finals[0]) == sorted(finals[1])
    assert [n for n in finals[0] if not np.array_equal(finals[0][n], finals[1][n])] == []
    assert not [n for n in os.listdir(ckpt_dir) if n.endswith(TMP_SUFFIX)]
    print(f"killed during the checkpoint write: {caught_mid_write}")
