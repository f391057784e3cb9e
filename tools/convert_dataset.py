"""Convert Cityscapes polygon annotations to train-id label images and write split lists.

    python tools/convert_dataset.py data/cityscapes --nproc 8 [--out_dir DIR]

For every ``gtFine/<split>/<city>/*_gtFine_polygons.json`` this writes
``*_gtFine_labelTrainIds.png`` next to it with cityscapesscripts'
``json2labelImg(json, png, 'trainIds')`` (the function its ``createTrainIdLabelImgs``
uses, so the pixels are the same), in ``--nproc`` processes. A label image newer than its
JSON is skipped, so re-running after an interruption only does what is left (files are
written under a temporary name and renamed, so a killed run leaves no half-written PNG).

Then, for each split, ``<out_dir>/<split>.txt`` lists one sample per line: the image path
and the label path, relative to the dataset root, separated by a space::

    leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png

The training pipeline scans the directories itself (``cfg.dataset``); the lists are for
other tools and for checking what was converted.

A JSON that cannot be converted (malformed, unknown label, no matching image) is reported
by path; the others are still converted and the exit status is 1, with all failures listed.
"""
import argparse
import contextlib
import glob
import io
import multiprocessing
import os
import sys

from tqdm import tqdm

POLYGON_SUFFIX = "_gtFine_polygons.json"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"


def label_path_for(json_path):
    return json_path[: -len(POLYGON_SUFFIX)] + LABEL_SUFFIX


def image_path_for(root, json_path):
    """gtFine/<split>/<city>/<stem>_gtFine_polygons.json -> leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png"""
    rel = os.path.relpath(json_path, os.path.join(root, "gtFine"))
    return os.path.join(root, "leftImg8bit", rel[: -len(POLYGON_SUFFIX)] + IMAGE_SUFFIX)


def is_up_to_date(json_path):
    out = label_path_for(json_path)
    return os.path.isfile(out) and os.path.getmtime(out) >= os.path.getmtime(json_path)


def convert_one(json_path):
    """Convert one annotation; returns (json_path, None) or (json_path, error message).

    cityscapesscripts reports an unknown label with ``sys.exit``, so SystemExit is caught
    too: one bad file must not stop the others.
    """
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    out = label_path_for(json_path)
    tmp = out[: -len(".png")] + ".partial.png"
    said = io.StringIO()  # cityscapesscripts prints its errors (and a usage text) to stdout
    try:
        with contextlib.redirect_stdout(said):
            json2labelImg(json_path, tmp, "trainIds")
        os.replace(tmp, out)
        return json_path, None
    except (Exception, SystemExit) as err:  # noqa: BLE001 - reported per file below
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, SystemExit):
            first = next((ln for ln in said.getvalue().splitlines() if ln.strip()), "")
            return json_path, f"cityscapesscripts refused it: {first or 'exit ' + str(err.code)}"
        return json_path, f"{type(err).__name__}: {err}"


def find_annotations(root):
    if not os.path.isdir(root):
        raise SystemExit(f"error: dataset root not found: {root}")
    gt_root = os.path.join(root, "gtFine")
    if not os.path.isdir(gt_root):
        raise SystemExit(f"error: {gt_root} not found (expected the Cityscapes layout "
                         f"<root>/gtFine/<split>/<city>/*{POLYGON_SUFFIX})")
    files = sorted(glob.glob(os.path.join(gt_root, "*", "*", "*" + POLYGON_SUFFIX)))
    if not files:
        raise SystemExit(f"error: no *{POLYGON_SUFFIX} files under {gt_root}/<split>/<city>/")
    return files


def convert_all(files, nproc):
    """Convert the files that are not up to date; returns {json_path: error} for failures."""
    todo = [f for f in files if not is_up_to_date(f)]
    skipped = len(files) - len(todo)
    print(f"{len(files)} annotation files: {len(todo)} to convert, {skipped} up to date")
    failures = {}
    if not todo:
        return failures
    bar = tqdm(total=len(todo), desc="polygons -> labelTrainIds", unit="file")
    if nproc <= 1:
        results = map(convert_one, todo)
        for path, err in results:
            if err:
                failures[path] = err
            bar.update()
    else:
        with multiprocessing.Pool(nproc) as pool:
            for path, err in pool.imap_unordered(convert_one, todo, chunksize=4):
                if err:
                    failures[path] = err
                bar.update()
    bar.close()
    return failures


def write_split_lists(root, files, failures, out_dir):
    """<out_dir>/<split>.txt for each split; returns {json_path: error} for missing images."""
    missing = {}
    by_split = {}
    for json_path in files:
        if json_path in failures:
            continue
        split = os.path.relpath(json_path, os.path.join(root, "gtFine")).split(os.sep)[0]
        image = image_path_for(root, json_path)
        if not os.path.isfile(image):
            missing[json_path] = f"no image {image} for this annotation"
            continue
        line = f"{os.path.relpath(image, root)} {os.path.relpath(label_path_for(json_path), root)}"
        by_split.setdefault(split, []).append(line.replace(os.sep, "/"))
    os.makedirs(out_dir, exist_ok=True)
    for split, lines in sorted(by_split.items()):
        path = os.path.join(out_dir, f"{split}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {path} ({len(lines)} samples)")
    return missing


def parse_args(argv):
    p = argparse.ArgumentParser(description="Convert Cityscapes *_gtFine_polygons.json to "
                                            "*_gtFine_labelTrainIds.png and write train.txt/val.txt")
    p.add_argument("cityscapes_path", help="dataset root holding leftImg8bit/ and gtFine/")
    p.add_argument("--nproc", type=int, default=1, help="number of worker processes")
    p.add_argument("-o", "--out_dir", default=None, help="where the split lists go (default: the root)")
    args = p.parse_args(argv)
    if args.nproc < 1:
        p.error(f"--nproc must be >= 1, got {args.nproc}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = args.cityscapes_path
    files = find_annotations(root)
    failures = convert_all(files, args.nproc)
    failures.update(write_split_lists(root, files, failures, args.out_dir or root))
    if failures:
        print(f"\n{len(failures)} of {len(files)} annotation files failed:", file=sys.stderr)
        for path in sorted(failures):
            print(f"  {path}: {failures[path]}", file=sys.stderr)
        return 1
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
