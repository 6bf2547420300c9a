"""One function that assembles a run's tables for a figure set: ``jobs.export`` and the Export page share it."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional, Sequence

from sqlalchemy.orm import Session

from core.intervals import accuracy_table, add_wilson, attach_intervals
from core.metrics import confused_pairs, per_class_metrics
from db.queries.audit import audit_for
from db.queries.calibration import calibration_for
from db.queries.images import confusion_matrix, errors_frame, logits_for, predictions_frame, prediction_splits
from db.queries.maps import maps_for
from db.queries.methods import method_ranking
from db.queries.runs import epochs_frame, evaluation_rows, run_info
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
    y, p = preds["label"].to_numpy(), preds["pred"].to_numpy()
    per_class, _ = attach_intervals(per_class_metrics(y, p, names), y, p)
    pairs = confused_pairs(cm, names, limit=None)
    pairs = add_wilson(pairs.assign(n=cm.sum(axis=1)[pairs["true_idx"].to_numpy(dtype=int)]), "count", "n", "share")
    evals = evaluation_rows(session, run_id)
    top5 = {s: (round(e["top5"] * e["n_images"]), e["n_images"]) for s, e in evals.items()
            if e.get("top5") is not None and e.get("n_images")}
    stored_cal = calibration_for(session, run_id)
    logits = logits_for(session, run_id, len(names), splits) if stored_cal is not None else None
    return RunData(
        run_id=run_id,
        run_name=info.name,
        names=names,
        predictions=preds,
        errors=errors_frame(session, run_id, splits=splits),
        cm=cm,
        per_class=per_class,
        pairs=pairs,
        epochs=epochs_frame(session, run_id),
        load_image=functools.partial(load_display_image, info.data_root),
        load_cams=lambda ids: maps_for(session, run_id, ids),
        audit=audit[0] if audit else None,
        leakage=audit[1] if audit else None,
        trust=trust.scores,
        trust_per_class=trust.per_class,
        sanity=trust.sanity,
        accuracy=accuracy_table(preds, len(names), top5),
        calibration=None if stored_cal is None else dict(
            temperature=stored_cal.temperature, bins=stored_cal.bins, report=stored_cal.report,
            created_at=stored_cal.created_at, stale=stored_cal.stale),
        logits=None if logits is None or logits.frame.empty else (logits.frame, logits.logits),
        method_ranking=None if trust.scores is None else method_ranking(session, run_id, names, splits, trust.scores),
    )
