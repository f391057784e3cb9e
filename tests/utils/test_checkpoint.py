"""Checkpoint I/O: atomic writes, clear errors, strict loading reports."""
import os

import numpy as np
import pytest
from mindspore import nn

from src.utils.checkpoint import (CheckpointError, find_latest, load_checkpoint, load_into_net,
                                  save_checkpoint)


def test_save_is_atomic_and_roundtrips_weights_and_extra_state(tmp_path):
    net = nn.Dense(3, 4)
    path = save_checkpoint(net, str(tmp_path / "a.ckpt"), extra={"epoch": np.int32(7)})
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt"]  # no temp file left behind
    loaded = load_checkpoint(path)
    assert int(loaded["epoch"].asnumpy()) == 7
    np.testing.assert_array_equal(loaded["weight"].asnumpy(), net.weight.asnumpy())


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    import mindspore as ms
    net = nn.Dense(3, 4)
    path = save_checkpoint(net, str(tmp_path / "a.ckpt"))
    before = open(path, "rb").read()

    def crash(save_obj, name, *args, **kwargs):
        with open(name, "wb") as f:  # a partial write, then the process "dies"
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ms, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(nn.Dense(3, 4), path)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt"]


def test_find_latest_skips_temporary_files(tmp_path):
    net = nn.Dense(2, 2)
    save_checkpoint(net, str(tmp_path / "m_1.ckpt"))
    newest = save_checkpoint(net, str(tmp_path / "m_2.ckpt"))
    os.utime(str(tmp_path / "m_1.ckpt"), (1, 1))
    (tmp_path / ".m_3.123.tmp.ckpt").write_bytes(b"partial")
    assert find_latest(str(tmp_path)) == newest
    assert find_latest(str(tmp_path / "nothing")) is None


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*missing.ckpt"):
        load_checkpoint(str(tmp_path / "missing.ckpt"))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(str(empty))
    good = save_checkpoint(nn.Dense(30, 40), str(tmp_path / "good.ckpt"))
    truncated = tmp_path / "trunc.ckpt"
    truncated.write_bytes(open(good, "rb").read()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*trunc.ckpt"):
        load_checkpoint(str(truncated))
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*notes.ckpt"):
        load_checkpoint(str(text))


def test_strict_load_reports_mismatch_missing_and_unexpected(tmp_path):
    small = load_checkpoint(save_checkpoint(nn.Dense(3, 4), str(tmp_path / "s.ckpt")))
    with pytest.raises(CheckpointError, match=r"'weight' has shape \(4, 3\).*expects \(5, 3\)"):
        load_into_net(nn.Dense(3, 5), small)
    with pytest.raises(CheckpointError, match=r"missing.*'bias'"):
        load_into_net(nn.Dense(3, 4), {"weight": small["weight"]})
    with pytest.raises(CheckpointError, match=r"unexpected.*'extra'"):
        load_into_net(nn.Dense(3, 4), dict(small, extra=small["bias"]))
    net = nn.Dense(3, 4)
    loaded, missing = load_into_net(net, {"weight": small["weight"]}, allow_missing=("bias",))
    assert loaded == ["weight"] and missing == ["bias"]
    np.testing.assert_array_equal(net.weight.asnumpy(), small["weight"].asnumpy())


@pytest.mark.parametrize("overrides", [["--model=segformer", "--backbone=mit_b0"],
                                       ["--model=segmenter", "--backbone=vit_tiny_patch16_384"],
                                       ["--model=segmenter", "--backbone=vit_tiny_patch16_384",
                                        "--decoder=linear"],
                                       ["--model=vit", "--backbone=vit_tiny_patch16_224"]])
def test_each_model_declares_exactly_its_class_count_dependent_parameters(overrides):
    """``classifier_prefixes`` (what a drop_head checkpoint may lack) is the model's own
    declaration: exactly the parameters whose shape follows class_num."""
    from mindspore.nn.utils import no_init_parameters
    from src.models import build_model
    from src.utils.checkpoint import classifier_prefixes
    from src.utils.config import load_config

    shapes = []
    for class_num in (5, 7):
        with no_init_parameters():
            net = build_model(load_config("", overrides + [f"--class_num={class_num}"]))
        shapes.append({p.name: tuple(p.shape) for p in net.get_parameters()})
    assert list(shapes[0]) == list(shapes[1])
    dependent = sorted(name for name in shapes[0] if shapes[0][name] != shapes[1][name])
    prefixes = classifier_prefixes(net)
    assert dependent and prefixes
    assert sorted(name for name in shapes[0] if name.startswith(prefixes)) == dependent
    assert all(any(name.startswith(p) for name in dependent) for p in prefixes)


@pytest.mark.parametrize("overrides, encoder_cell", [
    (["--model=segformer", "--backbone=mit_b0"], "backbone"),
    (["--model=segmenter", "--backbone=vit_tiny_patch16_384", "--image_size=64"], "encoder"),
    (["--model=vit", "--backbone=vit_tiny_patch16_224"], None),
])
def test_each_model_declares_its_pretrained_encoder(overrides, encoder_cell):
    """``encoder_prefixes`` (what a backbone-only checkpoint holds) names exactly the
    parameters of the model's encoder cell; a plain classifier has none."""
    from mindspore.nn.utils import no_init_parameters
    from src.models import build_model
    from src.utils.checkpoint import encoder_prefixes
    from src.utils.config import load_config

    with no_init_parameters():
        net = build_model(load_config("", overrides))
    if encoder_cell is None:
        assert encoder_prefixes(net) == ()
        return
    encoder = {p.name for p in getattr(net, encoder_cell).get_parameters()}
    prefixes = encoder_prefixes(net)
    assert encoder and {p.name for p in net.get_parameters() if p.name.startswith(prefixes)} == encoder
