"""Feature vectors as stored bytes, exact nearest neighbours by cosine similarity, and what they say.

Numpy only (no torch, no SQL), so that pages and jobs can search stored vectors without the model.

Search is exact: the vectors are scaled to unit length once (``NeighbourIndex``), a query is one matrix
product with the whole matrix and a threshold selection (``top_k``) picks its k best. Measured with
``python -m bench.embed`` on a shared, busy two-core machine: one query among 100,000 x 256 vectors took
28 ms (median of 30; the matrix product, memory-bound, is most of it), 2.4 ms per query in a batch of
1,000, with recall 1 by construction. An approximate index would save little of that and give up exact
results, so none is used. Memory is 4 bytes per value (102 MB at 100,000 x 256).

A zero vector (every channel of a ReLU feature off) has no direction: it is kept as zeros and its
similarity to every vector, itself included, is 0.

Neighbour labels as a data-audit signal: an image whose k nearest reference images (the training set,
say) mostly carry one other label is a suspect label candidate (:func:`neighbour_label_suspects`). Exact
copies have similarity 1 and are each other's nearest neighbour.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import numpy as np
import pandas as pd

# Stored vectors are little-endian float16, as the CAM maps are.
_STORE_DTYPE = np.dtype("<f2")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
# Queries are processed in blocks so that one block's similarity matrix stays near 64 MB.
_BLOCK_VALUES = 1 << 24
# Columns per chunk in ``_top_k_by_chunks``.
_CHUNK = 64

SUSPECT_COLUMNS = ["index", "label", "majority_label", "majority_count", "k", "share", "mean_similarity",
                   "label_counts", "neighbours"]


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------
def encode_vector(vector: np.ndarray) -> bytes:
    """One feature vector (D,) -> little-endian float16 bytes (2 * D; 512 for the 256-d vector)."""
    v = np.asarray(vector)
    if v.ndim != 1 or v.size == 0 or not np.issubdtype(v.dtype, np.floating):
        raise ValueError(f"vector must be a non-empty float array (D,), got {v.dtype} {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vector must be finite, got NaN or inf values")
    peak = float(np.abs(v).max())
    if peak > _FLOAT16_MAX:
        raise ValueError(f"vector must fit float16 (|value| <= {_FLOAT16_MAX:g}), got a peak of {peak:g}")
    return v.astype(_STORE_DTYPE).tobytes()


def encode_vectors(vectors: np.ndarray) -> list[bytes]:
    """Rows of a (N, D) float array -> one ``encode_vector`` blob per row."""
    v = np.asarray(vectors)
    if v.ndim != 2:
        raise ValueError(f"vectors must be a float array (N, D), got shape {v.shape}")
    return [encode_vector(row) for row in v]


def decode_vector(data: bytes, dim: int) -> np.ndarray:
    """Bytes from ``encode_vector`` -> float32 array (dim,)."""
    expected = dim * _STORE_DTYPE.itemsize
    if dim < 1 or len(data) != expected:
        raise ValueError(f"a float16 vector of {dim} values must be {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=_STORE_DTYPE).astype(np.float32)


def decode_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Many ``encode_vector`` blobs -> float32 (N, dim), in one pass (about 0.1 s for 100,000)."""
    expected = dim * _STORE_DTYPE.itemsize
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    bad = next((i for i, b in enumerate(blobs) if len(b) != expected), None)
    if bad is not None:
        raise ValueError(f"vector {bad}: a float16 vector of {dim} values must be {expected} bytes, "
                         f"got {len(blobs[bad])}")
    flat = np.frombuffer(b"".join(blobs), dtype=_STORE_DTYPE)
    return flat.astype(np.float32).reshape(len(blobs), dim)


