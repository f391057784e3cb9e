"""Inference, one implementation for eval.py, infer.py, the Python API (src/apis.py), exported
files and eval during training.

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

``batch_scores`` runs N images of one size together; ``probabilities`` turns scores into
the class-probability map (the softmax of a single view's logits; the views' mean
softmax as it is). The network is a ``src/engine/networks.py`` ``Network``: a Cell or an
exported file, so the steps above are the same for all of them.

``ClsInferencer`` (ViT): the evaluation transform, the network, softmax, top-k.
"""
import numpy as np
import mindspore as ms
from mindspore import ops

from src.data.transforms import normalize, rescale_size, resize_for_test, to_chw
from src.engine.networks import InputShapeError, as_network
from src.utils.config import ConfigError
from src.utils.errors import InputError
from src.utils.defaults import CHOICES

EVAL_MODES = CHOICES["eval_mode"]


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
    """Whole / sliding-window / multi-scale + flip inference of a segmentation network.

    ``net``: a ``nn.Cell`` or a ``src.engine.networks.Network`` (an exported MINDIR/ONNX
    file, MindSpore Lite); a file with a fixed input H/W is used where the config's
    network inputs have its size (slide windows of its size, or whole images resized to
    it), and anything else is a ValueError naming the file's shape and the config keys."""

    def __init__(self, net, cfg):
        self.net = as_network(net)
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
        fixed = self.net.fixed_hw if self.net is not None else None
        if fixed is not None and self.mode == "slide" and fixed != self.crop_size:
            raise InputError(
                f"{self.net.source} takes a fixed input {list(self.net.input_shape)} (N, C, H, W) "
                f"but config key 'eval_crop_size' is {list(self.crop_size)}: slide windows must "
                f"have the file's size. Use --eval_crop_size={fixed[0]},{fixed[1]} (with an "
                f"eval_stride no larger), or export a MINDIR with --export_input_shape=1,3,-1,-1")

    # -------------------------------------------------------------- network calls --

    def _shape_error(self, batch_hw):
        fixed = self.net.fixed_hw
        where = (f"a slide window of {batch_hw[0]}x{batch_hw[1]} (the resized image is smaller "
                 f"than eval_crop_size {list(self.crop_size)}, so it runs whole)"
                 if self.mode == "slide" else
                 f"eval_mode=whole resizes this image to {batch_hw[0]}x{batch_hw[1]} "
                 f"(eval_base_size={list(self.base_size)}, eval_scales={self.scales})")
        return InputError(
            f"{self.net.source} takes a fixed input {list(self.net.input_shape)} (N, C, H, W); "
            f"{where}. Export the file at that size, use --eval_mode=slide "
            f"--eval_crop_size={fixed[0]},{fixed[1]}, or export a MINDIR with "
            f"--export_input_shape=1,3,-1,-1 (any size)")

    def network_logits(self, batch):
        """Logits of the network for a [N, 3, h, w] float32 batch, resized to (h, w)."""
        try:
            logits = self.net(batch)
        except InputShapeError:
            raise self._shape_error(batch.shape[2:]) from None
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise InputError(f"{self.net.source} returned shape {list(logits.shape)}; expected "
                             f"[N, class_num={self.num_classes}, h, w] segmentation logits "
                             f"(config key 'class_num')")
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

    # ------------------------------------------------------------------- images --

    def preprocess(self, image, size):
        """RGB uint8 [H, W, 3] -> normalised float32 [1, 3, h, w] at ``size`` = (h, w)
        (aligned to ``eval_size_divisor`` when set)."""
        return to_chw(normalize(resize_for_test(image, size, self.size_divisor), self.mean, self.std))[None]

    def views(self, height, width):
        """(resized size, flipped) for every test-time view of an ``height x width`` image."""
        return [(rescale_size(height, width, scaled_size(self.base_size, r)), flip)
                for r in self.scales for flip in ((False, True) if self.flip else (False,))]

    @property
    def single_view(self):
        return len(self.scales) == 1 and not self.flip

    def batch_scores(self, images):
        """[N, C, H, W] float32 class scores of N images of one size [H, W, 3] (RGB uint8),
        at that resolution: logits for a single view, the mean softmax over the views
        otherwise."""
        images = [np.asarray(image) for image in images]
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InputError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} "
                                 f"{list(image.shape)}")
            if image.shape != images[0].shape:
                raise InputError(f"a batch holds images of one size; got {list(images[0].shape)} "
                                 f"and {list(image.shape)}")
        height, width = images[0].shape[:2]
        total = None
        for size, flip in self.views(height, width):
            x = np.concatenate([self.preprocess(image, size) for image in images])
            if flip:
                x = x[:, :, :, ::-1]
            logits = resize_logits(self.image_frame_logits(x), (height, width))
            if self.single_view:
                return logits
            scores = softmax(logits, axis=1)
            if flip:
                scores = scores[:, :, :, ::-1]
            total = scores if total is None else total + scores
        return total / (len(self.scales) * (2 if self.flip else 1))

    def labels(self, scores):
        """Class map(s) of scores (argmax over the class axis, -3): trainIds, uint8 up to
        256 classes."""
        dtype = np.uint8 if self.num_classes <= 256 else np.int32
        return scores.argmax(axis=-3).astype(dtype)

    def probabilities(self, scores):
        """Class probabilities of scores (the softmax of a single view's logits)."""
        return softmax(scores, axis=-3) if self.single_view else scores

    def predict_scores(self, image):
        """[C, H, W] class scores of one image (see ``batch_scores``)."""
        return self.batch_scores([image])[0]

    def predict(self, image):
        """[H, W] class map (trainIds; uint8 up to 256 classes) at the image's own resolution."""
        return self.labels(self.predict_scores(image))


class ClsInferencer:
    """Classification (ViT): the eval pipeline's image transform (``src/data/imagenet.py``
    ``eval_image_ops``: resize, centre crop, normalise), the network, softmax, top-k."""

    def __init__(self, net, cfg):
        from src.data.imagenet import eval_image_ops
        import mindspore.dataset.transforms as transforms
        self.net = as_network(net)
        self.num_classes = int(cfg.class_num)
        self.transform = transforms.Compose(eval_image_ops(cfg))

    def preprocess(self, image):
        """RGB uint8 [H, W, 3] -> float32 [3, S, S] exactly as evaluation feeds the network."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} "
                             f"{list(image.shape)}")
        return np.asarray(self.transform(image), dtype=np.float32)

    def logits(self, images):
        """[N, class_num] float32 logits of a list of RGB uint8 images."""
        batch = np.stack([self.preprocess(image) for image in images])
        out = self.net(batch)
        if out.ndim != 2 or out.shape[1] != self.num_classes:
            raise InputError(f"{self.net.source} returned shape {list(out.shape)}; expected "
                             f"[N, class_num={self.num_classes}] classification logits "
                             f"(config key 'class_num')")
        return out

    def topk(self, images, k=5):
        """([N, k] class indices, [N, k] their softmax probabilities, best first;
        [N, class_num] all the probabilities)."""
        if int(k) < 1:
            raise InputError(f"topk must be >= 1, got {k}")
        probs = softmax(self.logits(images).astype(np.float32), axis=1)
        k = min(int(k), self.num_classes)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(probs, order, axis=1), probs
