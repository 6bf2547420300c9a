"""Data problems the model is not to blame for: duplicates, leakage between splits, suspect labels.

The input is a list of :class:`ImageRef` (split, path relative to a data root, class index). Nothing here
touches the model or the store; embeddings and predicted probabilities, where used, are arrays supplied by
the caller. :func:`audit` runs every check and returns an :class:`AuditReport`; the checks live beside it:

- :mod:`core.duplicates`: hashing, the all-pairs search for exact and near duplicates (with the
  measurements behind its thresholds) and their grouping;
- :mod:`core.leakage`: valid/test images with a duplicate in an earlier split, accuracy without them, and
  duplicate groups whose labels disagree;
- :mod:`core.suspects`: labels that out-of-sample predicted probabilities doubt (confident learning).

Their public names are importable from here as well.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from core.duplicates import (
    CANDIDATE_MIN_CORR,
    COARSE,
    HASH_MAX_BITS,
    MAX_SHIFT,
    MIN_DETAIL,
    MIN_SCORE,
    THUMB,
    Group,
    ImageHashes,
    find_pairs,
    group_pairs,
    hash_images,
    hash_one,
    shift_correlation,
)
from core.leakage import SPLIT_ORDER, Conflict, Leak, accuracy_without_leakage, find_conflicts, find_leakage
from core.suspects import SUSPECT_COLUMNS, SUSPECT_MAX_SELF_CONF, SUSPECT_MIN_EXAMPLES, find_suspect_labels

__all__ = [
    "ImageRef", "AuditReport", "audit",
    "CANDIDATE_MIN_CORR", "COARSE", "HASH_MAX_BITS", "MAX_SHIFT", "MIN_DETAIL", "MIN_SCORE", "THUMB", "Group",
    "ImageHashes", "find_pairs", "group_pairs", "hash_images", "hash_one", "shift_correlation",
    "SPLIT_ORDER", "Conflict", "Leak", "accuracy_without_leakage", "find_conflicts", "find_leakage",
    "SUSPECT_COLUMNS", "SUSPECT_MAX_SELF_CONF", "SUSPECT_MIN_EXAMPLES", "find_suspect_labels",
]


@dataclass(frozen=True)
class ImageRef:
    """One image of the data set: its split, its path under the data root ('/'-separated), its class."""

    split: str
    relpath: str
    label: int
    image_id: Optional[int] = None  # the caller's id (the store's ``images.id``), carried through


# ---------------------------------------------------------------------------------------------- report
@dataclass
class AuditReport:
    images: list[ImageRef]
    groups: list[Group]
    pairs: pd.DataFrame
    leakage: list[Leak]
    conflicts: list[Conflict]
    suspects: pd.DataFrame  # find_suspect_labels' columns; ``index`` is into ``images``
    skipped: list[tuple[int, str]]  # (index, reason) of unreadable images
    stats: dict[str, Any] = field(default_factory=dict)

    def _ref(self, i: int) -> dict[str, Any]:
        r = self.images[i]
        d = {"index": i, "split": r.split, "relpath": r.relpath, "label": r.label}
        if r.image_id is not None:
            d["image_id"] = r.image_id
        return d

    def to_dict(self) -> dict[str, Any]:
        return {
            "stats": self.stats,
            "groups": [
                {"id": g.id, "kind": g.kind, "score": round(g.score, 4), "members": [self._ref(m) for m in g.members]}
                for g in self.groups
            ],
            "leakage": [
                {"image": self._ref(lk.index), "duplicate_of": self._ref(lk.other), "group": lk.group,
                 "kind": lk.kind, "score": round(lk.score, 4)}
                for lk in self.leakage
            ],
            "conflicts": [
                {"group": c.group, "labels": {str(k): v for k, v in c.label_counts.items()}} for c in self.conflicts
            ],
            "suspects": [
                {**self._ref(int(r["index"])), "given_prob": round(float(r["given_prob"]), 4),
                 "pred_label": int(r["pred_label"]), "pred_prob": round(float(r["pred_prob"]), 4),
                 "method": r["method"]}
                for r in self.suspects.to_dict("records")
            ],
            "skipped": [{**self._ref(i), "reason": why} for i, why in self.skipped],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_frames(self) -> dict[str, pd.DataFrame]:
        """DataFrames: groups (one row per member), pairs, leakage, conflicts, suspects, skipped."""
        refs = pd.DataFrame([self._ref(i) for i in range(len(self.images))],
                            columns=["index", "split", "relpath", "label", "image_id"])
        refs["image_id"] = [r.image_id for r in self.images]
        groups = pd.DataFrame(
            [{"group": g.id, "kind": g.kind, "score": g.score, "size": len(g.members), "index": m}
             for g in self.groups for m in g.members],
            columns=["group", "kind", "score", "size", "index"],
        ).merge(refs, on="index", how="left")
        other = refs.add_prefix("other_")
        leakage = pd.DataFrame(
            [{"index": lk.index, "other_index": lk.other, "group": lk.group, "kind": lk.kind, "score": lk.score}
             for lk in self.leakage],
            columns=["index", "other_index", "group", "kind", "score"],
        ).merge(refs, on="index", how="left").merge(other, on="other_index", how="left")
        pairs = self.pairs.merge(refs.add_suffix("_i"), left_on="i", right_on="index_i", how="left").merge(
            refs.add_suffix("_j"), left_on="j", right_on="index_j", how="left"
        ).drop(columns=["index_i", "index_j"])
        conflicts = groups[groups["group"].isin([c.group for c in self.conflicts])].reset_index(drop=True)
        suspects = self.suspects.merge(refs.drop(columns="label"), on="index", how="left")
        skipped = pd.DataFrame(self.skipped, columns=["index", "reason"]).merge(refs, on="index", how="left")
        return {"groups": groups, "pairs": pairs, "leakage": leakage, "conflicts": conflicts,
                "suspects": suspects, "skipped": skipped}


def audit(
    data_root: str | Path,
    images: Sequence[ImageRef],
    *,
    pred_probs: Optional[np.ndarray] = None,
    prob_splits: Sequence[str] = ("valid", "test"),
    embeddings: Optional[np.ndarray] = None,
    min_score: float = MIN_SCORE,
    min_detail: float = MIN_DETAIL,
    min_embedding_cos: float = 0.8,
    workers: int = 1,
    hashes: Optional[ImageHashes] = None,
    calibrate: bool = False,
) -> AuditReport:
    """Duplicates, leakage, label conflicts and (given ``pred_probs``) suspect labels of ``images``.

    ``pred_probs``: (N, C) aligned with ``images``; only rows of ``prob_splits`` are used, because only
    those are out of sample (see the module docstring); other rows may hold anything (NaN included).
    ``embeddings``: optional (N, D) features that can veto near pairs (cosine below ``min_embedding_cos``).
    ``hashes``: a previous :func:`hash_images` result for the same list, to skip re-hashing.
    ``calibrate``: measure the near-duplicate score threshold on this data set (:mod:`core.dupcalibrate`),
    ``min_score`` being the lowest it may be; what it chose is in ``stats["thresholds"]``.
    """
    images = list(images)
    if pred_probs is not None:
        pred_probs = np.asarray(pred_probs, dtype=np.float64)
        if pred_probs.ndim != 2 or len(pred_probs) != len(images):
            raise ValueError(f"pred_probs must have shape (N={len(images)}, C), got {pred_probs.shape}")
    if hashes is None:
        hashes = hash_images(data_root, images, workers=workers)
    elif len(hashes.ok) != len(images):
        raise ValueError(f"hashes are for {len(hashes.ok)} images, the list has {len(images)}")
    t0 = time.perf_counter()
    thresholds = None
    if calibrate:
        from core.dupcalibrate import BAND
        from core.dupcalibrate import calibrate as measure

        # Every candidate from BAND under the threshold, whatever its detail: the score continuum is measured
        # on all of them; the detail test applies to the pairs kept.
        wide = find_pairs(hashes, min_score=min_score - BAND, min_detail=-1.0, embeddings=embeddings,
                          min_embedding_cos=min_embedding_cos)
        near = wide["kind"] == "near"
        thresholds = measure(data_root, images, hashes, wide.loc[near, "score"].to_numpy(),
                             floor=(min_score, min_detail))
        keep = ~near | ((wide["score"] >= thresholds.min_score) & (wide["detail"] >= min_detail))
        pairs = wide[keep].reset_index(drop=True)
        pairs.attrs.update(wide.attrs)
    else:
        pairs = find_pairs(
            hashes, min_score=min_score, min_detail=min_detail, embeddings=embeddings,
            min_embedding_cos=min_embedding_cos,
        )
    t_search = time.perf_counter() - t0
    groups = group_pairs(pairs, len(images))
    suspects = pd.DataFrame(columns=SUSPECT_COLUMNS)
    if pred_probs is not None:
        rows = np.flatnonzero([r.split in prob_splits for r in images])
        labels = np.array([images[i].label for i in rows], dtype=int)
        suspects = find_suspect_labels(labels, pred_probs[rows])
        suspects["index"] = rows[suspects["index"].to_numpy(int)]
    stats = {
        "n_images": len(images),
        "n_readable": int(hashes.ok.sum()),
        "hash_seconds": hashes.seconds,
        "images_per_second": hashes.images_per_second,
        "search_seconds": t_search,
        "n_candidates": pairs.attrs.get("n_candidates", 0),
        "candidate_seconds": pairs.attrs.get("candidate_seconds", 0.0),
        "verify_seconds": pairs.attrs.get("verify_seconds", 0.0),
        "n_pairs": len(pairs),
        "n_groups": len(groups),
        "thresholds": thresholds.to_dict() if thresholds is not None else
        {"min_score": min_score, "min_detail": min_detail, "calibrated": False},
    }
    return AuditReport(
        images=images,
        groups=groups,
        pairs=pairs,
        leakage=find_leakage(images, groups, pairs),
        conflicts=find_conflicts(images, groups),
        suspects=suspects.reset_index(drop=True),
        skipped=sorted(hashes.errors.items()),
        stats=stats,
    )
