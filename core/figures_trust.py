"""Figures of the trust page and export: faithfulness scores and curves per CAM method, the sanity cascade."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.cammaps import BASELINE_CENTRE, BASELINE_RANDOM, METHOD_NAMES, method_label
from core.figures_base import _empty_figure, _short, _tick_font

# --------------------------------------------------------------------------- trust (faithfulness, sanity)

# One colour per CAM method (core.cammaps.METHOD_NAMES order), greys and blue for the baselines.
METHOD_COLORS = dict(zip(METHOD_NAMES, ("#e63946", "#f4a261", "#2a9d8f", "#9b5de5", "#e9c46a", "#00b4d8", "#6d597a")))
METHOD_COLORS.update({BASELINE_RANDOM: "#8d99ae", BASELINE_CENTRE: "#457b9d"})


def map_name(method: str) -> str:
    """A scored map's name for a reader: "Grad-CAM", "random map", "centred map"."""
    return method_label(method)


def trust_distribution(frame: pd.DataFrame, names: Sequence[str], *, metric: str = "deletion_auc") -> go.Figure:
    """Box plot per true class of one AUC (``metric``), one box per method side by side.

    ``frame`` holds rows of ``db.queries.trust_frame`` (label, method and the metric column).
    """
    if frame.empty:
        return _empty_figure("no scores")
    classes = sorted(frame["label"].unique())
    fig = go.Figure()
    for method in [m for m in METHOD_COLORS if m in set(frame["method"])]:
        f = frame[frame["method"] == method]
        fig.add_trace(go.Box(
            x=[_short(names[int(c)] if 0 <= int(c) < len(names) else str(c), 20) for c in f["label"]],
            y=f[metric], name=map_name(method), marker_color=METHOD_COLORS[method], boxmean=True,
            boxpoints="all" if len(f) <= 400 else False, jitter=0.3, pointpos=0, marker=dict(size=3),
        ))
    better = "lower" if metric.startswith("deletion") else "higher"
    fig.update_layout(
        boxmode="group", height=380, margin=dict(l=10, r=10, t=30, b=10),
        yaxis=dict(title=f"{metric.split('_')[0]} AUC ({better} is better)", range=[0, 1.02]),
        xaxis=dict(tickfont=dict(size=_tick_font(len(classes))), categoryorder="category ascending"),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
    )
    return fig


def trust_curves(fractions: Sequence[float], curves: dict[str, tuple[Sequence[float], Sequence[float]]],
                 *, height: int = 300, legend: bool = True) -> go.Figure:
    """Deletion and insertion curves side by side; ``curves`` maps method -> (deletion, insertion).

    The legend sits in the top margin, clear of the subplot titles and the axis labels, so the small
    copies on the trust page (``height`` about 240) keep it too; x ticks at 0, 50 and 100 % only, so the
    two panels' labels never run into each other."""
    if not curves:
        return _empty_figure("no curves")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("deletion: pixels removed", "insertion: pixels revealed"),
                        horizontal_spacing=0.16)
    for method, (deletion, insertion) in curves.items():
        color = METHOD_COLORS.get(method, "#333333")
        name = map_name(method)
        for col, y in ((1, deletion), (2, insertion)):
            auc = float(np.sum((np.asarray(y[1:]) + np.asarray(y[:-1])) * np.diff(fractions)) / 2)
            fig.add_trace(go.Scatter(
                x=list(fractions), y=list(y), mode="lines+markers", name=name, legendgroup=method,
                legendrank=list(METHOD_COLORS).index(method) + 1 if method in METHOD_COLORS else 100,
                showlegend=legend and col == 1, line=dict(color=color), marker=dict(size=4),
                hovertemplate=f"{name}: " "%{y:.3f} at %{x:.0%}" f" (AUC {auc:.3f})<extra></extra>",
            ), row=1, col=col)
    fig.update_xaxes(range=[0, 1], tickformat=".0%", tickvals=[0, 0.5, 1], title_text="share of pixels",
                     title_standoff=2)
    fig.update_yaxes(range=[0, 1.02], tickvals=[0, 0.5, 1], col=1, title_text="probability", title_standoff=2)
    fig.update_yaxes(range=[0, 1.02], tickvals=[0, 0.5, 1], col=2)
    fig.update_annotations(font_size=12, yshift=4)  # the subplot titles
    top = 72 if legend else 34  # room for a legend that wraps to two lines in a narrow column
    fig.update_layout(height=height + (top - 34), margin=dict(l=10, r=10, t=top, b=10),
                      legend=dict(orientation="h", x=0, xanchor="left", y=0.995, yanchor="top", yref="container",
                                  font=dict(size=11), entrywidth=0, itemwidth=30),
                      font=dict(size=11))
    return fig


def sanity_cascade(stages: Sequence[dict]) -> go.Figure:
    """Similarity of the trained maps with the randomised ones, stage by stage from the top layer down.

    ``stages``: rows {stage, kind ("reference" | "randomised"), spearman_mean/std, ssim_mean/std}. The
    references (the trained model against itself, and with input noise) are drawn on the left.
    """
    if not stages:
        return _empty_figure("no sanity check")
    x = [s["stage"] if s["kind"] == "randomised" else f"trained ({s['stage']})" for s in stages]
    fig = go.Figure()
    for key, name, color, dash in (("spearman", "Spearman rank correlation", "#e63946", "solid"),
                                   ("ssim", "SSIM", "#457b9d", "dash")):
        fig.add_trace(go.Scatter(
            x=x, y=[s[f"{key}_mean"] for s in stages], name=name, mode="lines+markers",
            line=dict(color=color, dash=dash),
            error_y=dict(type="data", array=[s[f"{key}_std"] for s in stages], visible=True, thickness=1),
        ))
    n_ref = sum(s["kind"] == "reference" for s in stages)
    if 0 < n_ref < len(stages):
        fig.add_vline(x=n_ref - 0.5, line=dict(color="grey", dash="dot"))
    fig.add_hline(y=0, line=dict(color="lightgrey"))
    fig.update_layout(
        height=360, margin=dict(l=10, r=10, t=30, b=10),
        xaxis=dict(title="re-initialised from the top down to (cumulative)", type="category"),
        yaxis=dict(title="similarity to the trained maps", range=[-1.02, 1.05]),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
    )
    return fig
