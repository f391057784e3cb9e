"""ADE20K end to end on generated ADE20K-layout rooms with the SegFormer-B0 ADE20K config
(shrunk to CPU size): train.py trains and writes a checkpoint, eval.py's mIoU equals mmseg's
rules (reduce_zero_label, per-class IoU over the split, classes absent from prediction and
label left out) computed here from infer.py's gray PNGs, which have the images' sizes and
class indices in [0, 150)."""
import importlib.util
import math
import os
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "config", "segformer.b0.512x512.ade.yaml")
NUM_CLASSES = 150


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_ade_{name}", os.path.join(REPO, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mmseg_miou(preds, raw_labels, num_classes=NUM_CLASSES, ignore_index=255):
    """mmseg 0.x: LoadAnnotations(reduce_zero_label=True), then intersect_and_union per image
    (histograms over [0, num_classes - 1]) summed over the split, IoU = intersect / union,
    mIoU = nanmean (a class with union 0 gives nan and is left out)."""
    total_intersect = np.zeros(num_classes)
    total_union = np.zeros(num_classes)
    for pred, raw in zip(preds, raw_labels):
        label = raw.astype(np.int64)
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
        mask = label != ignore_index
        pred, label = pred.astype(np.int64)[mask], label[mask]
        intersect = pred[pred == label]
        hist = lambda x: np.histogram(x, bins=num_classes, range=(0, num_classes - 1))[0]  # noqa: E731
        area_intersect, area_pred, area_label = hist(intersect), hist(pred), hist(label)
        total_intersect += area_intersect
        total_union += area_pred + area_label - area_intersect
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(total_intersect / total_union))


@pytest.mark.slow
def test_train_eval_infer_on_ade20k_layout(tmp_path, capsys):
    ade = str(tmp_path / "ade")
    load_script("tools/make_demo_data.py").main([
        "--out", str(tmp_path / "city"), "--imagenet_out", "", "--ade_out", ade, "--seed", "7",
        "--num_train", "1", "--num_val", "1", "--height", "64", "--width", "128",
        "--ade_num_train", "2", "--ade_num_val", "2", "--ade_size", "80"])
    out, ckpt_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    common = [f"--config_path={CONFIG}", f"--data_path={ade}", "--device_target=CPU", "--mode=PYNATIVE",
              "--amp_level=O0", "--loss_scale_type=none", "--dataset_num_parallel_workers=1",
              f"--output_dir={out}", "--eval_base_size=[64,128]"]

    load_script("train.py").main(common + [
        "--load_ckpt=False", "--base_size=[64,128]", "--crop_size=[64,64]", "--batch_size=2",
        "--epoch_size=1", "--max_iters=0", "--warmup_iters=0", "--lr=1e-3", "--run_eval=False", "--train_log_interval=1",
        "--save_checkpoint_epoch_interval=1", f"--checkpoint_path={ckpt_dir}"])
    train_log = open(os.path.join(out, "train.log")).read()
    losses = [float(x) for x in re.findall(r"^Epoch 1/1, step:1/1, loss:(\S+),", train_log, re.M)]
    assert len(losses) == 1 and math.isfinite(losses[0])
    ckpt = os.path.join(ckpt_dir, "segformer_mit_b0_1.ckpt")
    assert os.path.isfile(ckpt)

    load_script("eval.py").main(common + [f"--eval_ckpt_path={ckpt}"])
    eval_log = open(os.path.join(out, "eval.log")).read()
    assert "eval dataset size:2" in eval_log
    ours = float(re.search(r"^===> mIoU: (\S+), ckpt: segformer_mit_b0_1.ckpt$", eval_log, re.M).group(1))

    infer_dir = str(tmp_path / "infer")
    load_script("infer.py").main(common + [f"--infer_ckpt_path={ckpt}", f"--infer_output_path={infer_dir}",
                                           "--infer_save_color_img=False", "--infer_save_overlap_img=False"])
    capsys.readouterr()
    preds, labels = [], []
    for image in sorted(os.listdir(os.path.join(ade, "images", "validation"))):
        stem = image[: -len(".jpg")]
        with Image.open(os.path.join(ade, "images", "validation", image)) as im, \
                Image.open(os.path.join(infer_dir, stem + "_gray.png")) as gray:
            assert gray.size == im.size
            pred = np.asarray(gray)
        assert pred.min() >= 0 and pred.max() < NUM_CLASSES
        preds.append(pred)
        labels.append(np.asarray(Image.open(os.path.join(ade, "annotations", "validation", stem + ".png"))))
    assert len(preds) == 2 and len({p.shape for p in preds}) > 1  # the rooms differ in size
    assert not math.isnan(ours)
    assert ours == pytest.approx(mmseg_miou(preds, labels), rel=1e-12)

    # the benchmark's submission format: the same predictions + 1, named as the images, zipped
    sub_dir = str(tmp_path / "submission")
    load_script("infer.py").main(common + [f"--infer_ckpt_path={ckpt}", f"--infer_output_path={sub_dir}",
                                           "--format_only=True"])
    stems = sorted(name[: -len(".jpg")] for name in os.listdir(os.path.join(ade, "images", "validation")))
    assert sorted(os.listdir(sub_dir)) == sorted([s + ".png" for s in stems] + ["ade20k_submission.zip"])
    for stem, pred in zip(stems, preds):
        submitted = np.asarray(Image.open(os.path.join(sub_dir, stem + ".png")))
        np.testing.assert_array_equal(submitted, pred.astype(np.int32) + 1)
    with zipfile.ZipFile(os.path.join(sub_dir, "ade20k_submission.zip")) as archive:
        assert sorted(archive.namelist()) == [s + ".png" for s in stems]
