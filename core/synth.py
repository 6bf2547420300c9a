"""A small synthetic "sports" image set, so the classifier can be trained and explained offline.

Each class is one drawn object (a ball with seams, a racket, a hoop...) pasted at a random place, scale
(45-70 % of the side) and small rotation onto a random textured background. Each class has its own main
colour, jittered, and a detail colour drawn from the shared palette; backgrounds take any colour. Shape and
colour together make the classes learnable by a VGG-19 trained from scratch on a CPU in minutes (with one
palette for all classes, it stayed at chance for hundreds of steps). Every object's bounding box is recorded,
which lets a Grad-CAM map be checked against where the object really is (the "pointing game").

The files follow the Kaggle sports layout that ``core.data`` reads::

    <root>/train|valid|test/<class name>/<NNN>.jpg
    <root>/sports.csv      class id,filepaths,labels,data set
    <root>/boxes.json      relative path -> [x0, y0, x1, y1]
    <root>/manifest.json   the parameters and generator version, written last

The same seed gives byte-identical files: each image draws from its own ``numpy`` Generator seeded
with (seed, split, class, index), so images do not depend on the order they are made in.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

# Bump when the drawings change, so old caches are not mistaken for current ones.
VERSION = 3
SPLITS = ("train", "valid", "test")
CLASS_NAMES = (
    "demo ball",
    "demo racket",
    "demo hoop",
    "demo flag",
    "demo runner",
    "demo archery",
    "demo puck",
    "demo shuttlecock",
    "demo dumbbell",
    "demo skis",
)
DEFAULT_COUNTS = {"n_train": 150, "n_valid": 10, "n_test": 20}
DEFAULT_IMAGE_SIZE = 96
JPEG_QUALITY = 92

_OWN_NAMES = {*SPLITS, "sports.csv", "boxes.json", "manifest.json"}

# Class i's main colour is PALETTE[i]; the detail colours come from the whole palette.
PALETTE = np.array(
    [
        (235, 235, 230),  # white
        (30, 30, 35),  # black
        (200, 40, 40),  # red
        (240, 140, 30),  # orange
        (235, 210, 50),  # yellow
        (40, 90, 200),  # blue
        (40, 150, 70),  # green
        (120, 75, 40),  # brown
        (130, 60, 160),  # purple
        (140, 140, 140),  # grey
    ],
    dtype=np.float32,
)

# --------------------------------------------------------------------------------------------------
# Objects. Each drawer paints on a transparent L x L square; c1 is the main colour, c2 the detail.
# --------------------------------------------------------------------------------------------------
Colour = tuple[int, int, int]
Drawer = Callable[[ImageDraw.ImageDraw, float, np.random.Generator, Colour, Colour], None]


def _ball(d, L, rng, c1, c2):
    d.ellipse([0.05 * L, 0.05 * L, 0.95 * L, 0.95 * L], fill=c1)
    w = max(1, round(0.05 * L))
    # Two seams curving in from the sides, as on a baseball.
    d.arc([-0.45 * L, 0.12 * L, 0.38 * L, 0.88 * L], -55, 55, fill=c2, width=w)
    d.arc([0.62 * L, 0.12 * L, 1.45 * L, 0.88 * L], 125, 235, fill=c2, width=w)


def _racket(d, L, rng, c1, c2):
    cx, cy, rx, ry = 0.5 * L, 0.33 * L, 0.3 * L, 0.3 * L
    thin = max(1, round(0.02 * L))
    for k in range(-3, 4):  # strings, clipped to the oval head
        x = cx + k * rx / 4
        h = ry * math.sqrt(max(0.0, 1 - ((x - cx) / rx) ** 2))
        d.line([x, cy - h, x, cy + h], fill=c2, width=thin)
        y = cy + k * ry / 4
        h = rx * math.sqrt(max(0.0, 1 - ((y - cy) / ry) ** 2))
        d.line([cx - h, y, cx + h, y], fill=c2, width=thin)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=c1, width=max(2, round(0.07 * L)))
    w = max(2, round(0.06 * L))
    d.line([cx - 0.1 * L, cy + ry, cx, 0.72 * L], fill=c1, width=w)
    d.line([cx + 0.1 * L, cy + ry, cx, 0.72 * L], fill=c1, width=w)
    d.rectangle([cx - 0.05 * L, 0.7 * L, cx + 0.05 * L, 0.98 * L], fill=c1)


def _hoop(d, L, rng, c1, c2):
    w = max(2, round(0.05 * L))
    d.rectangle([0.08 * L, 0.04 * L, 0.92 * L, 0.5 * L], outline=c1, width=w)
    d.rectangle([0.36 * L, 0.22 * L, 0.64 * L, 0.44 * L], outline=c1, width=max(1, w // 2))
    thin = max(1, round(0.025 * L))
    top_x = np.linspace(0.3 * L, 0.7 * L, 5)
    bot_x = np.linspace(0.4 * L, 0.6 * L, 5)
    for i in range(5):  # the net: lines crossing from the rim to its narrower bottom
        d.line([top_x[i], 0.55 * L, bot_x[4 - i], 0.9 * L], fill=c2, width=thin)
        d.line([top_x[i], 0.55 * L, bot_x[i], 0.9 * L], fill=c2, width=thin)
    d.ellipse([0.28 * L, 0.49 * L, 0.72 * L, 0.61 * L], outline=c2, width=w)


def _flag(d, L, rng, c1, c2):
    d.line([0.18 * L, 0.03 * L, 0.18 * L, 0.98 * L], fill=c2, width=max(2, round(0.06 * L)))
    tip_y = (0.22 + 0.08 * rng.random()) * L
    d.polygon([(0.2 * L, 0.05 * L), (0.95 * L, tip_y), (0.2 * L, 0.48 * L)], fill=c1)


def _runner(d, L, rng, c1, c2):
    w = max(2, round(0.07 * L))
    d.ellipse([0.4 * L, 0.02 * L, 0.6 * L, 0.22 * L], fill=c1)
    neck, hip = (0.5 * L, 0.25 * L), (0.5 * L, 0.6 * L)
    d.line([neck, hip], fill=c1, width=w)
    swing = 0.25 + 0.15 * rng.random()
    for sx in (-1, 1):  # arms and legs swung in opposite directions, as in a stride
        d.line([(0.5 * L, 0.32 * L), (0.5 * L + sx * swing * L, 0.45 * L - sx * 0.1 * L)], fill=c1, width=w)
        d.line([hip, (0.5 * L - sx * swing * L, 0.97 * L)], fill=c1, width=w)


def _archery(d, L, rng, c1, c2):
    w = max(2, round(0.07 * L))
    d.arc([-0.3 * L, 0.04 * L, 0.7 * L, 0.96 * L], -75, 75, fill=c1, width=w)
    top = (0.2 * L + 0.5 * L * math.cos(math.radians(75)), 0.5 * L - 0.46 * L * math.sin(math.radians(75)))
    bot = (top[0], L - top[1])
    thin = max(1, round(0.025 * L))
    d.line([top, (0.12 * L, 0.5 * L), bot], fill=c2, width=thin)  # the drawn string
    d.line([0.12 * L, 0.5 * L, 0.88 * L, 0.5 * L], fill=c2, width=max(1, round(0.04 * L)))
    d.polygon([(0.98 * L, 0.5 * L), (0.84 * L, 0.42 * L), (0.84 * L, 0.58 * L)], fill=c2)
    d.polygon([(0.08 * L, 0.4 * L), (0.2 * L, 0.5 * L), (0.08 * L, 0.6 * L)], fill=c1)


def _puck(d, L, rng, c1, c2):
    d.ellipse([0.08 * L, 0.5 * L, 0.92 * L, 0.78 * L], fill=c1)
    d.rectangle([0.08 * L, 0.36 * L, 0.92 * L, 0.64 * L], fill=c1)
    d.ellipse([0.08 * L, 0.22 * L, 0.92 * L, 0.5 * L], fill=c1, outline=c2, width=max(2, round(0.05 * L)))


def _shuttlecock(d, L, rng, c1, c2):
    d.polygon([(0.38 * L, 0.78 * L), (0.62 * L, 0.78 * L), (0.92 * L, 0.05 * L), (0.08 * L, 0.05 * L)], fill=c1)
    thin = max(1, round(0.03 * L))
    for t in np.linspace(0.2, 0.8, 4):  # feather ribs
        d.line([0.4 * L + 0.2 * L * t, 0.78 * L, 0.08 * L + 0.84 * L * t, 0.05 * L], fill=c2, width=thin)
    d.chord([0.36 * L, 0.66 * L, 0.64 * L, 0.98 * L], 0, 180, fill=c2)


def _dumbbell(d, L, rng, c1, c2):
    d.rectangle([0.12 * L, 0.45 * L, 0.88 * L, 0.55 * L], fill=c2)
    for x0, x1 in ((0.14, 0.28), (0.72, 0.86)):
        d.rectangle([x0 * L, 0.2 * L, x1 * L, 0.8 * L], fill=c1)
    for x0, x1 in ((0.03, 0.14), (0.86, 0.97)):
        d.rectangle([x0 * L, 0.3 * L, x1 * L, 0.7 * L], fill=c1)


def _skis(d, L, rng, c1, c2):
    w = max(2, round(0.08 * L))
    for off in (0.0, 0.22):
        x0, y0, x1, y1 = (0.08 + off) * L, 0.97 * L, (0.6 + off) * L, 0.12 * L
        d.line([x0, y0, x1, y1], fill=c1, width=w)
        # The turned-up tip.
        d.line([x1, y1, x1 + 0.1 * L, y1 - 0.02 * L], fill=c1, width=w)
        mx, my = x0 + 0.45 * (x1 - x0), y0 + 0.45 * (y1 - y0)
        d.rectangle([mx - 0.06 * L, my - 0.04 * L, mx + 0.06 * L, my + 0.04 * L], fill=c2)


DRAWERS: tuple[Drawer, ...] = (
    _ball, _racket, _hoop, _flag, _runner, _archery, _puck, _shuttlecock, _dumbbell, _skis,
)


# --------------------------------------------------------------------------------------------------
# Backgrounds: float32 H x W x 3 arrays in [0, 255].
# --------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise: a coarse random grid, bilinearly enlarged to size x size, values in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(40, 220, size=3).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b = _random_colour(rng), _random_colour(rng)
    if kind == 0:  # blotchy noise
        t = _smooth_noise(rng, size, int(rng.integers(3, 8)))
        img = a + (b - a) * t[..., None]
    elif kind == 1:  # linear gradient in a random direction
        ang = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(ang) + yy * math.sin(ang)
        t = (t - t.min()) / (t.max() - t.min() + 1e-6)
        img = a + (b - a) * t[..., None]
    elif kind == 2:  # stripes at a random angle and period
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(0.08, 0.3)
        t = (np.sin(2 * math.pi * (xx * math.cos(ang) + yy * math.sin(ang)) / period) > 0).astype(np.float32)
        img = a + (b - a) * (0.35 * t)[..., None]
    elif kind == 3:  # grass: green with vertical blade streaks
        base = np.array([60, 130, 50], np.float32) + rng.uniform(-25, 25, 3).astype(np.float32)
        streaks = rng.normal(0, 1, size=(1, size)).astype(np.float32) * 18
        img = base + (streaks + rng.normal(0, 10, (size, size)).astype(np.float32))[..., None]
    else:  # court: a flat floor with a few painted lines
        img = np.broadcast_to(a, (size, size, 3)).copy()
        line = np.clip(a + rng.choice([-1, 1]) * 90, 0, 255)
        w = max(1, size // 48)
        for _ in range(int(rng.integers(1, 4))):
            p = int(rng.integers(0, size - w))
            if rng.random() < 0.5:
                img[:, p : p + w] = line
            else:
                img[p : p + w, :] = line
    img = img + rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)
    return np.clip(img, 0, 255)


# --------------------------------------------------------------------------------------------------
# One example
# --------------------------------------------------------------------------------------------------
def _pick_colours(rng: np.random.Generator, class_index: int) -> tuple[Colour, Colour]:
    """The class's own main colour, jittered, and a different detail colour from the palette."""
    i = class_index % len(PALETTE)
    main = np.clip(PALETTE[i] + rng.uniform(-25, 25, size=3), 0, 255)
    j = int(rng.choice([k for k in range(len(PALETTE)) if k != i]))
    return tuple(int(v) for v in main), tuple(int(v) for v in PALETTE[j])


