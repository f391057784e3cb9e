"""The custom CPU kernels (src/models/backends/csrc/cpu_kernels.cc) against PyTorch in
float64: values and gradients, odd sizes, both execution modes; and how the library build
fails."""
import json
import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn

from src.models.backends import cpu, cpu_kernels, reference


@pytest.fixture(params=[ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def mode(request):
    old = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=old)


class Apply(nn.Cell):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def construct(self, *args):
        return self.op(*args)


def test_library_builds_here():
    # CI and developer machines have g++: the fast path must really be on there.
    assert cpu_kernels.library_path() is not None
    assert cpu_kernels.build_error() is None


def test_gelu_matches_torch(mode):
    rng = np.random.default_rng(0)
    # wide range incl. the erf clamp at |x| / sqrt(2) = 4 and large negative inputs
    x = np.concatenate([rng.standard_normal(4000) * 3, np.linspace(-12, 12, 1000)])
    x = x.astype(np.float32).reshape(5, -1)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    net = Apply(cpu_kernels.gelu_erf_op())
    y = net(ms.Tensor(x)).asnumpy()
    weights = ms.Tensor(dy)

    def loss(t):
        return (net(t) * weights).sum()

    dx = ms.grad(loss)(ms.Tensor(x)).asnumpy()
    tx = torch.from_numpy(x).double().requires_grad_()
    ty = torch.nn.functional.gelu(tx)
    (ty * torch.from_numpy(dy).double()).sum().backward()
    assert np.abs(y - ty.detach().numpy()).max() < 2e-6
    assert np.abs(dx - tx.grad.numpy()).max() < 2e-6


@pytest.mark.parametrize("shape", [(2, 13, 17, 24), (1, 1, 5, 3), (1, 4, 1, 7)])
def test_depthwise_conv_matches_torch(mode, shape):
    rng = np.random.default_rng(1)
    batch, height, width, channels = shape
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    net = Apply(cpu_kernels.depthwise_conv3x3_nhwc_op())
    args = (ms.Tensor(x), ms.Tensor(w), ms.Tensor(b))
    y = net(*args).asnumpy()
    weights = ms.Tensor(dy)

    def loss(inputs, weight, bias):
        return (net(inputs, weight, bias) * weights).sum()

    dx, dw, db = (g.asnumpy() for g in ms.grad(loss, grad_position=(0, 1, 2))(*args))

    tx = torch.from_numpy(x).double().permute(0, 3, 1, 2).requires_grad_()
    tw = torch.from_numpy(w).double().requires_grad_()
    tb = torch.from_numpy(b).double().requires_grad_()
    ty = torch.nn.functional.conv2d(tx, tw, tb, padding=1, groups=channels)
    (ty * torch.from_numpy(dy).double().permute(0, 3, 1, 2)).sum().backward()
    nhwc = lambda t: t.detach().permute(0, 2, 3, 1).numpy()  # noqa: E731
    assert np.abs(y - nhwc(ty)).max() < 1e-5
    assert np.abs(dx - nhwc(tx.grad)).max() < 1e-5
    assert np.abs(dw - tw.grad.numpy()).max() < 1e-4
    assert np.abs(db - tb.grad.numpy()).max() < 1e-4


@pytest.mark.parametrize("shape,eps", [((2, 37, 24), 1e-6), ((5, 768), 1e-5), ((3, 1), 1e-5)])
def test_layer_norm_matches_torch(mode, shape, eps):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    dim = shape[-1]
    gamma = rng.standard_normal(dim).astype(np.float32)
    beta = rng.standard_normal(dim).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    net = Apply(cpu_kernels.layer_norm_op())
    weights = ms.Tensor(dy)
    eps_tensor = ms.Tensor([eps], ms.float32)

    def loss(inputs, weight, bias):
        return (net(inputs, weight, bias, eps_tensor)[0] * weights).sum()

    args = (ms.Tensor(x), ms.Tensor(gamma), ms.Tensor(beta))
    y = net(*args, eps_tensor)[0].asnumpy()
    dx, dgamma, dbeta = (g.asnumpy() for g in ms.grad(loss, grad_position=(0, 1, 2))(*args))

    tx = torch.from_numpy(x).double().requires_grad_()
    tg = torch.from_numpy(gamma).double().requires_grad_()
    tb = torch.from_numpy(beta).double().requires_grad_()
    ty = torch.nn.functional.layer_norm(tx, (dim,), tg, tb, eps)
    (ty * torch.from_numpy(dy).double()).sum().backward()
    assert np.abs(y - ty.detach().numpy()).max() < 1e-5
    assert np.abs(dx - tx.grad.numpy()).max() < 1e-4
    assert np.abs(dgamma - tg.grad.numpy()).max() < 1e-4
    assert np.abs(dbeta - tb.grad.numpy()).max() < 1e-4


def test_cpu_layers_equal_reference_layers_and_fall_back_for_float16():
    x = ms.Tensor(np.random.default_rng(2).standard_normal((3, 7, 11)).astype(np.float32))
    fast_norm, plain_norm = cpu.LayerNorm(11, eps=1e-6), reference.LayerNorm(11, eps=1e-6)
    np.testing.assert_allclose(fast_norm(x).asnumpy(), plain_norm(x).asnumpy(), atol=2e-6)
    assert fast_norm(x.astype(ms.float16)).dtype == ms.float16

    fast, plain = cpu.GELU(), reference.GELU()
    np.testing.assert_allclose(fast(x).asnumpy(), plain(x).asnumpy(), atol=2e-6)
    # float16 (amp) never reaches the float32-only kernel
    assert fast(x.astype(ms.float16)).dtype == ms.float16


def _rebuild_with(monkeypatch, cache, cxx):
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(cache))
    cpu_kernels.build_library.cache_clear()


