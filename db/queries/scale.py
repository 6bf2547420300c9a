"""Reads that aggregate in the store, so that a page's cost follows what it draws, not the size of the run.

Each query is driven by ``predictions.run_id`` (a run's train images usually have no prediction, and there
can be ten times more of them than of evaluated ones) and joins ``images`` by primary key:

- ``split_counts``: per split, predictions and correct ones (the overview's headline counts);
- ``pair_counts`` / ``confusion_counts``: images per (true, predicted) class, ``GROUP BY label, pred``;
- ``confidence_bins``: per split, bin of confidence and right/wrong, the counts a histogram draws;
- ``errors_page`` / ``errors_count``: the gallery's filters, order and page as SQL, ``LIMIT``/``OFFSET``
  walking the index ``ix_predictions_run_confidence`` from the most confident mistake down;
- ``errors_neighbours``: one image's place among them and the images before and after it (Previous/Next);
- ``pair_images``: the images of one confused pair, most confident first;
- ``images_by_id`` / ``image_by_path``: the few images a page shows (hash, path, label), by key;
- ``logits_of``: the logit vectors of the few images a page shows, by key;
- ``calibration_cells``: images and confidence sums per (split, class, bin, right/wrong), for calibration;
- ``query_plan``: the plan the database chooses for any of them (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on
  PostgreSQL), for the documentation and the test that guards the indexes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Select, and_, case, cast, func, literal, or_, select
from sqlalchemy import Integer as SqlInteger
from sqlalchemy.orm import Session

from core.metrics import decode_logits
from core.splits import ordered
from db.models import ImageRow, Prediction
from db.queries.frames import empty
from db.queries.images import PREDICTION_COLUMNS, StoredLogits, _prediction_select, _typed

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


SPLIT_PAIR_COLUMNS = ["split", *PAIR_COLUMNS]


def split_pair_counts(session: Session, run_id: int) -> pd.DataFrame:
    """:func:`pair_counts` of every split in one read: columns split, label, pred, n (the same scan as one
    split's, so a page that shows several splits, or all of them, pays it once)."""
    stmt = (_scored(ImageRow.split, ImageRow.label, Prediction.pred, func.count())
            .where(Prediction.run_id == run_id).group_by(ImageRow.split, ImageRow.label, Prediction.pred))
    df = pd.DataFrame(session.execute(stmt).all(), columns=SPLIT_PAIR_COLUMNS)
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "split" else np.int64) for c in SPLIT_PAIR_COLUMNS})
    return df.astype({c: np.int64 for c in PAIR_COLUMNS})


def confusion_counts(session: Session, run_id: int, n_classes: int,
                     splits: Optional[Iterable[str]] = None) -> np.ndarray:
    """``cm[true, pred]`` (n_classes, n_classes) int64 from :func:`pair_counts`."""
    return confusion_from_pairs(pair_counts(session, run_id, splits), n_classes, run_id)


def confusion_from_pairs(pairs: pd.DataFrame, n_classes: int, run_id: int) -> np.ndarray:
    """``cm[true, pred]`` from pair rows (label, pred, n; rows of one label and pred are added up)."""
    t, p = pairs["label"].to_numpy(), pairs["pred"].to_numpy()
    if len(pairs) and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"run {run_id}: a class index outside 0..{n_classes - 1} in its predictions")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), pairs["n"].to_numpy())
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
                   pred_classes: Sequence[int], confidence: tuple[float, float], *, count: bool = False,
                   columns: Sequence = ()) -> Select:
    lo, hi = confidence
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"confidence must be a range within [0, 1], got {confidence}")
    # A count reads no columns: without the page's "has a map" subquery it probes no cam_maps row per image.
    # It also tests the confidence on ``confidence + 0``, an expression no index orders: the planner then
    # reads pred and confidence from the covering index ix_predictions_run_pred instead of walking
    # ix_predictions_run_confidence, whose every entry leads back to a 2 KB prediction row (its logits).
    # On the large bench store: 0.04 s instead of 1.2 s.
    if count:
        base = _scored(*(columns or (Prediction.image_id,))).where(ImageRow.run_id == run_id)
        conf = Prediction.confidence + 0
    else:
        base, conf = _prediction_select(run_id), Prediction.confidence
    stmt = base.where(Prediction.run_id == run_id, Prediction.pred != ImageRow.label, and_(conf >= lo, conf <= hi))
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


