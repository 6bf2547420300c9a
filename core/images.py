"""Reading dataset images for display: path checks against the data root, and the model's view of a file.

The model saw each file resized to ``image_size`` x ``image_size`` (bilinear, RGB), so views that overlay
a Grad-CAM map draw on that same square. Paths come from the store and are relative to the run's data
root; :func:`safe_image_path` refuses any that would leave it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Optional

import numpy as np
from PIL import Image, ImageFile


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
    """The file exactly as the model saw it at evaluation (the same decoding and resize), uint8 RGB."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    return model_pixels(open_rgb(safe_image_path(data_root, relpath)), size).copy()


# --------------------------------------------------------------------------- decoding (shared with training)
# Refuse to decode anything larger than this many pixels (a 20000x20000 bomb is 400 MP).
MAX_PIXELS = 40_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImage(ValueError):
    """One image cannot be used; the message is the reason recorded in the store."""


def open_rgb(path: Path) -> Image.Image:
    """Decode an image as RGB, refusing unreadable, truncated or oversized files with a BadImage reason."""
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise BadImage(f"image too large to decode safely ({w}x{h} > {MAX_PIXELS} pixels)")
                if im.mode in ("RGBA", "LA", "P", "PA"):
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, im)
                rgb = im.convert("RGB")
                rgb.load()
                return rgb
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"image too large to decode safely ({exc})") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise BadImage(f"cannot decode image: {type(exc).__name__}: {exc}") from None


def read_image_header(path: Path) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    """(width, height) from the file header without decoding, or (None, reason) for an unusable file."""
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        return None, "file not found"
    except Image.DecompressionBombError as exc:
        return None, f"image too large to decode safely ({exc})"
    except Exception as exc:
        return None, f"cannot read image header: {type(exc).__name__}: {exc}"
    if w * h > MAX_PIXELS:
        return (w, h), f"image too large to decode safely ({w}x{h} > {MAX_PIXELS} pixels)"
    return (w, h), None


def model_pixels(img: Image.Image, size: int) -> np.ndarray:
    """The exact pixels the model sees at evaluation: resized (bilinear) to size x size, uint8 HWC."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)

