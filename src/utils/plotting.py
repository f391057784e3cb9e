"""What the plotting tools (get_flops, analyze_logs, vis_lr) share: a headless pyplot,
the ``--window_size W*H`` argument, and writing a figure to PNG."""
import argparse
import os


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def parse_window_size(text):
    try:
        width, height = (float(v) for v in text.lower().split("*"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W*H in inches (e.g. 12*7), got '{text}'") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"window size must be positive, got '{text}'")
    return width, height


def save_figure(fig, out):
    """Write ``fig`` to the PNG ``out`` (creating its folder) and release it."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    pyplot().close(fig)
