"""Plotly figure builders shared by the dashboard and the report exporter.

Pure functions: arrays or DataFrames in, ``plotly.graph_objects.Figure`` out. Nothing here reads the store
or draws widgets. Sizes grow with the number of classes so that 100 class names stay legible.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures_base import _empty_figure, _short, _tick_font  # noqa: F401 (also used by other builders)


CORRECT_COLOR = "#2a9d8f"
WRONG_COLOR = "#e76f51"
TRAIN_COLOR = "#264653"
VAL_COLOR = "#e9c46a"


# --------------------------------------------------------------------------- confusion matrix

def confusion_order(cm: np.ndarray, names: Sequence[str], order: str = "alphabetical") -> np.ndarray:
    """A permutation of the classes: ``alphabetical`` by name, or ``confusion`` so that classes that are
    mistaken for each other sit next to each other.

    ``confusion`` clusters the symmetric, row-normalised confusion (average linkage on ``1 - similarity``)
    and applies optimal leaf ordering, so mutually confused classes form blocks near the diagonal.
    """
    n = len(names)
    if order == "alphabetical":
        return np.array(sorted(range(n), key=lambda i: (names[i].lower(), i)), dtype=np.int64)
    if order != "confusion":
        raise ValueError(f"order must be 'alphabetical' or 'confusion', got {order!r}")
    if n < 3:
        return np.arange(n)
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    np.fill_diagonal(rates, 0.0)
    sim = (rates + rates.T) / 2.0
    if not sim.any():
        return confusion_order(cm, names, "alphabetical")
    dist = 1.0 - sim / sim.max()
    np.fill_diagonal(dist, 0.0)
    condensed = squareform(dist, checks=False)
    z = linkage(condensed, method="average")
    return leaves_list(optimal_leaf_ordering(z, condensed)).astype(np.int64)


def _count_ticks(zmax: float) -> dict:
    """Colour-bar ticks for counts: whole numbers only, about five of them."""
    step = max(1, int(np.ceil(float(zmax) / 5)))
    return dict(tick0=0, dtick=step, tickformat="d")


def confusion_heatmap(
    cm: np.ndarray,
    names: Sequence[str],
    *,
    normalize: bool = False,
    order: str = "alphabetical",
    hide_diagonal: bool = False,
) -> go.Figure:
    """Heatmap of ``cm[true, pred]`` (rows true, columns predicted), optionally row-normalised.

    Off-diagonal non-zero cells carry an invisible marker with ``customdata = [true_idx, pred_idx]`` so that
    a point click can be mapped back to a pair (plotly heatmap traces do not report selections).
    """
    cm = np.asarray(cm)
    n = len(names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n} class names")
    perm = confusion_order(cm, names, order)
    # Rows of about 12 px at 100 classes keep 8 px labels legible; the width follows the page.
    cell = 36 if n <= 12 else 22 if n <= 30 else 14 if n <= 60 else 12
    c = cm[np.ix_(perm, perm)].astype(np.float64)
    support = c.sum(axis=1, keepdims=True)
    rates = c / np.maximum(support, 1)
    z = (rates if normalize else c).astype(np.float32)
    if hide_diagonal:
        np.fill_diagonal(z, np.nan)
    labels = [_short(names[i]) for i in perm]
    custom = np.dstack([c, rates * 100.0]).astype(np.float32)  # float32 halves what the browser receives
    zmax = np.nanmax(z) if np.isfinite(z).any() and np.nanmax(z) > 0 else 1.0
    heat = go.Heatmap(
        z=z,
        x=labels,
        y=labels,
        customdata=custom,
        # Zero stays white and the first non-zero count is already visible: single mistakes matter here.
        colorscale=[[0.0, "#ffffff"], [1e-6, "#c6dbef"], [0.5, "#4292c6"], [1.0, "#08306b"]],
        zmin=0,
        zmax=zmax,
        xgap=1 if n <= 40 else 0,
        ygap=1 if n <= 40 else 0,
        colorbar=dict(title=dict(text="share of true" if normalize else "images", side="right"), thickness=12,
                      len=min(1.0, 500 / (n * cell + 220)), y=1.0, yanchor="top",
                      **({} if normalize else _count_ticks(zmax))),
        hovertemplate="true: %{y}<br>predicted: %{x}<br>"
        "%{customdata[0]:.0f} images (%{customdata[1]:.1f}% of true)<extra></extra>",
        hoverongaps=False,
    )
    fig = go.Figure(heat)
    off = c.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    if rows.size:
        fig.add_trace(
            go.Scatter(
                x=[labels[j] for j in cols],
                y=[labels[i] for i in rows],
                mode="markers",
                marker=dict(size=max(4, min(18, 700 // max(n, 1))), color="rgba(0,0,0,0)", line=dict(width=0)),
                customdata=np.column_stack([perm[rows], perm[cols], c[rows, cols], rates[rows, cols] * 100.0]),
                # Hover must stay on for this trace: plotly sends no click for points that skip hover.
                hovertemplate="true: %{y}<br>predicted: %{x}<br>%{customdata[2]:.0f} images "
                "(%{customdata[3]:.1f}% of true)<br><i>click to see them</i><extra></extra>",
                showlegend=False,
                name="pairs",
            )
        )
    font = _tick_font(n)
    fig.update_layout(
        height=n * cell + 220,
        margin=dict(l=10, r=10, t=30, b=10),
        # Upright column labels from 13 classes on: slanted ones overlap their neighbours once a cell is
        # narrower than about two lines of text (the 20 classes of an exported "most confused" matrix).
        xaxis=dict(title="predicted", tickangle=-90 if n > 12 else -45 if n > 8 else 0, tickfont=dict(size=font),
                   dtick=1, side="bottom", automargin=True, showgrid=False, range=[-0.5, n - 0.5]),
        # Explicit ranges: autorange would pad the category axes for the click markers.
        yaxis=dict(title="true", range=[n - 0.5, -0.5], tickfont=dict(size=font), dtick=1, automargin=True,
                   showgrid=False),
        plot_bgcolor="white",
        clickmode="event+select",
        dragmode=False,
    )
    return fig


def most_confused_classes(cm: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` classes with the most mistakes made on them or into them (off-diagonal row plus
    column sums), most first; classes without a mistake are left out."""
    cm = np.asarray(cm)
    if n < 1:
        raise ValueError(f"n must be a positive number of classes, got {n}")
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    involved = off.sum(axis=0) + off.sum(axis=1)
    order = np.lexsort((np.arange(len(involved)), -involved))
    return order[involved[order] > 0][:n].astype(np.int64)


