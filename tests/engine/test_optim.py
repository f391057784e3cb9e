"""Optimisers against torch.optim numerically; parameter groups get the intended lr / wd."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn, ops

from src.engine.optim import AdamW, OptimizerError, build_optimizer, one_minus_power, param_groups
from src.utils.config import load_config
from tests.engine.train_helpers import pynative_mode  # noqa: F401 (autouse)



class TwoLayer(nn.Cell):
    """An 'encoder' Dense and a 'head' Dense (name prefix ``head.``)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Dense(4, 3)
        self.head = nn.Dense(3, 2)

    def construct(self, x):
        return self.head(ops.tanh(self.body(x)))


def torch_twin(net):
    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        for t_layer, m_layer in ((twin[0], net.body), (twin[2], net.head)):
            t_layer.weight.copy_(torch.tensor(m_layer.weight.asnumpy()))
            t_layer.bias.copy_(torch.tensor(m_layer.bias.asnumpy()))
    return twin


def run_both(optimizer_name, torch_opt_fn, lrs):
    cfg = load_config("", [f"--optimizer={optimizer_name}", "--weight_decay=0.05",
                           "--head_lr_mult=10.0", "--betas=[0.8,0.99]", "--momentum=0.9"])
    net = TwoLayer()
    twin = torch_twin(net)
    opt = build_optimizer(net, cfg)
    grad_fn = ms.value_and_grad(lambda x: (net(x) ** 2).sum(), None, opt.parameters)
    # torch groups spelled out by hand: encoder lr x1, head lr x10; no decay on biases
    groups = [{"params": [twin[0].weight], "weight_decay": 0.05, "lr_mult": 1.0},
              {"params": [twin[0].bias], "weight_decay": 0.0, "lr_mult": 1.0},
              {"params": [twin[2].weight], "weight_decay": 0.05, "lr_mult": 10.0},
              {"params": [twin[2].bias], "weight_decay": 0.0, "lr_mult": 10.0}]
    t_opt = torch_opt_fn([{k: v for k, v in g.items() if k != "lr_mult"} for g in groups])
    rng = np.random.default_rng(0)
    for lr in lrs:
        x = rng.standard_normal((8, 4)).astype(np.float32)
        _, grads = grad_fn(ms.Tensor(x))
        opt(grads, ms.Tensor(lr, ms.float32))
        for group, spec in zip(t_opt.param_groups, groups):
            group["lr"] = lr * spec["lr_mult"]
        t_opt.zero_grad()
        (twin(torch.tensor(x)) ** 2).sum().backward()
        t_opt.step()
    pairs = [(net.body.weight, twin[0].weight), (net.body.bias, twin[0].bias),
             (net.head.weight, twin[2].weight), (net.head.bias, twin[2].bias)]
    return opt, pairs


