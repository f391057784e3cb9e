"""ViT classifier: parameter counts equal timm's, logits equal HF transformers' ViT
(random weights, saved under timm names, converted by tools' converter), position
embeddings resized by the official Segmenter rule at non-native input sizes."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore.nn.utils import no_init_parameters
from safetensors.numpy import save_file

from conftest import KERNEL_BACKENDS
from src.models import build_model
from src.models.backends.reference import DropPath
from src.models.vit import VIT_SETTINGS, resize_pos_embed
from src.utils.checkpoint import load_checkpoint, load_into_net
from src.utils.config import load_config
from src.convert import convert_checkpoint
from tests.vit_oracle import hf_at_size, hf_to_timm, hf_vit, rel_err
from tests.vit_oracle import resize_pos_embed as resize_pos_embed_ref

ms.set_context(mode=ms.PYNATIVE_MODE)


def vit_cfg(*overrides):
    return load_config("", ["--model=vit", *overrides])


# timm's published counts (1000 classes).
TIMM_PARAM_COUNTS = {
    "vit_base_patch16_224": 86_567_656,
    "vit_base_patch32_224": 88_224_232,
    "vit_large_patch16_384": 304_715_752,
    "vit_tiny_patch16_384": 5_790_376,
}


@pytest.mark.parametrize("backbone", sorted(TIMM_PARAM_COUNTS))
def test_parameter_count_equals_timm(backbone):
    with no_init_parameters():  # shapes only
        net = build_model(vit_cfg(f"--backbone={backbone}", "--class_num=1000"))
    assert sum(int(np.prod(p.shape)) for p in net.get_parameters()) == TIMM_PARAM_COUNTS[backbone]


def test_settings_table_has_every_variant():
    names = {f"vit_{w}_patch{p}_{s}" for w in ("tiny", "small", "base", "large")
             for p in (16, 32) for s in (224, 384)}
    assert set(VIT_SETTINGS) == names


@pytest.fixture(scope="module", params=KERNEL_BACKENDS)
def converted_tiny(tmp_path_factory, request):
    """HF ViT-Ti/16 (random, 10 classes, pretrained at 32x32) -> timm names (.safetensors)
    -> tools' converter (variant read from the shapes) -> our ViT with the weights, on
    each kernel backend."""
    hf = hf_vit("tiny", patch=16, image_size=32, num_labels=10)
    tmp = tmp_path_factory.mktemp("vit")
    save_file(hf_to_timm(hf.state_dict()), str(tmp / "vit_tiny.safetensors"))
    summary = convert_checkpoint(str(tmp / "vit_tiny.safetensors"), str(tmp / "vit_tiny.ckpt"),
                                 log=lambda *_: None)
    cfg = summary["cfg"]
    assert (cfg.model, cfg.class_num, cfg.image_size) == ("vit", 10, 32)
    assert cfg.backbone.startswith("vit_tiny_patch16_")
    cfg.kernel_backend = request.param
    net = build_model(cfg)
    load_into_net(net, load_checkpoint(str(tmp / "vit_tiny.ckpt")), strict=True)
    net.set_train(False)
    return hf, net


def _compare(hf, net, image):
    with torch.no_grad():
        ref = hf(torch.from_numpy(image)).logits.numpy()
    ours = net(ms.Tensor(image)).asnumpy()
    assert ours.shape == ref.shape
    return rel_err(ours, ref)


def test_logits_match_hf_at_native_size(converted_tiny):
    hf, net = converted_tiny
    image = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert _compare(hf, net, image) < 1e-4


def test_logits_match_hf_in_graph_mode(converted_tiny):
    """The compiled graph (what the CPU benchmark and training run) against HF too."""
    hf, net = converted_tiny
    image = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        err = _compare(hf, net, image)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert err < 1e-4


def test_logits_match_hf_with_resized_position_embedding(converted_tiny):
    """48x64 input: patch grid 3x4 instead of the native 2x2."""
    hf, net = converted_tiny
    image = np.random.default_rng(1).standard_normal((2, 3, 48, 64)).astype(np.float32)
    hf_resized = hf_at_size(hf, (2, 2), 48, 64)
    assert _compare(hf_resized, net, image) < 1e-4
    # the rule matters: HF's own (bicubic) interpolation gives other logits
    with torch.no_grad():
        bicubic = hf(torch.from_numpy(image), interpolate_pos_encoding=True).logits.numpy()
    assert rel_err(net(ms.Tensor(image)).asnumpy(), bicubic) > 1e-3


@pytest.mark.parametrize("old_grid,new_grid", [((4, 4), (6, 10)), ((5, 7), (3, 4)), ((3, 3), (3, 3))])
def test_resize_pos_embed_is_bilinear_half_pixel(old_grid, new_grid):
    rng = np.random.default_rng(2)
    pos = rng.standard_normal((1, 1 + old_grid[0] * old_grid[1], 8)).astype(np.float32)
    ours = resize_pos_embed(ms.Tensor(pos), old_grid, new_grid).asnumpy()
    ref = resize_pos_embed_ref(torch.from_numpy(pos), old_grid, new_grid).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="'backbone'.*vit_tiny_patch8_224"):
        build_model(vit_cfg("--backbone=vit_tiny_patch8_224"))
    with pytest.raises(ValueError, match="'image_size'.*not a multiple of the patch size 16"):
        build_model(vit_cfg("--backbone=vit_tiny_patch16_224", "--image_size=40"))
    with pytest.raises(ValueError, match="'image_size'.*int or \\[height, width\\]"):
        build_model(vit_cfg("--backbone=vit_tiny_patch16_224", "--image_size=big"))
    with pytest.raises(ValueError, match="'class_num'"):
        build_model(vit_cfg("--backbone=vit_tiny_patch16_224", "--class_num=0"))


def test_input_not_a_multiple_of_the_patch_is_an_error():
    net = build_model(vit_cfg("--backbone=vit_tiny_patch16_224", "--image_size=32"))
    with pytest.raises(ValueError, match="40x32 is not a multiple of the patch size 16"):
        net(ms.Tensor(np.zeros((1, 3, 40, 32), np.float32)))


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])
def test_training_gradients_match_hf(converted_tiny, mode):
    """Every parameter gradient in training mode (no dropout): on the cpu backend the
    attention is the fused kernel with its own backward, the MLP the GELU+bias kernel."""
    hf, net = converted_tiny
    rng = np.random.default_rng(3)
    image = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    weights = rng.standard_normal((2, 10)).astype(np.float32)  # loss = sum(weights * logits)

    hf.train()
    hf.zero_grad()
    (hf(torch.from_numpy(image)).logits * torch.from_numpy(weights)).sum().backward()
    ref = hf_to_timm({name: p.grad for name, p in hf.named_parameters()})
    hf.eval()

    # training mode without randomness (the converter's inferred config has drop path 0.1)
    drop_paths = [cell for _, cell in net.cells_and_names() if isinstance(cell, DropPath)]
    saved = [cell.drop_prob for cell in drop_paths]
    for cell in drop_paths:
        cell.drop_prob, cell.keep_prob = 0.0, 1.0
    old_mode = ms.get_context("mode")
    ms.set_context(mode=mode)
    net.set_train(True)
    try:
        params = net.trainable_params()
        w = ms.Tensor(weights)

        def loss(x):
            return (net(x) * w).sum()

        grads = ms.grad(loss, grad_position=None, weights=params)(ms.Tensor(image))
    finally:
        net.set_train(False)
        ms.set_context(mode=old_mode)
        for cell, prob in zip(drop_paths, saved):
            cell.drop_prob, cell.keep_prob = prob, 1.0 - prob
    assert len(grads) == len(ref) == len(params)
    errors = {p.name: rel_err(g.asnumpy(), ref[p.name]) for p, g in zip(params, grads)}
    assert max(errors.values()) < 1e-4, errors
