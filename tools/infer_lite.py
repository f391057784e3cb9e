"""Segment images with an exported model on MindSpore Lite (Ascend 310/310P, CPU, GPU).

    python tools/infer_lite.py --infer_ckpt_path=MODEL.mindir --data_path=IMAGES
        --infer_output_path=DIR --device_target=Ascend|CPU|GPU [--device_id=0]
        [--config_path=CONFIG] [--any_config_key=value]
    (bash scripts/run_infer_lite.sh [MINDIR_PATH] [DATASET_PATH] [OUTPUT_PATH] [DEVICE])

The same outputs as infer.py (``<stem>_gray/_color/_overlap.png``; ``--format_only=True``:
the benchmark submission), from the same pre/post-processing and output writer
(src/engine/inference.py, src/engine/infer_images.py): only the network is Lite's
(src/engine/lite.py). ``device_target`` is the device Lite runs the model on; the pre/post-
processing runs on MindSpore's CPU backend. Without ``--config_path`` the config is
``config/<model file name>.yaml``, export.py's default name for a config's export. The log
also goes to <output_dir>/infer_lite.log.
"""
import copy
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from src.utils.config import config_from_argv  # noqa: E402
from src.utils.logger import FileLogger, fail, fail_on_error  # noqa: E402


def resolve_config(argv):
    """The config of ``argv``; without --config_path, config/<model file stem>.yaml."""
    cfg = config_from_argv(argv)
    if cfg.config_path:
        return cfg
    stem = os.path.splitext(os.path.basename(cfg.infer_ckpt_path))[0]
    for ext in (".yaml", ".yml"):
        candidate = os.path.join(REPO, "config", stem + ext)
        if stem and os.path.isfile(candidate):
            return config_from_argv([f"--config_path={candidate}"] + list(argv))
    fail(f"no config for {cfg.infer_ckpt_path or '(no model given)'}: pass --config_path=CONFIG "
         f"(the config the model was exported from; config/{stem}.yaml does not exist)")


def main(argv):
    cfg = resolve_config(argv)
    from src.engine.lite import LITE_TARGETS, LiteUnavailableError, import_lite

    if cfg.device_target not in LITE_TARGETS:
        fail(f"device '{cfg.device_target}' (DEVICE / --device_target) is not a MindSpore Lite "
             f"device; expected one of {sorted(LITE_TARGETS)}")
    if not cfg.infer_ckpt_path or not os.path.isfile(cfg.infer_ckpt_path):
        fail(f"model file not found: {cfg.infer_ckpt_path!r} (--infer_ckpt_path: a .mindir "
             f"from export.py or converter_lite)")
    try:
        import_lite()  # before anything heavy: without Lite nothing here can run
    except LiteUnavailableError as err:
        fail(err)

    from src.apis import InferenceModel, inference_model
    from src.engine.infer_images import plan_inference, report_failures, run_inference
    from src.engine.lite import LiteNetwork
    from src.models import is_segmentation
    from src.utils.device import setup_runtime

    if not is_segmentation(cfg):
        fail(f"infer_lite.py writes segmentation maps; config model={cfg.model!r} is not a "
             f"segmentation model")
    log = None
    try:
        log = FileLogger(os.path.join(cfg.output_dir, "infer_lite.log"))
        host = copy.deepcopy(cfg)  # MindSpore runs the pre/post-processing, on the CPU
        host.device_target, host.mode, host.run_distribute = "CPU", "PYNATIVE", False
        setup_runtime(host)
        plan = plan_inference(cfg)
        network = LiteNetwork(cfg.infer_ckpt_path, cfg.device_target, int(cfg.device_id))
        log(f"MindSpore Lite: {cfg.infer_ckpt_path} on {cfg.device_target} {cfg.device_id} "
            f"(input {network.input_shape})")
        model = InferenceModel(cfg, network)
        _, failures = run_inference(lambda image: inference_model(model, image), cfg, plan, log)
    except Exception as err:  # noqa: BLE001  (user error or bug: fail_on_error tells them apart)
        fail_on_error(err, log)
    if report_failures(failures, log):
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
