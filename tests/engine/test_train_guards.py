"""Guards of a training run: the iteration/epoch keys, the checkpoint directory (another
run's files, the lock), non-finite tensors and diverging runs, SIGTERM."""
import os
import signal
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from src.engine.checkpoints import LOCK_NAME, CheckpointDirError, CheckpointManager, TrainState
from src.engine.trainer import TrainError, TrainInterrupted, Trainer, check_train_config
from src.utils.config import load_config
from tests.engine.test_trainer import tiny_training_objects
from tests.engine.train_helpers import (FakeBatches, FakeStepCell, pynative_mode,  # noqa: F401
                                        tiny_segformer)


def manager(tmp_path, *args, log=None):
    cfg = load_config("", [f"--checkpoint_path={tmp_path}", *args])
    return CheckpointManager(cfg, log=log if log is not None else (lambda m: None))


# ------------------------------------------------------------------- schedule keys --

@pytest.mark.parametrize("args, message", [
    (["--max_iters=100"], r"'epoch_size'=200 and 'max_iters'=100 are both set"),
    (["--epoch_size=0"], r"'epoch_size' and 'max_iters' are both 0"),
    (["--epoch_size=0", "--max_iters=-5"], r"'max_iters': expected an integer >= 0, got -5"),
    (["--save_checkpoint_steps=-1"], r"'save_checkpoint_steps': expected an integer >= 0"),
    (["--max_consecutive_overflow_steps=0"], r"'max_consecutive_overflow_steps': expected an "
                                             r"integer >= 1, got 0"),
])
def test_schedule_keys_are_checked_at_start_up(args, message):
    with pytest.raises(TrainError, match=message):
        check_train_config(load_config("", args))


def test_max_iters_run_ends_mid_epoch_with_its_checkpoints(tmp_path):
    """max_iters 5 at 2 steps per epoch: 3 epochs, the last one partial; step checkpoints
    every 2 iterations and at the last one; the lr schedule has exactly 5 entries."""
    cfg = load_config("", ["--epoch_size=0", "--max_iters=5", "--save_checkpoint_steps=2",
                           "--run_eval=False", "--train_log_interval=1", "--keep_checkpoint_max=2",
                           f"--checkpoint_path={tmp_path}"])
    check_train_config(cfg)

    lines = []
    data = FakeBatches(2)
    trainer = Trainer(cfg, tiny_segformer(), data, log=lines.append)
    assert len(trainer.lr_schedule) == 5 and trainer.epochs == 3
    trainer.step_cell = FakeStepCell([0.5] * 5, [False] * 5)
    state = trainer.fit()
    assert data.num_epochs == 3
    assert (state.global_step, state.epoch) == (5, 2)
    # iter_2 pruned (keep_checkpoint_max=2), iter_4 and the last one (5) kept
    assert sorted(os.listdir(tmp_path)) == ["segformer_mit_b0_iter_4.ckpt",
                                            "segformer_mit_b0_iter_5.ckpt"]
    assert "Epoch 3/3, step:1/2" in "\n".join(lines)


@pytest.mark.parametrize("every, expected", [(2, [2, 4, 5]), (0, [5])])
def test_max_iters_run_evaluates_every_eval_interval_iters_and_at_the_end(tmp_path, every, expected):
    """eval_interval_iters counts iterations (eval_interval, counting epochs, is not used by
    a max_iters run); 0 evaluates after the last iteration only."""
    cfg = load_config("", ["--epoch_size=0", "--max_iters=5", f"--eval_interval_iters={every}",
                           "--eval_interval=1", "--run_eval=True", "--save_checkpoint=False",
                           f"--checkpoint_path={tmp_path}"])
    check_train_config(cfg)

    evaluated = []

    def evaluate(net, cfg, rank, group, log, name):
        evaluated.append(trainer.state.global_step)
        return {"metric": 0.5, "metric_name": "mIoU"}

    trainer = Trainer(cfg, tiny_segformer(), FakeBatches(2), log=lambda line: None,
                      evaluate_fn=evaluate)
    trainer.step_cell = FakeStepCell([0.5] * 5, [False] * 5)
    trainer.fit()
    assert evaluated == expected


# ------------------------------------------------------------ checkpoint directory --

