"""src/utils/device.py: selecting the device once per process at start-up (MindSpore's
device and collective calls recorded by stubs), and handing the compiler's freed heap back
to the OS."""
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import ops

from src.engine.amp import AMP_LEVELS
from src.utils import device
from src.utils.config import load_config

IS_GLIBC = platform.libc_ver()[0] == "glibc"


FREED_HEAP_CHECK = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from src.utils import device

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024.0

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
print(before - after)
"""


@pytest.mark.skipif(not IS_GLIBC, reason="malloc_trim is glibc's")
def test_release_free_heap_returns_freed_pages_to_the_os():
    # in a fresh process: late in a long one the blocks may land in holes of pages that
    # other live allocations keep resident, which no trim can return
    out = subprocess.run([sys.executable, "-c", FREED_HEAP_CHECK, REPO], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) > 48, out.stdout


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


# --------------------------------------------------------------------- device selection --

LAUNCH_ENV = ("DEVICE_ID", "RANK_ID", "RANK_SIZE", "RANK_TABLE_FILE", "MS_ROLE", "MS_SCHED_HOST",
              "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRECISION_CALLS = ("precision_mode", "matmul_allow_hf32", "conv_allow_hf32")
# every amp level keeps each operator in its graph dtype, float32 without HF32 included
KEEP_DTYPE = [("precision_mode", "must_keep_origin_dtype"), ("matmul_allow_hf32", False),
              ("conv_allow_hf32", False)]


def precision_calls(target):
    return KEEP_DTYPE if target == "Ascend" else []


@pytest.fixture
def runtime(monkeypatch):
    """setup_runtime with MindSpore's device, Ascend precision and collective calls recorded,
    not made.

    ``events`` lists ("set_device", target, id), (op_precision function, value) and ("init",)
    in call order; the stubbed collective group is rank 6 of 8. The mode and auto-parallel
    context that setup_runtime really sets are restored afterwards.
    """
    import mindspore.communication as comm
    from mindspore.device_context.ascend import op_precision
    events = []
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(ms, "set_device", lambda *args: events.append(("set_device",) + args))
    for name in PRECISION_CALLS:   # raising=True: MindSpore renaming one fails here
        monkeypatch.setattr(op_precision, name, lambda value, name=name: events.append((name, value)))
    monkeypatch.setattr(comm, "init", lambda *args: events.append(("init",)))
    monkeypatch.setattr(comm, "get_rank", lambda *args: 6)
    monkeypatch.setattr(comm, "get_group_size", lambda *args: 8)
    mode = ms.get_context("mode")

    def run(target, *overrides):
        cfg = load_config("", [f"--device_target={target}", "--mode=PYNATIVE", *overrides])
        return device.setup_runtime(cfg), events
    yield run
    ms.set_context(mode=mode)
    ms.reset_auto_parallel_context()


@pytest.mark.parametrize("target", ["Ascend", "GPU", "CPU"])
def test_standalone_process_selects_its_device_id_once(runtime, monkeypatch, target):
    monkeypatch.setenv("DEVICE_ID", "3")          # run_standalone_train.sh 3 ...
    (rank, size), events = runtime(target)
    assert (rank, size) == (0, 1)
    assert events == [("set_device", target, 3)] + precision_calls(target)


def test_without_device_id_the_config_key_is_used(runtime):
    _, events = runtime("Ascend", "--device_id=5")
    assert events == [("set_device", "Ascend", 5)] + KEEP_DTYPE


@pytest.mark.parametrize("target", ["Ascend", "GPU", "CPU"])
def test_msrun_worker_selects_its_local_rank_before_init(runtime, monkeypatch, target):
    # what msrun exports for the third worker on this node of an 8-worker job
    for key, value in {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "10.0.0.1", "MS_SCHED_PORT": "8118",
                       "MS_WORKER_NUM": "8", "RANK_SIZE": "8", "DEVICE_ID": "2"}.items():
        monkeypatch.setenv(key, value)
    (rank, size), events = runtime(target, "--run_distribute=True")
    assert (rank, size) == (6, 8)
    assert events == [("set_device", target, 2)] + precision_calls(target) + [("init",)]
    assert device.data_parallel_size() == 8


def test_rank_table_process_selects_its_device_id_before_init(runtime, monkeypatch, tmp_path):
    for key, value in {"RANK_TABLE_FILE": str(tmp_path / "hccl.json"), "RANK_SIZE": "8",
                       "RANK_ID": "6", "DEVICE_ID": "1"}.items():
        monkeypatch.setenv(key, value)
    (rank, size), events = runtime("Ascend", "--run_distribute=True")
    assert (rank, size) == (6, 8)
    assert events == [("set_device", "Ascend", 1)] + KEEP_DTYPE + [("init",)]


@pytest.mark.parametrize("level", ["O0", "O1", "O2", "O3"])
@pytest.mark.parametrize("target", ["Ascend", "GPU", "CPU"])
def test_operator_precision_is_fixed_per_amp_level_on_ascend_only(runtime, level, target):
    # once, after the device is selected (op_precision ignores calls made before that)
    _, events = runtime(target, f"--amp_level={level}")
    assert events == [("set_device", target, 0)] + precision_calls(target)
    assert set(device.ASCEND_PRECISION) == set(AMP_LEVELS)


def test_unknown_amp_level_on_ascend_is_a_clear_error(runtime):
    with pytest.raises(device.RuntimeSetupError, match=r"config key 'amp_level': 'O4' is not one of "
                       r"\['O0', 'O1', 'O2', 'O3'\]"):
        runtime("Ascend", "--amp_level=O4")


def test_unavailable_device_is_a_clear_error(runtime, monkeypatch):
    def no_ascend(*args):
        raise RuntimeError("Unsupported device target Ascend. This process only supports one of "
                           "the ['CPU'].\nmore detail")
    monkeypatch.setattr(ms, "set_device", no_ascend)
    monkeypatch.setenv("DEVICE_ID", "3")
    with pytest.raises(device.RuntimeSetupError) as info:
        runtime("Ascend")
    assert str(info.value) == (
        "device_target 'Ascend' is not available on this machine (Unsupported device target "
        "Ascend. This process only supports one of the ['CPU'].); run with --device_target=CPU "
        "or install the MindSpore build for Ascend")


def test_device_already_fixed_in_this_process_is_a_clear_error(runtime, monkeypatch):
    def fixed(*args):
        raise RuntimeError("The 'mindspore.set_device' can not be modified.")
    monkeypatch.setattr(ms, "set_device", fixed)
    monkeypatch.setattr(ms, "get_current_device", lambda: ("CPU", 0))
    monkeypatch.setenv("DEVICE_ID", "3")
    with pytest.raises(device.RuntimeSetupError, match=r"cannot select CPU device 3: this process "
                       r"already set its device to \('CPU', 0\)"):
        runtime("CPU")

def test_bad_device_id_names_the_value(runtime, monkeypatch):
    monkeypatch.setenv("DEVICE_ID", "card3")
    with pytest.raises(device.RuntimeSetupError, match="DEVICE_ID='card3' must be a non-negative integer"):
        runtime("Ascend")


def _real_setup_runtime(target, device_id):
    """setup_runtime in a fresh process with MindSpore's real set_device (this CPU wheel)."""
    code = ("import mindspore as ms\n"
            "from src.utils.config import load_config\n"
            "from src.utils.device import RuntimeSetupError, setup_runtime\n"
            "try:\n"
            f"    setup_runtime(load_config('', ['--device_target={target}', '--mode=PYNATIVE']))\n"
            "    print('DEVICE', tuple(ms.get_current_device()))\n"
            "except RuntimeSetupError as err:\n"
            "    print('ERR', err)\n")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["DEVICE_ID"] = str(device_id)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_real_set_device_with_a_nonzero_id():
    # MindSpore fixes the device at the first set_device: a second call with the id raised
    assert _real_setup_runtime("CPU", 3) == "DEVICE ('CPU', 3)"


def test_real_unavailable_accelerator_is_a_clear_error():
    out = _real_setup_runtime("GPU", 3)
    assert out.startswith("ERR device_target 'GPU' is not available on this machine ("), out
    assert out.endswith("run with --device_target=CPU or install the MindSpore build for GPU"), out


@pytest.mark.parametrize("level", ["", "O0", "O1"])
def test_jit_level_is_set_once_at_start_up_when_given(runtime, monkeypatch, level):
    calls = []
    real = ms.set_context

    def recording(**kwargs):
        calls.append(kwargs)
        if "jit_config" not in kwargs:
            real(**kwargs)
    monkeypatch.setattr(ms, "set_context", recording)
    runtime("GPU", f"--jit_level={level}")
    assert [c for c in calls if "jit_config" in c] == ([{"jit_config": {"jit_level": level}}]
                                                       if level else [])


def test_unknown_jit_level_is_a_clear_error(runtime):
    with pytest.raises(device.RuntimeSetupError, match=r"config key 'jit_level': 'O2' is not one "
                                                       r"of \['', 'O0', 'O1'\]"):
        runtime("Ascend", "--jit_level=O2")
