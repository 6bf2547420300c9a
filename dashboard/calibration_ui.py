"""The "calibrated confidences" switch and what it changes on every page.

With the switch on, a confidence shown or filtered on is ``softmax(logits / T)`` of the image's stored
logits, with the temperature ``T`` that ``jobs.calibrate`` fitted on the run's validation split; off, the
raw softmax the evaluation stored. The switch lives in the sidebar, is carried across pages and into the URL
(``calibrated=1`` / ``0``) and starts on for a run that has a temperature. Where the run has no temperature,
or not every prediction kept its logits, it is disabled and says why in one line.

Loaders here follow ``dashboard.loaders``: cached, keyed by the store URL, the run, and a stamp that
changes when the run or its calibration does; they make no ``st.*`` calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy.engine import make_url

from core.calibration import calibrated_top
from core.report_calibration import calibrated_suspects
from dashboard import loaders
from db import queries
from db.queries.calibration import StoredCalibration, calibration_for, calibration_stamp, logits_coverage

SHARED_NAME = "calibrated"  # in dashboard.state.SHARED, and the URL parameter
WIDGET = "sb_calibrated"
LABEL = "Calibrated confidences"


# --------------------------------------------------------------------------- loaders

@st.cache_data(ttl=5, show_spinner=False)
def load_calibration_stamp(url: str, run_id: int) -> Optional[str]:
    """When the run was last calibrated; polled, since ``jobs.calibrate`` can run after the run finished."""
    with loaders.session(url) as s:
        return calibration_stamp(s, run_id)


@st.cache_data(show_spinner=False, max_entries=16)
def load_calibration(url: str, run_id: int, cal_stamp: Optional[str]) -> Optional[StoredCalibration]:
    with loaders.session(url) as s:
        return calibration_for(s, run_id)


@st.cache_data(ttl=5, show_spinner=False, max_entries=16)
def load_coverage(url: str, run_id: int) -> pd.DataFrame:
    """Per split: predictions and how many kept their logits (polled: ``jobs.cams`` can add them later)."""
    with loaders.session(url) as s:
        return logits_coverage(s, run_id)


@st.cache_data(show_spinner=False, max_entries=4)
def load_logits(url: str, run_id: int, n_classes: int, stamp: str, key: str) -> queries.StoredLogits:
    """Every stored logit vector of the run (``key``: what the stored logits depend on, see ``logits_key``)."""
    with loaders.session(url) as s:
        return queries.logits_for(s, run_id, n_classes)


@dataclass(frozen=True)
class Calibrated:
    """softmax(logits / T) of every image with logits: the predicted class's confidence and the top 5."""

    index: pd.Index  # image ids, row for row
    confidence: np.ndarray
    top_idx: np.ndarray  # (N, <=5)
    top_prob: np.ndarray

    def rows(self, image_ids: Sequence[int]) -> np.ndarray:
        """Row of each image id, -1 where the image has no logits."""
        return self.index.get_indexer(pd.Index(np.asarray(image_ids, dtype=np.int64)))


@st.cache_data(show_spinner=False, max_entries=4)
def load_calibrated(url: str, run_id: int, n_classes: int, stamp: str, key: str, temperature: float) -> Calibrated:
    stored = load_logits(url, run_id, n_classes, stamp, key)
    frame = stored.frame
    if frame.empty:
        empty = np.zeros((0, min(5, n_classes)))
        return Calibrated(pd.Index([], dtype=np.int64), np.zeros(0), empty.astype(np.int64), empty)
    conf, idx, prob = calibrated_top(stored.logits, temperature, pred=frame["pred"].to_numpy())
    return Calibrated(pd.Index(frame["image_id"].to_numpy(dtype=np.int64)), conf, idx, prob)


def logits_key(url: str, run_id: int) -> str:
    """What the stored logits (and their calibrated confidences) depend on: the calibration and the coverage."""
    cov = load_coverage(url, run_id)
    return f"{load_calibration_stamp(url, run_id)}|{cov.to_json() if len(cov) else ''}"


# --------------------------------------------------------------------------- the switch

def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class Availability:
    """The run's temperature when the switch can be used, else the one-line reason it cannot."""

    calibration: Optional[StoredCalibration]
    reason: Optional[str]

    @property
    def temperature(self) -> Optional[float]:
        return None if self.reason is not None or self.calibration is None else self.calibration.temperature


