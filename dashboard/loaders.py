"""Where the store is, and every read of it the pages make, cached.

Loaders are pure functions under ``st.cache_data`` keyed by the store URL, the run and a stamp that changes
when the run does; they call ``db.queries`` and make no ``st.*`` calls. The engine and its one sessionmaker
are a cached resource, opened with ``readonly=True`` so the dashboard never creates or alters a store.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core import metrics
from core.cammaps import DEFAULT_METHOD, StoredMaps
from db import queries
from db.store import ENV_VAR, make_engine, make_sessionmaker, resolve_url

# --------------------------------------------------------------------------- store location


def db_url_from_argv(argv: Sequence[str]) -> Optional[str]:
    """The ``--db URL`` given after ``--`` on the ``streamlit run`` line, if any."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--db", default=None)
    args, _ = parser.parse_known_args(list(argv))
    return args.db


def store_url() -> str:
    """``--db`` from the command line, else ``$SPORTS_DB``, else the default store."""
    return resolve_url(db_url_from_argv(sys.argv[1:]) or os.environ.get(ENV_VAR))


@dataclass(frozen=True)
class Connection:
    """An open store: its engine and the one sessionmaker bound to it."""

    engine: Engine
    sessions: sessionmaker[Session]


@st.cache_resource(show_spinner=False)
def connect(url: str) -> Connection:
    """The store at ``url``, opened read-only once per process; raises ``StoreError`` when it cannot be read."""
    engine = make_engine(url, readonly=True)
    return Connection(engine, make_sessionmaker(engine))


def session(url: str) -> Session:
    """A new session on the cached connection (use as ``with session(url) as s:``)."""
    return connect(url).sessions()


# --------------------------------------------------------------------------- runs


@st.cache_data(ttl=5, show_spinner=False)
def load_runs(url: str) -> pd.DataFrame:
    with session(url) as s:
        return queries.list_runs(s)


@st.cache_data(ttl=5, show_spinner=False)
def load_default_run(url: str) -> Optional[int]:
    with session(url) as s:
        return queries.default_run_id(s)


@st.cache_data(show_spinner=False)
def load_run(url: str, run_id: int, stamp: str) -> Optional[queries.RunInfo]:
    with session(url) as s:
        return queries.run_info(s, run_id)


@st.cache_data(show_spinner=False)
def load_epochs(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with session(url) as s:
        return queries.epochs_frame(s, run_id)


@st.cache_data(show_spinner=False)
def load_evaluations(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with session(url) as s:
        return queries.evaluations_frame(s, run_id)


# --------------------------------------------------------------------------- predictions and maps


@st.cache_data(show_spinner=False)
def load_predictions(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with session(url) as s:
        return queries.predictions_frame(s, run_id)


@st.cache_data(show_spinner=False)
def load_errors(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with session(url) as s:
        return queries.errors_frame(s, run_id)


@st.cache_data(show_spinner=False)
def load_confusion(url: str, run_id: int, n_classes: int, splits: Optional[tuple[str, ...]], stamp: str) -> np.ndarray:
    with session(url) as s:
        return queries.confusion_matrix(s, run_id, n_classes, splits)


@st.cache_data(show_spinner=False)
def load_per_class(url: str, run_id: int, names: tuple[str, ...], splits: Optional[tuple[str, ...]], stamp: str):
    preds = load_predictions(url, run_id, stamp)
    if splits is not None:
        preds = preds[preds["split"].isin(splits)]
    return metrics.per_class_metrics(preds["label"].to_numpy(), preds["pred"].to_numpy(), names)


@st.cache_data(show_spinner=False, max_entries=256)
def load_detail(url: str, run_id: int, image_id: int, stamp: str,
                method: str = DEFAULT_METHOD) -> Optional[queries.ImageDetail]:
    with session(url) as s:
        return queries.image_detail(s, run_id, image_id, method)


@st.cache_data(show_spinner=False, max_entries=64)
def load_maps(url: str, run_id: int, image_ids: tuple[int, ...], stamp: str,
              method: str = DEFAULT_METHOD) -> dict[int, StoredMaps]:
    """The stored ``method`` maps of some images, ``{image_id: StoredMaps}``; images without maps left out."""
    with session(url) as s:
        return queries.maps_for(s, run_id, image_ids, method)


# --------------------------------------------------------------------------- data audit


@st.cache_data(ttl=5, show_spinner=False)
def load_audit_stamp(url: str, run_id: int) -> Optional[str]:
    """When the run was last audited; polled, since an audit can be written after the run has finished."""
    with session(url) as s:
        return queries.audit_stamp(s, run_id)


@st.cache_data(show_spinner=False, max_entries=8)
def load_audit(url: str, run_id: int, audit_stamp: Optional[str]) -> Optional[dict]:
    with session(url) as s:
        return queries.audit_report(s, run_id)


@st.cache_data(show_spinner=False, max_entries=8)
def load_flags(url: str, run_id: int, audit_stamp: Optional[str]) -> pd.DataFrame:
    return metrics.flags_from_report(load_audit(url, run_id, audit_stamp))


def load_current_flags(url: str, run_id: int) -> pd.DataFrame:
    """The images the run's latest data audit flags (empty without an audit)."""
    return load_flags(url, run_id, load_audit_stamp(url, run_id))


def flag_notes(url: str, run_id: int) -> dict[int, str]:
    """``{image_id: note}`` of the images the run's data audit flags; empty without an audit."""
    flags = load_current_flags(url, run_id)
    return dict(zip(flags["image_id"].astype(int), flags["note"]))


# --------------------------------------------------------------------------- trust


@st.cache_data(ttl=5, show_spinner=False)
def load_trust_version(url: str, run_id: int) -> Optional[str]:
    """When the run's latest trust job ran (``None``: never, or a store from before the trust tables); part of
    the cache key of the scores."""
    with session(url) as s:
        return queries.trust_version(s, run_id)


@st.cache_data(show_spinner=False)
def load_trust(url: str, run_id: int, stamp: str, version: str) -> pd.DataFrame:
    with session(url) as s:
        return queries.trust_frame(s, run_id)


@st.cache_data(show_spinner=False)
def load_sanity(url: str, run_id: int, version: str) -> Optional[dict]:
    with session(url) as s:
        return queries.sanity_check(s, run_id)


# --------------------------------------------------------------------------- CAM methods


@st.cache_data(show_spinner=False)
def load_methods(url: str, run_id: int, stamp: str) -> list[str]:
    """The CAM methods the run has maps of, in ``core.cammaps.METHOD_NAMES`` order."""
    with session(url) as s:
        return queries.stored_methods(s, run_id)


@st.cache_data(show_spinner=False)
def load_ranking(url: str, run_id: int, names: tuple[str, ...], stamp: str, version: str):
    """The run's CAM methods ranked by the trust job's scores (``core.method_rank.MethodRanking``), or None."""
    with session(url) as s:
        return queries.method_ranking(s, run_id, names)
