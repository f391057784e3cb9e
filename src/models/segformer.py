"""SegFormer = MiT encoder + all-MLP decode head; ``build_segformer(cfg)`` for the registry.

The network returns logits ``[N, class_num, H/4, W/4]``; callers upsample bilinearly
(align_corners=False) to the size they need (loss, inference), as upstream.
"""
import functools

from src.models.layers import batch_norm_2d
from src.models.mit import MIT_SETTINGS, mit
from src.models.segformer_head import SegFormerHead
from src.utils.config import ConfigError
from src.utils.device import ReleasesCompileMemory

# Upstream decoder width per backbone (NVlabs Cityscapes/ADE configs).
DECODER_DIMS = {"mit_b0": 256, "mit_b1": 256, "mit_b2": 768, "mit_b3": 768, "mit_b4": 768,
                "mit_b5": 768}


class SegFormer(ReleasesCompileMemory):
    # the class-count-dependent parameters (a checkpoint converted with drop_head=True lacks
    # them); read by src/utils/checkpoint.py and src/convert through ``classifier_prefixes``
    classifier_prefixes = ("decode_head.linear_pred.",)
    # the pretrained encoder (a backbone-only checkpoint holds these names only)
    encoder_prefixes = ("backbone.",)

    def __init__(self, backbone, decode_head):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head

    def construct(self, x):
        return self.decode_head(self.backbone(x))


def batch_norm_layer(cfg):
    """The decode head's BatchNorm factory; the SyncBN rule lives in ``layers.batch_norm_2d``."""
    return functools.partial(batch_norm_2d, sync_bn=cfg.sync_bn, device_target=cfg.device_target)


def build_segformer(cfg, backend):
    if cfg.backbone not in MIT_SETTINGS:
        raise ConfigError(f"config key 'backbone': '{cfg.backbone}' is not a SegFormer encoder; "
                          f"expected one of {sorted(MIT_SETTINGS)}")
    if int(cfg.class_num) < 1:
        raise ConfigError(f"config key 'class_num' must be >= 1, got {cfg.class_num}")
    backbone = mit(cfg.backbone, backend, drop_path_rate=cfg.drop_path_rate,
                   drop_rate=cfg.drop_rate)
    decoder_dim = cfg.decoder_dim if cfg.decoder_dim is not None else DECODER_DIMS[cfg.backbone]
    head = SegFormerHead(backend, backbone.embed_dims, int(decoder_dim), int(cfg.class_num),
                         dropout=cfg.decoder_dropout, norm_layer=batch_norm_layer(cfg))
    return SegFormer(backbone, head)
