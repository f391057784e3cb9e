"""Plot the learning rate of every iteration of a config's training run, without training.

    python tools/vis_lr.py CONFIG [--steps_per_epoch N] [--num_devices N] [--out lr.png]
                           [--title TEXT] [--window_size W*H] [--key=value ...]
    python tools/vis_lr.py config/segformer.b0.1024x1024.city.yaml --steps_per_epoch 372 --out lr.png

Iterations are counted from 1, as the step counter of train.log: iteration i runs at
lr[i - 1] of build_lr_schedule. The values come from the trainer's own schedule code (src/engine/schedules.py:
build_lr_schedule, optim.lr_multipliers): warmup, poly / cosine / constant decay and
one curve per learning-rate multiplier of the paramwise rules (SegFormer's "head" key runs
at 10x the base lr). --steps_per_epoch defaults to the size of the config's training set
(batches per device, so it depends on --num_devices); give it to skip reading the data.
Any other --key=value overrides the config (e.g. --epoch_size=10 --warmup_iters=100).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.config import ConfigError, load_config  # noqa: E402
from src.utils.plotting import parse_window_size, pyplot, save_figure  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Plot a config's learning-rate schedule.",
                                     allow_abbrev=False,
                                     epilog="Any other --key=value overrides the config.")
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--steps_per_epoch", type=int,
                        help="iterations per epoch (default: batches in the training set)")
    parser.add_argument("--num_devices", type=int, default=1,
                        help="data-parallel devices the training set is split over (default 1)")
    parser.add_argument("--out", default="lr.png", help="PNG file to write (default lr.png)")
    parser.add_argument("--title", default=None, help="figure title (default: the config name)")
    parser.add_argument("--window_size", type=parse_window_size, default=(12.0, 7.0),
                        metavar="W*H", help="figure size in inches (default 12*7)")
    args, overrides = parser.parse_known_args(argv)
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error(f"--steps_per_epoch must be >= 1, got {args.steps_per_epoch}")
    if args.num_devices < 1:
        parser.error(f"--num_devices must be >= 1, got {args.num_devices}")
    return args, overrides


def dataset_steps_per_epoch(cfg, num_devices):
    """Batches per device and epoch of the training split, as the trainer sees them."""
    from src.data import create_dataset
    return int(create_dataset(cfg, "train", 0, num_devices).get_dataset_size())


def lr_curves(cfg, steps_per_epoch):
    """``{label: lr per iteration}`` for each parameter-group multiplier, and the number of
    warmup iterations. Groups with the same multiplier share one curve."""
    from src.engine.optim import lr_multipliers
    from src.engine.schedules import build_lr_schedule, warmup_iterations
    base = build_lr_schedule(cfg, steps_per_epoch)
    by_mult = {}
    for group, mult in lr_multipliers(cfg).items():
        by_mult.setdefault(mult, []).append(group)
    curves = {f"{' + '.join(groups)} (x{mult:g})": base * mult for mult, groups in by_mult.items()}
    return curves, warmup_iterations(cfg, steps_per_epoch)


def plot_lr(curves, steps_per_epoch, warmup, out, title, window_size=(12.0, 7.0)):
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=window_size)
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=label, linewidth=1.5)
    total = len(next(iter(curves.values())))
    if 0 < warmup < total:   # iterations 1..warmup warm up
        ax.axvline(warmup, color="grey", linestyle=":", linewidth=1)
        ax.text(warmup, 0.5, f" end of warmup ({warmup} it)", transform=ax.get_xaxis_transform(),
                fontsize=9, color="grey")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.set_xlim(0, total)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.2g}"))
    epochs = ax.secondary_xaxis("top", functions=(lambda it: it / steps_per_epoch,
                                                  lambda ep: ep * steps_per_epoch))
    epochs.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, out)


def summary_lines(cfg, curves, steps_per_epoch, warmup):
    total = len(next(iter(curves.values())))
    points = sorted({1, min(warmup + 1, total), total // 2 + 1, total})   # 1-based iterations
    length = (f"max_iters {total} ({steps_per_epoch} iterations per epoch)" if cfg.max_iters else
              f"{cfg.epoch_size} epochs x {steps_per_epoch} iterations = {total} iterations")
    lines = [f"schedule: {cfg.lr_schedule}, lr {cfg.lr:g}, min_lr {cfg.min_lr:g}, {length}, "
             f"warmup {warmup} iterations (ratio {cfg.warmup_ratio:g})"]
    for label, values in curves.items():
        shown = ", ".join(f"it {i}: {values[i - 1]:.4e}" for i in points)
        lines.append(f"  {label}: {shown}")
    return lines


def main(argv):
    args, overrides = parse_args(argv)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from src.data import DataError
    from src.engine.schedules import ScheduleError

    try:
        steps = args.steps_per_epoch or dataset_steps_per_epoch(cfg, args.num_devices)
        curves, warmup = lr_curves(cfg, steps)
    except DataError as err:
        print(f"error: cannot count the training batches ({err}); give --steps_per_epoch",
              file=sys.stderr)
        return 1
    except ScheduleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    title = args.title or f"{os.path.basename(args.config)}: {cfg.lr_schedule} schedule"
    plot_lr(curves, steps, warmup, args.out, title, args.window_size)
    for line in summary_lines(cfg, curves, steps, warmup):
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
