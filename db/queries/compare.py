"""What comparing two runs reads: a run or one of its snapshots by reference, and each side's predictions
(with the file hashes that match images across runs) and stored maps as a ``core.compare.RunInput``."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.cammaps import DEFAULT_METHOD, check_method
from core.compare import ComparisonResult, RunInput, compare_runs
from core.stages import split_ref, stage_label
from db.models import ImageRow, Prediction, Run
from db.queries.frames import empty
from db.queries.maps import maps_for, stored_methods
from db.queries.runs import RunInfo, find_run, run_info

if TYPE_CHECKING:
    from core.compare_report import CompareData

COMPARE_COLUMNS = ["image_id", "split", "relpath", "sha256", "label", "pred", "confidence"]


def snapshot_id(session: Session, parent_id: int, stage: str) -> Optional[int]:
    """The id of run ``parent_id``'s snapshot at ``stage`` (the newest, should there be several), else None."""
    rid = session.scalar(select(Run.id).where(Run.parent_id == parent_id, Run.stage == stage)
                         .order_by(Run.id.desc()).limit(1))
    return None if rid is None else int(rid)


def snapshots_of(session: Session, parent_id: int) -> dict[str, int]:
    """``{stage: snapshot id}`` of run ``parent_id`` (the newest per stage)."""
    rows = session.execute(select(Run.stage, Run.id).where(Run.parent_id == parent_id).order_by(Run.id)).all()
    return {stage: int(rid) for stage, rid in rows}


def find_compared(session: Session, ref: str) -> RunInfo:
    """``RUN`` (an id, a name or ``latest``) or ``RUN:STAGE`` (that run's snapshot, e.g. ``latest:phase1``);
    ``StoreError`` for an unknown run, ``ValueError`` for a run without that snapshot."""
    head, stage = split_ref(ref)
    run = find_run(session, head)
    if stage is None or run.stage == stage:
        return run
    if run.stage is not None:
        raise ValueError(f"{ref!r}: run #{run.id} ({run.name}) is itself a {stage_label(run.stage)} snapshot; "
                         f"name its parent, #{run.parent_id}")
    sid = snapshot_id(session, run.id, stage)
    if sid is None:
        raise ValueError(f"run #{run.id} ({run.name}) has no {stage_label(stage)} snapshot (trained with "
                         f"--no-phase1-snapshot, before snapshots existed, or phase 1 has not ended)")
    return run_info(session, sid)


def describe(info: RunInfo) -> str:
    """``#12 demo-20250101`` for a run, ``#13 demo-20250101:phase1`` for a snapshot (its own name)."""
    return f"#{info.id} {info.name}"


def refuse_unfinished(info: RunInfo) -> None:
    """A ValueError naming the status of a run that is not complete: its predictions are partial or stale."""
    if info.status == "complete":
        return
    what = "snapshot" if info.stage else "run"
    why = "is still running" if info.status == "running" else f"has status {info.status!r}"
    detail = f": {info.error}" if info.status == "failed" and info.error else ""
    raise ValueError(f"{what} {describe(info)} {why}{detail}; only complete runs can be compared")


def compare_frame(session: Session, run_id: int, split: Optional[str] = None) -> pd.DataFrame:
    """The run's predicted, non-skipped images (of ``split``; None: all) by id: ``COMPARE_COLUMNS``, label and
    pred as class indices, sha256 None where the file's hash is not recorded."""
    stmt = (select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.sha256, ImageRow.label, Prediction.pred,
                   Prediction.confidence)
            .join(Prediction, Prediction.image_id == ImageRow.id)
            .where(ImageRow.run_id == run_id, ImageRow.skipped.is_(False))
            .order_by(ImageRow.id))
    if split is not None:
        stmt = stmt.where(ImageRow.split == split)
    df = pd.DataFrame(session.execute(stmt).all(), columns=COMPARE_COLUMNS)
    if df.empty:
        return empty(COMPARE_COLUMNS)
    for c in ("image_id", "label", "pred"):
        df[c] = df[c].astype(np.int64)
    df["confidence"] = df["confidence"].astype(np.float64)
    return df


def run_input(session: Session, info: RunInfo, method: str = DEFAULT_METHOD) -> RunInput:
    """One side of a comparison: every prediction of the run (``core.compare`` picks the split). Its map loader
    reads through ``session``, which must stay open while the comparison runs; a run without maps of
    ``method`` gets none (no drift is measured)."""
    check_method(method)
    frame = compare_frame(session, info.id)
    if frame.empty:
        raise ValueError(f"{describe(info)} has no predictions to compare")
    has_maps = method in (info.cam_methods or stored_methods(session, info.id))
    loader = (lambda ids, rid=info.id: maps_for(session, rid, ids, method)) if has_maps else None
    return RunInput(describe(info), frame, list(info.classes), loader)


def compare_stored(session: Session, a_ref: str | int, b_ref: str | int, *, split: Optional[str] = "test",
                   method: str = DEFAULT_METHOD, resamples: int = 2000,
                   seed: int = 0) -> tuple[RunInfo, RunInfo, ComparisonResult]:
    """Run B compared with run A (references as ``find_compared`` takes them) on ``split`` (None: all): the one
    comparison ``jobs.compare``, the dashboard and the export share. Runs that are not complete are refused."""
    a, b = find_compared(session, str(a_ref)), find_compared(session, str(b_ref))
    for info in (a, b):
        refuse_unfinished(info)
    result = compare_runs(run_input(session, a, method), run_input(session, b, method), split=split,
                          resamples=resamples, seed=seed)
    return a, b, result


def comparison_data(session: Session, a_ref: str | int, b_ref: str | int, *, split: Optional[str] = "test",
                    method: str = DEFAULT_METHOD) -> "CompareData":
    """What the comparison's figure set is drawn from (``jobs.export --compare``); ``session`` must stay open
    while the set is drawn: maps are read on demand."""
    # Imported here: the figure code (plotly, Pillow) is only needed by the callers that draw.
    from core.compare_report import CompareData
    from core.images import load_display_image

    a, b, result = compare_stored(session, a_ref, b_ref, split=split, method=method)
    return CompareData(
        result=result,
        a={"id": a.id, "name": a.name, "stage": a.stage}, b={"id": b.id, "name": b.name, "stage": b.stage},
        load_image_a=functools.partial(load_display_image, a.data_root),
        load_image_b=functools.partial(load_display_image, b.data_root),
        load_maps_a=lambda ids: maps_for(session, a.id, ids, method),
        load_maps_b=lambda ids: maps_for(session, b.id, ids, method),
    )
