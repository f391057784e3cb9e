"""Benchmark submission files (``infer.py --format_only=True``, mmseg's flag).

Every prediction becomes the file the dataset's evaluation server reads, written flat into
``infer_output_path``, and at the end everything is zipped into
``<infer_output_path>/<dataset>_submission.zip``, ready to upload. The folder itself is what
the dataset's own evaluator takes (Cityscapes: point cityscapesscripts'
``evalPixelLevelSemanticLabeling`` at it with CITYSCAPES_RESULTS).

A format is a dataset module's business (its ids, its naming rule), registered here by
``dataset.name``: an object with

- ``check(cfg, image_paths)``: raise a DataError naming what does not fit, before any work;
- ``lookup()``: what ``file`` needs once (e.g. a trainId -> labelId table);
- ``file(image_path, pred, lookup)`` -> (file name, uint8 [H, W] pixels) for a trainId map.

Cityscapes (``src/data/cityscapes.py``): labelIds PNGs named ``<city>_<seq>_<frame>_*.png``.
ADE20K (``src/data/ade20k.py``): PNGs named as the images, values 1..150 (class index + 1).
"""
import os
import zipfile
from types import SimpleNamespace

from PIL import Image

from src.data.transforms import DataError


def _cityscapes():
    from src.data import cityscapes
    return SimpleNamespace(check=cityscapes.check_submission, lookup=cityscapes.train_id_to_label_id,
                           file=cityscapes.submission_file)


def _ade20k():
    from src.data import ade20k
    return SimpleNamespace(check=ade20k.check_submission, lookup=ade20k.submission_lookup,
                           file=ade20k.submission_file)


# dataset.name -> the module's format (imported on use: cityscapesscripts is needed only here)
SUBMISSION_FORMATS = {"cityscapes": _cityscapes, "ade20k": _ade20k}


def submission_format(cfg):
    name = str(cfg.dataset.name)
    if name not in SUBMISSION_FORMATS:
        raise DataError(f"format_only: no benchmark submission format for dataset.name='{name}' "
                        f"(formats: {sorted(SUBMISSION_FORMATS)})")
    return SUBMISSION_FORMATS[name]()


class SubmissionWriter:
    """``writer.add(image_path, pred)`` per image, then ``writer.finish()`` -> the zip path."""

    def __init__(self, cfg, output_dir, image_paths):
        self.format = submission_format(cfg)
        self.format.check(cfg, image_paths)
        self.name = str(cfg.dataset.name)
        self.output_dir = output_dir
        self.lookup = self.format.lookup()
        self.written = {}  # file name -> the image it came from

    def add(self, image_path, pred):
        name, pixels = self.format.file(image_path, pred, self.lookup)
        if name in self.written:
            # the server matches predictions by file name: two with one name cannot both count
            raise DataError(f"format_only: {image_path} and {self.written[name]} both give the "
                            f"submission file {name}")
        self.written[name] = image_path
        Image.fromarray(pixels).save(os.path.join(self.output_dir, name))

    def finish(self):
        path = os.path.join(self.output_dir, f"{self.name}_submission.zip")
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(self.written):
                archive.write(os.path.join(self.output_dir, name), arcname=name)
        return path
