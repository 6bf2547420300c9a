"""Reads that aggregate in the store, so that a page's cost follows what it draws, not the size of the run.

Each query is driven by ``predictions.run_id`` (a run's train images usually have no prediction, and there
can be ten times more of them than of evaluated ones) and joins ``images`` by primary key:

- ``split_counts``: per split, predictions and correct ones (the overview's headline counts);
- ``pair_counts`` / ``confusion_counts``: images per (true, predicted) class, ``GROUP BY label, pred``;
- ``confidence_bins``: per split, bin of confidence and right/wrong, the counts a histogram draws;
- ``errors_page`` / ``errors_count``: the gallery's filters, order and page as SQL, ``LIMIT``/``OFFSET``
  walking the index ``ix_predictions_run_confidence`` from the most confident mistake down;
- ``pair_images``: the images of one confused pair, most confident first;
- ``query_plan``: the plan the database chooses for any of them (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on
  PostgreSQL), for the documentation and the test that guards the indexes.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Select, and_, case, cast, func, select
from sqlalchemy import Integer as SqlInteger
from sqlalchemy.orm import Session

from core.splits import ordered
from db.models import ImageRow, Prediction
from db.queries.frames import empty
from db.queries.images import PREDICTION_COLUMNS, _prediction_select, _typed

SPLIT_COUNT_COLUMNS = ["split", "predictions", "correct"]
PAIR_COLUMNS = ["label", "pred", "n"]
BIN_COLUMNS = ["split", "bin", "correct", "n"]


def _scored(*columns) -> Select:
    """``columns`` over the run's predictions of usable images (filter on ``Prediction.run_id`` after)."""
    return (select(*columns).select_from(Prediction)
            .join(ImageRow, ImageRow.id == Prediction.image_id)
            .where(ImageRow.skipped.is_(False)))


def _in_splits(stmt: Select, splits: Optional[Iterable[str]]) -> Select:
    return stmt if splits is None else stmt.where(ImageRow.split.in_(list(splits)))


def split_counts_select(run_id: int) -> Select:
    right = func.sum(case((Prediction.pred == ImageRow.label, 1), else_=0))
    return (_scored(ImageRow.split, func.count(), right)
            .where(Prediction.run_id == run_id).group_by(ImageRow.split))


def split_counts(session: Session, run_id: int) -> pd.DataFrame:
    """Per split with predictions, in train/valid/test order: ``predictions`` and ``correct`` (top-1)."""
    rows = {s: (int(n), int(r or 0)) for s, n, r in session.execute(split_counts_select(run_id)).all()}
    if not rows:
        return empty(SPLIT_COUNT_COLUMNS)
    return pd.DataFrame([(s, *rows[s]) for s in ordered(rows)], columns=SPLIT_COUNT_COLUMNS)


def pair_counts_select(run_id: int, splits: Optional[Iterable[str]] = None) -> Select:
    stmt = (_scored(ImageRow.label, Prediction.pred, func.count())
            .where(Prediction.run_id == run_id).group_by(ImageRow.label, Prediction.pred))
    return _in_splits(stmt, splits)


