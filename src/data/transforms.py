"""Image/label I/O and the segmentation augmentations, as plain numpy/OpenCV functions.

Every random choice takes an explicit ``numpy.random.Generator`` so a sample's
augmentation depends only on (seed, epoch, index) and never on which worker ran it.

The semantics follow mmsegmentation v0.x (the SegFormer code base; anchors.md section 1):

- ``Resize(img_scale, ratio_range)``: scale = int(base * r), r ~ U(ratio_range); the image
  is then rescaled keeping its aspect ratio so that it fits in that scale (mmcv
  ``imrescale``: factor = min(long/long_edge, short/short_edge), size rounded half up);
  bilinear for the image, nearest for the label.
- ``RandomCrop(crop_size, cat_max_ratio)``: up to 10 re-draws until the crop holds more
  than one class and no class (ignore excluded) covers ``cat_max_ratio`` or more of it.
- ``RandomFlip(prob)``, ``PhotoMetricDistortion`` (brightness +-32, contrast and
  saturation 0.5-1.5, hue +-18 on OpenCV's 0-180 hue; each with probability 0.5; contrast
  first or last at random), ``Normalize``, ``Pad`` (image 0 after normalisation, label 255).
"""
import cv2
import numpy as np
from PIL import Image

from src.utils.errors import UserError


class DataError(UserError, ValueError):
    """A problem with a dataset file or directory; the message names it and the rule broken."""


# ----------------------------------------------------------------------------- I/O --

# PIL modes of one channel of 16-bit values (a 16-bit grayscale PNG or TIFF opens as one of
# them; "I" is how older Pillow versions open such PNGs). ``convert("RGB")`` would clip their
# values at 255: a white image.
GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _gray16_to_rgb(im, path):
    """A 16-bit grayscale image as RGB uint8, as OpenCV's IMREAD_COLOR (mmcv.imread, and
    MindSpore's Decode for the ImageNet pipeline) decodes it: the high byte of each value,
    copied to the 3 channels."""
    values = np.asarray(im)
    if values.size and (values.min() < 0 or values.max() > 0xFFFF):  # mode I holds 32-bit ints
        raise DataError(f"{path}: image mode {im.mode} holds values outside 0..65535 (min "
                        f"{values.min()}, max {values.max()}); expected an 8-bit or 16-bit image")
    gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def read_image(path):
    """RGB uint8 HWC, the one decoder of input images (datasets, infer.py, the Python API):
    8-bit colour and grayscale as is, 16-bit grayscale scaled to 8 bits as OpenCV does. A
    corrupt or truncated file is a DataError naming it."""
    try:
        with Image.open(path) as im:
            im.load()  # PIL raises on truncated data here (unless LOAD_TRUNCATED_IMAGES)
            if im.mode in GRAY16_MODES:
                return _gray16_to_rgb(im, path)
            if im.mode == "F":
                raise DataError(f"{path}: floating-point image (mode F) is not supported; "
                                f"expected an 8-bit or 16-bit image")
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: corrupt or truncated image ({err})") from None


