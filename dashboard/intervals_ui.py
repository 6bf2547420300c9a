"""An interval and an n beside every rate a page shows: the per-class table with its intervals, the headline
rates of a split, and the words that go with them. Computations live in ``core.intervals``; this module
caches them (no ``st.*`` calls in the loaders) and formats them for the pages."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
import streamlit as st

from core import intervals as iv
from core.metrics import per_class_metrics
from core.splits import TRAIN
from dashboard import loaders, scale_ui


@st.cache_data(show_spinner=False, max_entries=32)
def load_class_intervals(url: str, run_id: int, names: tuple[str, ...], splits: Optional[tuple[str, ...]],
                         stamp: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per class (``per_class_metrics``' columns, worst F1 first) with ``core.intervals.INTERVAL_COLUMNS``,
    and macro-F1 over the classes with images, with its bootstrap interval and n (images). Above
    ``scale_ui.EXACT_BOOTSTRAP_UP_TO`` predictions, from the store's pair counts instead of the predictions."""
    sc = scale_ui.load_split_counts(url, run_id, stamp)
    counted = sc if splits is None else sc[sc["split"].isin(splits)]
    if int(counted["predictions"].sum()) > scale_ui.EXACT_BOOTSTRAP_UP_TO:
        return scale_ui.load_cell_intervals(url, run_id, names, splits, stamp)
    preds = loaders.load_predictions(url, run_id, stamp)
    if splits is not None:
        preds = preds[preds["split"].isin(splits)]
    y, p = preds["label"].to_numpy(dtype=np.int64), preds["pred"].to_numpy(dtype=np.int64)
    table, f1 = iv.attach_intervals(per_class_metrics(y, p, names), y, p)
    return table, dict(value=f1.macro, lo=f1.macro_lo, hi=f1.macro_hi, n=int(len(y)), level=f1.level)


def span(lo: Any, hi: Any, digits: int = 2) -> str:
    """``0.38–0.96``: an interval as text for a table cell."""
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def with_spans(table: pd.DataFrame, names: tuple[str, ...] = ("precision", "recall", "f1")) -> pd.DataFrame:
    """``table`` with a text column ``<name> 95%`` per metric that has ``<name>_lo``/``<name>_hi``."""
    out = table.copy()
    for m in names:
        if f"{m}_lo" in out and f"{m}_hi" in out:
            out[f"{m} 95%"] = [span(a, b) for a, b in zip(out[f"{m}_lo"], out[f"{m}_hi"])]
    return out


def split_rates(preds: pd.DataFrame, evaluation: Optional[pd.Series]) -> tuple[Optional[iv.Rate], Optional[iv.Rate]]:
    """Top-1 (counted on ``preds``, one split's predictions) and top-5 (from the split's evaluation row, whose
    top-5 share of ``n_images`` gives the count) with their Wilson intervals; ``None`` where unknown."""
    top1 = iv.rate(int((preds["label"] == preds["pred"]).sum()), len(preds)) if len(preds) else None
    top5 = None
    if evaluation is not None and pd.notna(evaluation.get("top5")) and int(evaluation.get("n_images") or 0) > 0:
        n = int(evaluation["n_images"])
        top5 = iv.rate(int(round(float(evaluation["top5"]) * n)), n)
    return top1, top5


def macro_caption(macro: dict[str, Any]) -> str:
    return (f"{macro['n']:,} images · {round(macro['level'] * 100)}% bootstrap interval "
            f"{macro['lo']:.3f}–{macro['hi']:.3f}")


def out_of_sample_accuracy(preds: pd.DataFrame) -> iv.Rate:
    """Top-1 over the predictions the model never trained on (every split but train): the accuracy behind
    the audit's suspect labels."""
    held = preds[preds["split"] != TRAIN]
    return iv.rate(int((held["label"] == held["pred"]).sum()), len(held))
