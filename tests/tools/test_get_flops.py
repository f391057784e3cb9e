"""tools/get_flops.py and src/utils/flops.py: parameter and MAC counts.

Oracles: published numbers (SegFormer-B0 with 19 classes: 3,719,027 parameters and
~121.8 GMAC at 1024x2048 with plain attention, fvcore conventions; ViT-B/16: 86,567,656
parameters and 17.58 GMAC at 224, shared/notes/anchors.md) and PyTorch's own
``torch.utils.flop_counter.FlopCounterMode`` run on the independent HF transformers /
paper reference models (conv + linear + matmul MACs must agree exactly, at input sizes
that exercise padding, odd strides and resized position embeddings).
"""
import importlib.util
import os

import mindspore as ms
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from src.models import build_model
from src.utils.config import load_config
from src.utils.flops import FlopCountError, count_model
from tests.segformer_oracle import hf_config
from tests.vit_oracle import MaskTransformerRef, hf_vit, segmenter_reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ms.set_context(mode=ms.PYNATIVE_MODE)


def load_tool():
    spec = importlib.util.spec_from_file_location("get_flops", os.path.join(ROOT, "tools", "get_flops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config(name, *overrides):
    """The config on the reference kernel backend: the layers as published, which is what
    the counter counts (get_flops.py builds it so)."""
    return load_config(os.path.join(ROOT, "config", name),
                       ["--kernel_backend=reference", *overrides])


def torch_macs(fn):
    """MACs that PyTorch's FlopCounterMode sees (it counts 2 FLOPs per multiply-add)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() // 2


def core_macs(report):
    """Conv + dense + matmul: the operators FlopCounterMode counts."""
    ops = report.by_operator()
    return ops.get("conv", 0) + ops.get("dense", 0) + ops.get("matmul", 0)


# ------------------------------------------------------------------ published numbers --

def test_segformer_b0_cityscapes_published_numbers():
    net = build_model(config("segformer.b0.1024x1024.city.yaml"))
    report = count_model(net, (1, 3, 1024, 2048))
    assert report.params == 3_719_027
    assert report.buffers == 2 * 256                  # BatchNorm running mean/var, not params
    assert report.total_macs == pytest.approx(121.8e9, rel=0.01)
    assert report.output_shapes == [(1, 19, 256, 512)]
    assert report.uncounted == []
    # the attention products are counted (plain attention): the stage-1 q@k^T of one block
    # alone is 131072 queries x 2048 keys x 32 channels
    assert report.by_operator()["matmul"] >= 2 * 2 * 131072 * 2048 * 32
    # the decode head upsamples c2..c4 (256 channels each) bilinearly to 256x512
    assert report.by_operator()["interpolate"] == 4 * 3 * 256 * 256 * 512


def test_vit_b16_published_numbers():
    net = build_model(config("vit_patch16_imagenet2012_config.yml", "--class_num=1000"))
    report = count_model(net, (1, 3, 224, 224))
    assert report.params == 86_567_656
    assert report.total_macs == pytest.approx(17.58e9, rel=0.01)
    assert report.output_shapes == [(1, 1000)]


# ------------------------------------------------- PyTorch FlopCounterMode on references --

def test_segformer_matches_torch_flop_counter_at_odd_size():
    from transformers import SegformerForSemanticSegmentation
    hf = hf_config("mit_b0")
    hf._attn_implementation = "eager"   # plain matmuls, which FlopCounterMode counts
    ref = SegformerForSemanticSegmentation(hf).eval()
    expected = torch_macs(lambda: ref(torch.zeros(1, 3, 100, 164)))
    report = count_model(build_model(config("segformer.b0.demo.yaml")), (1, 3, 100, 164))
    assert core_macs(report) == expected
    assert report.output_shapes == [(1, 19, 25, 41)]


def test_vit_matches_torch_flop_counter():
    ref = hf_vit("tiny", patch=16, image_size=64, num_labels=4)
    expected = torch_macs(lambda: ref(torch.zeros(1, 3, 64, 64)))
    report = count_model(build_model(config("vit.tiny.demo.yaml")), (1, 3, 64, 64))
    assert core_macs(report) == expected
    # LayerNorm counted at 5 per element: 25 norms over 17 tokens x 192
    assert report.by_operator()["norm"] == 25 * 5 * 17 * 192


def test_segmenter_matches_reference_with_padding_and_resized_pos_embed():
    classes = 5
    hf_encoder = hf_vit("tiny", patch=16, image_size=32)
    decoder = MaskTransformerRef(classes, 192)
    image = torch.zeros(1, 3, 40, 50)        # padded to 48x64 -> 3x4 grid, pos embed 2x2 -> 3x4
    expected = torch_macs(lambda: segmenter_reference(hf_encoder, decoder, image, 16, (2, 2)))
    cfg = load_config("", ["--model=segmenter", "--backbone=vit_tiny_patch16_384",
                           "--image_size=32", f"--class_num={classes}",
                           "--kernel_backend=reference"])
    net = build_model(cfg)
    report = count_model(net, (1, 3, 40, 50))
    assert core_macs(report) == expected
    assert report.output_shapes == [(1, classes, 40, 50)]
    # bilinear: 4 per output element, the mask upsampling (5 x 48 x 64) + the position
    # embedding resize (192 x 3 x 4)
    assert report.by_operator()["interpolate"] == 4 * (classes * 48 * 64 + 192 * 3 * 4)
    # the count left the network and mindspore.ops as they were: a real forward runs
    assert "construct" not in vars(net.decoder)
    out = net(ms.Tensor(image.numpy()))
    assert out.shape == (1, classes, 40, 50) and float(abs(out).sum().asnumpy()) > 0


def test_per_module_table_adds_up_and_the_network_is_left_intact():
    net = build_model(config("segformer.b0.demo.yaml"))
    net.set_train(False)
    image = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, 64, 128)), ms.float32)
    before = net(image).asnumpy()
    report = count_model(net, (1, 3, 64, 128))
    np.testing.assert_array_equal(net(image).asnumpy(), before)   # stand-ins all removed
    assert report.macs_of("backbone") + report.macs_of("decode_head") == report.total_macs
    assert report.cell_params["backbone"] + report.cell_params["decode_head"] == report.params
    for depth in (1, 2, 3):
        assert sum(macs for _, macs in report.partition(depth)) == report.total_macs
    # the head's own work (not in a child Cell): upsampling 3 x 256 channels to 16x32
    assert dict(report.partition(2))["decode_head (own)"] == 4 * 3 * 256 * 16 * 32
    table = report.table(max_depth=1)
    assert "backbone" in table and "decode_head" in table and "backbone.block1" not in table


def test_cpu_backend_network_is_refused():
    net = build_model(config("segformer.b0.demo.yaml", "--kernel_backend=cpu"))
    with pytest.raises(FlopCountError, match="'backbone.patch_embed1.proj'.*cpu kernel backend.*"
                                             "kernel_backend: reference"):
        count_model(net, (1, 3, 64, 64))


def test_graph_mode_is_refused():
    net = build_model(config("segformer.b0.demo.yaml"))
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        with pytest.raises(FlopCountError, match="PYNATIVE"):
            count_model(net, (1, 3, 64, 64))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


# ------------------------------------------------------------------------------ tool --

def test_tool_prints_macs_and_params(capsys):
    tool = load_tool()
    assert tool.main([os.path.join(ROOT, "config", "vit.tiny.demo.yaml"), "--shape", "48", "80",
                      "--depth", "1", "--class_num=7"]) == 0
    out = capsys.readouterr().out
    assert "input shape: (1, 3, 48, 80), output shape: (1, 7)" in out
    assert "MACs:" in out and "multiply-adds" in out and "FLOPs ~ 2 x MACs" in out
    # parameters: those of the HF classifier with the same pretraining grid (64 / 16 = 4x4)
    ref = hf_vit("tiny", patch=16, image_size=64, num_labels=7)
    assert f"({sum(p.numel() for p in ref.parameters()):,} trainable)" in out


def test_tool_errors_are_clear(capsys):
    tool = load_tool()
    with pytest.raises(SystemExit) as exc:
        tool.main([os.path.join(ROOT, "config", "vit.tiny.demo.yaml"), "--shape", "50"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1, err
    assert err[0] == ("error: input 50x50 (--shape, or the config's eval_image_size) is not a "
                      "multiple of the patch size 16 of the ViT vit_tiny_patch16_224")
    assert tool.main([os.path.join(ROOT, "config", "vit.tiny.demo.yaml"), "--bogus=1"]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([os.path.join(ROOT, "config", "vit.tiny.demo.yaml"), "--shape", "1", "2", "3"])


def test_tool_keeps_the_traceback_of_an_unexpected_value_error(capsys, monkeypatch):
    """Only the project's own error types are one-line user errors: a ValueError from a
    bug (here inside the counter) keeps its traceback."""
    tool = load_tool()

    def broken_count(net, shape):
        raise ValueError("a bug in the counter")

    monkeypatch.setattr("src.utils.flops.count_model", broken_count)
    with pytest.raises(SystemExit) as exc:
        tool.main([os.path.join(ROOT, "config", "vit.tiny.demo.yaml"), "--shape", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1
    assert err[0] == "Traceback (most recent call last):"
    assert any("broken_count" in line for line in err)
    assert err[-1] == "error: unexpected ValueError: a bug in the counter (traceback above)"