def pair_counts(session: Session, run_id: int, splits: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Images per (true ``label``, predicted ``pred``) pair that occurs: columns label, pred, n (int64)."""
    df = pd.DataFrame(session.execute(pair_counts_select(run_id, splits)).all(), columns=PAIR_COLUMNS)
    return df.astype(np.int64) if len(df) else pd.DataFrame({c: pd.Series(dtype=np.int64) for c in PAIR_COLUMNS})


def confusion_counts(session: Session, run_id: int, n_classes: int,
                     splits: Optional[Iterable[str]] = None) -> np.ndarray:
    """``cm[true, pred]`` (n_classes, n_classes) int64 from :func:`pair_counts`."""
    pairs = pair_counts(session, run_id, splits)
    t, p = pairs["label"].to_numpy(), pairs["pred"].to_numpy()
    if len(pairs) and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"run {run_id}: a class index outside 0..{n_classes - 1} in its predictions")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    cm[t, p] = pairs["n"].to_numpy()
    return cm


def confidence_bins(session: Session, run_id: int, bins: int = 20) -> pd.DataFrame:
    """Per split, confidence bin (``floor(confidence * bins)``, 1.0 in the last) and right/wrong: counts."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    b = cast(func.floor(Prediction.confidence * bins), SqlInteger)
    right = case((Prediction.pred == ImageRow.label, 1), else_=0)
    stmt = (_scored(ImageRow.split, b, right, func.count()).where(Prediction.run_id == run_id)
            .group_by(ImageRow.split, b, right))
    df = pd.DataFrame(session.execute(stmt).all(), columns=BIN_COLUMNS)
    if df.empty:
        return empty(BIN_COLUMNS)
    df["bin"] = df["bin"].astype(np.int64).clip(0, bins - 1)
    df["correct"] = df["correct"].astype(bool)
    return df.groupby(["split", "bin", "correct"], as_index=False)["n"].sum()


# --------------------------------------------------------------------------- the gallery in SQL

def _errors_select(run_id: int, splits: Optional[Iterable[str]], true_classes: Sequence[int],
                   pred_classes: Sequence[int], confidence: tuple[float, float], *, count: bool = False) -> Select:
    lo, hi = confidence
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"confidence must be a range within [0, 1], got {confidence}")
    # A count reads no columns: without the page's "has a map" subquery it probes no cam_maps row per image.
    base = _scored(Prediction.image_id).where(ImageRow.run_id == run_id) if count else _prediction_select(run_id)
    stmt = base.where(
        Prediction.run_id == run_id, Prediction.pred != ImageRow.label,
        and_(Prediction.confidence >= lo, Prediction.confidence <= hi))
    stmt = _in_splits(stmt, splits)
    if true_classes:
        stmt = stmt.where(ImageRow.label.in_([int(c) for c in true_classes]))
    if pred_classes:
        stmt = stmt.where(Prediction.pred.in_([int(c) for c in pred_classes]))
    return stmt


def errors_page_select(run_id: int, *, splits: Optional[Iterable[str]] = None, true_classes: Sequence[int] = (),
                       pred_classes: Sequence[int] = (), confidence: tuple[float, float] = (0.0, 1.0),
                       offset: int = 0, limit: int = 25) -> Select:
    if offset < 0 or limit < 1:
        raise ValueError(f"offset must be >= 0 and limit >= 1, got {offset} and {limit}")
    stmt = _errors_select(run_id, splits, true_classes, pred_classes, confidence)
    return stmt.order_by(Prediction.confidence.desc(), Prediction.image_id).offset(offset).limit(limit)


def errors_page(session: Session, run_id: int, **filters) -> pd.DataFrame:
    """One page of the misclassified images that match the filters, most confident first: the columns of
    ``queries.errors_frame``. Filters: ``splits``, ``true_classes``, ``pred_classes`` (empty: any),
    ``confidence`` (lo, hi), ``offset`` and ``limit``."""
    return _typed(session.execute(errors_page_select(run_id, **filters)).all(), PREDICTION_COLUMNS)


def errors_count(session: Session, run_id: int, *, splits: Optional[Iterable[str]] = None,
                 true_classes: Sequence[int] = (), pred_classes: Sequence[int] = (),
                 confidence: tuple[float, float] = (0.0, 1.0)) -> int:
    """How many misclassified images match the filters (those of :func:`errors_page`)."""
    inner = _errors_select(run_id, splits, true_classes, pred_classes, confidence, count=True).subquery()
    return int(session.scalar(select(func.count()).select_from(inner)) or 0)


def pair_images(session: Session, run_id: int, true_idx: int, pred_idx: int,
                splits: Optional[Iterable[str]] = None, limit: int = 12) -> pd.DataFrame:
    """The images of class ``true_idx`` predicted as ``pred_idx``, most confident first, at most ``limit``."""
    stmt = _in_splits(_prediction_select(run_id).where(
        Prediction.run_id == run_id, ImageRow.label == int(true_idx), Prediction.pred == int(pred_idx)), splits)
    stmt = stmt.order_by(Prediction.confidence.desc(), Prediction.image_id).limit(int(limit))
    return _typed(session.execute(stmt).all(), PREDICTION_COLUMNS)


# --------------------------------------------------------------------------- plans

def query_plan(session: Session, stmt: Select) -> list[str]:
    """The plan of ``stmt`` with its parameters bound: one line per step."""
    dialect = session.get_bind().dialect
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN "
    rows = session.connection().exec_driver_sql(prefix + str(compiled)).all()
    return [str(r[-1]) if dialect.name == "sqlite" else str(r[0]) for r in rows]
