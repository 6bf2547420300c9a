"""The CAM method picker every page with a map shares, the row of every stored method side by side, and the
method ranking of the trust page.

The picker offers only the methods the run holds maps of (``db.queries.stored_methods``); its choice lives in
the shared state under ``method`` (``dashboard.state``), so it carries from page to page and into the URL.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from core.cammaps import (
    DEFAULT_METHOD, TARGET_CONTRAST, TARGET_LABELS, TARGET_PRED, TARGET_TRUE, TARGETS, method_label,
)
from core.figures_methods import method_ranking_figure
from core.method_rank import MethodRanking
from dashboard import loaders, state
from dashboard.charts import chart
from dashboard.context import Ctx, job_command
from dashboard.tiles import picture, show_colorbar, show_picture

SHARED_KEY = "method"


def run_methods(ctx: Ctx) -> list[str]:
    """The methods the run has maps of (Grad-CAM alone for a run without maps, so a page still has a choice)."""
    return loaders.load_methods(ctx.url, ctx.run_id, ctx.stamp) or [DEFAULT_METHOD]


def method_picker(ctx: Ctx, key: str, *, container=st, label: str = "CAM method") -> str:
    """A select box of the run's CAM methods, starting from the shared choice (the URL's ``method``); returns
    the method chosen and makes it the shared choice."""
    options = run_methods(ctx)
    preferred = DEFAULT_METHOD if DEFAULT_METHOD in options else options[0]
    state.seed(key, SHARED_KEY, preferred, valid=lambda v: v in options)
    if st.session_state.get(key) not in options:  # the run changed under a kept widget
        st.session_state[key] = preferred
    method = container.selectbox(label, options, key=key, format_func=method_label,
                                 help="The maps drawn on this page. Only the methods this run holds are offered; "
                                 f"add others with {job_command('cams', ctx.url, f'--run {ctx.run_id}', '--methods NAMES')}.")
    st.session_state[SHARED_KEY] = method
    return method


def method_param() -> Optional[str]:
    """The shared method for the URL (``state.publish(method=...)``)."""
    return st.session_state.get(SHARED_KEY)


# --------------------------------------------------------------------------- every method side by side


def _row_targets(pred: int, label: int) -> list[str]:
    return [TARGET_PRED] if pred == label else list(TARGETS)


def method_rows(ctx: Ctx, d, *, colormap: str, alpha: float, shared: bool) -> None:
    """For one image (``queries.ImageDetail`` ``d``): a row per target (predicted, true, contrast; one row
    for a right prediction) with the map of every stored method side by side. ``shared``: one colour scale
    for the row (the raw values compare across methods; a colour bar under the row); else each map scaled
    to its own peak."""
    methods = run_methods(ctx)
    maps = {m: loaders.load_maps(ctx.url, ctx.run_id, (d.image_id,), ctx.stamp, m).get(d.image_id) for m in methods}
    names = ctx.names
    classes = {TARGET_PRED: names[d.pred], TARGET_TRUE: names[d.label],
               TARGET_CONTRAST: f"{names[d.pred]} rather than {names[d.label]}"}
    missing = []
    for target in _row_targets(d.pred, d.label):
        cams = {m: (maps[m].get(target) if maps[m] is not None else None) for m in methods}
        present = [c for c in cams.values() if c is not None]
        if not present:  # e.g. a run upgraded from before contrast maps were kept
            missing.append(TARGET_LABELS[target])
            continue
        vmax = max((float(np.maximum(c, 0).max()) for c in present), default=0.0)
        normalize = ("fixed", vmax) if shared and vmax > 0 else "image"
        st.markdown(f"**{TARGET_LABELS[target].capitalize()}** · {classes[target]}")
        for col, m in zip(st.columns(len(methods)), methods):
            with col:
                cam = cams[m]
                if cam is None:
                    why = ("no map: this method does not depend on the class" if maps[m] is not None
                           else "no map stored for this image")
                    st.info(f"{method_label(m)}: {why}")
                    continue
                show_picture(picture(ctx, d.relpath, ctx.info.image_size, cam, colormap=colormap, alpha=alpha,
                                     normalize=normalize))
                st.caption(f"{method_label(m)} · peak {float(cam.max()):.3g}")
        if shared and vmax > 0:
            show_colorbar(colormap, low="0", high=f"{vmax:.3g}", note="raw map values, one scale for the row")
        else:
            show_colorbar(colormap, note="each map scaled to its own peak")
    if missing:
        st.caption(f"The run stores no map of this image for: {', '.join(missing)}.")


# --------------------------------------------------------------------------- the ranking


def _span(lo: pd.Series, hi: pd.Series) -> list[str]:
    return ["" if pd.isna(a) or pd.isna(b) else f"{a:.0%}-{b:.0%}" for a, b in zip(lo, hi)]


def _rate(v, lo, hi, n=None) -> str:
    if pd.isna(v) or (n is not None and (pd.isna(n) or not n)):
        return ""
    return f"{v:.0%} ({lo:.0%}-{hi:.0%})" + (f" of {int(n)}" if n is not None else "")


BEATS, POINTING = "beats random (95% interval)", "pointing game (95% interval)"


def ranking_view(table: pd.DataFrame) -> pd.DataFrame:
    """The ranking table in words for the page, best first (the export keeps the column names): each rate
    with its interval in one column, the pointing game only when the run has object boxes."""
    t = table.copy()
    view = pd.DataFrame({"map": t["name"], "images": t["images"], "score": t["score"],
                         "deletion AUC": t["deletion_auc"], "insertion AUC": t["insertion_auc"],
                         BEATS: [_rate(*r) for r in zip(t["beats_random"], t["beats_random_lo"], t["beats_random_hi"])]})
    if pd.to_numeric(t["pointing_n"], errors="coerce").fillna(0).gt(0).any():
        view[POINTING] = [_rate(*r) for r in zip(t["pointing"], t["pointing_lo"], t["pointing_hi"], t["pointing_n"])]
        view["random point"] = t["pointing_random"]
    return view


def per_class_ranking_view(per_class: pd.DataFrame) -> pd.DataFrame:
    t = per_class.copy()
    t["winner"], t["runner_up"] = t["winner"].map(method_label), t["runner_up"].map(method_label)
    t["95% interval"] = _span(t["lo"], t["hi"])
    return t[["class", "images", "winner", "winner_score", "runner_up", "runner_up_score", "beats_runner_up", "n",
              "95% interval"]].rename(columns={"winner": "best method", "winner_score": "its score",
                                               "runner_up": "runner-up", "runner_up_score": "runner-up's score",
                                               "beats_runner_up": "best beats runner-up", "n": "images compared"})


def show_ranking(ranking: Optional[MethodRanking], run_id: int, url: Optional[str] = None) -> None:
    """Which method to read: the sentence, the winner's margin with its interval, the table and figure, the
    ranking per class."""
    st.subheader("Which method to read?")
    if ranking is None:
        st.info(f"No CAM method of run #{run_id} has been scored. Run "
                f"`{job_command('trust', url, f'--run {run_id}', '--methods all')}` to score and rank every method it "
                "holds.")
        return
    st.markdown(f"**{ranking.sentence}**")
    sure = ranking.confidence
    c1, c2 = st.columns([1, 3])
    c1.metric(f"{method_label(ranking.winner)} beats {method_label(ranking.runner_up)}",
              f"{sure.value:.0%}" if sure.n else "n/a",
              help=f"images where the winner's map scores higher than the runner-up's: {sure.k} of {sure.n}, "
              f"95% Wilson interval {sure.lo:.0%}-{sure.hi:.0%}")
    c1.caption(f"{sure.k} of {sure.n} images · 95% interval {sure.lo:.0%}-{sure.hi:.0%}")
    with c2:
        chart(method_ranking_figure(ranking.table), key="tr_rank_fig", name="method-ranking")
    share = dict(min_value=0.0, max_value=1.0, format="%.2f")
    st.dataframe(
        ranking_view(ranking.table), hide_index=True, key="tr_rank_table",
        column_config={
            "map": st.column_config.TextColumn("map", width=130),
            "images": st.column_config.NumberColumn("images", width=64),
            "score": st.column_config.NumberColumn("score", format="%.3f", width=70,
                                                   help="insertion AUC - deletion AUC, mean over images"),
            "deletion AUC": st.column_config.NumberColumn("deletion AUC", format="%.3f", width=100,
                                                          help="lower is better"),
            "insertion AUC": st.column_config.NumberColumn("insertion AUC", format="%.3f", width=100,
                                                           help="higher is better"),
            BEATS: st.column_config.TextColumn(BEATS, width=170, help="share of images where the map scores "
                                               "higher than the random map's, with its 95% Wilson interval"),
            POINTING: st.column_config.TextColumn(POINTING, width=180, help="share of the correctly classified "
                                                  "images with a box whose map peaks in the box, of n"),
            "random point": st.column_config.NumberColumn("random point", format="%.2f", width=96,
                                                          help="a random point's pointing-game rate"),
        },
    )
    if not ranking.per_class.empty:
        with st.expander(f"Per class ({len(ranking.per_class)} classes)"):
            st.dataframe(per_class_ranking_view(ranking.per_class), hide_index=True, key="tr_rank_class",
                         column_config={"best beats runner-up": st.column_config.ProgressColumn(
                             "best beats runner-up", **share)})


def scored_for(frame: pd.DataFrame, method: str, baselines: Sequence[str]) -> pd.DataFrame:
    """The trust rows of ``method`` and the baselines (what the page's detail sections compare)."""
    return frame[frame["method"].isin([method, *baselines])]
