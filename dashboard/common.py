"""What every page shares: the store location, cached loaders, the run picker and state carried across pages.

Loaders are pure functions under ``st.cache_data`` keyed by the store URL, the run and a stamp that changes
when the run does; they call ``db.queries`` and make no ``st.*`` calls. The engine is a cached resource
opened with ``create=False`` so the dashboard never creates or alters a store.

State carried between pages lives in ``st.session_state`` under the names in ``SHARED`` and is mirrored to
the URL (``st.query_params``) by each page, so that a link reproduces the view.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import cv2
import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from core.images import load_display_image
from core.cammaps import decode_maps, overlay
from core.report import ExportOptions, RunData, write_figure_set, zip_folder
from db import queries
from db.store import ENV_VAR, StoreError, make_engine, make_sessionmaker, resolve_url

TRAIN_HINT = "Run `python -m jobs.train` (it trains the demo and writes the store), then reload this page."
PAGE_SIZES = (25, 50, 100)
TILES_PER_ROW = 5
TILE_PX = 224

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


@st.cache_resource(show_spinner=False)
def get_engine(url: str) -> Engine:
    return make_engine(url, readonly=True)


def _session(url: str):
    return make_sessionmaker(get_engine(url))()


# --------------------------------------------------------------------------- cached loaders (pure)


@st.cache_data(ttl=5, show_spinner=False)
def load_runs(url: str) -> pd.DataFrame:
    with _session(url) as s:
        return queries.list_runs(s)


@st.cache_data(ttl=5, show_spinner=False)
def load_default_run(url: str) -> Optional[int]:
    with _session(url) as s:
        return queries.default_run_id(s)


@st.cache_data(show_spinner=False)
def load_run(url: str, run_id: int, stamp: str) -> Optional[queries.RunInfo]:
    with _session(url) as s:
        return queries.run_info(s, run_id)


@st.cache_data(show_spinner=False)
def load_epochs(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with _session(url) as s:
        return queries.epochs_frame(s, run_id)


@st.cache_data(show_spinner=False)
def load_evaluations(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with _session(url) as s:
        return queries.evaluations_frame(s, run_id)


@st.cache_data(show_spinner=False)
def load_predictions(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with _session(url) as s:
        return queries.predictions_frame(s, run_id)


@st.cache_data(show_spinner=False)
def load_confusion(url: str, run_id: int, n_classes: int, splits: Optional[tuple[str, ...]], stamp: str) -> np.ndarray:
    with _session(url) as s:
        return queries.confusion_matrix(s, run_id, n_classes, splits)


@st.cache_data(show_spinner=False)
def load_per_class(url: str, run_id: int, names: tuple[str, ...], splits: Optional[tuple[str, ...]], stamp: str):
    preds = load_predictions(url, run_id, stamp)
    if splits is not None:
        preds = preds[preds["split"].isin(splits)]
    return queries.per_class_metrics(preds["label"].to_numpy(), preds["pred"].to_numpy(), names)


@st.cache_data(show_spinner=False, max_entries=256)
def load_detail(url: str, run_id: int, image_id: int, stamp: str) -> Optional[queries.ImageDetail]:
    with _session(url) as s:
        return queries.image_detail(s, run_id, image_id)


@st.cache_data(show_spinner=False, max_entries=64)
def load_cams(url: str, run_id: int, image_ids: tuple[int, ...], stamp: str) -> dict:
    with _session(url) as s:
        return queries.cams_for(s, run_id, image_ids)


@st.cache_data(ttl=5, show_spinner=False)
def load_audit_stamp(url: str, run_id: int) -> Optional[str]:
    """When the run was last audited; polled, since an audit can be written after the run has finished."""
    with _session(url) as s:
        return queries.audit_stamp(s, run_id)


@st.cache_data(show_spinner=False, max_entries=8)
def load_audit(url: str, run_id: int, audit_stamp: Optional[str]) -> Optional[dict]:
    with _session(url) as s:
        return queries.audit_report(s, run_id)


@st.cache_data(show_spinner=False, max_entries=8)
def load_flags(url: str, run_id: int, audit_stamp: Optional[str]) -> pd.DataFrame:
    return queries.flags_from_report(load_audit(url, run_id, audit_stamp))


def flag_notes(ctx: "Ctx") -> dict[int, str]:
    """``{image_id: note}`` of the images the run's data audit flags; empty without an audit."""
    flags = load_flags(ctx.url, ctx.run_id, load_audit_stamp(ctx.url, ctx.run_id))
    return dict(zip(flags["image_id"].astype(int), flags["note"]))


