"""Images as the model saw them, with a stored map blended over them: one view, and grids of error tiles.

The store holds raw maps (``core.cammaps.StoredMaps``); the overlay is drawn here, at display time, and the
JPEG it makes is cached per (image, map, colours), so paging back and forth costs nothing.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from core.cammaps import (
    DEFAULT_ALPHA,
    DEFAULT_COLORMAP,
    DEFAULT_METHOD,
    TARGET_PRED,
    TARGET_TRUE,
    StoredMaps,
    colorbar_strip,
    overlay,
)
from core.images import load_display_image
from core.sheets import colour_legend
from dashboard import loaders, reviews_ui
from dashboard.context import Ctx

TILES_PER_ROW = 5
TILE_PX = 224
TILE_ALPHA = DEFAULT_ALPHA
LEGEND_PX = 280  # width of a colour bar with its labels, CSS px

Picture = Union[bytes, str]  # JPEG bytes, or the reason the image cannot be shown


def map_of_class(maps: Optional[StoredMaps], cls: int) -> Optional[np.ndarray]:
    """The stored map that explains class ``cls`` (the predicted or the true class's), ``None`` when the image
    has none for it."""
    if maps is None:
        return None
    for target in (TARGET_PRED, TARGET_TRUE):
        if maps.class_of(target) == cls:
            return maps.get(target)
    return None


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


@st.cache_data(show_spinner=False, max_entries=2000)
def render_view(
    data_root: str,
    relpath: str,
    size: int,
    cam: Optional[np.ndarray] = None,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = DEFAULT_ALPHA,
    normalize: Any = "image",
) -> bytes:
    """JPEG of the model's view of an image (``size`` px square), with the raw map ``cam`` (h, w) over it."""
    rgb = load_display_image(data_root, relpath, size)
    if cam is not None:
        rgb = overlay(rgb, cam, colormap=colormap, alpha=alpha, normalize=normalize)
    return _jpeg(rgb)


def picture(ctx: Ctx, relpath: str, size: int, cam: Optional[np.ndarray] = None, *, colormap: str = DEFAULT_COLORMAP,
            alpha: float = TILE_ALPHA, normalize: Any = "image") -> Picture:
    """``render_view`` of a run's image, at most the run's input size, or the reason it cannot be shown."""
    try:
        return render_view(ctx.info.data_root, relpath, min(size, ctx.info.image_size), cam, colormap, alpha,
                           normalize)
    except (OSError, ValueError) as exc:
        return f"cannot show {relpath}: {exc}"


@st.cache_data(show_spinner=False, max_entries=64)
def legend_png(colormap: str, low: str, high: str) -> bytes:
    """PNG of the colour bar of ``colormap`` between its two end labels (drawn at twice the shown size)."""
    rgb = colour_legend(colorbar_strip(colormap), low, high, font_px=26, bar_px=300)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def show_colorbar(colormap: str = DEFAULT_COLORMAP, *, low: str = "low", high: str = "high",
                  note: str = "each map scaled to its own peak", container: Any = st) -> None:
    """The key to the heatmaps drawn near it: a colour bar from ``low`` to ``high``, and what the scale is."""
    container.image(legend_png(colormap, low, high), width=LEGEND_PX, caption=f"Heatmap colours: {note}")


def show_picture(pic: Picture) -> None:
    if isinstance(pic, bytes):
        st.image(pic, width="stretch")
    else:
        st.error(pic)


def tile_images(ctx: Ctx, rows: pd.DataFrame, size: int = TILE_PX, method: str = DEFAULT_METHOD) -> list[Picture]:
    """Per row of a predictions frame: the image with its predicted class's ``method`` map over it."""
    maps = loaders.load_maps(ctx.url, ctx.run_id, tuple(int(i) for i in rows["image_id"]), ctx.stamp, method)
    return [picture(ctx, r.relpath, size, map_of_class(maps.get(int(r.image_id)), int(r.pred)))
            for r in rows.itertuples()]


def show_tiles(ctx: Ctx, rows: pd.DataFrame, *, per_row: int = 6, key: str, compare_button: bool = True,
               notes: Optional[dict[int, str]] = None, review: bool = False,
               method: str = DEFAULT_METHOD) -> Optional[int]:
    """Draw error tiles in a grid, each with its ``method`` map; returns the image id whose *Compare* button
    was pressed.

    ``notes``: a line added to the caption of those images (the data audit's findings); ``review``: a
    *Review* popover under each tile (``dashboard.reviews_ui``)."""
    names = ctx.names
    pics = tile_images(ctx, rows, method=method)
    reviewed = reviews_ui.images_for(ctx, rows["image_id"]) if review else {}  # the shown images' rows only
    show_colorbar(note="map of the predicted class, each scaled to its own peak")
    chosen = None
    records = list(rows.itertuples())
    for start in range(0, len(records), per_row):
        cols = st.columns(per_row)
        for col, r, pic in zip(cols, records[start : start + per_row], pics[start : start + per_row]):
            with col:
                caption = f"true: {names[r.label]}  \npred: {names[r.pred]} ({r.confidence:.0%})"
                if notes and int(r.image_id) in notes:
                    caption += f"  \n{notes[int(r.image_id)]}"
                show_picture(pic)
                st.caption(caption)
                if compare_button and st.button("Compare", key=f"{key}_{r.image_id}", width="stretch"):
                    chosen = int(r.image_id)
                if review:
                    reviews_ui.tile_review(ctx, reviewed.get(int(r.image_id)),
                                           key=f"{key}_rv_{r.image_id}", suggest=names[r.pred])
    return chosen
