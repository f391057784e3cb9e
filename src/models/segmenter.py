"""Segmenter: a ViT encoder + a Mask Transformer or linear decoder (Strudel et al., 2021).

Structure and parameter names follow the official implementation (rstrudel/segmenter),
so its checkpoints convert by identity (less the unused ``encoder.head``):
``encoder.{patch_embed.proj, cls_token, pos_embed, blocks.N.*, norm}``,
``decoder.{proj_dec, cls_emb, blocks.N.*, decoder_norm, proj_patch, proj_classes,
mask_norm}`` (Mask Transformer) or ``decoder.head`` (linear).

The official code builds every LayerNorm with PyTorch's default eps 1e-5 (encoder and
decoder), unlike timm's ViT (1e-6); we follow it, so fine-tuned Segmenter weights
reproduce their numbers.

Forward: pad the input (zeros, bottom/right) to a multiple of the patch size -> encoder
tokens without the class token -> decoder masks on the patch grid -> bilinear upsample
(align_corners=False) to the padded size -> crop the padding. Output: logits
``[N, class_num, H, W]`` at the input size.
"""
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal, TruncatedNormal, initializer

from src.models.vit import Block, create_vit, dense
from src.utils.config import ConfigError
from src.utils.device import ReleasesCompileMemory

SEGMENTER_LAYER_NORM_EPS = 1e-5   # official Segmenter: nn.LayerNorm(dim) everywhere
DECODERS = ("mask_transformer", "linear")


class LinearDecoder(nn.Cell):
    """Per-patch linear classifier: ``[B, N, D]`` -> ``[B, n_cls, gh, gw]``."""

    classifier_prefixes = ("head.",)   # the class-count-dependent parameters

    def __init__(self, class_num, d_encoder):
        super().__init__()
        self.class_num = class_num
        self.head = dense(d_encoder, class_num)

    def construct(self, x, grid):
        x = self.head(x)
        return x.transpose(0, 2, 1).reshape(x.shape[0], self.class_num, grid[0], grid[1])


class MaskTransformer(nn.Cell):
    """Mask Transformer decoder.

    Patch tokens are projected (``proj_dec``), joined by ``class_num`` learnable class
    embeddings (appended after the patches), run through ``n_layers`` transformer blocks
    and ``decoder_norm``; masks are the scalar products of the L2-normalised projected
    patch and class features (``proj_patch`` / ``proj_classes``), normalised over the
    classes by ``mask_norm``.
    """

    def __init__(self, backend, class_num, d_encoder, n_layers=2, d_model=None, n_heads=None,
                 dropout=0.1, drop_path_rate=0.0, eps=SEGMENTER_LAYER_NORM_EPS):
        super().__init__()
        # the class-count-dependent parameters
        self.classifier_prefixes = ("cls_emb", "mask_norm.")
        d_model = d_encoder if d_model is None else d_model
        n_heads = d_model // 64 if n_heads is None else n_heads
        if n_layers < 1:
            raise ConfigError(f"config key 'decoder_layers': expected >= 1, got {n_layers}")
        self.class_num = class_num
        self.d_model = d_model
        scale = d_model ** -0.5
        rates = [drop_path_rate * i / (n_layers - 1) if n_layers > 1 else 0.0
                 for i in range(n_layers)]
        self.blocks = nn.CellList([
            Block(backend, d_model, n_heads, mlp_ratio=4.0, drop=dropout, attn_drop=dropout,
                  drop_path=rates[i], eps=eps)
            for i in range(n_layers)])
        self.cls_emb = ms.Parameter(initializer(TruncatedNormal(0.02), (1, class_num, d_model),
                                                ms.float32), name="cls_emb")
        self.proj_dec = dense(d_encoder, d_model)
        self.proj_patch = ms.Parameter(initializer(Normal(scale), (d_model, d_model), ms.float32),
                                       name="proj_patch")
        self.proj_classes = ms.Parameter(initializer(Normal(scale), (d_model, d_model),
                                                     ms.float32), name="proj_classes")
        self.decoder_norm = backend.LayerNorm(d_model, eps=eps)
        self.mask_norm = backend.LayerNorm(class_num, eps=eps)

    def construct(self, x, grid):
        b = x.shape[0]
        x = self.proj_dec(x)
        cls_emb = ops.broadcast_to(self.cls_emb, (b, self.class_num, self.d_model))
        x = ops.concat((x, cls_emb.astype(x.dtype)), axis=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        n = x.shape[1] - self.class_num
        patches = ops.matmul(x[:, :n], self.proj_patch.astype(x.dtype))
        classes = ops.matmul(x[:, n:], self.proj_classes.astype(x.dtype))
        # L2 normalisation in float32 (a fp16 sum of squares overflows easily)
        patches = patches.astype(ms.float32)
        classes = classes.astype(ms.float32)
        patches = patches / ops.norm(patches, dim=-1, keepdim=True)
        classes = classes / ops.norm(classes, dim=-1, keepdim=True)
        masks = self.mask_norm(ops.matmul(patches, classes.swapaxes(1, 2)))
        return masks.transpose(0, 2, 1).reshape(b, self.class_num, grid[0], grid[1])


class Segmenter(ReleasesCompileMemory):
    """``encoder`` (ViT without head) + ``decoder``; logits at the input size."""

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.patch_size = encoder.patch_size
        # the class-count-dependent parameters: the decoder's (see ``classifier_prefixes``)
        self.classifier_prefixes = tuple("decoder." + p for p in decoder.classifier_prefixes)
        # the pretrained encoder (a backbone-only checkpoint holds these names only)
        self.encoder_prefixes = ("encoder.",)

    def construct(self, x):
        h, w = x.shape[2], x.shape[3]
        p = self.patch_size
        pad_h = (p - h % p) % p
        pad_w = (p - w % p) % p
        if pad_h or pad_w:
            x = ops.pad(x, (0, pad_w, 0, pad_h), mode="constant", value=0.0)
        hp, wp = h + pad_h, w + pad_w
        tokens = self.encoder.forward_features(x)[:, 1:]   # drop the class token
        masks = self.decoder(tokens, (hp // p, wp // p))
        masks = ops.interpolate(masks, size=(hp, wp), mode="bilinear", align_corners=False)
        if pad_h or pad_w:
            masks = masks[:, :, :h, :w]
        return masks


def build_segmenter(cfg, backend):
    """Segmenter from ``cfg.backbone`` (a ViT variant), ``cfg.decoder`` and ``cfg.class_num``."""
    if cfg.decoder not in DECODERS:
        raise ConfigError(f"config key 'decoder': unknown Segmenter decoder '{cfg.decoder}', "
                          f"expected one of {list(DECODERS)}")
    if not isinstance(cfg.class_num, int) or cfg.class_num < 1:
        raise ConfigError(f"config key 'class_num': expected an int >= 1, got {cfg.class_num!r}")
    encoder = create_vit(cfg.backbone, 0, backend, image_size=cfg.image_size,
                         drop_rate=cfg.drop_rate, attn_drop_rate=cfg.drop_rate,
                         drop_path_rate=cfg.drop_path_rate, eps=SEGMENTER_LAYER_NORM_EPS)
    if cfg.decoder == "linear":
        decoder = LinearDecoder(cfg.class_num, encoder.embed_dim)
    else:
        decoder = MaskTransformer(backend, cfg.class_num, encoder.embed_dim,
                                  n_layers=cfg.decoder_layers,
                                  dropout=cfg.decoder_dropout,
                                  drop_path_rate=cfg.decoder_drop_path_rate)
    return Segmenter(encoder, decoder)
