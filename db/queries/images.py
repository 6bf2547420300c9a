"""Images and predictions: which splits a run has, its images, predictions and mistakes, the confusion
matrix, the stored logits, and everything known of one image."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional

import numpy as np
import pandas as pd
from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from core.cammaps import DEFAULT_METHOD, StoredMaps
from core.metrics import decode_logits
from core.splits import ordered
from db.models import CamMap, ImageRow, Prediction
from db.queries.frames import empty
from db.queries.maps import maps_for, ordered_methods

PREDICTION_COLUMNS = ["image_id", "split", "relpath", "label", "pred", "confidence", "loss", "has_cam"]


def image_splits(session: Session, run_id: int) -> list[str]:
    """Splits the run recorded images of, in train/valid/test order."""
    found = set(session.scalars(select(ImageRow.split).where(ImageRow.run_id == run_id).distinct()))
    return ordered(found)


def prediction_splits(session: Session, run_id: int) -> list[str]:
    """Splits that have at least one prediction, in train/valid/test order."""
    found = set(
        session.scalars(
            select(ImageRow.split)
            .join(Prediction, Prediction.image_id == ImageRow.id)
            .where(ImageRow.run_id == run_id)
            .distinct()
        )
    )
    return ordered(found)


IMAGE_COLUMNS = ["image_id", "split", "relpath", "label", "width", "height", "skipped", "skip_reason", "bbox",
                 "sha256"]


def images_frame(session: Session, run_id: int, splits: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Every image the run recorded (skipped ones too), by id: ``IMAGE_COLUMNS``; ``bbox`` holds a list or None."""
    stmt = select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label, ImageRow.width, ImageRow.height,
                  ImageRow.skipped, ImageRow.skip_reason, ImageRow.bbox, ImageRow.sha256).where(
        ImageRow.run_id == run_id).order_by(ImageRow.id)
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    df = pd.DataFrame(session.execute(stmt).all(), columns=IMAGE_COLUMNS)
    if df.empty:
        return empty(IMAGE_COLUMNS)
    df["image_id"] = df["image_id"].astype(np.int64)
    df["label"] = df["label"].astype(np.int64)
    df["skipped"] = df["skipped"].astype(bool)
    return df


def image_samples(session: Session, run_id: int, splits: Iterable[str]) -> list[tuple[str, str, int]]:
    """(split, relpath, label) of every image the run recorded in ``splits`` (skipped ones too), by relpath."""
    stmt = (select(ImageRow.split, ImageRow.relpath, ImageRow.label)
            .where(ImageRow.run_id == run_id, ImageRow.split.in_(list(splits)))
            .order_by(ImageRow.relpath))
    return [(sp, rel, int(lab)) for sp, rel, lab in session.execute(stmt).all()]


def usable_images(session: Session, run_id: int, split: str) -> list[tuple[int, str, int]]:
    """(image_id, relpath, label) of the images of ``split`` that were not skipped, by id."""
    stmt = (select(ImageRow.id, ImageRow.relpath, ImageRow.label)
            .where(ImageRow.run_id == run_id, ImageRow.split == split, ImageRow.skipped.is_(False))
            .order_by(ImageRow.id))
    return [(int(i), rel, int(lab)) for i, rel, lab in session.execute(stmt).all()]


def images_without_sha256(session: Session, run_id: int) -> list[tuple[int, str]]:
    """(image_id, relpath) of the run's images whose file hash is not recorded (a store from schema 1)."""
    stmt = (select(ImageRow.id, ImageRow.relpath)
            .where(ImageRow.run_id == run_id, ImageRow.sha256.is_(None)).order_by(ImageRow.id))
    return [(int(i), rel) for i, rel in session.execute(stmt).all()]


SCORED_COLUMNS = ["image_id", "split", "relpath", "label", "pred", "top5_idx", "top5_prob"]


def scored_images(session: Session, run_id: int) -> pd.DataFrame:
    """Every usable image of the run with its prediction where it has one (``pred`` <NA>, the top-5 lists
    None otherwise), by id: ``SCORED_COLUMNS``."""
    stmt = (select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label, Prediction.pred,
                   Prediction.top5_idx, Prediction.top5_prob)
            .outerjoin(Prediction, Prediction.image_id == ImageRow.id)
            .where(ImageRow.run_id == run_id, ImageRow.skipped.is_(False))
            .order_by(ImageRow.id))
    df = pd.DataFrame(session.execute(stmt).all(), columns=SCORED_COLUMNS)
    if df.empty:
        return empty(SCORED_COLUMNS)
    df["image_id"] = df["image_id"].astype(np.int64)
    df["label"] = df["label"].astype(np.int64)
    df["pred"] = pd.to_numeric(df["pred"], errors="coerce").astype("Int64")
    return df


# --------------------------------------------------------------------------- predictions

def _prediction_select(run_id: int):
    return (
        select(
            ImageRow.id,
            ImageRow.split,
            ImageRow.relpath,
            ImageRow.label,
            Prediction.pred,
            Prediction.confidence,
            Prediction.loss,
            exists().where(CamMap.image_id == ImageRow.id),
        )
        .join(Prediction, Prediction.image_id == ImageRow.id)
        .where(ImageRow.run_id == run_id, ImageRow.skipped.is_(False))
    )


