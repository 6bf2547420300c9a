"""Feature vectors and the 2-D map a run stored: which images have a vector, the vectors themselves with
what is known of their images, the map's points and how the map was made."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.neighbours import decode_vectors
from db.models import FeatureVector, ImageRow, MapInfo, MapPoint, Prediction
from db.queries.frames import ID_CHUNK, empty

VECTOR_IMAGE_COLUMNS = ["image_id", "split", "relpath", "label", "pred", "confidence"]
MAP_COLUMNS = ["image_id", "x", "y", "split", "relpath", "label", "pred", "confidence"]


@dataclass(frozen=True)
class StoredVectors:
    """A run's feature vectors, row ``i`` of ``vectors`` (float32 (N, D)) belonging to row ``i`` of
    ``images`` (``VECTOR_IMAGE_COLUMNS``; ``pred`` and ``confidence`` are <NA> for an image without a
    prediction, such as a training image)."""

    images: pd.DataFrame
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def embed_stamp(session: Session, run_id: int) -> Optional[str]:
    """Changes whenever the run's vectors are added to or its map is redrawn ("<vectors>|<map time>");
    ``None`` when it has neither. Cheap to poll: a count on an index and one row."""
    n = session.scalar(select(func.count()).select_from(FeatureVector).where(FeatureVector.run_id == run_id)) or 0
    when = session.scalar(select(MapInfo.created_at).where(MapInfo.run_id == run_id))
    if not n and when is None:
        return None
    return f"{n}|{when.isoformat(timespec='microseconds') if when is not None else '-'}"


def vector_counts(session: Session, run_id: int) -> dict[str, int]:
    """How many of the run's images have a vector, per split."""
    stmt = (select(ImageRow.split, func.count()).join(FeatureVector, FeatureVector.image_id == ImageRow.id)
            .where(ImageRow.run_id == run_id).group_by(ImageRow.split))
    return {split: int(n) for split, n in session.execute(stmt).all()}


def images_without_vectors(session: Session, run_id: int, splits: Iterable[str]) -> list[tuple[int, str, str, int]]:
    """(image_id, split, relpath, label) of the usable images of ``splits`` that have no vector yet, by id."""
    has = select(FeatureVector.image_id).where(FeatureVector.run_id == run_id)
    stmt = (select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label)
            .where(ImageRow.run_id == run_id, ImageRow.split.in_(list(splits)), ImageRow.skipped.is_(False),
                   ImageRow.id.not_in(has))
            .order_by(ImageRow.id))
    return [(int(i), sp, rel, int(lab)) for i, sp, rel, lab in session.execute(stmt).all()]


def _image_frame(rows: list, columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    if df.empty:
        return empty(columns)
    df["image_id"] = df["image_id"].astype(np.int64)
    df["label"] = df["label"].astype(np.int64)
    df["pred"] = pd.to_numeric(df["pred"], errors="coerce").astype("Int64")
    df["confidence"] = pd.to_numeric(df["confidence"], errors="coerce").astype("Float64")
    return df


def stored_vectors(session: Session, run_id: int, *, splits: Optional[Iterable[str]] = None,
                   image_ids: Optional[Iterable[int]] = None) -> StoredVectors:
    """The run's vectors (of ``splits`` and/or ``image_ids`` when given), by image id, decoded to float32.

    A ValueError when the stored vectors do not all have the same length (vectors of two models)."""
    stmt = (select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label, Prediction.pred,
                   Prediction.confidence, FeatureVector.dim, FeatureVector.data)
            .join(FeatureVector, FeatureVector.image_id == ImageRow.id)
            .outerjoin(Prediction, Prediction.image_id == ImageRow.id)
            .where(ImageRow.run_id == run_id).order_by(ImageRow.id))
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    if image_ids is not None:
        ids = sorted({int(i) for i in image_ids})
        rows = [r for lo in range(0, len(ids), ID_CHUNK)
                for r in session.execute(stmt.where(ImageRow.id.in_(ids[lo:lo + ID_CHUNK]))).all()]
        rows.sort(key=lambda r: r[0])
    else:
        rows = session.execute(stmt).all()
    dims = {int(r[6]) for r in rows}
    if len(dims) > 1:
        raise ValueError(f"run {run_id}: stored vectors of different lengths {sorted(dims)}; recompute them with "
                         f"python -m jobs.embed")
    images = _image_frame([r[:6] for r in rows], VECTOR_IMAGE_COLUMNS)
    if not rows:
        return StoredVectors(images, np.empty((0, 0), dtype=np.float32))
    return StoredVectors(images, decode_vectors([bytes(r[7]) for r in rows], dims.pop()))


def map_points(session: Session, run_id: int) -> pd.DataFrame:
    """Every point of the run's 2-D map with its image: ``MAP_COLUMNS`` by image id (``pred`` and
    ``confidence`` <NA> where the image has no prediction); empty without a map."""
    stmt = (select(MapPoint.image_id, MapPoint.x, MapPoint.y, ImageRow.split, ImageRow.relpath, ImageRow.label,
                   Prediction.pred, Prediction.confidence)
            .join(ImageRow, ImageRow.id == MapPoint.image_id)
            .outerjoin(Prediction, Prediction.image_id == MapPoint.image_id)
            .where(MapPoint.run_id == run_id).order_by(MapPoint.image_id))
    df = _image_frame(session.execute(stmt).all(), MAP_COLUMNS)
    if len(df):
        df["x"] = df["x"].astype(np.float32)
        df["y"] = df["y"].astype(np.float32)
    return df


def map_info(session: Session, run_id: int) -> Optional[dict[str, Any]]:
    """How the run's map was made: method, seed, params, n_points, seconds, created_at (ISO); ``None``
    when it has no map."""
    row = session.get(MapInfo, run_id)
    if row is None:
        return None
    return dict(method=row.method, seed=int(row.seed), params=dict(row.params or {}), n_points=int(row.n_points),
                seconds=float(row.seconds), created_at=row.created_at.isoformat(timespec="seconds"))


def images_at(session: Session, run_id: int, relpath: str) -> list[tuple[int, str, str, int]]:
    """(image_id, split, relpath, label) of the run's images stored under ``relpath`` (one per split that
    lists it; usually one)."""
    stmt = (select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label)
            .where(ImageRow.run_id == run_id, ImageRow.relpath == relpath).order_by(ImageRow.id))
    return [(int(i), sp, rel, int(lab)) for i, sp, rel, lab in session.execute(stmt).all()]
