"""Segmenter: logits equal a PyTorch reference (HF transformers ViT encoder + the Mask
Transformer / linear decoder written from the paper, tests/vit_oracle.py) with the same
weights, saved in the official checkpoint format and converted by tools' converter.
Inputs need padding (40x50 with patch 16) and a resized position embedding."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore.nn.utils import no_init_parameters

from src.models import build_model
from src.utils.checkpoint import load_checkpoint, load_into_net
from src.utils.config import load_config
from src.convert import convert_checkpoint
from tests.vit_oracle import (LinearDecoderRef, MaskTransformerRef, hf_vit,
                              official_segmenter_state, rel_err, segmenter_reference)

ms.set_context(mode=ms.PYNATIVE_MODE)

CLASSES = 5


def seg_cfg(*overrides):
    return load_config("", ["--model=segmenter", "--backbone=vit_tiny_patch16_384",
                            f"--class_num={CLASSES}", *overrides])


@pytest.fixture(scope="module")
def hf_encoder():
    # official Segmenter LayerNorms use PyTorch's default eps 1e-5; pretrained at 32x32
    return hf_vit("tiny", patch=16, image_size=32, num_labels=1000, eps=1e-5)


def _convert_and_build(tmp_path, state, decoder, kernel_backend):
    """Official checkpoint layout ({'model': state_dict, ...}) -> converter -> our net."""
    pth = tmp_path / "segmenter.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}, "epoch": 7}, pth)
    summary = convert_checkpoint(str(pth), str(tmp_path / "segmenter.ckpt"), log=lambda *_: None)
    cfg = summary["cfg"]
    assert (cfg.model, cfg.decoder, cfg.class_num, cfg.image_size) == ("segmenter", decoder,
                                                                       CLASSES, 32)
    assert summary["skipped"] == ["encoder.head.bias", "encoder.head.weight"]
    cfg.kernel_backend = kernel_backend
    net = build_model(cfg)
    load_into_net(net, load_checkpoint(str(tmp_path / "segmenter.ckpt")), strict=True)
    net.set_train(False)
    return net


@pytest.mark.parametrize("decoder", ["mask_transformer", "linear"])
def test_logits_match_reference(hf_encoder, tmp_path, decoder, kernel_backend):
    ref_decoder = (MaskTransformerRef(CLASSES, 192, n_layers=2, seed=3) if decoder != "linear"
                   else LinearDecoderRef(CLASSES, 192, seed=3)).eval()
    net = _convert_and_build(tmp_path, official_segmenter_state(hf_encoder, ref_decoder), decoder,
                             kernel_backend)
    image = np.random.default_rng(0).standard_normal((2, 3, 40, 50)).astype(np.float32)
    ref = segmenter_reference(hf_encoder, ref_decoder, torch.from_numpy(image), 16, (2, 2)).numpy()
    ours = net(ms.Tensor(image)).asnumpy()
    assert ours.shape == ref.shape == (2, CLASSES, 40, 50)
    assert rel_err(ours, ref) < 1e-4


def test_mask_transformer_matches_reference_in_graph_mode(hf_encoder, tmp_path, kernel_backend):
    """The compiled graph against the reference too (encoder and decoder attention)."""
    ref_decoder = MaskTransformerRef(CLASSES, 192, n_layers=2, seed=4).eval()
    net = _convert_and_build(tmp_path, official_segmenter_state(hf_encoder, ref_decoder),
                             "mask_transformer", kernel_backend)
    image = np.random.default_rng(1).standard_normal((2, 3, 40, 50)).astype(np.float32)
    ref = segmenter_reference(hf_encoder, ref_decoder, torch.from_numpy(image), 16, (2, 2)).numpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ours = net(ms.Tensor(image)).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert ours.shape == ref.shape == (2, CLASSES, 40, 50)
    assert rel_err(ours, ref) < 1e-4


def test_parameter_count_equals_reference(hf_encoder):
    """Encoder = HF ViTModel without pooler; decoder = the paper's Mask Transformer."""
    with no_init_parameters():
        net = build_model(seg_cfg("--decoder=mask_transformer", "--image_size=32"))
    ours = sum(int(np.prod(p.shape)) for p in net.get_parameters())
    ref = (sum(p.numel() for p in hf_encoder.vit.parameters())
           + sum(p.numel() for p in MaskTransformerRef(CLASSES, 192).parameters()))
    assert ours == ref


def test_official_names_and_default_grid():
    with no_init_parameters():
        net = build_model(seg_cfg())
    names = {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert names["encoder.pos_embed"] == (1, 24 * 24 + 1, 192)   # 384 / 16
    assert names["decoder.cls_emb"] == (1, CLASSES, 192)
    assert names["decoder.proj_patch"] == names["decoder.proj_classes"] == (192, 192)
    assert names["decoder.mask_norm.weight"] == (CLASSES,)
    assert not any(n.startswith("encoder.head") for n in names)
    assert sum(n.startswith("decoder.blocks.") for n in names) == 2 * 12


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="'decoder'.*'mlp'"):
        build_model(seg_cfg("--decoder=mlp"))
    with pytest.raises(ValueError, match="'backbone'.*'mit_b0'"):
        build_model(seg_cfg("--backbone=mit_b0"))
    with pytest.raises(ValueError, match="'decoder_layers'"):
        build_model(seg_cfg("--decoder_layers=0"))
