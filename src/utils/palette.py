"""Turning a class-index map into images: palette PNG, colour image, overlay.

The palette comes from the config (``dataset.palette``: one RGB triple per class, the
Cityscapes one by default). Indices without a colour (e.g. the ignore label 255) are
black.
"""
import numpy as np
from PIL import Image


def palette_table(palette):
    """[256, 3] uint8 lookup table: row i is the colour of class i."""
    table = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    if len(colours) > 256:
        raise ValueError(f"a palette PNG holds at most 256 colours, got {len(colours)}")
    if colours.size and (colours.min() < 0 or colours.max() > 255):
        raise ValueError("palette colours must be RGB triples in [0, 255]")
    table[:len(colours)] = colours
    return table


def gray_image(pred, palette):
    """Mode-P image whose pixel values are the class indices (trainIds) and whose palette
    shows the class colours, so viewers display colours while tools read the indices."""
    pred = np.asarray(pred)
    if pred.min(initial=0) < 0 or pred.max(initial=0) > 255:
        raise ValueError("class indices must be in [0, 255] to be stored in a PNG")
    img = Image.fromarray(pred.astype(np.uint8), mode="P")
    img.putpalette(palette_table(palette).reshape(-1).tolist())
    return img


def color_image(pred, palette):
    """[H, W, 3] uint8 RGB colour rendering of a class-index map."""
    return palette_table(palette)[np.asarray(pred).astype(np.uint8)]


def overlap_image(image_rgb, color_rgb, alpha=0.5):
    """Blend of the original image and the colour rendering (``alpha`` = colour weight)."""
    if image_rgb.shape != color_rgb.shape:
        raise ValueError(f"image {image_rgb.shape} and colour map {color_rgb.shape} differ in shape")
    blend = (1.0 - alpha) * image_rgb.astype(np.float32) + alpha * color_rgb.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)