@pytest.mark.parametrize("name,torch_opt", [
    ("adamw", lambda groups: torch.optim.AdamW(groups, lr=1.0, betas=(0.8, 0.99), eps=1e-8)),
    ("sgd", lambda groups: torch.optim.SGD(groups, lr=1.0, momentum=0.9)),
])
def test_matches_torch_optimizer_with_groups_and_changing_lr(name, torch_opt):
    lrs = [1e-3, 5e-3, 2e-2, 1e-2, 3e-3, 1e-3]  # a warmup-then-decay shape
    opt, pairs = run_both(name, torch_opt, lrs)
    for ours, ref in pairs:
        np.testing.assert_allclose(ours.asnumpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert int(opt.step.asnumpy()) == len(lrs)


def test_adamw_first_step_is_bias_corrected():
    # torch AdamW's first update is lr * g / (|g| + eps) ~ lr * sign(g), independent of beta1;
    # an uncorrected Adam (MindSpore nn.AdamWeightDecay) would move by (1 - beta1) * lr.
    cfg = load_config("", ["--weight_decay=0.0"])
    param = ms.Parameter(ms.Tensor(np.zeros((3, 3), np.float32)), name="w")
    holder = nn.Cell()
    holder.w = param
    opt = build_optimizer(holder, cfg)
    grad = np.array([[1.0, -2.0, 3.0]] * 3, np.float32)
    opt((ms.Tensor(grad),), ms.Tensor(0.1, ms.float32))
    np.testing.assert_allclose(param.asnumpy(), -0.1 * np.sign(grad), rtol=1e-6)


def segformer_cfg(**keys):
    args = ["--model=segformer", "--backbone=mit_b0", "--class_num=19", "--head_lr_mult=10.0",
            "--weight_decay=0.01", "--drop_path_rate=0.0"]
    return load_config("", args + [f"--{k}={v}" for k, v in keys.items()])


def test_segformer_param_groups_get_intended_lr_and_weight_decay():
    """Measured, not read back: one AdamW step with zero gradients scales each weight by
    1 - lr_eff * wd_eff (decoupled decay only); one with unit gradients and no decay moves
    each weight by lr_eff (bias-corrected first step = lr * sign(g))."""
    from src.models import build_model

    cfg = segformer_cfg()
    net = build_model(cfg)
    params = net.trainable_params()
    names = [p.name for p in params]
    for p in params:  # non-zero weights so the decay is visible
        p.set_data(ms.Tensor(np.full(p.shape, 2.0, np.float32)))
    opt = build_optimizer(net, cfg)
    lr = 1e-2
    # gradients come in the optimiser's parameter order (as value_and_grad gives them)
    opt(tuple(ops.zeros(p.shape, ms.float32) for p in opt.parameters), ms.Tensor(lr, ms.float32))
    shrink = {n: float(p.asnumpy().reshape(-1)[0]) / 2.0 for n, p in zip(names, params)}

    def expected_lr(name):
        return lr * (10.0 if name.startswith("decode_head.") else 1.0)

    def expected_decayed(name, ndim):
        no_decay = ndim == 1 or any(k in name for k in ("norm", "bias", "pos_embed", "cls_token"))
        return not no_decay

    for name, p in zip(names, params):
        wd = 0.01 if expected_decayed(name, p.ndim) else 0.0
        assert shrink[name] == pytest.approx(1.0 - expected_lr(name) * wd, abs=1e-7), name
    # spot checks of the rule on real names
    assert shrink["decode_head.linear_fuse.conv.weight"] == pytest.approx(1 - 0.1 * 0.01)
    assert any(n.startswith("backbone.") and "norm" in n for n in names)

    cfg = segformer_cfg(weight_decay=0.0)
    opt = build_optimizer(net, cfg)
    before = [p.asnumpy().copy() for p in params]
    opt(tuple(ops.ones(p.shape, ms.float32) for p in opt.parameters), ms.Tensor(lr, ms.float32))
    for name, p, b in zip(names, params, before):
        np.testing.assert_allclose(b - p.asnumpy(), expected_lr(name), rtol=1e-5, err_msg=name)

    groups = {g["name"]: g for g in param_groups(net, segformer_cfg())}
    assert set(groups) == {"encoder/decay", "encoder/no_decay", "head/decay", "head/no_decay"}
    assert sum(len(g["params"]) for g in groups.values()) == len(params)


def test_vit_and_segmenter_groups_by_name():
    from src.models import build_model

    vit = build_model(load_config("", ["--model=vit", "--backbone=vit_tiny_patch16_224",
                                       "--class_num=4", "--image_size=32"]))
    groups = param_groups(vit, load_config("", ["--model=vit", "--head_lr_mult=1.0"]))
    no_decay = {p.name for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {p.name for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"pos_embed", "cls_token"} <= no_decay
    assert "head.weight" in decay and "head.bias" in no_decay
    assert all(".norm" not in n and not n.endswith("bias") for n in decay)

    segmenter = build_model(load_config("config/segmenter.tiny.demo.yaml", ["--decoder_layers=1"]))
    groups = param_groups(segmenter, load_config("config/segmenter.tiny.demo.yaml",
                                                 ["--weight_decay=0.01", "--head_lr_mult=2.0"]))
    by_name = {p.name: g for g in groups for p in g["params"]}
    assert by_name["decoder.cls_emb"]["weight_decay"] == 0.0      # [1, n_cls, d]: by key
    assert by_name["decoder.cls_emb"]["lr_mult"] == 2.0           # decoder = head group
    assert by_name["decoder.proj_classes"]["weight_decay"] == 0.01
    assert by_name["encoder.pos_embed"]["weight_decay"] == 0.0
    assert by_name["encoder.blocks.0.attn.qkv.weight"]["lr_mult"] == 1.0


def test_bad_optimizer_keys_are_clear_errors():
    net = TwoLayer()
    with pytest.raises(OptimizerError, match="'optimizer'.*'lamb'"):
        build_optimizer(net, load_config("", ["--optimizer=lamb"]))
    with pytest.raises(OptimizerError, match="betas"):
        build_optimizer(net, load_config("", ["--betas=[0.9,1.5]"]))


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.8, 0.9, 0.99, 0.999, 0.9999])
def test_bias_correction_in_float32_is_within_a_few_ulps_of_float64(beta):
    """1 - beta ** t, computed in float32 in the graph, against float64 for t = 1 .. 2 ** 24
    (plain 1 - pow(beta, t) in float32 is 6.7e-6 off for beta 0.999 at t = 2)."""
    beta32 = np.float32(beta)
    opt = AdamW([{"params": [ms.Parameter(ms.Tensor(np.zeros(2, np.float32)), name="w")],
                  "lr_mult": 1.0, "weight_decay": 0.0}], betas=(beta32, beta32))
    steps = np.concatenate([np.arange(1, 5000), np.geomspace(5000, 2 ** 24, 500).round()])
    exact = 1.0 - np.float64(beta32) ** steps
    ours = one_minus_power(opt.beta1_f32, opt.log_beta1, ms.Tensor(steps.astype(np.float32)))
    assert ours.dtype == ms.float32
    np.testing.assert_allclose(ours.asnumpy(), exact, rtol=2e-7, atol=0)
