"""Device, execution mode and distributed set-up, applied once at start-up.

``setup_runtime(cfg)`` is the only place that reads DEVICE_ID / RANK_ID style
environment variables; everything else receives ``rank_id`` and ``group_size``
(or asks ``data_parallel_size()``, which reads what ``setup_runtime`` configured).

Distributed runs are started by one of two launchers, which set the environment that
MindSpore's ``init()`` reads:

* ``scripts/run_distribute_train.sh`` (Ascend, HCCL rank table): RANK_TABLE_FILE,
  RANK_SIZE, RANK_ID, DEVICE_ID per process;
* ``scripts/run_distribute_train_msrun.sh`` (msrun; Ascend, GPU, CPU): MS_ROLE,
  MS_SCHED_HOST, MS_SCHED_PORT, MS_WORKER_NUM, and DEVICE_ID = local rank.
"""
import ctypes
import os

import mindspore as ms
from mindspore import nn
from mindspore.context import ParallelMode

from src.utils.errors import UserError

MODES = {"GRAPH": ms.GRAPH_MODE, "PYNATIVE": ms.PYNATIVE_MODE}
DEVICE_TARGETS = ("Ascend", "GPU", "CPU")
JIT_LEVELS = ("", "O0", "O1")   # "": MindSpore's choice per device; O2 is deprecated in 2.10
MSRUN_ENV = ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM")
LAUNCHERS = ("Launch with scripts/run_distribute_train.sh (Ascend, rank table) or "
             "scripts/run_distribute_train_msrun.sh (msrun: Ascend, GPU, CPU)")

# Ascend operator precision per amp level (mindspore.device_context.ascend.op_precision).
# Left unset, CANN may compute a float32 operator in a lower precision, and MindSpore 2.10
# documents three different defaults: "force_fp16" (set_context's ascend_config),
# "must_keep_origin_dtype" (op_precision.precision_mode) and "allow_fp32_to_fp16" on Atlas
# training products such as the 910 (the Chinese API page); on the 910B (Atlas A2)
# conv_allow_hf32 is on, so float32 convolutions take HF32 inputs. Every level keeps each
# operator in the dtype the graph gives it: the amp level already decides which operators
# are float16 (src/engine/amp.py), and a float32 operator there, at O0 or in the float32
# islands of O1/O2 (BatchNorm, LayerNorm, softmax, the loss), must stay float32.
ASCEND_PRECISION = {
    level: {"precision_mode": "must_keep_origin_dtype", "matmul_allow_hf32": False,
            "conv_allow_hf32": False}
    for level in ("O0", "O1", "O2", "O3")
}


class RuntimeSetupError(UserError, RuntimeError):
    pass


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_device(target, device_id):
    """Select the device, exactly once: MindSpore fixes it at the first ``set_device`` of a
    process and refuses any later call with another id, so the id goes into that one call."""
    if target not in DEVICE_TARGETS:
        raise RuntimeSetupError(f"config key 'device_target': '{target}' is not one of "
                                f"{list(DEVICE_TARGETS)}")
    try:
        ms.set_device(target, device_id)
    except Exception as err:  # noqa: BLE001  (MindSpore raises various types here)
        if tuple(ms.get_current_device()) == (target, device_id):
            # MindSpore refuses any set_device once a kernel ran, even to the same device;
            # a second set-up in one process (the Python API's init_model) is then a no-op.
            return
        if "can not be modified" in str(err):
            raise RuntimeSetupError(
                f"cannot select {target} device {device_id}: this process already set its device "
                f"to {tuple(ms.get_current_device())}, and MindSpore allows that only once per "
                "process") from None
        if target == "CPU":
            raise RuntimeSetupError(f"cannot select CPU device {device_id} ({_first_line(err)})") from None
        # MindSpore's CPU-only wheel cannot drive an accelerator; say so before anything runs.
        raise RuntimeSetupError(
            f"device_target '{target}' is not available on this machine ({_first_line(err)}); "
            f"run with --device_target=CPU or install the MindSpore build for {target}") from None


def _set_ascend_precision(amp_level):
    """Fix Ascend's operator precision for ``amp_level`` (``ASCEND_PRECISION``). Ascend only:
    CPU and GPU kernels compute in the dtype they are given."""
    if amp_level not in ASCEND_PRECISION:
        raise RuntimeSetupError(f"config key 'amp_level': '{amp_level}' is not one of "
                                f"{list(ASCEND_PRECISION)}")
    from mindspore.device_context.ascend import op_precision
    settings = ASCEND_PRECISION[amp_level]
    op_precision.precision_mode(settings["precision_mode"])
    op_precision.matmul_allow_hf32(settings["matmul_allow_hf32"])
    op_precision.conv_allow_hf32(settings["conv_allow_hf32"])


def _env_int(name, default):
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    if not text.strip().isdigit():
        raise RuntimeSetupError(f"environment variable {name}={text!r} must be a non-negative integer")
    return int(text)


