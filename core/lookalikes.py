"""What an image looks like to the model: its nearest neighbours as a table, and the neighbour-label audit
with its evidence, over a run's stored vectors.

Numpy and pandas only, shared by ``jobs.similar``, the data audit (``jobs.auditing``) and the dashboard,
which search stored vectors without the model. ``images`` is a frame with one row per vector, in the
order of the ``NeighbourIndex`` rows, with at least image_id, split, relpath and label (pred and
confidence where known: ``db.queries.embed.stored_vectors`` gives it).
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from core.neighbours import NeighbourIndex, neighbour_label_suspects

NEIGHBOUR_COLUMNS = ["rank", "image_id", "split", "relpath", "label", "pred", "confidence", "similarity"]
_NEEDED = ("image_id", "split", "relpath", "label")


def _check(images: pd.DataFrame, index: NeighbourIndex) -> None:
    missing = [c for c in _NEEDED if c not in images.columns]
    if missing:
        raise ValueError(f"images lack column(s) {', '.join(missing)}")
    if len(images) != len(index):
        raise ValueError(f"images has {len(images)} rows for an index of {len(index)} vectors")


def candidates(images: pd.DataFrame, splits: Optional[Sequence[str]]) -> Optional[np.ndarray]:
    """The rows neighbours may come from: a mask of the rows in ``splits``; ``None`` (every row) without."""
    if splits is None:
        return None
    return images["split"].isin(list(splits)).to_numpy()


def row_of(images: pd.DataFrame, image_id: int) -> int:
    """The row of ``image_id`` in ``images``; a ValueError naming it when it has no vector."""
    hits = np.flatnonzero(images["image_id"].to_numpy() == int(image_id))
    if not len(hits):
        raise ValueError(f"image {image_id} has no stored feature vector")
    return int(hits[0])


def neighbours_table(images: pd.DataFrame, index: NeighbourIndex, image_id: int, k: int = 10,
                     splits: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The ``k`` nearest images of ``image_id`` by cosine similarity (itself left out, an exact copy kept),
    drawn from ``splits`` (default every split), nearest first: ``NEIGHBOUR_COLUMNS``; fewer rows when
    fewer candidates exist."""
    _check(images, index)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    row = row_of(images, image_id)
    rows, sims = index.neighbours_of([row], int(k), among=candidates(images, splits))
    out = images.iloc[rows[0]].reset_index(drop=True)
    out = out.reindex(columns=[c for c in NEIGHBOUR_COLUMNS if c not in ("rank", "similarity")])
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out["similarity"] = sims[0].astype(np.float64)
    return out


def neighbour_suspect_records(images: pd.DataFrame, index: NeighbourIndex, *, k: int = 10,
                              min_share: float = 0.7) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The neighbour-label audit: every image whose ``k`` nearest images mostly (``min_share``) carry one
    other label (``core.neighbours.neighbour_label_suspects``), most convincing first, each with its
    evidence; and the audit's settings and size.

    Neighbours come from every image with a vector, whatever its split: a label is a label, and an exact
    copy in another split is then each other's nearest neighbour, at similarity 1, in the evidence.

    A record: image_id, split, relpath, label, majority_label, majority_count, k, share, mean_similarity
    (of the neighbours with the majority label), label_counts ({label: count} as strings to ints, most
    common first) and neighbours (image_id, split, relpath, label, similarity each, nearest first).
    """
    _check(images, index)
    t0 = time.perf_counter()
    found = neighbour_label_suspects(index, images["label"].to_numpy(np.int64), k=k, min_share=min_share)
    records = []
    if len(found):
        rows, sims = index.neighbours_of(found["index"].to_numpy(np.int64), k)
        for r, nb, sim in zip(found.itertuples(), rows, sims):
            me = images.iloc[int(r.index)]
            records.append({
                "image_id": int(me["image_id"]), "split": str(me["split"]), "relpath": str(me["relpath"]),
                "label": int(me["label"]), "majority_label": int(r.majority_label),
                "majority_count": int(r.majority_count), "k": int(r.k), "share": round(float(r.share), 4),
                "mean_similarity": round(float(r.mean_similarity), 4),
                "label_counts": {str(c): int(n) for c, n in r.label_counts.items()},
                "neighbours": [
                    {"image_id": int(images["image_id"].iat[j]), "split": str(images["split"].iat[j]),
                     "relpath": str(images["relpath"].iat[j]), "label": int(images["label"].iat[j]),
                     "similarity": round(float(s), 4)}
                    for j, s in zip(nb, sim)
                ],
            })
    stats = {"n_vectors": int(len(images)), "k": int(k), "min_share": float(min_share),
             "seconds": round(time.perf_counter() - t0, 3)}
    return records, stats
