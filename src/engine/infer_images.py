"""Segment every image under a path and write PNGs (infer.py's engine).

Inputs (``data_path``): one image file; a root of the config's dataset (it holds
``<img_dir>/<val_split>``, e.g. ``leftImg8bit/val``, ``images/validation``): that split; or any
folder: every image in it and its subfolders (regular files, by extension, sorted; other
files are counted and skipped; an output folder inside it is never read back as input, and
the input folder itself as the output folder is refused; a folder reached twice through
symlinks, e.g. a loop, is an error naming the link).

Outputs, under ``infer_output_path`` at the input's relative path (``<stem>`` = the file
name without extension), each switched by its config key:

- ``<stem>_gray.png``    ``infer_save_gray_img``: class indices (trainIds) at the original
  resolution, a palette PNG (mode P) so viewers show the class colours;
- ``<stem>_color.png``   ``infer_save_color_img``: the class colours (the dataset's palette);
- ``<stem>_overlap.png`` ``infer_save_overlap_img``: 50/50 blend of image and colours;
- the original file     ``infer_copy_original_img``: copied unchanged.

With ``format_only`` only the benchmark's submission files are written instead (flat,
named as the evaluation server expects, plus a zip; ``src/engine/submission.py``).

An image that cannot be read is reported and skipped; the others are still processed and
``run_inference`` returns the failures so infer.py exits non-zero.
"""
import os
import shutil
import tempfile
import time

from PIL import Image

from src.data import dataset_spec, palette
from src.data.listing import repeated_folders_message, walk_files
from src.data.transforms import DataError, read_image
from src.engine.submission import SubmissionWriter, submission_format
from src.utils.errors import UserError
from src.utils.palette import color_image, gray_image, overlap_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class InferInputError(UserError, ValueError):
    """The input path or the output folder cannot be used; the message says why."""


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def list_images(data_path, cfg, output_dir):
    """(root, [image paths], [skipped non-image files]) for ``data_path`` (see the module)."""
    if not data_path or not os.path.exists(data_path):
        raise InferInputError(f"data_path not found: {data_path!r}")
    if not os.path.isfile(data_path) and not os.path.isdir(data_path):  # a FIFO would block
        raise InferInputError(f"data_path {data_path} is neither a regular file nor a folder")
    if os.path.isfile(data_path):
        if not data_path.lower().endswith(IMAGE_EXTENSIONS):
            raise InferInputError(f"data_path {data_path} is not an image file (expected one of "
                                  f"{', '.join(IMAGE_EXTENSIONS)})")
        return os.path.dirname(data_path) or ".", [data_path], []
    root = data_path
    spec = dataset_spec(cfg)
    split_dir = os.path.join(data_path, spec.img_dir, spec.val_split)
    if spec.img_dir and os.path.isdir(split_dir):
        root = split_dir
    if os.path.realpath(root) == os.path.realpath(output_dir):
        raise InferInputError(f"infer_output_path {output_dir} is the input folder: a later run "
                              f"would read the written PNGs as inputs; give another "
                              f"infer_output_path (a subfolder of the input is fine)")
    files, repeated = walk_files(root, skip_dir=lambda path: _inside(path, output_dir))
    if repeated:
        raise InferInputError(f"{repeated_folders_message(root, repeated)} {'; '.join(repeated)}")
    images, others = [], []
    for path in files:
        is_image = path.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path)
        (images if is_image else others).append(path)  # FIFOs, sockets: never opened
    if not images:
        found = f"; it holds {len(others)} other file(s), e.g. {others[0]}" if others else " (it is empty)"
        raise InferInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}{found}")
    return root, images, others


def check_writable(output_dir):
    """Create ``output_dir`` and prove a file can be written there, before any work."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write_test_"):
            pass
    except OSError as err:
        raise InferInputError(f"infer_output_path {output_dir!r} is not writable: "
                              f"{err.strerror or err}") from None


def save_outputs(pred, image, src_path, out_stem, cfg, colours):
    """Write the enabled outputs of one image; ``out_stem`` = output path without suffix."""
    os.makedirs(os.path.dirname(out_stem), exist_ok=True)
    if cfg.infer_save_gray_img:
        gray_image(pred, colours).save(out_stem + "_gray.png")
    if cfg.infer_save_color_img or cfg.infer_save_overlap_img:
        color = color_image(pred, colours)
        if cfg.infer_save_color_img:
            Image.fromarray(color).save(out_stem + "_color.png")
        if cfg.infer_save_overlap_img:
            Image.fromarray(overlap_image(image, color)).save(out_stem + "_overlap.png")
    if cfg.infer_copy_original_img:
        target = os.path.join(os.path.dirname(out_stem), os.path.basename(src_path))
        if os.path.realpath(target) != os.path.realpath(src_path):
            shutil.copyfile(src_path, target)


def plan_inference(cfg):
    """Check the input and the output folder before any model is loaded.
    Returns (input root, image paths, non-image paths, absolute output folder)."""
    output_dir = os.path.abspath(cfg.infer_output_path)
    root, images, others = list_images(cfg.data_path, cfg, output_dir)
    if cfg.format_only:
        submission_format(cfg).check(cfg, images)
    check_writable(output_dir)
    return root, images, others, output_dir


def run_inference(predict, cfg, plan=None, log=print):
    """Segment every image of ``cfg.data_path`` into ``cfg.infer_output_path``;
    ``predict(image)`` gives the class map of an RGB uint8 image (infer.py: the Python API's
    ``inference_model``).

    Returns (number written, [(path, reason naming the path) of unreadable images])."""
    root, images, others, output_dir = plan or plan_inference(cfg)
    if os.path.normpath(root) != os.path.normpath(cfg.data_path) and os.path.isdir(cfg.data_path):
        log(f"{cfg.data_path} is a dataset root: inferring on its split folder {root}")
    if others:
        log(f"skipping {len(others)} file(s) that are not images, e.g. {others[0]}")
    log(f"get image size:{len(images)}, infer result will save to {output_dir}")
    colours = palette(cfg)
    writer = SubmissionWriter(cfg, output_dir, images) if cfg.format_only else None
    interval = max(1, int(cfg.infer_log_interval))
    failures, written = [], 0
    start = last = time.time()
    last_count = 0
    for i, path in enumerate(images, 1):
        try:
            image = read_image(path)
        except DataError as err:
            failures.append((path, str(err)))
            log(f"skipped (not a readable image): {err}")
        else:
            pred = predict(image)
            if writer is not None:
                writer.add(path, pred)
            else:
                rel = os.path.splitext(os.path.relpath(path, root))[0]
                save_outputs(pred, image, path, os.path.join(output_dir, rel), cfg, colours)
            written += 1
        if i % interval == 0 or i == len(images):
            now = time.time()
            log(f"infer {i}/{len(images)} done, step cost:{(now - last) * 1000 / (i - last_count):.0f}ms")
            last, last_count = now, i
    if writer is not None:
        log(f"submission ({cfg.dataset.name}): {written} files in {output_dir}, zipped to "
            f"{writer.finish()}")
    log(f"all infer process done, cost:{time.time() - start:.0f}s")
    return written, failures


def report_failures(failures, log=print):
    """Log the images ``run_inference`` could not read; True if there were any (the entry
    points then exit with status 1)."""
    if failures:
        log(f"{len(failures)} image(s) could not be read and were skipped:")
        for _, reason in failures:
            log(f"  {reason}")
    return bool(failures)
