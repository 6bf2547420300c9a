"""Plotly figures of calibration: the reliability diagram, right/wrong confidences, per-class ECE.

Pure builders in the manner of :mod:`core.figures`: the bins and tables of :mod:`core.calibration` in,
``plotly.graph_objects.Figure`` out. Every figure shows how many images stand behind what it draws.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures import CORRECT_COLOR, TRAIN_COLOR, VAL_COLOR, WRONG_COLOR, _empty_figure, _short, _tick_font
from core.intervals import wilson_interval

DIAGONAL_COLOR = "#8d99ae"
SCALED_COLOR = "#6a4c93"


def _filled(bins: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [b for b in bins if b["count"]]


def reliability_diagram(bins: Sequence[Mapping[str, Any]], *, calibrated: Optional[Sequence[Mapping[str, Any]]] = None,
                        title: Optional[str] = None, height: int = 460) -> go.Figure:
    """Accuracy per confidence bin against the diagonal, with the images per bin in a panel below.

    ``bins`` are the records of a report split (lo, hi, count, confidence, accuracy; empty bins have
    count 0 and are not drawn). The gap between a bar and its bin's mean confidence (diamond) is the
    miscalibration there. ``calibrated``: the bins after temperature scaling, drawn as a line.
    """
    if not bins or not _filled(bins):
        return _empty_figure("no predictions")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    full = _filled(bins)
    centre = [(b["lo"] + b["hi"]) / 2 for b in full]
    width = [b["hi"] - b["lo"] for b in full]
    counts = [b["count"] for b in full]
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(color=DIAGONAL_COLOR, dash="dash"), hoverinfo="skip"), row=1, col=1)
    acc = np.array([b["accuracy"] for b in full], dtype=np.float64)
    # Wilson 95 % interval of each bin's accuracy: a bin of 3 images says little, and the bars show it.
    lo, hi = wilson_interval(np.rint(acc * np.array(counts)).astype(np.int64), np.array(counts, dtype=np.int64))
    fig.add_trace(go.Bar(
        x=centre, y=acc, width=width, name="accuracy (95% interval)", marker_color=CORRECT_COLOR,
        marker_line=dict(color="white", width=1), opacity=0.85,
        error_y=dict(type="data", symmetric=False, array=hi - acc, arrayminus=acc - lo, color=TRAIN_COLOR,
                     thickness=1.2, width=3),
        customdata=np.column_stack([[b["lo"] for b in full], [b["hi"] for b in full], counts, lo, hi]),
        hovertemplate="confidence %{customdata[0]:.2f}-%{customdata[1]:.2f}<br>accuracy %{y:.3f} "
                      "of %{customdata[2]} images (95% interval %{customdata[3]:.2f}-%{customdata[4]:.2f})"
                      "<extra></extra>",
    ), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=[b["confidence"] for b in full], y=[b["confidence"] for b in full], mode="markers",
        name="mean confidence", marker=dict(symbol="diamond", size=8, color=WRONG_COLOR),
        hovertemplate="mean confidence %{x:.3f}<extra></extra>",
    ), row=1, col=1)
    if calibrated is not None and _filled(calibrated):
        cal = _filled(calibrated)
        fig.add_trace(go.Scatter(
            x=[b["confidence"] for b in cal], y=[b["accuracy"] for b in cal], mode="lines+markers",
            name="after temperature scaling", line=dict(color=SCALED_COLOR), marker=dict(size=6),
            customdata=[b["count"] for b in cal],
            hovertemplate="confidence %{x:.3f}, accuracy %{y:.3f} (%{customdata} images)<extra></extra>",
        ), row=1, col=1)
    fig.add_trace(go.Bar(
        x=centre, y=counts, width=width, name="images per bin", marker_color=TRAIN_COLOR, showlegend=False,
        text=[str(c) for c in counts], textposition="outside", cliponaxis=False,
        hovertemplate="%{y} images<extra></extra>",
    ), row=2, col=1)
    fig.update_xaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(range=[0, 1], title_text="confidence of the predicted class", row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="images", range=[0, max(counts) * 1.3], row=2, col=1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40 if title else 30, b=10), bargap=0,
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    if title:
        fig.update_layout(title=dict(text=title, x=0.01, xanchor="left"))
    return fig


def confidence_split_histogram(confidence: Any, correct: Any, *, bins: int = 20, height: int = 320) -> go.Figure:
    """Histograms of the top-1 confidence of right and of wrong predictions, overlaid, with their n.

    Counts are binned here (equal-width bins over [0, 1], the last one closed), so the figure stays small
    for any number of images.
    """
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if c.shape != ok.shape or c.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D of one length, got shapes {c.shape} and {ok.shape}")
    if not len(c):
        return _empty_figure("no predictions")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    centre, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = go.Figure()
    for name, mask, color in (("right", ok, CORRECT_COLOR), ("wrong", ~ok, WRONG_COLOR)):
        counts, _ = np.histogram(c[mask], bins=edges)
        mean = float(c[mask].mean()) if mask.any() else 0.0
        fig.add_trace(go.Bar(
            x=centre, y=counts, width=width, name=f"{name}, n={int(mask.sum())}", marker_color=color, opacity=0.65,
            hovertemplate=f"{name}: " "%{y} images at %{x:.2f}" f" (mean confidence {mean:.3f})<extra></extra>",
        ))
    fig.update_layout(barmode="overlay", bargap=0, height=height, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(title="confidence of the predicted class", range=[0, 1]),
                      yaxis=dict(title="images"), legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return fig


def per_class_ece_bars(table: pd.DataFrame, *, top: Optional[int] = 30, few: int = 10) -> go.Figure:
    """Per-class ECE, worst first, as horizontal bars labelled with n; ``table`` from ``per_class_ece``.

    Bars are coloured by the direction of the miss (overconfident: confidence above accuracy); a class
    with fewer than ``few`` images says so in its label.
    """
    if table.empty:
        return _empty_figure("no classes")
    d = table.sort_values(["ece", "n"], ascending=[False, False], kind="stable")
    if top is not None:
        d = d.head(int(top))
    n = len(d)
    label = d["class"] if "class" in d else d["class_idx"].astype(str)
    names = [_short(str(x), 28) for x in label]
    colors = [WRONG_COLOR if g > 0 else VAL_COLOR for g in d["gap"]]
    text = [f"n={k}" + (" (few)" if k < few else "") for k in d["n"]]
    fig = go.Figure(go.Bar(
        y=names, x=d["ece"], orientation="h", name="ECE", marker_color=colors, text=text, textposition="outside",
        cliponaxis=False,
        customdata=np.column_stack([d["confidence"], d["accuracy"], d["n"]]),
        hovertemplate="%{y}: ECE %{x:.3f}<br>mean confidence %{customdata[0]:.3f}, accuracy "
                      "%{customdata[1]:.3f}, %{customdata[2]} images<extra></extra>",
    ))
    fig.update_layout(
        height=max(260, min(2600, 18 * n + 110)), margin=dict(l=10, r=40, t=30, b=10),
        xaxis=dict(title="ECE within the class (red: overconfident, yellow: underconfident)",
                   range=[0, max(float(d["ece"].max()) * 1.25, 0.05)]),
        yaxis=dict(range=[n - 0.5, -0.5], tickfont=dict(size=_tick_font(n)), dtick=1, automargin=True),
    )
    return fig


def ece_before_after(report: Mapping[str, Any], *, height: int = 280) -> go.Figure:
    """ECE of each split with the raw confidences and after temperature scaling; ``report`` from
    ``calibration_report``."""
    splits = [s for s in ("valid", "test") if isinstance(report.get(s), Mapping)]
    if not splits:
        return _empty_figure("no calibration report")
    t = report.get("temperature", 1.0)
    fig = go.Figure()
    for key, name, color in (("ece", "raw confidences", WRONG_COLOR),
                             ("ece_calibrated", f"temperature-scaled (T={t:.2f})", SCALED_COLOR)):
        values = [report[s][key] for s in splits]
        fig.add_trace(go.Bar(
            x=[f"{s} (n={report[s]['n']})" for s in splits], y=values, name=name, marker_color=color,
            text=[f"{v:.3f}" for v in values], textposition="outside", cliponaxis=False,
            hovertemplate="%{x}: ECE %{y:.4f}<extra></extra>",
        ))
    top = max(max(report[s]["ece"], report[s]["ece_calibrated"]) for s in splits)
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(title="ECE (lower is better)", range=[0, max(top * 1.25, 0.01)]),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return fig
