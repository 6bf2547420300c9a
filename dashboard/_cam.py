"""Decoding stored Grad-CAM maps and drawing them over an image (same signatures as ``core.gradcam``)."""
from __future__ import annotations

from typing import Union

import cv2
import numpy as np

Normalize = Union[str, tuple]

COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}


def decode_maps(data: bytes, k: int, h: int, w: int) -> np.ndarray:
    """float16 bytes of shape (k, h, w) -> float32 array (k, h, w)."""
    expected = k * h * w * 2
    if len(data) != expected:
        raise ValueError(f"map data has {len(data)} bytes, expected {expected} for float16 ({k}, {h}, {w})")
    return np.frombuffer(data, dtype=np.float16).reshape(k, h, w).astype(np.float32)


def overlay(
    rgb_uint8: np.ndarray,
    cam: np.ndarray,
    *,
    colormap: str = "jet",
    alpha: float = 0.5,
    normalize: Normalize = "image",
) -> np.ndarray:
    """Blend ``cam`` (h, w), upsampled bilinearly to the image, over ``rgb_uint8`` (H, W, 3)."""
    if rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3 or rgb_uint8.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb_uint8.shape} {rgb_uint8.dtype}")
    if cam.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {cam.shape}")
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap {colormap!r} unknown; expected one of {sorted(COLORMAPS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    H, W = rgb_uint8.shape[:2]
    m = cv2.resize(np.nan_to_num(cam.astype(np.float32)), (W, H), interpolation=cv2.INTER_LINEAR)
    m = np.maximum(m, 0.0)
    if normalize == "image":
        top = float(m.max())
        m = m / top if top > 0 else m
    elif normalize == "none":
        pass
    elif isinstance(normalize, tuple) and len(normalize) == 2 and normalize[0] == "fixed":
        vmax = float(normalize[1])
        m = m / vmax if vmax > 0 else np.zeros_like(m)
    else:
        raise ValueError(f"normalize must be 'image', 'none' or ('fixed', vmax), got {normalize!r}")
    heat = cv2.applyColorMap(np.uint8(np.clip(m, 0.0, 1.0) * 255), COLORMAPS[colormap])
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    out = (1.0 - alpha) * rgb_uint8.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
