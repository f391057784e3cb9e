"""Write PNGs of augmented training samples, to see what the network sees.

    python tools/browse_dataset.py CONFIG [--out DIR] [--num N] [--split train] [--key=value ...]

Segmentation: each PNG is [augmented image | the same with the label overlaid in
the dataset's colours]; ignored pixels (``ignore_label``) stay uncoloured and
padding shows the mean colour (0 after normalisation). Classification: each PNG is one augmented (mixed) image, named by
its top soft-target class.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.data import DataError, create_dataset, dataset_spec, palette, train_source  # noqa: E402
from src.utils.config import ConfigError, load_config  # noqa: E402

OVERLAY_ALPHA = 0.5


def denormalize(image_chw, mean, std):
    image = image_chw.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def overlay(image, label, palette, ignore_label):
    colours = np.zeros((256, 3), np.float32)
    colours[: len(palette)] = np.asarray(palette, np.float32)
    known = (label != ignore_label) & (label < len(palette))
    out = image.astype(np.float32)
    out[known] = (1 - OVERLAY_ALPHA) * out[known] + OVERLAY_ALPHA * colours[label[known]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def browse_segmentation(cfg, split, out_dir, num):
    source = train_source(cfg, split)
    samples = source.samples
    colours = palette(cfg)
    order = np.random.default_rng(cfg.seed).permutation(len(samples))
    written = []
    for k in range(num):
        index = int(order[k % len(samples)])
        key = (k // len(samples)) * len(samples) + index  # later rounds: new augmentation
        image, label = source[key]
        rgb = denormalize(image, cfg.img_norm_mean, cfg.img_norm_std)
        gap = np.full((rgb.shape[0], 8, 3), 255, np.uint8)
        panel = np.concatenate([rgb, gap, overlay(rgb, label, colours, cfg.ignore_label)], 1)
        stem = os.path.basename(samples[index][0]).rsplit(".", 1)[0]
        path = os.path.join(out_dir, f"{k:03d}_{stem}.png")
        Image.fromarray(panel).save(path)
        written.append(path)
    return written


def browse_classification(cfg, split, out_dir, num):
    data = create_dataset(cfg, split)
    names = sorted(os.listdir(os.path.join(cfg.data_path, dataset_spec(cfg).train_split)))
    written = []
    for images, targets in data.create_tuple_iterator(output_numpy=True, num_epochs=1):
        for image, target in zip(images, targets):
            cls = int(np.argmax(target)) if target.ndim else int(target)
            share = f"{float(target[cls]):.2f}" if target.ndim else "1"
            path = os.path.join(out_dir, f"{len(written):03d}_{names[cls]}_{share}.png")
            Image.fromarray(denormalize(image, cfg.img_norm_mean, cfg.img_norm_std)).save(path)
            written.append(path)
            if len(written) == num:
                return written
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description="Save augmented training samples as PNGs")
    p.add_argument("config")
    p.add_argument("--out", default="./output/browse/", help="output folder")
    p.add_argument("--num", type=int, default=8, help="number of samples")
    p.add_argument("--split", default=None, help="default: dataset.train_split")
    args, overrides = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    if args.num < 1:
        p.error(f"--num must be >= 1, got {args.num}")
    os.makedirs(args.out, exist_ok=True)
    try:
        spec = dataset_spec(cfg)
        split = spec.split_name(args.split or "train")
        if spec.task == "classification":
            written = browse_classification(cfg, split, args.out, args.num)
        else:
            written = browse_segmentation(cfg, split, args.out, args.num)
    except DataError as err:
        raise SystemExit(f"data error: {err}") from None
    print(f"wrote {len(written)} PNGs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
