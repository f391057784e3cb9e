"""Scan a dataset and list every problem before training (like mmcls' verify_dataset).

    python tools/verify_dataset.py config/segformer.b0.512x1024.city.yaml [--data_path DIR]
        [--split train|val|all|<folder>] [--nproc N] [--key=value ...]

Lists the split with the code training uses (the dataset module's ``scan``), reports every
layout problem (root and split dirs, image without label and vice versa, empty split) and
then checks every sample it found, so one run reports everything: image and label decode
completely (corrupt/truncated files), label size equals image size, label values allowed
by the dataset's label rule (e.g. ADE20K: 0..150 before reduce_zero_label), folders
reached twice through symlinks (a loop). Label files without a labelled pixel (all
ignore_label) are listed as a note; when no label of the split has one, that is a problem
(training would run on a loss of 0). For ImageNet-style configs: class folders and every
image decodes. Exit status 1 when anything is wrong.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.data import DataError, dataset_spec, verify_report  # noqa: E402
from src.utils.config import ConfigError, load_config  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description="List every problem of a dataset split")
    p.add_argument("config", help="YAML config (data_path, dataset.*, class_num, ignore_label)")
    p.add_argument("--split", default="all", help="train, val, or all (default)")
    p.add_argument("--nproc", type=int, default=1, help="worker processes for decoding")
    args, overrides = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, overrides)  # --data_path=... and any other key
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    try:
        spec = dataset_spec(cfg)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    splits = ["train", "val"] if args.split == "all" else [args.split]
    failed = 0
    for split in (spec.split_name(s) for s in splits):
        problems, notes = verify_report(cfg, split, nproc=args.nproc)
        failed += len(problems)
        status = "OK" if not problems else f"{len(problems)} problem(s)"
        print(f"[{split}] {cfg.data_path} ({spec.name}): {status}")
        for problem in problems:
            print("  - " + problem.replace("\n", "\n    "))
        for note in notes:
            print("  note: " + note.replace("\n", "\n    "))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
