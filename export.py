"""Export a checkpoint to MINDIR, AIR (Ascend only) or ONNX.

    python export.py --config_path=CONFIG --export_ckpt_path=CKPT [--export_format=MINDIR|AIR|ONNX]
                     [--export_file_name=NAME] [--export_input_shape=N,C,H,W]

The file is named after the config file (``segformer.b0.512x1024.city.mindir``) unless
``--export_file_name`` is given. ``--export_input_shape=1,3,-1,-1`` exports a MINDIR that
takes any H and W (where the network supports it). The exported graph is always the
reference kernel backend (standard operators only), whatever ``kernel_backend`` says.
"""
import sys

from src.utils.config import config_from_argv
from src.utils.logger import fail_on_error


def main(argv):
    cfg = config_from_argv(argv)
    from src.engine.export import check_export, export_config, export_network
    from src.engine.networks import load_trained_net
    from src.utils.device import setup_runtime_one_device_ok

    try:
        setup_runtime_one_device_ok(cfg)
        check_export(cfg)  # a wrong format or path fails before the checkpoint is read
        net = load_trained_net(export_config(cfg), cfg.export_ckpt_path)
        export_network(net, cfg)
    except Exception as err:  # noqa: BLE001  (user error or bug: fail_on_error tells them apart)
        fail_on_error(err)


if __name__ == "__main__":
    main(sys.argv[1:])
