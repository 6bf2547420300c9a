"""Per-class metrics, their intervals and the confidence histogram from counts, not from one row per image.

A large run's pages read counts the store aggregates (images per (true, predicted) class pair, predictions
per confidence bin) instead of its predictions; these functions turn the counts into what the pages draw:

- ``expand_confusion``: label and prediction arrays with the counts of ``cm`` (for the point metrics);
- ``bootstrap_f1_cells``: the F1 bootstrap of ``core.intervals.bootstrap_f1`` over cells instead of images.
  Each resample draws every non-empty cell's count as Poisson(count) (the Poisson bootstrap: for many images
  it matches resampling images with replacement, whose cell counts are multinomial with those means), so a
  resample costs the number of non-empty cells, not of images: 2,000 resamples of 100,000 images are about
  40 times cheaper;
- ``class_intervals``: the per-class table with intervals of ``core.intervals.attach_intervals``, from ``cm``;
- ``binned_confidence_histogram``: the overview's stacked histogram from bin counts.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.figures import CORRECT_COLOR, WRONG_COLOR
from core.intervals import (
    INTERVAL_COLUMNS,
    LEVEL,
    RESAMPLES,
    F1Intervals,
    _f1,
    _widen_collapsed,
    per_class_table,
    z_for,
)
from core.metrics import per_class_metrics


def _check(cm: Any) -> np.ndarray:
    c = np.asarray(cm)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or (c.size and c.min() < 0):
        raise ValueError(f"cm must be a square matrix of non-negative counts, got shape {c.shape}")
    return c.astype(np.int64)


def expand_confusion(cm: Any) -> tuple[np.ndarray, np.ndarray]:
    """(labels, preds): one entry per image counted in ``cm[true, pred]``, by true then predicted class."""
    c = _check(cm)
    t, p = np.nonzero(c)
    n = c[t, p]
    return np.repeat(t, n), np.repeat(p, n)


def bootstrap_f1_cells(cm: Any, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
                       chunk_elements: int = 2_000_000) -> F1Intervals:
    """Percentile intervals of F1 per class and of macro-F1 (the mean over classes with images, in each
    resample too), by the Poisson bootstrap of the cells of ``cm``."""
    c = _check(cm)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    z = z_for(level)
    k = len(c)
    tp, support, predicted = np.diag(c).copy(), c.sum(axis=1), c.sum(axis=0)
    f1 = _f1(tp, support, predicted)
    present = support > 0
    macro = float(f1[present].mean()) if present.any() else 0.0
    t_idx, p_idx = np.nonzero(c)
    if t_idx.size == 0:
        zeros = np.zeros(k)
        return F1Intervals(f1=zeros, lo=zeros, hi=np.ones(k), macro=0.0, macro_lo=0.0, macro_hi=1.0,
                           resamples=int(resamples), level=level, seed=int(seed))
    lam = c[t_idx, p_idx].astype(np.float64)
    diag = t_idx == p_idx
    rng = np.random.default_rng(seed)
    samples = np.empty((resamples, k))
    macro_s = np.empty(resamples)
    step = max(1, chunk_elements // lam.size)
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        draw = rng.poisson(lam, size=(b, lam.size)).astype(np.float64)
        off = np.arange(b)[:, None] * k
        support_b = np.bincount((off + t_idx).ravel(), weights=draw.ravel(), minlength=b * k).reshape(b, k)
        pred_b = np.bincount((off + p_idx).ravel(), weights=draw.ravel(), minlength=b * k).reshape(b, k)
        tp_b = np.zeros((b, k))
        tp_b[:, t_idx[diag]] = draw[:, diag]
        f1_b = _f1(tp_b, support_b, pred_b)
        samples[start:start + b] = f1_b
        held = support_b > 0
        macro_s[start:start + b] = (f1_b * held).sum(axis=1) / np.maximum(held.sum(axis=1), 1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha], axis=0)
    lo, hi = _widen_collapsed(lo, hi, tp, support, predicted, z)
    macro_lo, macro_hi = ((float(v) for v in np.quantile(macro_s, [alpha, 1.0 - alpha])) if present.any()
                          else (0.0, 0.0))
    return F1Intervals(f1=f1, lo=lo, hi=hi, macro=macro, macro_lo=macro_lo, macro_hi=macro_hi,
                       resamples=int(resamples), level=level, seed=int(seed))


def class_intervals(cm: Any, names: Sequence[str], *, resamples: int = RESAMPLES, level: float = LEVEL,
                    seed: int = 0) -> tuple[pd.DataFrame, F1Intervals]:
    """``core.metrics.per_class_metrics`` of the images counted in ``cm`` with the interval columns of
    ``core.intervals.attach_intervals`` (F1's from :func:`bootstrap_f1_cells`), and the bootstrap."""
    c = _check(cm)
    if len(c) != len(names):
        raise ValueError(f"cm has {len(c)} classes but {len(names)} names were given")
    y, p = expand_confusion(c)
    per = per_class_metrics(y, p, names)
    f1 = bootstrap_f1_cells(c, resamples=resamples, level=level, seed=seed)
    table = per_class_table(y, p, list(names), level=level, f1=f1).set_index("class_idx")
    idx = per["class_idx"].to_numpy(dtype=np.int64)
    return per.assign(**{col: table[col].to_numpy()[idx] for col in INTERVAL_COLUMNS}), f1


def binned_confidence_histogram(counts: pd.DataFrame, *, bins: int = 20) -> go.Figure:
    """The stacked histogram of ``core.figures.confidence_histogram`` from counts: ``counts`` has columns
    bin (0..bins-1), correct (bool) and n, as ``db.queries.scale.confidence_bins`` returns them."""
    fig = go.Figure()
    width = 1.0 / bins
    centres = (np.arange(bins) + 0.5) * width
    for right, name, color in ((True, "correct", CORRECT_COLOR), (False, "wrong", WRONG_COLOR)):
        part = counts[counts["correct"] == right].groupby("bin")["n"].sum()
        y = np.zeros(bins, dtype=np.int64)
        y[part.index.to_numpy(dtype=np.int64)] = part.to_numpy(dtype=np.int64)
        fig.add_trace(go.Bar(x=centres, y=y, width=width, name=name, marker_color=color,
                             hovertemplate="%{x:.2f}: %{y} images<extra>" + name + "</extra>"))
    fig.update_layout(barmode="stack", bargap=0, height=300, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(title="confidence of the predicted class", range=[0, 1]),
                      yaxis=dict(title="images"), legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig
