"""The parts of the Compare runs page: the runs and snapshots one can pick (and the default pair), the cached
comparison, and tiles that show one image with run A's and run B's map side by side on one colour scale."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import streamlit as st

from core.cammaps import DEFAULT_METHOD, StoredMaps
from core.compare import ComparisonResult
from core.intervals import wilson_interval
from core.splits import SPLITS
from core.stages import PHASE1, stage_label
from dashboard import loaders
from dashboard.context import Ctx
from dashboard.tiles import TILE_PX, map_of_class, picture, show_colorbar, show_picture
from db.queries.compare import compare_stored

TARGET_MODES = {"true": "the true class (what the drift measures)", "pred": "each run's own prediction"}


# --------------------------------------------------------------------------- which runs

def ordered_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """``loaders.load_runs`` rows: runs newest first, each followed by its snapshots."""
    if runs.empty:
        return runs
    parent = runs["parent_id"].astype("Int64")
    known = parent.isin(runs["id"])
    group = np.where(runs["stage"].notna() & known, parent.fillna(-1).astype(int), runs["id"].astype(int))
    return (runs.assign(_group=group, _snap=runs["stage"].notna().astype(int))
            .sort_values(["_group", "_snap", "id"], ascending=[False, True, True])
            .drop(columns=["_group", "_snap"]).reset_index(drop=True))


def run_label(row) -> str:
    """``#4 demo (final)`` for a run, ``#5 demo:phase1 (phase 1 of #4)`` for a snapshot; the status when it
    is not complete."""
    what = stage_label(row.stage) if isinstance(row.stage, str) else "final"
    if isinstance(row.stage, str) and pd.notna(row.parent_id):
        what += f" of #{int(row.parent_id)}"
    status = "" if row.status == "complete" else f", {row.status}"
    return f"#{int(row.id)} {row.name} ({what}{status})"


def stamp(row) -> str:
    """What keys a run's cached reads: it changes when the run does."""
    return f"{row.status}|{row.finished_at}"


def default_pair(runs: pd.DataFrame, newest: Optional[int]) -> tuple[Optional[int], Optional[int]]:
    """(A, B): the newest complete run's phase-1 snapshot and the run itself; without a snapshot, the complete
    run before it and the run; (None, None) when there is no pair."""
    if newest is None:
        return None, None
    done = runs[runs["status"] == "complete"]
    snaps = done[(done["parent_id"] == newest) & (done["stage"] == PHASE1)]
    if len(snaps):
        return int(snaps["id"].max()), int(newest)
    older = done[done["stage"].isna() & (done["id"] < newest)]
    return (int(older["id"].max()), int(newest)) if len(older) else (None, None)


def refusal(row) -> Optional[str]:
    """Why a run cannot be compared (not complete), else None."""
    if row.status == "complete":
        return None
    return (f"{run_label(row)} is still running; compare it once it is complete." if row.status == "running"
            else f"{run_label(row)} has status {row.status}; only complete runs can be compared.")


# --------------------------------------------------------------------------- the comparison

def common_splits(url: str, a: int, stamp_a: str, b: int, stamp_b: str) -> list[str]:
    """Splits whose evaluation is complete in both runs, in train/valid/test order."""
    def done(run_id: int, stamp_: str) -> set[str]:
        ev = loaders.load_evaluations(url, run_id, stamp_)
        return set(ev.loc[ev["status"] == "complete", "split"])
    both = done(a, stamp_a) & done(b, stamp_b)
    return [s for s in SPLITS if s in both] + sorted(both - set(SPLITS))


@st.cache_data(show_spinner="Comparing the two runs…", max_entries=8)
def load_comparison(url: str, a: int, b: int, split: Optional[str], stamp_a: str, stamp_b: str,
                    method: str = DEFAULT_METHOD) -> ComparisonResult:
    """Run B against run A on ``split`` (None: all), as ``python -m jobs.compare`` computes it."""
    with loaders.session(url) as s:
        return compare_stored(s, a, b, split=split, method=method)[2]


