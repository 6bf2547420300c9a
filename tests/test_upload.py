"""Uploaded files: every bad kind gets one reason naming the file; odd colour modes decode as RGB."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.images import MAX_PIXELS, BadImage, open_upload

LIMIT = 5_000_000


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(mode: str = "RGB", size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


@pytest.mark.parametrize("mode, fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"),
                                       ("P", "PNG"), ("RGB", "WEBP")])
def test_colour_modes_decode_as_rgb(mode, fmt):
    img = open_upload(_bytes(_photo(mode), fmt), f"x.{fmt.lower()}", LIMIT)
    assert img.mode == "RGB" and img.size == (40, 30)


def test_rgba_transparency_becomes_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert open_upload(_bytes(rgba, "PNG"), "t.png", LIMIT).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("data, message", [
    (b"", "empty file (0 bytes)"),
    (b"hello, this is text and not a photo\n" * 10, "not an image PIL can read"),
    (b"x" * (LIMIT + 1), "over the upload limit of 5 MB"),
])
def test_bad_uploads_are_named(data, message):
    with pytest.raises(BadImage) as err:
        open_upload(data, "holiday.jpg", LIMIT)
    assert str(err.value).startswith("holiday.jpg: ") and message in str(err.value)


def test_a_truncated_jpeg_is_refused():
    data = _bytes(_photo(size=(200, 200)), "JPEG", quality=95)
    with pytest.raises(BadImage, match="cut.jpg: cannot decode image"):
        open_upload(data[: len(data) // 2], "cut.jpg", LIMIT)


def test_a_bomb_is_refused_from_its_header():
    # A 20,000 x 20,000 PNG of one colour compresses to a small file; decoding it would take 1.2 GB.
    data = _bytes(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(data) < LIMIT
    with pytest.raises(BadImage, match=r"bomb.png: image too large to decode safely \(.*400000000 pixels"):
        open_upload(data, "bomb.png", LIMIT)


def test_a_large_photo_is_decoded_at_a_reduced_scale():
    big = Image.new("RGB", (8_000, 6_000), (10, 200, 30))
    assert 8_000 * 6_000 > MAX_PIXELS / 2
    img = open_upload(_bytes(big, "JPEG", quality=80), "big.jpg", 50_000_000, size_hint=224)
    assert 224 <= min(img.size) and img.size[0] <= 8_000 // 8 * 2  # drafted to 1/8 or 1/4 scale
    assert abs(np.asarray(img)[10, 10].astype(int) - (10, 200, 30)).max() < 10
