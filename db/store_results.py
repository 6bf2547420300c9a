"""Writes of what jobs compute about a run after training: the data audit, faithfulness scores and the
sanity check, the calibration, the pointing game per CAM method. Re-exported by ``db.store``."""
from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from db.models import AuditRow, CalibrationRow, PointingScore, Prediction, SanityCheck, TrustScore, utcnow

# --------------------------------------------------------------------------- audit and trust

def replace_audit(session: Session, run_id: int, *, seconds: float, report: dict[str, Any],
                  leakage_accuracy: list[dict[str, Any]]) -> None:
    """Keep one data audit per run: the latest. ``report`` is ``AuditReport.to_dict()`` (with class_names)."""
    session.execute(delete(AuditRow).where(AuditRow.run_id == run_id))
    session.add(AuditRow(run_id=run_id, created_at=utcnow(), seconds=float(seconds), report=report,
                         leakage_accuracy=list(leakage_accuracy)))


def replace_trust_scores(session: Session, run_id: int, image_ids: Iterable[int], rows: list[dict[str, Any]]) -> None:
    """Drop the run's earlier scores of ``image_ids`` and insert ``rows`` (dicts of ``TrustScore`` columns)."""
    ids = [int(i) for i in image_ids]
    for lo in range(0, len(ids), 500):
        session.execute(
            delete(TrustScore).where(TrustScore.run_id == run_id, TrustScore.image_id.in_(ids[lo : lo + 500]))
        )
    if rows:
        session.execute(TrustScore.__table__.insert(), rows)


def replace_sanity_check(session: Session, run_id: int, **fields: Any) -> None:
    """Keep one sanity check per run: the latest."""
    session.execute(delete(SanityCheck).where(SanityCheck.run_id == run_id))
    session.add(SanityCheck(run_id=run_id, created_at=utcnow(), **fields))


# --------------------------------------------------------------------------- calibration

def replace_calibration(session: Session, run_id: int, *, temperature: float, bins: int,
                        report: dict[str, Any]) -> None:
    """Keep one calibration per run: the latest. ``report`` is ``core.calibration.calibration_report``."""
    session.execute(delete(CalibrationRow).where(CalibrationRow.run_id == run_id))
    session.add(CalibrationRow(run_id=run_id, created_at=utcnow(), temperature=float(temperature), bins=int(bins),
                               report=report))


def set_logits(session: Session, logits: dict[int, bytes]) -> None:
    """Record the stored logit vector (``core.metrics.encode_logits``) of predictions, by image id."""
    rows = [{"image_id": int(i), "logits": data} for i, data in logits.items()]
    if rows:
        session.execute(update(Prediction), rows)  # ORM bulk update by primary key




# --------------------------------------------------------------------------- methods side by side

def replace_pointing_scores(session: Session, run_id: int, image_ids: Iterable[int],
                            rows: list[dict[str, Any]]) -> None:
    """Drop the run's earlier pointing-game rows of ``image_ids`` and insert ``rows`` (dicts of
    ``PointingScore`` columns without ``run_id``)."""
    ids = [int(i) for i in image_ids]
    for lo in range(0, len(ids), 500):
        session.execute(delete(PointingScore).where(PointingScore.run_id == run_id,
                                                    PointingScore.image_id.in_(ids[lo : lo + 500])))
    if rows:
        session.execute(PointingScore.__table__.insert(), [{**r, "run_id": run_id} for r in rows])
