"""Computations on what the store returns: per-class metrics, confusions, faithfulness summaries, the
findings of a data audit per image, and the stored form of a logit vector.

Numpy and pandas only (no SQL, no torch, no scikit-learn), so that ``db``, the jobs, the pages and the
report export can all use them.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from core.cammaps import BASELINE_RANDOM, DEFAULT_METHOD, TARGET_PRED

PER_CLASS_COLUMNS = ["class", "precision", "recall", "f1", "support", "predicted", "class_idx"]


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, 0 where den is 0 (scikit-learn's ``zero_division=0``)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


# --------------------------------------------------------------------------- classification

def per_class_metrics(labels: np.ndarray, preds: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, zero where undefined, worst F1 first.

    The same values as scikit-learn's ``precision_recall_fscore_support(..., zero_division=0)``:
    F1 = 2 TP / (support + predicted).
    """
    k = len(names)
    if k == 0:
        return _empty(PER_CLASS_COLUMNS)
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels and preds must be vectors of one length, got shapes {labels.shape}, {preds.shape}")
    for what, v in (("labels", labels), ("preds", preds)):
        if v.size and (v.min() < 0 or v.max() >= k):
            raise ValueError(f"{what} must be class indices in 0..{k - 1}, got values {v.min()}..{v.max()}")
    support = np.bincount(labels, minlength=k)
    predicted = np.bincount(preds, minlength=k)
    tp = np.bincount(labels[labels == preds], minlength=k)
    df = pd.DataFrame(
        {
            "class": list(names),
            "precision": _ratio(tp, predicted),
            "recall": _ratio(tp, support),
            "f1": _ratio(2.0 * tp, support + predicted),
            "support": support,
            "predicted": predicted,
            "class_idx": np.arange(k),
        }
    )
    return df.sort_values(["f1", "support", "class"], ascending=[True, False, True], kind="stable").reset_index(
        drop=True
    )


def confused_pairs(cm: np.ndarray, names: Sequence[str], limit: Optional[int] = 20) -> pd.DataFrame:
    """Off-diagonal cells by count: true, predicted, count, share of the true class, and the reverse count."""
    cols = ["true", "predicted", "count", "share_of_true", "reverse_count", "true_idx", "pred_idx"]
    off = cm.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    if t.size == 0:
        return _empty(cols)
    counts = off[t, p]
    support = cm.sum(axis=1)
    order = np.lexsort((p, t, -counts))
    if limit is not None:
        order = order[:limit]
    t, p, counts = t[order], p[order], counts[order]
    return pd.DataFrame(
        {
            "true": [names[i] for i in t],
            "predicted": [names[j] for j in p],
            "count": counts.astype(int),
            "share_of_true": counts / np.maximum(support[t], 1),
            "reverse_count": cm[p, t].astype(int),
            "true_idx": t.astype(int),
            "pred_idx": p.astype(int),
        }
    )


# --------------------------------------------------------------------------- data audit

FLAG_COLUMNS = ["image_id", "split", "relpath", "label", "flags", "note"]
FLAG_KINDS = ("duplicate", "leak", "conflict", "suspect", "neighbours")


def flags_from_report(report: Optional[dict[str, Any]]) -> pd.DataFrame:
    """One row per image the audit involves: image_id, split, relpath, label, ``flags`` (the findings,
    comma-separated, from ``FLAG_KINDS``) and ``note``, a short reason for a tile caption.

    ``report`` is what :func:`audit_report` returns; images without a store id are left out.
    """
    if not report:
        return _empty(FLAG_COLUMNS)
    rows: dict[int, dict[str, Any]] = {}

    def entry(ref: dict[str, Any]) -> Optional[dict[str, Any]]:
        if ref.get("image_id") is None:
            return None
        return rows.setdefault(int(ref["image_id"]), {
            "image_id": int(ref["image_id"]), "split": ref["split"], "relpath": ref["relpath"],
            "label": int(ref["label"]), "flags": set(), "dup": None, "leak": None, "suspect": None})

    conflicting = {int(c["group"]) for c in report.get("conflicts", [])}
    for g in report.get("groups", []):
        for m in g["members"]:
            e = entry(m)
            if e is None:
                continue
            others = [o["relpath"] for o in g["members"] if o is not m]
            e["flags"].add("duplicate")
            e["dup"] = others[0] + (f" (+{len(others) - 1} more)" if len(others) > 1 else "")
            if int(g["id"]) in conflicting:
                e["flags"].add("conflict")
    for lk in report.get("leakage", []):
        e = entry(lk["image"])
        if e is not None:
            e["flags"].add("leak")
            e["leak"] = lk["duplicate_of"]
    for sp in report.get("suspects", []):
        e = entry(sp)
        if e is not None:
            e["flags"].add("suspect")
            e["suspect"] = sp
    for ns in report.get("neighbour_suspects", []):  # most of its nearest neighbours carry another label
        e = entry(ns)
        if e is not None:
            e["flags"].add("neighbours")
            e["neighbours"] = ns
    if not rows:
        return _empty(FLAG_COLUMNS)
    out = []
    for e in rows.values():
        parts = []
        if e["leak"] is not None:
            parts.append(f"leaked: duplicate of {e['leak']['relpath']}")
        elif e["dup"] is not None:
            parts.append(f"duplicate of {e['dup']}")
        if "conflict" in e["flags"]:
            parts.append("labelled differently")
        if e["suspect"] is not None:
            parts.append("suspect label")
        if e.get("neighbours") is not None:
            nb, names = e["neighbours"], report.get("class_names") or []
            major = names[nb["majority_label"]] if nb["majority_label"] < len(names) else f"class {nb['majority_label']}"
            parts.append(f"{nb['majority_count']} of {nb['k']} nearest images labelled {major}")
        out.append({**{k: e[k] for k in ("image_id", "split", "relpath", "label")},
                    "flags": ", ".join(k for k in FLAG_KINDS if k in e["flags"]),
                    "note": "⚠ " + "; ".join(parts)})
    df = pd.DataFrame(out, columns=FLAG_COLUMNS).sort_values("image_id", kind="stable").reset_index(drop=True)
    df["image_id"] = df["image_id"].astype(np.int64)
    df["label"] = df["label"].astype(np.int64)
    return df