def read_label(path):
    """Label map as uint8 HW, read without colour conversion (palette PNGs keep their
    indices, as mmseg's 'unchanged' pillow loading does). A 16-bit label is read as its
    values (mmseg would wrap values above 255 round into 0..255: here they are an error)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in GRAY16_MODES:
                return _label16_values(np.asarray(im), path)
            if im.mode not in ("L", "P"):
                raise DataError(f"{path}: label must be a single-channel 8-bit or 16-bit image "
                                f"(mode L, P or I;16), got mode {im.mode}")
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: corrupt or truncated label image ({err})") from None


def _label16_values(values, path):
    """The uint8 label map of a 16-bit label file whose values all fit in 0..255."""
    bad = (values < 0) | (values > 255)
    if bad.any():
        shown = np.unique(values[bad])[:10].tolist()
        raise DataError(f"{path}: 16-bit label holds values {shown} outside 0..255 (label "
                        f"values are class ids and the ignore label)")
    return values.astype(np.uint8)


def check_label_size(label, image_shape, label_path, image_path):
    """The label map has its image's size (values are the label rule's business)."""
    if label.shape[:2] != tuple(image_shape[:2]):
        raise DataError(f"{label_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs "
                        f"from its image {image_path} ({image_shape[1]}x{image_shape[0]})")


# ------------------------------------------------------------------------ geometry --

def rescale_size(height, width, scale):
    """(new_h, new_w) fitting (height, width) into ``scale`` keeping the aspect ratio
    (mmcv.imrescale: long edge <= max(scale), short edge <= min(scale))."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def aligned_size(size, divisor):
    """NVlabs' ``AlignedResize``: (h, w) with each side rounded up to a multiple of
    ``divisor`` (0 or 1: unchanged)."""
    if divisor <= 1:
        return tuple(size)
    return tuple(-(-int(s) // divisor) * divisor for s in size)


def resize_for_test(image, size, divisor):
    """The test-time resize: bilinear to ``size`` then, when ``divisor`` asks for it, the
    result again to ``aligned_size`` (NVlabs resizes twice rather than once)."""
    image = resize_image(image, size)
    return resize_image(image, aligned_size(size, divisor))


def random_scale(rng, base_size, ratio_range):
    """mmseg Resize.random_sample_ratio: base_size (H, W) times r ~ U(ratio_range)."""
    ratio = rng.random() * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
    return int(base_size[0] * ratio), int(base_size[1] * ratio)


def resize_image(image, size):
    """Bilinear resize to (H, W)."""
    if image.shape[:2] == tuple(size):
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def resize_label(label, size):
    """Nearest-neighbour resize to (H, W): label values are never blended."""
    if label.shape[:2] == tuple(size):
        return label
    return cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def random_crop_box(rng, shape, crop_size):
    """(y0, y1, x0, x1) of a random crop; a side smaller than the crop is taken whole."""
    margin_h = max(shape[0] - crop_size[0], 0)
    margin_w = max(shape[1] - crop_size[1], 0)
    y0 = int(rng.integers(0, margin_h + 1))
    x0 = int(rng.integers(0, margin_w + 1))
    return y0, y0 + crop_size[0], x0, x0 + crop_size[1]


def cat_max_ratio_crop_box(rng, label, crop_size, cat_max_ratio, ignore_label, tries=10):
    """mmseg RandomCrop: re-draw the box (up to ``tries`` times) while the crop holds a
    single class or one class covers >= cat_max_ratio of its labelled pixels."""
    box = random_crop_box(rng, label.shape, crop_size)
    if cat_max_ratio >= 1.0:
        return box
    for _ in range(tries):
        y0, y1, x0, x1 = box
        values, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
        counts = counts[values != ignore_label]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
        box = random_crop_box(rng, label.shape, crop_size)
    return box


# ---------------------------------------------------------------------- photometric --

def _convert(img, alpha=1.0, beta=0.0):
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(rng, img, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
    """mmseg PhotoMetricDistortion on an RGB uint8 image (the HSV steps are colour-order
    independent because OpenCV's RGB2HSV mirrors BGR2HSV)."""
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.integers(2) == 1
    if contrast_first and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(-hue_delta, hue_delta))) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    return img


# ------------------------------------------------------------------------- tensors --

def normalize(img, mean, std):
    """(img - mean) / std per channel, float32 HWC."""
    mean = np.asarray(mean, np.float32)
    inv_std = 1.0 / np.asarray(std, np.float32)
    return (img.astype(np.float32) - mean) * inv_std


def pad_to(image, label, size, ignore_label):
    """Pad bottom/right up to ``size`` (H, W): image with 0, label with ignore_label."""
    pad_h, pad_w = max(size[0] - image.shape[0], 0), max(size[1] - image.shape[1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, label
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
    label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=ignore_label)
    return image, label


def to_chw(image):
    return np.ascontiguousarray(image.transpose(2, 0, 1))


# ------------------------------------------------------------------------ pipelines --

class SegTrainTransform:
    """The training augmentation: (RGB uint8 HWC, label HW) -> (float32 CHW, int32 HW),
    both of size ``crop_size``. ``steps`` lists the stages, in order (tests use it to
    check each one keeps image and label aligned)."""

    def __init__(self, cfg):
        self.base_size = tuple(cfg.base_size)
        self.ratio_range = tuple(cfg.ratio_range)
        self.crop_size = tuple(cfg.crop_size)
        self.cat_max_ratio = float(cfg.cat_max_ratio)
        self.flip_prob = float(cfg.flip_prob)
        self.photometric = bool(cfg.photometric_distortion)
        self.mean, self.std = cfg.img_norm_mean, cfg.img_norm_std
        self.ignore_label = int(cfg.ignore_label)

    def resize(self, rng, image, label):
        scale = random_scale(rng, self.base_size, self.ratio_range)
        size = rescale_size(image.shape[0], image.shape[1], scale)
        return resize_image(image, size), resize_label(label, size)

    def crop(self, rng, image, label):
        y0, y1, x0, x1 = cat_max_ratio_crop_box(rng, label, self.crop_size, self.cat_max_ratio,
                                                self.ignore_label)
        return image[y0:y1, x0:x1], label[y0:y1, x0:x1]

    def flip(self, rng, image, label):
        if rng.random() < self.flip_prob:
            return image[:, ::-1], label[:, ::-1]
        return image, label

    def distort(self, rng, image, label):
        if self.photometric:
            image = photometric_distortion(rng, np.ascontiguousarray(image))
        return image, label

    def finish(self, rng, image, label):
        image = normalize(image, self.mean, self.std)
        image, label = pad_to(image, label, self.crop_size, self.ignore_label)
        return to_chw(image), np.ascontiguousarray(label, dtype=np.int32)

    @property
    def steps(self):
        return (self.resize, self.crop, self.flip, self.distort, self.finish)

    def __call__(self, rng, image, label):
        for step in self.steps:
            image, label = step(rng, image, label)
        return image, label


class SegEvalTransform:
    """Eval input: the image rescaled (keep ratio) to fit ``eval_base_size`` (then aligned
    to ``eval_size_divisor``), normalised, float32 CHW. The label is not touched: metrics
    are computed at full resolution."""

    def __init__(self, cfg):
        self.base_size = tuple(cfg.eval_base_size)
        self.size_divisor = int(cfg.eval_size_divisor)
        self.mean, self.std = cfg.img_norm_mean, cfg.img_norm_std

    def __call__(self, image):
        size = rescale_size(image.shape[0], image.shape[1], self.base_size)
        image = resize_for_test(image, size, self.size_divisor)
        return to_chw(normalize(image, self.mean, self.std))
