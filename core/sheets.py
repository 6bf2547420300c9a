"""Image sheets for print: tiles of labelled square panels in rows on a white page, drawn with Pillow.

Sizes are given in pixels and text in points at the sheet's ``dpi``, so a sheet 7 inches wide at 300 dpi
(2,100 px) reads the same as one at 150 dpi. Nothing here knows what the panels show.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf")


def font(px: int) -> ImageFont.ImageFont:
    for path in _FONT_FILES:
        if os.path.exists(path):
            return ImageFont.truetype(path, px)
    return ImageFont.load_default(size=px)


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def placeholder(side: int, text: str, font) -> np.ndarray:
    im = Image.new("RGB", (side, side), (225, 225, 225))
    d = ImageDraw.Draw(im)
    d.text((side // 2, side // 2), fit_text(d, text, font, side - 10), fill=(90, 90, 90), font=font, anchor="mm")
    return np.asarray(im)


def colour_legend(strip: np.ndarray, low: str, high: str, *, font_px: int, bar_px: int) -> np.ndarray:
    """A colour bar with its end labels, ``low`` left of it and ``high`` right of it, on white: uint8 RGB.

    ``strip`` is the bar itself (h, w, 3, low values left), drawn ``bar_px`` wide at the text's height."""
    f = font(font_px)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(2, font_px // 3)
    w_low, w_high = (round(probe.textlength(t, font=f)) for t in (low, high))
    h = round(font_px * 1.4)
    im = Image.new("RGB", (w_low + bar_px + w_high + 4 * pad, h), "white")
    bar = Image.fromarray(np.asarray(strip, dtype=np.uint8)).resize((bar_px, max(1, round(font_px * 0.9))),
                                                                    Image.Resampling.BILINEAR)
    im.paste(bar, (w_low + 2 * pad, (h - bar.height) // 2))
    d = ImageDraw.Draw(im)
    d.text((pad, h // 2), low, fill=(60, 60, 60), font=f, anchor="lm")
    d.text((w_low + bar_px + 3 * pad, h // 2), high, fill=(60, 60, 60), font=f, anchor="lm")
    return np.asarray(im)


def _spacing(dpi: int) -> tuple[int, int, int]:
    """Page margin, gap between panels of a tile and gap between tiles, in px."""
    return round(0.1 * dpi), round(0.03 * dpi), round(0.15 * dpi)


def panel_side(width_px: int, per_row: int, panels_per_tile: int, dpi: int) -> int:
    """The side of one square panel when ``per_row`` tiles of ``panels_per_tile`` panels fill the width."""
    margin, gap_panel, gap_tile = _spacing(dpi)
    usable = width_px - 2 * margin - (per_row - 1) * gap_tile
    return (usable // per_row - (panels_per_tile - 1) * gap_panel) // panels_per_tile


@dataclass
class Tile:
    """One group on a sheet: header lines above, panels (image, label under it) side by side."""

    header: list[str]
    panels: list[tuple[np.ndarray, str]]


def draw_sheet(title: str, tiles: Sequence[Tile], *, width_px: int, per_row: int, panels_per_tile: int,
               dpi: int, legend: Optional[tuple[np.ndarray, str, str]] = None) -> Image.Image:
    """Tiles in rows on a white page ``width_px`` wide; text sizes are set in points at ``dpi``.

    ``legend`` = (colour bar strip, low label, high label) is drawn at the right end of the title line."""
    pt = dpi / 72.0
    f_title, f_head, f_label = font(round(11 * pt)), font(round(7.5 * pt)), font(round(6.5 * pt))
    margin, gap_panel, gap_tile = _spacing(dpi)
    side = panel_side(width_px, per_row, panels_per_tile, dpi)
    tile_w = panels_per_tile * side + (panels_per_tile - 1) * gap_panel
    head_h, label_h = round(9.5 * pt), round(8.5 * pt)
    n_head = max((len(t.header) for t in tiles), default=0)
    row_h = n_head * head_h + side + label_h + gap_tile
    rows = max(1, -(-len(tiles) // per_row))
    title_h = round(16 * pt)
    page = Image.new("RGB", (width_px, margin + title_h + rows * row_h + margin), "white")
    d = ImageDraw.Draw(page)
    title_w = width_px - 2 * margin
    if legend is not None:
        key = Image.fromarray(colour_legend(legend[0], legend[1], legend[2], font_px=round(6.5 * pt),
                                            bar_px=round(1.2 * dpi)))
        page.paste(key, (width_px - margin - key.width, margin + max(0, (round(11 * pt) - key.height) // 2)))
        title_w -= key.width + gap_tile
    d.text((margin, margin), fit_text(d, title, f_title, title_w), fill="black", font=f_title)
    if not tiles:
        d.text((margin, margin + title_h), "nothing to show", fill=(90, 90, 90), font=f_head)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, per_row)
        x0 = margin + c * (tile_w + gap_tile)
        y = margin + title_h + r * row_h
        for line in tile.header:
            d.text((x0, y), fit_text(d, line, f_head, tile_w), fill="black", font=f_head)
            y += head_h
        y = margin + title_h + r * row_h + n_head * head_h
        for j, (rgb, label) in enumerate(tile.panels[:panels_per_tile]):
            x = x0 + j * (side + gap_panel)
            im = Image.fromarray(rgb)
            if im.size != (side, side):
                im = im.resize((side, side), Image.Resampling.BILINEAR)
            page.paste(im, (x, y))
            d.text((x, y + side + round(1.5 * pt)), fit_text(d, label, f_label, side), fill=(60, 60, 60), font=f_label)
    return page