# --------------------------------------------------------------------------------------------------
# Exact cosine search
# --------------------------------------------------------------------------------------------------
def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Float32 copy of (N, D) ``vectors`` with every row scaled to length 1; zero rows stay zero."""
    v = np.asarray(vectors)
    if v.ndim != 2 or not np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_:
        raise ValueError(f"vectors must be a numeric array (N, D), got {v.dtype} {v.shape}")
    v = v.astype(np.float32, copy=True)
    if not np.isfinite(v).all():
        raise ValueError("vectors must be finite, got NaN or inf values")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, norms, out=v, where=norms > 0)
    return v


def _threshold(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row a value t such that the row's k largest values are all >= t, and few others are.

    Fast way: each row is cut into chunks of ``_CHUNK`` columns; the k-th largest chunk maximum is reached
    by at least k values (one per chunk) and exceeded only inside about k chunks, so one vectorised
    comparison leaves a few hundred candidates per row (16x faster than ``argpartition`` on 1,157 x
    14,500, measured). Where that does not apply (short rows, rows with fewer than k chunks of finite
    values), t is the exact k-th largest value.
    """
    n = scores.shape[1]
    starts = np.arange(0, n, _CHUNK)
    if len(starts) >= 4 * k:
        chunk_max = np.maximum.reduceat(scores, starts, axis=1)
        t = np.partition(chunk_max, len(starts) - k, axis=1)[:, len(starts) - k]
        if np.isfinite(t).all():
            return t
    return np.partition(scores, n - k, axis=1)[:, n - k]


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest of each row of ``scores`` (Q, N): (indices, values) (Q, k), best first.

    Every value tied with the k-th is a candidate, and ties are broken by ascending index, so the result
    is one defined answer (what a full stable sort would give), not the selection's internal order.
    """
    q, n = scores.shape
    k = min(k, n)
    if k <= 0 or q == 0:
        return np.empty((q, max(k, 0)), np.int64), np.empty((q, max(k, 0)), scores.dtype)
    t = _threshold(scores, k)
    r, c = np.nonzero(scores >= t[:, None])
    v = scores[r, c]
    order = np.lexsort((c, -v, r))  # by row, then best first, ties by column
    r, c, v = r[order], c[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, np.arange(q))[r]
    keep = rank < k
    return c[keep].astype(np.int64).reshape(q, k), v[keep].reshape(q, k)


def _as_mask(among, n: int) -> Optional[np.ndarray]:
    """``among`` (None, a boolean mask (N,) or row indices) -> a boolean mask, or None for all rows."""
    if among is None:
        return None
    a = np.asarray(among)
    if a.dtype == np.bool_:
        if a.shape != (n,):
            raise ValueError(f"among as a mask must have shape ({n},), got {a.shape}")
        return a
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"among must be a boolean mask ({n},) or a vector of row indices, got {a.dtype} {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"among row indices must lie in [0, {n}), got {a.min()}..{a.max()}")
    mask = np.zeros(n, dtype=bool)
    mask[a.astype(np.int64)] = True
    return mask


class NeighbourIndex:
    """Exact nearest neighbours by cosine similarity over a fixed set of vectors (rows 0..N-1).

    ``among`` restricts the candidates of a search (a boolean mask or row indices, e.g. the training
    split); ``exclude`` removes one row per query (the query itself). Results are row positions and
    similarities in [-1, 1], best first; fewer than k columns when fewer candidates exist.
    """

    def __init__(self, vectors: np.ndarray):
        self.unit = unit_rows(vectors)

    def __len__(self) -> int:
        return self.unit.shape[0]

    @property
    def dim(self) -> int:
        return self.unit.shape[1]

    def search(self, queries: np.ndarray, k: int = 10, *, among=None,
               exclude: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of query vectors (Q, D) or (D,): (rows (Q, k'), similarities (Q, k')).

        ``exclude``: one row index per query (-1 for none) that must not be returned.
        """
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (Q, {self.dim}) or ({self.dim},), got {np.shape(queries)}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        n = len(self)
        mask = _as_mask(among, n)
        excl = None
        if exclude is not None:
            excl = np.asarray(exclude, dtype=np.int64).reshape(-1)
            if excl.shape != (len(q),):
                raise ValueError(f"exclude must hold one row per query ({len(q)}), got {excl.shape[0]}")
            if excl.size and (excl.min() < -1 or excl.max() >= n):
                raise ValueError(f"exclude rows must lie in [-1, {n}), got {excl.min()}..{excl.max()}")
        allowed = n if mask is None else int(mask.sum())
        if excl is not None and excl.size:
            # the fewest candidates any query keeps, once its own excluded row is taken out
            hit = excl >= 0 if mask is None else (excl >= 0) & mask[np.maximum(excl, 0)]
            allowed -= int(hit.any())
        k = min(int(k), allowed)
        qu = unit_rows(q)
        rows = np.empty((len(q), max(k, 0)), dtype=np.int64)
        sims = np.empty((len(q), max(k, 0)), dtype=np.float32)
        if k <= 0 or len(q) == 0:
            return rows, sims
        step = max(1, _BLOCK_VALUES // max(n, 1))
        for s in range(0, len(q), step):
            block = qu[s:s + step] @ self.unit.T
            if mask is not None:
                block[:, ~mask] = -np.inf
            if excl is not None:
                r = np.flatnonzero(excl[s:s + step] >= 0)
                block[r, excl[s:s + step][r]] = -np.inf
            rows[s:s + step], sims[s:s + step] = top_k(block, k)
        np.clip(sims, -1.0, 1.0, out=sims)
        return rows, sims

    def neighbours_of(self, rows: Sequence[int] | np.ndarray, k: int = 10, *,
                      among=None) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of indexed rows, each excluding itself (an exact copy at another row still counts)."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if r.size and (r.min() < 0 or r.max() >= len(self)):
            raise ValueError(f"rows must lie in [0, {len(self)}), got {r.min()}..{r.max()}")
        return self.search(self.unit[r], k, among=among, exclude=r)


# --------------------------------------------------------------------------------------------------
# What the neighbours' labels say
# --------------------------------------------------------------------------------------------------
def _check_labels(labels, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != (n,) or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
        raise ValueError(f"labels must be {n} integer class indices, got {lab.dtype} {lab.shape}")
    return lab.astype(np.int64)


def neighbour_label_suspects(
    vectors: np.ndarray | NeighbourIndex,
    labels: Sequence[int] | np.ndarray,
    *,
    k: int = 10,
    min_share: float = 0.7,
    among=None,
    rows: Optional[Sequence[int]] = None,
) -> pd.DataFrame:
    """Images whose k nearest reference images mostly carry one other label, most convincing first.

    ``vectors``: (N, D) features (or a ``NeighbourIndex`` over them); ``labels``: (N,) class indices.
    ``among``: the reference images neighbours are drawn from (mask or row indices; default all), e.g.
    the training split; ``rows``: the images to check (default all). An image is never its own neighbour.
    A row is a suspect when the most common label among its neighbours differs from its own and holds
    at least ``min_share`` of them (k' = min(k, reference size) neighbours; ties between labels go to
    the smaller class index). Rows with no reference neighbour are not flagged.

    Columns: index (row), label, majority_label, majority_count, k (neighbours used), share,
    mean_similarity (of the neighbours carrying the majority label), label_counts ({label: count},
    most common first), neighbours (their rows, nearest first).
    """
    index = vectors if isinstance(vectors, NeighbourIndex) else NeighbourIndex(vectors)
    lab = _check_labels(labels, len(index))
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must lie in (0, 1], got {min_share}")
    check = np.arange(len(index)) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if check.size == 0 or len(index) == 0:
        return pd.DataFrame(columns=SUSPECT_COLUMNS)
    nb, sims = index.neighbours_of(check, k, among=among)
    if nb.shape[1] == 0:
        return pd.DataFrame(columns=SUSPECT_COLUMNS)
    nb_labels = lab[nb]
    records = []
    for i, row in enumerate(check):
        counts = Counter(nb_labels[i].tolist())
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        major, count = ranked[0]
        share = count / nb.shape[1]
        if major == lab[row] or share < min_share:
            continue
        records.append({
            "index": int(row), "label": int(lab[row]), "majority_label": int(major), "majority_count": int(count),
            "k": int(nb.shape[1]), "share": float(share),
            "mean_similarity": float(sims[i][nb_labels[i] == major].mean()),
            "label_counts": {int(c): int(m) for c, m in ranked}, "neighbours": nb[i].tolist(),
        })
    out = pd.DataFrame.from_records(records, columns=SUSPECT_COLUMNS)
    return out.sort_values(["share", "mean_similarity", "index"], ascending=[False, False, True],
                           ignore_index=True)


def describe_neighbour_labels(neighbour_labels: Sequence[int], label: int, class_names: Sequence[str], *,
                              pool: str = "training", markdown: bool = False) -> str:
    """One sentence on how many of an image's neighbours carry ``label``.

    ``describe_neighbour_labels([3, 3, 1], 3, names)`` -> "2 of its 3 nearest training images are
    labelled nascar racing". ``pool`` names where the neighbours come from; ``markdown`` sets the class
    name in italics.
    """
    nl = [int(x) for x in neighbour_labels]
    if not 0 <= int(label) < len(class_names):
        raise ValueError(f"label must be a class index in [0, {len(class_names)}), got {label}")
    name = class_names[int(label)]
    shown = f"*{name}*" if markdown else name
    pool = f"{pool} " if pool else ""
    k, hits = len(nl), sum(x == int(label) for x in nl)
    if k == 0:
        return f"It has no nearest {pool}images to compare with"
    if k == 1:
        return f"Its nearest {pool}image is {'' if hits else 'not '}labelled {shown}"
    if hits == 0:
        return f"None of its {k} nearest {pool}images is labelled {shown}"
    if hits == k:
        return f"All {k} of its nearest {pool}images are labelled {shown}"
    verb = "is" if hits == 1 else "are"
    return f"{hits} of its {k} nearest {pool}images {verb} labelled {shown}"
