"""tools/convert_dataset.py against cityscapesscripts' own createTrainIdLabelImgs."""
import glob
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAKE = os.path.join(ROOT, "tools", "make_demo_data.py")
CONVERT = os.path.join(ROOT, "tools", "convert_dataset.py")


def convert(root, *args):
    return subprocess.run([sys.executable, CONVERT, str(root), *args], capture_output=True, text=True)


def outputs(root):
    return sorted(glob.glob(os.path.join(str(root), "gtFine", "*", "*", "*_gtFine_labelTrainIds.png")))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "city"
    subprocess.run([sys.executable, MAKE, "--out", str(root), "--imagenet_out", "", "--num_train", "5",
                    "--num_val", "2", "--height", "64", "--width", "128", "--seed", "3"], check=True,
                   capture_output=True)
    return root


@pytest.fixture
def city(source, tmp_path):
    root = tmp_path / "city"
    shutil.copytree(source, root)
    return root


def test_pixels_identical_to_cityscapesscripts(source, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(source, ours)
    shutil.copytree(source, theirs)
    r = convert(ours, "--nproc", "2")
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, CITYSCAPES_DATASET=str(theirs))
    subprocess.run([sys.executable, "-m", "cityscapesscripts.preparation.createTrainIdLabelImgs"], env=env,
                   check=True, capture_output=True)
    mine, reference = outputs(ours), outputs(theirs)
    assert len(mine) == 7
    assert [os.path.relpath(p, ours) for p in mine] == [os.path.relpath(p, theirs) for p in reference]
    for a, b in zip(mine, reference):
        ia, ib = Image.open(a), Image.open(b)
        assert ia.mode == ib.mode == "L"
        np.testing.assert_array_equal(np.asarray(ia), np.asarray(ib))
    assert {int(v) for p in mine for v in np.unique(np.asarray(Image.open(p)))} <= set(range(19)) | {255}


def test_split_lists(city, tmp_path):
    out = tmp_path / "lists"
    r = convert(city, "--out_dir", str(out))
    assert r.returncode == 0, r.stderr
    for split, n in (("train", 5), ("val", 2)):
        lines = (out / f"{split}.txt").read_text().splitlines()
        assert len(lines) == n
        for line in lines:
            image, label = line.split(" ")
            assert image.startswith(f"leftImg8bit/{split}/") and label.startswith(f"gtFine/{split}/")
            assert os.path.isfile(city / image) and os.path.isfile(city / label)
            assert image[len("leftImg8bit/"): -len("_leftImg8bit.png")] == \
                label[len("gtFine/"): -len("_gtFine_labelTrainIds.png")]
    assert (city / "train.txt").exists() is False  # --out_dir honoured


def test_rerun_skips_up_to_date_and_redoes_changed(city):
    assert convert(city).returncode == 0
    files = outputs(city)
    before = {p: os.stat(p).st_mtime_ns for p in files}
    r = convert(city)
    assert r.returncode == 0 and "0 to convert, 7 up to date" in r.stdout
    assert {p: os.stat(p).st_mtime_ns for p in files} == before
    changed = sorted(glob.glob(str(city / "gtFine" / "val" / "*" / "*_polygons.json")))[0]
    later = time.time() + 5
    os.utime(changed, (later, later))
    r = convert(city)
    assert r.returncode == 0 and "1 to convert, 6 up to date" in r.stdout


def test_malformed_json_reported_others_converted(city):
    jsons = sorted(glob.glob(str(city / "gtFine" / "train" / "*" / "*_polygons.json")))
    with open(jsons[0], "w") as f:
        f.write("{ this is not json")
    with open(jsons[1]) as f:
        text = f.read()
    with open(jsons[1], "w") as f:
        f.write(text.replace('"label": "sky"', '"label": "flying saucer"'))
    r = convert(city, "--nproc", "2")
    assert r.returncode == 1
    assert "2 of 7 annotation files failed" in r.stderr
    assert jsons[0] in r.stderr and jsons[1] in r.stderr
    assert "JSONDecodeError" in r.stderr and "flying saucer" in r.stderr
    assert len(outputs(city)) == 5
    assert not glob.glob(str(city / "gtFine" / "*" / "*" / "*.partial.png"))
    train_list = (city / "train.txt").read_text()
    assert os.path.basename(jsons[0]).replace("_gtFine_polygons.json", "") not in train_list


def test_missing_root_and_layout(tmp_path):
    r = convert(tmp_path / "nope")
    assert r.returncode != 0 and "dataset root not found" in r.stderr
    (tmp_path / "empty" / "gtFine").mkdir(parents=True)
    r = convert(tmp_path / "empty")
    assert r.returncode != 0 and "no *_gtFine_polygons.json files" in r.stderr
