"""Segmentation inference, one implementation for eval.py, infer.py and eval during training.

``SegInferencer(net, cfg).predict(image)`` takes an RGB uint8 image at its original
resolution and returns the class map at that same resolution. What happens in between
is mmseg's test path (v0.x ``EncoderDecoder`` + ``MultiScaleFlipAug``), which the
SegFormer and Segmenter numbers were measured with:

1. for every ratio r in ``eval_scales``: resize the image, keeping its aspect ratio, to
   the largest size that fits ``eval_base_size * r`` (mmcv ``rescale_size``: long edge
   <= max, short edge <= min; sizes rounded half up), bilinear, then with
   ``eval_size_divisor`` > 1 resized again to sides rounded up to that multiple (NVlabs
   ``AlignedResize``, which the SegFormer ADE20K numbers were measured with); normalise
   (``img_norm_mean`` / ``img_norm_std``, RGB); and, with ``eval_flip``, also its mirror;
2. ``eval_mode: whole``: run the network on the whole resized image;
   ``eval_mode: slide``: run it on ``eval_crop_size`` windows every ``eval_stride``
   pixels, the last window of each row/column moved back to end at the image edge,
   logits summed into the image frame and divided by how many windows covered each
   pixel (mmseg ``slide_inference``). A window never exceeds the image: an image smaller
   than the crop is run whole, unpadded, as upstream;
3. network logits (native resolution: 1/4 for SegFormer) are resized bilinearly
   (align_corners=False) to the network input, then the image-frame logits to the
   original image size;
4. several views (scales, flip): softmax each, un-mirror the flipped ones, average, and
   take the argmax. A single view skips the softmax (same argmax).
"""
import numpy as np
import mindspore as ms
from mindspore import ops

from src.data.transforms import normalize, rescale_size, resize_for_test, to_chw
from src.utils.config import ConfigError
from src.utils.defaults import CHOICES

EVAL_MODES = CHOICES["eval_mode"]


def load_trained_net(cfg, ckpt_path, log=print):
    """``build_model(cfg)`` with every weight from ``ckpt_path`` (a train.py checkpoint or a
    converted one), in inference mode. Anything missing, unexpected or mis-shaped is a
    CheckpointError naming the checkpoint, the config's model and the first bad tensor."""
    from src.models import build_model
    from src.utils.checkpoint import (CheckpointError, is_training_state, load_checkpoint,
                                      load_into_net)

    if not ckpt_path:
        raise CheckpointError("no checkpoint given (--eval_ckpt_path / --infer_ckpt_path / "
                              "--export_ckpt_path)")
    params = load_checkpoint(ckpt_path)
    weights = {k: v for k, v in params.items() if not is_training_state(k)}
    net = build_model(cfg)
    what = f"model={cfg.model} backbone={cfg.backbone} class_num={cfg.class_num}"
    if cfg.model == "segmenter":
        what += f" decoder={cfg.decoder}"
    try:
        loaded, _ = load_into_net(net, weights, strict=True, source=ckpt_path)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint does not fit the config ({what}): {err}") from None
    net.set_train(False)
    log(f"loaded {len(loaded)} tensors from {ckpt_path} ({what})")
    return net


def scaled_size(base_size, ratio):
    """``eval_base_size`` times one ``eval_scales`` ratio, truncated as mmseg does."""
    return int(base_size[0] * ratio), int(base_size[1] * ratio)


def slide_windows(height, width, crop_size, stride):
    """Window boxes ``(y1, y2, x1, x2)`` covering an ``height x width`` image (mmseg)."""
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    boxes = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            boxes.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return boxes


def coverage_count(boxes, height, width):
    """[H, W] number of windows covering each pixel (the divisor of slide inference)."""
    count = np.zeros((height, width), dtype=np.float32)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    return count


def resize_logits(logits, size):
    """Bilinear (align_corners=False) resize of [N, C, h, w] float32 logits to ``size``."""
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    out = ops.interpolate(ms.Tensor(logits), size=tuple(int(s) for s in size),
                          mode="bilinear", align_corners=False)
    return out.asnumpy()


def softmax(logits, axis):
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def _pair(value, key):
    if not isinstance(value, (list, tuple)) or len(value) != 2 or min(value) <= 0:
        raise ConfigError(f"config key '{key}' must be [H, W] of positive sizes, got {value!r}")
    return int(value[0]), int(value[1])


