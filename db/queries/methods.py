"""The CAM methods of a run side by side: pointing-game rows, and the ranking a trust page and a report show."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import pandas as pd
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from core.method_rank import MethodRanking, rank_methods
from db.models import ImageRow, PointingScore
from db.queries.frames import empty
from db.queries.trust import trust_frame

POINTING_COLUMNS = ["image_id", "split", "label", "method", "hit", "box_share"]


def _has_pointing_table(session: Session) -> bool:
    return inspect(session.connection()).has_table(PointingScore.__tablename__)


def pointing_frame(session: Session, run_id: int, splits: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """One row per image and map the trust job played the pointing game with (``POINTING_COLUMNS``); empty
    for a run without boxes or a store from before the table."""
    if not _has_pointing_table(session):
        return empty(POINTING_COLUMNS)
    stmt = (select(PointingScore.image_id, ImageRow.split, ImageRow.label, PointingScore.method, PointingScore.hit,
                   PointingScore.box_share)
            .join(ImageRow, ImageRow.id == PointingScore.image_id)
            .where(PointingScore.run_id == run_id)
            .order_by(PointingScore.image_id, PointingScore.method))
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    rows = session.execute(stmt).all()
    if not rows:
        return empty(POINTING_COLUMNS)
    df = pd.DataFrame(rows, columns=POINTING_COLUMNS)
    df["hit"] = df["hit"].astype(bool)
    return df


def method_ranking(session: Session, run_id: int, names: Sequence[str], splits: Optional[Iterable[str]] = None,
                   frame: Optional[pd.DataFrame] = None) -> Optional[MethodRanking]:
    """The run's CAM methods ranked by the faithfulness of their predicted-class maps (``core.method_rank``),
    over the scored images of ``splits`` (default all); ``frame``: the run's ``trust_frame`` when the caller
    has it. None when the trust job scored no CAM method."""
    if frame is None:
        frame = trust_frame(session, run_id, curves=False)
    splits = None if splits is None else list(splits)
    if splits is not None:
        frame = frame[frame["split"].isin(splits)]
    if frame.empty:
        return None
    return rank_methods(frame, names, pointing_frame(session, run_id, splits))
