"""Logits and a calibration for the generated stores of ``db.builder``, as a schema-2 evaluation and
``jobs.calibrate`` would store them: for the tests and the benchmarks of calibration and its pages."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from core.calibration import calibration_report, split_metrics
from core.metrics import encode_logits, top5_to_probs
from core.splits import TEST, VALID
from db import queries
from db.store import make_engine, make_sessionmaker, replace_calibration, set_logits


def add_logits(url: str, run_id: int, *, splits: Optional[Sequence[str]] = None, floor: float = 1e-6) -> int:
    """Store a logit vector with each prediction of the run (of ``splits``, default all) as a schema-2
    evaluation does: ``log p`` of the full distribution the stored top-5 implies (``top5_to_probs``: the
    rest of the mass spread evenly, each probability at least ``floor``), so the logits agree with the
    stored prediction, confidence and top-5 (where the generated top-5 gave another class more than the
    prediction's confidence, the prediction's logit is lifted just above it). Returns how many predictions
    got logits."""
    engine = make_engine(url, create=False)
    Session = make_sessionmaker(engine)
    with Session() as s:
        n_classes = len(queries.class_names(s, run_id))
        rows = queries.scored_images(s, run_id)
    rows = rows[rows["pred"].notna()]
    if splits is not None:
        rows = rows[rows["split"].isin(list(splits))]
    logits = {}
    if len(rows):
        probs = top5_to_probs(rows["top5_idx"].tolist(), rows["top5_prob"].tolist(), n_classes)
        z = np.log(np.maximum(probs, floor))
        # The generated top-5 can give another class more than the prediction's confidence (a low one):
        # lift the predicted class just above it there, so the logits' argmax is the stored prediction.
        pred = rows["pred"].to_numpy(dtype=np.int64)
        at = np.arange(len(z))
        others = z.copy()
        others[at, pred] = -np.inf
        z[at, pred] = np.maximum(z[at, pred], others.max(axis=1) + 0.05)
        logits = {int(i): encode_logits(v) for i, v in zip(rows["image_id"], z)}
    with Session.begin() as s:
        set_logits(s, logits)
    engine.dispose()
    return len(logits)


def add_calibration(url: str, run_id: int, *, temperature: Optional[float] = None, bins: int = 15) -> float:
    """Store what ``jobs.calibrate`` would for the run's stored logits (``add_logits`` first); with
    ``temperature`` that temperature instead of the fitted one (a store whose T is far from 1). Returns T."""
    engine = make_engine(url, create=False)
    Session = make_sessionmaker(engine)
    with Session() as s:
        stored = queries.logits_for(s, run_id, len(queries.class_names(s, run_id)), [VALID, TEST])
    split = stored.frame["split"].to_numpy()
    z, y = stored.logits, stored.frame["label"].to_numpy()
    test = (z[split == TEST], y[split == TEST]) if (split == TEST).any() else (None, None)
    report = calibration_report(z[split == VALID], y[split == VALID], *test, bins=bins)
    if temperature is not None:
        report = {"temperature": float(temperature),
                  **{s: split_metrics(z[split == s], y[split == s], temperature=temperature, bins=bins)
                     for s in (VALID, TEST) if (split == s).any()}}
    with Session.begin() as s:
        replace_calibration(s, run_id, temperature=report["temperature"], bins=bins, report=report)
    engine.dispose()
    return report["temperature"]