@dataclass(frozen=True)
class Neighbours:
    """Where one image stands among the errors that match the gallery's filters, in the gallery's order
    (most confident first, then by id): ``position`` (0-based) and the ids before and after it, ``None``
    where there is none or the image does not match; ``first``: the first match (``None``: no match)."""

    position: Optional[int]
    previous: Optional[int]
    next: Optional[int]
    first: Optional[int]


def errors_neighbours(session: Session, run_id: int, image_id: int, *, splits: Optional[Iterable[str]] = None,
                      true_classes: Sequence[int] = (), pred_classes: Sequence[int] = (),
                      confidence: tuple[float, float] = (0.0, 1.0)) -> Neighbours:
    """The comparison page's Previous/Next without the list: at most four reads, none of the run whole. The
    image's own row; the first match and the neighbours walk ``ix_predictions_run_confidence`` from the
    image's confidence and stop at the first match; the position counts the matches before it through the
    covering index, as :func:`errors_count` does."""
    where = dict(splits=splits, true_classes=true_classes, pred_classes=pred_classes, confidence=confidence)
    first = session.scalar(errors_page_select(run_id, limit=1, **where).with_only_columns(ImageRow.id))
    mine = session.scalar(_errors_select(run_id, **where, count=True, columns=(Prediction.confidence,))
                          .where(Prediction.image_id == int(image_id)))
    if mine is None:
        return Neighbours(None, None, None, None if first is None else int(first))
    c, i = float(mine), int(image_id)
    # the redundant bound on confidence lets the walk start at the image's confidence, not at an end of the list
    ahead = and_(Prediction.confidence >= c,
                 or_(Prediction.confidence > c, and_(Prediction.confidence == c, Prediction.image_id < i)))
    behind = and_(Prediction.confidence <= c,
                  or_(Prediction.confidence < c, and_(Prediction.confidence == c, Prediction.image_id > i)))
    walk = _errors_select(run_id, **where).with_only_columns(ImageRow.id)
    prev = session.scalar(walk.where(ahead).order_by(Prediction.confidence.asc(), Prediction.image_id.desc()).limit(1))
    nxt = session.scalar(walk.where(behind).order_by(Prediction.confidence.desc(), Prediction.image_id).limit(1))
    # the count tests the confidence on an expression (see _errors_select), so it stays in the covering index
    c0 = Prediction.confidence + 0
    before = _errors_select(run_id, **where, count=True).where(or_(c0 > c, and_(c0 == c, Prediction.image_id < i)))
    position = int(session.scalar(select(func.count()).select_from(before.subquery())) or 0)
    return Neighbours(position, None if prev is None else int(prev), None if nxt is None else int(nxt), int(first))


# --------------------------------------------------------------------------- images by id

SHOWN_IMAGE_COLUMNS = ["image_id", "split", "relpath", "label", "sha256"]
ID_CHUNK = 500  # ids an IN list holds: well inside every backend's limit on bound parameters


def _shown_frame(rows: list, run_id: int) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["run_id", *SHOWN_IMAGE_COLUMNS])
    df = df[df["run_id"] == run_id].drop(columns="run_id")
    if df.empty:
        return empty(SHOWN_IMAGE_COLUMNS)
    df["image_id"] = df["image_id"].astype(np.int64)
    df["label"] = df["label"].astype(np.int64)
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


_SHOWN = (ImageRow.run_id, ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label, ImageRow.sha256)


def images_by_id(session: Session, run_id: int, image_ids: Iterable[int]) -> pd.DataFrame:
    """The run's images among ``image_ids`` (by primary key, ``ID_CHUNK`` a statement): image_id, split,
    relpath, label, sha256, by id. What a page needs to name the images it shows, and no other row.

    The run is checked on the rows read, not in the statement: with ``run_id = ?`` beside ``id IN (...)``
    SQLite walks the run's images by ``ix_images_run_split`` (1.38 million at ImageNet's size) instead of
    looking the few ids up."""
    ids = sorted({int(i) for i in image_ids})
    rows: list = []
    for lo in range(0, len(ids), ID_CHUNK):
        rows += session.execute(select(*_SHOWN).where(ImageRow.id.in_(ids[lo:lo + ID_CHUNK]))).all()
    return _shown_frame(rows, run_id)