def _typed(rows: list, columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    if df.empty:
        return empty(columns)
    for c in ("image_id", "label", "pred"):
        df[c] = df[c].astype(np.int64)
    df["confidence"] = df["confidence"].astype(np.float64)
    df["loss"] = pd.to_numeric(df["loss"], errors="coerce")
    df["has_cam"] = df["has_cam"].astype(bool)
    return df


def predictions_frame(session: Session, run_id: int, splits: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Every predicted, non-skipped image: image_id, split, relpath, label, pred, confidence, loss, has_cam."""
    stmt = _prediction_select(run_id)
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    return _typed(session.execute(stmt.order_by(ImageRow.id)).all(), PREDICTION_COLUMNS)


def errors_frame(
    session: Session,
    run_id: int,
    *,
    splits: Optional[Iterable[str]] = None,
    true_classes: Optional[Iterable[int]] = None,
    pred_classes: Optional[Iterable[int]] = None,
    confidence: tuple[float, float] = (0.0, 1.0),
) -> pd.DataFrame:
    """Misclassified images matching the filters, most confident mistakes first."""
    stmt = _prediction_select(run_id).where(Prediction.pred != ImageRow.label)
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    if true_classes is not None:
        stmt = stmt.where(ImageRow.label.in_([int(c) for c in true_classes]))
    if pred_classes is not None:
        stmt = stmt.where(Prediction.pred.in_([int(c) for c in pred_classes]))
    lo, hi = confidence
    stmt = stmt.where(and_(Prediction.confidence >= lo, Prediction.confidence <= hi))
    stmt = stmt.order_by(Prediction.confidence.desc(), ImageRow.id)
    return _typed(session.execute(stmt).all(), PREDICTION_COLUMNS)


def confusion_matrix(
    session: Session, run_id: int, n_classes: int, splits: Optional[Iterable[str]] = None
) -> np.ndarray:
    """Counts ``cm[true, pred]`` of shape (n_classes, n_classes), int64."""
    stmt = (
        select(ImageRow.label, Prediction.pred, func.count())
        .join(Prediction, Prediction.image_id == ImageRow.id)
        .where(ImageRow.run_id == run_id, ImageRow.skipped.is_(False))
        .group_by(ImageRow.label, Prediction.pred)
    )
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p, n in session.execute(stmt).all():
        if not (0 <= t < n_classes and 0 <= p < n_classes):
            raise ValueError(f"run {run_id}: class index ({t}, {p}) outside 0..{n_classes - 1}")
        cm[t, p] = n
    return cm


class StoredLogits(NamedTuple):
    """The predictions of a run that kept their logits: ``frame`` (image_id, split, label, pred) and
    ``logits`` (len(frame), n_classes) float32, row for row."""

    frame: pd.DataFrame
    logits: np.ndarray


def logits_for(session: Session, run_id: int, n_classes: int,
               splits: Optional[Iterable[str]] = None) -> StoredLogits:
    """Every usable prediction of the run (of ``splits``, default all) that stored its logit vector, by id."""
    stmt = (select(ImageRow.id, ImageRow.split, ImageRow.label, Prediction.pred, Prediction.logits)
            .join(Prediction, Prediction.image_id == ImageRow.id)
            .where(ImageRow.run_id == run_id, ImageRow.skipped.is_(False), Prediction.logits.is_not(None))
            .order_by(ImageRow.id))
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    rows = session.execute(stmt).all()
    cols = ["image_id", "split", "label", "pred"]
    frame = pd.DataFrame([r[:4] for r in rows], columns=cols) if rows else empty(cols)
    for c in ("image_id", "label", "pred"):
        frame[c] = frame[c].astype(np.int64)
    logits = (np.stack([decode_logits(bytes(r[4]), n_classes) for r in rows]) if rows
              else np.zeros((0, n_classes), np.float32))
    return StoredLogits(frame, logits)


# --------------------------------------------------------------------------- one image

@dataclass(frozen=True)
class ImageDetail:
    image_id: int
    split: str
    relpath: str
    label: int
    pred: Optional[int]
    confidence: Optional[float]
    loss: Optional[float]
    top5_idx: tuple[int, ...]
    top5_prob: tuple[float, ...]
    maps: Optional[StoredMaps]  # the maps of the method asked for; None when the image has none
    methods: tuple[str, ...]  # every CAM method with maps of this image
    bbox: Optional[tuple[float, ...]]
    skipped: bool
    skip_reason: Optional[str]
    sha256: Optional[str] = None


def image_detail(session: Session, run_id: int, image_id: int, method: str = DEFAULT_METHOD) -> Optional[ImageDetail]:
    """One image of the run with its prediction and its raw ``method`` maps; ``None`` when the run has no
    such image."""
    row = session.execute(
        select(ImageRow, Prediction)
        .outerjoin(Prediction, Prediction.image_id == ImageRow.id)
        .where(ImageRow.id == image_id, ImageRow.run_id == run_id)
    ).first()
    if row is None:
        return None
    img, pr = row
    methods = ordered_methods(session.scalars(
        select(CamMap.method).where(CamMap.image_id == image_id, CamMap.run_id == run_id).distinct()))
    return ImageDetail(
        image_id=img.id,
        split=img.split,
        relpath=img.relpath,
        label=img.label,
        pred=pr.pred if pr else None,
        confidence=pr.confidence if pr else None,
        loss=pr.loss if pr else None,
        top5_idx=tuple(int(i) for i in (pr.top5_idx or [])) if pr else (),
        top5_prob=tuple(float(x) for x in (pr.top5_prob or [])) if pr else (),
        maps=maps_for(session, run_id, [image_id], method).get(image_id),
        methods=tuple(methods),
        bbox=tuple(img.bbox) if img.bbox else None,
        skipped=bool(img.skipped),
        skip_reason=img.skip_reason,
        sha256=img.sha256,
    )


# Ids per IN (...) list: well under SQLite's and PostgreSQL's limits on bound parameters.
