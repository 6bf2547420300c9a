"""The data audit a run stored: the report, the images it flags, and accuracy without leaked images."""
from __future__ import annotations

from typing import Any, Optional

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.metrics import flags_from_report
from db.models import AuditRow
from db.queries.frames import empty
from db.queries.runs import class_names


def audit_stamp(session: Session, run_id: int) -> Optional[str]:
    """When the run's data audit was written (ISO time), ``None`` when it has none; cheap to poll."""
    when = session.scalar(select(AuditRow.created_at).where(AuditRow.run_id == run_id))
    return when.isoformat(timespec="seconds") if when is not None else None


def audit_report(session: Session, run_id: int) -> Optional[dict[str, Any]]:
    """The run's data audit (``AuditReport.to_dict()`` plus ``class_names``) with ``leakage_accuracy``,
    ``created_at`` and ``seconds`` added; ``None`` when the run has not been audited."""
    row = session.get(AuditRow, run_id)
    if row is None:
        return None
    report = dict(row.report or {})
    for key in ("groups", "leakage", "conflicts", "suspects", "skipped"):
        report.setdefault(key, [])
    report.setdefault("stats", {})
    report.setdefault("class_names", class_names(session, run_id))
    report["leakage_accuracy"] = list(row.leakage_accuracy or [])
    report["created_at"] = row.created_at.isoformat(timespec="seconds") if row.created_at else None
    report["seconds"] = float(row.seconds)
    return report


def flagged_images(session: Session, run_id: int) -> pd.DataFrame:
    """The images the run's data audit involves (see ``core.metrics.flags_from_report``); empty without an
    audit."""
    return flags_from_report(audit_report(session, run_id))


LEAKAGE_COLUMNS = ["split", "n", "accuracy", "n_leaked", "n_clean", "accuracy_clean", "change"]


def audit_for(session: Session, run_id: int) -> Optional[tuple[dict[str, Any], pd.DataFrame]]:
    """The run's latest data audit (:func:`audit_report`) and its accuracy with leaked images removed as a
    DataFrame, one row per split; ``None`` when the run was never audited."""
    report = audit_report(session, run_id)
    if report is None:
        return None
    leakage = pd.DataFrame(report["leakage_accuracy"])
    leakage = leakage.reindex(columns=LEAKAGE_COLUMNS) if not leakage.empty else empty(LEAKAGE_COLUMNS)
    return report, leakage