def print_layout(fig: go.Figure, title: Optional[str] = None) -> go.Figure:
    """A copy of a dashboard figure styled for paper: white background, an optional title, no interaction."""
    out = go.Figure(fig)
    out.update_layout(template="plotly_white", clickmode="none", hovermode=False, paper_bgcolor="white",
                      plot_bgcolor="white")
    if title:
        top = max(60, (out.layout.margin.t or 0) + 30)
        out.update_layout(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)), margin=dict(t=top))
    return out


# --------------------------------------------------------------------------- per class

def per_class_bars(df: pd.DataFrame, *, sort_by: str = "f1", ascending: bool = True) -> go.Figure:
    """Horizontal bars of F1 per class with precision and recall as markers; ``df`` from ``per_class_metrics``."""
    if df.empty:
        return _empty_figure("no classes")
    d = df.sort_values(sort_by, ascending=ascending, kind="stable")
    n = len(d)
    names = [_short(x, 28) for x in d["class"]]
    fig = go.Figure()
    # With the interval columns of core.intervals.attach_intervals: F1 with its 95 % bootstrap interval.
    spread = {}
    if {"f1_lo", "f1_hi"} <= set(d.columns):
        spread = dict(error_x=dict(type="data", symmetric=False, array=(d["f1_hi"] - d["f1"]).to_numpy(),
                                   arrayminus=(d["f1"] - d["f1_lo"]).to_numpy(), color="#4a6f8a", thickness=1.2,
                                   width=2))
    fig.add_trace(
        go.Bar(
            y=names, x=d["f1"], orientation="h", name="F1 (95% interval)" if spread else "F1",
            marker_color="#8ab6d6", customdata=np.column_stack([d["class"], d["support"]]),
            hovertemplate="%{customdata[0]}<br>F1 %{x:.3f}, support %{customdata[1]}<extra></extra>", **spread,
        )
    )
    fig.add_trace(go.Scatter(y=names, x=d["precision"], mode="markers", name="precision",
                             marker=dict(symbol="diamond", size=8, color=TRAIN_COLOR)))
    fig.add_trace(go.Scatter(y=names, x=d["recall"], mode="markers", name="recall",
                             marker=dict(symbol="x", size=8, color=WRONG_COLOR)))
    fig.update_layout(
        height=max(300, min(2600, 18 * n + 110)),
        margin=dict(l=10, r=10, t=30, b=10),
        xaxis=dict(title="score", range=[0, 1.02]),
        # An explicit range: autorange pads a category axis for the markers, leaving empty bands.
        yaxis=dict(range=[n - 0.5, -0.5], tickfont=dict(size=_tick_font(n)), dtick=1, automargin=True),
        legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0.0, xanchor="left"),
        bargap=0.25,
    )
    return fig


