"""What in a run needs a person's look, and why: the review queue, and how often each reason was right.

An image joins the queue for any of ``REASONS``: the data audit found it leaked (a valid/test copy of an
earlier split's image), in a duplicate group whose labels disagree, in any duplicate group, or doubted its
label (confident learning); the model got it wrong with high confidence; or its nearest neighbours in
feature space mostly carry another label ("looks like", when the run has that signal). The queue lists
each image once with every reason, most serious first, and a class to suggest for a relabel.

Pure pandas: the review-queue page and its tests share it, with no store and no Streamlit.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from core.intervals import wilson_interval
from core.reviews import DROP, RELABEL

LEAK, CONFLICT, SUSPECT, LOOKS_LIKE, CONFIDENT_ERROR, DUPLICATE = (
    "leak", "conflict", "suspect", "looks_like", "confident_error", "duplicate")
# most serious first: the order of the queue
REASONS = (LEAK, CONFLICT, SUSPECT, LOOKS_LIKE, CONFIDENT_ERROR, DUPLICATE)
REASON_LABELS = {
    LEAK: "leaked image",
    CONFLICT: "duplicates labelled differently",
    SUSPECT: "suspect label",
    LOOKS_LIKE: "looks like another class",
    CONFIDENT_ERROR: "confident error",
    DUPLICATE: "duplicate group",
}
CONFIDENT = 0.9
QUEUE_COLUMNS = ["image_id", "split", "relpath", "label", "pred", "confidence", "reasons", "why", "suggest"]
LOOKS_LIKE_COLUMNS = ["image_id", "split", "relpath", "label", "majority_label", "note"]


def _name(names: Sequence[str], i: Any) -> str:
    i = int(i)
    return names[i] if 0 <= i < len(names) else f"class {i}"


def _pct(p: float) -> str:
    return f"{p:.1%}" if p < 0.01 else f"{p:.0%}"


def build_queue(names: Sequence[str], *, predictions: pd.DataFrame, report: Optional[dict[str, Any]] = None,
                looks_like: Optional[pd.DataFrame] = None, confident: float = CONFIDENT) -> pd.DataFrame:
    """One row per image that needs a look: ``QUEUE_COLUMNS``.

    ``predictions``: image_id, split, relpath, label, pred, confidence (``db.queries.predictions_frame``);
    ``report``: the run's data audit (``db.queries.audit_report``) or ``None``; ``looks_like``: rows of
    ``LOOKS_LIKE_COLUMNS`` (the neighbour-label signal) or ``None``; ``confident``: a wrong prediction at
    this confidence or more is a "confident error". ``reasons`` is a tuple in ``REASONS`` order, ``why``
    one sentence per reason, ``suggest`` the class index to propose for a relabel (or -1).
    """
    if not 0.0 <= confident <= 1.0:
        raise ValueError(f"confident must lie in [0, 1], got {confident}")
    rows: dict[int, dict[str, Any]] = {}

    def entry(image_id: int, split: str, relpath: str, label: int) -> dict[str, Any]:
        return rows.setdefault(int(image_id), {"image_id": int(image_id), "split": split, "relpath": relpath,
                                               "label": int(label), "why": {}, "suggest": {}})

    report = report or {}
    conflicts = {int(c["group"]): c.get("labels", {}) for c in report.get("conflicts", [])}
    for g in report.get("groups", []):
        members = [m for m in g.get("members", []) if m.get("image_id") is not None]
        for m in members:
            e = entry(m["image_id"], m["split"], m["relpath"], m["label"])
            others = [o["relpath"] for o in g["members"] if o is not m]
            more = f" (+{len(others) - 1} more)" if len(others) > 1 else ""
            e["why"][DUPLICATE] = f"{g['kind']} duplicate of {others[0]}{more}" if others else "duplicate group"
            if int(g["id"]) in conflicts:
                labels = ", ".join(f"{_name(names, k)} x{n}" for k, n in conflicts[int(g["id"])].items())
                e["why"][CONFLICT] = f"its duplicates are labelled differently ({labels})"
                others_labels = [int(o["label"]) for o in g["members"] if int(o["label"]) != int(m["label"])]
                if others_labels:
                    e["suggest"][CONFLICT] = max(set(others_labels), key=others_labels.count)
    for lk in report.get("leakage", []):
        img, src = lk["image"], lk["duplicate_of"]
        if img.get("image_id") is None:
            continue
        e = entry(img["image_id"], img["split"], img["relpath"], img["label"])
        article = "an" if str(lk["kind"])[:1] in "aeiou" else "a"
        e["why"][LEAK] = f"leaked: {article} {lk['kind']} copy of {src['relpath']} ({src['split']})"
    for sp in report.get("suspects", []):
        if sp.get("image_id") is None:
            continue
        e = entry(sp["image_id"], sp["split"], sp["relpath"], sp["label"])
        e["why"][SUSPECT] = (f"suspect label: the model gives {_name(names, sp['pred_label'])} "
                             f"{_pct(sp['pred_prob'])} and the given label {_pct(sp['given_prob'])}")
        e["suggest"][SUSPECT] = int(sp["pred_label"])
    if looks_like is not None:
        for r in looks_like.itertuples(index=False):
            e = entry(r.image_id, r.split, r.relpath, r.label)
            e["why"][LOOKS_LIKE] = f"looks like {_name(names, r.majority_label)}: {r.note}"
            e["suggest"][LOOKS_LIKE] = int(r.majority_label)
    wrong = predictions[(predictions["pred"] != predictions["label"]) & (predictions["confidence"] >= confident)]
    for r in wrong.itertuples(index=False):
        e = entry(r.image_id, r.split, r.relpath, r.label)
        e["why"][CONFIDENT_ERROR] = f"confident error: predicted {_name(names, r.pred)} at {r.confidence:.0%}"
        e["suggest"][CONFIDENT_ERROR] = int(r.pred)
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in QUEUE_COLUMNS})
    pred = predictions.set_index("image_id")[["pred", "confidence"]] if len(predictions) else None
    out = []
    for e in rows.values():
        reasons = tuple(k for k in REASONS if k in e["why"])
        suggest = next((e["suggest"][k] for k in REASONS if k in e["suggest"] and e["suggest"][k] != e["label"]), -1)
        p = pred.loc[e["image_id"]] if pred is not None and e["image_id"] in pred.index else None
        out.append({"image_id": e["image_id"], "split": e["split"], "relpath": e["relpath"], "label": e["label"],
                    "pred": int(p["pred"]) if p is not None else -1,
                    "confidence": float(p["confidence"]) if p is not None else np.nan,
                    "reasons": reasons, "why": "; ".join(e["why"][k] for k in reasons), "suggest": int(suggest)})
    df = pd.DataFrame(out, columns=QUEUE_COLUMNS)
    df["_rank"] = df["reasons"].map(lambda rs: REASONS.index(rs[0]))
    df["_n"] = df["reasons"].map(len)
    df = df.sort_values(["_rank", "_n", "confidence", "image_id"], ascending=[True, False, False, True],
                        na_position="last", kind="stable")
    return df.drop(columns=["_rank", "_n"]).reset_index(drop=True)


def filter_queue(queue: pd.DataFrame, names: Sequence[str], *, sports: Sequence[str] = (),
                 reasons: Sequence[str] = ()) -> pd.DataFrame:
    """The rows whose given label is one of ``sports`` and that have one of ``reasons`` (empty: any)."""
    mask = pd.Series(True, index=queue.index)
    if sports:
        wanted = {i for i, n in enumerate(names) if n in set(sports)}
        mask &= queue["label"].isin(wanted)
    if reasons:
        wanted_r = set(reasons)
        mask &= queue["reasons"].map(lambda rs: bool(wanted_r & set(rs)))
    return queue.loc[mask]


REASON_TABLE_COLUMNS = ["reason", "in_queue", "reviewed", "confirmed", "confirmed_share", "low", "high"]


def reason_table(queue: pd.DataFrame, verdicts: pd.Series) -> pd.DataFrame:
    """Per reason: images in the queue, how many have a verdict, how many of those the reviewers confirmed
    (label wrong, or not a valid image), and that share with its 95 % Wilson interval (NaN before any
    review). ``verdicts``: the verdict that counts, by the queue's index (NaN/None: not reviewed)."""
    out = []
    for reason in REASONS:
        has = queue["reasons"].map(lambda rs: reason in rs) if len(queue) else pd.Series(dtype=bool)
        if not has.any():
            continue
        v = verdicts[has[has].index]
        n = int(v.notna().sum())
        k = int(v.isin([RELABEL, DROP]).sum())
        lo, hi = wilson_interval(k, n) if n else (np.nan, np.nan)
        out.append({"reason": REASON_LABELS[reason], "in_queue": int(has.sum()), "reviewed": n, "confirmed": k,
                    "confirmed_share": k / n if n else np.nan, "low": lo, "high": hi})
    return pd.DataFrame(out, columns=REASON_TABLE_COLUMNS)
