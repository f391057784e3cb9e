"""MindSpore Lite runner (tools/infer_lite.py, scripts/run_infer_lite.sh, src/engine/lite.py).

There is no mindspore_lite wheel for this Python, so the Lite calls run against a stub
``mindspore_lite`` (its documented API: Context, Model.build_from_file, get_inputs, resize,
predict, Tensor set/get numpy) whose model is the same MINDIR run by ``nn.GraphCell``: the
runner's PNGs must then be byte-identical to infer.py's on that MINDIR, which proves the
pre/post-processing is the one shared code path. Around it: argument checks and the
error where Lite is absent."""
import enum
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn
from PIL import Image

from src.engine.networks import mindir_input_shape
from tests.test_eval_infer_export import (B0_DEMO, REPO, export_quarter_resolution_mindir,  # noqa: F401
                                          demo, load_tool, no_runtime_setup, run_main)

SCRIPT = os.path.join(REPO, "scripts", "run_infer_lite.sh")


def stub_lite(calls):
    """A ``mindspore_lite`` module that runs the MINDIR with MindSpore, recording its calls.
    Like Lite, a dynamic input must be resized before data of a new shape goes in."""
    lite = types.ModuleType("mindspore_lite")

    class ModelType(enum.Enum):
        MINDIR = 0

    class Context:
        def __init__(self):
            self.target = []
            self.ascend = types.SimpleNamespace(device_id=None)
            self.gpu = types.SimpleNamespace(device_id=None)
            self.cpu = types.SimpleNamespace(thread_num=None)

    class Tensor:
        def __init__(self, shape, data=None):
            self.shape, self.data = list(shape), data

        def set_data_from_numpy(self, array):
            if list(array.shape) != self.shape:
                raise RuntimeError(f"data shape {list(array.shape)} != tensor shape {self.shape}")
            self.data = array

        def get_data_to_numpy(self):
            return self.data

    class Model:
        def build_from_file(self, path, model_type, context):
            assert model_type is ModelType.MINDIR
            calls.append(("build", os.path.basename(path), list(context.target),
                          context.ascend.device_id))
            self.graph = nn.GraphCell(ms.load(path))
            self.inputs = [Tensor(mindir_input_shape(path))]

        def get_inputs(self):
            return self.inputs

        def resize(self, inputs, dims):
            calls.append(("resize", dims))
            for tensor, dim in zip(inputs, dims):
                tensor.shape = list(dim)

        def predict(self, inputs):
            out = self.graph(ms.Tensor(inputs[0].data)).asnumpy()
            return [Tensor(out.shape, out)]

    lite.ModelType, lite.Context, lite.Model, lite.Tensor = ModelType, Context, Model, Tensor
    return lite


@pytest.fixture(scope="module")
def tiny_mindir(tmp_path_factory):
    """A 19-class net with SegFormer's 1/4 output, exported with a dynamic H/W under the
    name export.py gives a segformer.b0.demo.yaml export."""
    tmp = tmp_path_factory.mktemp("lite")
    return export_quarter_resolution_mindir(tmp / "segformer.b0.demo", seed=5)


