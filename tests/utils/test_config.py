"""Config rules: __BASE__ inheritance, CLI > YAML > defaults, typed overrides, errors."""
import glob
import os
import subprocess
import sys

import pytest

from src.utils.config import ConfigError, load_config
from src.utils.defaults import DEFAULTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "config")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_b2_config_without_cli_flags_selects_b2_backbone_and_weights():
    # The MindSpore zoo let argparse defaults beat the YAML: the B2 config trained B0.
    cfg = load_config(os.path.join(CONFIG_DIR, "segformer.b2.1024x1024.city.yaml"))
    assert cfg.backbone == "mit_b2"
    assert cfg.pretrained_ckpt_path == "./pretrained/ms_pretrained_b2.ckpt"
    assert DEFAULTS["backbone"] == "mit_b0"  # the default really is different
    # inherited from segformer.base.yaml
    assert cfg.crop_size == [1024, 1024] and cfg.eval_mode == "slide"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIG_DIR, "*.y*ml"))))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.config_path == path
    assert cfg.model in ("segformer", "segmenter", "vit")


# ADE20K recipes, as read from NVlabs local_configs/segformer/B*/segformer.b*.ade.160k.py and
# rstrudel/segmenter segm/config.yml + segm/data/config/ade20k.py (anchors.md section 6).


@pytest.mark.parametrize("variant,crop", [("b0", 512), ("b1", 512), ("b2", 512), ("b3", 512),
                                          ("b4", 512), ("b5", 640)])
def test_segformer_ade20k_configs_are_the_nvlabs_recipe(variant, crop):
    cfg = load_config(os.path.join(CONFIG_DIR, f"segformer.{variant}.{crop}x{crop}.ade.yaml"))
    assert (cfg.model, cfg.backbone, cfg.class_num, cfg.dataset.name) == (
        "segformer", f"mit_{variant}", 150, "ade20k")
    assert (cfg.base_size, cfg.ratio_range, cfg.crop_size) == ([crop, 2048], [0.5, 2.0], [crop, crop])
    assert (cfg.cat_max_ratio, cfg.flip_prob, cfg.photometric_distortion) == (0.75, 0.5, True)
    assert (cfg.eval_mode, cfg.eval_base_size, cfg.eval_size_divisor, cfg.eval_scales, cfg.eval_flip) == (
        "whole", [crop, 2048], 32, [1.0], False)
    assert (cfg.optimizer, cfg.lr, cfg.betas, cfg.weight_decay) == ("adamw", 6e-5, [0.9, 0.999], 0.01)
    assert cfg.paramwise.custom_keys == {"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0},
                                         "head": {"lr_mult": 10.0}}
    assert (cfg.lr_schedule, cfg.poly_power, cfg.min_lr, cfg.warmup_iters, cfg.warmup_ratio) == (
        "poly", 1.0, 0.0, 1500, 1e-6)
    assert cfg.batch_size * 8 == 16  # 2 images per device x 8
    assert (cfg.max_iters, cfg.epoch_size, cfg.eval_interval_iters, cfg.save_checkpoint_steps) == (
        160000, 0, 16000, 16000)  # NVlabs schedule_160k, by iteration


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_segmenter_ade20k_configs_are_the_official_recipe(size):
    cfg = load_config(os.path.join(CONFIG_DIR, f"segmenter.{size}.mask.512x512.ade.yaml"))
    assert (cfg.model, cfg.backbone, cfg.decoder, cfg.class_num, cfg.dataset.name) == (
        "segmenter", f"vit_{size}_patch16_384", "mask_transformer", 150, "ade20k")
    assert (cfg.base_size, cfg.ratio_range, cfg.crop_size, cfg.cat_max_ratio) == (
        [512, 2048], [0.5, 2.0], [512, 512], 0.75)
    assert (cfg.eval_mode, cfg.eval_base_size, cfg.eval_crop_size, cfg.eval_stride) == (
        "slide", [512, 2048], [512, 512], [512, 512])
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay) == (
        "sgd", 0.001, 0.9, True, 0.0)
    assert cfg.paramwise.custom_keys == {}
    assert (cfg.lr_schedule, cfg.poly_power, cfg.min_lr, cfg.warmup_iters) == ("poly", 0.9, 1e-5, 0)
    assert (cfg.epoch_size, cfg.batch_size * 8, cfg.eval_interval) == (64, 8, 2)


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    path = write(tmp_path, "a.yaml", "batch_size: 8\nlr: 0.5\n")
    cfg = load_config(path, ["--batch_size=3"])
    assert cfg.batch_size == 3                       # CLI beats YAML
    assert cfg.lr == 0.5                             # YAML beats default
    assert cfg.epoch_size == DEFAULTS["epoch_size"]  # default when nobody sets it


