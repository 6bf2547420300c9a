"""The run's feature vectors and its 2-D map as the pages read them, and the images of a selection.

Loaders are cached per run and per *embed stamp* (the vector count and the map's time, polled every few
seconds), so a map drawn by ``jobs.embed`` after the run finished shows without a restart. The neighbour
index is a cached resource (one per run and stamp, never copied): searching it costs one matrix product.
The dashboard never runs the model: neighbours are searched among the stored vectors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.figures_map import embedding_scatter
from core.intervals import rate
from core.neighbours import NeighbourIndex
from core.splits import SPLITS
from dashboard import loaders, reviews_ui
from dashboard.context import Ctx, shown_url
from dashboard.tiles import map_of_class, picture, show_picture
from db.queries import embed as embed_queries

EMBED_COMMAND = "python -m jobs.embed"
SELECTION_PAGE = 20
SELECTION_PER_ROW = 5
THUMB_PX = 160


def embed_hint(ctx: Ctx) -> str:
    """The command that computes the run's missing vectors and draws its map, as a page shows it."""
    return f"`{EMBED_COMMAND} --run {ctx.run_id} --db {shown_url(ctx.url)}`"


@st.cache_data(ttl=5, show_spinner=False)
def load_embed_stamp(url: str, run_id: int) -> Optional[str]:
    """Changes when vectors are added or the map is redrawn; ``None`` while the run has neither."""
    with loaders.session(url) as s:
        return embed_queries.embed_stamp(s, run_id)


def vector_total(stamp: Optional[str]) -> int:
    """How many vectors the run has, as its embed stamp says."""
    return int(stamp.split("|", 1)[0]) if stamp else 0


@st.cache_data(show_spinner=False, max_entries=4)
def load_map(url: str, run_id: int, stamp: Optional[str]) -> tuple[pd.DataFrame, Optional[dict[str, Any]]]:
    """The map's points with their images (``db.queries.embed.MAP_COLUMNS``) and how it was made."""
    with loaders.session(url) as s:
        return embed_queries.map_points(s, run_id), embed_queries.map_info(s, run_id)


def shown_points(points: pd.DataFrame, splits: tuple[str, ...], flags: Optional[pd.DataFrame]) -> pd.DataFrame:
    """The map's points of ``splits`` (all when empty), with the data audit's ``flag`` of each when ``flags``
    (``loaders.load_current_flags``) is given."""
    shown = points[points["split"].isin(splits)] if splits else points
    if flags is not None:
        shown = shown.assign(flag=shown["image_id"].map(dict(zip(flags["image_id"], flags["flags"]))).fillna(""))
    return shown


@st.cache_resource(show_spinner=False, max_entries=4)
def map_figure(view: tuple, _points: pd.DataFrame, names: tuple[str, ...], color_by: str,
               highlight: Optional[int]) -> go.Figure:
    """The figure of ``_points`` (``shown_points``), built once per view (100 traces of 100,000 points take
    about half a second) and reused by the page's re-runs. ``view`` names what the points depend on (store,
    run, the stamps of the map and of the audit, the splits, the temperature of the confidences) and, with
    the other arguments, keys the cache; the points themselves are not hashed."""
    return embedding_scatter(_points, list(names), color_by=color_by, highlight=highlight, height=620)


@dataclass(frozen=True)
class RunVectors:
    """A run's stored vectors: ``images`` (one row per vector, ``VECTOR_IMAGE_COLUMNS``) and the exact
    cosine index over them, in the same row order."""

    images: pd.DataFrame
    index: NeighbourIndex

    def has(self, image_id: int) -> bool:
        return bool((self.images["image_id"].to_numpy() == int(image_id)).any())

    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in set(self.images["split"])]


@st.cache_resource(show_spinner=False, max_entries=2)
def load_vectors(url: str, run_id: int, stamp: Optional[str]) -> RunVectors:
    with loaders.session(url) as s:
        stored = embed_queries.stored_vectors(s, run_id)
    vectors = stored.vectors if len(stored) else np.empty((0, 1), np.float32)
    return RunVectors(stored.images, NeighbourIndex(vectors))


# --------------------------------------------------------------------------- the images of a selection


def selected_ids(event: Any) -> list[int]:
    """The image ids of the points a chart's selection event holds (each point's ``customdata``), in the
    order selected, without repeats; empty for no event or an empty selection."""
    if not event:
        return []
    selection = event.get("selection") if isinstance(event, dict) else getattr(event, "selection", None)
    points = (selection or {}).get("points", []) if isinstance(selection, dict) else getattr(selection, "points", [])
    ids: list[int] = []
    for p in points or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is not None and not (isinstance(cd, float) and math.isnan(cd)):
            ids.append(int(cd))
    return list(dict.fromkeys(ids))


