"""The dataset registry: names checked at config load, modules that stand alone, the spec
(config over module), the label rule against mmseg's formula, and verify reporting every
problem of a split in one run."""
import ast
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from src.data import DataError, dataset_module, dataset_spec, list_samples, verify_split
from src.data.registry import MODULE_API
from src.data.segmentation import LabelRule
from src.utils.config import ConfigError, load_config
from src.utils.defaults import DATASET_NAMES
from tests.data.conftest import ROOT, cls_config, load_tool, seg_config

DATA_DIR = os.path.join(ROOT, "src", "data")
SHARED = {"listing", "sampling", "segmentation", "transforms", "verify"}


def test_unknown_dataset_name_is_a_config_error_naming_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        load_config(os.path.join(ROOT, "config", "segformer.b0.1024x1024.city.yaml"),
                    ["--dataset.name=cityscape"])
    for name in DATASET_NAMES:
        assert name in str(info.value)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "print_config.py"),
                           "config/segformer.b0.1024x1024.city.yaml", "--dataset.name=no_such"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "'dataset.name': 'no_such' is not one of cityscapes, ade20k, custom, imagenet" in proc.stderr


def _data_imports(path):
    """The src.data modules that ``path`` imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src.data"):
            if node.module == "src.data":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("src.data.")}
    return found


def test_dataset_modules_stand_alone_and_src_data_has_no_import_cycle():
    graph = {f[:-3]: _data_imports(os.path.join(DATA_DIR, f))
             for f in os.listdir(DATA_DIR) if f.endswith(".py") and f != "__init__.py"}
    for name in DATASET_NAMES:
        module = dataset_module(name)
        assert all(hasattr(module, attr) for attr in MODULE_API), name
        assert module.TASK in ("segmentation", "classification")
        assert graph[name] <= SHARED, f"{name} imports {graph[name] - SHARED}"

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join(stack + (node,))}"
        for dep in graph.get(node, ()):
            visit(dep, stack + (node,))
    for node in graph:
        visit(node, ())


def test_model_and_dataset_task_must_agree(demo_roots):
    with pytest.raises(DataError, match=r"model='segformer' needs a segmentation dataset "
                                        r"\(cityscapes, ade20k, custom\); dataset.name='imagenet'"):
        list_samples(seg_config(demo_roots[1], "--dataset.name=imagenet"), "train")
    with pytest.raises(DataError, match=r"model='vit' needs a classification dataset \(imagenet\)"):
        list_samples(cls_config(demo_roots[1], "--dataset.name=cityscapes"), "train")


def test_spec_takes_config_values_over_the_module_and_names_missing_keys(tmp_path):
    spec = dataset_spec(seg_config(str(tmp_path), "--dataset.name=ade20k", "--class_num=150",
                                   "--dataset.val_split=val2"))
    assert (spec.img_dir, spec.val_split, spec.train_split, spec.reduce_zero_label) == (
        "images", "val2", "training", True)
    assert spec.split_name("val") == "val2" and spec.split_name("test") == "test"
    assert len(spec.class_names) == 150 and spec.class_names[7] == "bed "
    with pytest.raises(DataError, match=r"dataset 'custom' needs dataset.img_dir \(the image folder"):
        dataset_spec(seg_config(str(tmp_path), "--dataset.name=custom", "--dataset.ann_dir=masks"))
    with pytest.raises(DataError, match="class_num=19 but dataset.class_names has 150 names "
                                        r"\(the 'ade20k' classes\)"):
        dataset_spec(seg_config(str(tmp_path), "--dataset.name=ade20k"))
    with pytest.raises(DataError, match=r"label_map entry 300: 1 must map an integer in \[0, 255\]"):
        dataset_spec(seg_config(str(tmp_path), "--dataset.label_map={300: 1}"))
    with pytest.raises(DataError, match=r"dataset.palette colour \[1, 2\] is not an \[R, G, B\]"):
        dataset_spec(seg_config(str(tmp_path), "--dataset.palette=[[1,2]]"))


def mmseg_load_annotations(raw, label_map=None, reduce_zero_label=False):
    """mmseg 0.x LoadAnnotations, step by step as written upstream."""
    gt = raw.copy()
    if label_map:
        copy = gt.copy()
        for old, new in label_map.items():
            gt[copy == old] = new
    if reduce_zero_label:
        gt[gt == 0] = 255
        gt = gt - 1
        gt[gt == 254] = 255
    return gt


@pytest.mark.parametrize("label_map,reduce", [(None, True), ({3: 0, 0: 3, 7: 255}, True),
                                              ({5: 1}, False), (None, False)])
def test_label_rule_is_mmseg_load_annotations(label_map, reduce):
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rule = LabelRule(256, 255, reduce_zero_label=reduce, label_map=label_map)
    np.testing.assert_array_equal(rule(raw, "x.png"), mmseg_load_annotations(raw, label_map, reduce))


def test_label_rule_errors_name_the_file_and_the_rule():
    raw = np.array([[0, 1, 150, 151, 255]], np.uint8)
    np.testing.assert_array_equal(LabelRule(151, 255, reduce_zero_label=True)(raw, "a.png"),
                                  [[255, 0, 149, 150, 255]])
    with pytest.raises(DataError, match=r"a.png: label values \[151\] outside 0..150 \(reduce_zero_label"):
        LabelRule(150, 255, reduce_zero_label=True)(raw, "a.png")
    with pytest.raises(DataError, match=r"b.png: label values \[150, 151\] outside \[0, 150\) and not "
                                        r"the ignore label 255"):
        LabelRule(150)(raw, "b.png")
    with pytest.raises(DataError, match=r"c.png: label values \[151\] become \[150\] through "
                                        r"dataset.label_map then reduce_zero_label"):
        LabelRule(150, reduce_zero_label=True, label_map={1: 2})(raw, "c.png")


def test_verify_reports_a_missing_label_and_a_corrupt_image_in_one_run(demo_roots, tmp_path, capsys):
    root = tmp_path / "city"
    shutil.copytree(demo_roots[0], root)
    images = sorted((root / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))
    unlabelled = images[0]
    label = str(unlabelled).replace("leftImg8bit", "gtFine", 1).replace(
        "_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    os.remove(label)
    images[1].write_bytes(images[1].read_bytes()[:200])  # truncated
    cfg = seg_config(str(root))
    problems = verify_split(cfg, "train")
    assert len(problems) == 2
    assert "1 image(s) of split 'train' have no label" in problems[0] and str(unlabelled) in problems[0]
    assert str(images[1]) in problems[1] and "corrupt or truncated image" in problems[1]
    with pytest.raises(DataError, match="have no label"):  # training refuses the same listing
        list_samples(cfg, "train")
    status = load_tool("verify_dataset").main([os.path.join(ROOT, "config", "segformer.b0.demo.yaml"),
                                              f"--data_path={root}", "--split=train"])
    out = capsys.readouterr().out
    assert status == 1 and "[train]" in out and "2 problem(s)" in out
    assert str(unlabelled) in out and str(images[1]) in out
