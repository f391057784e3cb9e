"""Networks behind the predictors (src/engine/networks.py): exported MINDIR and ONNX files
give the Cell's outputs through the same SegInferencer; fixed shapes are served where
they fit and named where they do not; unreadable files are named."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from src.engine.inference import SegInferencer
from src.engine.networks import (CellNetwork, InputShapeError, MindirNetwork, OnnxNetwork,
                                 load_network)
from src.utils.checkpoint import CheckpointError
from src.utils.config import load_config

ms.set_context(mode=ms.PYNATIVE_MODE)


class HalfResolutionNet(nn.Cell):
    """3x3 stride-2 conv, tanh, 1x1: border-dependent logits at 1/2 resolution."""

    def __init__(self, classes=3):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=2, pad_mode="pad", padding=1, has_bias=True)
        self.b = nn.Conv2d(6, classes, 1, has_bias=True)

    def construct(self, x):
        return self.b(ms.ops.tanh(self.a(x)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The net, and its MINDIR (dynamic H/W; fixed 2x3x16x24) and ONNX (fixed 1x3x16x24)."""
    from src.engine.mindir_to_onnx import mindir_to_onnx
    tmp = tmp_path_factory.mktemp("nets")
    ms.set_seed(2)
    net = HalfResolutionNet()
    net.set_train(False)
    ms.export(net, ms.Tensor(shape=[1, 3, None, None], dtype=ms.float32),
              file_name=str(tmp / "dyn"), file_format="MINDIR")
    ms.export(net, ms.Tensor(np.zeros((2, 3, 16, 24), np.float32)),
              file_name=str(tmp / "fixed"), file_format="MINDIR")
    ms.export(net, ms.Tensor(np.zeros((1, 3, 16, 24), np.float32)),
              file_name=str(tmp / "one"), file_format="MINDIR")
    mindir_to_onnx(str(tmp / "one.mindir"), str(tmp / "fixed.onnx"))
    return {"net": net, "dyn": str(tmp / "dyn.mindir"), "fixed": str(tmp / "fixed.mindir"),
            "onnx": str(tmp / "fixed.onnx"), "tmp": tmp}


def cfg(**keys):
    return load_config("", [f"--{k}={v}" for k, v in {"class_num": 3, **keys}.items()])


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_files_record_their_input_shape_and_batch_in_chunks(tiny):
    assert MindirNetwork(tiny["dyn"]).input_shape == [1, 3, -1, -1]
    fixed = MindirNetwork(tiny["fixed"])
    assert fixed.input_shape == [2, 3, 16, 24] and fixed.fixed_hw == (16, 24)
    assert OnnxNetwork(tiny["onnx"]).input_shape == [1, 3, 16, 24]
    # 5 images through a file made for 2: chunks of 2, the last padded, rows kept in order
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 24)).astype(np.float32)
    ref = tiny["net"](ms.Tensor(x)).asnumpy()
    for network in (fixed, OnnxNetwork(tiny["onnx"]), CellNetwork(tiny["net"])):
        np.testing.assert_allclose(network(x), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputShapeError, match=r"fixed\.mindir takes a fixed input \[2, 3, 16, 24\] "
                                              r"\(N, C, H, W\); got a batch of \[1, 3, 16, 20\]"):
        fixed(x[:1, :, :, :20])


@pytest.mark.parametrize("keys", [
    dict(eval_mode="whole", eval_base_size="[30,50]", eval_scales="[0.5,1.0]", eval_flip="true"),
    dict(eval_mode="slide", eval_base_size="[30,50]", eval_crop_size="[16,24]",
         eval_stride="[8,12]", eval_scales="[0.75,1.0]", eval_flip="true"),
])
def test_dynamic_mindir_gives_the_cells_scores(tiny, keys):
    """Dynamic H/W: any size (here several scales, whole and slide) through the same
    predictor gives the Cell's scores."""
    conf = cfg(**keys)
    img = image(30, 50)
    ref = SegInferencer(tiny["net"], conf).predict_scores(img)
    got = SegInferencer(MindirNetwork(tiny["dyn"]), conf).predict_scores(img)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_fixed_files_serve_windows_of_their_size(tiny):
    """A fixed 16x24 file with slide windows of 16x24 (two scales, flip) gives the Cell's
    scores; ONNX too."""
    conf = cfg(eval_mode="slide", eval_base_size="[40,60]", eval_crop_size="[16,24]",
               eval_stride="[12,16]", eval_scales="[0.6,1.0]", eval_flip="true")
    img = image(40, 60, seed=3)
    ref = SegInferencer(tiny["net"], conf).predict_scores(img)
    for network in (MindirNetwork(tiny["fixed"]), OnnxNetwork(tiny["onnx"])):
        got = SegInferencer(network, conf).predict_scores(img)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_fixed_shape_mismatch_names_file_shape_and_config(tiny):
    onnx = OnnxNetwork(tiny["onnx"])
    with pytest.raises(ValueError, match=r"fixed\.onnx takes a fixed input \[1, 3, 16, 24\].*"
                                         r"'eval_crop_size' is \[32, 32\].*--eval_crop_size=16,24"):
        SegInferencer(onnx, cfg(eval_mode="slide", eval_crop_size="[32,32]",
                                eval_stride="[16,16]"))
    whole = SegInferencer(onnx, cfg(eval_mode="whole", eval_base_size="[30,50]"))
    with pytest.raises(ValueError, match=r"fixed\.onnx takes a fixed input \[1, 3, 16, 24\].*"
                                         r"eval_mode=whole resizes this image to 30x50 "
                                         r"\(eval_base_size=\[30, 50\]"):
        whole.predict(image(30, 50))
    # The same size whole: fine.
    assert SegInferencer(onnx, cfg(eval_base_size="[16,24]")).predict(image(16, 24)).shape == (16, 24)
    # An image smaller than the window runs whole, at a size the file does not take.
    small = SegInferencer(onnx, cfg(eval_mode="slide", eval_base_size="[10,20]",
                                    eval_crop_size="[16,24]", eval_stride="[8,8]"))
    with pytest.raises(ValueError, match=r"a slide window of 10x15 \(the resized image is "
                                         r"smaller than eval_crop_size"):
        small.predict(image(20, 30))


def test_wrong_class_count_and_bad_files_are_named(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"dyn\.mindir returned shape \[1, 3, 8, 12\]; expected "
                                         r"\[N, class_num=19, h, w\].*'class_num'"):
        SegInferencer(MindirNetwork(tiny["dyn"]), cfg(class_num=19, eval_base_size="[16,24]")
                      ).predict(image(16, 24))
    conf = cfg()
    for name in ("junk.mindir", "junk.onnx"):
        (tmp_path / name).write_bytes(b"\x00not a model at all")
        kind = "MINDIR" if name.endswith("mindir") else "ONNX"
        with pytest.raises(CheckpointError, match=rf"junk\.{name[5:]}: not a readable {kind} file"):
            load_network(conf, str(tmp_path / name), log=lambda m: None)
    with pytest.raises(CheckpointError, match=r"exported model not found: .*gone\.onnx"):
        load_network(conf, str(tmp_path / "gone.onnx"), log=lambda m: None)
    with pytest.raises(CheckpointError, match=r"no checkpoint or exported model given"):
        load_network(conf, "", log=lambda m: None)
