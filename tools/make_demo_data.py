"""Write a tiny, deterministic demo dataset in the exact Cityscapes, ADE20K and ImageNet layouts.

    python tools/make_demo_data.py          # data/demo_cityscapes + data/demo_ade20k + data/demo_imagenet
    python tools/make_demo_data.py --seed 3 --num_train 24 --num_val 8

Cityscapes part (``--out``)::

    leftImg8bit/{train,val}/<city>/<city>_<seq>_000019_leftImg8bit.png    RGB street scene
    gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_polygons.json    real label names
    gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_labelIds.png     as the download ships

Each scene is a random layout of sky, buildings, vegetation, terrain, sidewalk, road, poles,
traffic signs/lights, cars, persons and the ego vehicle (ignored, trainId 255). The JSON
has the format cityscapesscripts' ``Annotation`` reads (imgHeight, imgWidth, objects with
label + polygon, painted in list order). The image is rendered from the same raster as
the label, with a class-specific colour and texture plus noise, so a network can learn it.
Run ``tools/convert_dataset.py`` afterwards to get the ``*_gtFine_labelTrainIds.png`` files.

ADE20K part (``--ade_out``, default: ``demo_ade20k`` next to ``--out``; the root to give
as ``data_path``)::

    images/{training,validation}/ADE_{train,val}_<8 digits>.jpg          RGB room, JPEG
    annotations/{training,validation}/ADE_{train,val}_<8 digits>.png     L: 0 = other, k = class k-1

Rooms of varying size and aspect: ceiling, wall, floor, a window, a painting, a bed, a
table (7 of the 150 ADE20K classes, as their label values 1..150) and clutter labelled 0
("other", ignored after reduce_zero_label); rendered from the label like the street scenes.

ImageNet part (``--imagenet_out``): ``{train,val}/<wnid>/<wnid>_<n>.JPEG`` with four
classes that differ in shape and colour (disc, square, triangle, stripes).

Same seed -> same bytes (numpy's PCG64 generator, PIL encoders with fixed settings).
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

# Cityscapes label ids of the names used below (cityscapesscripts/helpers/labels.py).
LABEL_IDS = {
    "unlabeled": 0, "ego vehicle": 1, "road": 7, "sidewalk": 8, "building": 11,
    "wall": 12, "fence": 13, "pole": 17, "traffic light": 19, "traffic sign": 20,
    "vegetation": 21, "terrain": 22, "sky": 23, "person": 24, "rider": 25, "car": 26,
}
# Base colours (RGB) per label, near the Cityscapes palette so the scenes look familiar.
BASE_COLOURS = {
    "sky": (90, 150, 210), "building": (95, 90, 85), "wall": (120, 120, 150),
    "fence": (170, 140, 130), "vegetation": (80, 130, 40), "terrain": (150, 200, 120),
    "sidewalk": (200, 140, 190), "road": (110, 80, 110), "pole": (150, 150, 150),
    "traffic sign": (225, 215, 20), "traffic light": (60, 60, 40), "person": (200, 40, 60),
    "car": (30, 40, 150), "ego vehicle": (25, 25, 25),
}
# ADE20K label values (class index + 1 in mmseg's ADE20KDataset order) of the demo rooms.
ADE_LABELS = {"other": 0, "wall": 1, "floor": 4, "ceiling": 6, "bed": 8, "windowpane": 9,
              "table": 16, "painting": 23}
ADE_COLOURS = {
    "wall": (200, 185, 160), "floor": (140, 90, 50), "ceiling": (235, 235, 230),
    "bed": (170, 40, 70), "windowpane": (150, 200, 240), "table": (80, 55, 30),
    "painting": (60, 110, 170),
}
TRAIN_CITIES = ("aachen", "bochum", "bremen")
VAL_CITIES = ("frankfurt", "lindau", "munster")
IMAGENET_CLASSES = (  # (wnid, what the demo class looks like)
    ("n01440764", "red disc"), ("n01443537", "green square"),
    ("n01484850", "blue triangle"), ("n01491361", "yellow stripes"),
)


# ------------------------------------------------------------------------ layout --

def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _blob(rng, cx, cy, r, n=12):
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radii = r * rng.uniform(0.7, 1.15, size=n)
    return [[int(cx + rr * np.cos(a)), int(cy + rr * np.sin(a))] for a, rr in zip(angles, radii)]


def _car(x, y_bottom, w):
    """Side view of a car: body plus cabin, (x, y_bottom) its lower-left corner."""
    h = int(w * 0.45)
    body_top = y_bottom - int(h * 0.55)
    return [[x, y_bottom], [x + w, y_bottom], [x + w, body_top + 3], [x + int(w * 0.78), body_top],
            [x + int(w * 0.65), y_bottom - h], [x + int(w * 0.3), y_bottom - h],
            [x + int(w * 0.18), body_top], [x, body_top + 4]]


def _person(x, y_bottom, h):
    """Upright pedestrian outline: legs, torso, shoulders, head."""
    w = max(4, int(h * 0.28))
    head = max(2, int(h * 0.12))
    cx = x + w // 2
    return [[x + 1, y_bottom], [cx - 1, y_bottom - int(h * 0.35)], [cx + 1, y_bottom - int(h * 0.35)],
            [x + w - 1, y_bottom], [x + w, y_bottom - int(h * 0.45)], [x + w, y_bottom - int(h * 0.8)],
            [cx + head // 2, y_bottom - int(h * 0.82)], [cx + head // 2, y_bottom - h],
            [cx - head // 2, y_bottom - h], [cx - head // 2, y_bottom - int(h * 0.82)],
            [x, y_bottom - int(h * 0.8)], [x, y_bottom - int(h * 0.45)]]


def make_layout(rng, height, width):
    """A random street scene as a list of (label, polygon) painted in order (later on top)."""
    H, W = height, width
    horizon = int(H * rng.uniform(0.38, 0.5))
    objs = [("sky", _rect(0, 0, W - 1, horizon + 4))]

    x = int(rng.integers(-40, 0))
    while x < W:  # a row of buildings of random width and height
        bw = int(rng.integers(W // 10, W // 4))
        top = int(H * rng.uniform(0.06, 0.33))
        objs.append(("building", _rect(x, top, min(x + bw, W - 1), horizon + 6)))
        x += bw + int(rng.integers(0, W // 12))
    if rng.random() < 0.5:
        wx = int(rng.integers(0, W - W // 4))
        objs.append(("wall", _rect(wx, horizon - int(H * 0.06), wx + W // 5, horizon + 8)))
    for _ in range(int(rng.integers(1, 4))):  # trees over the buildings
        cx, r = int(rng.integers(0, W)), int(rng.integers(H // 12, H // 6))
        objs.append(("vegetation", _blob(rng, cx, horizon - r // 2, r)))

    objs.append(("sidewalk", _rect(0, horizon, W - 1, H - 1)))
    if rng.random() < 0.6:
        side = rng.random() < 0.5
        tx0, tx1 = (0, W // 5) if side else (W - W // 5, W - 1)
        objs.append(("terrain", _rect(tx0, horizon, tx1, horizon + int((H - horizon) * 0.3))))
    vx = int(W * rng.uniform(0.35, 0.65))
    road_l, road_r = int(W * rng.uniform(-0.3, 0.1)), int(W * rng.uniform(0.9, 1.3))
    objs.append(("road", [[vx - W // 20, horizon], [vx + W // 20, horizon], [road_r, H - 1], [road_l, H - 1]]))
    if rng.random() < 0.4:
        fy = horizon + int((H - horizon) * 0.15)
        objs.append(("fence", _rect(0, fy - H // 14, W // 6, fy)))

    for _ in range(int(rng.integers(1, 4))):  # poles with a sign or a light on top
        px = int(rng.integers(0, W - 6))
        top = int(H * rng.uniform(0.12, 0.3))
        base = horizon + int(rng.integers(4, max(5, (H - horizon) // 3)))
        pw = max(2, W // 160)
        objs.append(("pole", _rect(px, top, px + pw, base)))
        if rng.random() < 0.5:
            objs.append(("traffic sign", _rect(px - 5, top, px + pw + 5, top + 9)))
        else:
            objs.append(("traffic light", _rect(px - 2, top, px + pw + 2, top + 16)))

    cars = []
    for _ in range(int(rng.integers(1, 5))):  # cars on the road, bigger when closer
        yb = int(rng.uniform(horizon + 0.25 * (H - horizon), H - 0.12 * (H - horizon)))
        scale = (yb - horizon) / (H - horizon)
        cw = int(W * (0.08 + 0.22 * scale))
        cars.append((yb, int(rng.integers(0, W - cw)), cw))
    for yb, cx, cw in sorted(cars):  # far ones first: near cars occlude them
        objs.append(("car", _car(cx, yb, cw)))
    for _ in range(int(rng.integers(1, 4))):  # pedestrians
        yb = int(rng.uniform(horizon + 0.15 * (H - horizon), H - 0.15 * (H - horizon)))
        ph = int(H * (0.1 + 0.35 * (yb - horizon) / (H - horizon)))
        objs.append(("person", _person(int(rng.integers(0, W - ph // 3)), yb, ph)))

    ego_top = H - int(H * rng.uniform(0.05, 0.09))  # bonnet of the recording car (ignored)
    objs.append(("ego vehicle", [[0, H - 1], [0, ego_top + 6], [W // 4, ego_top], [3 * W // 4, ego_top],
                                 [W - 1, ego_top + 6], [W - 1, H - 1]]))
    return [(label, [[int(px), int(py)] for px, py in poly]) for label, poly in objs]


def rasterize(objects, height, width):
    """Object-index map (0 = nothing, k = objects[k-1]) painted in list order with PIL,
    the same polygon fill cityscapesscripts' json2labelImg uses."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for k, (_, poly) in enumerate(objects, start=1):
        draw.polygon([tuple(p) for p in poly], fill=k)
    return np.asarray(canvas)


