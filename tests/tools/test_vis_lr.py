"""tools/vis_lr.py: the plotted schedule is the closed form of each recipe (mmcv poly with
linear warmup for SegFormer, with the decode head at 10x; warmup + cosine for ViT), the
training-set size gives the iterations per epoch, the PNG decodes. (That the curve equals
the lr a real train.py run logs is checked in test_analyze_logs.py.)"""
import importlib.util
import math
import os

import numpy as np
import pytest
from PIL import Image

from src.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool("vis_lr")


def test_segformer_poly_warmup_and_head_multiplier():
    cfg = load_config(os.path.join(ROOT, "config", "segformer.b0.1024x1024.city.yaml"),
                      ["--epoch_size=3", "--max_iters=0", "--warmup_iters=4", "--poly_power=0.9", "--min_lr=1e-6"])
    curves, warmup = tool.lr_curves(cfg, steps_per_epoch=5)
    assert warmup == 4 and set(curves) == {"default (x1)", "custom_keys.head (x10)"}

    def mmcv(i, total=15, lr=6e-5, min_lr=1e-6, power=0.9, ratio=1e-6):
        regular = (lr - min_lr) * (1 - i / total) ** power + min_lr
        return regular * (1 - (1 - i / warmup) * (1 - ratio)) if i < warmup else regular

    expected = np.array([mmcv(i) for i in range(15)])
    np.testing.assert_allclose(curves["default (x1)"], expected, rtol=1e-6)
    np.testing.assert_allclose(curves["custom_keys.head (x10)"], 10 * expected, rtol=1e-6)


def test_vit_cosine_with_warmup_epochs():
    cfg = load_config(os.path.join(ROOT, "config", "vit_patch16_imagenet2012_config.yml"),
                      ["--epoch_size=10", "--warmup_epochs=2"])
    curves, warmup = tool.lr_curves(cfg, steps_per_epoch=3)
    (curve,) = curves.values()            # the seed: no lr_mult, one curve for all groups
    lr, total = 0.00355, 30
    expected = [lr * i / 6 if i < 6 else 0.5 * lr * (1 + math.cos(math.pi * (i - 6) / (total - 6)))
                for i in range(total)]
    assert warmup == 6
    np.testing.assert_allclose(curve, expected, rtol=1e-6, atol=1e-12)


def test_cli_counts_the_training_set_and_writes_png(tmp_path, capsys):
    data = str(tmp_path / "city")
    load_tool("make_demo_data").main(["--out", data, "--imagenet_out", str(tmp_path / "imnet"),
                                      "--num_train", "8", "--num_val", "1", "--height", "64",
                                      "--width", "128", "--imagenet_train_per_class", "1",
                                      "--imagenet_val_per_class", "1", "--imagenet_size", "32"])
    assert load_tool("convert_dataset").main([data]) == 0
    out = tmp_path / "lr.png"
    config = os.path.join(ROOT, "config", "segformer.b0.demo.yaml")
    # 8 images, batch 2 -> 4 iterations per epoch on one device, 2 per device on 2 devices
    assert tool.main([config, f"--data_path={data}", "--epoch_size=4", "--out", str(out),
                      "--window_size", "6*4"]) == 0
    printed = capsys.readouterr().out
    assert "4 epochs x 4 iterations = 16 iterations" in printed
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape == (400, 600) and image.std() > 10
    assert tool.main([config, f"--data_path={data}", "--epoch_size=4", "--num_devices=2",
                      "--out", str(out)]) == 0
    assert "4 epochs x 2 iterations = 8 iterations" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    config = os.path.join(ROOT, "config", "segformer.b0.demo.yaml")
    assert tool.main([config, f"--data_path={tmp_path / 'none'}", "--out", str(tmp_path / "a.png")]) == 1
    assert "give --steps_per_epoch" in capsys.readouterr().err
    assert tool.main([config, "--steps_per_epoch", "5", "--lr_schedule=step"]) == 1
    assert "'lr_schedule': 'step' is not one of" in capsys.readouterr().err
    assert tool.main([config, "--steps_per_epoch", "5", "--lr_shedule=poly"]) == 2
    assert "did you mean 'lr_schedule'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([config, "--steps_per_epoch", "5", "--window_size", "12x7"])
