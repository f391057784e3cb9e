"""Images per second of the training data pipeline (a script that prints, not a test).

    python tools/benchmark_data.py CONFIG [--workers 1 2] [--batches 20] [--key=value ...]

Defaults measure the Cityscapes recipe at 512x1024 crops (base_size 1024x2048, ratio
0.5-2.0, cat_max_ratio crop, flip, photometric distortion, normalise, pad) on the
config's data_path, batch_size from the config, after two warm-up batches. Compare with
the training step rate of the model at the same crop size: the loader should be at
least 2x faster so that the model, not the loader, is the bottleneck.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.data import create_dataset  # noqa: E402
from src.utils.config import ConfigError, load_config  # noqa: E402

WARMUP_BATCHES = 2


def _forever(data):
    iterator = data.create_tuple_iterator(output_numpy=True, num_epochs=-1)
    while True:  # one pass of the iterator is one epoch; the demo set is small
        yield from iterator


def images_per_second(cfg, batches):
    it = _forever(create_dataset(cfg, "train"))
    for _ in range(WARMUP_BATCHES):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    return batches * cfg.batch_size / elapsed


def main(argv=None):
    p = argparse.ArgumentParser(description="Benchmark the training data pipeline")
    p.add_argument("config")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    args, overrides = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    recipe = ["--crop_size=[512,1024]", "--base_size=[1024,2048]"]
    try:
        cfg = load_config(args.config, recipe + overrides)  # user overrides win
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    print(f"data {cfg.data_path} ({cfg.dataset.name}), crop {cfg.crop_size}, base {cfg.base_size}, "
          f"batch {cfg.batch_size}, {args.batches} batches")
    for workers in args.workers:
        cfg.dataset_num_parallel_workers = workers
        rate = images_per_second(cfg, args.batches)
        print(f"workers={workers}: {rate:.2f} images/s ({1000 / rate:.0f} ms/image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
