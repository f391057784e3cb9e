"""Convert an upstream PyTorch checkpoint into a MindSpore one.

    python tools/convert_model.py --pt_model_path=./pretrained/mit_b0.pth \
        --ms_model_path=./pretrained/ms_pretrained_b0.ckpt [--config_path=config/x.yaml] \
        [--drop_head=False] [--key=value ...]

The format (NVlabs ImageNet MiT, NVlabs/mmseg fine-tuned SegFormer, HF transformers,
timm ViT, official Segmenter) is detected from the key names. Without --config_path the
model variant is read from the tensor shapes and printed; with it, every tensor is checked
against that config's network. Other --key=value pairs are config overrides
(``--class_num=5 --drop_head=True``: keep all but the classifier). Any missing, unexpected
or mis-shaped tensor stops the tool (exit status 1) with a one-line error naming the key.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.checkpoint import CheckpointError  # noqa: E402
from src.utils.config import ConfigError, split_cli  # noqa: E402
from src.convert import ConversionError, convert_checkpoint  # noqa: E402

USAGE = ("usage: convert_model.py --pt_model_path=IN.pth|.bin|.safetensors "
         "--ms_model_path=OUT.ckpt [--config_path=C.yaml] [--drop_head=False] [--key=value ...]")


def parse_args(argv):
    """The tool's two paths; everything else (config_path included) is config overrides."""
    paths = {"pt_model_path": "", "ms_model_path": ""}
    overrides = []
    for key, value in split_cli(argv):
        if key in paths:
            paths[key] = value or ""
        else:
            overrides.append(f"--{key}" if value is None else f"--{key}={value}")
    if not paths["pt_model_path"] or not paths["ms_model_path"]:
        raise ConfigError(USAGE)
    return paths["pt_model_path"], paths["ms_model_path"], overrides


def main(argv):
    try:
        pt_path, ms_path, overrides = parse_args(argv)
        config_path = next((o.split("=", 1)[1] for o in overrides
                            if o.startswith("--config_path=")), "")
        overrides = [o for o in overrides if not o.startswith("--config_path=")]
        convert_checkpoint(pt_path, ms_path, config_path=config_path, overrides=overrides)
    except (ConfigError, ConversionError, CheckpointError) as err:
        raise SystemExit(f"convert_model: error: {err}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
