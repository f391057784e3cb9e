"""The dataset registry: ``dataset.name`` -> the module ``src/data/<name>.py``.

The valid names are ``DATASET_NAMES`` in ``src/utils/defaults.py`` (so ``load_config``
rejects an unknown name before anything runs). A dataset module stands alone: it imports
the shared code (``segmentation``, ``listing``, ``sampling``, ``transforms``), never
another dataset module nor this registry, and defines

- ``TASK``: "segmentation" or "classification";
- ``CLASS_NAMES``, ``PALETTE``: tuples (empty when the config or the files supply them);
- ``LAYOUT``: its values for the ``dataset.*`` keys a config leaves null (``img_dir``,
  ``ann_dir``, ``img_suffix``, ``seg_map_suffix``, ``train_split``, ``val_split``,
  ``reduce_zero_label``); a key missing here must be set in the config;
- ``scan(spec, split)`` -> ``Listing``: its file listing and layout rules;
- ``check_sample(spec, sample)``: its per-sample rules (raises DataError naming the file);
  returns the sample's number of labelled pixels (segmentation) or None;
- ``create_dataset(spec, cfg, split, samples, rank_id, group_size)``: the batched
  ``mindspore.dataset``.

Everything else reaches a dataset through the functions here, which resolve the config
into a ``DatasetSpec`` first (config values win over the module's; every inconsistency is
a DataError starting "config:").
"""
import importlib
from dataclasses import dataclass
from functools import partial

import numpy as np

from src.data.listing import MAX_LISTED, format_items
from src.data.segmentation import LabelRule, SegEvalSource, SegTrainSource
from src.data.transforms import DataError
from src.data.verify import raise_on_problems, run_checks
from src.utils.defaults import DATASET_NAMES

LAYOUT_KEYS = {  # key -> what it is, for the error when a dataset needs it from the config
    "img_dir": "the image folder under data_path, e.g. images",
    "ann_dir": "the label folder under data_path, e.g. annotations",
    "img_suffix": "how image file names end, e.g. .jpg",
    "seg_map_suffix": "how label file names end, e.g. .png",
    "train_split": "the training split's folder name, e.g. train",
    "val_split": "the validation split's folder name, e.g. val",
}
MODULE_API = ("TASK", "CLASS_NAMES", "PALETTE", "LAYOUT", "scan", "check_sample", "create_dataset")


@dataclass(frozen=True)
class DatasetSpec:
    """A config's dataset, every value resolved (see the module docstring)."""
    name: str
    task: str
    root: str
    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_map_suffix: str
    train_split: str
    val_split: str
    class_num: int
    ignore_label: int
    class_names: tuple
    palette: tuple
    reduce_zero_label: bool
    label_map: tuple  # ((file value, value), ...)

    def split_name(self, split):
        """"train" / "val" -> this dataset's split folder names; other names unchanged."""
        return {"train": self.train_split, "val": self.val_split}.get(split, split)


def dataset_module(name):
    if name not in DATASET_NAMES:
        raise DataError(f"config: dataset.name={name!r} is not one of {', '.join(DATASET_NAMES)}")
    return importlib.import_module(f"src.data.{name}")


def _model_task(cfg):
    return "classification" if cfg.model == "vit" else "segmentation"


def _names_of_task(task):
    return [n for n in DATASET_NAMES if dataset_module(n).TASK == task]


def _label_map(value):
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise DataError(f"config: dataset.label_map must be a mapping {{file value: value}}, got {value!r}")
    for old, new in value.items():
        for v in (old, new):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
                raise DataError(f"config: dataset.label_map entry {old!r}: {new!r} must map an "
                                f"integer in [0, 255] to an integer in [0, 255]")
    return tuple(sorted(value.items()))


def _palette(value, where):
    colours = tuple(tuple(c) if isinstance(c, (list, tuple)) else c for c in value)
    for c in colours:
        if (not isinstance(c, tuple) or len(c) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)):
            raise DataError(f"config: {where} colour {list(c) if isinstance(c, tuple) else c!r} is "
                            f"not an [R, G, B] triple of integers in [0, 255]")
    return colours


