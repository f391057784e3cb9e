"""Handing the compiler's freed heap back to the OS (src/utils/device.py)."""
import ctypes
import platform

import numpy as np
import pytest
import mindspore as ms
from mindspore import ops

from src.utils import device

IS_GLIBC = platform.libc_ver()[0] == "glibc"


def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024.0


@pytest.mark.skipif(not IS_GLIBC, reason="malloc_trim is glibc's")
def test_release_free_heap_returns_freed_pages_to_the_os():
    # 96 MiB of small blocks, all freed but the last: glibc keeps the pages below a live block
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(1024) for _ in range(96 * 1024)]
    for address in blocks:
        ctypes.memset(address, 1, 1024)
    for address in blocks[:-1]:
        libc.free(address)
    before = rss_mib()
    assert device.release_free_heap()
    after = rss_mib()
    libc.free(blocks[-1])
    assert before - after > 48, (before, after)


class Tiny(device.ReleasesCompileMemory):
    def construct(self, x):
        return ops.relu(x) * 2.0


@pytest.fixture
def trims(monkeypatch):
    calls = []
    monkeypatch.setattr(device, "release_free_heap", lambda: calls.append(1) or True)
    return calls


def test_heap_released_after_each_new_graph_only(trims):
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        net = Tiny()
        net(ms.Tensor(np.ones((2, 3), np.float32))).asnumpy()
        assert len(trims) == 1
        net(ms.Tensor(np.ones((2, 3), np.float32))).asnumpy()   # the same graph: no compile
        assert len(trims) == 1
        net(ms.Tensor(np.ones((4, 5), np.float32))).asnumpy()   # a new shape compiles again
        assert len(trims) == 2
    finally:
        ms.set_context(mode=old)


def test_nothing_to_release_in_pynative(trims):
    old = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        np.testing.assert_allclose(Tiny()(ms.Tensor(np.ones((2, 3), np.float32))).asnumpy(), 2.0)
        assert trims == []
    finally:
        ms.set_context(mode=old)


def test_the_cells_users_call_release_it():
    from src.engine.train_step import TrainStep
    from src.models.segformer import SegFormer
    from src.models.segmenter import Segmenter
    from src.models.vit import VisionTransformer
    for cell in (SegFormer, VisionTransformer, Segmenter, TrainStep):
        assert issubclass(cell, device.ReleasesCompileMemory), cell