def test_cli_values_are_typed_from_the_yaml_value(tmp_path):
    path = write(tmp_path, "a.yaml", "crop_size: [64, 128]\n")
    cfg = load_config(path, ["--batch_size", "5", "--lr=1e-3", "--run_eval=false",
                             "--crop_size=[32,48]", "--eval_scales=0.5,1.0,1.5",
                             "--backbone", "mit_b3", "--dataset.name=custom",
                             "--eval_flip", "--decoder_dim=512"])
    assert cfg.batch_size == 5 and isinstance(cfg.batch_size, int)
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)
    assert cfg.run_eval is False
    assert cfg.crop_size == [32, 48]
    assert cfg.eval_scales == [0.5, 1.0, 1.5] and all(isinstance(s, float) for s in cfg.eval_scales)
    assert cfg.backbone == "mit_b3"
    assert cfg.eval_flip is True          # bare boolean flag
    assert cfg.decoder_dim == 512         # default None: typed by YAML rules
    assert cfg.dataset.name == "custom"
    assert cfg.dataset.img_dir == DEFAULTS["dataset"]["img_dir"]  # siblings kept


def test_config_path_can_come_from_the_cli():
    cfg = load_config("", ["--config_path", os.path.join(CONFIG_DIR, "segformer.b4.1024x1024.city.yaml")])
    assert cfg.backbone == "mit_b4"


def test_base_inheritance_is_a_deep_merge_and_later_bases_win(tmp_path):
    write(tmp_path, "base1.yaml", "batch_size: 1\ndataset:\n  name: custom\n  img_dir: imgs\n")
    write(tmp_path, "base2.yaml", "batch_size: 2\nlr: 0.1\n")
    os.makedirs(tmp_path / "sub")
    child = write(tmp_path, "sub/child.yaml",
                  "__BASE__: [../base1.yaml, ../base2.yaml]\ndataset:\n  img_dir: images\n")
    cfg = load_config(child)
    assert cfg.batch_size == 2 and cfg.lr == 0.1
    assert cfg.dataset.name == "custom" and cfg.dataset.img_dir == "images"
    assert cfg.dataset.ann_dir == DEFAULTS["dataset"]["ann_dir"]


def test_unknown_yaml_key_names_the_key_the_file_and_the_closest_valid_key(tmp_path):
    path = write(tmp_path, "a.yaml", "bakcbone: mit_b1\n")
    with pytest.raises(ConfigError, match=r"'bakcbone'.*a\.yaml.*did you mean 'backbone'"):
        load_config(path)


def test_unknown_key_in_a_base_file_names_that_base_file(tmp_path):
    write(tmp_path, "base.yaml", "dataset:\n  img_suffx: .png\n")
    child = write(tmp_path, "child.yaml", "__BASE__: base.yaml\n")
    with pytest.raises(ConfigError, match=r"'dataset.img_suffx'.*base\.yaml.*'dataset.img_suffix'"):
        load_config(child)


def test_unknown_cli_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"'eval_intervall'.*command line.*'eval_interval'"):
        load_config("", ["--eval_intervall=3"])
    with pytest.raises(ConfigError, match=r"'dataset.nmae'"):
        load_config("", ["--dataset.nmae=x"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def test_missing_base_file_is_named(tmp_path):
    child = write(tmp_path, "child.yaml", "__BASE__: [gone.yaml]\n")
    with pytest.raises(ConfigError, match="config file not found: .*gone.yaml"):
        load_config(child)


def test_base_cycle_is_reported_with_the_chain(tmp_path):
    write(tmp_path, "a.yaml", "__BASE__: b.yaml\n")
    write(tmp_path, "b.yaml", "__BASE__: a.yaml\n")
    with pytest.raises(ConfigError, match=r"__BASE__ cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(str(tmp_path / "a.yaml"))


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "batch_size: 2\nlr: [0.1, 0.2\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error in .*bad\.yaml:\d+"):
        load_config(path)
    path = write(tmp_path, "bad2.yaml", "batch_size: 2\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"bad2\.yaml:2:"):
        load_config(path)


def test_wrongly_typed_values_are_errors(tmp_path):
    path = write(tmp_path, "a.yaml", "batch_size: two\n")
    with pytest.raises(ConfigError, match=r"'batch_size'.*expects int.*'two'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"--batch_size: expected int, got 'x'"):
        load_config("", ["--batch_size=x"])
    with pytest.raises(ConfigError, match=r"--run_eval: expected a boolean"):
        load_config("", ["--run_eval=maybe"])
    with pytest.raises(ConfigError, match=r"--lr needs a value"):
        load_config("", ["--lr"])
    path = write(tmp_path, "b.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"top level must be a mapping"):
        load_config(path)


def test_positional_garbage_on_the_cli_is_an_error():
    with pytest.raises(ConfigError, match="unexpected command-line argument 'oops'"):
        load_config("", ["oops"])


def test_print_config_tool_prints_the_resolved_config_and_fails_on_bad_keys():
    cfg_path = os.path.join(CONFIG_DIR, "segformer.b2.1024x1024.city.yaml")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "print_config.py"), cfg_path,
                          "--batch_size=4"], capture_output=True, text=True, check=True).stdout
    assert "backbone: mit_b2" in out and "batch_size: 4" in out
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "print_config.py"), cfg_path,
                          "--bach_size=4"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "did you mean 'batch_size'" in bad.stderr
