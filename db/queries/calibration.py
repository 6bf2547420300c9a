"""A run's calibration (``jobs.calibrate``) and how many of its predictions kept their logits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from core.calibration_views import FIGURES
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
    # what the Calibration page draws per split (core.calibration_views.split_figures), stored under
    # "figures" beside the report by jobs.calibrate; empty for a calibration stored before it kept them
    figures: dict[str, Any] = field(default_factory=dict)


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
    figures = report.pop(FIGURES, None) or {}
    splits = [s for s in ("valid", "test") if s in report]
    evaluated = session.scalar(select(func.max(EvalRow.finished_at))
                               .where(EvalRow.run_id == run_id, EvalRow.split.in_(splits))) if splits else None
    return StoredCalibration(run_id=run_id, created_at=row.created_at.isoformat(timespec="seconds"),
                             temperature=float(row.temperature), bins=int(row.bins), report=report,
                             stale=bool(evaluated is not None and evaluated > row.created_at), figures=figures)


COVERAGE_COLUMNS = ["split", "predictions", "with_logits"]


NO_LOGITS_INDEX = "ix_predictions_run_no_logits"


def _per_split(session: Session, run_id: int, *where, run=None) -> dict[str, int]:
    """Usable predictions of the run per split (driven by ``predictions.run_id``), under ``where``."""
    stmt = (select(ImageRow.split, func.count()).select_from(Prediction)
            .join(ImageRow, ImageRow.id == Prediction.image_id)
            .where((Prediction.run_id if run is None else run) == run_id, ImageRow.skipped.is_(False), *where)
            .group_by(ImageRow.split))
    return {split: int(n) for split, n in session.execute(stmt).all()}


def missing_logits(session: Session, run_id: int) -> dict[str, int]:
    """Per split, the usable predictions that kept no logit vector (splits with none left out). Reads the
    partial index ``ix_predictions_run_no_logits``, which holds only such rows: no logit is read, and a
    run that kept them all costs nothing. Without the index (an older store opened read-only), the run's
    predictions are read by ``run_id``."""
    has_index = any(ix["name"] == NO_LOGITS_INDEX for ix in inspect(session.connection()).get_indexes("predictions"))
    # SQLite without statistics ranks the partial index no better than ix_predictions_run_confidence for
    # "run_id = ?" and takes whichever the schema lists first; on "run_id + 0" only the partial index is
    # left (scanned whole: it holds the rows without logits of every run, usually none).
    return _per_split(session, run_id, Prediction.logits.is_(None),
                      run=Prediction.run_id + 0 if has_index else None)


def logits_coverage(session: Session, run_id: int) -> pd.DataFrame:
    """Per split with predictions (train/valid/test order): how many usable predictions there are and how
    many of them stored their logit vector (the predictions less :func:`missing_logits`; no blob is read)."""
    total = _per_split(session, run_id)
    if not total:
        return empty(COVERAGE_COLUMNS)
    missing = missing_logits(session, run_id)
    return pd.DataFrame([(s, total[s], total[s] - missing.get(s, 0)) for s in ordered(total)],
                        columns=COVERAGE_COLUMNS)
