"""A run's data audit as the jobs run it: read the run's images and predictions, audit them with
``core.audit``, store the findings (``python -m jobs.audit``, or ``jobs.train --audit`` when training ends).

Suspect labels use the run's valid/test predictions: out of sample, since the model never trained on those
images. The store keeps each image's top-5 probabilities; ``core.metrics.top5_to_probs`` spreads the rest
of the mass evenly over the other classes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from core.audit import MIN_SCORE, ImageRef, accuracy_without_leakage, audit
from core.dupcalibrate import Thresholds
from core.metrics import top5_to_probs
from core.splits import EVAL_SPLITS, TRAIN
from db import queries, store, storecheck
from jobs.vectors import neighbour_findings


def audit_run(session, run_ref, *, workers: int = 1, min_score: Optional[float] = None) -> tuple[int, dict, list]:
    """Audit one run and store the result in the caller's transaction; return (run_id, report, accuracy).

    ``min_score``: the near-duplicate score threshold; ``None`` measures it on the data set
    (``core.dupcalibrate``), never below the fixed one."""
    t0 = time.perf_counter()
    run = queries.find_run(session, run_ref)
    n_classes = len(run.classes)
    rows = queries.scored_images(session, run.id)
    if rows.empty:
        raise ValueError(f"run {run.id} ({run.name}) has no images to audit")
    refs = [ImageRef(r.split, r.relpath, int(r.label), int(r.image_id)) for r in rows.itertuples()]
    probs = np.full((len(rows), n_classes), np.nan)
    have = np.flatnonzero(rows["pred"].notna().to_numpy())
    if len(have):
        probs[have] = top5_to_probs(rows["top5_idx"].iloc[have].tolist(), rows["top5_prob"].iloc[have].tolist(),
                                    n_classes)
    splits_with_preds = sorted(set(rows["split"].iloc[have]) - {TRAIN})
    report = audit(Path(run.data_root), refs, pred_probs=probs if len(have) else None,
                   prob_splits=splits_with_preds or EVAL_SPLITS, workers=workers,
                   min_score=MIN_SCORE if min_score is None else min_score, calibrate=min_score is None)
    frames = report.to_frames()
    preds = rows.iloc[have][["split", "relpath", "label", "pred"]].astype({"pred": np.int64}).reset_index(drop=True)
    acc = accuracy_without_leakage(preds, frames["leakage"]) if len(preds) else pd.DataFrame()
    acc_rows = json.loads(acc.to_json(orient="records")) if len(acc) else []
    data = report.to_dict()
    data["class_names"] = list(run.classes)
    data.update(neighbour_findings(session, run.id))  # suspects by their neighbours' labels, given vectors
    store.replace_audit(session, run.id, seconds=time.perf_counter() - t0, report=data, leakage_accuracy=acc_rows)
    return run.id, data, acc_rows


def _thresholds_line(t: dict) -> str:
    if t.get("calibrated"):
        return Thresholds.from_dict(t).describe()
    if "min_score" in t:
        return f"near duplicates: score >= {t['min_score']:.3f}, detail >= {t['min_detail']:.2f} (as given)"
    return "near duplicates: thresholds not recorded"


SHOWN_SUSPECTS = 20  # suspect labels printed by the summary; --json and the dashboard have them all


def format_summary(run_id: int, report: dict, acc: list[dict], db: str | None = None) -> str:
    st = report["stats"]
    kinds = pd.Series([g["kind"] for g in report["groups"]], dtype=object).value_counts().to_dict()
    lines = [
        f"run {run_id}: {st['n_images']} images audited ({st['n_readable']} readable) in "
        f"{st['hash_seconds'] + st['search_seconds']:.1f} s",
        f"duplicate groups: {len(report['groups'])} ({', '.join(f'{n} {k}' for k, n in kinds.items()) or 'none'})",
        _thresholds_line(st.get("thresholds") or {}),
        f"leaked images (valid/test also in an earlier split): {len(report['leakage'])}",
        f"label conflicts: {len(report['conflicts'])}",
        f"suspect labels: {len(report['suspects'])}",
        f"suspect labels by their nearest neighbours: {len(report.get('neighbour_suspects', []))}"
        + ("" if report.get("neighbour_audit") else f" (no feature vectors: python -m jobs.embed --run {run_id})"),
    ]
    names = report.get("class_names", [])
    for g in report["groups"][:20]:
        members = ", ".join(f"{m['relpath']} [{names[m['label']] if names else m['label']}]"
                            for m in g["members"])
        lines.append(f"  group {g['id']} {g['kind']} {g['score']:.3f}: {members}")
    suspects = report["suspects"]
    if suspects:
        shown = min(len(suspects), SHOWN_SUSPECTS)
        lines.append(f"suspect labels, the least likely given label first ({shown} of {len(suspects)}; all of them: "
                     f"python -m jobs.audit --run {run_id} --json {storecheck.db_arg(db)}, or the dashboard's "
                     "Data issues page):")
        for sp in suspects[:shown]:
            given, model = (names[sp[k]] if names else sp[k] for k in ("label", "pred_label"))
            lines.append(f"  {sp['split']:<5} {sp['relpath']}: labelled {given} ({sp['given_prob']:.0%}), "
                         f"the model says {model} ({sp['pred_prob']:.0%})")
    if acc:
        lines.append("accuracy as measured -> with leaked images removed:")
        for a in acc:
            clean = "-" if a["accuracy_clean"] is None else f"{100 * a['accuracy_clean']:.1f}%"
            lines.append(f"  {a['split']:<5} {100 * a['accuracy']:.1f}% (n={a['n']}) -> {clean} "
                         f"(n={a['n_clean']}, {a['n_leaked']} leaked)")
    return "\n".join(lines)


