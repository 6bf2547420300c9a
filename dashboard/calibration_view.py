"""What the Calibration page draws, from the source that suits the run's size.

- **logits** (up to ``LOGITS_UP_TO`` predictions of valid and test): every score and figure computed from
  the stored logit vectors (``core.calibration``, ``core.calibration_views.split_figures``), as before;
- **stored** (a larger, calibrated run): the report ``jobs.calibrate`` stored, scores and figures (raw and
  after the temperature); no logit is read. A report stored before the figures were kept gets its raw
  histogram and per-class table from the store's counts, as below;
- **counts** (a larger run not calibrated yet): raw reliability, ECE, MCE, the histogram and the per-class
  ECE from counts the store aggregates per (split, class, confidence bin, right/wrong)
  (``db.queries.scale.calibration_cells``); NLL is the evaluation's mean loss; the Brier score needs the
  whole probability vector, so it waits for ``jobs.calibrate``.

100,000 predictions of 1,000 classes are 400 MB of float32 once decoded: the page reads a few kilobytes
instead. Loaders follow ``dashboard.loaders`` (cached, keyed by the run's stamp, no ``st.*`` calls).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd
import streamlit as st

from core import calibration as cal
from core import calibration_views as views
from core.splits import TEST, VALID
from dashboard import calibration_ui, loaders, scale_ui
from db.queries import scale as q
from db.queries.calibration import StoredCalibration

LOGITS_UP_TO = 20_000
LOGITS, STORED, COUNTS = "logits", "stored", "counts"
RAW, CALIBRATED = views.RAW, views.CALIBRATED


@dataclass(frozen=True)
class SplitView:
    """One split as the page draws it. ``scores``: ece, mce, nll, brier and, with a temperature,
    ece_calibrated and nll_calibrated (None where the source cannot say); ``hist`` and ``per_class`` keyed
    by "raw" and (where known) "calibrated"; ``per_class`` empty when it is counted on demand."""

    split: str
    n: int
    correct: int
    scores: dict[str, Optional[float]]
    bins: list[dict[str, Any]]
    bins_calibrated: Optional[list[dict[str, Any]]] = None
    hist: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_class: dict[str, dict[str, list]] = field(default_factory=dict)


@dataclass(frozen=True)
class PageData:
    source: str
    splits: dict[str, SplitView]


# --------------------------------------------------------------------------- the three sources

@st.cache_data(show_spinner=False, max_entries=8)
def load_from_logits(url: str, run_id: int, n_classes: int, stamp: str, key: str, temperature: Optional[float],
                     bins: int) -> PageData:
    stored = calibration_ui.load_logits(url, run_id, n_classes, stamp, key)
    out = {}
    for s in (VALID, TEST):
        rows = (stored.frame["split"] == s).to_numpy()
        if not rows.any():
            continue
        z, y = stored.logits[rows], stored.frame["label"].to_numpy()[rows]
        m = cal.split_metrics(z, y, temperature=temperature or 1.0, bins=bins)
        f = views.split_figures(z, y, temperature=temperature or 1.0, bins=bins)
        keep = (RAW, CALIBRATED) if temperature else (RAW,)
        out[s] = SplitView(s, m["n"], f["correct"], _scores(m, temperature is not None), m["bins"],
                           f["bins_calibrated"] if temperature else None,
                           {k: f["hist"][k] for k in keep}, {k: f["per_class"][k] for k in keep})
    return PageData(LOGITS, out)


def _scores(m: dict[str, Any], calibrated: bool) -> dict[str, Optional[float]]:
    keys = ("ece", "mce", "nll", "brier") + (("ece_calibrated", "nll_calibrated") if calibrated else ())
    return {k: m.get(k) for k in keys}


@st.cache_data(show_spinner=False, max_entries=8)
def load_cells(url: str, run_id: int, bins: int, stamp: str) -> pd.DataFrame:
    """Per split, bin and right/wrong (summed over the classes): images and confidence sums."""
    with loaders.session(url) as s:
        return q.calibration_cells(s, run_id, bins, (VALID, TEST), by_class=False)


@st.cache_data(show_spinner=False, max_entries=8)
def load_class_cells(url: str, run_id: int, split: str, bins: int, stamp: str) -> pd.DataFrame:
    """One split's cells per true class (about classes x bins rows)."""
    with loaders.session(url) as s:
        return q.calibration_cells(s, run_id, bins, (split,))


