"""One function that assembles a run's tables for a figure set: ``jobs.export`` and the Export page share it."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional, Sequence

from sqlalchemy.orm import Session

from core.metrics import confused_pairs, per_class_metrics
from db.queries.audit import audit_for
from db.queries.images import confusion_matrix, errors_frame, predictions_frame, prediction_splits
from db.queries.maps import maps_for
from db.queries.methods import method_ranking
from db.queries.runs import epochs_frame, run_info
from db.queries.trust import trust_for
from db.store import StoreError

if TYPE_CHECKING:
    from core.report import RunData


def run_data(session: Session, run_id: int, splits: Optional[Sequence[str]] = None) -> "RunData":
    """Everything the figure set of run ``run_id`` is drawn from (its predictions of ``splits``, default all),
    read in ``session``, which must stay open while the set is drawn: maps are read on demand.

    ``StoreError`` for an unknown run; ``ValueError`` for splits the run has no predictions of, or a run with
    no predictions at all.
    """
    # Imported here: the figure code (plotly, Pillow) is only needed by the callers that draw.
    from core.images import load_display_image
    from core.report import RunData

    info = run_info(session, run_id)
    if info is None:
        raise StoreError(f"no run {run_id} in the store")
    names = info.classes
    present = prediction_splits(session, run_id)
    if splits is not None:
        unknown = [s for s in splits if s not in present]
        if unknown:
            raise ValueError(f"--splits: run {run_id} has no predictions for {', '.join(unknown)}; "
                             f"it has {', '.join(present) or 'none'}")
    preds = predictions_frame(session, run_id, splits)
    if preds.empty:
        raise ValueError(f"run {run_id} ({info.name}) has no predictions to export; evaluate it first")
    cm = confusion_matrix(session, run_id, len(names), splits)
    audit = audit_for(session, run_id)
    trust = trust_for(session, run_id, names, splits)
    return RunData(
        run_id=run_id,
        run_name=info.name,
        names=names,
        predictions=preds,
        errors=errors_frame(session, run_id, splits=splits),
        cm=cm,
        per_class=per_class_metrics(preds["label"].to_numpy(), preds["pred"].to_numpy(), names),
        pairs=confused_pairs(cm, names, limit=None),
        epochs=epochs_frame(session, run_id),
        load_image=functools.partial(load_display_image, info.data_root),
        load_cams=lambda ids: maps_for(session, run_id, ids),
        audit=audit[0] if audit else None,
        leakage=audit[1] if audit else None,
        trust=trust.scores,
        trust_per_class=trust.per_class,
        sanity=trust.sanity,
        method_ranking=None if trust.scores is None else method_ranking(session, run_id, names, splits, trust.scores),
    )