# --------------------------------------------------------------------------- training

def training_curves(epochs: pd.DataFrame) -> go.Figure:
    """Loss and accuracy per global epoch, train and validation, with the start of phase 2 marked."""
    if epochs.empty:
        return _empty_figure("no epochs recorded")
    e = epochs.sort_values("global_epoch")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"), horizontal_spacing=0.08)
    for col, metric in ((1, "loss"), (2, "acc")):
        for split, color, dash in (("train", TRAIN_COLOR, "solid"), ("val", VAL_COLOR, "dash")):
            y = pd.to_numeric(e[f"{split}_{metric}"], errors="coerce")
            if y.notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=e["global_epoch"], y=y, mode="lines+markers", name=f"{split} {metric}",
                        line=dict(color=color, dash=dash), legendgroup=split,
                        customdata=np.column_stack([e["phase"], e["epoch"]]),
                        hovertemplate="epoch %{x} (phase %{customdata[0]}, #%{customdata[1]})<br>"
                        f"{split} {metric} " "%{y:.4f}<extra></extra>",
                    ),
                    row=1, col=col,
                )
    p1 = e.loc[e["phase"] == 1, "global_epoch"]
    p2 = e.loc[e["phase"] == 2, "global_epoch"]
    if len(p1) and len(p2):
        x = (p1.max() + p2.min()) / 2.0
        for col, axis in ((1, ""), (2, "2")):
            fig.add_vline(x=x, line=dict(color="grey", dash="dot"), row=1, col=col)
            for text, anchor in (("frozen base ◂ ", "right"), (" ▸ fine-tune", "left")):
                fig.add_annotation(x=x, y=0.99, xref=f"x{axis}", yref=f"y{axis} domain", text=text,
                                   showarrow=False, xanchor=anchor, yanchor="top",
                                   font=dict(size=11, color="grey"))
    # Epochs are counted from 1; the axis starts at 0 so the first point is not at the edge (autorange
    # padded it to negative epochs before).
    last = float(pd.to_numeric(e["global_epoch"]).max())
    fig.update_xaxes(title_text="epoch (both phases)", dtick=max(1, int(np.ceil(len(e) / 15))),
                     range=[0, last + 0.5])
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", y=-0.25, x=0))
    return fig


# --------------------------------------------------------------------------- confidence

def confidence_histogram(preds: pd.DataFrame, *, bins: int = 20) -> go.Figure:
    """Histogram of top-1 confidence, correct and wrong predictions stacked; ``preds`` needs label/pred/confidence."""
    if preds.empty:
        return _empty_figure("no predictions")
    correct = preds["label"].to_numpy() == preds["pred"].to_numpy()
    fig = go.Figure()
    edges = dict(start=0.0, end=1.0, size=1.0 / bins)
    fig.add_trace(go.Histogram(x=preds.loc[correct, "confidence"], xbins=edges, name="correct",
                               marker_color=CORRECT_COLOR))
    fig.add_trace(go.Histogram(x=preds.loc[~correct, "confidence"], xbins=edges, name="wrong",
                               marker_color=WRONG_COLOR))
    fig.update_layout(barmode="stack", height=300, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(title="confidence of the predicted class", range=[0, 1]),
                      yaxis=dict(title="images"), legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig


def top5_bars(names: Sequence[str], probs: Sequence[float], *, label: Optional[int], idx: Sequence[int]) -> go.Figure:
    """Top-5 probabilities as horizontal bars; the true class green, others grey, the top one outlined."""
    if not len(idx):
        return _empty_figure("no prediction")
    colors = [CORRECT_COLOR if i == label else ("#b0b0b0" if r else WRONG_COLOR) for r, i in enumerate(idx)]
    fig = go.Figure(
        go.Bar(
            y=[_short(names[i], 26) for i in idx], x=list(probs), orientation="h", marker_color=colors,
            text=[f"{p:.1%}" for p in probs], textposition="auto",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(height=240, margin=dict(l=10, r=10, t=30, b=10), xaxis=dict(range=[0, 1], title="probability"),
                      yaxis=dict(autorange="reversed"), title=dict(text="top-5", font=dict(size=13)))
    return fig


# Trust figures live in core.figures_trust; their names stay importable from here.
from core.figures_trust import (  # noqa: E402,F401
    METHOD_COLORS, map_name, sanity_cascade, trust_curves, trust_distribution,
)