# ------------------------------------------------------------------------ render --

def _texture(label, rng, yy, xx, height):
    """Per-class pattern in [-1, 1] so classes differ in texture, not only colour."""
    if label == "building":  # window grid
        period_x, period_y = int(rng.integers(10, 18)), int(rng.integers(12, 20))
        win = ((xx % period_x) < period_x // 2) & ((yy % period_y) < period_y // 2)
        return np.where(win, -1.0, 0.3)
    if label == "sky":  # brighter towards the horizon
        return yy / height * 1.5 - 0.5
    if label == "road":  # fine stripes along the road
        return 0.3 * np.sin(xx * 0.9)
    if label == "sidewalk":  # tiles
        return np.where(((xx % 12) == 0) | ((yy % 8) == 0), -1.0, 0.2)
    if label == "vegetation":  # leafy, high-frequency
        return np.sin(xx * 1.3 + yy * 0.7) * np.cos(yy * 1.1 - xx * 0.4)
    if label == "car":  # horizontal shading
        return np.cos(yy * 0.35)
    if label == "person":
        return np.where((yy % 6) < 3, 0.8, -0.5)
    if label == "fence":
        return np.where((xx % 6) < 2, -1.0, 0.4)
    if label == "floor":  # planks
        return np.where((yy % 7) == 0, -1.0, 0.3 * np.sin(xx * 0.3))
    if label == "windowpane":  # glazing bars
        return np.where(((xx % 10) < 2) | ((yy % 12) < 2), -1.5, 0.5)
    if label == "painting":  # brush strokes
        return np.sin(xx * 0.8) * np.sin(yy * 0.6) * 1.5
    if label == "bed":  # folds of the cover
        return 0.6 * np.sin(yy * 0.5 + xx * 0.1)
    return np.zeros_like(xx, dtype=np.float64)


def render(objects, index_map, rng, colours=BASE_COLOURS):
    """RGB uint8 image: each object gets its class colour (jittered per object; cars and
    persons get their own colour; unknown labels a random one), the class texture, then
    sensor noise."""
    height, width = index_map.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3), np.float64)
    for k, (label, _) in enumerate(objects, start=1):
        mask = index_map == k
        if not mask.any():
            continue
        colour = np.array(colours[label] if label in colours else rng.uniform(40, 220, size=3), np.float64)
        if label == "car":  # cars come in many greens/blues (red is the person colour)
            colour = rng.uniform(20, 60, size=3)
            colour[1 + int(rng.integers(0, 2))] = rng.uniform(120, 200)
        colour = colour + rng.normal(0, 8, size=3)
        img[mask] = colour + 25.0 * _texture(label, rng, yy[mask], xx[mask], height)[:, None]
    img *= rng.uniform(0.85, 1.15)  # exposure of this frame
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------- Cityscapes --

