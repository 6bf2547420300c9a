"""The confusion page's matrix for a run of many classes (above ``RASTER_ABOVE``): one zoomable raster of
``core.figures_confusion`` instead of a heatmap of a million JSON cells.

Three views: every class (ordered so that confusions cluster, alphabetically, or by groups the user uploads
as a CSV of ``class,group`` rows), the top N most confused classes, or the classes a search finds with those
they are confused with (highlighted). Its invisible markers carry ``[true_idx, pred_idx, count]`` like the
heatmap's cells, so a click opens the pair's images as on the small page. The figure is cached per view:
the clustering of 1,000 classes is paid once per run and choice.
"""
from __future__ import annotations

import csv
import io
from typing import Optional

import streamlit as st

from core import figures_confusion as fc
from dashboard import scale_ui
from dashboard.charts import chart

RASTER_ABOVE = 100  # up to this many classes the page draws today's heatmap (the demo's 100 sports)
VIEWS = ("all classes", "top-N most confused", "search")


def parse_groups(data: bytes, names: tuple[str, ...]) -> dict[str, str]:
    """``{class: group}`` from CSV bytes of ``class,group`` rows (a header row ``class,group`` is skipped);
    ``ValueError`` naming the rows that are not two fields or name no class of the run."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    if rows and [c.strip().lower() for c in rows[0]] == ["class", "group"]:
        rows = rows[1:]
    known = set(names)
    bad = [i + 1 for i, r in enumerate(rows) if r and (len(r) != 2 or r[0].strip() not in known)]
    if bad:
        raise ValueError(f"rows {bad[:5]} of the groups CSV are not 'class,group' with a class of this run "
                         f"(expected e.g. '{names[0]},group A')")
    return {r[0].strip(): r[1].strip() for r in rows if r}


@st.cache_data(show_spinner="Ordering the classes…", max_entries=16)
def load_figure(url: str, run_id: int, names: tuple[str, ...], splits: Optional[tuple[str, ...]], stamp: str,
                view: str, order: str, top_n: int, query: str, groups: Optional[tuple[tuple[str, str], ...]],
                normalize: bool, hide_diagonal: bool):
    """(figure, caption) of one view of the run's matrix; the figure is what the page draws."""
    cm = scale_ui.load_confusion(url, run_id, len(names), splits, stamp)
    kw = dict(order=order, groups=dict(groups) if groups else None)
    found = ()
    if view == VIEWS[1]:
        v = fc.top_confused_view(cm, names, top_n, **kw)
        what = f"the {len(v.classes)} classes with the most mistakes"
    elif view == VIEWS[2] and query.strip():
        v, found = fc.search_view(cm, names, query, **kw)
        what = (f"{len(found)} classes matching '{query.strip()}' (highlighted) and the {len(v.classes) - len(found)} "
                f"they are confused with")
    else:
        v = fc.confusion_view(cm, names, **kw)
        what = f"all {len(names)} classes"
    fig = fc.raster_figure(v, normalize=normalize, hide_diagonal=hide_diagonal, highlight=found)
    return fig, f"{what}; order: {v.method}" + (f", {len(v.groups)} groups" if len(v.groups) > 1 else "")


def raster_section(ctx, splits: Optional[tuple[str, ...]], *, normalize: bool, grouped: bool, hide_diagonal: bool):
    """The view choices and the raster; returns the chart's selection event."""
    names = tuple(ctx.names)
    c1, c2, c3 = st.columns([1.6, 1, 1.4])
    view = c1.radio("Show", VIEWS, key="cm_view", horizontal=True)
    top_n = int(c2.number_input("N classes", 5, min(300, len(names)), min(50, len(names)), key="cm_topn",
                                disabled=view != VIEWS[1]))
    query = c3.text_input("Find classes", key="cm_search", placeholder="part of a class name",
                          disabled=view != VIEWS[2])
    upload = st.file_uploader("Class groups (optional CSV of class,group rows): keeps each group together",
                              type="csv", key="cm_groups")
    groups = None
    if upload is not None:
        try:
            groups = tuple(parse_groups(upload.getvalue(), names).items())
        except (ValueError, UnicodeDecodeError) as exc:
            st.error(f"Groups not used: {exc}")
    if view == VIEWS[2] and not query.strip():
        st.caption("Type part of a class name to see those classes and what they are confused with.")
    order = "confusion" if grouped else "alphabetical"
    fig, caption = load_figure(ctx.url, ctx.run_id, names, splits, ctx.stamp, view, order, top_n, query, groups,
                               normalize, hide_diagonal)
    event = chart(fig, key="cm_raster", name="confusion-matrix", on_select="rerun", selection_mode="points")
    st.caption(f"Showing {caption}. One pixel a cell: drag to zoom, hover for the names and counts, click a "
               "cell to see its images.")
    return event