def test_lite_runner_writes_infer_pys_pngs(demo, tiny_mindir, tmp_path, capsys, monkeypatch,
                                           no_runtime_setup):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((demo["root"] / "city" / "leftImg8bit" / "val").rglob("*.png"))[:2]:
        Image.open(path).save(images / path.name)
    common = [f"--data_path={images}", f"--output_dir={tmp_path}", "--eval_base_size=64,128",
              "--eval_scales=0.5,1.0"]  # two sizes: the dynamic input is resized for each
    calls = []
    monkeypatch.setitem(sys.modules, "mindspore_lite", stub_lite(calls))
    # no --config_path: config/segformer.b0.demo.yaml, from the model's file name
    load_tool("tools/infer_lite.py").main([f"--infer_ckpt_path={tiny_mindir}", "--device_target=Ascend",
                                           "--device_id=3", f"--infer_output_path={tmp_path}/lite",
                                           *common])
    assert "MindSpore Lite: " in capsys.readouterr().out
    load_tool("infer.py").main([f"--config_path={B0_DEMO}", f"--infer_ckpt_path={tiny_mindir}",
                                "--mode=PYNATIVE", f"--infer_output_path={tmp_path}/ms", *common])
    assert calls[0] == ("build", "segformer.b0.demo.mindir", ["ascend"], 3)
    assert {tuple(map(tuple, c[1])) for c in calls if c[0] == "resize"} == {((1, 3, 32, 64),),
                                                                           ((1, 3, 64, 128),)}
    lite_files = sorted(p.relative_to(tmp_path / "lite") for p in (tmp_path / "lite").rglob("*.png"))
    ms_files = sorted(p.relative_to(tmp_path / "ms") for p in (tmp_path / "ms").rglob("*.png"))
    assert lite_files == ms_files and len(lite_files) == 8  # 2 images x gray, color, overlap, copy
    for rel in lite_files:
        assert (tmp_path / "lite" / rel).read_bytes() == (tmp_path / "ms" / rel).read_bytes(), rel
    gray = np.asarray(Image.open(tmp_path / "lite" / [r for r in lite_files
                                                      if r.name.endswith("_gray.png")][0]))
    assert len(np.unique(gray)) > 1


def test_without_lite_the_error_names_the_wheel(tmp_path, tiny_mindir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mindspore_lite", None)  # import fails as where absent
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 8)).save(image)
    err = run_main("tools/infer_lite.py", [f"--infer_ckpt_path={tiny_mindir}", f"--data_path={image}",
                                           "--device_target=Ascend"], capsys)
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert "MindSpore Lite is not installed" in err
    assert f"mindspore_lite-<version>-{python}-linux_<arch>.whl" in err and "downloads" in err


def run_script(args, env_extra=None):
    env = dict(os.environ, PYTHON=sys.executable, GLOG_v="3", **(env_extra or {}))
    return subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_script_checks_its_arguments(tmp_path, tiny_mindir):
    res = run_script([])
    assert res.returncode == 2 and "Usage: bash" in res.stderr and "[MINDIR_PATH]" in res.stderr
    res = run_script([tiny_mindir, str(tmp_path), str(tmp_path / "o"), "TPU"])
    assert res.returncode == 2 and "DEVICE 'TPU' is not one of Ascend, CPU, GPU" in res.stderr
    res = run_script([str(tmp_path / "m.mindir"), str(tmp_path), str(tmp_path / "o"), "Ascend"])
    assert res.returncode == 2 and "model file not found: " in res.stderr and "m.mindir" in res.stderr
    res = run_script([tiny_mindir, str(tmp_path / "nothing"), str(tmp_path / "o"), "CPU"])
    assert res.returncode == 2 and "input not found: " in res.stderr and "nothing" in res.stderr
    res = run_script([tiny_mindir, str(tmp_path), str(tmp_path / "o"), "CPU"], {"DEVICE_ID": "x"})
    assert res.returncode == 2 and "DEVICE_ID=x must be a non-negative integer" in res.stderr
    # past the checks, Python runs: where Lite fails to import, the wheel is named
    fake = tmp_path / "site" / "mindspore_lite"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libmindspore-lite.so: cannot open '
                                      'shared object file")\n')
    Image.new("RGB", (16, 8)).save(tmp_path / "x.png")
    res = run_script([tiny_mindir, str(tmp_path / "x.png"), str(tmp_path / "o"), "Ascend",
                      f"--output_dir={tmp_path}"], {"PYTHONPATH": str(fake.parent)})
    assert res.returncode == 1, res.stderr[-2000:]
    assert "error: MindSpore Lite is not installed for this Python (libmindspore-lite.so" in res.stderr
