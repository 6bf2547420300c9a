"""Leakage between splits and label conflicts, read off the duplicate groups.

An image of ``valid`` or ``test`` leaks when its group holds an image of an earlier split (``train``
before ``valid`` before ``test``). :func:`accuracy_without_leakage` recomputes accuracy per split with the
leaked images removed. A group whose members carry different labels is a label *conflict*.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pandas as pd

from core.duplicates import Group
from core.splits import SPLITS

if TYPE_CHECKING:
    from core.audit import ImageRef

SPLIT_ORDER = SPLITS  # train before valid before test


# ---------------------------------------------------------------------------------------------- leakage
@dataclass
class Leak:
    """An image of a later split (``index``) and its duplicate in an earlier split (``other``)."""

    index: int
    other: int
    group: int
    kind: str  # 'exact' or 'near': of the pair when the two are a pair, else of the group
    score: float


def _split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def find_leakage(images: Sequence[ImageRef], groups: Iterable[Group], pairs: pd.DataFrame) -> list[Leak]:
    """Every valid/test image whose group holds an image of an earlier split, with its best match there."""
    edge = {
        (i, j): (k, s) for i, j, k, s in zip(pairs["i"].tolist(), pairs["j"].tolist(), pairs["kind"], pairs["score"])
    }
    leaks = []
    for g in groups:
        for m in g.members:
            earlier = [o for o in g.members if _split_rank(images[o].split) < _split_rank(images[m].split)]
            if not earlier:
                continue
            direct = [(edge[tuple(sorted((m, o)))], o) for o in earlier if tuple(sorted((m, o))) in edge]
            if direct:
                (kind, score), other = max(direct, key=lambda d: (d[0][1], -_split_rank(images[d[1]].split)))
            else:
                kind, score, other = g.kind, g.score, min(earlier, key=lambda o: _split_rank(images[o].split))
            leaks.append(Leak(m, other, g.id, kind, score))
    return leaks


def accuracy_without_leakage(
    predictions: pd.DataFrame, leaked: pd.DataFrame | Iterable[tuple[str, Any]], *, key: str = "relpath"
) -> pd.DataFrame:
    """Accuracy per split as measured and with leaked images removed, side by side.

    ``predictions``: columns ``split``, ``key`` (``relpath`` or ``image_id``), ``label``, ``pred``.
    ``leaked``: a DataFrame with columns ``split`` and ``key`` (``AuditReport.to_frames()["leakage"]``) or
    (split, key) tuples. Returns one row per split: n, accuracy, n_leaked, n_clean, accuracy_clean, change.
    """
    need = {"split", key, "label", "pred"}
    if not need <= set(predictions.columns):
        raise ValueError(f"predictions need columns {sorted(need)}, got {sorted(predictions.columns)}")
    if isinstance(leaked, pd.DataFrame):
        if not {"split", key} <= set(leaked.columns):
            raise ValueError(f"leaked needs columns ['split', {key!r}], got {sorted(leaked.columns)}")
        leaked_keys = set(zip(leaked["split"], leaked[key]))
    else:
        leaked_keys = set(map(tuple, leaked))
    df = predictions.assign(
        correct=(predictions["label"] == predictions["pred"]),
        leaked=[(s, k) in leaked_keys for s, k in zip(predictions["split"], predictions[key])],
    )
    rows = []
    for split, g in sorted(df.groupby("split", sort=False), key=lambda t: _split_rank(t[0])):
        clean = g[~g["leaked"]]
        acc = float(g["correct"].mean())
        acc_clean = float(clean["correct"].mean()) if len(clean) else float("nan")
        rows.append({"split": split, "n": len(g), "accuracy": acc, "n_leaked": int(g["leaked"].sum()),
                     "n_clean": len(clean), "accuracy_clean": acc_clean, "change": acc_clean - acc})
    return pd.DataFrame(rows, columns=["split", "n", "accuracy", "n_leaked", "n_clean", "accuracy_clean", "change"])


# ---------------------------------------------------------------------------------------------- labels
@dataclass
class Conflict:
    """A duplicate group whose members carry different labels."""

    group: int
    label_counts: dict[int, int]
    members: list[int]


def find_conflicts(images: Sequence[ImageRef], groups: Iterable[Group]) -> list[Conflict]:
    out = []
    for g in groups:
        counts: dict[int, int] = {}
        for m in g.members:
            counts[images[m].label] = counts.get(images[m].label, 0) + 1
        if len(counts) > 1:
            out.append(Conflict(g.id, counts, list(g.members)))
    return out
