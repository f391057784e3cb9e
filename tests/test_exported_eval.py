"""eval.py and infer.py on files written by export.py: a dynamic-H/W MINDIR and a static
ONNX print the checkpoint's mIoU and write its label maps (tiny demo data)."""
import re

import numpy as np
import pytest
from PIL import Image

from tests.test_eval_infer_export import (B0_DEMO, demo, load_tool,  # noqa: F401  (fixtures)
                                          no_runtime_setup, run_main)


def run_tool(tool, argv, capsys):
    """``tool``'s main in this process; its stdout (a failure shows its error)."""
    try:
        load_tool(tool).main(argv)
    except SystemExit as exc:
        pytest.fail(f"{tool} exited {exc.code}: {capsys.readouterr().err[-2000:]}")
    return capsys.readouterr().out


def eval_miou(weights, demo, tmp_path, capsys, *flags):
    out = run_tool("eval.py", [f"--config_path={B0_DEMO}", f"--data_path={demo['city']}",
                               f"--eval_ckpt_path={weights}", "--mode=PYNATIVE",
                               f"--output_dir={tmp_path}", "--eval_base_size=64,128", *flags],
                   capsys)
    [miou] = re.findall(r"===> mIoU: (\S+), ckpt: ", out)
    return float(miou)


def test_eval_and_infer_on_exported_mindir_and_onnx(demo, tmp_path, capsys, no_runtime_setup):
    export = [f"--config_path={B0_DEMO}", f"--export_ckpt_path={demo['ckpt']}", "--mode=PYNATIVE"]
    run_tool("export.py", export + ["--export_format=MINDIR", "--export_input_shape=1,3,-1,-1",
                                    f"--export_file_name={tmp_path}/model"], capsys)
    # ONNX is static: exported at the size the config's whole-image test feeds the network
    run_tool("export.py", export + ["--export_format=ONNX", "--export_input_shape=1,3,64,128",
                                    f"--export_file_name={tmp_path}/model"], capsys)
    mindir, onnx = f"{tmp_path}/model.mindir", f"{tmp_path}/model.onnx"

    whole = eval_miou(demo["ckpt"], demo, tmp_path, capsys)
    assert 0 < whole < 1
    assert abs(eval_miou(mindir, demo, tmp_path, capsys) - whole) < 1e-4
    assert abs(eval_miou(onnx, demo, tmp_path, capsys) - whole) < 1e-4

    # The 64x128 ONNX file does not fit 64x64 slide windows: named before any work (a file
    # exported at 64x64 would; tests/engine/test_networks.py runs such windows and every
    # size through a dynamic MINDIR).
    views = ["--eval_mode=slide", "--eval_crop_size=64,64", "--eval_stride=64,64"]
    err = run_main("eval.py", [f"--config_path={B0_DEMO}", f"--data_path={demo['city']}",
                               f"--eval_ckpt_path={onnx}", "--mode=PYNATIVE",
                               f"--output_dir={tmp_path}", *views], capsys)
    assert "model.onnx takes a fixed input [1, 3, 64, 128]" in err
    assert "'eval_crop_size' is [64, 64]" in err

    # infer.py: the ONNX file's gray PNG is the checkpoint's
    image = sorted((demo["root"] / "city" / "leftImg8bit" / "val").rglob("*.png"))[0]
    maps = {}
    for name, weights in (("ckpt", demo["ckpt"]), ("onnx", onnx)):
        out = tmp_path / f"infer_{name}"
        run_tool("infer.py", [f"--config_path={B0_DEMO}", f"--infer_ckpt_path={weights}",
                              f"--data_path={image}", f"--infer_output_path={out}",
                              "--mode=PYNATIVE", f"--output_dir={tmp_path}",
                              "--eval_base_size=64,128"], capsys)
        maps[name] = np.asarray(Image.open(out / image.name.replace(".png", "_gray.png")))
    assert len(np.unique(maps["ckpt"])) > 1
    assert (maps["ckpt"] == maps["onnx"]).mean() > 0.999  # two backends' float sums may break exact ties
