"""tools/convert_model.py for ViT / Segmenter checkpoints: timm ViT (.pth, .safetensors) ->
ViT classifier or Segmenter encoder, official Segmenter checkpoints; strict shape checks,
counts, opt-in head dropping, clear errors for bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from src.models import build_model
from src.utils.checkpoint import load_checkpoint, load_pretrained
from src.convert import ConversionError, convert_checkpoint
from tests.vit_oracle import MaskTransformerRef, hf_to_timm, hf_vit, official_segmenter_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_32 = ["--backbone=vit_tiny_patch16_224", "--image_size=32"]
ADE_TINY = os.path.join(ROOT, "config", "segmenter.tiny.mask.512x512.ade.yaml")


@pytest.fixture(scope="module")
def timm_state():
    """A timm ViT-Ti/16 state dict (names from HF via the test's own mapping), pretrained
    grid 2x2 (32x32 input), 10 classes."""
    return hf_to_timm(hf_vit("tiny", patch=16, image_size=32, num_labels=10).state_dict())


@pytest.fixture(scope="module")
def segmenter_state():
    hf = hf_vit("tiny", patch=16, image_size=32, num_labels=1000, eps=1e-5)
    return official_segmenter_state(hf, MaskTransformerRef(5, 192, n_layers=2))


def write_pth(path, state, wrap=None):
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    torch.save({wrap: tensors} if wrap else tensors, path)
    return str(path)


def convert(tmp_path, state, *overrides, name="in.pth"):
    src = write_pth(tmp_path / name, state)
    return convert_checkpoint(src, str(tmp_path / "out.ckpt"), overrides=list(overrides),
                              log=lambda *_: None)


def test_timm_to_vit_is_identity_pth_and_safetensors(tmp_path, timm_state):
    for name in ("a.pth", "a.safetensors"):
        path = tmp_path / name
        if name.endswith(".pth"):
            write_pth(path, timm_state)
        else:
            save_file(timm_state, str(path))
        out = tmp_path / (name + ".ckpt")
        summary = convert_checkpoint(str(path), str(out), log=lambda *_: None,
                                     overrides=["--model=vit", *TINY_32, "--class_num=10"])
        assert summary["format"] == "timm-vit"
        assert (summary["skipped"], summary["missing"]) == ([], [])
        written = load_checkpoint(str(out))
        assert sorted(written) == sorted(timm_state) and len(written) == 4 + 12 * 12 + 2 + 2
        for key, value in timm_state.items():
            np.testing.assert_array_equal(written[key].asnumpy(), value)


@pytest.mark.parametrize("scheme", ["state_dict", "hub"])
def test_hf_vit_converts_and_matches_hf(tmp_path, scheme):
    """An HF ViTForImageClassification saved with ``torch.save(model.state_dict())``
    (transformers >= 5 in-memory names: ``vit.layers.0.attention.q_proj``) or with
    ``save_pretrained`` (hub names: ``vit.encoder.layer.0.attention.attention.query``)
    converts without a config into a ViT that computes HF's logits."""
    import mindspore as ms
    from tests.vit_oracle import rel_err
    hf = hf_vit("tiny", patch=16, image_size=32, num_labels=10, seed=4)
    if scheme == "state_dict":
        assert "vit.layers.0.attention.q_proj.weight" in hf.state_dict()
        src = str(tmp_path / "vit.pt")
        torch.save(hf.state_dict(), src)
    else:
        hf.save_pretrained(str(tmp_path / "hub"))
        src = str(tmp_path / "hub" / "model.safetensors")
    summary = convert_checkpoint(src, str(tmp_path / "out.ckpt"), log=lambda *_: None)
    assert summary["format"] == "hf-transformers-vit"
    assert (summary["skipped"], summary["missing"]) == ([], [])
    cfg = summary["cfg"]
    assert (cfg.model, cfg.image_size, cfg.class_num) == ("vit", 32, 10)
    assert cfg.backbone.startswith("vit_tiny_patch16_")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = build_model(cfg)
    load_pretrained(net, str(tmp_path / "out.ckpt"), log=lambda *_: None)
    net.set_train(False)
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = hf(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert rel_err(net(ms.Tensor(x)).asnumpy(), expected) < 1e-4


def test_timm_to_segmenter_encoder(tmp_path, timm_state):
    summary = convert(tmp_path, timm_state, "--model=segmenter", *TINY_32, "--class_num=19")
    assert summary["converted"] == sorted("encoder." + k for k in timm_state
                                          if not k.startswith("head."))
    assert sorted(summary["skipped"]) == ["head.bias", "head.weight"]
    assert summary["missing"] and all(n.startswith("decoder.") for n in summary["missing"])
    net = build_model(summary["cfg"])
    loaded, missing = load_pretrained(net, str(tmp_path / "out.ckpt"), log=lambda *_: None)
    assert len(loaded) == 150 and all(n.startswith("decoder.") for n in missing)
    params = {p.name: p for p in net.get_parameters()}
    np.testing.assert_array_equal(params["encoder.blocks.3.attn.qkv.weight"].asnumpy(),
                                  timm_state["blocks.3.attn.qkv.weight"])


def test_segmenter_pos_embed_resampled_once_to_the_config_grid(tmp_path, timm_state):
    """rstrudel/segmenter resamples the pretrained grid to the training grid once (bilinear,
    torch F.interpolate, align_corners False) and trains it there: 2x2 -> 4x4 for 64x64."""
    summary = convert(tmp_path, timm_state, "--model=segmenter", "--backbone=vit_tiny_patch16_224",
                      "--image_size=64", "--class_num=19")
    written = load_checkpoint(str(tmp_path / "out.ckpt"))["encoder.pos_embed"].asnumpy()
    pos = torch.from_numpy(timm_state["pos_embed"])
    grid = pos[:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False)
    expected = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 16, -1)], dim=1).numpy()
    np.testing.assert_allclose(written, expected, rtol=1e-6, atol=1e-7)
    net = build_model(summary["cfg"])
    _, missing = load_pretrained(net, str(tmp_path / "out.ckpt"), log=lambda *_: None)
    assert all(n.startswith("decoder.") for n in missing)


