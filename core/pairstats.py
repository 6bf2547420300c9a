"""Statistics of two classifiers scored on the same images (numpy and the standard library).

- ``wilson``: the Wilson score interval of a rate (written here rather than imported, so that the comparison
  stands alone; it agrees with any other Wilson interval to rounding).
- ``mcnemar_exact``: McNemar's exact test. Of the images that only one of two classifiers gets right, under
  "equally accurate" each is as likely to favour one as the other, so ``b`` (right in A only) is
  Binomial(b + c, 1/2). Two-sided p-value: twice the smaller tail, at most 1; 1 when b + c = 0. The tail is
  summed exactly in integers (``math.comb``) and divided once, so it is exact to the last bit of a float
  and needs no scipy (whose import would cost ``jobs.compare`` a second).
- ``paired_bootstrap``: a percentile bootstrap interval of the change of accuracy per class. Each resample
  draws, within every class, as many images as the class has, with replacement, and scores both
  classifiers on the same draws (paired). Resampling within the class keeps each class's size fixed, as a
  test split fixes it (the Kaggle test split has 5 images per class), so no resample leaves a class empty.
  A class whose images all score the same change has a zero-width interval; with a handful of images the
  interval is coarse, and the class's ``n`` must be shown beside it.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (NaN, NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # The ends that the formula only rounds to are exact: 0 of n starts at 0, n of n ends at 1.
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` and ``c`` discordant pairs (1 when b + c = 0)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0); then C(n, i + 1) = C(n, i) * (n - i) / (i + 1), exact in integers
    for i in range(min(b, c)):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** n)  # P(X <= min(b, c)) doubled; int / int is rounded once


def paired_bootstrap(classes: np.ndarray, right_a: np.ndarray, right_b: np.ndarray, *, resamples: int = 2000,
                     seed: int = 0, level: float = 0.95, chunk: int = 128) -> dict[int, tuple[float, float]]:
    """Percentile interval of acc_b - acc_a per class, resampling images within each class, paired.

    ``classes`` (n,) holds a class index per image, ``right_a``/``right_b`` (n,) whether each run got it
    right. Returns {class index: (low, high)} for every class present. Vectorised: one draw of
    ``chunk`` resamples at a time, per-class sums by ``np.add.reduceat`` over images sorted by class.
    """
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    order = np.argsort(classes, kind="stable")
    cls = np.asarray(classes)[order]
    d = (np.asarray(right_b, dtype=np.int8) - np.asarray(right_a, dtype=np.int8))[order]
    present, starts, counts = np.unique(cls, return_index=True, return_counts=True)
    slot_start = np.repeat(starts, counts)
    slot_n = np.repeat(counts, counts).astype(np.float64)
    rng = np.random.default_rng(seed)
    deltas = np.empty((resamples, len(present)))
    for lo in range(0, resamples, chunk):
        m = min(chunk, resamples - lo)
        idx = slot_start + (rng.random((m, len(cls))) * slot_n).astype(np.int64)
        deltas[lo:lo + m] = np.add.reduceat(d[idx], starts, axis=1, dtype=np.int64) / counts
    alpha = (1 - level) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha], axis=0)
    return {int(c): (float(lo_), float(hi)) for c, lo_, hi in zip(present, low, high)}