def test_new_run_refuses_another_runs_checkpoints_unless_resuming_or_overwriting(tmp_path):
    old = tmp_path / "segformer_mit_b0_3.ckpt"
    old.write_bytes(b"earlier run")
    with pytest.raises(CheckpointDirError, match=r"holds 1 checkpoint\(s\) of another run \(e.g. "
                       r"segformer_mit_b0_3.ckpt\); continue that run with --auto_resume=True, "
                       r"replace it with --overwrite_checkpoints=True"):
        manager(tmp_path).open(resuming=False)
    assert old.read_bytes() == b"earlier run" and not (tmp_path / LOCK_NAME).exists()

    resumed = manager(tmp_path)
    resumed.open(resuming=True)                     # --auto_resume: the files stay
    assert old.exists()
    resumed.close()

    lines = []
    fresh = manager(tmp_path, "--overwrite_checkpoints=True", log=lines.append)
    fresh.open(resuming=False)
    assert not old.exists()
    assert lines == [f"overwrite_checkpoints: removed 1 checkpoint(s) of an earlier run from {tmp_path}"]
    fresh.close()


def test_second_run_into_the_same_directory_fails_while_the_first_holds_the_lock(tmp_path):
    first = manager(tmp_path)
    first.open(resuming=False)
    with pytest.raises(CheckpointDirError, match=rf"checkpoint_path {tmp_path} is in use by another "
                       rf"training run \(lock .*{LOCK_NAME} held by process {os.getpid()}"):
        manager(tmp_path).open(resuming=True)
    first.close()
    assert not (tmp_path / LOCK_NAME).exists()

    # the lock of a process that is gone (SIGKILL) is stale: taken over, with a log line
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_NAME).write_text(f"{os.uname().nodename} {gone.pid}\n")
    lines = []
    second = manager(tmp_path, log=lines.append)
    second.open(resuming=True)
    assert lines[0].startswith(f"removed the stale lock {tmp_path / LOCK_NAME} of process {gone.pid}")
    second.close()


def test_a_non_finite_tensor_is_never_saved(tmp_path):
    cfg, net, opt, scaler = tiny_training_objects(0)
    param = net.get_parameters().__next__()
    value = param.asnumpy().copy()
    value.flat[3] = np.nan
    param.set_data(ms.Tensor(value))
    ckpt = manager(tmp_path)
    state = TrainState()
    state.global_step = 7
    with pytest.raises(CheckpointDirError, match=rf"not saving x.ckpt at global step 7: tensor "
                       rf"'{param.name}' holds 1 non-finite value\(s\) of {value.size}"):
        ckpt.save("x.ckpt", net, opt, scaler, state, 4)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------- divergence, signals --

def fake_trainer(tmp_path, losses, overflows, extra=(), on_step=None):
    cfg = load_config("", ["--epoch_size=2", "--train_log_interval=2", "--run_eval=False",
                           f"--checkpoint_path={tmp_path}", *extra])
    check_train_config(cfg)

    lines = []
    trainer = Trainer(cfg, tiny_segformer(), FakeBatches(len(losses) // 2), log=lines.append)
    trainer.step_cell = FakeStepCell(losses, overflows, on_step=on_step)
    return trainer, lines


def test_consecutive_overflowed_steps_stop_the_run_with_a_report(tmp_path):
    losses = [0.5, 0.4, 1e30, np.inf, np.nan, np.nan, 1e30, 0.1]
    overflows = [False, False, True, True, True, True, True, False]
    trainer, lines = fake_trainer(tmp_path, losses, overflows, ["--max_consecutive_overflow_steps=4",
                                                                "--save_checkpoint=False"])
    with pytest.raises(TrainError, match=r"stopped at epoch 2/2, step 2/4 \(global step 6/8\): 4 "
                       r"consecutive steps had non-finite \(inf/NaN\) gradients and were skipped "
                       r"\(max_consecutive_overflow_steps=4; 4 overflowed steps in all.*no checkpoint "
                       r"of this run was written"):
        trainer.fit()
    # epoch 1: its two overflowed steps are left out of the mean (no "mean loss nan")
    assert any(line.startswith("Epoch 1/2 done: mean loss 0.45, 2 overflowed step(s)")
               for line in lines), lines


def test_sigterm_says_where_the_run_stopped_and_what_to_resume_from(tmp_path):
    def on_step(step):
        # the signal arrives while step 3 runs: the run stops with 2 steps done
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer, _ = fake_trainer(tmp_path, [0.5] * 8, [False] * 8, ["--save_checkpoint_steps=2"],
                              on_step)
    with pytest.raises(TrainInterrupted, match=rf"interrupted by SIGTERM after epoch 1/2, step 2/4 "
                       rf"\(global step 2/8\); last checkpoint {tmp_path}/segformer_mit_b0_iter_2.ckpt: "
                       rf"resume with --auto_resume=True"):
        trainer.fit()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed again
