"""What the resumable draws cost: ``src/models/stochastic.py``'s Dropout / Dropout2d / DropPath
against MindSpore's own ``nn.Dropout`` / ``nn.Dropout2d`` (kernel-state draws, not resumable),
forward in training mode, GRAPH mode, on this machine's CPU.

    python benchmarks/bench_dropout.py [--repeats 20] [--threads 2]

Prints the median milliseconds per call of each layer on each shape: element-wise dropout on
a Segmenter decoder's tokens, channel dropout on a SegFormer head's fused map, stochastic
depth on a MiT block's tokens.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import mindspore as ms
from mindspore import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from src.models import stochastic  # noqa: E402
from src.models.backends import load_backend  # noqa: E402

CASES = {   # name: (shape, ours, MindSpore's)
    "dropout [2, 1174, 768] (element-wise)": ((2, 1174, 768), lambda: stochastic.Dropout(0.1),
                                              lambda: nn.Dropout(p=0.1)),
    "dropout2d [2, 256, 128, 128] (channels)": ((2, 256, 128, 128),
                                                lambda: stochastic.Dropout2d(0.1),
                                                lambda: nn.Dropout2d(p=0.1)),
    "drop path [2, 16384, 32] (per sample)": ((2, 16384, 32),
                                              lambda: load_backend("reference").DropPath(0.1),
                                              None),
}


def time_layer(layer, x, repeats):
    layer.set_train(True)
    layer(x).asnumpy()                       # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        layer(x).asnumpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    stochastic.set_step(0, 0)
    print(f"{'case':44s} {'stochastic.py':>14s} {'MindSpore':>10s}   (median ms per call)")
    for name, (shape, ours, theirs) in CASES.items():
        x = ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        mine = time_layer(ours(), x, args.repeats)
        other = f"{time_layer(theirs(), x, args.repeats):10.2f}" if theirs else f"{'-':>10s}"
        print(f"{name:44s} {mine:14.2f} {other}")


if __name__ == "__main__":
    main()
