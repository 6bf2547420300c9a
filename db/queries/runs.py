"""Runs: the list, one run's settings and classes, its epochs, evaluations and the per-split summary."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.splits import ordered
from db.models import CamMap, EpochRow, EvalRow, ImageRow, Prediction, Run, RunClass
from db.queries.frames import empty
from db.store import resolve_run
from db.storecheck import LATEST


def class_names(session: Session, run_id: int) -> list[str]:
    """The run's class names in class-index order."""
    return list(
        session.scalars(select(RunClass.name).where(RunClass.run_id == run_id).order_by(RunClass.index))
    )


def list_runs(session: Session) -> pd.DataFrame:
    """One row per run, newest first: id, name, status, created_at, finished_at, classes, parent_id, stage
    (a snapshot of a run names the run in ``parent_id`` and what it is in ``stage``; both None for a run)."""
    n_classes = (
        select(RunClass.run_id, func.count().label("classes")).group_by(RunClass.run_id).subquery()
    )
    stmt = (
        select(Run.id, Run.name, Run.status, Run.created_at, Run.finished_at, n_classes.c.classes, Run.parent_id,
               Run.stage)
        .outerjoin(n_classes, n_classes.c.run_id == Run.id)
        .order_by(Run.id.desc())
    )
    cols = ["id", "name", "status", "created_at", "finished_at", "classes", "parent_id", "stage"]
    df = pd.DataFrame(session.execute(stmt).all(), columns=cols)
    if df.empty:
        return empty(cols)
    df["classes"] = df["classes"].fillna(0).astype(int)
    df["parent_id"] = df["parent_id"].astype("Int64")
    return df


def default_run_id(session: Session) -> Optional[int]:
    """``latest`` (the newest complete run that is not a snapshot), else the newest run that is not a
    snapshot (a first run still training), else any run, else ``None``."""
    for cond in (LATEST, (Run.stage.is_(None),), ()):
        rid = session.scalar(select(Run.id).where(*cond).order_by(Run.id.desc()).limit(1))
        if rid is not None:
            return int(rid)
    return None


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    status: str
    config: dict[str, Any]
    data_root: str
    device: str
    weights: str
    image_size: int
    cam_layer: Optional[str]
    best_epoch: Optional[int]
    metrics: dict[str, Any]
    absent_splits: dict[str, Any]
    error: Optional[str]
    created_at: Optional[str]
    finished_at: Optional[str]
    classes: tuple[str, ...]
    checkpoint_path: Optional[str] = None
    cam_methods: tuple[str, ...] = ()
    parent_id: Optional[int] = None
    stage: Optional[str] = None


def run_info(session: Session, run_id: int) -> Optional[RunInfo]:
    """The run with id ``run_id``, ``None`` when the store has none."""
    run = session.get(Run, run_id)
    return None if run is None else _info(session, run)


def find_run(session: Session, ref: str | int) -> RunInfo:
    """A run by id, by name (the newest of that name), or ``latest``; ``StoreError`` when there is none."""
    return _info(session, resolve_run(session, ref))


def _info(session: Session, run: Run) -> RunInfo:
    run_id = run.id
    return RunInfo(
        id=run.id,
        name=run.name,
        status=run.status,
        config=dict(run.config or {}),
        data_root=run.data_root,
        device=run.device,
        weights=run.weights,
        image_size=int(run.image_size),
        cam_layer=run.cam_layer,
        best_epoch=run.best_epoch,
        metrics=dict(run.metrics or {}),
        absent_splits=dict(run.absent_splits or {}),
        error=run.error,
        created_at=run.created_at.isoformat(timespec="seconds") if run.created_at else None,
        finished_at=run.finished_at.isoformat(timespec="seconds") if run.finished_at else None,
        classes=tuple(class_names(session, run_id)),
        checkpoint_path=run.checkpoint_path,
        cam_methods=tuple(run.cam_methods or ()),
        parent_id=run.parent_id,
        stage=run.stage,
    )