def write_cityscapes(out, seed, num_train, num_val, height, width):
    rng = np.random.default_rng(seed)
    written = 0
    for split, count, cities in (("train", num_train, TRAIN_CITIES), ("val", num_val, VAL_CITIES)):
        for i in range(count):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_000019"
            img_dir = os.path.join(out, "leftImg8bit", split, city)
            gt_dir = os.path.join(out, "gtFine", split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)

            objects = make_layout(rng, height, width)
            index_map = rasterize(objects, height, width)
            lut = np.array([LABEL_IDS["unlabeled"]] + [LABEL_IDS[label] for label, _ in objects], np.uint8)
            image = render(objects, index_map, rng)

            Image.fromarray(image, "RGB").save(os.path.join(img_dir, stem + "_leftImg8bit.png"))
            Image.fromarray(lut[index_map], "L").save(os.path.join(gt_dir, stem + "_gtFine_labelIds.png"))
            annotation = {"imgHeight": height, "imgWidth": width,
                          "objects": [{"label": label, "polygon": poly} for label, poly in objects]}
            with open(os.path.join(gt_dir, stem + "_gtFine_polygons.json"), "w", encoding="utf-8") as f:
                json.dump(annotation, f, indent=1)
            written += 1
    return written


# ------------------------------------------------------------------------- ADE20K --