@st.cache_data(show_spinner=False)
def load_audit_tables(url: str, run_id: int, stamp: str):
    with _session(url) as s:
        return queries.audit_for(s, run_id)


@st.cache_data(ttl=5, show_spinner=False)
def load_trust_tables(url: str, run_id: int, names: tuple[str, ...], splits: Optional[tuple[str, ...]]):
    with _session(url) as s:
        return queries.trust_for(s, run_id, names, splits)


def figure_set_zip(ctx: "Ctx", options: ExportOptions) -> tuple[bytes, dict]:
    """The run's figure set (the same files as ``python -m jobs.export``) as zip bytes, and its manifest."""
    splits = options.splits
    preds = load_predictions(ctx.url, ctx.run_id, ctx.stamp)
    errors = load_errors(ctx.url, ctx.run_id, ctx.stamp)
    if splits is not None:
        preds, errors = preds[preds["split"].isin(splits)], errors[errors["split"].isin(splits)]
    names = ctx.names
    cm = load_confusion(ctx.url, ctx.run_id, len(names), splits, ctx.stamp)
    audit = load_audit_tables(ctx.url, ctx.run_id, load_audit_stamp(ctx.url, ctx.run_id) or "")
    trust = load_trust_tables(ctx.url, ctx.run_id, tuple(names), splits)
    data = RunData(
        run_id=ctx.run_id, run_name=ctx.info.name, names=names, predictions=preds, errors=errors, cm=cm,
        per_class=load_per_class(ctx.url, ctx.run_id, names, splits, ctx.stamp),
        pairs=queries.confused_pairs(cm, names, limit=None),
        epochs=load_epochs(ctx.url, ctx.run_id, ctx.stamp),
        load_image=lambda relpath, size: load_display_image(ctx.info.data_root, relpath, size),
        load_cams=lambda ids: load_cams(ctx.url, ctx.run_id, tuple(int(i) for i in ids), ctx.stamp),
        audit=audit[0] if audit else None, leakage=audit[1] if audit else None,
        trust=trust.scores, trust_per_class=trust.per_class, sanity=trust.sanity,
    )
    with tempfile.TemporaryDirectory(prefix="figure-set-") as tmp:
        manifest = write_figure_set(data, tmp, options)
        return zip_folder(tmp), manifest.to_dict()


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


@st.cache_data(show_spinner=False, max_entries=2000)
def render_view(
    data_root: str,
    relpath: str,
    size: int,
    cam: Optional[tuple[bytes, int, int, int, int]] = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    normalize: Any = "image",
) -> bytes:
    """JPEG of the model's view of an image, with map ``cam = (data, k, h, w, index)`` blended over it."""
    rgb = load_display_image(data_root, relpath, size)
    if cam is not None:
        data, k, h, w, index = cam
        rgb = overlay(rgb, decode_maps(data, k, h, w)[index], colormap=colormap, alpha=alpha, normalize=normalize)
    return _jpeg(rgb)


# --------------------------------------------------------------------------- shared state

SHARED: dict[str, Callable[[list[str]], Any]] = {
    "run": lambda v: int(v[-1]),
    "split": lambda v: v[-1],
    "sport": lambda v: [x for x in v if x],
    "kind": lambda v: [x for x in v if x],
    "pred": lambda v: [x for x in v if x],
    "conf": lambda v: tuple(sorted(float(x) for x in v[-1].split(",")))[:2],
    "image": lambda v: int(v[-1]),
    "page": lambda v: max(1, int(v[-1])),
}


def init_state() -> None:
    """On a session's first run, take the shared choices from the URL."""
    ss = st.session_state
    if ss.get("_from_url"):
        return
    ss["_from_url"] = True
    for name, parse in SHARED.items():
        values = st.query_params.get_all(name)
        if not values:
            continue
        try:
            ss[name] = parse(values)
        except (ValueError, IndexError):
            pass  # a malformed parameter is ignored; the page falls back to its default


