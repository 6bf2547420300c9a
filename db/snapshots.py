"""Writing a run's snapshot (``core.stages``): a run row of its own that points at the run it was taken from.

As the writes of ``db.store``, it takes a ``session`` and never commits: the job owns the transaction.
"""
from __future__ import annotations

from typing import Optional

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from db.models import EpochRow, ImageRow, Run, RunClass, utcnow
from db.store import StoreError


def create_snapshot(session: Session, parent_id: int, stage: str, *, checkpoint_path: Optional[str] = None,
                    through_epoch: Optional[int] = None) -> Run:
    """Run ``parent_id``'s snapshot at ``stage`` ("phase1"): a run of its own named ``<parent>:<stage>``, running, with
    the parent's settings, classes, image rows (same relpaths, SHA-256) and epochs up to ``through_epoch``."""
    parent = session.get(Run, parent_id)
    if parent is None or parent.stage is not None:
        raise StoreError(f"run {parent_id} cannot take a {stage!r} snapshot: "
                         + ("no such run" if parent is None else f"it is itself a {parent.stage!r} snapshot"))
    snap = Run(name=f"{parent.name}:{stage}"[:200], status="running", config={**(parent.config or {}), "stage": stage},
               data_root=parent.data_root, device=parent.device, weights=parent.weights, image_size=parent.image_size,
               cam_layer=parent.cam_layer, parent_id=parent_id, stage=stage, started_at=utcnow(), metrics={},
               absent_splits=dict(parent.absent_splits or {}), checkpoint_path=checkpoint_path)
    snap.classes = [RunClass(index=c.index, name=c.name) for c in parent.classes]
    session.add(snap)
    session.flush()

    def copy(model, cols: tuple[str, ...], *where) -> None:
        rows = session.execute(select(*(getattr(model, c) for c in cols)).where(model.run_id == parent_id, *where))
        found = [dict(zip(cols, r), run_id=snap.id) for r in rows.all()]
        if found:
            session.execute(insert(model), found)
    copy(ImageRow, ("split", "relpath", "label", "width", "height", "skipped", "skip_reason", "bbox", "sha256"))
    epoch_cols = ("phase", "epoch", "global_epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
    copy(EpochRow, epoch_cols, EpochRow.global_epoch <= (through_epoch or 0))
    return snap
