"""Tiny datasets on disk, in the real layouts, written by the demo generator."""
import importlib.util
import os

import pytest

from src.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def demo_roots(tmp_path_factory):
    """(cityscapes_root, imagenet_root, ade20k_root): 6 train + 3 val scenes of 64x128,
    converted to trainIds; 4 classes x (5 train + 2 val) images of 32x32; 6 training + 3
    validation ADE20K-layout rooms, long side 64."""
    base = tmp_path_factory.mktemp("demo")
    city, imnet, ade = str(base / "city"), str(base / "imagenet"), str(base / "ade")
    load_tool("make_demo_data").main(["--out", city, "--imagenet_out", imnet, "--ade_out", ade,
                                      "--seed", "5", "--num_train", "6", "--num_val", "3",
                                      "--height", "64", "--width", "128", "--ade_num_train", "6",
                                      "--ade_num_val", "3", "--ade_size", "64",
                                      "--imagenet_train_per_class", "5",
                                      "--imagenet_val_per_class", "2", "--imagenet_size", "32"])
    assert load_tool("convert_dataset").main([city]) == 0
    return city, imnet, ade


def seg_config(root, *overrides):
    return load_config(os.path.join(ROOT, "config", "segformer.b0.demo.yaml"),
                       [f"--data_path={root}", "--base_size=[64,128]", "--crop_size=[48,48]",
                        "--eval_base_size=[32,64]", "--dataset_num_parallel_workers=1",
                        "--batch_size=2", *overrides])


def ade_config(root, *overrides):
    """The SegFormer-B0 ADE20K recipe shrunk to the demo rooms."""
    return load_config(os.path.join(ROOT, "config", "segformer.b0.512x512.ade.yaml"),
                       [f"--data_path={root}", "--base_size=[64,96]", "--crop_size=[48,48]",
                        "--eval_base_size=[48,64]", "--dataset_num_parallel_workers=1",
                        "--batch_size=2", *overrides])


def cls_config(root, *overrides):
    return load_config(os.path.join(ROOT, "config", "vit.tiny.demo.yaml"),
                       [f"--data_path={root}", "--train_image_size=32", "--eval_image_size=32",
                        "--dataset_num_parallel_workers=1", "--batch_size=4", "--eval_batch_size=4",
                        *overrides])
