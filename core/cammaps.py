"""Stored Grad-CAM maps: float16 bytes for the store, and their rendering as overlays.

Numpy and OpenCV only (no torch), so that the dashboard and the report export can draw maps without
loading the model's framework. ``core.gradcam`` computes the maps and re-exports these functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

# Bytes per stored value: maps are kept as little-endian float16.
_STORE_DTYPE = np.dtype("<f2")
_FLOAT16_MAX = float(np.finfo(np.float16).max)

COLORMAPS = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}
# One colormap and one opacity for every overlay: the gallery, the comparison page, the other pages' tiles
# and the exported sheets, so a colour means the same everywhere. Turbo runs blue (low) to red (high) like
# the familiar jet, without jet's bright bands that read as edges. At 0.4 the object under the map stays
# visible; the comparison page's slider changes it there.
DEFAULT_COLORMAP = "turbo"
DEFAULT_ALPHA = 0.4


# --------------------------------------------------------------------------------------------------
# Names shared by the jobs, the store and the pages (torch-free, so the dashboard can list them)
# --------------------------------------------------------------------------------------------------
# CAM methods in the order pages list them. ``core.gradcam.METHODS`` implements exactly these names.
GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
METHOD_NAMES = GRADIENT_METHODS + ("eigencam", "scorecam")
DEFAULT_METHOD = "gradcam"
METHOD_LABELS = {
    "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "layercam": "LayerCAM",
    "hirescam": "HiResCAM", "eigencam": "Eigen-CAM", "scorecam": "Score-CAM",
}

# What a stored map explains: the predicted class, the true class, or the contrast
# logit[pred] - logit[true] ("why the prediction and not the true class"; misclassified images only).
TARGET_PRED, TARGET_TRUE, TARGET_CONTRAST = "pred", "true", "contrast"
TARGETS = (TARGET_PRED, TARGET_TRUE, TARGET_CONTRAST)
TARGET_LABELS = {TARGET_PRED: "predicted class", TARGET_TRUE: "true class", TARGET_CONTRAST: "predicted vs true"}


# Methods whose map does not depend on the explained class (``core.cam_methods`` marks the same ones
# ``class_specific=False``): the store keeps only their "pred" map.
CLASS_FREE_METHODS = ("eigencam",)

# Maps that know nothing of the model, scored beside the CAM methods by the trust job: a seeded random map
# and a Gaussian centred on the image.
BASELINE_RANDOM, BASELINE_CENTRE = "random", "centre"
BASELINES = (BASELINE_RANDOM, BASELINE_CENTRE)
BASELINE_LABELS = {BASELINE_RANDOM: "random map", BASELINE_CENTRE: "centred map"}


def check_method(name: str) -> str:
    """``name`` if it is a known CAM method, else a ``ValueError`` listing the known ones."""
    if name not in METHOD_NAMES:
        raise ValueError(f"unknown CAM method {name!r}; expected one of {', '.join(METHOD_NAMES)}")
    return name


def parse_methods(text: str, *, all_means: Optional[tuple[str, ...]] = None) -> tuple[str, ...]:
    """Comma-separated method names -> a tuple without repeats, in the order given.

    ``all`` stands for ``all_means`` where the caller gives it. An unknown name, or no name at all, is a
    ``ValueError`` that lists the known names.
    """
    words = [w.strip() for w in str(text).split(",") if w.strip()]
    if all_means is not None and words == ["all"]:
        words = list(all_means)
    if not words:
        raise ValueError(f"no CAM method given; expected a comma-separated list of {', '.join(METHOD_NAMES)}")
    return tuple(dict.fromkeys(check_method(w) for w in words))


def method_label(name: str) -> str:
    """The display name of a CAM method or a baseline map (the name itself when unknown)."""
    return METHOD_LABELS.get(name) or BASELINE_LABELS.get(name) or name


def stored_targets(method: str, right: bool) -> tuple[str, ...]:
    """The targets the store keeps of one image for ``method``: "pred" alone for a right prediction or a
    method that explains no class; else "pred", "true" and "contrast"."""
    if right or method in CLASS_FREE_METHODS:
        return (TARGET_PRED,)
    return TARGETS


@dataclass(frozen=True)
class StoredMaps:
    """The stored raw maps of one image for one CAM method, one map per target.

    ``targets[i]`` names what map ``i`` explains and ``classes[i]`` the class whose score it explains (for
    the contrast: the predicted class, against the true one). A correctly classified image stores only the
    "pred" map: ``map("true")`` then returns it, since the two are the same map. ``data[i]`` holds the
    float16 bytes of map ``i`` as ``encode_maps`` writes them, shape (h, w).
    """

    image_id: int
    method: str
    targets: tuple[str, ...]
    classes: tuple[int, ...]
    h: int
    w: int
    data: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not (len(self.targets) == len(self.classes) == len(self.data)):
            raise ValueError(f"StoredMaps needs one class and one map per target, got {len(self.targets)} "
                             f"targets, {len(self.classes)} classes, {len(self.data)} maps")

    def has(self, target: str) -> bool:
        return target in self.targets or (target == TARGET_TRUE and TARGET_PRED in self.targets
                                           and TARGET_TRUE not in self.targets)

    def get(self, target: str) -> Optional[np.ndarray]:
        """The raw float32 map (h, w) of ``target``, or None when the image has none for it."""
        if target in self.targets:
            i = self.targets.index(target)
        elif target == TARGET_TRUE and TARGET_PRED in self.targets:
            i = self.targets.index(TARGET_PRED)  # right prediction: the true-class map is the pred map
        else:
            return None
        return decode_maps(self.data[i], 1, self.h, self.w)[0]

    def map(self, target: str) -> np.ndarray:
        cam = self.get(target)
        if cam is None:
            raise KeyError(f"image {self.image_id} has no {self.method} map for target {target!r}; "
                           f"stored: {', '.join(self.targets)}")
        return cam

    def class_of(self, target: str) -> Optional[int]:
        if target in self.targets:
            return self.classes[self.targets.index(target)]
        if target == TARGET_TRUE and TARGET_PRED in self.targets:
            return self.classes[self.targets.index(TARGET_PRED)]
        return None


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------
def encode_maps(maps: np.ndarray) -> bytes:
    """Raw maps (K, h, w) -> little-endian float16 bytes (2 * K * h * w; 784 for two 14x14 maps)."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or not np.issubdtype(maps.dtype, np.floating):
        raise ValueError(f"maps must be a float array (K, h, w), got {maps.dtype} {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("maps must be finite, got NaN or inf values")
    peak = float(np.abs(maps).max()) if maps.size else 0.0
    if peak > _FLOAT16_MAX:
        raise ValueError(f"maps must fit float16 (|value| <= {_FLOAT16_MAX:g}), got a peak of {peak:g}")
    return maps.astype(_STORE_DTYPE).tobytes()


def decode_maps(data: bytes, k: int, h: int, w: int) -> np.ndarray:
    """Bytes from ``encode_maps`` -> float32 array (k, h, w)."""
    expected = k * h * w * _STORE_DTYPE.itemsize
    if len(data) != expected:
        raise ValueError(f"map data for ({k}, {h}, {w}) float16 must be {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=_STORE_DTYPE).astype(np.float32).reshape(k, h, w)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a raw map (h, w) to ``size`` = (H, W); float32."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"cam must be a 2-D map (h, w), got shape {cam.shape}")
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be (H, W) with positive sides, got {size}")
    return cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)


