"""The run a page shows: opening the store, the run picker, and the explanations when there is nothing to show.

Every page starts with ``require_run()``: it returns a :class:`Ctx` (store URL, run, the stamp that keys
the caches, the run's info) or explains in one message why there is nothing to show (no store, an empty
one, one written by an older version, an unreadable one) and stops the page.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import pandas as pd
import streamlit as st
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core.splits import SPLITS
from dashboard import calibration_ui, loaders
from dashboard.state import gallery_filtered, seed
from db import queries
from db.store import StoreError
from db.storecheck import StoreUnreadable, db_arg

# Kept for pages that have not moved to train_hint(url), which names the store shown.
UPGRADE_COMMAND = "python -m jobs.upgrade"


@dataclass(frozen=True)
class Ctx:
    url: str
    run_id: int
    stamp: str
    info: queries.RunInfo

    @property
    def names(self) -> tuple[str, ...]:
        return self.info.classes


def shown_url(url: str) -> str:
    """The store URL as a page may show it: any password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def upgrade_message(url: str) -> str:
    """The one line shown on every page for a store of an older schema."""
    return (f"This store was written by an older version of sports-cam. Upgrade it with "
            f"`{UPGRADE_COMMAND} --db {shown_url(url)}` (a SQLite file is backed up first), then reload this page.")


def train_hint(url: str) -> str:
    """The first command for a store without runs, naming this store so that it works when copied."""
    return f"Run `python -m jobs.train {db_arg(url)}` (it trains the built-in demo into this store), then reload this page."


def job_command(job: str, url: str, *flags: str) -> str:
    """``python -m jobs.<job> FLAGS --db <this store>``: a command for a page to show, complete when copied."""
    return " ".join(["python -m", f"jobs.{job}", *flags, db_arg(url)])


def resume_command(info: queries.RunInfo, url: str) -> str:
    """The command that continues a stopped run from its last checkpoint."""
    run_dir = info.config.get("run_dir")
    where = [f"--resume {run_dir}/last.pt"] if run_dir else ["--resume", f"--run-name {info.name}"]
    return job_command("train", url, *where)


def no_results_message(ctx: "Ctx") -> str:
    """Why a run has no predictions yet, and the command that gives it some, by the run's status."""
    info = ctx.info
    if info.status == "running":
        return (f"Run #{info.id} is still training: its predictions and maps are written when training ends. "
                "The Overview shows its progress meanwhile.")
    if info.status == "failed":
        return (f"Run #{info.id} stopped before its evaluation was written. Continue it from its last checkpoint "
                f"with `{resume_command(info, ctx.url)}`, then reload this page.")
    return (f"Run #{info.id} finished without evaluating a split. Write its predictions with "
            f"`{job_command('cams', ctx.url, f'--run {info.id}')}`, then reload this page.")


def open_store() -> str:
    """The store URL, or an explanation and ``st.stop()`` when there is no usable store."""
    url = None
    try:
        url = loaders.store_url()
        loaders.connect(url)
    except StoreUnreadable as exc:
        st.error(f"Cannot read the store: {exc}")
        st.stop()
    except StoreError as exc:
        if url is not None and UPGRADE_COMMAND in str(exc):
            st.error(upgrade_message(url))
        else:
            st.info(f"No results to show yet: {exc}, then reload this page.")
        st.stop()
    except SQLAlchemyError as exc:
        st.error(f"Cannot read the store: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
        st.stop()
    return url


def _stamp(runs: pd.DataFrame, run_id: int) -> str:
    row = runs.loc[runs["id"] == run_id].iloc[0]
    stamp = f"{row['status']}|{row['finished_at']}"
    if row["status"] == "running":
        stamp += f"|{int(time.time() // 30)}"  # a run in progress keeps changing: refresh every 30 s
    return stamp


def run_stamp(url: str, run_id: int) -> str:
    """The stamp ``require_run`` keys a run's caches with, for code that knows only the URL and the run
    (the sidebar); "" when the store has no such run."""
    runs = loaders.load_runs(url)
    return _stamp(runs, run_id) if len(runs) and (runs["id"] == run_id).any() else ""


def run_picker(url: str) -> Optional[int]:
    """Sidebar choice of run (newest complete run by default); ``None`` when the store holds no run."""
    runs = loaders.load_runs(url)
    if runs.empty:
        return None
    ids = [int(i) for i in runs["id"]]
    labels = {int(r.id): f"#{r.id} {r.name} ({r.status})" for r in runs.itertuples()}
    default = loaders.load_default_run(url)
    seed("sb_run", "run", default, valid=lambda v: v in ids)
    run_id = st.sidebar.selectbox("Run", ids, format_func=labels.get, key="sb_run")
    st.session_state["run"] = run_id
    return run_id


def sidebar() -> None:
    """The run picker and the calibrated-confidences switch, when the store can be read; otherwise nothing
    (the page explains)."""
    try:
        url = loaders.store_url()
        run_id = run_picker(url)
        if run_id is not None:
            calibration_ui.switch(url, run_id)
    except (StoreError, SQLAlchemyError):
        pass


def require_run() -> Ctx:
    """The chosen run, or an explanation and ``st.stop()``."""
    url = open_store()
    runs = loaders.load_runs(url)
    if runs.empty:
        st.info(f"The store at `{shown_url(url)}` holds no runs yet.\n\n{train_hint(url)}")
        st.stop()
    run_id = st.session_state.get("run")
    if run_id not in set(int(i) for i in runs["id"]):
        run_id = loaders.load_default_run(url)
    stamp = _stamp(runs, run_id)
    info = loaders.load_run(url, run_id, stamp)
    if info is None:
        st.error(f"Run {run_id} is not in the store any more; choose another in the sidebar.")
        st.stop()
    if info.status == "failed":
        st.warning(f"Run #{info.id} failed: {info.error or 'no error recorded'}. Showing what it wrote.")
    elif info.status == "running":
        st.warning(f"Run #{info.id} is still running; figures refresh as it writes.")
    return Ctx(url=url, run_id=run_id, stamp=stamp, info=info)


def require_predictions(ctx: Ctx) -> pd.DataFrame:
    preds = loaders.load_predictions(ctx.url, ctx.run_id, ctx.stamp)
    if preds.empty:
        st.info(no_results_message(ctx))
        st.stop()
    return calibration_ui.shown(ctx, preds)  # the confidences the sidebar switch asks for


def split_choice(ctx: Ctx, preds: pd.DataFrame, key: str, *, container=st) -> Optional[tuple[str, ...]]:
    """A split selector (``all`` or one split); returns the splits to use, ``None`` meaning all."""
    present = [s for s in SPLITS if s in set(preds["split"])]
    options = ["all"] + present
    seed(key, "split", "all", valid=lambda v: v in options)
    choice = container.selectbox("Split", options, key=key)
    st.session_state["split"] = choice
    return None if choice == "all" else (choice,)


def gallery_errors(ctx: Ctx) -> pd.DataFrame:
    """The run's errors under the gallery filters held in the shared state (the gallery's list, and the one
    the comparison page's Previous/Next walk)."""
    errors = calibration_ui.shown(ctx, loaders.load_errors(ctx.url, ctx.run_id, ctx.stamp), resort=True)
    return gallery_filtered(errors, ctx.names)
