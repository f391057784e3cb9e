"""tools/convert_model.py on every SegFormer format, against HF transformers' outputs."""
import os
import subprocess
import sys

import numpy as np
import mindspore as ms
import pytest
import torch
from mindspore.nn.utils import no_init_parameters

from src.models import build_model
from src.utils.checkpoint import CheckpointError, load_pretrained
from src.utils.config import load_config
from src.convert import ConversionError, convert_checkpoint
from tests.segformer_oracle import (hf_config, hf_segformer, hub_state_dict, rel_err, save_hf,
                                    save_nvlabs_finetuned, save_nvlabs_imagenet)
from transformers import SegformerForSemanticSegmentation

ms.set_context(mode=ms.PYNATIVE_MODE)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B0_CONFIG = os.path.join(ROOT, "config", "segformer.b0.1024x1024.city.yaml")
ADE_B0_CONFIG = os.path.join(ROOT, "config", "segformer.b0.512x512.ade.yaml")


def convert(src, dst, *overrides, config_path=""):
    lines = []
    summary = convert_checkpoint(str(src), str(dst), config_path=config_path,
                                 overrides=list(overrides), log=lines.append)
    return summary, "\n".join(lines)


def load_net(ckpt, *overrides, log=print):
    net = build_model(load_config("", list(overrides)))
    load_pretrained(net, str(ckpt), log=log)
    net.set_train(False)
    return net


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    """Random HF B0 written in every upstream format, and its outputs on one input."""
    tmp = tmp_path_factory.mktemp("b0")
    ref = hf_segformer("mit_b0", seed=0)
    safetensors_path, bin_path = save_hf(ref, str(tmp / "hf"))
    from safetensors.torch import load_file
    hub = load_file(safetensors_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        out = ref(pixel_values=torch.from_numpy(x), output_hidden_states=True)
    feats, logits = [f.numpy() for f in out.hidden_states], out.logits.numpy()
    return dict(
        tmp=tmp, x=x, feats=feats, logits=logits, safetensors=safetensors_path, bin=bin_path,
        finetuned=save_nvlabs_finetuned(hub, str(tmp / "segformer.b0.city.pth"), 19),
        imagenet=save_nvlabs_imagenet(hub, str(tmp / "mit_b0.pth")))


@pytest.mark.parametrize("which", ["safetensors", "bin", "finetuned"])
def test_full_checkpoints_convert_number_exact(b0, which):
    out = b0["tmp"] / f"{which}.ckpt"
    config_path = B0_CONFIG if which == "finetuned" else ""  # with and without a config
    summary, log = convert(b0[which], out, config_path=config_path)
    expected = "nvlabs-segformer-finetuned" if which == "finetuned" else "hf-transformers-segformer"
    assert summary["format"] == expected and summary["missing"] == []
    assert summary["cfg"].backbone == "mit_b0" and summary["cfg"].class_num == 19
    if which == "finetuned":
        assert sorted(summary["skipped"]) == ["decode_head.conv_seg.bias",
                                              "decode_head.conv_seg.weight",
                                              "decode_head.linear_fuse.bn.num_batches_tracked"]
    else:
        assert "inferred from tensor shapes: model=segformer backbone=mit_b0" in log
        assert summary["skipped"] == ["decode_head.batch_norm.num_batches_tracked"]
    net = load_net(out, "--backbone=mit_b0")
    assert len(summary["converted"]) == len(net.parameters_dict())
    counts = f"converted {len(summary['converted'])} tensors, skipped {len(summary['skipped'])}"
    assert counts in log
    assert rel_err(net(ms.Tensor(b0["x"])).asnumpy(), b0["logits"]) < 1e-4


def test_transformers5_state_dict_converts_number_exact(tmp_path):
    """``torch.save(model.state_dict())`` under transformers >= 5 writes the in-memory names
    (``segformer.stages.0.blocks.0.attention.q_proj``), not the hub's: recognised and
    converted into the same function as HF's."""
    ref = hf_segformer("mit_b0", num_labels=7, seed=5)
    assert any(k.startswith("segformer.stages.0.blocks.0.attention.k_proj") for k in ref.state_dict())
    torch.save(ref.state_dict(), tmp_path / "segformer.pt")
    summary, log = convert(tmp_path / "segformer.pt", tmp_path / "out.ckpt")
    assert summary["format"] == "hf-transformers5-segformer-state-dict"
    assert "inferred from tensor shapes: model=segformer backbone=mit_b0 class_num=7" in log
    assert summary["missing"] == [] and summary["skipped"] == ["decode_head.batch_norm.num_batches_tracked"]
    net = load_net(tmp_path / "out.ckpt", "--backbone=mit_b0", "--class_num=7")
    x = np.random.default_rng(6).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        expected = ref(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert rel_err(net(ms.Tensor(x)).asnumpy(), expected) < 1e-4


def test_imagenet_mit_converts_to_backbone_only(b0):
    out = b0["tmp"] / "mit_b0.ckpt"
    summary, _ = convert(b0["imagenet"], out)
    assert summary["format"] == "nvlabs-mit-imagenet"
    assert sorted(summary["skipped"]) == ["head.bias", "head.weight"]
    assert all(name.startswith("backbone.") for name in summary["converted"])
    assert summary["missing"]
    assert all(name.startswith("decode_head.") for name in summary["missing"])
    reports = []
    net = load_net(out, "--backbone=mit_b0", log=reports.append)
    head_params = [p.name for p in net.decode_head.get_parameters()]
    assert f"freshly initialised: decode_head.* ({len(head_params)})" in reports[0]
    feats = net.backbone(ms.Tensor(b0["x"]))
    for ours, ref in zip(feats, b0["feats"]):
        assert rel_err(ours.asnumpy(), ref) < 1e-4


def test_hf_imagenet_classifier_converts_to_backbone_only(tmp_path):
    from safetensors.torch import load_file
    from transformers import SegformerForImageClassification
    torch.manual_seed(0)
    SegformerForImageClassification(hf_config("mit_b0", num_labels=1000)).save_pretrained(
        str(tmp_path / "mit-b0"))
    hub = load_file(str(tmp_path / "mit-b0" / "model.safetensors"))
    summary, _ = convert(tmp_path / "mit-b0" / "model.safetensors", tmp_path / "mit_b0.ckpt")
    assert summary["format"] == "hf-transformers-segformer"
    assert sorted(summary["skipped"]) == ["classifier.bias", "classifier.weight"]
    assert summary["converted"] and all(n.startswith("backbone.") for n in summary["converted"])
    saved = ms.load_checkpoint(str(tmp_path / "mit_b0.ckpt"))
    prefix = "segformer.encoder.block.3.1.attention.self."
    np.testing.assert_array_equal(
        saved["backbone.block4.1.attn.kv.weight"].asnumpy(),
        torch.cat([hub[prefix + "key.weight"], hub[prefix + "value.weight"]]).numpy())
    np.testing.assert_array_equal(saved["backbone.patch_embed3.norm.bias"].asnumpy(),
                                  hub["segformer.encoder.patch_embeddings.2.layer_norm.bias"].numpy())


def test_b2_converts_number_exact(tmp_path):
    ref = hf_segformer("mit_b2", seed=1)
    ref.save_pretrained(str(tmp_path / "hf"))
    safetensors_path = str(tmp_path / "hf" / "model.safetensors")
    summary, _ = convert(safetensors_path, tmp_path / "b2.ckpt")
    assert summary["cfg"].backbone == "mit_b2" and summary["missing"] == []
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = ref(pixel_values=torch.from_numpy(x)).logits.numpy()
    with no_init_parameters():  # every parameter comes from the checkpoint
        net = build_model(load_config("", ["--backbone=mit_b2"]))
    load_pretrained(net, str(tmp_path / "b2.ckpt"), log=lambda _: None)
    net.set_train(False)
    assert rel_err(net(ms.Tensor(x)).asnumpy(), expected) < 1e-4


@pytest.fixture(scope="module")
def b1_safetensors(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("b1"))
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(hf_config("mit_b1")).save_pretrained(directory)
    return os.path.join(directory, "model.safetensors")


def test_cli_rejects_wrong_variant(b1_safetensors, tmp_path):
    out = tmp_path / "b0_from_b1.ckpt"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_model.py"),
                           f"--pt_model_path={b1_safetensors}", f"--ms_model_path={out}",
                           f"--config_path={B0_CONFIG}"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and not out.exists()
    error = proc.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("convert_model: error:")
    assert "'backbone.patch_embed1.proj.weight' has shape (64, 3, 7, 7)" in error[0]
    assert "expects (32, 3, 7, 7)" in error[0]
    assert "the checkpoint holds model=segformer backbone=mit_b1" in error[0]


def test_load_pretrained_rejects_wrong_variant(b1_safetensors, tmp_path):
    convert(b1_safetensors, tmp_path / "b1.ckpt")
    with no_init_parameters():
        net = build_model(load_config("", ["--backbone=mit_b0"]))
    with pytest.raises(CheckpointError, match="backbone.patch_embed1.proj.weight"):
        load_pretrained(net, str(tmp_path / "b1.ckpt"))


def _bad_file(case, b0, tmp_path):
    if case == "missing":
        return tmp_path / "nowhere" / "mit_b0.pth"
    if case == "empty":
        (tmp_path / "empty.pth").write_bytes(b"")
        return tmp_path / "empty.pth"
    if case == "not_a_checkpoint":
        (tmp_path / "notes.pth").write_text("not a checkpoint\n")
        return tmp_path / "notes.pth"
    src = b0["bin"] if case == "truncated_bin" else b0["safetensors"]
    dst = tmp_path / ("cut" + os.path.splitext(src)[1])
    with open(src, "rb") as f:
        dst.write_bytes(f.read()[: os.path.getsize(src) // 2])
    return dst


@pytest.mark.parametrize("case", ["truncated_bin", "truncated_safetensors", "not_a_checkpoint",
                                  "empty", "missing"])
def test_cli_bad_files_are_one_line_errors(b0, tmp_path, case):
    from tools.convert_model import main
    path = _bad_file(case, b0, tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([f"--pt_model_path={path}", f"--ms_model_path={tmp_path / 'out.ckpt'}"])
    message = str(exc.value.code)
    assert message.startswith("convert_model: error:") and "\n" not in message
    assert str(path) in message
    assert not (tmp_path / "out.ckpt").exists()


def test_unexpected_and_missing_tensors_are_errors(b0, tmp_path):
    state = torch.load(b0["finetuned"], weights_only=True)["state_dict"]
    extra = dict(state, **{"backbone.block1.0.attn.extra.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ConversionError,
                       match="unexpected tensor 'backbone.block1.0.attn.extra.weight'"):
        convert(tmp_path / "extra.pth", tmp_path / "extra.ckpt")
    cut = {k: v for k, v in state.items() if k != "decode_head.linear_c2.proj.weight"}
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(ConversionError, match="'decode_head.linear_c2.proj.weight'"):
        convert(tmp_path / "cut.pth", tmp_path / "cut.ckpt")
    assert not os.path.exists(tmp_path / "extra.ckpt") and not os.path.exists(tmp_path / "cut.ckpt")


def test_other_class_count_needs_drop_head(b0, tmp_path):
    with pytest.raises(ConversionError,
                       match="linear_pred.weight' has 19 classes.*--drop_head=True"):
        convert(b0["finetuned"], tmp_path / "c5.ckpt", "--class_num=5", config_path=B0_CONFIG)
    summary, _ = convert(b0["finetuned"], tmp_path / "c5.ckpt", "--class_num=5", "--drop_head=True",
                         config_path=B0_CONFIG)
    assert summary["missing"] == ["decode_head.linear_pred.weight", "decode_head.linear_pred.bias"]
    reports = []
    net = load_net(tmp_path / "c5.ckpt", "--backbone=mit_b0", "--class_num=5", log=reports.append)
    assert "freshly initialised: decode_head.* (2)" in reports[0]
    assert net(ms.Tensor(b0["x"])).shape == (1, 5, 16, 24)


def test_ade20k_finetuned_checkpoint_evaluates_with_the_ade_config(tmp_path):
    """A 150-class NVlabs/mmseg ADE20K checkpoint converts against
    segformer.b0.512x512.ade.yaml and eval.py's strict loader builds the same function as
    HF with that config."""
    from src.engine.networks import load_trained_net
    ref = hf_segformer("mit_b0", num_labels=150, seed=3)
    hub = hub_state_dict(ref, str(tmp_path / "hf"))
    pth = save_nvlabs_finetuned(hub, str(tmp_path / "segformer.b0.512x512.ade.160k.pth"), 150)
    summary, _ = convert(pth, tmp_path / "ade.ckpt", config_path=ADE_B0_CONFIG)
    assert summary["cfg"].class_num == 150 and summary["missing"] == []
    net = load_trained_net(load_config(ADE_B0_CONFIG, ["--device_target=CPU"]), str(tmp_path / "ade.ckpt"),
                           log=lambda _: None)
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        expected = ref(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert expected.shape[1] == 150
    assert rel_err(net(ms.Tensor(x)).asnumpy(), expected) < 1e-4
