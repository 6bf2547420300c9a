"""Reading dataset images for display: path checks against the data root, and the model's view of a file.

The model saw each file resized to ``image_size`` x ``image_size`` (bilinear, RGB), so views that overlay
a Grad-CAM map draw on that same square. Paths come from the store and are relative to the run's data
root; :func:`safe_image_path` refuses any that would leave it.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image


def safe_image_path(data_root: str | os.PathLike, relpath: str) -> Path:
    """``data_root / relpath``, refusing ``..`` parts, absolute paths and links that resolve outside the root.

    Raises ``ValueError`` naming the path when it would escape, ``FileNotFoundError`` when it is inside
    but missing.
    """
    if not relpath or not str(relpath).strip():
        raise ValueError(f"image path {relpath!r} is empty; expected a path relative to the data root")
    rel = str(relpath)
    posix, win = PurePosixPath(rel.replace("\\", "/")), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or rel.startswith(("/", "\\")):
        raise ValueError(f"image path {relpath!r} is absolute; expected a path relative to the data root")
    if ".." in posix.parts:
        raise ValueError(f"image path {relpath!r} contains '..'; expected a path inside the data root")
    root = Path(data_root).resolve()
    candidate = root.joinpath(*posix.parts)
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"image path {relpath!r} resolves to {resolved}, outside the data root {root}")
    if not resolved.is_file():
        raise FileNotFoundError(f"image {relpath!r} not found under {root}")
    return resolved


def load_display_image(data_root: str | os.PathLike, relpath: str, size: int) -> np.ndarray:
    """The file as the model saw it: RGB, resized to ``size`` x ``size`` with bilinear filtering, uint8."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    path = safe_image_path(data_root, relpath)
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the file is much larger
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).copy()