def availability(url: str, run_id: int) -> Availability:
    cov = load_coverage(url, run_id)
    cal = load_calibration(url, run_id, load_calibration_stamp(url, run_id))
    db = shown_url(url)
    if cov.empty:
        return Availability(cal, "the run has no predictions yet")
    n, k = int(cov["predictions"].sum()), int(cov["with_logits"].sum())
    cams = f"`python -m jobs.cams --run {run_id} --db {db}`"
    if k == 0:
        return Availability(cal, f"this run stored no logits; recompute them with {cams}")
    if k < n:
        return Availability(cal, f"{n - k:,} of {n:,} predictions have no logits; recompute them with {cams}")
    if cal is None:
        return Availability(cal, f"not calibrated yet; run `python -m jobs.calibrate --run {run_id} --db {db}`")
    return Availability(cal, None)


def _remember() -> None:
    st.session_state[SHARED_NAME] = bool(st.session_state[WIDGET])


def switch(url: str, run_id: int) -> None:
    """The sidebar toggle: on by default where the run has a temperature, disabled with its reason otherwise."""
    ss = st.session_state
    avail = availability(url, run_id)
    ss[WIDGET] = bool(ss.get(SHARED_NAME, True)) and avail.temperature is not None
    st.sidebar.toggle(LABEL, key=WIDGET, on_change=_remember, disabled=avail.temperature is None,
                      help="Show and filter on softmax(logits / T), with the temperature T fitted on the validation "
                           "split (python -m jobs.calibrate); off: the raw softmax of the model.")
    if avail.reason is not None:
        st.sidebar.caption(f"Calibrated confidences unavailable: {avail.reason}.")
    elif ss[WIDGET]:
        st.sidebar.caption(f"Confidences scaled by T = {avail.temperature:.3g}, fitted on valid.")


def temperature(url: str, run_id: int) -> Optional[float]:
    """The temperature pages apply: the run's, when the switch is on and usable; else ``None`` (raw)."""
    if not st.session_state.get(SHARED_NAME, True):
        return None
    return availability(url, run_id).temperature


def calibrated(ctx) -> Optional[Calibrated]:
    """The run's calibrated confidences when the switch is on and usable (``ctx``: ``dashboard.context.Ctx``)."""
    t = temperature(ctx.url, ctx.run_id)
    if t is None:
        return None
    return load_calibrated(ctx.url, ctx.run_id, len(ctx.names), ctx.stamp, logits_key(ctx.url, ctx.run_id), t)


def shown(ctx, frame: pd.DataFrame, *, resort: bool = False) -> pd.DataFrame:
    """``frame`` (with image_id and confidence) with the confidences the switch asks for; ``resort``: most
    confident first again, as ``errors_frame`` orders them."""
    cal = calibrated(ctx)
    if cal is None or frame.empty:
        return frame
    rows = cal.rows(frame["image_id"])
    conf = np.where(rows >= 0, cal.confidence[np.maximum(rows, 0)], frame["confidence"].to_numpy())
    out = frame.assign(confidence=conf)
    if resort:
        out = out.sort_values(["confidence", "image_id"], ascending=[False, True], kind="stable")
    return out


def word(ctx) -> str:
    """"calibrated" or "raw": which confidences the page shows, for a caption."""
    t = temperature(ctx.url, ctx.run_id)
    return f"calibrated (T = {t:.3g})" if t is not None else "raw"


def top5(ctx, image_id: int) -> Optional[tuple[float, list[int], list[float]]]:
    """One image's calibrated confidence of its predicted class and its calibrated top 5; ``None`` when the
    switch is off or the image has no logits."""
    cal = calibrated(ctx)
    if cal is None:
        return None
    (row,) = cal.rows([image_id])
    if row < 0:
        return None
    return float(cal.confidence[row]), [int(i) for i in cal.top_idx[row]], [float(p) for p in cal.top_prob[row]]


def ranked_suspects(ctx, suspects: Sequence[dict]) -> tuple[list[dict], bool]:
    """The audit's suspect labels, most suspect first, and whether that order is calibrated: with the switch
    on, ``core.report_calibration.calibrated_suspects`` (probabilities recomputed as softmax(logits / T),
    ranked by the given label's); off, the audit's own order and numbers."""
    t = temperature(ctx.url, ctx.run_id)
    if t is None or not suspects:
        return [dict(sp) for sp in suspects], False
    stored = load_logits(ctx.url, ctx.run_id, len(ctx.names), ctx.stamp, logits_key(ctx.url, ctx.run_id))
    return calibrated_suspects(suspects, stored.frame["image_id"].to_numpy(), stored.logits, t), True
