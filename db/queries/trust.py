"""Faithfulness scores and the sanity check a run's trust job stored (``jobs.trust``)."""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Optional, Sequence

import pandas as pd
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from core.cammaps import TARGET_PRED
from core.metrics import trust_per_class
from db.models import ImageRow, Prediction, SanityCheck, TrustScore
from db.queries.frames import empty


TRUST_COLUMNS = ["image_id", "split", "relpath", "label", "pred", "target", "class_index", "method",
                 "deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve"]


def trust_frame(session: Session, run_id: int, *, curves: bool = True) -> pd.DataFrame:
    """One row per scored map of the run (``TRUST_COLUMNS``; the curve columns hold lists, or None
    without ``curves``), ordered by image, target and method."""
    cols = [TrustScore.deletion_curve, TrustScore.insertion_curve] if curves else []
    stmt = (
        select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label, Prediction.pred, TrustScore.target,
               TrustScore.class_index, TrustScore.method, TrustScore.deletion_auc, TrustScore.insertion_auc, *cols)
        .join(ImageRow, ImageRow.id == TrustScore.image_id)
        .outerjoin(Prediction, Prediction.image_id == ImageRow.id)
        .where(TrustScore.run_id == run_id)
        .order_by(ImageRow.id, TrustScore.target, TrustScore.method)
    )
    rows = session.execute(stmt).all()
    if not rows:
        return empty(TRUST_COLUMNS)
    names = TRUST_COLUMNS if curves else TRUST_COLUMNS[:-2]
    df = pd.DataFrame(rows, columns=names)
    if not curves:
        df["deletion_curve"] = None
        df["insertion_curve"] = None
    df["pred"] = pd.to_numeric(df["pred"], errors="coerce").astype("Int64")
    return df


def _has_trust_tables(session: Session) -> bool:
    tables = inspect(session.connection())
    return tables.has_table(TrustScore.__tablename__) and tables.has_table(SanityCheck.__tablename__)


def trust_version(session: Session, run_id: int) -> Optional[str]:
    """When the run's latest trust job ran (ISO time); ``None`` when it never ran or the store predates the
    trust tables. Cheap to poll: pages key their caches of the scores on it."""
    if not _has_trust_tables(session):
        return None
    when = session.scalar(select(SanityCheck.created_at).where(SanityCheck.run_id == run_id))
    return when.isoformat(timespec="seconds") if when is not None else None


def sanity_check(session: Session, run_id: int) -> Optional[dict[str, Any]]:
    """The run's latest sanity check: created_at, layer, n_images, stages (list of dicts), settings."""
    row = session.get(SanityCheck, run_id)
    if row is None:
        return None
    return dict(created_at=row.created_at, layer=row.layer, n_images=row.n_images, stages=list(row.stages),
                settings=dict(row.settings))


class TrustTables(NamedTuple):
    """What a report shows of a run's trust job; each part ``None`` when the run has none."""

    scores: Optional[pd.DataFrame]  # trust_frame(curves=False), rows of the chosen splits
    per_class: Optional[pd.DataFrame]  # trust_per_class of the predicted-class maps
    sanity: Optional[dict[str, Any]]  # sanity_check


def trust_for(session: Session, run_id: int, names: Sequence[str],
              splits: Optional[Iterable[str]] = None) -> TrustTables:
    """The run's faithfulness scores (of ``splits``, default all), their per-class table and its sanity
    check. A store written before the trust tables existed reads as a run without them."""
    if not _has_trust_tables(session):
        return TrustTables(None, None, None)
    scores = trust_frame(session, run_id, curves=False)
    if splits is not None:
        scores = scores[scores["split"].isin(list(splits))].reset_index(drop=True)
    per_class = trust_per_class(scores, names, TARGET_PRED)
    return TrustTables(scores=scores if not scores.empty else None,
                       per_class=per_class if not per_class.empty else None,
                       sanity=sanity_check(session, run_id))