def _hist_from_store(url: str, run_id: int, split: str, stamp: str, cells: pd.DataFrame) -> dict[str, Any]:
    counts = scale_ui.load_confidence_bins(url, run_id, stamp)  # shared with the overview's histogram
    return views.hist_from_bin_counts(counts[counts["split"] == split], cells, bins=scale_ui.HIST_BINS)


def from_counts(url: str, run_id: int, stamp: str, bins: int) -> PageData:
    cells = load_cells(url, run_id, bins, stamp)
    evals = loaders.load_evaluations(url, run_id, stamp).set_index("split")
    out = {}
    for s in (VALID, TEST):
        mine = cells[cells["split"] == s]
        if mine.empty:
            continue
        b = views.bins_from_cells(mine, bins)
        loss = evals.loc[s, "loss"] if s in evals.index and "loss" in evals.columns else None
        scores = {"ece": b.ece(), "mce": b.mce(), "nll": float(loss) if pd.notna(loss) else None, "brier": None}
        right = int(mine.loc[mine["correct"], "n"].sum())
        out[s] = SplitView(s, b.n, right, scores, b.records(), None,
                           {RAW: _hist_from_store(url, run_id, s, stamp, mine)}, {})
    return PageData(COUNTS, out)


def from_stored(url: str, run_id: int, stamp: str, stored: StoredCalibration) -> PageData:
    figures = stored.figures
    out = {}
    for s in (VALID, TEST):
        m = stored.report.get(s)
        if not isinstance(m, dict):
            continue
        f = figures.get(s)
        if f:
            out[s] = SplitView(s, int(m["n"]), int(f["correct"]), _scores(m, True), m["bins"], f["bins_calibrated"],
                               dict(f["hist"]), dict(f["per_class"]))
        else:  # a report from before the figures were stored: the raw ones from the store's counts
            cells = load_cells(url, run_id, stored.bins, stamp)
            mine = cells[cells["split"] == s]
            right = int(mine.loc[mine["correct"], "n"].sum())
            out[s] = SplitView(s, int(m["n"]), right, _scores(m, True), m["bins"], None,
                               {RAW: _hist_from_store(url, run_id, s, stamp, mine)}, {})
    return PageData(STORED, out)


def page_data(ctx, stored: Optional[StoredCalibration], n_evaluated: int, bins: int) -> PageData:
    """The page's data from the source that suits the run (see the module)."""
    if n_evaluated <= LOGITS_UP_TO:
        return load_from_logits(ctx.url, ctx.run_id, len(ctx.names), ctx.stamp,
                                calibration_ui.logits_key(ctx.url, ctx.run_id),
                                stored.temperature if stored is not None else None, bins)
    if stored is not None:
        return from_stored(ctx.url, ctx.run_id, ctx.stamp, stored)
    return from_counts(ctx.url, ctx.run_id, ctx.stamp, bins)


def class_table(ctx, data: PageData, split: str, which: str, bins: int) -> tuple[pd.DataFrame, str]:
    """The per-class ECE table of ``split`` (``which``: "raw" or "calibrated"), worst first, and which one it
    is (the raw one where the source has no calibrated table)."""
    view = data.splits[split]
    if which not in view.per_class and RAW in view.per_class:
        which = RAW
    if which in view.per_class:
        return views.per_class_table(view.per_class[which], list(ctx.names)), which
    cells = load_class_cells(ctx.url, ctx.run_id, split, bins, ctx.stamp)
    return views.per_class_from_cells(cells, len(ctx.names), bins, list(ctx.names)), RAW


def source_note(data: PageData, stored: Optional[StoredCalibration], n_evaluated: int) -> Optional[str]:
    """One line on where the numbers come from, for a run whose logits the page does not decode."""
    if data.source == LOGITS:
        return None
    size = f"{n_evaluated:,} predictions of valid and test: above {LOGITS_UP_TO:,} the page does not decode logits"
    if data.source == STORED:
        old = any(not view.per_class for view in data.splits.values())
        return (f"From the report `jobs.calibrate` stored at {stored.created_at} UTC ({size})."
                + (" That report predates the stored figures, so the histogram and per-class table show raw "
                   "confidences counted in the store; run `jobs.calibrate` again for the calibrated ones."
                   if old else ""))
    return (f"Raw confidences counted in the store ({size}): NLL is the evaluation's mean loss; the Brier "
            "score needs every probability, so it comes with `jobs.calibrate`.")