def test_no_compiler_is_reported(monkeypatch, tmp_path):
    _rebuild_with(monkeypatch, tmp_path, "/nonexistent/g++")
    try:
        assert cpu_kernels.library_path() is None
        assert "/nonexistent/g++" in cpu_kernels.build_error()
    finally:
        cpu_kernels.build_library.cache_clear()


def test_compile_error_is_reported_and_nothing_half_written(monkeypatch, tmp_path):
    fake = tmp_path / "broken_cxx"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\n"
                    "echo 'error: no luck' >&2; exit 3\n")
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    _rebuild_with(monkeypatch, cache, fake)
    try:
        assert cpu_kernels.library_path() is None
        assert "exited with 3: error: no luck" in cpu_kernels.build_error()
        assert list(cache.iterdir()) == []
    finally:
        cpu_kernels.build_library.cache_clear()


@pytest.mark.parametrize("in_hw,out_hw", [((16, 16), (64, 64)), ((6, 7), (13, 17)),
                                          ((5, 9), (5, 9)), ((1, 3), (4, 8)), ((20, 12), (7, 5))])
def test_resize_bilinear_matches_torch(mode, in_hw, out_hw):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3) + in_hw).astype(np.float32)
    like = np.zeros((2, 1) + out_hw, np.int32)  # e.g. the labels: only the shape counts
    dy = rng.standard_normal((2, 3) + out_hw).astype(np.float32)
    net = Apply(cpu_kernels.resize_bilinear_op())
    weights, like_tensor = ms.Tensor(dy), ms.Tensor(like)

    def loss(inputs):
        return (net(inputs, like_tensor) * weights).sum()

    y = net(ms.Tensor(x), like_tensor).asnumpy()
    dx = ms.grad(loss)(ms.Tensor(x)).asnumpy()
    tx = torch.from_numpy(x).double().requires_grad_()
    ty = torch.nn.functional.interpolate(tx, size=out_hw, mode="bilinear", align_corners=False)
    (ty * torch.from_numpy(dy).double()).sum().backward()
    assert y.shape == (2, 3) + out_hw
    assert np.abs(y - ty.detach().numpy()).max() < 1e-5
    assert np.abs(dx - tx.grad.numpy()).max() < 1e-4


@pytest.mark.parametrize("in_hw,out_hw", [((16, 16), (64, 64)), ((6, 7), (13, 17))])
def test_resize_bilinear_add_matches_torch(mode, in_hw, out_hw):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3) + in_hw).astype(np.float32)
    base = rng.standard_normal((2, 3) + out_hw).astype(np.float32)
    dy = rng.standard_normal((2, 3) + out_hw).astype(np.float32)
    net = Apply(cpu_kernels.resize_bilinear_add_op())
    weights = ms.Tensor(dy)

    def loss(inputs, base_in):
        return (net(inputs, base_in) * weights).sum()

    y = net(ms.Tensor(x), ms.Tensor(base)).asnumpy()
    dx, dbase = (g.asnumpy() for g in ms.grad(loss, grad_position=(0, 1))(ms.Tensor(x), ms.Tensor(base)))
    tx = torch.from_numpy(x).double().requires_grad_()
    tbase = torch.from_numpy(base).double().requires_grad_()
    ty = tbase + torch.nn.functional.interpolate(tx, size=out_hw, mode="bilinear", align_corners=False)
    (ty * torch.from_numpy(dy).double()).sum().backward()
    assert np.abs(y - ty.detach().numpy()).max() < 1e-5
    assert np.abs(dx - tx.grad.numpy()).max() < 1e-4
    assert np.abs(dbase - tbase.grad.numpy()).max() < 1e-6


