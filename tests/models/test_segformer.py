"""SegFormer / MiT against HF transformers (independent oracle) and the paper's numbers."""
import math
import tempfile

import numpy as np
import mindspore as ms
import pytest
import torch
from mindspore.nn.utils import no_init_parameters
from transformers import SegformerForSemanticSegmentation

from src.models import build_model
from conftest import KERNEL_BACKENDS
from src.models.backends.reference import LayerNorm
from src.utils.checkpoint import load_into_net
from src.utils.config import load_config
from tests.segformer_oracle import (hf_config, hf_segformer, hub_state_dict, ms_name, rel_err,
                                    to_nvlabs)

ms.set_context(mode=ms.PYNATIVE_MODE)

# anchors.md section 1: HF reference, 19 classes, trainable parameters.
PAPER_PARAMS = {"mit_b0": 3_719_027, "mit_b1": 13_682_131, "mit_b2": 27_361_235,
                "mit_b3": 47_237_075, "mit_b4": 64_007_635, "mit_b5": 84_607_955}


def segformer(backbone, *args):
    return build_model(load_config("", [f"--backbone={backbone}", *args]))


def trainable_count(net):
    return sum(int(np.prod(p.shape)) for p in net.trainable_params())


@pytest.mark.parametrize("variant", sorted(PAPER_PARAMS))
def test_parameter_count_matches_reference(variant):
    with no_init_parameters():
        ours = trainable_count(segformer(variant))
    with torch.device("meta"):
        reference = SegformerForSemanticSegmentation(hf_config(variant))
    hf = sum(p.numel() for p in reference.parameters())
    assert ours == hf == PAPER_PARAMS[variant]


def test_stochastic_depth_grows_linearly_like_reference():
    with no_init_parameters():
        net = segformer("mit_b2", "--drop_path_rate=0.3")
    blocks = [block for i in range(1, 5) for block in getattr(net.backbone, f"block{i}")]
    ours = [block.drop_path1.drop_prob for block in blocks]
    assert ours == [block.drop_path2.drop_prob for block in blocks]   # one per branch
    with torch.device("meta"):
        hf = SegformerForSemanticSegmentation(hf_config("mit_b2", drop_path_rate=0.3))
    ref = [getattr(b.drop_path, "drop_prob", 0.0) for s in hf.segformer.stages for b in s.blocks]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)
    assert ours[0] == 0.0 and math.isclose(ours[-1], 0.3)


def test_initialisation_follows_upstream():
    net = segformer("mit_b0")
    bb = net.backbone
    fc1 = bb.block1[0].mlp.fc1.weight.asnumpy()             # trunc_normal(std=0.02)
    assert abs(fc1.std() - 0.02) < 0.002 and np.abs(fc1).max() <= 2.0
    assert not bb.block1[0].mlp.fc1.bias.asnumpy().any()
    stem = bb.patch_embed1.proj.weight.asnumpy()             # normal(0, sqrt(2/fan_out))
    assert abs(stem.std() / math.sqrt(2.0 / (7 * 7 * 32)) - 1) < 0.1
    dw = bb.block1[0].mlp.dwconv.dwconv.weight.asnumpy()     # depthwise: fan_out = 9*C/C
    assert abs(dw.std() / math.sqrt(2.0 / 9) - 1) < 0.15
    eps = {name: cell.eps for name, cell in net.cells_and_names() if isinstance(cell, LayerNorm)}
    assert eps["backbone.patch_embed1.norm"] == 1e-5 and eps["backbone.block1.0.attn.norm"] == 1e-5
    assert eps["backbone.block1.0.norm1"] == 1e-6 and eps["backbone.norm4"] == 1e-6


def test_decoder_width_table_and_override():
    with no_init_parameters():
        assert segformer("mit_b1").decode_head.linear_c1.proj.weight.shape == (256, 64)
        assert segformer("mit_b3").decode_head.linear_c1.proj.weight.shape == (768, 64)
        net = segformer("mit_b0", "--decoder_dim=128", "--class_num=5")
    assert net.decode_head.linear_pred.weight.shape == (5, 128, 1, 1)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="'backbone'.*mit_b9"):
        segformer("mit_b9")


