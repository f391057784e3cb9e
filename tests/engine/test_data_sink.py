"""Data sinking (Ascend/GPU): several steps per device call, with what the host needs --
learning rate, loss tallies, overflow counts -- kept on the device.

MindSpore 2.10 refuses ``ms.data_sink`` on CPU, so these runs replace it with a stand-in that
keeps its contract: one callable per dataset, each call runs ``sink_size`` steps on the
dataset's batches in order (across epochs) and returns the last step's outputs only; the
trainer is told that CPU sinks too.
Stochastic depth and dropout are on: each step inside a sink derives its own key on the
device, so the sunk run draws the step-by-step run's masks.
"""
import mindspore as ms
import numpy as np
import pytest

from src.data import create_dataset
from src.engine.amp import build_loss_scaler
from src.engine.optim import build_optimizer
from src.engine import trainer as trainer_module
from src.engine.trainer import TrainError, Trainer, check_train_config, sink_plan
from src.engine.train_step import ScheduledTrainStep, TrainStep
from src.models.backends import load_backend
from src.utils.checkpoint import load_checkpoint
from src.utils.config import load_config
from tests.engine.train_helpers import demo_data, seg_demo_args, tiny_segformer


class RecordingDataSink:
    """``ms.data_sink``'s contract on CPU; records each creation."""

    def __init__(self):
        self.created, self.calls = [], 0

    def __call__(self, fn, dataset, sink_size=1, jit_config=None, input_signature=None):
        self.created.append((fn, sink_size, jit_config))
        iterator = dataset.create_tuple_iterator(num_epochs=-1)

        def batches():
            while True:       # the device queue runs on into the next epoch
                yield from iterator

        queue = batches()

        def sink_process():
            self.calls += 1
            out = None
            for _ in range(sink_size):
                out = fn(*next(queue))
            return out
        return sink_process


def cfg_for(tmp_path, *extra):
    city, _ = demo_data()
    cfg = load_config("config/segformer.b0.demo.yaml", seg_demo_args(city, str(tmp_path)) + [
        "--epoch_size=0", "--max_iters=12", "--save_checkpoint_steps=6", "--eval_interval_iters=4",
        "--run_eval=False", "--keep_checkpoint_max=0", "--warmup_iters=3", "--lr=1e-3",
        "--loss_scale_type=dynamic", "--loss_scale=1024", "--loss_scale_window=2",
        "--train_log_interval=3", *extra])
    check_train_config(cfg)
    return cfg


def run(cfg, resume=None):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(int(cfg.seed))
    lines = []
    # the SegFormer layer types at a few thousand parameters, stochastic depth and dropout on
    net = tiny_segformer(class_num=cfg.class_num, drop_path_rate=0.3)
    trainer = Trainer(cfg, net, create_dataset(cfg, "train"), log=lines.append)
    if resume:
        trainer.resume(resume)
    trainer.fit()
    return trainer, lines


def final_weights(cfg):
    params = load_checkpoint(f"{cfg.checkpoint_path}/segformer_mit_b0_iter_12.ckpt")
    return {name: value.asnumpy() for name, value in params.items()}


@pytest.mark.slow
def test_sunk_run_and_its_mid_epoch_resume_equal_the_step_by_step_run(tmp_path, monkeypatch):
    sink = RecordingDataSink()
    monkeypatch.setattr(ms, "data_sink", sink)
    # the stand-in sinks on this CPU too (the tiny net on the cpu backend, one compile per run)
    monkeypatch.setattr(trainer_module, "SINK_DEVICES", ("Ascend", "GPU", "CPU"))
    stepwise_cfg = cfg_for(tmp_path / "stepwise", "--dataset_sink_mode=False")
    _, stepwise_lines = run(stepwise_cfg)
    assert sink.created == []

    sunk_cfg = cfg_for(tmp_path / "sunk")
    trainer, lines = run(sunk_cfg)
    # 4 steps per epoch, checkpoints every 6 and evaluation every 4 iterations: sinks of 2
    assert [(fn, size) for fn, size, _ in sink.created] == [(trainer.step_cell, 2)]
    assert isinstance(sink.created[0][2], ms.JitConfig)
    assert sink.calls == 6
    assert "dataset sink: 2 steps per device call (sink_size -1; divides the steps per epoch " \
           "(4), save_checkpoint_steps (6), eval_interval_iters (4), max_iters (12)); log lines " \
           "and overflow checks between calls" in lines
    # log lines between device calls: at the end of the call that reaches a multiple of
    # train_log_interval (3), at checkpoints and evaluation points, at epoch ends
    steps = [line.split(",")[1] for line in lines if line.startswith("Epoch ") and "step:" in line]
    assert steps == [" step:4/4", " step:2/4", " step:4/4", " step:4/4"], lines
    expected = final_weights(stepwise_cfg)
    got = final_weights(sunk_cfg)
    assert sorted(got) == sorted(expected)
    assert [n for n in expected if not np.array_equal(expected[n], got[n])] == []
    means = [float(line.split("mean loss ")[1].split(",")[0]) for output in (stepwise_lines, lines)
             for line in output if line.startswith("Epoch 3/3 done")]
    assert means[0] == pytest.approx(means[1], rel=1e-6)

    # resumed from iteration 6 (epoch 2, step 2): the rest of epoch 2 step by step, epoch 3 sunk
    resumed_cfg = cfg_for(tmp_path / "resumed")
    sink.created, sink.calls = [], 0
    _, resumed_lines = run(resumed_cfg, f"{sunk_cfg.checkpoint_path}/segformer_mit_b0_iter_6.ckpt")
    assert "reading 2 batch(es) of epoch 2 without training, to continue at its step 3" \
        in resumed_lines
    assert len(sink.created) == 1 and sink.calls == 2
    got = final_weights(resumed_cfg)
    assert [n for n in expected if not np.array_equal(expected[n], got[n])] == []