def test_gelu_bias_matches_torch(mode):
    rng = np.random.default_rng(5)
    h = (rng.standard_normal((7, 9, 48)) * 3).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    dy = rng.standard_normal(h.shape).astype(np.float32)
    net = Apply(cpu_kernels.gelu_erf_bias_op())
    weights = ms.Tensor(dy)

    def loss(inputs, b):
        return (net(inputs, b) * weights).sum()

    args = (ms.Tensor(h), ms.Tensor(bias))
    y = net(*args).asnumpy()
    dh, dbias = (g.asnumpy() for g in ms.grad(loss, grad_position=(0, 1))(*args))
    th = torch.from_numpy(h).double().requires_grad_()
    tb = torch.from_numpy(bias).double().requires_grad_()
    ty = torch.nn.functional.gelu(th + tb)
    (ty * torch.from_numpy(dy).double()).sum().backward()
    assert np.abs(y - ty.detach().numpy()).max() < 2e-6
    assert np.abs(dh - th.grad.numpy()).max() < 2e-6
    assert np.abs(dbias - tb.grad.numpy()).max() < 1e-4


def _torch_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v per head; q [B, Nq, H, d], k and v [B, Nk, H, d]."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


# (batch, queries, keys, heads, head_dim): ViT-like, MiT stage 1 (one head, few keys, more
# queries than one block and than one task), odd sizes off every tile, one key
ATTENTION_SHAPES = [(2, 197, 197, 3, 64), (1, 300, 37, 1, 32), (2, 70, 131, 2, 20),
                    (3, 5, 1, 2, 8)]


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention_matches_torch(mode, shape):
    _check_attention_against_torch(shape)


def _check_attention_against_torch(shape):
    batch, queries, keys, heads, dim = shape
    rng = np.random.default_rng(7)
    # scale 3: peaked softmax rows, where a wrong max/log-sum-exp would show
    q = (rng.standard_normal((batch, queries, heads, dim)) * 3).astype(np.float32)
    kv = (rng.standard_normal((batch, keys, 2, heads, dim)) * 3).astype(np.float32)
    dy = rng.standard_normal(q.shape).astype(np.float32)
    op = cpu_kernels.attention_op()
    net = Apply(op)
    out, lse = (t.asnumpy() for t in net(ms.Tensor(q), ms.Tensor(kv)))
    weights = ms.Tensor(dy)

    def loss(q_in, kv_in):
        return (op(q_in, kv_in)[0] * weights).sum()

    dq, dkv = (g.asnumpy() for g in ms.grad(loss, grad_position=(0, 1))(ms.Tensor(q), ms.Tensor(kv)))
    tq = torch.from_numpy(q).double().requires_grad_()
    tkv = torch.from_numpy(kv).double().requires_grad_()
    ty = _torch_attention(tq, tkv[:, :, 0], tkv[:, :, 1])
    (ty * torch.from_numpy(dy).double()).sum().backward()
    scores = torch.einsum("bqhd,bkhd->bhqk", tq, tkv[:, :, 0]) / dim ** 0.5
    assert out.shape == q.shape and lse.shape == (batch, heads, queries)
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(lse, torch.logsumexp(scores, -1).detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dq, tq.grad.numpy(), rtol=0, atol=2e-4)
    np.testing.assert_allclose(dkv, tkv.grad.numpy(), rtol=0, atol=2e-4)


# -march values, one per SIMD branch of the attention's GEMM tile (cpu_kernels.cc): 16-byte
# vectors, AVX/AVX2 32-byte, AVX-512 64-byte; and the CPU flag each needs to run here.
X86_SIMD_BUILDS = [("x86-64", None), ("x86-64-v3", "avx2"), ("skylake-avx512", "avx512f")]
IS_X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.mark.skipif(not IS_X86, reason="x86 -march values")
@pytest.mark.parametrize("march", [m for m, _ in X86_SIMD_BUILDS])
def test_kernel_source_compiles_for_every_simd_width(monkeypatch, march):
    # CI's CPU runs only some branches; each must still compile (no AVX-512 machine here),
    # with the flags the real build uses
    monkeypatch.setenv(cpu_kernels.ENV_MARCH, march)
    proc = subprocess.run([os.environ.get("CXX", "g++"), "-fsyntax-only",
                           *cpu_kernels.compiler_flags(), cpu_kernels.SOURCE],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.skipif(not IS_X86, reason="x86 -march values")
@pytest.mark.parametrize("march", [m for m, flag in X86_SIMD_BUILDS
                                   if flag is None or flag in cpu_kernels._cpu_flags().split()])
def test_attention_matches_torch_for_each_simd_width_this_cpu_runs(monkeypatch, tmp_path, march):
    # The 64-byte vectors once built for every target made the AVX2 tile spill (30x slower):
    # each width now has its own tile, and each one this CPU can run must give the same result.
    monkeypatch.setenv(cpu_kernels.ENV_MARCH, march)
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path))
    cpu_kernels.build_library.cache_clear()
    try:
        path = cpu_kernels.library_path()
        assert path is not None and path.startswith(str(tmp_path))
        _check_attention_against_torch((2, 70, 131, 2, 20))
    finally:
        cpu_kernels.build_library.cache_clear()


