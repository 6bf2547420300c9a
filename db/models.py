"""SQLAlchemy 2.0 models of the results store.

One run is one training job (or a snapshot of one: a run row of its own, with ``parent_id`` and ``stage``).
A run owns its class names, one row per epoch, one row per image it looked at (skipped ones too, with the
reason), at most one prediction per image and, per image, one raw map per CAM method and target
(``CamMap``). ``SchemaInfo`` holds the schema version that ``db.store`` checks on open; ``db.upgrade``
brings older stores up to it.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
SCHEMA_VERSION = 2

RUN_STATUSES = ("running", "complete", "failed")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class SchemaInfo(Base):
    __tablename__ = "schema_info"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    data_root: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(String(64), default="cpu")
    weights: Mapped[str] = mapped_column(String(300), default="none")
    image_size: Mapped[int] = mapped_column(Integer)
    cam_layer: Mapped[Optional[str]] = mapped_column(String(120))
    # CAM methods whose maps the run stores, in the order they were written (names of core.cammaps)
    cam_methods: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # a snapshot (e.g. stage "phase1", the model at the end of phase 1) points at the run it was taken from
    parent_id: Mapped[Optional[int]] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    stage: Mapped[Optional[str]] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    best_epoch: Mapped[Optional[int]] = mapped_column(Integer)
    # headline metrics: {"best_val_acc": .., "valid": {"top1": .., "top5": ..}, "test": {...}}
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # splits the dataset does not have, with a reason: {"test": "no test/ folder and no test rows in sports.csv"}
    absent_splits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    checkpoint_path: Mapped[Optional[str]] = mapped_column(Text)
    error: Mapped[Optional[str]] = mapped_column(Text)

    classes: Mapped[list["RunClass"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="RunClass.index"
    )


class RunClass(Base):
    __tablename__ = "run_classes"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    run: Mapped[Run] = relationship(back_populates="classes")


class EpochRow(Base):
    __tablename__ = "epochs"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    phase: Mapped[int] = mapped_column(Integer)  # 1 = frozen base, 2 = fine-tune everything
    epoch: Mapped[int] = mapped_column(Integer)  # 1-based within the phase
    global_epoch: Mapped[int] = mapped_column(Integer)  # 1-based over both phases
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[Optional[float]] = mapped_column(Float)
    val_acc: Mapped[Optional[float]] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("run_id", "global_epoch", name="uq_epoch"),)


class ImageRow(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(8))
    relpath: Mapped[str] = mapped_column(Text)  # relative to the run's data_root, '/'-separated
    label: Mapped[int] = mapped_column(Integer)  # class index
    width: Mapped[Optional[int]] = mapped_column(Integer)
    height: Mapped[Optional[int]] = mapped_column(Integer)
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    skip_reason: Mapped[Optional[str]] = mapped_column(Text)
    # object box in original pixel coordinates [x0, y0, x1, y1] where the dataset knows it (the demo)
    bbox: Mapped[Optional[list[Any]]] = mapped_column(JSON)
    # hex SHA-256 of the file's bytes: matches images across runs and copies of the data by content
    sha256: Mapped[Optional[str]] = mapped_column(String(64), index=True)
    __table_args__ = (
        UniqueConstraint("run_id", "split", "relpath", name="uq_image"),
        Index("ix_images_run_split", "run_id", "split"),
    )


class Prediction(Base):
    __tablename__ = "predictions"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    pred: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    top5_idx: Mapped[list[Any]] = mapped_column(JSON)
    top5_prob: Mapped[list[Any]] = mapped_column(JSON)
    loss: Mapped[Optional[float]] = mapped_column(Float)  # cross-entropy of the true class
    # the full logit vector, little-endian float16, one value per class (core.metrics.decode_logits)
    logits: Mapped[Optional[bytes]] = mapped_column(LargeBinary)


class CamMap(Base):
    """One raw map of one image: float16 bytes of shape (h, w) as ``core.cammaps.encode_maps`` writes them.

    ``method`` names the CAM method (``core.cammaps.METHOD_NAMES``), ``target`` what the map explains
    (``core.cammaps.TARGETS``) and ``class_index`` the class whose score it explains. A correctly
    classified image stores only the "pred" map of a method: its true-class map is the same map.
    """

    __tablename__ = "cam_maps"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    method: Mapped[str] = mapped_column(String(16), primary_key=True)
    target: Mapped[str] = mapped_column(String(8), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    class_index: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    __table_args__ = (Index("ix_cam_maps_run_method", "run_id", "method"),)


class EvalRow(Base):
    """One evaluation of one split: marks whether its predictions and maps are all written."""

    __tablename__ = "evaluations"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(8), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    n_images: Mapped[int] = mapped_column(Integer, default=0)
    top1: Mapped[Optional[float]] = mapped_column(Float)
    top5: Mapped[Optional[float]] = mapped_column(Float)
    loss: Mapped[Optional[float]] = mapped_column(Float)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime)


class AuditRow(Base):
    """The latest data audit of a run: duplicate groups, leakage, conflicts, suspect labels (JSON)."""

    __tablename__ = "audits"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    seconds: Mapped[float] = mapped_column(Float)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    # accuracy per split as measured and with leaked images removed: list of row dicts
    leakage_accuracy: Mapped[list[Any]] = mapped_column(JSON)


class TrustScore(Base):
    """Faithfulness of one map of one image: deletion and insertion curves (class probability per step).

    ``method`` is the map scored: a CAM method or a baseline (``core.cammaps`` names); ``target`` the class the
    map explains: "pred", or "true" (only for a misclassified image: otherwise it is the "pred" map).
    """

    __tablename__ = "trust_scores"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(8))
    class_index: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(16))
    deletion_auc: Mapped[float] = mapped_column(Float)
    insertion_auc: Mapped[float] = mapped_column(Float)
    deletion_curve: Mapped[list[Any]] = mapped_column(JSON)
    insertion_curve: Mapped[list[Any]] = mapped_column(JSON)
    __table_args__ = (
        UniqueConstraint("run_id", "image_id", "target", "method", name="uq_trust_score"),
        Index("ix_trust_scores_run", "run_id", "method"),
    )


class SanityCheck(Base):
    """The latest trust job of a run: its settings and the cascading-randomisation similarities.

    ``stages``: rows {stage, kind ("reference" | "randomised"), modules, n, spearman_mean, spearman_std,
    ssim_mean, ssim_std}, references ("repeat", "noise") first, then the cascade from the top down.
    """

    __tablename__ = "sanity_checks"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    layer: Mapped[str] = mapped_column(String(120))
    n_images: Mapped[int] = mapped_column(Integer)
    stages: Mapped[list[Any]] = mapped_column(JSON)
    # faithfulness settings of the same job: steps, fill, blur_sigma, split, sample, seed, seconds
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)


class CalibrationRow(Base):
    """The latest calibration of a run (``jobs.calibrate``): the temperature fitted on valid and the report.

    ``report`` is ``core.calibration.calibration_report``: ``temperature`` and per split (``valid``, ``test``)
    n, ece, mce, nll, brier, ece_calibrated, nll_calibrated and the reliability ``bins``.
    """

    __tablename__ = "calibrations"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    temperature: Mapped[float] = mapped_column(Float)
    bins: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)


class Review(Base):
    """One verdict of a person on one image (``core.reviews.Verdict``), keyed by the sha256 of the file so that
    it follows the image across runs and copies of the data, not by run.

    Append-only: a new verdict is a new row and the latest by ``created_at`` counts; every earlier one stays.
    ``label`` and ``new_label`` are class names (indices differ between runs). ``token`` is the writer's key of
    one submission, unique, so that a write retried after an unclear outcome is not stored twice.
    """

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    split: Mapped[str] = mapped_column(String(8))
    relpath: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(300))
    verdict: Mapped[str] = mapped_column(String(16))
    new_label: Mapped[Optional[str]] = mapped_column(String(300))
    note: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    token: Mapped[Optional[str]] = mapped_column(String(64), unique=True)


# Indexes the pages of a large run read through (db.queries.scale): the gallery walks the run's predictions
# from the most confident down and filters on the predicted class. Stores made before them get them from
# db.indexes.add_missing_indexes, which db.store.ensure_schema calls.
Index("ix_predictions_run_confidence", Prediction.run_id, Prediction.confidence)
Index("ix_predictions_run_pred", Prediction.run_id, Prediction.pred, Prediction.confidence)


class FeatureVector(Base):
    """One image's feature vector: the model's pooled penultimate vector (``core.embed``), little-endian
    float16 bytes of ``dim`` values (``core.neighbours.encode_vector``), from the run's best checkpoint."""

    __tablename__ = "feature_vectors"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    dim: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class MapPoint(Base):
    """Where one image sits on its run's 2-D map of the feature vectors (``core.projection``)."""

    __tablename__ = "map_points"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)


class MapInfo(Base):
    """How a run's 2-D map was made: the latest projection of its vectors (one row per run).

    ``method`` "umap" or "pca" (``core.projection.Projection.method``); ``params`` the projection's settings
    (n, dim, pca_dims, n_neighbors, min_dist, a fallback's reason)."""

    __tablename__ = "map_infos"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    method: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_points: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class PointingScore(Base):
    """The pointing game of one map of one image (Zhang et al. 2016): does the map's peak fall inside the
    object's box? Written by the trust job for the correctly classified images that have a box.

    ``method`` is the map scored: a CAM method or a baseline (``core.cammaps`` names); ``box_share`` the
    share of the image the box covers, the hit rate a uniformly random point would reach.
    """

    __tablename__ = "pointing_scores"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    method: Mapped[str] = mapped_column(String(16), primary_key=True)
    hit: Mapped[bool] = mapped_column(Boolean)
    box_share: Mapped[float] = mapped_column(Float)