def test_sink_size_follows_the_schedule_and_is_checked():
    def plan(*args):
        cfg = load_config("", ["--device_target=Ascend", *args])
        return sink_plan(cfg, 372, 160000 if cfg.max_iters else cfg.epoch_size * 372)

    # the zoo's default: one sink per epoch
    assert plan("--epoch_size=10", "--max_iters=0")[0] == 372
    # iterations: 372 steps per epoch and 16000-iteration checkpoints leave sinks of 4
    assert plan("--epoch_size=0", "--max_iters=160000", "--eval_interval_iters=16000",
                "--save_checkpoint_steps=16000")[0] == 4
    assert plan("--epoch_size=10", "--max_iters=0", "--sink_size=93")[0] == 93
    with pytest.raises(TrainError, match=r"config key 'sink_size'=100 must divide the steps per "
                       r"epoch \(372\): .*sink_size -1 picks the largest that does: 372"):
        plan("--epoch_size=10", "--max_iters=0", "--sink_size=100")
    assert plan("--epoch_size=10", "--max_iters=0", "--dataset_sink_mode=False") == (
        0, "dataset sink: off (dataset_sink_mode False), one device call per step")
    cpu = sink_plan(load_config("", ["--device_target=CPU"]), 372, 3720)
    assert cpu == (0, "dataset sink: MindSpore sinks data on Ascend and GPU only; on CPU one "
                      "device call per step")
    for bad in ("0", "-2"):
        with pytest.raises(TrainError, match=r"config key 'sink_size': expected -1"):
            check_train_config(load_config("", [f"--sink_size={bad}"]))


def test_tallies_count_what_the_steps_did():
    """The scheduled step's device-side tallies against the step outputs read one by one:
    the lr of each iteration from the schedule, losses of the updating steps summed,
    overflowed steps counted and their longest run kept across reads."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    cfg = load_config("", ["--loss_scale_type=dynamic", "--loss_scale=256"])
    net = tiny_segformer(drop_path_rate=0.0)
    net.set_train(True)
    opt = build_optimizer(net, cfg)
    schedule = np.array([1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3], np.float32)
    step = ScheduledTrainStep(TrainStep(net, load_backend("cpu").SegmentationCrossEntropy(255),
                                        opt, build_loss_scaler(cfg), device_target="CPU"),
                              schedule, seed=0)
    seen_lrs = []
    original = opt.construct

    def recording(grads, lr):
        seen_lrs.append(float(lr.asnumpy()))
        return original(grads, lr)
    opt.construct = recording
    rng = np.random.default_rng(0)
    labels = ms.Tensor(rng.integers(0, 4, (1, 32, 32)).astype(np.int32))
    clean = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    poisoned = clean.copy()
    poisoned[0, 0, 3, 3] = np.inf
    step.start_at(1)
    outputs = [step(ms.Tensor(x), labels) for x in (clean, poisoned, poisoned)]
    first = step.read_tallies()
    outputs += [step(ms.Tensor(x), labels) for x in (poisoned, clean)]
    second = step.read_tallies()
    losses = [float(o[0].asnumpy()) for o in outputs]
    flags = [bool(o[1].asnumpy()) for o in outputs]
    assert flags == [False, True, True, True, False]
    assert seen_lrs == pytest.approx([2e-3, 6e-3])      # iterations 1 and 5 updated
    assert int(step.global_step.asnumpy()) == 6
    assert (first.updated, first.overflowed, first.longest_overflow_run) == (1, 2, 2)
    assert first.loss_sum == pytest.approx(losses[0]) and first.last_overflow
    assert (second.updated, second.overflowed, second.longest_overflow_run) == (1, 1, 3)
    assert second.loss_sum == pytest.approx(losses[4]) and not second.last_overflow
    assert second.last_loss == pytest.approx(losses[4])
    assert second.last_scale == float(outputs[4][2].asnumpy())


@pytest.mark.parametrize("level", ["", "O1"])
def test_sink_compiles_with_the_jit_level(tmp_path, level):
    """GRAPH: the sunk step is compiled with the config's jit_level (a JitConfig; None would
    run it op by op)."""
    cfg = cfg_for(tmp_path, "--device_target=GPU", f"--jit_level={level}")
    trainer = Trainer(cfg, tiny_segformer(), create_dataset(cfg, "train"), log=lambda m: None)
    assert trainer.sink_size == 2
    assert isinstance(trainer.jit_config, ms.JitConfig)
    assert trainer.jit_config.jit_config_dict["jit_level"] == level