def seed(widget_key: str, name: str, default: Any, valid: Callable[[Any], bool] = lambda v: True) -> None:
    """Give a widget its starting value from the shared state (or ``default``) when it is first drawn."""
    ss = st.session_state
    if widget_key in ss:
        return
    value = ss.get(name, default)
    ss[widget_key] = value if valid(value) else default


def publish(**params: Any) -> None:
    """Write the page's view to the URL: exactly these parameters, empty ones left out."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if v is None or v == [] or v == "":
            continue
        if isinstance(v, tuple):
            v = ",".join(f"{x:g}" for x in v)
        out[k] = [str(x) for x in v] if isinstance(v, list) else str(v)
    if {k: st.query_params.get_all(k) for k in st.query_params} != {
        k: (v if isinstance(v, list) else [v]) for k, v in out.items()
    }:
        st.query_params.from_dict(out)


# --------------------------------------------------------------------------- run context


@dataclass(frozen=True)
class Ctx:
    url: str
    run_id: int
    stamp: str
    info: queries.RunInfo

    @property
    def names(self) -> tuple[str, ...]:
        return self.info.classes


def _stamp(runs: pd.DataFrame, run_id: int) -> str:
    row = runs.loc[runs["id"] == run_id].iloc[0]
    stamp = f"{row['status']}|{row['finished_at']}"
    if row["status"] == "running":
        stamp += f"|{int(time.time() // 30)}"  # a run in progress keeps changing: refresh every 30 s
    return stamp


def open_store() -> str:
    """The store URL, or an explanation and ``st.stop()`` when there is no usable store."""
    try:
        url = store_url()
        get_engine(url)
    except StoreError as exc:
        st.info(f"No results to show yet: {exc}.\n\n{TRAIN_HINT}")
        st.stop()
    except SQLAlchemyError as exc:
        st.error(f"Cannot read the store: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
        st.stop()
    return url


def run_picker(url: str) -> Optional[int]:
    """Sidebar choice of run (newest complete run by default); ``None`` when the store holds no run."""
    runs = load_runs(url)
    if runs.empty:
        return None
    ids = [int(i) for i in runs["id"]]
    labels = {int(r.id): f"#{r.id} {r.name} ({r.status})" for r in runs.itertuples()}
    default = load_default_run(url)
    seed("sb_run", "run", default, valid=lambda v: v in ids)
    run_id = st.sidebar.selectbox("Run", ids, format_func=labels.get, key="sb_run")
    st.session_state["run"] = run_id
    return run_id


def require_run() -> Ctx:
    """The chosen run, or an explanation and ``st.stop()``."""
    url = open_store()
    runs = load_runs(url)
    if runs.empty:
        st.info(f"The store at `{url}` holds no runs yet.\n\n{TRAIN_HINT}")
        st.stop()
    run_id = st.session_state.get("run")
    if run_id not in set(int(i) for i in runs["id"]):
        run_id = load_default_run(url)
    stamp = _stamp(runs, run_id)
    info = load_run(url, run_id, stamp)
    if info is None:
        st.error(f"Run {run_id} is not in the store any more; choose another in the sidebar.")
        st.stop()
    if info.status == "failed":
        st.warning(f"Run #{info.id} failed: {info.error or 'no error recorded'}. Showing what it wrote.")
    elif info.status == "running":
        st.warning(f"Run #{info.id} is still running; figures refresh as it writes.")
    return Ctx(url=url, run_id=run_id, stamp=stamp, info=info)


def require_predictions(ctx: Ctx) -> pd.DataFrame:
    preds = load_predictions(ctx.url, ctx.run_id, ctx.stamp)
    if preds.empty:
        st.info(f"Run #{ctx.run_id} has no predictions yet: its evaluation has not been written. {TRAIN_HINT}")
        st.stop()
    return preds


def split_choice(ctx: Ctx, preds: pd.DataFrame, key: str, *, container=st) -> Optional[tuple[str, ...]]:
    """A split selector (``all`` or one split); returns the splits to use, ``None`` meaning all."""
    present = [s for s in ("train", "valid", "test") if s in set(preds["split"])]
    options = ["all"] + present
    seed(key, "split", "all", valid=lambda v: v in options)
    choice = container.selectbox("Split", options, key=key)
    st.session_state["split"] = choice
    return None if choice == "all" else (choice,)


# --------------------------------------------------------------------------- errors and tiles


def filter_errors(
    errors: pd.DataFrame,
    names: Sequence[str],
    *,
    splits: Optional[Iterable[str]] = None,
    true: Iterable[str] = (),
    pred: Iterable[str] = (),
    conf: tuple[float, float] = (0.0, 1.0),
) -> pd.DataFrame:
    """The rows of ``errors`` (from ``queries.errors_frame``) that match the gallery filters."""
    index = {n: i for i, n in enumerate(names)}
    mask = (errors["confidence"] >= conf[0]) & (errors["confidence"] <= conf[1])
    if splits is not None:
        mask &= errors["split"].isin(list(splits))
    t = [index[n] for n in true if n in index]
    p = [index[n] for n in pred if n in index]
    if t:
        mask &= errors["label"].isin(t)
    if p:
        mask &= errors["pred"].isin(p)
    return errors.loc[mask]


@st.cache_data(show_spinner=False)
def load_errors(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    with _session(url) as s:
        return queries.errors_frame(s, run_id)


def gallery_errors(ctx: Ctx) -> pd.DataFrame:
    """Errors under the gallery filters held in the shared state (used by the gallery and by prev/next)."""
    ss = st.session_state
    split = ss.get("split", "all")
    return filter_errors(
        load_errors(ctx.url, ctx.run_id, ctx.stamp),
        ctx.names,
        splits=None if split == "all" else (split,),
        true=ss.get("sport", []),
        pred=ss.get("pred", []),
        conf=tuple(ss.get("conf", (0.0, 1.0))),
    )


def cam_index(classes: Sequence[int], cls: Optional[int]) -> Optional[int]:
    """Position of class ``cls``'s map in a stored map stack, ``None`` when it was not stored."""
    try:
        return list(classes).index(cls)
    except ValueError:
        return None


