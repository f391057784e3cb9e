"""Device, execution mode and distributed set-up, applied once at start-up.

``setup_runtime(cfg)`` is the only place that reads DEVICE_ID / RANK_ID style
environment variables; everything else receives ``rank_id`` and ``group_size``.
"""
import os

import mindspore as ms

MODES = {"GRAPH": ms.GRAPH_MODE, "PYNATIVE": ms.PYNATIVE_MODE}
DEVICE_TARGETS = ("Ascend", "GPU", "CPU")


class RuntimeSetupError(RuntimeError):
    pass


def _check_device(target):
    if target not in DEVICE_TARGETS:
        raise RuntimeSetupError(f"config key 'device_target': '{target}' is not one of "
                                f"{list(DEVICE_TARGETS)}")
    if target == "CPU":
        return
    # MindSpore's CPU-only wheel cannot drive an accelerator; say so before anything runs.
    try:
        ms.set_device(target)
    except Exception as err:  # noqa: BLE001  (MindSpore raises various types here)
        raise RuntimeSetupError(
            f"device_target '{target}' is not available on this machine "
            f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}); "
            f"run with --device_target=CPU or install the MindSpore build for {target}") from None


def setup_runtime(cfg):
    """Set mode/device from the config; initialise collectives when distributed.

    Returns (rank_id, group_size).
    """
    mode = str(cfg.mode).upper()
    if mode not in MODES:
        raise RuntimeSetupError(f"config key 'mode': '{cfg.mode}' is not one of {list(MODES)}")
    ms.set_context(mode=MODES[mode])
    _check_device(cfg.device_target)
    device_id = int(os.environ.get("DEVICE_ID", cfg.device_id))
    if cfg.device_target != "CPU":
        ms.set_device(cfg.device_target, device_id)
    else:
        ms.set_device("CPU")
    if not cfg.run_distribute:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init
    from mindspore.context import ParallelMode
    try:
        init()
    except Exception as err:  # noqa: BLE001
        raise RuntimeSetupError(
            "run_distribute=True but the collective backend could not start "
            f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}). "
            "Launch with scripts/run_distribute_train.sh (rank table) or "
            "scripts/run_distribute_train_msrun.sh (msrun)") from None
    rank_id, group_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL,
                                 gradients_mean=True, device_num=group_size)
    return rank_id, group_size
