"""``infer.py --format_only=True``: cityscapesscripts' evaluator, pointed at the output folder
as it is, reports the mIoU eval.py prints; the zip holds exactly those files."""
import glob
import os
import re
import zipfile

import numpy as np
from PIL import Image

from tests.test_eval_infer_export import (B0_DEMO, cityscapes_evaluator,  # noqa: F401  (fixtures)
                                          demo, load_tool, no_runtime_setup, run_main)


def test_format_only_is_what_the_cityscapes_evaluator_reads(demo, tmp_path, capsys,
                                                           monkeypatch, no_runtime_setup):
    from cityscapesscripts.helpers.labels import labels
    common = [f"--config_path={B0_DEMO}", f"--data_path={demo['city']}", "--mode=PYNATIVE",
              f"--output_dir={tmp_path}", "--eval_base_size=64,128"]
    out = tmp_path / "submit"
    load_tool("infer.py").main(common + [f"--infer_ckpt_path={demo['ckpt']}", "--format_only=True",
                                         f"--infer_output_path={out}"])
    log = capsys.readouterr().out
    assert f"zipped to {out}/cityscapes_submission.zip" in log
    load_tool("eval.py").main(common + [f"--eval_ckpt_path={demo['ckpt']}"])
    [ours] = re.findall(r"===> mIoU: (\S+), ckpt: ", capsys.readouterr().out)

    # the evaluator's own no-argument path: glob the ground truth, find each prediction by
    # its city_seq_frame id under the results folder, evaluate
    ev, args = cityscapes_evaluator(monkeypatch)
    args.predictionPath, args.predictionWalk = str(out), None
    gts = sorted(glob.glob(os.path.join(demo["city"], "gtFine", "val", "*",
                                        "*_gtFine_labelIds.png")))
    preds = [ev.getPrediction(args, gt) for gt in gts]
    theirs = ev.evaluateImgLists(preds, gts, args)["averageScoreClasses"]
    assert len(gts) == 3 and 0 < theirs < 1
    assert abs(float(ours) - theirs) < 1e-3

    names = sorted(os.listdir(out))
    pngs = [n for n in names if n.endswith(".png")]
    assert names == sorted(pngs + ["cityscapes_submission.zip"])  # nothing else (no _gray/_color)
    assert sorted(os.path.basename(p) for p in preds) == pngs
    assert all(re.match(r"^[a-z]+_\d{6}_\d{6}_leftImg8bit\.png$", n) for n in pngs), pngs
    with zipfile.ZipFile(out / "cityscapes_submission.zip") as archive:
        assert sorted(archive.namelist()) == pngs
    evaluated = {lab.id for lab in labels if not lab.ignoreInEval}
    values = set(np.unique(np.concatenate([np.asarray(Image.open(out / n)).ravel() for n in pngs])))
    assert values <= evaluated and len(values) > 1  # labelIds, not trainIds


def test_format_only_bad_inputs_are_named_before_the_model_loads(demo, tmp_path, capsys,
                                                                 no_runtime_setup):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "holiday.png")
    # no checkpoint given: the errors must come first
    base = [f"--config_path={B0_DEMO}", "--mode=PYNATIVE", f"--output_dir={tmp_path}",
            "--format_only=True", f"--infer_output_path={tmp_path}/o"]
    err = run_main("infer.py", base + [f"--data_path={folder}"], capsys)
    assert "holiday.png: a Cityscapes submission names each prediction after its image's " \
           "<city>_<sequence>_<frame> id" in err
    err = run_main("infer.py", base + [f"--data_path={demo['city']}", "--class_num=5",
                                       "--dataset.class_names=[a,b,c,d,e]"], capsys)
    assert "takes the 19 evaluated classes (trainIds), but class_num=5" in err
    err = run_main("infer.py", base + [f"--data_path={demo['city']}", "--dataset.name=custom",
                                       "--dataset.img_dir=leftImg8bit", "--dataset.ann_dir=gtFine"],
                   capsys)
    assert "no benchmark submission format for dataset.name='custom' (formats: ['ade20k', 'cityscapes'])" in err
