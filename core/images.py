"""Reading dataset images for display: path checks against the data root, and the model's view of a file.

The model saw each file resized to ``image_size`` x ``image_size`` (bilinear, RGB), so views that overlay
a Grad-CAM map draw on that same square. Paths come from the store and are relative to the run's data
root; :func:`safe_image_path` refuses any that would leave it.
"""
from __future__ import annotations

import io
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


# An uploaded photo may be larger than a dataset image: a 10,000 x 10,000 px photo is accepted (JPEGs are
# decoded at a reduced scale, see ``open_upload``); a 20,000 x 20,000 px bomb is not.
UPLOAD_MAX_PIXELS = 120_000_000


def open_upload(data: bytes, name: str, max_bytes: int, *, max_pixels: int = UPLOAD_MAX_PIXELS,
                size_hint: Optional[int] = None) -> Image.Image:
    """Decode an uploaded file (bytes in memory, never written to disk) as RGB, or raise BadImage with a
    reason that names the file: over ``max_bytes``, empty, not an image, truncated, or a decompression bomb
    (refused from its header, before any pixel is decoded).

    With ``size_hint`` a large JPEG is decoded at the smallest of its 1/2, 1/4, 1/8 scales that is still at
    least that many pixels on each side (PIL's ``draft``), so a 100-megapixel photo costs what a 2-megapixel
    one does; the caller then resizes to the model's input as for any image."""
    if len(data) > max_bytes:
        raise BadImage(f"{name}: {len(data) / 1e6:.1f} MB is over the upload limit of {max_bytes / 1e6:.0f} MB")
    if not data:
        raise BadImage(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # ``max_pixels`` decides, from the header: PIL's own warning (above 89 MP) would refuse a
            # 10,000 x 10,000 px photo that the reduced-scale decoding below handles. PIL still raises
            # DecompressionBombError by itself above twice its limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise BadImage(f"{name}: image too large to decode safely ({w}x{h} > {max_pixels} pixels)")
                if size_hint and im.format == "JPEG":
                    im.draft("RGB", (size_hint, size_hint))
                if im.mode in ("RGBA", "LA", "P", "PA"):
                    im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
                rgb = im.convert("RGB")
                rgb.load()
                return rgb
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{name}: image too large to decode safely ({exc})") from None
    except Image.UnidentifiedImageError:  # its message names only an in-memory buffer
        raise BadImage(f"{name}: not an image PIL can read (no JPEG, PNG, WebP or other known header)") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise BadImage(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from None


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

