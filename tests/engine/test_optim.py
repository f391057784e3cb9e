"""Optimisers against torch.optim numerically; parameter groups get the intended lr / wd."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn, ops

from src.engine.optim import (SGD, AdamW, OptimizerError, build_optimizer, check_paramwise,
                              one_minus_power, param_groups, param_rule)
from src.utils.config import ConfigError, load_config
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


def run_both(optimizer_name, torch_opt_fn, lrs, nesterov=False):
    cfg = load_config("", [f"--optimizer={optimizer_name}", "--weight_decay=0.05",
                           "--betas=[0.8,0.99]", "--momentum=0.9", f"--nesterov={nesterov}"],
                      values={"paramwise": {"custom_keys": {"head": {"lr_mult": 10.0}},
                                            "bias_decay_mult": 0.0}})
    ms.set_seed(0)  # a fixed initialisation: the tolerances below are checked for it
    net = TwoLayer()
    twin = torch_twin(net)
    opt = build_optimizer(net, cfg)
    grad_fn = ms.value_and_grad(lambda x: (net(x) ** 2).sum(), None, opt.parameters)
    # torch groups spelled out by hand (mmcv rule): "head" matches head.* (lr x10, decayed,
    # its bias too: a matched key skips bias_decay_mult); body.bias gets bias_decay_mult 0
    groups = [{"params": [twin[0].weight], "weight_decay": 0.05, "lr_mult": 1.0},
              {"params": [twin[0].bias], "weight_decay": 0.0, "lr_mult": 1.0},
              {"params": [twin[2].weight], "weight_decay": 0.05, "lr_mult": 10.0},
              {"params": [twin[2].bias], "weight_decay": 0.05, "lr_mult": 10.0}]
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


@pytest.mark.parametrize("name,nesterov,torch_opt", [
    ("adamw", False, lambda groups: torch.optim.AdamW(groups, lr=1.0, betas=(0.8, 0.99), eps=1e-8)),
    ("sgd", False, lambda groups: torch.optim.SGD(groups, lr=1.0, momentum=0.9)),
    ("sgd", True, lambda groups: torch.optim.SGD(groups, lr=1.0, momentum=0.9, nesterov=True)),
])
def test_matches_torch_optimizer_with_groups_and_changing_lr(name, nesterov, torch_opt):
    lrs = [1e-3, 5e-3, 2e-2, 1e-2, 3e-3, 1e-3]  # a warmup-then-decay shape
    opt, pairs = run_both(name, torch_opt, lrs, nesterov)
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


def segformer_cfg(*args):
    return load_config("config/segformer.b0.1024x1024.city.yaml",
                       ["--class_num=19", "--drop_path_rate=0.0", "--load_ckpt=False"] + list(args))


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

    def expected(name):
        """NVlabs' keys in mmcv's order: pos_block (longest), then head before norm
        (alphabetical among equal lengths); the first contained in the name applies."""
        if "head" in name:
            return lr * 10.0, 0.01
        if "norm" in name:
            return lr, 0.0
        return lr, 0.01

    for name in names:
        eff_lr, wd = expected(name)
        assert shrink[name] == pytest.approx(1.0 - eff_lr * wd, abs=1e-7), name
    # spot checks of the rule on real names: biases and the head's BatchNorm are decayed
    assert shrink["decode_head.linear_fuse.conv.weight"] == pytest.approx(1 - 0.1 * 0.01)
    assert shrink["backbone.block1.0.attn.q.bias"] == pytest.approx(1 - 0.01 * 0.01)
    bn = [n for n in names if n.startswith("decode_head.linear_fuse.bn.")]
    assert bn and all(shrink[n] == pytest.approx(1 - 0.1 * 0.01) for n in bn)
    assert shrink["backbone.block1.0.norm1.weight"] == 1.0

    cfg = segformer_cfg("--weight_decay=0.0")
    opt = build_optimizer(net, cfg)
    before = [p.asnumpy().copy() for p in params]
    opt(tuple(ops.ones(p.shape, ms.float32) for p in opt.parameters), ms.Tensor(lr, ms.float32))
    for name, p, b in zip(names, params, before):
        np.testing.assert_allclose(b - p.asnumpy(), expected(name)[0], rtol=1e-5, err_msg=name)

    groups = {g["name"]: g for g in param_groups(net, segformer_cfg())}
    assert set(groups) == {"default", "bias", "custom_keys.norm", "custom_keys.head"}
    assert sum(len(g["params"]) for g in groups.values()) == len(params)


def test_vit_seed_filter_and_segmenter_groups():
    from src.models import build_model

    vit_cfg = load_config("config/vit.tiny.demo.yaml", ["--image_size=32", "--weight_decay=0.05"])
    vit = build_model(vit_cfg)
    groups = param_groups(vit, vit_cfg)
    decay = {p.name for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    # the seed's filter "beta,bias": LayerNorm weights, pos_embed and cls_token ARE decayed
    assert {"pos_embed", "cls_token", "norm.weight", "head.weight"} <= decay
    assert not any("bias" in n for n in decay)
    assert all(g["lr_mult"] == 1.0 for g in groups)

    cfg = load_config("config/segmenter.tiny.demo.yaml", ["--decoder_layers=1"])
    segmenter = build_model(cfg)
    assert {g["weight_decay"] for g in param_groups(segmenter, cfg)} == {0.0}   # upstream: wd 0
    assert isinstance(build_optimizer(segmenter, cfg), SGD) and build_optimizer(segmenter, cfg).nesterov
    cfg = load_config("config/segmenter.tiny.demo.yaml", ["--decoder_layers=1", "--weight_decay=0.01"],
                      values={"paramwise": {"custom_keys": {"decoder": {"lr_mult": 2.0}},
                                            "norm_decay_mult": 0.0, "bias_decay_mult": 0.5}})
    by_name = {p.name: g for g in param_groups(segmenter, cfg) for p in g["params"]}
    assert by_name["decoder.cls_emb"]["lr_mult"] == 2.0                   # key beats norm/bias rules
    assert by_name["decoder.decoder_norm.weight"]["weight_decay"] == 0.01
    assert by_name["encoder.norm.weight"]["weight_decay"] == 0.0           # norm layer
    assert by_name["encoder.norm.bias"]["weight_decay"] == 0.0             # norm before bias
    assert by_name["encoder.blocks.0.attn.qkv.bias"]["weight_decay"] == pytest.approx(0.005)
    assert by_name["encoder.pos_embed"]["weight_decay"] == 0.01


def test_custom_keys_longest_first_then_alphabetical():
    rules = check_paramwise(load_config("", [], values={"paramwise": {"custom_keys": {
        "norm": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}, "pos_block": {"decay_mult": 0.0}}}}))[0]
    assert list(rules) == ["pos_block", "head", "norm"]
    assert param_rule("decode_head.norm.weight", True, rules, 1.0, 0.0) == ("custom_keys.head", 10.0, 1.0)


@pytest.mark.parametrize("paramwise,match", [
    ({"custom_keys": {"norm": {"decay": 0.0}}}, r"'paramwise.custom_keys.norm.decay': unknown"),
    ({"custom_keys": {"head": {"lr_mult": -1.0}}}, r"'paramwise.custom_keys.head.lr_mult'.*>= 0.*-1.0"),
    ({"custom_keys": {"head": 10}}, r"'paramwise.custom_keys.head': expected a mapping"),
    ({"norm_decay_mult": -0.5}, r"'paramwise.norm_decay_mult'.*>= 0"),
])
def test_bad_paramwise_is_a_clear_error(paramwise, match):
    with pytest.raises(OptimizerError, match=match):
        param_groups(TwoLayer(), load_config("", [], values={"paramwise": paramwise}))


def test_unknown_paramwise_key_is_a_config_error():
    with pytest.raises(ConfigError, match="'paramwise.custom_key'.*did you mean 'paramwise.custom_keys'"):
        load_config("", [], values={"paramwise": {"custom_key": {}}})


def test_bad_optimizer_keys_are_clear_errors():
    net = TwoLayer()
    with pytest.raises(OptimizerError, match="'optimizer'.*'lamb'"):
        build_optimizer(net, load_config("", ["--optimizer=lamb"]))
    with pytest.raises(OptimizerError, match="betas"):
        build_optimizer(net, load_config("", ["--betas=[0.9,1.5]"]))
    with pytest.raises(OptimizerError, match="'nesterov'.*momentum"):
        build_optimizer(net, load_config("", ["--optimizer=sgd", "--nesterov=True", "--momentum=0"]))


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