def _normalise(cam: np.ndarray, normalize) -> np.ndarray:
    """Map a non-negative raw map to [0, 1] for display."""
    if normalize == "image":
        peak = float(cam.max())
        return cam / peak if peak > 0 else np.zeros_like(cam)
    if normalize == "none":
        return np.clip(cam, 0.0, 1.0)
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2 and normalize[0] == "fixed":
        vmax = float(normalize[1])
        if not vmax > 0:
            raise ValueError(f"normalize=('fixed', vmax) needs vmax > 0, got {normalize[1]!r}")
        return np.clip(cam / vmax, 0.0, 1.0)
    raise ValueError(f"normalize must be 'image', 'none' or ('fixed', vmax), got {normalize!r}")


def overlay(
    rgb: np.ndarray,
    cam: np.ndarray,
    *,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = DEFAULT_ALPHA,
    normalize: str | tuple[str, float] = "image",
) -> np.ndarray:
    """Blend a colour-mapped Grad-CAM onto an RGB image; returns a new uint8 (H, W, 3).

    The raw map is upsampled to the image's own size, scaled to [0, 1] by ``normalize`` ("image":
    divided by its own peak; "none": taken as already in [0, 1]; ("fixed", vmax): divided by vmax, so
    images share one scale), coloured with an OpenCV colormap and blended:
    ``(1 - alpha) * rgb + alpha * heat``. alpha=0 gives the image, alpha=1 the heat map.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be a uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or not np.isfinite(cam).all():
        raise ValueError(f"cam must be a finite 2-D map (h, w), got shape {cam.shape}")
    level = _normalise(upsample(cam, rgb.shape[:2]), normalize)
    heat = cv2.applyColorMap(np.round(level * 255).astype(np.uint8), COLORMAPS[colormap])
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def colorbar_strip(colormap: str = DEFAULT_COLORMAP, width: int = 256, height: int = 12) -> np.ndarray:
    """A horizontal colour bar of ``colormap`` as uint8 RGB (height, width, 3): the lowest map value on the
    left, the highest on the right, coloured exactly as ``overlay`` colours them (at full opacity)."""
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    if width < 2 or height < 1:
        raise ValueError(f"a colour bar needs width >= 2 and height >= 1, got {width}x{height}")
    ramp = np.round(np.linspace(0, 255, width)).astype(np.uint8)[None, :].repeat(height, axis=0)
    return cv2.cvtColor(cv2.applyColorMap(ramp, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------------
# Localisation
# --------------------------------------------------------------------------------------------------
def peak_location(cam: np.ndarray, input_size: int, image_size: tuple[int, int]) -> tuple[float, float]:
    """Where a map peaks, in the original image's pixel coordinates (x, y).

    The raw map is upsampled (bilinear) to the model's square input, its argmax taken there (the first one
    on ties), and the pixel centre scaled back to the original ``image_size`` = (width, height).
    """
    up = upsample(cam, (input_size, input_size))
    iy, ix = np.unravel_index(int(np.argmax(up)), up.shape)
    w, h = image_size
    return (ix + 0.5) * w / input_size, (iy + 0.5) * h / input_size


def pointing_game(cams: list[np.ndarray], boxes: list[tuple[float, float, float, float]], input_size: int,
                  image_sizes: list[tuple[int, int]]) -> dict[str, float]:
    """Share of maps whose peak falls inside the object's box [x0, y0, x1, y1) ("pointing game", Zhang et
    al., 2016), beside the rate a uniformly random point would reach (the mean share of the image each box
    covers)."""
    if not (len(cams) == len(boxes) == len(image_sizes)):
        raise ValueError(f"need as many maps, boxes and sizes, got {len(cams)}, {len(boxes)}, {len(image_sizes)}")
    if not cams:
        raise ValueError("pointing_game needs at least one map")
    hits, areas = 0, []
    for cam, (x0, y0, x1, y1), (w, h) in zip(cams, boxes, image_sizes):
        x, y = peak_location(cam, input_size, (w, h))
        hits += x0 <= x < x1 and y0 <= y < y1
        areas.append(max(0.0, x1 - x0) * max(0.0, y1 - y0) / float(w * h))
    return {"n": len(cams), "hit_rate": hits / len(cams), "random_rate": float(np.mean(areas))}