@pytest.mark.parametrize("shape", [(2, 197, 3, 64), (1, 75, 2, 24)], ids=["vit", "odd"])
def test_self_attention_matches_torch(mode, shape):
    batch, tokens, heads, dim = shape
    rng = np.random.default_rng(8)
    qkv = (rng.standard_normal((batch, tokens, 3, heads, dim)) * 3).astype(np.float32)
    dy = rng.standard_normal((batch, tokens, heads, dim)).astype(np.float32)
    op = cpu_kernels.self_attention_op()
    out = Apply(op)(ms.Tensor(qkv))[0].asnumpy()
    weights = ms.Tensor(dy)

    def loss(qkv_in):
        return (op(qkv_in)[0] * weights).sum()

    dqkv = ms.grad(loss)(ms.Tensor(qkv)).asnumpy()
    tqkv = torch.from_numpy(qkv).double().requires_grad_()
    ty = _torch_attention(tqkv[:, :, 0], tqkv[:, :, 1], tqkv[:, :, 2])
    (ty * torch.from_numpy(dy).double()).sum().backward()
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(dqkv, tqkv.grad.numpy(), rtol=0, atol=2e-4)


@pytest.mark.parametrize("shape", [(2, 37, 19, 1), (3, 4, 5, 24), (1, 1, 7, 1)])
def test_swap_middle_axes_matches_transpose(mode, shape):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal((shape[0], shape[2], shape[1], shape[3])).astype(np.float32)
    op = cpu_kernels.swap_middle_axes_op()
    y = Apply(op)(ms.Tensor(x)).asnumpy()
    weights = ms.Tensor(dy)

    def loss(inputs):
        return (op(inputs) * weights).sum()

    dx = ms.grad(loss)(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(y, x.transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(dx, dy.transpose(0, 2, 1, 3))


# A fresh process (a damaged library crashes the process that loads it: SIGBUS for a
# truncated file) builds into a cache, finds the library damaged, and runs a kernel.
_DAMAGED_CACHE_SCRIPT = r"""
import json, os, sys, warnings
import numpy as np
import mindspore as ms
from src.models.backends import cpu_kernels

ms.set_context(mode=ms.PYNATIVE_MODE)
cache, damage = sys.argv[1], sys.argv[2]
os.environ[cpu_kernels.ENV_CACHE] = cache
path = cpu_kernels.library_path()
data = open(path, "rb").read()
with open(path, "wb") as f:
    f.write(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
cpu_kernels.build_library.cache_clear()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    again = cpu_kernels.library_path()
x = ms.Tensor(np.linspace(-3, 3, 12, dtype=np.float32))
y = cpu_kernels.gelu_erf_op()(x).asnumpy()
print(json.dumps({"path": path, "again": again, "warnings": [str(w.message) for w in caught],
                  "y0": float(y[0]), "same": open(again, "rb").read() == data}))
"""


@pytest.mark.parametrize("damage", ["truncated", "random_bytes"])
def test_damaged_cached_library_is_rebuilt_with_a_warning(tmp_path, damage):
    real = cpu_kernels.library_path()
    fake = tmp_path / "copying_cxx"  # "compiles" by copying this machine's library: fast
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo copying 1.0; exit 0; fi\n"
                    "while [ \"$1\" != -o ]; do shift; done\n"
                    f"cp '{real}' \"$2\"\n")
    fake.chmod(0o755)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _DAMAGED_CACHE_SCRIPT, str(tmp_path / "cache"),
                           damage], cwd=root, env=dict(os.environ, CXX=str(fake), GLOG_v="3"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["again"] == result["path"] and result["same"]
    assert len(result["warnings"]) == 1
    assert result["path"] in result["warnings"][0] and "rebuilding it" in result["warnings"][0]
    assert "differs from" in result["warnings"][0]
    assert abs(result["y0"] - (-3 * 0.5 * (1 + math.erf(-3 / 2 ** 0.5)))) < 1e-5  # gelu(-3)
