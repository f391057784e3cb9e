"""The training loop on the demo data: loss goes down for every model family, a short
SegFormer-B0 run learns (mIoU far above chance), checkpoints/logs are as documented, and the
training state round-trips through a checkpoint."""
import os
import re

import numpy as np
import pytest
import mindspore as ms
from PIL import Image

from src.engine.amp import build_loss_scaler
from src.engine.optim import build_optimizer
from src.engine.checkpoints import (TrainState, find_resume_checkpoint, restore_training_state,
                                    training_state_dict)
from src.engine.trainer import TrainError, Trainer, check_train_config, train
from src.utils.checkpoint import load_checkpoint, save_checkpoint
from src.utils.config import load_config
from src.utils.logger import FileLogger
from tests.engine.train_helpers import (FakeBatches, FakeStepCell, demo_data,  # noqa: F401
                                        pynative_mode, seg_demo_args, tiny_segformer,
                                        vit_demo_args)

STEP_LINE = re.compile(r"^Epoch (\d+)/(\d+), step:(\d+)/(\d+), loss:(\S+), overflow:(True|False), "
                       r"loss_scale:(\S+), step cost:\d+ms, lr:(\S+), eta:\d+:\d\d:\d\d$")


def majority_class_miou(city):
    """mIoU of predicting the most frequent val class everywhere: IoU = its pixel share for
    that class, 0 for every other class present (the chance level to beat)."""
    counts = np.zeros(256, np.int64)
    for root, _, files in os.walk(os.path.join(city, "gtFine", "val")):
        for name in files:
            if name.endswith("_labelTrainIds.png"):
                counts += np.bincount(np.asarray(Image.open(os.path.join(root, name))).ravel(),
                                      minlength=256)
    valid = counts[:255]
    return valid.max() / valid.sum() / np.count_nonzero(valid)


@pytest.mark.slow
def test_short_segformer_b0_demo_training_learns_and_writes_documented_artefacts(tmp_path):
    city, _ = demo_data()
    out = str(tmp_path)
    cfg = load_config("config/segformer.b0.demo.yaml", seg_demo_args(city, out) + [
        "--lr=1e-3", "--warmup_iters=4", "--epoch_size=20", "--train_log_interval=2",
        "--eval_interval=10", "--save_checkpoint_epoch_interval=5", "--keep_checkpoint_max=2"])
    ms.set_context(mode=ms.GRAPH_MODE)  # what train.py's setup_runtime does for this config
    log = FileLogger(os.path.join(out, "train.log"))
    state = train(cfg, 0, 1, log)
    log.close()

    # learns: far above the majority-class chance level
    chance = majority_class_miou(city)
    assert state.best_metric > max(0.15, 3 * chance), (state.best_metric, chance)
    assert state.epoch == 20 and state.global_step == 80 and state.best_epoch in (10, 20)

    lines = open(os.path.join(out, "train.log")).read().splitlines()
    steps = [m.groups() for m in map(STEP_LINE.match, lines) if m]
    assert len(steps) == 20 * 2  # 4 steps per epoch, a line every 2
    assert all(s[1] == "20" and s[3] == "4" and s[5] == "False" for s in steps)
    epoch_loss = {int(m.group(1)): float(m.group(2)) for m in
                  map(re.compile(r"^Epoch (\d+)/20 done: mean loss (\S+),").match, lines) if m}
    assert epoch_loss[20] < 0.6 * epoch_loss[1]
    assert sum(line.startswith("===> mIoU:") for line in lines) == 2  # epochs 10 and 20

    # checkpoints: every 5 epochs, 2 kept, best by mIoU, no temporary files left
    ckpts = sorted(os.listdir(os.path.join(out, "ckpt")))
    assert ckpts == ["segformer_mit_b0_15.ckpt", "segformer_mit_b0_20.ckpt",
                     "segformer_mit_b0_best.ckpt"]
    best = load_checkpoint(os.path.join(out, "ckpt", "segformer_mit_b0_best.ckpt"))
    assert float(best["best_metric"].asnumpy()) == pytest.approx(state.best_metric)
    assert int(best["epoch"].asnumpy()) == state.best_epoch

    # eval.py reads a training checkpoint (optimiser and training state are skipped)
    from src.engine.networks import load_trained_net
    load_trained_net(cfg, os.path.join(out, "ckpt", "segformer_mit_b0_20.ckpt"), log=lambda m: None)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["segmenter", "vit"])
