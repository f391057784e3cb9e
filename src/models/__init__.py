"""Model registry: ``build_model(cfg)`` turns a config into an ``nn.Cell``.

Segmentation models return logits ``[N, class_num, h, w]`` at their native output
resolution (SegFormer: 1/4 of the input; Segmenter: the input size). Consumers (loss,
inference) resize bilinearly (align_corners=False) to the size they need.
The ViT classifier returns ``[N, class_num]``.

Every model is built on the kernel backend the config selects (``kernel_backend``, see
``src/models/backends``): the one place where that choice is made.
"""
from src.models.backends import get_backend
from src.utils.config import ConfigError


def _build_segformer(cfg, backend):
    from src.models.segformer import build_segformer
    return build_segformer(cfg, backend)


def _build_segmenter(cfg, backend):
    from src.models.segmenter import build_segmenter
    return build_segmenter(cfg, backend)


def _build_vit(cfg, backend):
    from src.models.vit import build_vit
    return build_vit(cfg, backend)


MODELS = {
    "segformer": _build_segformer,
    "segmenter": _build_segmenter,
    "vit": _build_vit,
}

SEGMENTATION_MODELS = ("segformer", "segmenter")


def build_model(cfg):
    if cfg.model not in MODELS:
        raise ConfigError(f"config key 'model': unknown model '{cfg.model}', "
                          f"expected one of {sorted(MODELS)}")
    return MODELS[cfg.model](cfg, get_backend(cfg))


def is_segmentation(cfg):
    return cfg.model in SEGMENTATION_MODELS
