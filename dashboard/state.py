"""The choices carried across pages and into the URL, and the gallery's filters among them.

State carried between pages lives in ``st.session_state`` under the names in ``SHARED`` and is mirrored to
the URL (``st.query_params``) by each page, so that a link reproduces the view: ``init_state`` reads the
URL once per session, ``seed`` gives a widget its starting value from the shared state, ``publish`` writes
the page's view back.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

import pandas as pd
import streamlit as st

SHARED: dict[str, Callable[[list[str]], Any]] = {
    "run": lambda v: int(v[-1]),
    "split": lambda v: v[-1],
    "sport": lambda v: [x for x in v if x],
    "kind": lambda v: [x for x in v if x],
    "pred": lambda v: [x for x in v if x],
    "conf": lambda v: tuple(sorted(float(x) for x in v[-1].split(",")))[:2],
    "image": lambda v: int(v[-1]),
    "page": lambda v: max(1, int(v[-1])),
    "calibrated": lambda v: v[-1].lower() not in ("0", "false", "off", "no"),
    "method": lambda v: v[-1],  # the CAM method whose maps the pages draw (a core.cammaps name)
    "a": lambda v: int(v[-1]),  # the two runs of Compare runs
    "b": lambda v: int(v[-1]),
}
FULL_RANGE = (0.0, 1.0)


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
    if "calibrated" in st.session_state:  # the sidebar switch, once chosen, on every page's link
        params = {**params, "calibrated": int(bool(st.session_state["calibrated"]))}
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


def confidence_param() -> Optional[tuple[float, float]]:
    """The shared confidence range for the URL; ``None`` (left out) when it is the full range."""
    conf = tuple(st.session_state.get("conf", FULL_RANGE))
    return None if conf == FULL_RANGE else conf


# --------------------------------------------------------------------------- the gallery's filters


def filter_errors(
    errors: pd.DataFrame,
    names: Sequence[str],
    *,
    splits: Optional[Iterable[str]] = None,
    true: Iterable[str] = (),
    pred: Iterable[str] = (),
    conf: tuple[float, float] = FULL_RANGE,
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


def gallery_filtered(errors: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """``errors`` under the gallery filters held in the shared state (the gallery's and prev/next's list)."""
    ss = st.session_state
    split = ss.get("split", "all")
    return filter_errors(errors, names, splits=None if split == "all" else (split,), true=ss.get("sport", []),
                         pred=ss.get("pred", []), conf=tuple(ss.get("conf", FULL_RANGE)))