def epochs_frame(session: Session, run_id: int) -> pd.DataFrame:
    """The run's epochs in order: phase, epoch, global_epoch, losses, accuracies, lr, seconds."""
    cols = ["phase", "epoch", "global_epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    stmt = (
        select(*(getattr(EpochRow, c) for c in cols))
        .where(EpochRow.run_id == run_id)
        .order_by(EpochRow.global_epoch)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=cols)
    return df if not df.empty else empty(cols)


def evaluations_frame(session: Session, run_id: int) -> pd.DataFrame:
    cols = ["split", "status", "n_images", "top1", "top5", "loss"]
    stmt = select(*(getattr(EvalRow, c) for c in cols)).where(EvalRow.run_id == run_id).order_by(EvalRow.split)
    df = pd.DataFrame(session.execute(stmt).all(), columns=cols)
    return df if not df.empty else empty(cols)


def evaluation_rows(session: Session, run_id: int) -> dict[str, dict[str, Any]]:
    """The run's evaluations by split: status, n_images, top1, top5, loss (None where not known)."""
    rows = session.scalars(select(EvalRow).where(EvalRow.run_id == run_id).order_by(EvalRow.split))
    return {e.split: dict(status=e.status, n_images=e.n_images, top1=e.top1, top5=e.top5, loss=e.loss)
            for e in rows}


def run_summaries(session: Session) -> list[dict[str, Any]]:
    """Per run (snapshots too, with ``parent_id`` and ``stage``): id, name, status, classes, and per split
    images/predictions/skipped/maps/top-1/top-5."""
    runs = list(session.scalars(select(Run).order_by(Run.id)))
    n_classes = dict(
        session.execute(select(RunClass.run_id, func.count()).group_by(RunClass.run_id)).all()
    )

    def counts(stmt) -> dict[tuple[int, str], int]:
        return {(r, s): n for r, s, n in session.execute(stmt).all()}

    img = counts(select(ImageRow.run_id, ImageRow.split, func.count()).group_by(ImageRow.run_id, ImageRow.split))
    skipped = counts(
        select(ImageRow.run_id, ImageRow.split, func.count())
        .where(ImageRow.skipped.is_(True))
        .group_by(ImageRow.run_id, ImageRow.split)
    )
    preds = counts(
        select(ImageRow.run_id, ImageRow.split, func.count())
        .join(Prediction, Prediction.image_id == ImageRow.id)
        .group_by(ImageRow.run_id, ImageRow.split)
    )
    maps = counts(  # images with at least one stored map
        select(ImageRow.run_id, ImageRow.split, func.count(func.distinct(CamMap.image_id)))
        .join(CamMap, CamMap.image_id == ImageRow.id)
        .group_by(ImageRow.run_id, ImageRow.split)
    )
    evals = {(e.run_id, e.split): e for e in session.scalars(select(EvalRow))}
    out = []
    for run in runs:
        splits = {}
        for split in ordered(s for r, s in (*img, *evals) if r == run.id):
            key = (run.id, split)
            ev = evals.get(key)
            splits[split] = {
                "images": img.get(key, 0),
                "predictions": preds.get(key, 0),
                "skipped": skipped.get(key, 0),
                "maps": maps.get(key, 0),
                "evaluation": ev.status if ev else None,
                "top1": ev.top1 if ev else None,
                "top5": ev.top5 if ev else None,
            }
        out.append(
            {
                "id": run.id,
                "name": run.name,
                "status": run.status,
                "parent_id": run.parent_id,
                "stage": run.stage,
                "classes": n_classes.get(run.id, 0),
                "device": run.device,
                "weights": run.weights,
                "image_size": run.image_size,
                "cam_methods": list(run.cam_methods or []),
                "started_at": run.started_at.isoformat(timespec="seconds") if run.started_at else None,
                "finished_at": run.finished_at.isoformat(timespec="seconds") if run.finished_at else None,
                "best_epoch": run.best_epoch,
                "metrics": run.metrics,
                "absent_splits": run.absent_splits,
                "splits": splits,
            }
        )
    return out
