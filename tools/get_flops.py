"""Parameters and MACs (multiply-accumulates) of a config's model, like mmcls' get_flops.

    python tools/get_flops.py CONFIG [--shape H [W]] [--depth N] [--plot PNG] [--key=value ...]
    python tools/get_flops.py config/segformer.b0.1024x1024.city.yaml --shape 1024 2048
    python tools/get_flops.py config/vit_patch16_imagenet2012_config.yml --class_num=1000

--shape: input height and width (one value: square). Default: the evaluation size of the
config (eval_base_size for segmentation, eval_image_size for ViT). --depth: levels of the
per-module table (default 2). --plot: also draw where the MACs go (the Cells --depth
levels down) as a bar chart. Any other --key=value overrides the config.

The count walks the model's own Cells (src/utils/flops.py): every Dense, Conv2d, norm and
the attention/matmul and interpolation calls are counted from the shapes they really see.
Counting runs in PYNATIVE mode on MindSpore's default device (device_target of the config
is not used; no real kernels of note run, no weights are needed). Conventions: one multiply-add = 1 MAC (FLOPs ~ 2 x MACs); bias, softmax,
activations and element-wise ops not counted; LayerNorm 5 and BatchNorm 2 per element;
bilinear interpolation 4 per output element (the fvcore conventions mmcls uses).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.config import ConfigError, load_config  # noqa: E402
from src.utils.logger import fail_on_error  # noqa: E402
from src.utils.plotting import pyplot, save_figure  # noqa: E402

CONVENTIONS = ("MACs = multiply-accumulates (FLOPs ~ 2 x MACs). Counted: conv, dense, matmul "
               "(attention q@k^T and attn@v included), LayerNorm (5/elem), BatchNorm (2/elem), "
               "interpolation (taps/output elem, bilinear 4). Not counted: bias, softmax, "
               "activations, dropout, residual adds, reshapes.")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Parameters and MACs of a config's model.", allow_abbrev=False,
        epilog="Any other --key=value overrides the config (see src/utils/defaults.py).")
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--shape", type=int, nargs="+", metavar="SIZE",
                        help="input H W (or one value for a square); default: the config's "
                             "evaluation size")
    parser.add_argument("--depth", type=int, default=2, help="levels of the per-module table")
    parser.add_argument("--plot", metavar="PNG", help="bar chart of the MACs per module")
    args, overrides = parser.parse_known_args(argv)
    if args.shape is not None and (len(args.shape) not in (1, 2) or min(args.shape) < 1):
        parser.error(f"--shape expects one or two positive integers, got {args.shape}")
    if args.depth < 0:
        parser.error(f"--depth must be >= 0, got {args.depth}")
    return args, overrides


def default_shape(cfg):
    from src.models import is_segmentation
    if is_segmentation(cfg):
        return [int(s) for s in cfg.eval_base_size]
    return [int(cfg.eval_image_size)] * 2


def check_shape(cfg, net, height, width):
    """The ViT classifier takes whole patches (Segmenter pads its input itself): an input
    size that does not fit is the user's to fix, said here rather than by the model's own
    ValueError (a bug anywhere else, which keeps its traceback)."""
    from src.utils.flops import FlopCountError
    patch = getattr(net, "patch_size", None) if cfg.model == "vit" else None
    if patch and (height % patch or width % patch):
        raise FlopCountError(f"input {height}x{width} (--shape, or the config's eval_image_size) "
                             f"is not a multiple of the patch size {patch} of the ViT "
                             f"{cfg.backbone}")


def plot_breakdown(report, depth, out, title):
    """Horizontal bars: GMACs of each part of ``report.partition(depth)``, in call order."""
    plt = pyplot()

    parts = [(name, macs) for name, macs in report.partition(max(depth, 1)) if macs > 0]
    fig, ax = plt.subplots(figsize=(9, 0.8 + 0.32 * len(parts)))
    names, values = [p[0] for p in parts][::-1], [p[1] / 1e9 for p in parts][::-1]
    bars = ax.barh(names, values, color="tab:blue")
    for bar, value in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.2f}",
                va="center", fontsize=8)
    ax.set_xlabel("GMACs")
    ax.set_xlim(0, max(values) * 1.15)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out)


def main(argv):
    args, overrides = parse_args(argv)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    import mindspore as ms
    from src.models import build_model
    from src.utils.flops import count_model, format_count

    ms.set_context(mode=ms.PYNATIVE_MODE)  # stand-ins only: any device (CPU by default) will do
    height, width = (args.shape * 2)[:2] if args.shape else default_shape(cfg)
    shape = (1, 3, height, width)
    try:
        cfg.kernel_backend = "reference"  # the layers as published, op by op
        net = build_model(cfg)
        check_shape(cfg, net, height, width)
        report = count_model(net, shape)
    except Exception as err:  # noqa: BLE001  (user error or bug: fail_on_error tells them apart)
        fail_on_error(err)
    by_op = ", ".join(f"{op} {format_count(m)}" for op, m in sorted(report.by_operator().items()))
    print("=" * 72)
    print(f"config: {args.config} ({cfg.model} {cfg.backbone}, {cfg.class_num} classes)")
    print(f"input shape: {shape}, output shape: {', '.join(map(str, report.output_shapes))}")
    print(f"MACs: {format_count(report.total_macs)}  ({report.total_macs:,} multiply-adds)")
    print(f"Params: {format_count(report.params)}  ({report.params:,} trainable"
          + (f"; {report.buffers:,} BatchNorm statistics not counted" if report.buffers else "")
          + ")")
    print(f"MACs by operator: {by_op}")
    if report.uncounted:
        print(f"WARNING: no counting rule for {', '.join(report.uncounted)}: their cost, if any, "
              f"is not in the total")
    print("=" * 72)
    print(report.table(args.depth))
    print(CONVENTIONS)
    if args.plot:
        title = (f"{cfg.model} {cfg.backbone} at {height}x{width}: "
                 f"{format_count(report.total_macs)}MACs, {format_count(report.params)} params")
        plot_breakdown(report, args.depth, args.plot, title)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
