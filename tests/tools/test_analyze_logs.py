"""tools/analyze_logs.py on a REAL log: a short train.py run (SegFormer-B0, demo data,
2 epochs x 2 steps, an evaluation after each epoch) written by a subprocess.

Oracles: the learning rates in the log against the mmcv poly-with-warmup closed form; the
step costs / losses against the raw text matched by a plain regular expression here; the
epoch mean loss and the "new best mIoU" lines the trainer writes beside the parsed values;
the PNG decoded with PIL.
"""
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from src.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS, STEPS, WARMUP, LR = 2, 2, 2, 6.0e-4
TRAIN_ARGS = ["--config_path=config/segformer.b0.demo.yaml", "--mode=PYNATIVE",
              "--base_size=[64,128]", "--crop_size=[32,32]", "--eval_base_size=[32,64]",
              "--batch_size=2", f"--epoch_size={EPOCHS}", f"--warmup_iters={WARMUP}", f"--lr={LR}",
              "--train_log_interval=1", "--eval_interval=1", "--save_checkpoint=False",
              "--dataset_num_parallel_workers=1"]


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool("analyze_logs")


@pytest.fixture(scope="module")
def real_log(tmp_path_factory):
    """train.log of a real train.py run: 4 demo scenes (2 steps of batch 2 per epoch)."""
    base = tmp_path_factory.mktemp("analyze_logs")
    data, out = str(base / "city"), str(base / "run")
    load_tool("make_demo_data").main(["--out", data, "--imagenet_out", str(base / "imagenet"),
                                      "--seed", "3", "--num_train", str(2 * STEPS), "--num_val", "1",
                                      "--height", "64", "--width", "128",
                                      "--imagenet_train_per_class", "1",
                                      "--imagenet_val_per_class", "1", "--imagenet_size", "32"])
    assert load_tool("convert_dataset").main([data]) == 0
    result = subprocess.run([sys.executable, "train.py", *TRAIN_ARGS, f"--data_path={data}",
                             f"--output_dir={out}", f"--checkpoint_path={out}/ckpt"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return os.path.join(out, "train.log")


def mmcv_poly_warmup(i, total=EPOCHS * STEPS, warmup=WARMUP, lr=LR, ratio=1e-6):
    """mmcv PolyLrUpdaterHook(power=1, min_lr=0) with linear warmup, iteration i (0-based)."""
    regular = lr * (1 - i / total)
    return regular * (1 - (1 - i / warmup) * (1 - ratio)) if i < warmup else regular


def test_parses_steps_epochs_and_evaluations(real_log):
    log = tool.parse_log(real_log)
    text = open(real_log, encoding="utf-8").read()
    assert (log.model, log.backbone, log.epochs, log.steps_per_epoch) == ("segformer", "mit_b0", EPOCHS, STEPS)
    assert (log.rank, log.group_size, log.runs) == (0, 1, 1)
    assert [s["iteration"] for s in log.steps] == list(range(1, EPOCHS * STEPS + 1))
    # values the trainer printed, matched here by a plain expression
    raw = re.findall(r"loss:([0-9.e+-]+), .*step cost:(\d+)ms", text)
    assert [s["loss"] for s in log.steps] == [float(loss) for loss, _ in raw]
    assert [s["step_time"] for s in log.steps] == [int(ms) / 1000 for _, ms in raw]
    # the trainer's learning rates are the mmcv closed form (printed with 7 digits)
    assert np.allclose([s["lr"] for s in log.steps],
                       [mmcv_poly_warmup(i) for i in range(EPOCHS * STEPS)], rtol=1e-6, atol=0)
    # every step is logged: the epoch mean loss is the mean of its step losses
    for epoch in range(1, EPOCHS + 1):
        losses = [s["loss"] for s in log.steps if s["epoch"] == epoch]
        assert log.epoch_done[epoch]["mean_loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    # one evaluation per epoch; the best one agrees with the trainer's "best mIoU" line
    assert sorted(log.evals) == list(range(1, EPOCHS + 1))
    assert all(0.0 <= m["mIoU"] <= 1.0 and "aAcc" in m for m in log.evals.values())
    best = re.search(r"^best mIoU: ([0-9.]+) at epoch (\d+)$", text, re.M)
    best_epoch = max(log.evals, key=lambda e: log.evals[e]["mIoU"])
    assert (round(log.evals[best_epoch]["mIoU"], 6), best_epoch) == (float(best.group(1)), int(best.group(2)))


def test_vis_lr_plots_what_the_trainer_used(real_log):
    """tools/vis_lr.py's curve at iteration i = the lr train.py logged at iteration i."""
    cfg = load_config(os.path.join(ROOT, "config", "segformer.b0.demo.yaml"), TRAIN_ARGS[1:])
    curves, warmup = load_tool("vis_lr").lr_curves(cfg, STEPS)
    (curve,) = curves.values()          # head lr_mult 1 in the demo config: one curve
    logged = [(s["iteration"], s["lr"]) for s in tool.parse_log(real_log).steps]
    assert warmup == WARMUP
    assert np.allclose([lr for _, lr in logged], [curve[i - 1] for i, _ in logged], rtol=1e-6, atol=0)


def test_cal_train_time(real_log, capsys):
    text = open(real_log, encoding="utf-8").read()
    costs = [int(ms) / 1000 for ms in re.findall(r"step cost:(\d+)ms", text)]
    # lines 2, 4 (the first line of each epoch left out), each covering one step
    assert tool.main(["cal_train_time", real_log]) == 0
    out = capsys.readouterr().out
    expected_mean = (costs[1] + costs[3]) / 2
    assert f"average iter time: {expected_mean:.4f} s/iter" in out
    slow = 1 if costs[1] >= costs[3] else 2
    assert f"slowest epoch {slow}, average time is {max(costs[1], costs[3]):.4f} s/iter" in out
    assert "ETA: first logged" in out and f"iteration {EPOCHS * STEPS}/{EPOCHS * STEPS}" in out
    assert tool.main(["cal_train_time", real_log, "--include_outliers"]) == 0
    assert f"average iter time: {np.mean(costs):.4f} s/iter" in capsys.readouterr().out


def test_plot_curve_png(real_log, tmp_path, capsys):
    out = tmp_path / "curve.png"
    assert tool.main(["plot_curve", real_log, real_log, "--keys", "loss", "lr", "mIoU",
                      "--legend", "a", "b", "--out", str(out), "--window_size", "8*6"]) == 0
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape == (600, 800)           # 8x6 inches at 100 dpi
    assert image.std() > 10                    # axes and curves, not a blank canvas
    assert "wrote" in capsys.readouterr().out


def test_per_rank_logs_in_a_directory(real_log, tmp_path, capsys):
    """A distributed run's directory holds train_rank{R}.log; here two copies of the real
    log whose config line is set to ranks 0/2 and 1/2 (the only line that differs)."""
    text = open(real_log, encoding="utf-8").read()
    assert "rank 0/1" in text
    for rank in (1, 0):
        (tmp_path / f"train_rank{rank}.log").write_text(text.replace("rank 0/1", f"rank {rank}/2"))
    assert [os.path.basename(p) for p in tool.expand_logs([str(tmp_path)])] == \
        ["train_rank0.log", "train_rank1.log"]
    assert tool.main(["cal_train_time", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train_rank0.log (rank 0/2)" in out and "train_rank1.log (rank 1/2)" in out
    assert "-----2 ranks-----" in out and "spread 0.0000 s/iter" in out
    png = tmp_path / "ranks.png"
    assert tool.main(["plot_curve", str(tmp_path), "--keys", "loss", "--out", str(png)]) == 0
    assert png.stat().st_size > 0


def test_appended_and_resumed_runs(real_log, tmp_path):
    """train.log is appended to: a fresh run replaces the previous one, a resumed run
    continues it (built from the real log's lines: a run killed in epoch 2, then resumed)."""
    lines = open(real_log, encoding="utf-8").read().splitlines(keepends=True)
    twice = tmp_path / "twice.log"
    twice.write_text("".join(lines) * 2)
    log = tool.parse_log(str(twice))
    assert log.runs == 2 and len(log.steps) == EPOCHS * STEPS and sorted(log.evals) == [1, 2]

    epoch2 = next(i for i, line in enumerate(lines) if line.startswith("Epoch 2/2, step:1/2"))
    header = [line for line in lines[:epoch2]
              if line.startswith(("config:", "param group", "training "))]
    killed = lines[:epoch2 + 1]                                   # epoch 1 + one line of epoch 2
    resumed = (header[:-1]
               + ["resumed from ckpt/segformer_mit_b0_1.ckpt: epoch 1/2 done, global step 2, "
                  "next lr 3.000000e-04, loss_scale 1.0, best 0.0 (epoch 1)\n"]
               + header[-1:] + lines[epoch2:])
    path = tmp_path / "resumed.log"
    path.write_text("".join(killed + resumed))
    log = tool.parse_log(str(path))
    assert log.runs == 2
    assert [s["iteration"] for s in log.steps] == list(range(1, EPOCHS * STEPS + 1))
    assert sorted(log.evals) == [1, 2] and sorted(log.epoch_done) == [1, 2]


def test_clear_errors(real_log, tmp_path, capsys):
    assert tool.main(["plot_curve", real_log, "--keys", "top1", "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert f"key 'top1' not found in {real_log}" in err and "mIoU" in err
    assert tool.main(["plot_curve", real_log, "--keys", "accuracy"]) == 1
    assert "unknown key(s) ['accuracy']" in capsys.readouterr().err
    assert tool.main(["plot_curve", real_log, "--legend", "a", "b"]) == 1
    assert "--legend gives 2 names for 1 logs" in capsys.readouterr().err
    assert tool.main(["cal_train_time", str(tmp_path / "missing.log")]) == 1
    assert "log file not found" in capsys.readouterr().err
    assert tool.main(["cal_train_time", str(tmp_path)]) == 1
    assert "no train.log or train_rank*.log in directory" in capsys.readouterr().err
    other = tmp_path / "other.txt"
    other.write_text("just some notes\nnothing here looks like a training log\n")
    assert tool.main(["cal_train_time", str(other)]) == 1
    assert "no training step or evaluation lines" in capsys.readouterr().err
