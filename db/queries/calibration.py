"""A run's calibration (``jobs.calibrate``) and how many of its predictions kept their logits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from core.splits import ordered
from db.models import CalibrationRow, EvalRow, ImageRow, Prediction
from db.queries.frames import empty


@dataclass(frozen=True)
class StoredCalibration:
    """The latest calibration of a run. ``stale``: a split it covers was evaluated again afterwards (e.g. by
    ``jobs.cams``), so the temperature was fitted on logits that are no longer the stored ones."""

    run_id: int
    created_at: str
    temperature: float
    bins: int
    report: dict[str, Any]
    stale: bool = False


def _has_table(session: Session) -> bool:
    return inspect(session.connection()).has_table(CalibrationRow.__tablename__)


def calibration_stamp(session: Session, run_id: int) -> Optional[str]:
    """When the run's calibration was written (ISO time); ``None`` when it has none, or the store predates
    the table. Cheap to poll: pages key their caches on it."""
    if not _has_table(session):
        return None
    when = session.scalar(select(CalibrationRow.created_at).where(CalibrationRow.run_id == run_id))
    return when.isoformat(timespec="seconds") if when is not None else None


def calibration_for(session: Session, run_id: int) -> Optional[StoredCalibration]:
    """The run's latest calibration, ``None`` when it has none (or the store predates the table)."""
    if not _has_table(session):
        return None
    row = session.get(CalibrationRow, run_id)
    if row is None:
        return None
    report = dict(row.report or {})
    splits = [s for s in ("valid", "test") if s in report]
    evaluated = session.scalar(select(func.max(EvalRow.finished_at))
                               .where(EvalRow.run_id == run_id, EvalRow.split.in_(splits))) if splits else None
    return StoredCalibration(run_id=run_id, created_at=row.created_at.isoformat(timespec="seconds"),
                             temperature=float(row.temperature), bins=int(row.bins), report=report,
                             stale=bool(evaluated is not None and evaluated > row.created_at))


COVERAGE_COLUMNS = ["split", "predictions", "with_logits"]


def logits_coverage(session: Session, run_id: int) -> pd.DataFrame:
    """Per split with predictions (train/valid/test order): how many usable predictions there are and how
    many of them stored their logit vector."""
    stmt = (select(ImageRow.split, func.count(), func.count(Prediction.logits))
            .join(Prediction, Prediction.image_id == ImageRow.id)
            .where(ImageRow.run_id == run_id, ImageRow.skipped.is_(False))
            .group_by(ImageRow.split))
    rows = {split: (int(n), int(k)) for split, n, k in session.execute(stmt).all()}
    if not rows:
        return empty(COVERAGE_COLUMNS)
    return pd.DataFrame([(s, *rows[s]) for s in ordered(rows)], columns=COVERAGE_COLUMNS)