def render_example(
    rng: np.random.Generator, class_index: int, image_size: int
) -> tuple[Image.Image, list[int], np.ndarray]:
    """Draw one image of class ``class_index``.

    Returns the RGB image, the object's box [x0, y0, x1, y1] (x1, y1 exclusive, pixels) and the
    object's boolean mask; pixels outside the mask are background.
    """
    if not 0 <= class_index < len(DRAWERS):
        raise ValueError(f"class_index must be in [0, {len(DRAWERS)}), got {class_index}")
    bg = _background(rng, image_size)
    # The object is drawn at twice its final size and scaled down, which smooths its edges.
    side = rng.uniform(0.45, 0.7) * image_size
    big = max(8, round(2 * side))
    c1, c2 = _pick_colours(rng, class_index)
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    DRAWERS[class_index](ImageDraw.Draw(layer), float(big), rng, c1 + (255,), c2 + (255,))
    if rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    layer = layer.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BICUBIC, expand=True)
    layer = layer.crop(layer.getchannel("A").getbbox())
    w, h = max(1, round(layer.width / 2)), max(1, round(layer.height / 2))
    layer = layer.resize((w, h), Image.Resampling.BOX)
    # Fully transparent pixels count as background; faint edge pixels as object.
    alpha = np.asarray(layer.getchannel("A"), dtype=np.float32) / 255.0
    x0 = int(rng.integers(0, image_size - w + 1))
    y0 = int(rng.integers(0, image_size - h + 1))
    obj = np.asarray(layer.convert("RGB"), dtype=np.float32)
    patch = bg[y0 : y0 + h, x0 : x0 + w]
    bg[y0 : y0 + h, x0 : x0 + w] = patch * (1 - alpha[..., None]) + obj * alpha[..., None]
    mask = np.zeros((image_size, image_size), dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + w] = alpha > 0
    ys, xs = np.nonzero(mask)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return Image.fromarray(np.round(bg).astype(np.uint8), "RGB"), box, mask


