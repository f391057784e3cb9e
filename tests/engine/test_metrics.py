"""Metrics against independent oracles: cityscapesscripts' evalPixelLevelSemanticLabeling
for the confusion-matrix scores, a brute-force loop for top-k."""
import copy
import math

import numpy as np
import pytest
from PIL import Image

from src.engine.metrics import ConfusionMatrix, segmentation_scores, topk_correct
from src.data.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES


def cityscapes_evaluator(monkeypatch):
    """The real evaluator module. It calls np.in1d, gone in numpy 2.4: alias it here
    (only for the test) rather than patching the package."""
    if not hasattr(np, "in1d"):
        monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    args = copy.copy(ev.args)
    args.evalInstLevelScore = False  # needs *_instanceIds.png; pixel-level only here
    args.evalPixelAccuracy = True
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.bold = args.nocol = ""
    return ev, args


def train_to_label_ids():
    """trainId -> Cityscapes id, and the ids that are ignored in evaluation."""
    from cityscapesscripts.helpers.labels import labels
    table = {l.trainId: l.id for l in labels if 0 <= l.trainId < 255 and not l.ignoreInEval}
    ignored = [l.id for l in labels if l.ignoreInEval and l.id >= 0]
    return np.array([table[t] for t in range(19)], dtype=np.uint8), ignored


def write_pair(tmp_path, i, pred_train, gt_train, rng):
    lut, ignored = train_to_label_ids()
    gt_ids = np.where(gt_train == 255, rng.choice(ignored, size=gt_train.shape),
                      lut[np.minimum(gt_train, 18)]).astype(np.uint8)
    pred_path = tmp_path / f"pred_{i}.png"
    gt_path = tmp_path / f"gt_{i}_gtFine_labelIds.png"
    Image.fromarray(lut[pred_train]).save(pred_path)
    Image.fromarray(gt_ids).save(gt_path)
    return str(pred_path), str(gt_path)


def test_miou_equals_cityscapesscripts(tmp_path, monkeypatch):
    ev, args = cityscapes_evaluator(monkeypatch)
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(19, ignore_label=255)
    preds, gts = [], []
    for i, (h, w) in enumerate([(37, 53), (64, 48), (21, 90)]):
        # GT uses classes 0..14 only (15..18 absent), with ignored regions.
        gt = rng.integers(0, 15, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.2] = 255
        # Prediction: mostly right, some noise over 0..16 (15, 16: false positives only);
        # class 17 is predicted only where the GT is ignored (must stay NaN).
        pred = np.where(rng.random((h, w)) < 0.6, np.minimum(gt, 18),
                        rng.integers(0, 17, (h, w))).astype(np.uint8)
        pred[gt == 255] = np.where(rng.random(int((gt == 255).sum())) < 0.5, 17, 3)
        cm.update(pred, gt)
        p, g = write_pair(tmp_path, i, pred, gt, rng)
        preds.append(p)
        gts.append(g)
    ours = cm.compute()
    theirs = ev.evaluateImgLists(preds, gts, args)
    for c, name in enumerate(CITYSCAPES_CLASSES):
        ref = theirs["classScores"][name]
        if math.isnan(ref):
            assert math.isnan(ours["IoU"][c]), name
        else:
            assert ours["IoU"][c] == pytest.approx(ref, rel=1e-12), name
    assert math.isnan(ours["IoU"][17]) and math.isnan(ours["IoU"][18])
    assert ours["IoU"][15] == 0.0 and ours["IoU"][16] == 0.0  # predicted, never in GT
    assert ours["mIoU"] == pytest.approx(theirs["averageScoreClasses"], rel=1e-12)


def test_accuracies_closed_form():
    cm = ConfusionMatrix(3, ignore_label=255)
    gt = np.array([[0, 0, 1, 1], [2, 255, 2, 0]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 2, 2]])
    cm.update(pred, gt)
    # matrix rows gt, cols pred: gt0 -> [1,1,1], gt1 -> [0,2,0], gt2 -> [1,0,1]
    assert cm.matrix.tolist() == [[1, 1, 1], [0, 2, 0], [1, 0, 1]]
    scores = cm.compute()
    assert scores["aAcc"] == pytest.approx(4 / 7)
    np.testing.assert_allclose(scores["Acc"], [1 / 3, 1.0, 0.5])
    np.testing.assert_allclose(scores["IoU"], [1 / 4, 2 / 3, 1 / 3])
    assert scores["mAcc"] == pytest.approx((1 / 3 + 1 + 0.5) / 3)


def test_empty_matrix_is_nan_not_crash():
    scores = segmentation_scores(np.zeros((4, 4)))
    assert math.isnan(scores["mIoU"]) and math.isnan(scores["aAcc"])


def test_bad_values_are_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="label value 7"):
        cm.update(np.zeros((2, 2)), np.array([[0, 7], [1, 255]]))
    with pytest.raises(ValueError, match="prediction value 3"):
        cm.update(np.array([[3, 0], [0, 0]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3)), np.zeros((2, 2)))


def test_topk_against_brute_force():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 8))
    labels = rng.integers(0, 8, 50)
    got = topk_correct(logits, labels, ks=(1, 3, 5, 10))
    for k, n in zip((1, 3, 5, 10), got):
        brute = sum(labels[i] in sorted(range(8), key=lambda c: -logits[i, c])[:k] for i in range(50))
        assert n == brute
    one_hot = np.eye(8)[labels]
    assert topk_correct(logits, one_hot, ks=(1,)) == [got[0]]


def test_all_reduce_counts_is_exact_beyond_int32(monkeypatch):
    """Counts cross ranks as float32 digits (the CPU AllReduce takes floats only); the sum
    must be exact for int64 pixel counts. The collective is replaced by 'three ranks
    holding the same counts' (x * 3)."""
    import mindspore as ms
    from src.engine import evaluate

    class ThreeRanks:
        def __call__(self, tensor):
            assert tensor.dtype == ms.float32
            assert tensor.asnumpy().max() * 3 < 2**24  # float32 sums stay exact
            return tensor * 3

    monkeypatch.setattr(evaluate.ops, "AllReduce", ThreeRanks)
    counts = np.array([[0, 1, (1 << 20) - 1], [1 << 20, 5_000_000_123, 2**33 + 7]], dtype=np.int64)
    np.testing.assert_array_equal(evaluate.all_reduce_counts(counts, 3), counts * 3)
    np.testing.assert_array_equal(evaluate.all_reduce_counts(counts, 1), counts)
