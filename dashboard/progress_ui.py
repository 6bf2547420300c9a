"""A run while it trains: its progress and its training curves, redrawn every few seconds by themselves.

The page draws :func:`training_section`; for a running run it is a fragment that Streamlit reruns every
``LIVE_SECONDS`` (the rest of the page stays as it is), reading the run's epoch rows afresh each time. When
the run is no longer running the fragment reruns the whole page once, which then draws the final view
without a timer.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Optional

import pandas as pd
import streamlit as st

from core.figures import training_curves
from core.runprogress import Progress, training_progress
from core.stages import PHASE1
from dashboard import loaders
from dashboard.charts import chart
from dashboard.context import Ctx
from db import queries

LIVE_SECONDS = 5


def refresh_seconds(status: str) -> Optional[int]:
    """How often the training section redraws itself: while the run is running, else never."""
    return LIVE_SECONDS if status == "running" else None


def elapsed_since(created_at: Optional[str], now: Optional[datetime] = None) -> float:
    """Seconds since a run's ``created_at`` (ISO, UTC without a zone, as the store keeps it)."""
    if not created_at:
        return 0.0
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    return max(0.0, (now - datetime.fromisoformat(created_at)).total_seconds())


def live_state(url: str, run_id: int) -> tuple[Optional[queries.RunInfo], pd.DataFrame, Optional[queries.RunInfo]]:
    """The run, its epochs and its complete phase-1 snapshot (None before phase 1 has been evaluated), as the
    store holds them now (not cached: this is the live view)."""
    with loaders.session(url) as s:
        sid = queries.snapshot_id(s, run_id, PHASE1)
        snap = queries.run_info(s, sid) if sid is not None else None
        return queries.run_info(s, run_id), queries.epochs_frame(s, run_id), (
            snap if snap is not None and snap.status == "complete" else None)


def _open_run(run_id: int) -> None:
    loaders.load_runs.clear()  # the run list is cached for a few seconds; the snapshot may be newer than it
    st.session_state["run"] = run_id
    st.session_state["sb_run"] = run_id  # the sidebar's run picker


def run_progress(info: queries.RunInfo, epochs: pd.DataFrame) -> Progress:
    cfg = info.config or {}
    return training_progress(epochs, int(cfg.get("epochs_frozen") or 0), int(cfg.get("epochs_finetune") or 0),
                             elapsed_since(info.created_at))


def training_section(ctx: Ctx, *, static) -> None:
    """The training curves: live (progress bar, curves, redrawn every few seconds) while the run is running,
    else ``static()``, the page's own drawing of a finished run's curves."""
    if refresh_seconds(ctx.info.status) is None:
        static()
        return
    st.fragment(run_every=refresh_seconds(ctx.info.status))(_live)(ctx)


def _live(ctx: Ctx) -> None:
    info, epochs, snapshot = live_state(ctx.url, ctx.run_id)
    if info is None or info.status != "running":
        st.rerun()  # finished (or gone): the whole page redraws its final view, without a timer
    progress = run_progress(info, epochs)
    st.progress(progress.fraction, text=progress.line())
    if snapshot is not None:
        c1, c2 = st.columns([3, 1], vertical_alignment="center")
        c1.info(f"Phase 1 has been evaluated: run #{snapshot.id} ({snapshot.name}) holds the predictions and maps "
                "of the model at the end of phase 1, on every page, while fine-tuning goes on.")
        if c2.button(f"Open run #{snapshot.id}", key="ov_open_phase1", on_click=_open_run, args=(snapshot.id,),
                     width="stretch"):
            st.rerun()  # the whole page, so the sidebar's picker shows the snapshot too
    if epochs.empty:
        st.caption(f"The first epoch's curves appear here when it ends (this refreshes every {LIVE_SECONDS} s).")
        return
    chart(training_curves(epochs), key="ov_live_curves", name="training-curves")
    st.caption(f"Refreshes every {LIVE_SECONDS} s while the run trains; last read {time.strftime('%H:%M:%S')}.")