def selection_rows(points: pd.DataFrame, ids: list[int]) -> pd.DataFrame:
    """The selected points' rows, mistakes first (most confident first), then the rest by image id."""
    rows = points[points["image_id"].isin(ids)].copy()
    if rows.empty:
        return rows
    pred = rows["pred"].to_numpy(dtype=np.int64, na_value=-1)
    rows["_wrong"] = (pred >= 0) & (pred != rows["label"].to_numpy())
    rows["_conf"] = rows["confidence"].to_numpy(dtype=np.float64, na_value=-1.0)
    rows = rows.sort_values(["_wrong", "_conf", "image_id"], ascending=[False, False, True])
    return rows.drop(columns=["_wrong", "_conf"]).reset_index(drop=True)


def selection_summary(rows: pd.DataFrame, names: list[str]) -> list[str]:
    """Lines that describe a selection: its size per split, the accuracy of its predicted images (with
    n and interval), and its most common true classes."""
    splits = rows["split"].value_counts()
    lines = [f"**{len(rows):,} images selected** (" + ", ".join(
        f"{splits[s]:,} {s}" for s in SPLITS if s in splits) + ")"]
    has = rows["pred"].notna().to_numpy()
    if has.any():
        right = int((rows["pred"].to_numpy(dtype=np.int64, na_value=-1) == rows["label"].to_numpy())[has].sum())
        lines.append(f"Accuracy of the selected images the model predicted: {rate(right, int(has.sum()))}")
    top = rows["label"].value_counts().head(5)
    lines.append("Most common true classes: " + ", ".join(f"{names[int(c)]} ×{n}" for c, n in top.items()))
    return lines


def show_selection(ctx: Ctx, points: pd.DataFrame, ids: list[int], *, key: str) -> Optional[int]:
    """The gallery of a map selection: a summary, then the images with the map of their predicted class and
    a *Review* popover each, a page at a time. Returns the image id whose *Compare* button was pressed."""
    names = list(ctx.names)
    if not ids:
        st.info("Click a point, or draw a box or a lasso on the map (tools at its top right), to see those "
                "images here with their Grad-CAM maps.")
        return None
    rows = selection_rows(points, ids)
    if rows.empty:
        st.info("None of the selected points is shown under the current filters; select again.")
        return None
    for line in selection_summary(rows, names):
        st.markdown(line)
    pages = max(1, math.ceil(len(rows) / SELECTION_PAGE))
    page = 1
    if pages > 1:
        if not 1 <= st.session_state.get(f"{key}_page", 1) <= pages:
            st.session_state[f"{key}_page"] = 1
        c1, c2 = st.columns([1, 4])
        page = int(c1.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key=f"{key}_page"))
        c2.caption(f"Mistakes first. Showing {(page - 1) * SELECTION_PAGE + 1}–"
                   f"{min(page * SELECTION_PAGE, len(rows))} of {len(rows):,}.")
    shown = rows.iloc[(page - 1) * SELECTION_PAGE: page * SELECTION_PAGE]
    return image_grid(ctx, shown, key=key, review=True)


def image_grid(ctx: Ctx, rows: pd.DataFrame, *, key: str, per_row: int = SELECTION_PER_ROW,
               extra: Optional[dict[int, str]] = None, review: bool = False) -> Optional[int]:
    """Tiles of images that may or may not have a prediction (training images have none): the map of the
    predicted class where one is stored. ``extra``: a caption line per image id; ``review``: a *Review*
    popover under each tile (``dashboard.reviews_ui``). Returns the image id whose *Compare* button was
    pressed (predicted images only)."""
    names = list(ctx.names)
    maps = loaders.load_maps(ctx.url, ctx.run_id, tuple(int(i) for i in rows["image_id"]), ctx.stamp)
    chosen = None
    records = list(rows.itertuples(index=False))
    for start in range(0, len(records), per_row):
        for col, r in zip(st.columns(per_row), records[start:start + per_row]):
            image_id = int(r.image_id)
            has = not pd.isna(r.pred)
            cam = map_of_class(maps.get(image_id), int(r.pred)) if has else None
            with col:
                show_picture(picture(ctx, r.relpath, THUMB_PX, cam))
                lines = [f"**{r.split}** · true: {names[int(r.label)]}"]
                lines.append(f"pred: {names[int(r.pred)]} ({float(r.confidence):.0%})" if has
                             else "no prediction (not evaluated)")
                if extra and image_id in extra:
                    lines.append(extra[image_id])
                st.caption("  \n".join(lines))
                if has and st.button("Compare", key=f"{key}_cmp_{image_id}", width="stretch"):
                    chosen = image_id
                if review:
                    reviews_ui.tile_review(ctx, reviews_ui.image_for(ctx, image_id), key=f"{key}_rv_{image_id}",
                                           suggest=names[int(r.pred)] if has else None)
    return chosen