class SegInferencer:
    """Whole / sliding-window / multi-scale + flip inference of a segmentation network."""

    def __init__(self, net, cfg):
        self.net = net
        self.num_classes = int(cfg.class_num)
        self.mode = str(cfg.eval_mode)
        if self.mode not in EVAL_MODES:
            raise ConfigError(f"config key 'eval_mode': '{cfg.eval_mode}' is not one of "
                              f"{list(EVAL_MODES)}")
        self.base_size = _pair(cfg.eval_base_size, "eval_base_size")
        self.crop_size = _pair(cfg.eval_crop_size, "eval_crop_size")
        self.stride = _pair(cfg.eval_stride, "eval_stride")
        if self.mode == "slide" and (self.stride[0] > self.crop_size[0]
                                     or self.stride[1] > self.crop_size[1]):
            raise ConfigError(f"config key 'eval_stride' {list(self.stride)} is larger than "
                              f"'eval_crop_size' {list(self.crop_size)}: windows would leave "
                              f"pixels uncovered")
        self.scales = [float(r) for r in cfg.eval_scales]
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"config key 'eval_scales' must be a non-empty list of positive "
                              f"ratios, got {cfg.eval_scales!r}")
        self.flip = bool(cfg.eval_flip)
        self.size_divisor = int(cfg.eval_size_divisor)
        if self.size_divisor < 0:
            raise ConfigError(f"config key 'eval_size_divisor' must be >= 0 (0: off), got "
                              f"{cfg.eval_size_divisor!r}")
        self.mean, self.std = list(cfg.img_norm_mean), list(cfg.img_norm_std)

    # -------------------------------------------------------------- network calls --

    def network_logits(self, batch):
        """Logits of the network for a [N, 3, h, w] float32 batch, resized to (h, w)."""
        out = self.net(ms.Tensor(np.ascontiguousarray(batch)))
        if isinstance(out, (tuple, list)):
            out = out[0]
        logits = out.astype(ms.float32).asnumpy()
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"the network returned shape {logits.shape}; expected "
                             f"[N, class_num={self.num_classes}, h, w] segmentation logits")
        return resize_logits(logits, batch.shape[2:])

    def whole_logits(self, batch):
        return self.network_logits(batch)

    def slide_logits(self, batch):
        n, _, height, width = batch.shape
        boxes = slide_windows(height, width, self.crop_size, self.stride)
        summed = np.zeros((n, self.num_classes, height, width), dtype=np.float32)
        for y1, y2, x1, x2 in boxes:
            summed[:, :, y1:y2, x1:x2] += self.network_logits(batch[:, :, y1:y2, x1:x2])
        return summed / coverage_count(boxes, height, width)

    def image_frame_logits(self, batch):
        """[N, C, h, w] logits over the whole (resized, normalised) image ``batch``."""
        return self.slide_logits(batch) if self.mode == "slide" else self.whole_logits(batch)

    # ------------------------------------------------------------------ one image --

    def preprocess(self, image, size):
        """RGB uint8 [H, W, 3] -> normalised float32 [1, 3, h, w] at ``size`` = (h, w)
        (aligned to ``eval_size_divisor`` when set)."""
        return to_chw(normalize(resize_for_test(image, size, self.size_divisor), self.mean, self.std))[None]

    def views(self, height, width):
        """(resized size, flipped) for every test-time view of an ``height x width`` image."""
        return [(rescale_size(height, width, scaled_size(self.base_size, r)), flip)
                for r in self.scales for flip in ((False, True) if self.flip else (False,))]

    def predict_scores(self, image):
        """[C, H, W] float32 class scores at the image's own resolution: logits for a
        single view, the mean softmax over the views otherwise."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        views = self.views(height, width)
        total = None
        for size, flip in views:
            x = self.preprocess(image, size)
            if flip:
                x = x[:, :, :, ::-1]
            logits = resize_logits(self.image_frame_logits(x), (height, width))[0]
            if len(views) == 1:
                return logits
            scores = softmax(logits, axis=0)
            if flip:
                scores = scores[:, :, ::-1]
            total = scores if total is None else total + scores
        return total / len(views)

    def predict(self, image):
        """[H, W] class map (trainIds; uint8 up to 256 classes) at the image's own resolution."""
        dtype = np.uint8 if self.num_classes <= 256 else np.int32
        return self.predict_scores(image).argmax(axis=0).astype(dtype)
