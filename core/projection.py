"""A seeded, reproducible 2-D map of feature vectors: UMAP on a PCA of the unit vectors, exact kNN graph.

Steps (``project_2d``):
1. Rows are scaled to unit length, so that Euclidean distance orders pairs as cosine similarity does
   (|a - b|^2 = 2 - 2 cos) and the map agrees with the neighbour search of ``core.neighbours``.
2. PCA to ``pca_dims`` (50) by an eigen-decomposition of the D x D covariance (deterministic, with each
   component's sign fixed): it keeps the structure UMAP uses and makes the graph cheaper (3.2 s against
   4.8 s from the 256-d vectors at 14,500, measured).
3. The k-nearest-neighbour graph is computed exactly here (blocked matrix products, ~2 s for 14,500) and
   handed to UMAP as ``precomputed_knn``. UMAP's own search (pynndescent) must first be compiled by numba:
   with it, a first fit of 14,500 x 50 took 44 s (40 s with numba's cache warm) plus 15 s to import UMAP
   on a new machine, against ~12 s for the fit with the graph given (shared two-core machine).
4. UMAP (``umap-learn``) with ``random_state=seed`` runs single-threaded and is reproducible for a fixed
   seed and library versions.
5. The result is centred and scaled so that the largest coordinate is 1 in absolute value.

Measured for 14,500 x 256 with ``python -m bench.embed`` on the shared, busy two-core machine: the first
call in a fresh process took 50 s with an empty numba cache (a new machine; UMAP's import compiles and
caches part of it) and 32-33 s with the cache filled; a second call 12-16 s (200 epochs of layout).

Small and degenerate inputs: UMAP needs a neighbourhood graph, so below ``UMAP_MIN_POINTS`` rows, or with
no more distinct rows than ``n_neighbors``, the map is the first two principal components instead
(``Projection.method`` says "pca"). Constant vectors then all sit at (0, 0); one row sits at (0, 0); zero
rows give an empty (0, 2) map. Output is always finite: should UMAP return a non-finite value, the PCA map
is used and a warning logged.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.neighbours import _BLOCK_VALUES, top_k, unit_rows

log = logging.getLogger(__name__)

UMAP_MIN_POINTS = 16
METHODS = ("auto", "umap", "pca")


@dataclass
class Projection:
    """2-D coordinates (N, 2) float32 in [-1, 1], the method that made them and how."""

    xy: np.ndarray
    method: str  # "umap" or "pca"
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` principal-component scores of rows ``x`` (N, D), float32 (N, min(dims, D)).

    Deterministic: components come from ``eigh`` of the covariance, each signed so that its largest
    loading is positive. Constant input gives zeros.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array (N, D), got shape {x.shape}")
    dims = min(int(dims), x.shape[1])
    if x.shape[0] == 0 or dims < 1:
        return np.zeros((x.shape[0], max(dims, 0)), dtype=np.float32)
    xc = x - x.mean(axis=0)
    _, vecs = np.linalg.eigh(xc.T @ xc)
    comps = vecs[:, ::-1][:, :dims]  # eigh sorts ascending
    peak = np.abs(comps).argmax(axis=0)
    comps *= np.sign(comps[peak, np.arange(dims)])
    return (xc @ comps).astype(np.float32)


def knn_graph(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k-nearest neighbours of every row among all rows, as UMAP's ``precomputed_knn``
    expects them: (indices, distances) (N, k), column 0 the row itself at distance 0, then nearest first.
    """
    p = np.asarray(points, dtype=np.float32)
    n = p.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, {n}] for {n} points, got {k}")
    sq = np.einsum("ij,ij->i", p, p)
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.zeros((n, k), dtype=np.float32)
    idx[:, 0] = np.arange(n)
    step = max(1, _BLOCK_VALUES // n)
    for s in range(0, n, step):
        # -|a-b|^2 + |a|^2 = 2 a.b - |b|^2: the same order per row, one matrix product
        score = 2.0 * (p[s:s + step] @ p.T) - sq[None, :]
        r = np.arange(score.shape[0])
        score[r, s + r] = -np.inf  # the row itself is column 0 already
        nb, val = top_k(score, k - 1)
        idx[s:s + step, 1:] = nb
        dist[s:s + step, 1:] = np.sqrt(np.maximum(sq[s:s + step, None] - val, 0.0))
    return idx, dist


def _scaled(xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.size:
        xy = xy - xy.mean(axis=0)
        peak = float(np.abs(xy).max())
        if peak > 0:
            xy = xy / peak
    return xy.astype(np.float32)


def _pca_map(unit: np.ndarray) -> np.ndarray:
    xy = pca(unit, 2)
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(xy), 2 - xy.shape[1]), dtype=np.float32)])
    return xy


def _umap_map(points: np.ndarray, seed: int, n_neighbors: int, min_dist: float) -> np.ndarray:
    import umap  # imported here: ~2 s (15 s on a cold numba cache), only for the job that projects

    idx, dist = knn_graph(points, n_neighbors)
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric="euclidean", random_state=seed,
                        n_jobs=1, precomputed_knn=(idx, dist), verbose=False)
    with warnings.catch_warnings():
        # "no search index, transform unavailable": no transform is needed; the rest are UMAP's notes on
        # disconnected graph parts, which the layout handles.
        warnings.simplefilter("ignore")
        return reducer.fit_transform(points)


def project_2d(vectors: np.ndarray, *, seed: int = 0, method: str = "auto", n_neighbors: int = 15,
               min_dist: float = 0.1, pca_dims: int = 50) -> Projection:
    """Map feature vectors (N, D) to 2-D (see the module docstring).

    ``method``: "auto" (UMAP where the input allows it, else PCA), "umap" (a ValueError where the input
    is too small or degenerate) or "pca".
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if n_neighbors < 2 or not 0.0 <= min_dist <= 1.0 or pca_dims < 2:
        raise ValueError(f"need n_neighbors >= 2, 0 <= min_dist <= 1 and pca_dims >= 2; got {n_neighbors}, "
                         f"{min_dist}, {pca_dims}")
    unit = unit_rows(vectors)
    n = unit.shape[0]
    params: dict[str, Any] = {"n": n, "dim": unit.shape[1]}
    use_umap = method != "pca"
    if use_umap:
        distinct = len(np.unique(unit, axis=0)) if n else 0
        if n < UMAP_MIN_POINTS or distinct <= n_neighbors:
            if method == "umap":
                raise ValueError(f"UMAP needs at least {UMAP_MIN_POINTS} vectors and more than n_neighbors="
                                 f"{n_neighbors} distinct ones, got {n} vectors, {distinct} distinct")
            use_umap = False
            params["fallback"] = f"{n} vectors, {distinct} distinct: below UMAP's minimum"
    xy = None
    if use_umap:
        points = pca(unit, pca_dims) if unit.shape[1] > pca_dims else unit - unit.mean(axis=0)
        params.update(pca_dims=int(points.shape[1]), n_neighbors=int(n_neighbors), min_dist=float(min_dist))
        xy = _umap_map(points, int(seed), int(n_neighbors), float(min_dist))
        if not np.isfinite(xy).all():
            log.warning("UMAP returned non-finite coordinates for %d vectors; using PCA instead", n)
            params["fallback"] = "UMAP returned non-finite coordinates"
            xy = None
    used = "umap" if xy is not None else "pca"
    if xy is None:
        xy = _pca_map(unit)
    return Projection(xy=_scaled(xy), method=used, seed=int(seed), params=params,
                      seconds=time.perf_counter() - t0)
