"""tools/make_demo_data.py: exact Cityscapes/ADE20K/ImageNet layouts, determinism, labelIds
that agree with the polygons as cityscapesscripts rasterises them, learnable scenes."""
import filecmp
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "make_demo_data.py")
SMALL = ["--num_train", "4", "--num_val", "2", "--height", "64", "--width", "128",
         "--ade_num_train", "4", "--ade_num_val", "2", "--ade_size", "64",
         "--imagenet_train_per_class", "2", "--imagenet_val_per_class", "1", "--imagenet_size", "32"]
ADE_VALUES = {0, 1, 4, 6, 8, 9, 16, 23}  # other, wall, floor, ceiling, bed, windowpane, table, painting


def generate(out, seed, extra=()):
    """(cityscapes, imagenet, ade20k) roots; ADE20K goes next to --out by default."""
    subprocess.run([sys.executable, TOOL, "--out", str(out / "city"), "--imagenet_out", str(out / "imnet"),
                    "--seed", str(seed), *SMALL, *extra], check=True, capture_output=True)
    return out / "city", out / "imnet", out / "demo_ade20k"


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("gen")
    return generate(base / "a", 0), generate(base / "b", 0), generate(base / "c", 1)


def test_same_seed_same_bytes_other_seed_differs(two_runs):
    (city_a, imnet_a, ade_a), (city_b, imnet_b, ade_b), (city_c, _, _) = two_runs
    for a, b in ((city_a, city_b), (imnet_a, imnet_b), (ade_a, ade_b)):
        files = all_files(a)
        assert files == all_files(b) and files
        match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
        assert not mismatch and not errors
    differ = [f for f in all_files(city_a) if f.endswith(".png")
              and (city_a / f).read_bytes() != (city_c / f).read_bytes()]
    assert differ


def test_cityscapes_layout_and_names(two_runs):
    city = two_runs[0][0]
    pattern = re.compile(r"^(leftImg8bit|gtFine)/(train|val)/([a-z]+)/\3_\d{6}_\d{6}_"
                         r"(leftImg8bit\.png|gtFine_polygons\.json|gtFine_labelIds\.png)$")
    files = all_files(city)
    assert len(files) == 6 * 3
    for f in files:
        assert pattern.match(f.replace(os.sep, "/")), f
    for split, n in (("train", 4), ("val", 2)):
        images = [f for f in files if f.startswith(os.path.join("leftImg8bit", split))]
        assert len(images) == n
        for image in images:
            stem = image[len("leftImg8bit") + 1: -len("_leftImg8bit.png")]
            assert os.path.join("gtFine", stem + "_gtFine_polygons.json") in files
            assert os.path.join("gtFine", stem + "_gtFine_labelIds.png") in files
            assert Image.open(city / image).size == (128, 64) and Image.open(city / image).mode == "RGB"


def test_label_ids_png_equals_cityscapesscripts_rasterisation_of_the_json(two_runs):
    city = two_runs[0][0]
    jsons = sorted((city / "gtFine").rglob("*_gtFine_polygons.json"))
    seen_labels = set()
    for path in jsons:
        with open(path) as f:
            raw = json.load(f)
        assert set(raw) >= {"imgHeight", "imgWidth", "objects"}
        seen_labels |= {o["label"] for o in raw["objects"]}
        annotation = Annotation()
        annotation.fromJsonFile(str(path))
        expected = np.asarray(createLabelImage(annotation, "ids"))
        shipped = np.asarray(Image.open(str(path).replace("_polygons.json", "_labelIds.png")))
        np.testing.assert_array_equal(shipped, expected)
    assert seen_labels <= set(name2label)
    assert {"road", "sky", "building", "car", "person"} <= seen_labels


def test_scene_colours_predict_the_classes(two_runs):
    """Learnable: a nearest-mean-colour classifier fitted on the train images already
    labels most val pixels right."""
    city = two_runs[0][0]

    def pixels(split):
        xs, ys = [], []
        for img in sorted((city / "leftImg8bit" / split).rglob("*.png")):
            lab = str(img).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            xs.append(np.asarray(Image.open(img), np.float32).reshape(-1, 3))
            ys.append(np.asarray(Image.open(lab)).reshape(-1))
        return np.concatenate(xs), np.concatenate(ys)

    x, y = pixels("train")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    xv, yv = pixels("val")
    known = np.isin(yv, classes)
    pred = classes[((xv[known, None, :] - means) ** 2).sum(-1).argmin(1)]
    assert (pred == yv[known]).mean() > 0.6


def test_ade20k_layout_sizes_and_label_values(two_runs):
    ade = two_runs[0][2]
    files = all_files(ade)
    assert len(files) == 2 * (4 + 2)
    sizes = set()
    for split, prefix, n in (("training", "ADE_train", 4), ("validation", "ADE_val", 2)):
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            with Image.open(ade / "images" / split / (stem + ".jpg")) as im, \
                    Image.open(ade / "annotations" / split / (stem + ".png")) as lab:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert lab.format == "PNG" and lab.mode == "L" and lab.size == im.size
                assert max(im.size) == 64 and min(im.size) >= 38
                sizes.add(im.size)
                values = set(np.unique(np.asarray(lab)).tolist())
            assert values <= ADE_VALUES and 0 in values and len(values) >= 6
    assert len(sizes) > 1  # images differ in size, as ADE20K's do


def test_ade20k_rooms_are_learnable(two_runs):
    """A nearest-mean-colour classifier fitted on the training rooms labels most validation
    pixels of the 7 classes right (0 = other is ignored, as after reduce_zero_label)."""
    ade = two_runs[0][2]

    def pixels(split):
        xs, ys = [], []
        for img in sorted((ade / "images" / split).glob("*.jpg")):
            lab = ade / "annotations" / split / (img.stem + ".png")
            xs.append(np.asarray(Image.open(img), np.float32).reshape(-1, 3))
            ys.append(np.asarray(Image.open(lab)).reshape(-1))
        x, y = np.concatenate(xs), np.concatenate(ys)
        return x[y != 0], y[y != 0]

    x, y = pixels("training")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    xv, yv = pixels("validation")
    pred = classes[((xv[:, None, :] - means) ** 2).sum(-1).argmin(1)]
    assert (pred == yv).mean() > 0.6


def test_imagenet_layout(two_runs):
    imnet = two_runs[0][1]
    for split, per_class in (("train", 2), ("val", 1)):
        classes = sorted(os.listdir(imnet / split))
        assert len(classes) == 4 and all(re.match(r"^n\d{8}$", c) for c in classes)
        for c in classes:
            files = sorted(os.listdir(imnet / split / c))
            assert len(files) == per_class and all(f.endswith(".JPEG") for f in files)
            with Image.open(imnet / split / c / files[0]) as im:
                assert im.format == "JPEG" and im.size == (32, 32)


def test_bad_arguments_are_refused(tmp_path):
    r = subprocess.run([sys.executable, TOOL, "--out", str(tmp_path / "x"), "--num_train", "0"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--num_train must be >= 1" in r.stderr
    r = subprocess.run([sys.executable, TOOL, "--out", str(tmp_path / "x"), "--ade_size", "20"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--ade_size must be at least 48" in r.stderr