# --------------------------------------------------------------------------- faithfulness

# The baseline a CAM method must beat: a seeded random map (``core.trust``'s).
RANDOM_BASELINE = BASELINE_RANDOM


def trust_summary(frame: pd.DataFrame, target: str = TARGET_PRED, method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """Aggregate scores of one target (``trust_frame`` rows): per method the mean AUCs and count, and how
    often ``method`` beats each other method on the same image (deletion: lower AUC; insertion: higher AUC),
    under ``gradcam_beats``."""
    f = frame[frame["target"] == target]
    methods = {
        m: dict(n=int(len(g)), deletion_auc=float(g["deletion_auc"].mean()),
                insertion_auc=float(g["insertion_auc"].mean()))
        for m, g in f.groupby("method", sort=True)
    }
    wide = f.pivot_table(index="image_id", columns="method", values=["deletion_auc", "insertion_auc"])
    beats: dict[str, dict[str, float]] = {}
    if method in methods:
        for base in (m for m in methods if m != method):
            d, i = wide["deletion_auc"], wide["insertion_auc"]
            beats[base] = dict(deletion=float((d[method] < d[base]).mean()),
                               insertion=float((i[method] > i[base]).mean()))
    return dict(target=target, n_images=int(f["image_id"].nunique()), methods=methods, gradcam_beats=beats)


def trust_per_class(frame: pd.DataFrame, names: Sequence[str], target: str = TARGET_PRED,
                    method: str = DEFAULT_METHOD) -> pd.DataFrame:
    """Per true class: images, mean deletion / insertion AUC per method (columns ``del_<m>``, ``ins_<m>``)
    and the share of images where ``method``'s deletion AUC is below the random map's (``beats_random``)."""
    f = frame[frame["target"] == target]
    if f.empty:
        return _empty(["class", "images", "beats_random"])
    means = f.pivot_table(index="label", columns="method", values=["deletion_auc", "insertion_auc"], aggfunc="mean")
    out = pd.DataFrame(index=means.index)
    out.insert(0, "class", [names[int(i)] if 0 <= int(i) < len(names) else str(i) for i in means.index])
    out["images"] = f.groupby("label")["image_id"].nunique()
    for kind, short in (("deletion_auc", "del"), ("insertion_auc", "ins")):
        for m in means[kind].columns:
            out[f"{short}_{m}"] = means[kind][m]
    wide = f.pivot_table(index=["label", "image_id"], columns="method", values="deletion_auc")
    if {method, RANDOM_BASELINE} <= set(wide.columns):
        out["beats_random"] = (wide[method] < wide[RANDOM_BASELINE]).groupby(level="label").mean()
    else:
        out["beats_random"] = np.nan
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- stored logits

# Logits are stored as little-endian float16, one value per class.
_LOGIT_DTYPE = np.dtype("<f2")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def encode_logits(logits: np.ndarray) -> bytes:
    """One image's logit vector (C,) -> float16 bytes (2 * C); values beyond float16's range are clipped."""
    v = np.asarray(logits, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"logits must be a non-empty vector (C,), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("logits must be finite, got NaN or inf values")
    return np.clip(v, -_FLOAT16_MAX, _FLOAT16_MAX).astype(_LOGIT_DTYPE).tobytes()


def decode_logits(data: bytes, n_classes: int) -> np.ndarray:
    """Bytes from ``encode_logits`` -> float32 vector (n_classes,)."""
    expected = n_classes * _LOGIT_DTYPE.itemsize
    if len(data) != expected:
        raise ValueError(f"logits of {n_classes} classes must be {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=_LOGIT_DTYPE).astype(np.float32)


def top5_to_probs(top_idx: list[list[int]], top_prob: list[list[float]], n_classes: int) -> np.ndarray:
    """Full (N, C) probabilities from stored top-k: the remaining mass spread evenly over the other classes.

    This keeps the self-confidence ranking of ``core.audit`` exact whenever the given label is in the top k
    and makes it a bound otherwise.
    """
    probs = np.zeros((len(top_idx), n_classes))
    for r, (idx, p) in enumerate(zip(top_idx, top_prob)):
        k = len(idx)
        rest = max(0.0, 1.0 - float(sum(p)))
        if n_classes > k:
            probs[r, :] = rest / (n_classes - k)
        probs[r, idx] = p
        probs[r] /= probs[r].sum()
    return probs
