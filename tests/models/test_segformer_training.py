"""SegFormer in training against PyTorch (independent oracle), on each kernel backend.

The eval-mode parity tests in test_segformer.py cover the forward at inference; these check
training mode (BatchNorm batch statistics) and every gradient, in both execution modes. On
the cpu backend this covers its rewrites (the folded decode head, the spatial reduction from
the tokens, the token-layout patch embeddings, the custom kernels and their gradients).
"""
import tempfile

import numpy as np
import mindspore as ms
import pytest
import torch
from mindspore import nn

from src.models import build_model
from src.models.backends.cpu import Softmax
from src.utils.checkpoint import load_into_net
from src.utils.config import load_config
from tests.segformer_oracle import hf_segformer, hub_state_dict, ms_name, rel_err, to_nvlabs

ms.set_context(mode=ms.PYNATIVE_MODE)


class WeightedSum(nn.Cell):
    """sum(weights * cell(x)): a loss whose gradient w.r.t. the cell output is ``weights``."""

    def __init__(self, cell, weights, *args):
        super().__init__()
        self.cell = cell
        self.weights = weights
        self.args = args

    def construct(self, x):
        return (self.cell(x, *self.args) * self.weights).sum()


@pytest.fixture(params=["pynative", "graph"])
def mode(request):
    """Run the test body in PYNATIVE and in GRAPH mode (custom bprops are compiled there)."""
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


def torch_grads_by_our_name(ref, hub):
    """HF parameter gradients under our names. ``hub`` holds the weights as saved (legacy
    hub names, which ``to_nvlabs`` reads): each module parameter is found there by its
    value (all random), so the gradients take the same renaming and kv fusion as weights."""
    by_value = {v.numpy().tobytes(): k for k, v in hub.items() if v.is_floating_point()}
    grads = {by_value[p.detach().numpy().tobytes()]: p.grad for _, p in ref.named_parameters()}
    return {ms_name(k): v.numpy() for k, v in to_nvlabs(grads).items()}


@pytest.mark.parametrize("size", [(64, 96), (70, 101)], ids=["divisible_by_32", "not_divisible"])
def test_training_forward_and_gradients_match_reference(mode, size, kernel_backend):
    ref = hf_segformer("mit_b0", seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        hub = hub_state_dict(ref, tmp)
    state = to_nvlabs(hub)
    params = {ms_name(k): ms.Parameter(v.numpy(), name=ms_name(k)) for k, v in state.items()
              if not k.endswith("num_batches_tracked")}
    net = build_model(load_config("", ["--backbone=mit_b0", "--drop_path_rate=0",
                                       "--decoder_dropout=0", f"--kernel_backend={kernel_backend}"]))
    load_into_net(net, params, strict=True)
    ref.train()
    for module in ref.modules():  # training mode without randomness: no dropout/drop path
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    net.set_train(True)

    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    out_shape = (2, 19, -(-size[0] // 4), -(-size[1] // 4))
    weights = rng.standard_normal(out_shape).astype(np.float32)  # loss = sum(w * logits)

    logits_ref = ref(pixel_values=torch.from_numpy(x)).logits
    (logits_ref * torch.from_numpy(weights)).sum().backward()
    expected = torch_grads_by_our_name(ref, hub)

    trainable = net.trainable_params()
    w = ms.Tensor(weights)

    def loss_fn(inputs):
        logits = net(inputs)
        return (logits * w).sum(), logits

    grad_fn = ms.value_and_grad(loss_fn, None, trainable, has_aux=True)
    (_, logits), grads = grad_fn(ms.Tensor(x))
    assert rel_err(logits.asnumpy(), logits_ref.detach().numpy()) < 1e-4
    assert len(grads) == len(expected)
    # A per-channel constant added before the head's BatchNorm (training statistics) has
    # no effect: these gradients are zero in exact arithmetic, float noise in both.
    zero = {f"decode_head.linear_c{i}.proj.bias" for i in range(1, 5)} | {"backbone.norm4.bias"}
    scale = max(np.abs(g).max() for g in expected.values())
    for param, grad in zip(trainable, grads):
        if param.name in zero:
            assert np.abs(grad.asnumpy()).max() < 1e-6 * scale, param.name
        else:
            assert rel_err(grad.asnumpy(), expected[param.name]) < 1e-4, param.name
    # the BatchNorm ran on the same batch: same running statistics afterwards
    bn, bn_ref = net.decode_head.linear_fuse.bn, ref.decode_head.batch_norm
    assert rel_err(bn.moving_mean.asnumpy(), bn_ref.running_mean.numpy()) < 1e-4
    assert rel_err(bn.moving_variance.asnumpy(), bn_ref.running_var.numpy()) < 1e-4


def test_softmax_gradient_matches_torch(mode):
    rng = np.random.default_rng(4)
    x = (3 * rng.standard_normal((2, 3, 50, 37))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    torch.softmax(xt, dim=-1).backward(torch.from_numpy(dy))

    softmax = Softmax()
    dx = ms.grad(WeightedSum(softmax, ms.Tensor(dy)))(ms.Tensor(x))
    assert rel_err(softmax(ms.Tensor(x)).asnumpy(), torch.softmax(xt, -1).detach().numpy()) < 1e-6
    assert rel_err(dx.asnumpy(), xt.grad.numpy()) < 1e-5


def test_folded_head_equals_layer_by_layer_head_under_amp(kernel_backend):
    """fold_fuse on/off give the same logits in eval (BatchNorm folded) and training, in
    float32 and under amp O2 (where the BatchNorm is wrapped and runs as a layer)."""
    from src.engine.amp import apply_amp

    rng = np.random.default_rng(6)
    feats = [ms.Tensor(rng.standard_normal((2, c, 16 // s, 24 // s)).astype(np.float32))
             for c, s in ((32, 1), (64, 2), (160, 4), (256, 8))]
    for level in ("O0", "O2"):
        outs = {}
        for fold in (True, False):
            ms.set_seed(0)
            net = build_model(load_config("", ["--backbone=mit_b0", "--decoder_dropout=0",
                                               f"--kernel_backend={kernel_backend}"]))
            head = net.decode_head
            head.fold_fuse = fold
            bn = head.linear_fuse.bn
            bn.moving_mean.set_data(ms.Tensor(np.linspace(-1, 1, 256).astype(np.float32)))
            bn.moving_variance.set_data(ms.Tensor(np.linspace(0.5, 2, 256).astype(np.float32)))
            head = apply_amp(head, level)
            for train in (False, True):
                head.set_train(train)
                outs[fold, train] = head(tuple(feats)).asnumpy().astype(np.float32)
        tol = 1e-5 if level == "O0" else 3e-3
        for train in (False, True):
            assert rel_err(outs[True, train], outs[False, train]) < tol, (level, train)