def per_class_table(per_class: pd.DataFrame) -> pd.DataFrame:
    """The per-class change for display: accuracies with their Wilson intervals, the change with its bootstrap
    interval, in points."""
    n = per_class["n"].to_numpy()
    out = pd.DataFrame({"sport": per_class["class"], "images": n})
    for side in ("a", "b"):
        acc = per_class[f"acc_{side}"].to_numpy(float)
        lo, hi = wilson_interval(np.round(acc * n), n)
        out[side.upper()] = acc
        out[f"{side.upper()}, 95% interval"] = [f"{100 * x:.0f}–{100 * y:.0f}%" for x, y in zip(lo, hi)]
    out["change (points)"] = 100 * per_class["delta"].to_numpy(float)
    out["change, 95% interval"] = [f"{100 * x:+.1f} to {100 * y:+.1f}"
                                   for x, y in zip(per_class["ci_low"], per_class["ci_high"])]
    return out


# --------------------------------------------------------------------------- tiles of image pairs

def _pair_maps(ma: Optional[StoredMaps], mb: Optional[StoredMaps], cls_a: int, cls_b: int):
    cam_a, cam_b = map_of_class(ma, cls_a), map_of_class(mb, cls_b)
    peaks = [float(np.max(c)) for c in (cam_a, cam_b) if c is not None]
    peak = max(peaks) if peaks else 0.0
    # One colour scale for both maps: each divided by the larger peak, so "hotter" means the same on both sides.
    norm = ("fixed", peak) if peak > 0 else "image"
    return cam_a, cam_b, norm


def show_pairs(ctx_a: Ctx, ctx_b: Ctx, rows: pd.DataFrame, *, mode: str, method: str = DEFAULT_METHOD,
               per_row: int = 3) -> None:
    """One tile per compared image: A's map and B's map (of ``method``) over it, side by side, with labels and
    the drift."""
    ids_a = tuple(int(i) for i in rows["image_id_a"])
    ids_b = tuple(int(i) for i in rows["image_id_b"])
    maps_a = loaders.load_maps(ctx_a.url, ctx_a.run_id, ids_a, ctx_a.stamp, method)
    maps_b = loaders.load_maps(ctx_b.url, ctx_b.run_id, ids_b, ctx_b.stamp, method)
    records = list(rows.itertuples())
    show_colorbar(note="A's and B's maps of an image on one scale, the larger peak of the two")
    for start in range(0, len(records), per_row):
        for col, r in zip(st.columns(per_row), records[start:start + per_row]):
            cls_a = int(r.label_index_a if mode == "true" else r.pred_index_a)
            cls_b = int(r.label_index_b if mode == "true" else r.pred_index_b)
            cam_a, cam_b, norm = _pair_maps(maps_a.get(int(r.image_id_a)), maps_b.get(int(r.image_id_b)), cls_a, cls_b)
            with col.container(border=True):
                left, right = st.columns(2)
                with left:
                    show_picture(picture(ctx_a, r.relpath, TILE_PX, cam_a, normalize=norm))
                    st.caption(f"A: {r.pred_a} ({r.conf_a:.0%})" + ("" if cam_a is not None else " · no map"))
                with right:
                    show_picture(picture(ctx_b, r.relpath_b, TILE_PX, cam_b, normalize=norm))
                    st.caption(f"B: {r.pred_b} ({r.conf_b:.0%})" + ("" if cam_b is not None else " · no map"))
                drift = ("" if pd.isna(r.spearman_true) else
                         f"  \nmaps of the true class: Spearman {r.spearman_true:.2f}, top-20% IoU {r.iou_true:.2f}")
                st.caption(f"true: **{r.label}** · {r.split} · {r.relpath.rsplit('/', 1)[-1]}{drift}")