def dataset_spec(cfg):
    """The ``DatasetSpec`` of ``cfg`` (module values under the config's non-null ones)."""
    d = cfg.dataset
    module = dataset_module(d.name)
    want = _model_task(cfg)
    if module.TASK != want:
        raise DataError(f"config: model={cfg.model!r} needs a {want} dataset "
                        f"({', '.join(_names_of_task(want))}); dataset.name={d.name!r} is a "
                        f"{module.TASK} dataset")
    layout = {}
    for key, what in LAYOUT_KEYS.items():
        value = d.get(key)
        if value is None:
            value = module.LAYOUT.get(key)
        if value is None:
            raise DataError(f"config: dataset '{d.name}' needs dataset.{key} ({what})")
        if not isinstance(value, str):
            raise DataError(f"config: dataset.{key} must be a string, got {value!r}")
        layout[key] = value
    reduce_zero_label = d.get("reduce_zero_label")
    if reduce_zero_label is None:
        reduce_zero_label = module.LAYOUT.get("reduce_zero_label", False)
    if not isinstance(reduce_zero_label, bool):
        raise DataError(f"config: dataset.reduce_zero_label must be true or false, got {reduce_zero_label!r}")
    own_names = d.get("class_names") is None
    names = tuple(module.CLASS_NAMES if own_names else d.class_names)
    if not all(isinstance(n, str) for n in names):
        raise DataError(f"config: dataset.class_names must be a list of strings, got {list(names)!r}")
    palette = _palette(module.PALETTE if d.get("palette") is None else d.palette, "dataset.palette")
    class_num, ignore_label = int(cfg.class_num), int(cfg.ignore_label)
    if names and len(names) != class_num:
        source = f"the '{d.name}' classes" if own_names else "from the config"
        raise DataError(f"config: class_num={class_num} but dataset.class_names has {len(names)} names "
                        f"({source}); set both for other classes")
    if palette and len(palette) < len(names):
        raise DataError(f"config: dataset.palette has {len(palette)} colours for {len(names)} classes")
    return DatasetSpec(name=d.name, task=module.TASK, root=cfg.data_path, class_num=class_num,
                       ignore_label=ignore_label, class_names=names, palette=palette,
                       reduce_zero_label=reduce_zero_label, label_map=_label_map(d.get("label_map")),
                       **layout)


def _resolve(cfg):
    spec = dataset_spec(cfg)
    return spec, dataset_module(spec.name)


# ------------------------------------------------------------------------ the API --

def list_samples(cfg, split):
    """The samples of ``split`` ("train", "val" or a folder name) as training reads them:
    (image, label) paths, or (image, class index); any layout problem is a DataError."""
    spec, module = _resolve(cfg)
    return module.scan(spec, spec.split_name(split)).samples_or_raise()


def verify_report(cfg, split, nproc=1):
    """(problems, notes) of ``split``, as messages: the layout problems of the listing, then
    each listed sample's own (corrupt file, size, label values). Label files without a
    labelled pixel are a note (a crop of them trains on nothing), and a problem when no
    label of the split has any labelled pixel (training would run on a loss of 0)."""
    try:
        spec, module = _resolve(cfg)
    except DataError as err:
        return [str(err)], []
    listing = module.scan(spec, spec.split_name(split))
    outcomes = run_checks(partial(module.check_sample, spec), listing.samples, nproc)
    problems = listing.messages() + [message for message, _ in outcomes if message]
    notes = []
    unlabelled = [sample[1] for sample, (_, labelled) in zip(listing.samples, outcomes) if labelled == 0]
    if unlabelled:
        what = (f"{len(unlabelled)} of {len(listing.samples)} label file(s) of split "
                f"'{listing.split}' have no labelled pixel (all ignore_label {spec.ignore_label} "
                f"after the label rule)")
        if any(labelled for _, labelled in outcomes):
            notes.append(f"{what}:" + format_items(unlabelled, MAX_LISTED))
        else:
            problems.append(f"no label file of split '{listing.split}' has a labelled pixel: "
                            f"training would see a loss of exactly 0 ({what}; check the label "
                            f"files, dataset.label_map, reduce_zero_label and ignore_label):"
                            + format_items(unlabelled, MAX_LISTED))
    return problems, notes


def verify_split(cfg, split, nproc=1):
    """Every problem of ``split`` as messages (empty: all good; see ``verify_report``)."""
    return verify_report(cfg, split, nproc)[0]


def create_dataset(cfg, split, rank_id=0, group_size=1):
    """Batched ``mindspore.dataset`` of ``split`` ("train", "val" or a folder name) for rank
    ``rank_id`` of ``group_size``; the train split gives augmented training batches."""
    spec, module = _resolve(cfg)
    split = spec.split_name(split)
    if cfg.check_data:
        raise_on_problems(verify_split(cfg, split))
    samples = module.scan(spec, split).samples_or_raise()
    return module.create_dataset(spec, cfg, split, samples, rank_id, group_size)


def _segmentation_spec(cfg):
    spec = dataset_spec(cfg)
    if spec.task != "segmentation":
        raise DataError(f"config: dataset '{spec.name}' is not a segmentation dataset")
    return spec


def train_source(cfg, split="train"):
    """``SegTrainSource`` of a segmentation split (what the training loader reads)."""
    spec = _segmentation_spec(cfg)
    samples = list_samples(cfg, split)
    return SegTrainSource(samples, cfg, cfg.seed, LabelRule.from_spec(spec))


def eval_source(cfg, split="val"):
    """``SegEvalSource`` of a segmentation split (what evaluation reads)."""
    spec = _segmentation_spec(cfg)
    return SegEvalSource(list_samples(cfg, split), cfg, LabelRule.from_spec(spec))


def class_names(cfg):
    """One name per class: the dataset's, else class_0 .. class_{N-1}."""
    names = dataset_spec(cfg).class_names
    return list(names) if names else [f"class_{i}" for i in range(int(cfg.class_num))]


def palette(cfg):
    """One RGB colour per class: the dataset's, extended by fixed pseudo-random colours
    (the same on every run) for classes without one."""
    colours = [list(c) for c in dataset_spec(cfg).palette]
    missing = int(cfg.class_num) - len(colours)
    if missing > 0:
        colours += np.random.default_rng(0).integers(0, 256, (missing, 3)).tolist()
    return colours