def image_by_path(session: Session, run_id: int, split: str, relpath: str) -> pd.DataFrame:
    """The run's image at ``split``/``relpath`` (the unique key uq_image), as :func:`images_by_id`: 0 or 1 row."""
    stmt = select(*_SHOWN).where(ImageRow.run_id == run_id, ImageRow.split == split, ImageRow.relpath == relpath)
    return _shown_frame(session.execute(stmt).all(), run_id)


def logits_of(session: Session, run_id: int, image_ids: Iterable[int], n_classes: int) -> StoredLogits:
    """The stored logit vectors of ``image_ids`` only (``queries.logits_for``'s form, by id; images of another
    run, or without logits, left out): what a page needs to show calibrated confidences of a few images
    without decoding the run's. Looked up by primary key, ``ID_CHUNK`` a statement; the run is checked on the
    rows read (see :func:`images_by_id`)."""
    ids = sorted({int(i) for i in image_ids})
    rows: list = []
    for lo in range(0, len(ids), ID_CHUNK):
        stmt = (select(ImageRow.run_id, ImageRow.id, ImageRow.split, ImageRow.label, Prediction.pred, Prediction.logits)
                .select_from(Prediction).join(ImageRow, ImageRow.id == Prediction.image_id)
                .where(Prediction.image_id.in_(ids[lo:lo + ID_CHUNK]), ImageRow.skipped.is_(False),
                       Prediction.logits.is_not(None)))
        rows += [r[1:] for r in session.execute(stmt).all() if r[0] == run_id]
    cols = ["image_id", "split", "label", "pred"]
    frame = pd.DataFrame([r[:4] for r in rows], columns=cols) if rows else empty(cols)
    for c in ("image_id", "label", "pred"):
        frame[c] = frame[c].astype(np.int64)
    logits = (np.stack([decode_logits(bytes(r[4]), n_classes) for r in rows]) if rows
              else np.zeros((0, n_classes), np.float32))
    return StoredLogits(frame, logits)


# --------------------------------------------------------------------------- calibration from counts

CELL_COLUMNS = ["split", "label", "bin", "correct", "n", "confidence_sum"]


def calibration_cells(session: Session, run_id: int, bins: int, splits: Optional[Iterable[str]] = None, *,
                      by_class: bool = True) -> pd.DataFrame:
    """Per split, true class, confidence bin (``floor(confidence * bins)``, 1.0 in the last) and right/wrong:
    the images and the sum of their stored confidences, which is what reliability bins and per-class ECE
    need (``core.calibration_views``). ``by_class=False``: summed over the classes (label -1), a few rows
    a split. Reads the covering index ``ix_predictions_run_pred`` and the images by primary key; never a
    logit."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    b = cast(func.floor(Prediction.confidence * bins), SqlInteger)
    right = case((Prediction.pred == ImageRow.label, 1), else_=0)
    label = ImageRow.label if by_class else literal(-1)
    keys = (ImageRow.split, ImageRow.label, b, right) if by_class else (ImageRow.split, b, right)
    stmt = _in_splits(_scored(ImageRow.split, label, b, right, func.count(), func.sum(Prediction.confidence))
                      .where(Prediction.run_id == run_id).group_by(*keys), splits)
    df = pd.DataFrame(session.execute(stmt).all(), columns=CELL_COLUMNS)
    if df.empty:
        return empty(CELL_COLUMNS)
    df["bin"] = df["bin"].astype(np.int64).clip(0, bins - 1)
    df["label"] = df["label"].astype(np.int64)
    df["correct"] = df["correct"].astype(bool)
    df["n"] = df["n"].astype(np.int64)
    df["confidence_sum"] = df["confidence_sum"].astype(np.float64)
    return df.groupby(["split", "label", "bin", "correct"], as_index=False)[["n", "confidence_sum"]].sum()


# --------------------------------------------------------------------------- plans

def query_plan(session: Session, stmt: Select) -> list[str]:
    """The plan of ``stmt`` with its parameters bound: one line per step."""
    dialect = session.get_bind().dialect
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN "
    rows = session.connection().exec_driver_sql(prefix + str(compiled)).all()
    return [str(r[-1]) if dialect.name == "sqlite" else str(r[0]) for r in rows]