@pytest.fixture(scope="module", params=KERNEL_BACKENDS)
def b0_pair(request):
    """(HF reference, our B0 holding the same weights), on each kernel backend."""
    ref = hf_segformer("mit_b0", seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        state = to_nvlabs(hub_state_dict(ref, tmp))
    params = {ms_name(k): ms.Parameter(v.numpy(), name=ms_name(k)) for k, v in state.items()
              if not k.endswith("num_batches_tracked")}
    net = segformer("mit_b0", f"--kernel_backend={request.param}")
    load_into_net(net, params, strict=True)
    net.set_train(False)
    return ref, net


@pytest.mark.parametrize("size", [(64, 96), (70, 101)], ids=["divisible_by_32", "not_divisible"])
def test_features_and_logits_match_reference(b0_pair, size):
    ref, net = b0_pair
    x = np.random.default_rng(7).standard_normal((1, 3, *size)).astype(np.float32)
    with torch.no_grad():
        out = ref(pixel_values=torch.from_numpy(x), output_hidden_states=True)
    ref_feats, ref_logits = out.hidden_states, out.logits.numpy()
    feats = net.backbone(ms.Tensor(x))
    for ours, theirs in zip(feats, ref_feats):
        assert rel_err(ours.asnumpy(), theirs.numpy()) < 1e-4
    logits = net.decode_head(feats).asnumpy()  # = net(x), without a second encoder pass
    assert logits.shape == (1, 19, math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    assert rel_err(logits, ref_logits) < 1e-4


def test_graph_mode_matches_pynative(b0_pair):
    _, net = b0_pair
    x = ms.Tensor(np.random.default_rng(8).standard_normal((1, 3, 64, 64)).astype(np.float32))
    eager = net(x).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = net(x).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert rel_err(graph, eager) < 1e-5


def test_train_mode_runs_stochastic_depth_and_dropout(kernel_backend):
    """The draws are those of the step set by ``stochastic.set_step`` (the trainer sets it
    before each step): another step draws other masks, the same step the same ones."""
    from src.models import stochastic

    net = segformer("mit_b0", "--drop_path_rate=0.5", f"--kernel_backend={kernel_backend}")
    net.set_train(True)
    x = ms.Tensor(np.random.default_rng(9).standard_normal((2, 3, 32, 32)).astype(np.float32))
    outputs = []
    for step in (0, 1, 0):
        stochastic.set_step(0, step)
        outputs.append(net(x).asnumpy())
    a, b, again = outputs
    assert a.shape == (2, 19, 8, 8) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, again)


def test_norm_eps_matches_reference_on_small_activations(b0_pair):
    """LayerNorm eps only shows when the variance is near it: feed a block and a stage norm
    tokens of scale 1e-3 (variance 1e-6, where 1e-5 vs 1e-6 eps differ by far more than 1e-4)."""
    ref, net = b0_pair
    height, width = 16, 24
    x = 1e-3 * np.random.default_rng(10).standard_normal((1, height * width, 32)).astype(np.float32)
    with torch.no_grad():
        ref_block = ref.segformer.stages[0].blocks[0](torch.from_numpy(x), height, width)
        ref_norm = ref.segformer.stages[0].layer_norm(torch.from_numpy(x))
    ref_block = ref_block[0] if isinstance(ref_block, tuple) else ref_block
    ours = net.backbone.block1[0](ms.Tensor(x), height, width).asnumpy()
    assert rel_err(ours, ref_block.numpy()) < 1e-4
    assert rel_err(net.backbone.norm1(ms.Tensor(x)).asnumpy(), ref_norm.numpy()) < 1e-4


@pytest.mark.parametrize("mode", ["PYNATIVE", "GRAPH"])
def test_head_dropout_drops_whole_channels(kernel_backend, mode):
    """mmseg's Dropout2d, in the unfolded (reference) and folded (cpu) head: with an identity
    classifier the logits are the dropped map itself, so each channel of each image is either
    all zero or the whole map scaled by 1 / (1 - p)."""
    from src.models.backends import load_backend
    from src.models.segformer_head import SegFormerHead

    head = SegFormerHead(load_backend(kernel_backend), [4, 4, 4, 4], 16, 16, dropout=0.5)
    head.linear_pred.weight.set_data(ms.Tensor(np.eye(16, dtype=np.float32).reshape(16, 16, 1, 1)))
    head.linear_pred.bias.set_data(ms.Tensor(np.zeros(16, np.float32)))
    # BatchNorm output (batch statistics) shifted to > 0 so the ReLU zeroes nothing
    head.linear_fuse.bn.beta.set_data(ms.Tensor(np.full(16, 10.0, np.float32)))
    head.set_train(True)
    rng = np.random.default_rng(3)
    feats = tuple(ms.Tensor(rng.standard_normal((2, 4, s, s)).astype(np.float32)) for s in (8, 4, 2, 1))
    ms.set_context(mode=ms.GRAPH_MODE if mode == "GRAPH" else ms.PYNATIVE_MODE)
    try:
        out = head(feats).asnumpy().reshape(2, 16, -1)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    dropped = np.abs(out).max(-1) == 0
    assert 0 < dropped.sum() < dropped.size          # some channels dropped, not all
    assert (out[~dropped] > 0).all()                 # kept channels are kept whole
