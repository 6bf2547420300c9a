"""Audit a run's data: duplicates, leakage between splits, conflicting and suspect labels.

    python -m jobs.audit --run RUN [--db URL] [--json]

The findings are written to the store (the dashboard's "Data issues" page and the report export read
them) and printed. Suspect labels use the run's valid/test predictions: out of sample, since the model
never trained on those images. The store keeps each image's top-5 probabilities; the rest of the mass is
spread evenly over the other classes, which keeps the self-confidence ranking exact whenever the given
label is in the top 5 and makes it a bound otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select

from core.audit import ImageRef, accuracy_without_leakage, audit
from db import store
from db.models import AuditRow, ImageRow, Prediction
from jobs.common import add_db_arg, add_run_arg, run_cli, setup_logging

log = logging.getLogger("jobs.audit")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.audit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_arg(p)
    add_db_arg(p)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--workers", type=int, default=1, help="threads that decode and hash images")
    p.add_argument("--min-score", type=float, default=0.90, help="similarity from which two images are near "
                   "duplicates (0-1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def top5_to_probs(top_idx: list[list[int]], top_prob: list[list[float]], n_classes: int) -> np.ndarray:
    """Full (N, C) probabilities from stored top-k: the remaining mass spread over the other classes."""
    probs = np.zeros((len(top_idx), n_classes))
    for r, (idx, p) in enumerate(zip(top_idx, top_prob)):
        k = len(idx)
        rest = max(0.0, 1.0 - float(sum(p)))
        if n_classes > k:
            probs[r, :] = rest / (n_classes - k)
        probs[r, idx] = p
        probs[r] /= probs[r].sum()
    return probs


def audit_run(session, run_ref, *, workers: int = 1, min_score: float = 0.90) -> tuple[int, dict, list]:
    """Audit one run and store the result in the caller's transaction; return (run_id, report, accuracy)."""
    t0 = time.perf_counter()
    run = store.resolve_run(session, run_ref)
    n_classes = len(store.class_names(session, run.id))
    rows = session.execute(
        select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label, Prediction.pred,
               Prediction.top5_idx, Prediction.top5_prob)
        .outerjoin(Prediction, Prediction.image_id == ImageRow.id)
        .where(ImageRow.run_id == run.id, ImageRow.skipped.is_(False))
        .order_by(ImageRow.id)
    ).all()
    if not rows:
        raise ValueError(f"run {run.id} ({run.name}) has no images to audit")
    refs = [ImageRef(r.split, r.relpath, r.label, r.id) for r in rows]
    probs = np.full((len(rows), n_classes), np.nan)
    have = [i for i, r in enumerate(rows) if r.pred is not None]
    if have:
        probs[have] = top5_to_probs([rows[i].top5_idx for i in have], [rows[i].top5_prob for i in have], n_classes)
    splits_with_preds = sorted({rows[i].split for i in have} - {"train"})
    report = audit(Path(run.data_root), refs, pred_probs=probs if have else None,
                   prob_splits=splits_with_preds or ("valid", "test"), workers=workers, min_score=min_score)
    frames = report.to_frames()
    preds = pd.DataFrame([(r.split, r.relpath, r.label, r.pred) for r in rows if r.pred is not None],
                         columns=["split", "relpath", "label", "pred"])
    acc = accuracy_without_leakage(preds, frames["leakage"]) if len(preds) else pd.DataFrame()
    acc_rows = json.loads(acc.to_json(orient="records")) if len(acc) else []
    data = report.to_dict()
    data["class_names"] = store.class_names(session, run.id)
    existing = session.get(AuditRow, run.id)
    if existing is not None:
        session.delete(existing)
        session.flush()
    session.add(AuditRow(run_id=run.id, seconds=time.perf_counter() - t0, report=data, leakage_accuracy=acc_rows))
    return run.id, data, acc_rows


def format_summary(run_id: int, report: dict, acc: list[dict]) -> str:
    st = report["stats"]
    kinds = pd.Series([g["kind"] for g in report["groups"]], dtype=object).value_counts().to_dict()
    lines = [
        f"run {run_id}: {st['n_images']} images audited ({st['n_readable']} readable) in "
        f"{st['hash_seconds'] + st['search_seconds']:.1f} s",
        f"duplicate groups: {len(report['groups'])} ({', '.join(f'{n} {k}' for k, n in kinds.items()) or 'none'})",
        f"leaked images (valid/test also in an earlier split): {len(report['leakage'])}",
        f"label conflicts: {len(report['conflicts'])}",
        f"suspect labels: {len(report['suspects'])}",
    ]
    names = report.get("class_names", [])
    for g in report["groups"][:20]:
        members = ", ".join(f"{m['relpath']} [{names[m['label']] if names else m['label']}]"
                            for m in g["members"])
        lines.append(f"  group {g['id']} {g['kind']} {g['score']:.3f}: {members}")
    if acc:
        lines.append("accuracy as measured -> with leaked images removed:")
        for a in acc:
            clean = "-" if a["accuracy_clean"] is None else f"{100 * a['accuracy_clean']:.1f}%"
            lines.append(f"  {a['split']:<5} {100 * a['accuracy']:.1f}% (n={a['n']}) -> {clean} "
                         f"(n={a['n_clean']}, {a['n_leaked']} leaked)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun the audit (no model, no collectives) runs once, on rank 0
    setup_logging(args.verbose)
    engine = store.make_engine(args.db, create=False)
    with store.make_sessionmaker(engine).begin() as s:
        run_id, report, acc = audit_run(s, args.run, workers=args.workers, min_score=args.min_score)
    if args.json:
        json.dump({"run_id": run_id, **report, "leakage_accuracy": acc}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_summary(run_id, report, acc))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
