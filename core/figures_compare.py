"""Plotly figures of a comparison of two runs (``core.compare``), for the dashboard and the export.

Pure functions: the per-class table or the confusion change in, ``plotly.graph_objects.Figure`` out.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.figures import CORRECT_COLOR, WRONG_COLOR

NEUTRAL_COLOR = "#8d99ae"
_PER_CLASS = ("class", "n", "acc_a", "acc_b", "delta", "ci_low", "ci_high")


def _label(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def per_class_change(per_class: pd.DataFrame, *, a: str = "A", b: str = "B", limit: Optional[int] = None) -> go.Figure:
    """The change of accuracy per class (B - A) with its interval, worst regression at the top.

    A class whose interval lies below zero is drawn as a regression, above zero as a gain, else neutral.
    ``limit`` keeps the first classes of the worst-first order.
    """
    missing = [c for c in _PER_CLASS if c not in per_class.columns]
    if missing:
        raise ValueError(f"per_class lacks columns {missing}; expected {list(_PER_CLASS)}")
    rows = per_class.sort_values(["delta", "ci_high", "class"], ignore_index=True)
    if limit is not None:
        rows = rows.head(int(limit))
    delta = rows["delta"].to_numpy(float)
    low, high = rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)
    colour = np.where(high < 0, WRONG_COLOR, np.where(low > 0, CORRECT_COLOR, NEUTRAL_COLOR))
    names = [_label(str(c)) for c in rows["class"]]
    custom = np.column_stack([rows["n"].to_numpy(float), rows["acc_a"].to_numpy(float) * 100,
                              rows["acc_b"].to_numpy(float) * 100, low * 100, high * 100])
    fig = go.Figure(go.Scatter(
        x=delta * 100, y=names, mode="markers",
        marker=dict(color=list(colour), size=8, symbol="diamond"),
        error_x=dict(type="data", symmetric=False, array=(high - delta) * 100, arrayminus=(delta - low) * 100,
                     thickness=1.5, width=3, color="#555555"),
        customdata=custom,
        hovertemplate="%{y}<br>change %{x:+.1f} points (95% interval %{customdata[3]:+.1f} to "
                      "%{customdata[4]:+.1f})<br>" + f"{a}: " + "%{customdata[1]:.1f}%, " + f"{b}: "
                      + "%{customdata[2]:.1f}% of %{customdata[0]:.0f} images<extra></extra>",
        showlegend=False,
    ))
    fig.add_vline(x=0, line=dict(color="#333333", width=1))
    n = len(rows)
    fig.update_layout(
        height=max(260, 18 * n + 120), margin=dict(l=10, r=10, t=30, b=40), plot_bgcolor="white",
        xaxis=dict(title=f"accuracy change, points ({b} - {a})", zeroline=False, gridcolor="#eeeeee"),
        yaxis=dict(autorange="reversed", dtick=1, tickfont=dict(size=11 if n <= 40 else 9), automargin=True),
    )
    return fig


def confusion_change_heatmap(delta: np.ndarray, names: Sequence[str], *, only_changed: bool = True,
                             a: str = "A", b: str = "B") -> go.Figure:
    """Heatmap of the confusion change ``delta[true, pred]`` (B - A), diverging and centred at 0.

    Red cells: more images in B than in A (a new mistake off the diagonal), blue: fewer. ``only_changed``
    keeps the classes whose row or column changed, so 100 classes with a few changes stay readable.
    """
    delta = np.asarray(delta)
    n = len(names)
    if delta.shape != (n, n):
        raise ValueError(f"confusion change of shape {delta.shape} does not match {n} class names")
    keep = np.arange(n)
    if only_changed:
        keep = np.flatnonzero((delta != 0).any(axis=0) | (delta != 0).any(axis=1))
        if keep.size == 0:
            keep = np.arange(min(n, 10))
    z = delta[np.ix_(keep, keep)].astype(float)
    labels = [_label(str(names[i])) for i in keep]
    peak = float(np.abs(z).max()) or 1.0
    m = len(keep)
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, zmid=0, zmin=-peak, zmax=peak, colorscale="RdBu", reversescale=True,
        xgap=1 if m <= 40 else 0, ygap=1 if m <= 40 else 0,
        colorbar=dict(title=dict(text=f"images, {b} - {a}", side="right"), thickness=12),
        hovertemplate="true: %{y}<br>predicted: %{x}<br>change %{z:+.0f} images<extra></extra>",
    ))
    cell = 36 if m <= 12 else 22 if m <= 30 else 14 if m <= 60 else 12
    fig.update_layout(
        height=m * cell + 220, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
        xaxis=dict(title="predicted", dtick=1, tickangle=-90 if m > 30 else -45 if m > 8 else 0, automargin=True,
                   showgrid=False),
        yaxis=dict(title="true", dtick=1, autorange="reversed", automargin=True, showgrid=False),
    )
    return fig