def tile_images(ctx: Ctx, rows: pd.DataFrame, size: int = TILE_PX, alpha: float = 0.45, colormap: str = "jet"):
    """JPEG bytes (or an error text) per row: the image with its predicted class's map over it."""
    cams = load_cams(ctx.url, ctx.run_id, tuple(int(i) for i in rows["image_id"]), ctx.stamp)
    px = min(size, ctx.info.image_size)
    out = []
    for r in rows.itertuples():
        cam = cams.get(int(r.image_id))
        spec = None
        if cam is not None:
            classes, h, w, data = cam
            idx = cam_index(classes, int(r.pred))
            if idx is not None:
                spec = (data, len(classes), h, w, idx)
        try:
            out.append(render_view(ctx.info.data_root, r.relpath, px, spec, colormap, alpha, "image"))
        except (OSError, ValueError) as exc:
            out.append(f"cannot show {r.relpath}: {exc}")
    return out


def show_tiles(ctx: Ctx, rows: pd.DataFrame, *, per_row: int = 6, key: str, compare_button: bool = True,
               notes: Optional[dict[int, str]] = None) -> Optional[int]:
    """Draw error tiles in a grid; returns the image id whose *Compare* button was pressed.

    ``notes``: a line added to the caption of those images (the data audit's findings)."""
    names = ctx.names
    pics = tile_images(ctx, rows)
    chosen = None
    records = list(rows.itertuples())
    for start in range(0, len(records), per_row):
        cols = st.columns(per_row)
        for col, r, pic in zip(cols, records[start : start + per_row], pics[start : start + per_row]):
            with col:
                caption = f"true: {names[r.label]}  \npred: {names[r.pred]} ({r.confidence:.0%})"
                if notes and int(r.image_id) in notes:
                    caption += f"  \n{notes[int(r.image_id)]}"
                if isinstance(pic, bytes):
                    st.image(pic, width="stretch")
                else:
                    st.error(pic)
                st.caption(caption)
                if compare_button and st.button("Compare", key=f"{key}_{r.image_id}", width="stretch"):
                    chosen = int(r.image_id)
    return chosen