def make_room(rng, height, width):
    """A random room as (label, polygon) painted in order; "other" is clutter."""
    H, W = height, width
    ceiling = int(H * rng.uniform(0.08, 0.2))
    horizon = int(H * rng.uniform(0.55, 0.72))
    objs = [("wall", _rect(0, 0, W - 1, H - 1)), ("ceiling", _rect(0, 0, W - 1, ceiling)),
            ("floor", [[0, H - 1], [0, horizon + 4], [W // 6, horizon], [5 * W // 6, horizon],
                       [W - 1, horizon + 4], [W - 1, H - 1]])]
    wx, ww = int(rng.uniform(0.05, 0.45) * W), int(rng.uniform(0.2, 0.35) * W)
    wy, wh = ceiling + int(H * rng.uniform(0.05, 0.1)), int(H * rng.uniform(0.2, 0.3))
    objs.append(("windowpane", _rect(wx, wy, wx + ww, wy + wh)))
    px = wx + ww + int(W * 0.05) if wx + ww + int(W * 0.3) < W else int(W * 0.05)
    pw, ph = int(W * rng.uniform(0.12, 0.2)), int(H * rng.uniform(0.12, 0.2))
    objs.append(("painting", _rect(px, wy, px + pw, wy + ph)))
    bx, bw = int(rng.uniform(0.0, 0.5) * W), int(rng.uniform(0.3, 0.45) * W)
    objs.append(("bed", _rect(bx, horizon - int(H * 0.08), bx + bw, min(H - 1, horizon + int(H * 0.18)))))
    tx, tw = int(rng.uniform(0.55, 0.8) * W), int(W * 0.15)
    ty = horizon + int(H * rng.uniform(0.02, 0.12))
    objs.append(("table", _rect(tx, ty, min(W - 1, tx + tw), ty + int(H * 0.06))))
    objs.append(("table", _rect(tx + 1, ty, tx + 3, min(H - 1, ty + int(H * 0.15)))))  # legs
    objs.append(("table", _rect(tx + tw - 3, ty, min(W - 1, tx + tw - 1), min(H - 1, ty + int(H * 0.15)))))
    for _ in range(int(rng.integers(1, 4))):  # clutter the benchmark calls "other"
        cx, cy = int(rng.integers(0, W)), int(rng.integers(horizon, H))
        objs.append(("other", _blob(rng, cx, cy, max(3, int(min(H, W) * rng.uniform(0.04, 0.1))))))
    return [(label, [[int(px), int(py)] for px, py in poly]) for label, poly in objs]


def write_ade20k(out, seed, num_train, num_val, size):
    """ADEChallengeData2016-layout rooms; the long side is ``size``, the short one 60-100%
    of it (a quarter of them portrait). Returns the number of images."""
    rng = np.random.default_rng(seed + 2000)
    written = 0
    for split, prefix, count in (("training", "ADE_train", num_train), ("validation", "ADE_val", num_val)):
        img_dir, ann_dir = os.path.join(out, "images", split), os.path.join(out, "annotations", split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(1, count + 1):
            short = int(size * rng.uniform(0.6, 1.0))
            height, width = (size, short) if rng.random() < 0.25 else (short, size)
            objects = make_room(rng, height, width)
            index_map = rasterize(objects, height, width)
            lut = np.array([0] + [ADE_LABELS[label] for label, _ in objects], np.uint8)
            image = render(objects, index_map, rng, ADE_COLOURS)
            stem = f"{prefix}_{i:08d}"
            Image.fromarray(image, "RGB").save(os.path.join(img_dir, stem + ".jpg"), format="JPEG",
                                               quality=92, optimize=False)
            Image.fromarray(lut[index_map], "L").save(os.path.join(ann_dir, stem + ".png"))
            written += 1
    return written


# ----------------------------------------------------------------------- ImageNet --

def _imagenet_image(rng, class_index, size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    background = rng.uniform(60, 200, size=3)
    img = np.broadcast_to(background, (size, size, 3)).copy()
    img += 20 * np.sin(xx * rng.uniform(0.05, 0.2) + yy * rng.uniform(0.05, 0.2))[..., None]
    cx, cy = rng.uniform(0.3, 0.7, size=2) * size
    r = rng.uniform(0.18, 0.32) * size
    if class_index == 0:    # red disc
        mask, colour = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r, (220, 30, 30)
    elif class_index == 1:  # green square
        mask, colour = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r), (30, 200, 40)
    elif class_index == 2:  # blue triangle (apex up)
        mask = (yy < cy + r) & (np.abs(xx - cx) < (yy - (cy - r)) * 0.6)
        colour = (30, 50, 220)
    else:                   # yellow diagonal stripes over the whole image
        mask, colour = ((xx + yy) % 16) < 7, (230, 210, 30)
    img[mask] = np.array(colour) + rng.normal(0, 15, size=3)
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_imagenet(out, seed, num_train, num_val, size):
    rng = np.random.default_rng(seed + 1000)
    written = 0
    for split, count in (("train", num_train), ("val", num_val)):
        for class_index, (wnid, _) in enumerate(IMAGENET_CLASSES):
            folder = os.path.join(out, split, wnid)
            os.makedirs(folder, exist_ok=True)
            for n in range(count):
                image = _imagenet_image(rng, class_index, size)
                Image.fromarray(image, "RGB").save(os.path.join(folder, f"{wnid}_{n:05d}.JPEG"),
                                                   format="JPEG", quality=90, optimize=False)
                written += 1
    return written


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/demo_cityscapes", help="Cityscapes-layout output root")
    p.add_argument("--imagenet_out", default="data/demo_imagenet",
                   help="ImageNet-layout output root ('' to skip)")
    p.add_argument("--ade_out", default=None,
                   help="ADE20K-layout output root (default: demo_ade20k next to --out; '' to skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_train", type=int, default=20, help="Cityscapes train images")
    p.add_argument("--num_val", type=int, default=6, help="Cityscapes val images")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--ade_num_train", type=int, default=20, help="ADE20K training images")
    p.add_argument("--ade_num_val", type=int, default=6, help="ADE20K validation images")
    p.add_argument("--ade_size", type=int, default=256, help="ADE20K images' long side")
    p.add_argument("--imagenet_train_per_class", type=int, default=16)
    p.add_argument("--imagenet_val_per_class", type=int, default=4)
    p.add_argument("--imagenet_size", type=int, default=64)
    args = p.parse_args(argv)
    for name in ("num_train", "num_val", "height", "width", "ade_num_train", "ade_num_val",
                 "imagenet_train_per_class", "imagenet_val_per_class", "imagenet_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.height < 64 or args.width < 128:
        p.error(f"--height/--width must be at least 64x128 for the scene layout, got {args.height}x{args.width}")
    if args.ade_size < 48:
        p.error(f"--ade_size must be at least 48 for the room layout, got {args.ade_size}")
    if args.ade_out is None:
        args.ade_out = os.path.join(os.path.dirname(os.path.normpath(args.out)), "demo_ade20k")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    n = write_cityscapes(args.out, args.seed, args.num_train, args.num_val, args.height, args.width)
    print(f"wrote {n} Cityscapes-layout scenes ({args.height}x{args.width}) to {args.out}")
    if args.ade_out:
        k = write_ade20k(args.ade_out, args.seed, args.ade_num_train, args.ade_num_val, args.ade_size)
        print(f"wrote {k} ADE20K-layout rooms (long side {args.ade_size}) to {args.ade_out}")
    if args.imagenet_out:
        m = write_imagenet(args.imagenet_out, args.seed, args.imagenet_train_per_class,
                           args.imagenet_val_per_class, args.imagenet_size)
        print(f"wrote {m} ImageNet-layout images ({len(IMAGENET_CLASSES)} classes) to {args.imagenet_out}")
    print(f"next: python tools/convert_dataset.py {args.out}")


if __name__ == "__main__":
    main()
