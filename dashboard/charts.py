"""Every figure a page draws, with its export: ``chart(fig, key=..., name=...)`` draws a plotly figure and,
beside it, downloads of the same figure as a standalone HTML file (instant, interactive) and as an SVG for a
report (rendered on click by the headless Chromium that the figure-set export uses; without one the button
says so). Pages call this instead of ``st.plotly_chart``.
"""
from __future__ import annotations

from typing import Any, Optional

import plotly.graph_objects as go
import streamlit as st

from core.figures import print_layout
from core.report import find_browser, render_plots
from core.report_parts import slug


def _svg(fig: go.Figure, title: Optional[str]) -> bytes:
    browser = find_browser("auto")
    if browser is None:
        raise RuntimeError("no Chromium found to render the figure (install Debian's chromium)")
    out = print_layout(fig, title)
    width = int(out.layout.width or 1100)
    height = int(out.layout.height or 500)
    (data,) = render_plots([(out, {"format": "svg", "width": width, "height": height})], browser)
    if isinstance(data, BaseException):
        raise RuntimeError(f"the figure could not be rendered: {data}")
    return data


def chart(fig: go.Figure, *, key: str, name: str, title: Optional[str] = None, **plotly_kwargs: Any):
    """Draw ``fig`` (``st.plotly_chart`` with ``plotly_kwargs``) and its two downloads; returns what
    ``st.plotly_chart`` returns (the selection event when ``on_select`` is given)."""
    event = st.plotly_chart(fig, key=key, **{"width": "stretch", **plotly_kwargs})
    stem = slug(name, max_len=60) or "figure"
    left, right, _ = st.columns([1, 1, 4])
    left.download_button("HTML", data=lambda: fig.to_html(include_plotlyjs="cdn", full_html=True).encode(),
                         file_name=f"{stem}.html", mime="text/html", key=f"{key}_html", on_click="ignore",
                         icon=":material/download:", help="The interactive figure as a standalone HTML file")
    if find_browser("auto") is not None:
        right.download_button("SVG", data=lambda: _svg(fig, title), file_name=f"{stem}.svg", mime="image/svg+xml",
                              key=f"{key}_svg", on_click="ignore", icon=":material/download:",
                              help="The figure for a report, on a white background")
    return event