def example_rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    """The Generator for one image, independent of every other image's."""
    return np.random.default_rng([seed, SPLITS.index(split), class_index, index])


# --------------------------------------------------------------------------------------------------
# The data set on disk
# --------------------------------------------------------------------------------------------------
def default_demo_root(seed: int = 0) -> Path:
    """``$SPORTS_CACHE`` when set, else ``~/.cache/sports-cam/demo-v<VERSION>-seed<seed>``."""
    env = os.environ.get("SPORTS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sports-cam" / f"demo-v{VERSION}-seed{seed}"


def _manifest(seed, n_classes, n_train, n_valid, n_test, image_size) -> dict:
    return {
        "version": VERSION,
        "seed": seed,
        "n_classes": n_classes,
        "n_train": n_train,
        "n_valid": n_valid,
        "n_test": n_test,
        "image_size": image_size,
    }


def _is_complete(root: Path, manifest: dict) -> bool:
    try:
        found = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if found != manifest or not (root / "sports.csv").is_file() or not (root / "boxes.json").is_file():
        return False
    per_class = manifest["n_train"] + manifest["n_valid"] + manifest["n_test"]
    return sum(1 for _ in root.glob("*/*/*.jpg")) == per_class * manifest["n_classes"]


def _write(root: Path, manifest: dict) -> None:
    seed, size = manifest["seed"], manifest["image_size"]
    counts = {s: manifest[f"n_{s}"] for s in SPLITS}
    width = max(3, len(str(max(counts.values()) - 1)))
    rows, boxes = [], {}
    for split in SPLITS:
        for c in range(manifest["n_classes"]):
            folder = root / split / CLASS_NAMES[c]
            folder.mkdir(parents=True)
            for i in range(counts[split]):
                img, box, _ = render_example(example_rng(seed, split, c, i), c, size)
                rel = f"{split}/{CLASS_NAMES[c]}/{i:0{width}d}.jpg"
                img.save(root / rel, format="JPEG", quality=JPEG_QUALITY)
                rows.append((c, rel, CLASS_NAMES[c], split))
                boxes[rel] = box
    with open(root / "sports.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["class id", "filepaths", "labels", "data set"])
        w.writerows(rows)
    (root / "boxes.json").write_text(json.dumps(boxes, indent=0, sort_keys=True))
    # Written last: its presence with matching parameters is what marks the set as complete.
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def generate_demo_dataset(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_classes: int = len(CLASS_NAMES),
    n_train: int = DEFAULT_COUNTS["n_train"],
    n_valid: int = DEFAULT_COUNTS["n_valid"],
    n_test: int = DEFAULT_COUNTS["n_test"],
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Path:
    """Make the demo set under ``root`` (counts are per class) and return ``root``.

    A complete set made with the same parameters is reused as it is. A partial one, or one made with
    other parameters or by another generator version, is replaced. The set is written to a temporary
    sibling folder and renamed into place, so an interrupted run never leaves a folder that looks
    complete. A folder holding anything other than a demo set is left alone (ValueError).
    """
    if not 2 <= n_classes <= len(CLASS_NAMES):
        raise ValueError(f"n_classes must be in [2, {len(CLASS_NAMES)}], got {n_classes}")
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if n < 1:
            raise ValueError(f"{name} must be at least 1, got {n}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    root = Path(root)
    manifest = _manifest(seed, n_classes, n_train, n_valid, n_test, image_size)
    if _is_complete(root, manifest):
        return root
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"demo data root {root} exists and is not a folder")
        strangers = sorted(p.name for p in root.iterdir() if p.name not in _OWN_NAMES)
        if strangers:
            raise ValueError(
                f"demo data root {root} holds files that are not part of a demo set "
                f"({', '.join(strangers[:3])}); expected an empty folder or an earlier demo set"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    old = root.with_name(f".{root.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write(tmp, manifest)
        if root.exists():
            os.replace(root, old)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return root


def load_boxes(root: str | os.PathLike) -> dict[str, list[float]]:
    """The object boxes of a demo set: relative image path -> [x0, y0, x1, y1] in pixels."""
    path = Path(root) / "boxes.json"
    if not path.is_file():
        raise ValueError(f"{path}: no such file; expected a demo set made by generate_demo_dataset")
    return {k: [float(v) for v in box] for k, box in json.loads(path.read_text()).items()}
