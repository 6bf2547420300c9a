"""The demo's pictures: ten drawn objects on random textured backgrounds, one example at a time.

Each class is one drawn object (a ball with seams, a racket, a hoop...) pasted at a random place, scale
(45-70 % of the side) and small rotation onto a random textured background. Each class has its own main
colour, jittered, and a detail colour drawn from the shared palette; backgrounds take any colour. Shape and
colour together make the classes learnable by a VGG-19 trained from scratch on a CPU in minutes (with one
palette for all classes, it stayed at chance for hundreds of steps). Every object's bounding box is returned,
which lets a Grad-CAM map be checked against where the object really is (the "pointing game").

:func:`render_example` draws from the Generator it is given and from nothing else. ``core.synth`` writes the
data set to disk.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

# Bump when the drawings change, so old caches are not mistaken for current ones.
VERSION = 3
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
