"""Cached reads of what the store aggregates (``db.queries.scale``), for pages whose cost should follow what
they draw rather than the size of the run. Each cache holds what a page draws: counts per split, per class
pair or per confidence bin, one page of the gallery, the images of one pair; never the run's predictions.

Loaders follow ``dashboard.loaders``: keyed by the store URL, the run and its stamp; no ``st.*`` calls in them.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
import streamlit as st

from core import counts
from core.intervals import Rate, rate
from core.splits import TRAIN
from dashboard import loaders
from dashboard.state import FULL_RANGE
from db.queries import scale as q

# Up to this many predictions the F1 intervals bootstrap images (as core.intervals.bootstrap_f1 does for the
# export); above it, cells (core.counts.bootstrap_f1_cells), whose cost does not grow with the images.
EXACT_BOOTSTRAP_UP_TO = 20_000
HIST_BINS = 20


@st.cache_data(show_spinner=False, max_entries=16)
def load_split_counts(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with loaders.session(url) as s:
        return q.split_counts(s, run_id)


@st.cache_data(show_spinner=False, max_entries=16)
def load_split_pairs(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    """Images per (split, true, predicted class): one read for every split a page shows."""
    with loaders.session(url) as s:
        return q.split_pair_counts(s, run_id)


@st.cache_data(show_spinner=False, max_entries=16)
def load_confusion(url: str, run_id: int, n_classes: int, splits: Optional[tuple[str, ...]], stamp: str) -> np.ndarray:
    pairs = load_split_pairs(url, run_id, stamp)
    if splits is not None:
        pairs = pairs[pairs["split"].isin(splits)]
    return q.confusion_from_pairs(pairs, n_classes, run_id)


@st.cache_data(show_spinner=False, max_entries=16)
def load_confidence_bins(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with loaders.session(url) as s:
        return q.confidence_bins(s, run_id, HIST_BINS)


@st.cache_data(show_spinner=False, max_entries=64)
def load_errors_page(url: str, run_id: int, stamp: str, splits: Optional[tuple[str, ...]], true: tuple[int, ...],
                     pred: tuple[int, ...], conf: tuple[float, float], offset: int, limit: int) -> pd.DataFrame:
    with loaders.session(url) as s:
        return q.errors_page(s, run_id, splits=splits, true_classes=true, pred_classes=pred, confidence=conf,
                             offset=offset, limit=limit)


@st.cache_data(show_spinner=False, max_entries=64)
def load_errors_count(url: str, run_id: int, stamp: str, splits: Optional[tuple[str, ...]], true: tuple[int, ...],
                      pred: tuple[int, ...], conf: tuple[float, float]) -> int:
    with loaders.session(url) as s:
        return q.errors_count(s, run_id, splits=splits, true_classes=true, pred_classes=pred, confidence=conf)


@st.cache_data(show_spinner=False, max_entries=256)
def load_neighbours(url: str, run_id: int, stamp: str, image_id: int, splits: Optional[tuple[str, ...]],
                    true: tuple[int, ...], pred: tuple[int, ...], conf: tuple[float, float]) -> q.Neighbours:
    with loaders.session(url) as s:
        return q.errors_neighbours(s, run_id, image_id, splits=splits, true_classes=true, pred_classes=pred,
                                   confidence=conf)


@st.cache_data(show_spinner=False, max_entries=64)
def load_pair_images(url: str, run_id: int, true_idx: int, pred_idx: int, splits: Optional[tuple[str, ...]],
                     limit: int, stamp: str) -> pd.DataFrame:
    with loaders.session(url) as s:
        return q.pair_images(s, run_id, true_idx, pred_idx, splits, limit)


@st.cache_data(show_spinner=False, max_entries=16)
def load_cell_intervals(url: str, run_id: int, names: tuple[str, ...], splits: Optional[tuple[str, ...]],
                        stamp: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-class table with intervals and macro-F1 from the pair counts (``core.counts.class_intervals``)."""
    cm = load_confusion(url, run_id, len(names), splits, stamp)
    table, f1 = counts.class_intervals(cm, names)
    return table, dict(value=f1.macro, lo=f1.macro_lo, hi=f1.macro_hi, n=int(cm.sum()), level=f1.level)


def n_predictions(ctx, splits: Optional[tuple[str, ...]] = None) -> int:
    sc = load_split_counts(ctx.url, ctx.run_id, ctx.stamp)
    return int(sc["predictions"].sum() if splits is None else sc.loc[sc["split"].isin(splits), "predictions"].sum())


def require_counts(ctx) -> pd.DataFrame:
    """The run's prediction counts per split (split, predictions, correct), or a message and ``st.stop()``."""
    sc = load_split_counts(ctx.url, ctx.run_id, ctx.stamp)
    if sc.empty:
        from dashboard.context import no_results_message

        st.info(no_results_message(ctx))
        st.stop()
    return sc


def gallery_where(ctx) -> dict[str, Any]:
    """The gallery's filters held in the shared state (split, true and predicted sports, confidence), as the
    SQL loaders above take them: ``splits``, ``true``, ``pred`` (class indices) and ``conf``."""
    ss = st.session_state
    index = {n: i for i, n in enumerate(ctx.names)}
    split = ss.get("split", "all")
    lo, hi = tuple(ss.get("conf", FULL_RANGE))
    return dict(splits=None if split == "all" else (split,),
                true=tuple(index[n] for n in ss.get("sport", []) if n in index),
                pred=tuple(index[n] for n in ss.get("pred", []) if n in index), conf=(float(lo), float(hi)))


def held_out_accuracy(ctx) -> Rate:
    """Top-1 over the predictions the model never trained on (every split but train), from the store's
    counts per split: ``intervals_ui.out_of_sample_accuracy`` without reading the predictions."""
    sc = load_split_counts(ctx.url, ctx.run_id, ctx.stamp)
    held = sc[sc["split"] != TRAIN]
    return rate(int(held["correct"].sum()), int(held["predictions"].sum()))


def stored_confidence_counts(ctx) -> Optional[pd.DataFrame]:
    """The calibrated right/wrong confidence counts ``jobs.calibrate`` stored for valid and test, as the rows
    (bin, correct, n) ``core.counts.binned_confidence_histogram`` draws; ``None`` when the run has no stored
    calibration with them (or they were binned otherwise)."""
    from dashboard import calibration_ui  # it imports this module

    stored = calibration_ui.load_calibration(ctx.url, ctx.run_id, calibration_ui.load_calibration_stamp(ctx.url, ctx.run_id))
    hists = [f["hist"].get("calibrated") for f in (stored.figures.values() if stored is not None else ())]
    if not hists or any(h is None or h.get("bins") != HIST_BINS for h in hists):
        return None
    rows = [(b, right, n) for h in hists for right, key in ((True, "right"), (False, "wrong"))
            for b, n in enumerate(h[key])]
    return pd.DataFrame(rows, columns=["bin", "correct", "n"]).groupby(["bin", "correct"], as_index=False)["n"].sum()