def test_loss_goes_down_on_demo_data(family, tmp_path):
    """Repeated steps on one real demo batch (through the real data pipeline and Trainer)."""
    from src.data import create_dataset
    from src.models import build_model

    city, imnet = demo_data()
    if family == "segmenter":
        cfg = load_config("config/segmenter.tiny.demo.yaml", seg_demo_args(city, str(tmp_path))
                          + ["--decoder_layers=1", "--lr=0.01"])
    else:
        cfg = load_config("config/vit.tiny.demo.yaml", vit_demo_args(imnet, str(tmp_path))
                          + ["--lr=1e-3", "--warmup_epochs=0"])
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(cfg.seed)
    data = create_dataset(cfg, "train")
    trainer = Trainer(cfg, build_model(cfg), data, log=lambda m: None)
    images, labels = next(data.create_tuple_iterator(num_epochs=1))
    losses = []
    for _ in range(8):
        loss, overflow, _ = trainer.step_cell(images, labels)
        assert not bool(overflow.asnumpy())
        losses.append(float(loss.asnumpy()))
    assert np.mean(losses[-2:]) < 0.7 * losses[0], losses


def tiny_training_objects(seed, **keys):
    ms.set_seed(seed)
    cfg = load_config("", ["--loss_scale_type=dynamic", "--loss_scale=512"]
                      + [f"--{k}={v}" for k, v in keys.items()])
    net = tiny_segformer()
    return cfg, net, build_optimizer(net, cfg), build_loss_scaler(cfg)


def test_training_state_round_trips_through_a_checkpoint(tmp_path):
    cfg, net, opt, scaler = tiny_training_objects(0)
    rng = np.random.default_rng(0)
    for p in opt.get_parameters():  # non-trivial weights and optimiser moments
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) if p.shape else
                             np.array(7, np.int32), p.dtype))
    scaler.scale_value.set_data(ms.Tensor(128.0, ms.float32))
    scaler.counter.set_data(ms.Tensor(3, ms.int32))
    state = TrainState()
    state.epoch, state.global_step, state.best_metric, state.best_epoch = 3, 30, 0.42, 2
    params, extra = training_state_dict(net, opt, scaler, state, steps_per_epoch=10)
    path = save_checkpoint(params, str(tmp_path / "segformer_mit_b0_3.ckpt"), extra=extra)

    _, net2, opt2, scaler2 = tiny_training_objects(1)
    restored, steps = restore_training_state(load_checkpoint(path), net2, opt2, scaler2, path)
    assert (restored.epoch, restored.global_step, restored.best_epoch, steps) == (3, 30, 2, 10)
    assert restored.best_metric == pytest.approx(0.42)
    assert float(scaler2.scale_value.asnumpy()) == 128.0 and int(scaler2.counter.asnumpy()) == 3
    for a, b in zip(opt.get_parameters(), opt2.get_parameters()):
        assert a.name == b.name
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=a.name)
    for a, b in zip(net.get_parameters(), net2.get_parameters()):  # incl. BatchNorm statistics
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=a.name)

    # weights-only checkpoints are refused with a pointer to --pretrained_ckpt_path
    weights_only = save_checkpoint(net, str(tmp_path / "weights.ckpt"))
    with pytest.raises(TrainError, match="not a training checkpoint.*pretrained_ckpt_path"):
        restore_training_state(load_checkpoint(weights_only), net2, opt2, scaler2, weights_only)
    # a checkpoint from another optimiser is refused, naming the missing state
    _, net3, opt3, scaler3 = tiny_training_objects(2, optimizer="sgd")
    with pytest.raises(TrainError, match="optimizer.momentum_buffer"):
        restore_training_state(load_checkpoint(path), net3, opt3, scaler3, path)


def test_auto_resume_picks_newest_readable_training_checkpoint(tmp_path):
    _, net, opt, scaler = tiny_training_objects(0)
    state = TrainState()
    older = None
    for epoch in (1, 2):
        state.epoch = epoch
        params, extra = training_state_dict(net, opt, scaler, state, 4)
        older = save_checkpoint(params, str(tmp_path / f"segformer_mit_b0_{epoch}.ckpt"), extra=extra)
    # a truncated newer file (disk full, copied half-way ...) and a killed write's temporary
    data = open(older, "rb").read()
    with open(tmp_path / "segformer_mit_b0_3.ckpt", "wb") as f:
        f.write(data[: len(data) // 2])
    with open(tmp_path / ".segformer_mit_b0_4.123.tmp.ckpt", "wb") as f:
        f.write(data)
    weights_only = save_checkpoint(net, str(tmp_path / "weights_only.ckpt"))
    now = os.path.getmtime(older)
    os.utime(tmp_path / "segformer_mit_b0_3.ckpt", (now + 10, now + 10))
    os.utime(tmp_path / ".segformer_mit_b0_4.123.tmp.ckpt", (now + 20, now + 20))
    os.utime(weights_only, (now + 30, now + 30))
    messages = []
    path, param_dict = find_resume_checkpoint(str(tmp_path), messages.append)
    assert os.path.basename(path) == "segformer_mit_b0_2.ckpt"
    assert int(param_dict["epoch"].asnumpy()) == 2
    assert any("weights_only.ckpt" in m and "no training state" in m for m in messages)
    assert any("segformer_mit_b0_3.ckpt" in m for m in messages)
    assert not any("tmp.ckpt" in m for m in messages)  # temporaries are never read


def test_host_reads_step_outputs_once_per_log_line_and_counts_every_overflow(tmp_path):
    """Losses and overflow flags stay on the device until the next log line (every
    train_log_interval steps and at the end of the epoch); an overflow between two log lines
    is still counted and its loss left out of the epoch mean."""
    losses = [0.9, 8.0, 0.7, 0.6, 0.5, 0.4, 0.3]      # step 2 overflows (its loss is junk)
    cfg = load_config("", ["--epoch_size=1", "--train_log_interval=3", "--run_eval=False",
                           "--save_checkpoint=False", f"--checkpoint_path={tmp_path}"])

    lines = []
    trainer = Trainer(cfg, tiny_segformer(), FakeBatches(len(losses)), log=lines.append)
    trainer.step_cell = FakeStepCell(losses, [i == 1 for i in range(len(losses))],
                                     [512.0] * len(losses))
    state = trainer.fit()
    assert trainer.step_cell.reads == [3, 6, 7]       # only at the log lines' steps
    steps = [m.groups() for m in map(STEP_LINE.match, lines) if m]
    assert [(s[2], s[4], s[5]) for s in steps] == [("3", "0.7", "False"), ("6", "0.4", "False"),
                                                   ("7", "0.3", "False")]
    assert state.overflow_steps == 1 and state.global_step == 7
    mean = np.mean([v for i, v in enumerate(losses) if i != 1])
    assert any(line.startswith(f"Epoch 1/1 done: mean loss {mean:.8g}, 1 overflowed step(s) "
                               "skipped (1 in all)") for line in lines), lines


@pytest.mark.parametrize("split", [[0.4], [0.25, 0.5], []])
def test_data_parallel_gradients_are_all_reduced_in_the_configured_fusion_groups(split):
    """The gradient reducer of a 2-rank run fuses the all-reduces as grad_fusion_split says:
    the parameters before the first split point in group 1, ... (the zoo ViT: 0.4)."""
    cfg = load_config("", [f"--grad_fusion_split={split}"])
    check_train_config(cfg)
    lines = []
    trainer = Trainer(cfg, tiny_segformer(), FakeBatches(1), rank_id=0, group_size=2,
                      log=lines.append)
    reducer = trainer.step_cell.train_step.grad_reducer
    count = len(trainer.optimizer.parameters)
    expected = [1 + sum(i >= int(f * count) for f in split) for i in range(count)]
    assert [p.comm_fusion for p in trainer.optimizer.parameters] == expected
    if split:
        assert reducer.split_fusion
        assert [op.attrs["fusion"] for op in reducer.op_list] == expected
    else:   # one fused all-reduce for every gradient
        assert not reducer.split_fusion
    assert any(line.startswith(f"gradient all-reduce: {len(split) + 1} fusion group(s)")
               for line in lines), lines


@pytest.mark.parametrize("bad", ["[0.5,0.4]", "[0.0]", "[1.0]", "[0.4,0.4]"])
def test_bad_gradient_fusion_split_is_a_clear_error(bad):
    with pytest.raises(TrainError, match=r"config key 'grad_fusion_split': expected increasing "
                                         r"fractions between 0 and 1 .*got \["):
        check_train_config(load_config("", [f"--grad_fusion_split={bad}"]))


@pytest.mark.slow
def test_a_training_run_builds_one_train_step_and_never_calls_the_scalers_unscale(monkeypatch,
                                                                                   tmp_path):
    """train.py's path (``train``), PYNATIVE, evaluating every epoch: one TrainStep and one
    loss scaler per run (evaluation builds no other), and the step never calls MindSpore's
    ``LossScaler.unscale``, whose compiled graph can read a freed scaler's scale in PYNATIVE
    mode (tools/repro/ms_jit_parameter_id_reuse.py, docs/known_issues.md)."""
    import mindspore.amp
    from src.engine import evaluate as evaluate_module
    from src.engine.train_step import TrainStep
    counts = {"TrainStep": 0, "scaler": 0, "unscale": 0, "evaluate": 0}

    def counting(key, function):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return function(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(TrainStep, "__init__", counting("TrainStep", TrainStep.__init__))
    for scaler in (mindspore.amp.StaticLossScaler, mindspore.amp.DynamicLossScaler):
        monkeypatch.setattr(scaler, "__init__", counting("scaler", scaler.__init__))
    monkeypatch.setattr(mindspore.amp, "_grad_unscale_map",
                        counting("unscale", mindspore.amp._grad_unscale_map))
    monkeypatch.setattr(evaluate_module, "evaluate", counting("evaluate", evaluate_module.evaluate))
    _, imnet = demo_data()
    cfg = load_config("config/vit.tiny.demo.yaml", vit_demo_args(imnet, str(tmp_path)) + [
        "--mode=PYNATIVE", "--epoch_size=2", "--eval_interval=1", "--warmup_epochs=0",
        "--loss_scale_type=dynamic", "--loss_scale=1024", "--autoaugment=none", "--mixup=0.0"])
    ms.set_context(mode=ms.PYNATIVE_MODE)   # what setup_runtime does for --mode=PYNATIVE
    state = train(cfg, 0, 1, log=lambda m: None)
    assert state.epoch == 2 and state.global_step == 2 * 4
    assert counts == {"TrainStep": 1, "scaler": 1, "unscale": 0, "evaluate": 2}


def test_each_step_draws_with_the_key_of_its_seed_and_global_step(tmp_path):
    """The trainer's step cell sets the dropout / stochastic-depth key of (seed, G) before
    global step G, on the device, and the trainer numbers the network's random layers in cell
    order: the draws of a step do not depend on what ran before it in this process (what
    makes a resumed run draw the same)."""
    from src.models import stochastic
    from tests.models.test_stochastic import numpy_step_key

    cfg = load_config("", ["--epoch_size=1", "--run_eval=False", "--save_checkpoint=False",
                           f"--checkpoint_path={tmp_path}", "--seed=123", "--loss_scale_type=none"])
    stochastic.set_step(0, 99)
    net = tiny_segformer(drop_path_rate=0.2)
    trainer = Trainer(cfg, net, FakeBatches(10), log=lambda m: None)
    layers = [cell for _, cell in net.cells_and_names()
              if isinstance(cell, stochastic.StochasticCell)]
    assert trainer.random_layers == len(layers) > 4
    assert [layer.stream for layer in layers] == list(range(len(layers)))
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((1, 3, 64, 64)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 4, (1, 64, 64)).astype(np.int32))
    trainer.step_cell.start_at(5)
    keys = []
    for _ in range(2):
        trainer.step_cell(images, labels)
        keys.append(stochastic.STEP_KEY.key.asnumpy().copy())
    np.testing.assert_array_equal(keys[0], numpy_step_key(123, 5))
    np.testing.assert_array_equal(keys[1], numpy_step_key(123, 6))