def test_other_class_count_needs_drop_head(tmp_path, timm_state):
    with pytest.raises(ConversionError, match="'head.weight' has 10 classes.*class_num' is 7.*"
                                              "--drop_head=True"):
        convert(tmp_path, timm_state, "--model=vit", *TINY_32, "--class_num=7")
    summary = convert(tmp_path, timm_state, "--model=vit", *TINY_32, "--class_num=7",
                      "--drop_head=True")
    assert [s.split()[0] for s in summary["skipped"]] == ["head.weight", "head.bias"]
    assert sorted(summary["missing"]) == ["head.bias", "head.weight"]
    net = build_model(summary["cfg"])
    _, missing = load_pretrained(net, str(tmp_path / "out.ckpt"), log=lambda *_: None)
    assert sorted(missing) == ["head.bias", "head.weight"]


def test_official_segmenter_checkpoint_with_wrapper(tmp_path, segmenter_state):
    src = write_pth(tmp_path / "seg.pth", segmenter_state, wrap="model")
    summary = convert_checkpoint(src, str(tmp_path / "seg.ckpt"), log=lambda *_: None)
    assert summary["format"] == "segmenter-official"
    cfg = summary["cfg"]
    assert (cfg.backbone, cfg.image_size, cfg.decoder, cfg.decoder_layers, cfg.class_num) == (
        "vit_tiny_patch16_384", 32, "mask_transformer", 2, 5)
    assert sorted(summary["skipped"]) == ["encoder.head.bias", "encoder.head.weight"]
    assert len(summary["converted"]) == len(segmenter_state) - 2 and summary["missing"] == []


def test_official_segmenter_other_classes_drop_only_class_tensors(tmp_path, segmenter_state):
    base = ["--model=segmenter", "--backbone=vit_tiny_patch16_384", "--image_size=32"]
    with pytest.raises(ConversionError, match="'decoder.cls_emb' has 5 classes.*--drop_head"):
        convert(tmp_path, segmenter_state, *base, "--class_num=19")
    summary = convert(tmp_path, segmenter_state, *base, "--class_num=19", "--drop_head=True")
    dropped = ["decoder.cls_emb", "decoder.mask_norm.bias", "decoder.mask_norm.weight"]
    assert sorted(summary["missing"]) == dropped
    assert sorted(s.split()[0] for s in summary["skipped"]) == [
        "decoder.cls_emb", "decoder.mask_norm.bias", "decoder.mask_norm.weight",
        "encoder.head.bias", "encoder.head.weight"]
    net = build_model(summary["cfg"])
    _, missing = load_pretrained(net, str(tmp_path / "out.ckpt"), log=lambda *_: None)
    assert sorted(missing) == dropped


def test_official_segmenter_config_mismatches_name_the_fix(tmp_path, segmenter_state):
    base = ["--model=segmenter", "--backbone=vit_tiny_patch16_384", "--image_size=32",
            "--class_num=5"]
    with pytest.raises(ConversionError, match="mask_transformer decoder.*--decoder=mask_transformer"):
        convert(tmp_path, segmenter_state, *base, "--decoder=linear")
    with pytest.raises(ConversionError, match="has 2 blocks.*--decoder_layers=2"):
        convert(tmp_path, segmenter_state, *base, "--decoder_layers=3")
    with pytest.raises(ConversionError, match="--model=segmenter"):
        convert(tmp_path, segmenter_state, "--model=vit", *TINY_32, "--class_num=5")


def test_wrong_variant_and_grid_are_clear_errors(tmp_path, timm_state):
    with pytest.raises(ConversionError, match="embed_dim 192.*vit_tiny_patch16_224.*'backbone' is "
                                              "'vit_small_patch16_224'"):
        convert(tmp_path, timm_state, "--model=vit", "--backbone=vit_small_patch16_224",
                "--image_size=32", "--class_num=10")
    with pytest.raises(ConversionError, match="4 position tokens.*24x24.*--image_size=32"):
        convert(tmp_path, timm_state, "--model=vit", "--backbone=vit_tiny_patch16_384",
                "--image_size=384", "--class_num=10")


