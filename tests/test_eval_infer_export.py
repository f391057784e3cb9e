"""eval.py / infer.py / export.py end to end on a tiny demo dataset.

Oracles: cityscapesscripts' evalPixelLevelSemanticLabeling (mIoU), folder counts (top-k of a
constant classifier), HF transformers SegFormer / ViT and the paper-written Segmenter
decoders (tests/segformer_oracle.py, tests/vit_oracle.py) for the exported MINDIR
(mindspore.load + GraphCell) and ONNX (onnxruntime) files, the palette definition for the PNGs.
"""
import copy
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn
from mindspore.train import mind_ir_pb2
from PIL import Image

from src.engine.evaluate import evaluate_classification, evaluate_segmentation
from src.engine.inference import SegInferencer
from src.engine.networks import load_trained_net
from src.engine.infer_images import InferInputError, list_images
from src.models import build_model
from src.utils.checkpoint import save_checkpoint
from src.utils.config import load_config
from src.data.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES, PALETTE as CITYSCAPES_PALETTE

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)
B0_DEMO = os.path.join(REPO, "config", "segformer.b0.demo.yaml")
ms.set_context(mode=ms.PYNATIVE_MODE)


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(REPO, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Tiny Cityscapes + ImageNet demo data, converted, and a SegFormer-B0 checkpoint that
    also carries optimiser state and a scalar, as train.py checkpoints do."""
    root = tmp_path_factory.mktemp("demo")
    city, imagenet = str(root / "city"), str(root / "imagenet")
    load_tool("tools/make_demo_data.py").main(
        ["--out", city, "--imagenet_out", imagenet, "--num_train", "1", "--num_val", "3",
         "--height", "64", "--width", "128", "--imagenet_train_per_class", "1",
         "--imagenet_val_per_class", "2", "--imagenet_size", "32", "--seed", "5"])
    assert load_tool("tools/convert_dataset.py").main([city]) == 0
    cfg = seg_cfg(city, root)
    ms.set_seed(1)
    net = build_model(cfg)
    extra = {"epoch": ms.Tensor(3, ms.int32)}
    extra.update({f"optimizer.exp_avg.{p.name}": ms.Tensor(np.zeros(p.shape, np.float32))
                  for p in list(net.get_parameters())[:2]})
    ckpt = str(root / "segformer_mit_b0_3.ckpt")
    save_checkpoint(net, ckpt, extra=extra)
    return {"root": root, "city": city, "imagenet": imagenet, "ckpt": ckpt}


def seg_cfg(city, out, *extra):
    return load_config(B0_DEMO, [f"--data_path={city}", "--mode=PYNATIVE",
                                 f"--output_dir={out}/out", "--eval_base_size=[64,128]",
                                 f"--infer_output_path={out}/infer", "--eval_log_interval=2",
                                 *extra])


def run_script(args, cwd):
    env = dict(os.environ, PYTHON=sys.executable, GLOG_v="3")
    return subprocess.run(["bash"] + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


# ------------------------------------------------------------------ evaluation --

def cityscapes_evaluator(monkeypatch):
    if not hasattr(np, "in1d"):  # cityscapesscripts 2.3.0 calls np.in1d (gone in numpy 2.4)
        monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    args = copy.copy(ev.args)
    args.evalInstLevelScore, args.evalPixelAccuracy = False, False
    args.JSONOutput, args.quiet, args.colorized, args.bold, args.nocol = False, True, False, "", ""
    return ev, args


class QuarterResolutionNet(nn.Cell):
    """Small random segmentation net with SegFormer's output stride (1/4): diverse,
    image-dependent predictions at a fraction of SegFormer's cost."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, stride=2, pad_mode="pad", padding=1, has_bias=True)
        self.b = nn.Conv2d(16, 19, 3, stride=2, pad_mode="pad", padding=1, has_bias=True)

    def construct(self, x):
        return self.b(ms.ops.tanh(self.a(x)))


def export_quarter_resolution_mindir(path_stem, seed):
    """A QuarterResolutionNet of ``seed`` exported as a dynamic-H/W MINDIR; its path."""
    ms.set_seed(seed)
    net = QuarterResolutionNet()
    net.set_train(False)
    ms.export(net, ms.Tensor(shape=[1, 3, None, None], dtype=ms.float32),
              file_name=str(path_stem), file_format="MINDIR")
    return f"{path_stem}.mindir"


def test_eval_miou_equals_cityscapesscripts(demo, tmp_path, monkeypatch):
    """evaluate_segmentation (slide, two scales, flip; full-resolution trainId labels) gives
    the mIoU that cityscapesscripts computes from the same predictions, written as labelIds
    PNGs, against the dataset's own *_gtFine_labelIds.png."""
    from cityscapesscripts.helpers.labels import trainId2label
    cfg = seg_cfg(demo["city"], tmp_path, "--eval_mode=slide", "--eval_crop_size=[48,48]",
                  "--eval_stride=[32,32]", "--eval_scales=[0.75,1.0]", "--eval_flip")
    ms.set_seed(3)
    net = QuarterResolutionNet()
    lines = []
    ours = evaluate_segmentation(net, cfg, log=lines.append, ckpt_name="segformer_mit_b0_3.ckpt")

    ev, args = cityscapes_evaluator(monkeypatch)
    lut = np.array([trainId2label[t].id for t in range(19)], dtype=np.uint8)
    inferencer = SegInferencer(net, cfg)
    preds, gts = [], []
    for image_path in sorted(str(p) for p in
                             (demo["root"] / "city" / "leftImg8bit" / "val").rglob("*.png")):
        pred = inferencer.predict(np.asarray(Image.open(image_path).convert("RGB")))
        out = tmp_path / os.path.basename(image_path).replace("leftImg8bit", "pred")
        Image.fromarray(lut[pred]).save(out)
        preds.append(str(out))
        gts.append(image_path.replace("leftImg8bit", "gtFine", 1)
                   .replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
    theirs = ev.evaluateImgLists(preds, gts, args)
    assert ours["num_images"] == 3
    for name in CITYSCAPES_CLASSES:
        ref, got = theirs["classScores"][name], ours["IoU"][name]
        assert (math.isnan(ref) and math.isnan(got)) or got == pytest.approx(ref, rel=1e-12), name
    assert not math.isnan(ours["mIoU"])
    assert ours["mIoU"] == pytest.approx(theirs["averageScoreClasses"], rel=1e-12)
    assert lines[0] == "eval dataset size:3"
    assert lines[1].startswith("eval image 2/3 done, step cost: ") and lines[1].endswith("ms")
    assert f"===> class: road, IoU: {ours['IoU']['road']}" in lines
    assert f"===> mIoU: {ours['mIoU']}, ckpt: segformer_mit_b0_3.ckpt" in lines


class ConstantClassifier(nn.Cell):
    """Logits that ignore the image: class order 2 > 0 > 3 > 1."""

    def construct(self, x):
        row = ms.Tensor([[3.0, 1.0, 4.0, 2.0]], ms.float32)
        return row + 0.0 * x.mean(axis=(1, 2, 3), keep_dims=True).reshape(-1, 1)


def test_classification_topk_against_folder_counts(demo, tmp_path):
    cfg = load_config(os.path.join(REPO, "config", "vit.tiny.demo.yaml"),
                      [f"--data_path={demo['imagenet']}", "--eval_batch_size=3",
                       "--dataset_num_parallel_workers=1", "--eval_image_size=32"])
    val = os.path.join(demo["imagenet"], "val")
    classes = sorted(os.listdir(os.path.join(demo["imagenet"], "train")))
    counts = [len(os.listdir(os.path.join(val, c))) for c in classes]
    lines = []
    metrics = evaluate_classification(ConstantClassifier(), cfg, log=lines.append)
    assert metrics["num_images"] == sum(counts)
    assert metrics["top1"] == pytest.approx(counts[2] / sum(counts))
    assert metrics["top5"] == 1.0  # 4 classes
    assert f"accuracy={counts[2] / sum(counts):.6f}" in lines


def test_run_eval_script_writes_eval_log(demo, tmp_path):
    res = run_script([os.path.join(REPO, "scripts", "run_eval.sh"), "0", B0_DEMO, demo["ckpt"],
                      demo["city"], "--mode=PYNATIVE", f"--output_dir={tmp_path}",
                      "--eval_base_size=64,128"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (tmp_path / "eval.log").read_text()
    assert "eval dataset size:3" in log and "===> mIoU: " in log and "all eval process done" in log
    assert "ckpt: segformer_mit_b0_3.ckpt" in log


# ------------------------------------------------------------------- inference --

def test_run_infer_script_writes_pngs_and_reports_bad_files(demo, tmp_path):
    src = tmp_path / "images"
    (src / "sub").mkdir(parents=True)
    val = sorted((demo["root"] / "city" / "leftImg8bit" / "val").rglob("*.png"))
    shutil.copy(val[0], src / "a.png")
    shutil.copy(val[1], src / "sub" / "b.png")
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "result"
    res = run_script([os.path.join(REPO, "scripts", "run_infer.sh"), "0", B0_DEMO, demo["ckpt"],
                      str(src), str(out), "--mode=PYNATIVE", f"--output_dir={tmp_path}",
                      "--eval_base_size=64,128"], cwd=tmp_path)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    log = (tmp_path / "infer.log").read_text()
    assert "get image size:3" in log and "broken.png" in log and "1 image(s) could not be read" in log
    assert "skipping 1 file(s) that are not images" in log
    palette = np.zeros((256, 3), np.uint8)
    palette[:19] = CITYSCAPES_PALETTE
    for stem, original in (("a", src / "a.png"), ("sub/b", src / "sub" / "b.png")):
        rgb = np.asarray(Image.open(original).convert("RGB"))
        gray = Image.open(out / f"{stem}_gray.png")
        assert gray.mode == "P" and gray.size == (rgb.shape[1], rgb.shape[0])
        ids = np.asarray(gray)
        assert ids.max() < 19
        assert np.array_equal(np.asarray(gray.getpalette()[:57], np.uint8).reshape(19, 3),
                              palette[:19])
        color = np.asarray(Image.open(out / f"{stem}_color.png"))
        assert np.array_equal(color, palette[ids])
        overlap = np.asarray(Image.open(out / f"{stem}_overlap.png")).astype(int)
        assert np.abs(overlap - (rgb.astype(int) + color.astype(int)) / 2).max() <= 0.5
        assert (out / f"{stem}.png").read_bytes() == original.read_bytes()
    assert not list(out.glob("broken*")) and not list(out.glob("notes*"))


def test_list_images_layouts(demo, tmp_path):
    cfg = seg_cfg(demo["city"], tmp_path)
    root, images, _ = list_images(demo["city"], cfg, str(tmp_path / "o"))
    assert root.endswith(os.path.join("leftImg8bit", "val")) and len(images) == 3
    # An output folder inside the input folder is never read back as input.
    folder = tmp_path / "in"
    (folder / "results").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "x.png")
    Image.new("RGB", (8, 8)).save(folder / "results" / "x_color.png")
    _, images, _ = list_images(str(folder), cfg, str(folder / "results"))
    assert [os.path.basename(p) for p in images] == ["x.png"]


# ---------------------------------------------------------------------- export --
#
# export.py always builds the reference kernel backend (standard MindSpore operators), whatever
# kernel_backend says: on this CPU machine 'auto' means the cpu backend, whose custom kernels
# (ops.Custom 'aot' functions in a .so compiled here, im2col convs) would make a MINDIR that
# runs nowhere else. The exported files are checked against the independent oracles
# (HF transformers SegFormer / ViT, the paper-written Segmenter decoders), not against our
# own Cell, so an export that drifts from the published models fails even if both of our
# backends drift together.

def export_cfg(config, tmp_path, fmt, shape, *extra):
    return load_config(os.path.join(REPO, "config", config),
                       ["--device_target=CPU", f"--export_format={fmt}",
                        f"--export_input_shape={shape}",
                        f"--export_file_name={tmp_path}/model", *extra])


def mindir_census(path):
    """The operator census of a MINDIR file: (Counter op name -> node count, list of
    (op name, primitive attributes)) over its graph nodes. Op names as mindir_to_onnx.py
    reads them: ``node.op_type`` is ``REF::Conv2D:4`` (or plain ``Conv2D``)."""
    model = mind_ir_pb2.ModelProto()
    with open(path, "rb") as f:
        model.ParseFromString(f.read())
    a_type = mind_ir_pb2.AttributeProto

    def value(a):  # strings and integers: all the checks below read
        if a.type == a_type.STRING:
            return a.s.decode() if isinstance(a.s, bytes) else a.s
        if a.type in (a_type.INT64, a_type.INT32):
            return int(a.ints[0]) if len(a.ints) else int(a.i)
        return None

    prims = {p.name: {a.name: value(a) for a in p.attribute} for p in model.primitives}
    nodes = []
    for node in model.graph.node:
        prim = node.op_type.split("::")[-1]
        nodes.append((prim.split(":")[0], prims.get(prim, {})))
    return Counter(op for op, _ in nodes), nodes


def cpu_kernel_ops(nodes):
    """The nodes that only the cpu backend puts in a graph: its compiled kernels
    (``Custom`` ops, 'aot' functions of a shared library, named after cpu_kernels) and the
    im2col convolutions. Empty for an exportable graph."""
    found = []
    for op, attrs in nodes:
        texts = " ".join(str(v) for v in attrs.values() if isinstance(v, str))
        if (op in ("Custom", "Im2Col") or attrs.get("func_type") == "aot"
                or "cpu_kernel" in op.lower() or "cpu_kernels" in texts or ".so:" in texts):
            found.append(op)
    return found


def check_standard_ops(path, required):
    """The MINDIR at ``path`` holds the ``required`` standard operators and nothing of the cpu
    backend; returns its census."""
    census, nodes = mindir_census(path)
    assert not cpu_kernel_ops(nodes), (cpu_kernel_ops(nodes), census)
    assert census["Im2Col"] == census["Custom"] == 0, census
    with open(path, "rb") as f:  # no path to this machine's kernel library anywhere
        assert b"cpu_kernels" not in f.read()
    missing = {"Conv2D", *required} - set(census)
    assert not missing, (missing, census)
    return census, nodes


SEGMENTER_CLASSES = 5


def segformer_case(tmp):
    """HF SegFormer-B0 (random, 19 classes) written under our parameter names, as
    tests/models/test_segformer.py's b0_pair loads it (independently of src/convert)."""
    import torch
    from tests.segformer_oracle import hf_segformer, hub_state_dict, ms_name, to_nvlabs
    ref = hf_segformer("mit_b0", seed=3)
    state = to_nvlabs(hub_state_dict(ref, str(tmp)))
    ckpt = str(tmp / "segformer.ckpt")
    save_checkpoint({ms_name(k): v.numpy() for k, v in state.items()
                     if not k.endswith("num_batches_tracked")}, ckpt)

    def oracle(x):
        return ref(pixel_values=torch.from_numpy(x)).logits.numpy()
    # LayerNorm, the attention, the depthwise Mix-FFN conv, exact GELU, the decode head's
    # bilinear resizes and its BatchNorm: each a standard operator
    required = ("LayerNorm", "Softmax", "BatchMatMul", "Erf", "ResizeBilinearV2", "BatchNorm")
    return [f"--config_path={B0_DEMO}"], ckpt, oracle, (1, 3, 64, 96), required


def segmenter_case(tmp, decoder):
    """The official Segmenter checkpoint layout (HF ViT-Ti encoder + the paper's decoder),
    converted by tools' converter, as tests/models/test_segmenter.py does. 40x50 is not a
    multiple of the patch (16): the graph pads the input and crops the logits."""
    import torch
    from src.convert import convert_checkpoint
    from tests.vit_oracle import (LinearDecoderRef, MaskTransformerRef, hf_vit,
                                  official_segmenter_state, segmenter_reference)
    encoder = hf_vit("tiny", patch=16, image_size=32, num_labels=1000, eps=1e-5)
    head = (MaskTransformerRef(SEGMENTER_CLASSES, 192, n_layers=2, seed=3)
            if decoder == "mask_transformer" else LinearDecoderRef(SEGMENTER_CLASSES, 192, seed=3))
    head.eval()
    pth = tmp / "segmenter.pth"
    torch.save({"model": {k: torch.from_numpy(v)
                          for k, v in official_segmenter_state(encoder, head).items()}}, pth)
    ckpt = str(tmp / "segmenter.ckpt")
    cfg = convert_checkpoint(str(pth), ckpt, log=lambda *_: None)["cfg"]
    assert (cfg.decoder, cfg.image_size) == (decoder, 32)

    def oracle(x):
        return segmenter_reference(encoder, head, torch.from_numpy(x), 16, (2, 2)).numpy()
    required = ("LayerNorm", "Softmax", "BatchMatMul", "Erf", "ResizeBilinearV2", "PadV3")
    return model_flags(cfg), ckpt, oracle, (2, 3, 40, 50), required


def vit_case(tmp):
    """HF ViT-Ti/16 (random, 10 classes, native 32x32) saved under timm names and converted
    by tools' converter (tests/models/test_vit.py's converted_tiny); exported for 48x64, so
    the graph resizes the position embedding (the oracle: the HF model with the embedding
    resized by the official Segmenter rule)."""
    import torch
    from safetensors.numpy import save_file
    from src.convert import convert_checkpoint
    from tests.vit_oracle import hf_at_size, hf_to_timm, hf_vit
    hf = hf_vit("tiny", patch=16, image_size=32, num_labels=10)
    save_file(hf_to_timm(hf.state_dict()), str(tmp / "vit.safetensors"))
    ckpt = str(tmp / "vit.ckpt")
    cfg = convert_checkpoint(str(tmp / "vit.safetensors"), ckpt, log=lambda *_: None)["cfg"]
    resized = hf_at_size(hf, (2, 2), 48, 64)

    def oracle(x):
        return resized(torch.from_numpy(x)).logits.numpy()
    required = ("LayerNorm", "Softmax", "BatchMatMul", "Erf", "ResizeBilinearV2")
    return model_flags(cfg), ckpt, oracle, (2, 3, 48, 64), required


def model_flags(cfg):
    """export.py flags for the model a converted checkpoint holds (no YAML config)."""
    keys = ["model", "backbone", "class_num", "image_size"]
    if cfg.model == "segmenter":
        keys += ["decoder", "decoder_layers"]
    return ["--device_target=CPU"] + [f"--{k}={getattr(cfg, k)}" for k in keys]


EXPORT_CASES = {
    "segformer_b0": segformer_case,
    "segmenter_tiny_mask": lambda tmp: segmenter_case(tmp, "mask_transformer"),
    "segmenter_tiny_linear": lambda tmp: segmenter_case(tmp, "linear"),
    "vit_tiny": vit_case,
}


def run_export_py(argv, capsys):
    """export.py's main in this process (its setup_runtime patched out by the caller);
    returns its stdout. A failure shows export.py's own error message."""
    try:
        load_tool("export.py").main(argv)
    except SystemExit as exc:
        pytest.fail(f"export.py exited {exc.code}: {capsys.readouterr().err[-2000:]}")
    return capsys.readouterr().out


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_py_is_reference_backend_and_matches_oracle(case, tmp_path, capsys,
                                                           no_runtime_setup):
    """export.py on this CPU machine, kernel_backend left at 'auto' (= cpu here): the MINDIR
    holds standard operators only (Conv2D, LayerNorm, Softmax ...; no Custom/aot kernel, no
    Im2Col), and the MINDIR (mindspore.load + GraphCell) and the ONNX file (onnxruntime)
    both give the oracle's outputs within 1e-4 relative."""
    import onnxruntime as ort
    import torch
    from src.models.backends import resolve_backend
    from tests.vit_oracle import rel_err
    # the point of the test: what this machine would build for training is the cpu backend
    assert resolve_backend("auto", "CPU") == "cpu"
    flags, ckpt, oracle, shape, required = EXPORT_CASES[case](tmp_path)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = oracle(x)
    common_flags = [*flags, f"--export_ckpt_path={ckpt}", "--mode=PYNATIVE",
                    f"--export_input_shape={','.join(map(str, shape))}",
                    f"--export_file_name={tmp_path}/model"]

    out = run_export_py(common_flags + ["--export_format=MINDIR"], capsys)
    path = f"{tmp_path}/model.mindir"
    assert f"to {path}" in out
    census, nodes = check_standard_ops(path, required)
    if case == "segformer_b0":  # Mix-FFN's 3x3 depthwise conv is a grouped Conv2D
        assert any(op == "Conv2D" and attrs.get("group", 1) > 1 for op, attrs in nodes), census
    got = nn.GraphCell(ms.load(path))(ms.Tensor(x)).asnumpy()
    assert got.shape == ref.shape
    assert rel_err(got, ref) < 1e-4, "MINDIR"

    out = run_export_py(common_flags + ["--export_format=ONNX"], capsys)
    assert f"to {tmp_path}/model.onnx" in out
    session = ort.InferenceSession(f"{tmp_path}/model.onnx", providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == ref.shape
    assert rel_err(got, ref) < 1e-4, "ONNX"


class ConverterCornerCases(nn.Cell):
    """Primitives whose ONNX form is easy to get subtly wrong, each output kept apart (flat,
    concatenated) so no error averages away: ``GeLU`` (MindSpore's primitive is the tanh
    form, erf would be off by up to 4e-4), ``PadV3`` (paddings from the last axis backwards,
    asymmetric, a non-zero value; Segmenter's input padding), ``ReduceMean`` (opset 17 takes
    its axes as an attribute) and a half-pixel bilinear resize down to one row."""

    def __init__(self):
        super().__init__()
        self.gelu = ms.ops.GeLU()
        self.mean = ms.ops.ReduceMean(keep_dims=True)
        self.resize = ms.ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=True)

    def construct(self, x):
        a = self.gelu(x)
        b = ms.ops.pad(a, (1, 2, 3, 0), mode="constant", value=0.5)
        c = self.mean(b, (2,))
        d = self.resize(b, (1, 3))
        return ms.ops.concat([t.reshape(1, -1) for t in (a, b, c, d)], axis=1)


def test_onnx_converter_is_exact_on_corner_cases(tmp_path):
    import onnxruntime as ort
    from src.engine.mindir_to_onnx import mindir_to_onnx
    net = ConverterCornerCases()
    x = 2 * np.random.default_rng(0).standard_normal((1, 3, 5, 7)).astype(np.float32)
    ref = net(ms.Tensor(x)).asnumpy()
    ms.export(net, ms.Tensor(x), file_name=str(tmp_path / "m"), file_format="MINDIR")
    census, _ = mindir_census(str(tmp_path / "m.mindir"))
    assert {"GeLU", "PadV3", "ReduceMean", "ResizeBilinearV2"} <= set(census), census
    mindir_to_onnx(str(tmp_path / "m.mindir"), str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-5


def test_export_refuses_cpu_backend_net(tmp_path):
    """A net built on the cpu backend is refused (naming the layer and the backend) and
    nothing is written: its graph, exported anyway, holds the compiled kernels."""
    from src.engine.export import ExportError, export_network
    cfg = export_cfg("vit.tiny.demo.yaml", tmp_path, "MINDIR", "1,3,32,32", "--kernel_backend=cpu")
    net = build_model(cfg)
    net.set_train(False)
    # (the layer's class name is the backend's business; its path and the backends are ours)
    with pytest.raises(ExportError, match=r"layer 'patch_embed\.proj' \(\w+\) is from the "
                                          r"'cpu' kernel backend.*'reference' backend"):
        export_network(net, cfg, log=lambda m: None)
    assert not os.listdir(tmp_path)
    # What the guard keeps out of a deployed file (and what mindir_census must see):
    ms.export(net, ms.Tensor(np.zeros((1, 3, 32, 32), np.float32)),
              file_name=str(tmp_path / "raw"), file_format="MINDIR")
    census, nodes = mindir_census(str(tmp_path / "raw.mindir"))
    assert census["Custom"] > 0 and census["Im2Col"] > 0
    assert {"Custom", "Im2Col"} <= set(cpu_kernel_ops(nodes))


def test_dynamic_hw_mindir_segformer(tmp_path):
    """export_input_shape 1,3,-1,-1: one MINDIR that runs at any H/W (SegFormer), built on
    the reference backend as export.py builds it."""
    from src.engine.export import export_config, export_network
    ms.set_seed(0)
    cfg = export_cfg("segformer.b0.demo.yaml", tmp_path, "MINDIR", "1,3,-1,-1")
    net = build_model(export_config(cfg))
    net.set_train(False)
    path = export_network(net, cfg, log=lambda m: None)
    check_standard_ops(path, ("LayerNorm", "Softmax", "ResizeBilinearV2"))
    graph = nn.GraphCell(ms.load(path))
    for shape in ((1, 3, 64, 128), (1, 3, 96, 64), (1, 3, 70, 101)):
        x = ms.Tensor(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
        ref = net(x).asnumpy()
        got = graph(x).asnumpy()
        assert got.shape == ref.shape == (1, 19, -(-shape[2] // 4), -(-shape[3] // 4))
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


def test_export_default_name_is_config_name(tmp_path):
    from src.engine.export import output_path
    cfg = load_config(os.path.join(REPO, "config", "segformer.b1.1024x1024.city.yaml"))
    assert output_path(cfg, "MINDIR") == "segformer.b1.1024x1024.city.mindir"
    assert output_path(cfg, "ONNX") == "segformer.b1.1024x1024.city.onnx"


# ------------------------------------------------------------------- bad input --

@pytest.fixture
def no_runtime_setup(monkeypatch):
    """In-process entry-point calls: the device was set up once for this test process, and
    MindSpore refuses to set it again."""
    monkeypatch.setattr("src.utils.device.setup_runtime", lambda cfg: (0, 1))


def run_main(tool, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        load_tool(tool).main(argv)
    assert exc.value.code != 0
    return capsys.readouterr().err


def common(tmp_path):
    return ["--mode=PYNATIVE", f"--output_dir={tmp_path}", "--eval_base_size=64,128"]


def test_missing_checkpoint(demo, tmp_path, capsys, no_runtime_setup):
    err = run_main("eval.py", [f"--config_path={B0_DEMO}", f"--data_path={demo['city']}",
                               f"--eval_ckpt_path={tmp_path}/nope.ckpt", *common(tmp_path)], capsys)
    assert "checkpoint not found" in err and "nope.ckpt" in err


def test_checkpoint_of_another_variant_or_model(demo, tmp_path, capsys, no_runtime_setup):
    # A B0 checkpoint for a B1 config: mis-shaped tensors.
    err = run_main("infer.py", [f"--config_path={B0_DEMO}", "--backbone=mit_b1",
                                f"--infer_ckpt_path={demo['ckpt']}", f"--data_path={demo['city']}",
                                *common(tmp_path)], capsys)
    assert "does not fit the config" in err and "backbone=mit_b1" in err and "shape" in err
    # A SegFormer checkpoint for a ViT config: nothing matches.
    err = run_main("export.py", [f"--config_path={REPO}/config/vit.tiny.demo.yaml",
                                 f"--export_ckpt_path={demo['ckpt']}", "--mode=PYNATIVE",
                                 f"--export_file_name={tmp_path}/m"], capsys)
    assert "does not fit the config" in err and "model=vit" in err


def test_empty_and_non_image_input_folders(demo, tmp_path, capsys, no_runtime_setup):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [f"--config_path={B0_DEMO}", f"--infer_ckpt_path={demo['ckpt']}", *common(tmp_path)]
    err = run_main("infer.py", args + [f"--data_path={empty}"], capsys)
    assert "no images" in err and "it is empty" in err
    (empty / "readme.md").write_text("x")
    err = run_main("infer.py", args + [f"--data_path={empty}"], capsys)
    assert "no images" in err and "readme.md" in err


def test_output_path_not_writable(demo, tmp_path, capsys, no_runtime_setup):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    err = run_main("infer.py", [f"--config_path={B0_DEMO}", f"--infer_ckpt_path={demo['ckpt']}",
                                f"--data_path={demo['city']}",
                                f"--infer_output_path={blocker}/out", *common(tmp_path)], capsys)
    assert "not writable" in err and "a_file" in err
    with pytest.raises(InferInputError, match="not found"):
        list_images(str(tmp_path / "missing"), seg_cfg(demo["city"], tmp_path), str(tmp_path))


def test_air_needs_ascend_and_bad_format(demo, tmp_path, capsys, no_runtime_setup):
    base = [f"--config_path={B0_DEMO}", f"--export_ckpt_path={demo['ckpt']}", "--mode=PYNATIVE",
            f"--export_file_name={tmp_path}/m"]
    err = run_main("export.py", base + ["--export_format=AIR"], capsys)
    assert "AIR needs Ascend" in err
    err = run_main("export.py", base + ["--export_format=TFLITE"], capsys)
    assert "export_format" in err and "TFLITE" in err
    err = run_main("export.py", base + ["--export_format=ONNX", "--export_input_shape=1,3,-1,-1"],
                   capsys)
    assert "MINDIR only" in err


def test_eval_missing_dataset(demo, tmp_path, capsys, no_runtime_setup):
    err = run_main("eval.py", [f"--config_path={B0_DEMO}", f"--data_path={tmp_path}/no_data",
                               f"--eval_ckpt_path={demo['ckpt']}", *common(tmp_path)], capsys)
    assert "dataset root not found" in err
