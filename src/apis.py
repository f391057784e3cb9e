"""The Python API, with mmsegmentation's names:

    from src.apis import init_model, inference_model
    model = init_model("config/segformer.b0.1024x1024.city.yaml", "segformer_b0_city.ckpt")
    label_map = inference_model(model, "frankfurt_000000_000294_leftImg8bit.png")
    label_map, probs = inference_model(model, rgb_uint8_array, return_probs=True)
    label_maps = inference_model(model, [path, array, ...])

A segmentation result is the [H, W] class map at the image's own size (trainIds, uint8
up to 256 classes: the values infer.py writes to ``*_gray.png``); ``return_probs=True``
adds the [C, H, W] float32 class probabilities. The config's test settings apply
(``eval_mode`` whole/slide, ``eval_scales``, ``eval_flip``): the predictor is the one
eval.py and infer.py use (``src/engine/inference.py``). A ViT result is (top-k class
indices, their softmax probabilities), plus the [class_num] probabilities with
``return_probs=True``.

``checkpoint_path`` is a ``.ckpt`` or an exported ``.mindir`` / ``.onnx`` file (see
``src/engine/networks.py``); None builds the model with its initial (untrained) weights,
as mmseg does.
"""
import os

import numpy as np

from src.engine.inference import ClsInferencer, SegInferencer
from src.engine.networks import as_network, load_network
from src.models import is_segmentation
from src.utils.config import load_config
from src.utils.errors import InputError


class InferenceModel:
    """What ``init_model`` returns: the config, the network and its predictor."""

    def __init__(self, cfg, network):
        self.cfg = cfg
        self.network = as_network(network)
        self.is_segmentation = is_segmentation(cfg)
        self.predictor = (SegInferencer if self.is_segmentation else ClsInferencer)(self.network, cfg)

    def __repr__(self):
        return (f"InferenceModel(model={self.cfg.model}, backbone={self.cfg.backbone}, "
                f"class_num={self.cfg.class_num}, weights={self.network.source})")


def init_model(config_path, checkpoint_path=None, device_target=None, log=print, **overrides):
    """Load ``config_path`` (with ``overrides``: any config key, typed, e.g.
    ``eval_mode="slide"``, ``dataset={"val_split": "test"}``), set up the device
    (``device_target``: Ascend | GPU | CPU; default the config's) and load the weights.

    The device is MindSpore's for the whole process: a later call may not choose another."""
    from src.utils.device import setup_runtime

    values = dict(overrides)
    if device_target is not None:
        values["device_target"] = device_target
    cfg = load_config(config_path, values=values)
    cfg.run_distribute = False  # one process: nothing to distribute
    setup_runtime(cfg)
    return build_inference_model(cfg, checkpoint_path, log)


def build_inference_model(cfg, checkpoint_path, log=print):
    """``InferenceModel`` of a resolved config whose device is already set up (the entry
    points); ``checkpoint_path`` None: the model's initial weights."""
    if checkpoint_path is None:
        from src.models import build_model
        log(f"no checkpoint given: {cfg.model} {cfg.backbone} with its initial (untrained) weights")
        return InferenceModel(cfg, build_model(cfg))
    return InferenceModel(cfg, load_network(cfg, os.fspath(checkpoint_path), log))


def _read(item, index, model):
    """One input as an RGB uint8 [H, W, 3] array."""
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if model.is_segmentation:
            from src.data.transforms import read_image
            return read_image(path)
        return _decode(path)
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise InputError(f"imgs[{index}]: expected an RGB uint8 array [H, W, 3], got "
                             f"{item.dtype} {list(item.shape)}")
        return item
    raise TypeError(f"imgs[{index}]: expected an image path or an RGB uint8 numpy array, "
                    f"got {type(item).__name__}")


def _decode(path):
    """An image file decoded as the classification eval dataset decodes it (vision.Decode)."""
    import mindspore.dataset.vision as vision
    from src.data.imagenet import check_encoded
    from src.data.transforms import DataError
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    check_encoded(data, path)
    return np.asarray(vision.Decode()(data))


def _batches(images, batch_size):
    """Runs of consecutive images of one size, at most ``batch_size`` long."""
    batch = []
    for image in images:
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(image)
    if batch:
        yield batch


def inference_model(model, imgs, return_probs=False, batch_size=1, topk=5):
    """Predict ``imgs``: a path, an RGB uint8 [H, W, 3] array, or a list of them (a list
    gives a list). ``batch_size`` consecutive images of one size run through the network
    together. Results: see the module docstring."""
    if not isinstance(model, InferenceModel):
        raise TypeError(f"model: expected the InferenceModel returned by init_model, got "
                        f"{type(model).__name__}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    single = isinstance(imgs, (str, os.PathLike, np.ndarray))
    items = [imgs] if single else list(imgs)
    if not items:
        raise InputError("imgs is empty: give a path, an RGB uint8 array, or a list of them")
    images = [_read(item, i, model) for i, item in enumerate(items)]
    predictor = model.predictor
    results = []
    with model.network.inference_mode():
        for batch in _batches(images, int(batch_size)):
            if model.is_segmentation:
                scores = predictor.batch_scores(batch)
                labels = predictor.labels(scores)
                if return_probs:
                    probs = predictor.probabilities(scores)
                    results.extend(zip(labels, probs))
                else:
                    results.extend(labels)
            else:
                classes, scores, probs = predictor.topk(batch, topk)
                results.extend(zip(classes, scores, probs) if return_probs
                               else zip(classes, scores))
    return results[0] if single else results