def test_truncated_state_dicts_are_errors(tmp_path, timm_state):
    one_missing = {k: v for k, v in timm_state.items() if k != "blocks.5.mlp.fc2.bias"}
    with pytest.raises(ConversionError, match="1 encoder tensors missing, first "
                                              "'blocks.5.mlp.fc2.bias'"):
        convert(tmp_path, one_missing, "--model=vit", *TINY_32, "--class_num=10")
    no_norm = {k: v for k, v in timm_state.items() if not k.startswith("norm.")}
    with pytest.raises(ConversionError, match="missing, first 'norm.weight'"):
        convert(tmp_path, no_norm)   # variant inferred from the shapes
    last_block_gone = {k: v for k, v in timm_state.items() if not k.startswith("blocks.11.")}
    with pytest.raises(ConversionError, match="no ViT variant has embed_dim 192, depth 11"):
        convert(tmp_path, last_block_gone)


def test_unreadable_files_are_errors(tmp_path, timm_state):
    with pytest.raises(ConversionError, match="not found"):
        convert_checkpoint(str(tmp_path / "nope.pth"), str(tmp_path / "o.ckpt"))
    for name in ("cut.pth", "cut.safetensors"):
        full = tmp_path / ("full_" + name)
        if name.endswith(".pth"):
            write_pth(full, timm_state)
        else:
            save_file(timm_state, str(full))
        data = full.read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ConversionError, match="cannot read"):
            convert_checkpoint(str(tmp_path / name), str(tmp_path / "o.ckpt"))
    assert not (tmp_path / "o.ckpt").exists()


def test_other_vit_flavours_are_rejected(tmp_path, timm_state):
    deit = dict(timm_state, dist_token=np.zeros((1, 1, 192), np.float32))
    with pytest.raises(ConversionError, match="'dist_token' marks a DeiT distilled model"):
        convert(tmp_path, deit)
    extra = dict(timm_state, **{"blocks.0.attn.rel_pos": np.zeros((3,), np.float32)})
    with pytest.raises(ConversionError, match="unexpected tensor 'blocks.0.attn.rel_pos'"):
        convert(tmp_path, extra)


def test_in21k_pre_logits(tmp_path, timm_state):
    state = dict(timm_state, **{"pre_logits.fc.weight": np.zeros((192, 192), np.float32),
                                "pre_logits.fc.bias": np.zeros((192,), np.float32)})
    with pytest.raises(ConversionError, match="pre_logits.*--drop_head=True"):
        convert(tmp_path, state, "--model=vit", *TINY_32, "--class_num=10")
    summary = convert(tmp_path, state, "--model=vit", *TINY_32, "--class_num=10",
                      "--drop_head=True")
    assert sorted(summary["missing"]) == ["head.bias", "head.weight"]
    assert len(summary["skipped"]) == 4
    summary = convert(tmp_path, state, "--model=segmenter", *TINY_32, "--class_num=19")
    assert len(summary["skipped"]) == 4


def test_cli_drop_head_reports_the_dropped_head(tmp_path, timm_state):
    src = write_pth(tmp_path / "in.pth", timm_state)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_model.py"),
                          f"--pt_model_path={src}", f"--ms_model_path={tmp_path / 'o.ckpt'}",
                          "--class_num=3", "--drop_head=True"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "format timm-vit" in run.stdout and "skipped 2 (head.* (2))" in run.stdout
    assert sorted(load_checkpoint(str(tmp_path / "o.ckpt"))) == sorted(
        k for k in timm_state if not k.startswith("head."))


def test_official_ade20k_segmenter_evaluates_with_the_ade_config(tmp_path):
    """A 150-class official Segmenter checkpoint converts against
    segmenter.tiny.mask.512x512.ade.yaml and eval.py's strict loader builds the reference
    function with that config (the image_size of the checkpoint given, as for Cityscapes)."""
    import mindspore as ms
    from src.engine.networks import load_trained_net
    from src.utils.config import load_config
    from tests.vit_oracle import rel_err, segmenter_reference
    hf = hf_vit("tiny", patch=16, image_size=32, num_labels=1000, eps=1e-5)
    decoder = MaskTransformerRef(150, 192, n_layers=2, seed=5).eval()
    src = write_pth(tmp_path / "checkpoint.pth", official_segmenter_state(hf, decoder), wrap="model")
    overrides = ["--image_size=32", "--device_target=CPU"]
    summary = convert_checkpoint(src, str(tmp_path / "ade.ckpt"), config_path=ADE_TINY, overrides=overrides,
                                 log=lambda *_: None)
    assert summary["cfg"].class_num == 150 and summary["missing"] == []
    net = load_trained_net(load_config(ADE_TINY, overrides), str(tmp_path / "ade.ckpt"), log=lambda _: None)
    image = np.random.default_rng(6).standard_normal((1, 3, 40, 56)).astype(np.float32)
    ref = segmenter_reference(hf, decoder, torch.from_numpy(image), 16, (2, 2)).numpy()
    ours = net(ms.Tensor(image)).asnumpy()
    assert ours.shape == ref.shape == (1, 150, 40, 56)
    assert rel_err(ours, ref) < 1e-4