def launcher_started(target):
    """True when one of the distributed launchers set this process's environment."""
    return (all(os.environ.get(k) for k in MSRUN_ENV)
            or (target == "Ascend" and bool(os.environ.get("RANK_TABLE_FILE"))))


def _check_launcher(target):
    """init() needs its launcher's environment; without it MindSpore fails obscurely or hangs."""
    if launcher_started(target):
        return
    missing = [k for k in MSRUN_ENV if not os.environ.get(k)]
    need = ("RANK_TABLE_FILE (rank table) or the msrun variables " if target == "Ascend"
            else "the msrun variables ")
    raise RuntimeSetupError(f"run_distribute=True on {target} needs {need}{MSRUN_ENV}; "
                            f"missing: {missing}. {LAUNCHERS}")


def setup_runtime(cfg):
    """Set mode/device (and on Ascend the operator precision of ``cfg.amp_level``) from the
    config; initialise collectives when distributed.

    Returns (rank_id, group_size); (0, 1) when ``cfg.run_distribute`` is False.
    """
    mode = str(cfg.mode).upper()
    if mode not in MODES:
        raise RuntimeSetupError(f"config key 'mode': '{cfg.mode}' is not one of {list(MODES)}")
    ms.set_context(mode=MODES[mode])
    if cfg.jit_level not in JIT_LEVELS:
        raise RuntimeSetupError(f"config key 'jit_level': '{cfg.jit_level}' is not one of "
                                f"{list(JIT_LEVELS)}")
    if cfg.jit_level:
        ms.set_context(jit_config={"jit_level": cfg.jit_level})
    # Both launchers export DEVICE_ID per process: its card's id as this process sees it
    # (src/utils/ascend_cards.py; msrun: the local rank).
    _check_device(cfg.device_target, _env_int("DEVICE_ID", int(cfg.device_id)))
    if cfg.device_target == "Ascend":   # after set_device: op_precision checks the device
        _set_ascend_precision(cfg.amp_level)
    if not cfg.run_distribute:
        return 0, 1
    _check_launcher(cfg.device_target)
    from mindspore.communication import get_group_size, get_rank, init
    try:
        init()
    except Exception as err:  # noqa: BLE001
        if os.environ.get("MS_ROLE") == "MS_SCHED":
            # msrun runs this script once more as its scheduler; init() returns there only
            # when the job ends, and raises when a worker failed.
            raise RuntimeSetupError(f"msrun scheduler: the job ended abnormally ({_first_line(err)}); "
                                    "the failing worker's log says why") from None
        raise RuntimeSetupError(f"run_distribute=True but the collective backend could not start "
                                f"({_first_line(err)}). {LAUNCHERS}") from None
    rank_id, group_size = get_rank(), get_group_size()
    expected = _env_int("RANK_SIZE", group_size)
    if expected != group_size:
        raise RuntimeSetupError(f"RANK_SIZE={expected} but the collective group has {group_size} "
                                "ranks; the launcher and the rank table disagree")
    # Data parallel: every rank holds the full model; gradients are averaged across ranks.
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL,
                                 gradients_mean=True, device_num=group_size)
    return rank_id, group_size


def setup_runtime_one_device_ok(cfg, log=print):
    """``setup_runtime`` for eval, infer and export, which need no launcher: a config with
    ``run_distribute: True`` (a training recipe reused as it is) started without one runs on
    one device, said in one log line; under a launcher it is ``setup_runtime``. Training
    keeps requiring the launcher (``setup_runtime``), since one device would be another run."""
    if cfg.run_distribute and not launcher_started(cfg.device_target):
        log("run_distribute=True in the config, but no distributed launcher started this "
            "process: running on one device")
        cfg.run_distribute = False
    return setup_runtime(cfg)


def data_parallel_size():
    """Number of data-parallel ranks configured by ``setup_runtime`` (1 when not distributed)."""
    if ms.get_auto_parallel_context("parallel_mode") != ParallelMode.DATA_PARALLEL:
        return 1
    return int(ms.get_auto_parallel_context("device_num"))


def release_free_heap():
    """Hand the heap pages that malloc holds free back to the OS (glibc ``malloc_trim(0)``,
    which also trims the per-thread arenas and the holes inside them). True if it ran; a
    no-op elsewhere (no glibc)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim(0)
    return True


class ReleasesCompileMemory(nn.Cell):
    """Base of the cells users call directly (the models, ``TrainStep``).

    In GRAPH mode MindSpore's compiler frees most of its temporary IR when it is done, but
    glibc keeps those pages in its per-thread arenas, where the graph's tensors (MindSpore's
    own memory pool) never reuse them: measured 50-75 MiB of peak RSS for ViT-B/16 and the
    SegFormer-B0 train step. So after each new compile, before the graph first runs, they go
    back to the OS. Cells compiled inside another cell's graph never get here.
    """

    def compile(self, *args, **kwargs):
        compiled = len(self.compile_cache)
        super().compile(*args, **kwargs)
        if len(self.compile_cache) != compiled:
            release_free_heap()
