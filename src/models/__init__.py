"""Model registry: ``build_model(cfg)`` turns a config into an ``nn.Cell``.

Segmentation models return logits ``[N, class_num, h, w]`` at their native output
resolution (SegFormer: 1/4 of the input; Segmenter: the input size). Consumers (loss,
inference) resize bilinearly (align_corners=False) to the size they need.
The ViT classifier returns ``[N, class_num]``.
"""


def _build_segformer(cfg):
    from src.models.segformer import build_segformer
    return build_segformer(cfg)


def _build_segmenter(cfg):
    from src.models.segmenter import build_segmenter
    return build_segmenter(cfg)


def _build_vit(cfg):
    from src.models.vit import build_vit
    return build_vit(cfg)


MODELS = {
    "segformer": _build_segformer,
    "segmenter": _build_segmenter,
    "vit": _build_vit,
}

SEGMENTATION_MODELS = ("segformer", "segmenter")


def build_model(cfg):
    if cfg.model not in MODELS:
        raise ValueError(f"config key 'model': unknown model '{cfg.model}', "
                         f"expected one of {sorted(MODELS)}")
    return MODELS[cfg.model](cfg)


def is_segmentation(cfg):
    return cfg.model in SEGMENTATION_MODELS
