"""An interval on every rate: Wilson intervals for proportions, bootstrap intervals for F1 and macro-F1.

A test split with 5 images per class makes "80 %" mean "4 of 5", whose 95 % interval runs from about 38 %
to 96 %. These functions put that next to the number. Pure numpy, no store, no drawing.

- Proportions (accuracy, top-5, per-class precision and recall): the Wilson score interval (Wilson 1927;
  Agresti and Coull 1998 recommend it over the normal approximation for small n). ``0 of 0`` gives [0, 1]:
  nothing is known.
- F1 per class and macro-F1 are not proportions: a percentile bootstrap over the images (resampled with
  replacement, seeded), every class's counts per resample from one ``bincount``. Where resampling cannot
  move a class's F1 (no hit at all, or no miss at all) the collapsed end comes from the Wilson intervals
  of precision and recall instead, so 0 of 1 does not look as certain as 0 of 1,000.
- "Worst first" can sort by the interval's upper bound: a class is then ranked by the best it could be,
  so a 0-of-1 class (recall interval [0, 0.79]) no longer sits above a 40-of-100 one ([0.31, 0.50]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

LEVEL = 0.95
Z95 = NormalDist().inv_cdf(0.975)  # 1.95996... (the standard library's: scipy.stats takes a second to import)
FEW_IMAGES = 10  # a class with fewer images than this is marked "few images"
RESAMPLES = 2000
SORT_KEYS = ("f1", "precision", "recall")


def z_for(level: float = LEVEL) -> float:
    """The two-sided normal quantile of a confidence level, e.g. 1.96 for 0.95."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


# --------------------------------------------------------------------------- proportions

def wilson_interval(k: Any, n: Any, z: float = Z95) -> tuple[Any, Any]:
    """Wilson score interval of k successes in n trials, for scalars or arrays; (0, 1) where n is 0."""
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a finite number > 0, got {z!r}")
    k_arr = np.asarray(k, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    if np.any(n_arr < 0) or np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError(f"need 0 <= k <= n, got k={k!r}, n={n!r}")
    safe = np.where(n_arr > 0, n_arr, 1.0)
    p = k_arr / safe
    z2 = z * z
    denom = 1.0 + z2 / safe
    centre = (p + z2 / (2.0 * safe)) / denom
    half = z / denom * np.sqrt(p * (1.0 - p) / safe + z2 / (4.0 * safe * safe))
    # Exact ends where the formula only rounds to them: 0 of n starts at 0, n of n ends at 1.
    lo = np.where(k_arr == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    hi = np.where(k_arr == n_arr, 1.0, np.clip(centre + half, 0.0, 1.0))
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


@dataclass(frozen=True)
class Rate:
    """k of n with its interval; ``value`` is 0 when n is 0 (and the interval [0, 1] says so)."""

    k: int
    n: int
    lo: float
    hi: float
    level: float = LEVEL

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(value=self.value, k=self.k, n=self.n, lo=self.lo, hi=self.hi, level=self.level)

    def __str__(self) -> str:
        pct = round(self.level * 100)
        return f"{self.value:.1%} ({self.k} of {self.n}; {pct}% interval {self.lo:.1%}-{self.hi:.1%})"

    def brief(self) -> str:
        """The n and the interval without the value, for a caption beside a shown value:
        ``30 of 40 · 95% interval 60.0–85.8%``."""
        return f"{self.k:,} of {self.n:,} · {round(self.level * 100)}% interval {self.lo:.1%}–{self.hi:.1%}"


def rate(k: int, n: int, level: float = LEVEL) -> Rate:
    """``k`` of ``n`` with its Wilson interval at ``level``."""
    lo, hi = wilson_interval(int(k), int(n), z_for(level))
    return Rate(k=int(k), n=int(n), lo=lo, hi=hi, level=level)


def _labels(labels: Any, what: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or (len(y) and y.dtype.kind not in "iu"):
        raise ValueError(f"{what} must be a 1-D array of class indices, got shape {y.shape} and dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise ValueError(f"{what} must be class indices >= 0, got {y.min()}")
    return y.astype(np.int64)


def accuracy_rate(labels: Any, preds: Any, level: float = LEVEL) -> Rate:
    """Top-1 accuracy with its Wilson interval."""
    y, p = _labels(labels), _labels(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels and preds must have one length, got {len(y)} and {len(p)}")
    return rate(int(np.count_nonzero(y == p)), len(y), level)


def top_k_rate(labels: Any, ranked: Any, level: float = LEVEL) -> Rate:
    """Top-k accuracy with its Wilson interval; ``ranked`` holds each image's k best classes, (images, k)."""
    y = _labels(labels)
    r = np.asarray(ranked)
    if r.ndim != 2 or len(r) != len(y) or r.shape[1] < 1:
        raise ValueError(f"ranked must have shape ({len(y)}, k) with k >= 1, got shape {r.shape}")
    return rate(int(np.count_nonzero((r == y[:, None]).any(axis=1))), len(y), level)


# --------------------------------------------------------------------------- bootstrap of F1

@dataclass(frozen=True)
class F1Intervals:
    """F1 per class and macro-F1, each with a percentile bootstrap interval."""

    f1: np.ndarray  # (classes,)
    lo: np.ndarray
    hi: np.ndarray
    macro: float
    macro_lo: float
    macro_hi: float
    resamples: int
    level: float
    seed: int


def _counts(y: np.ndarray, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    right = y == p
    return (np.bincount(y[right], minlength=k), np.bincount(y, minlength=k), np.bincount(p, minlength=k))


def _f1(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """2 tp / (support + predicted), 0 where both are 0 (scikit-learn's zero_division=0)."""
    denom = support + predicted
    return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)


def bootstrap_f1(labels: Any, preds: Any, n_classes: int, *, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0, chunk_elements: int = 2_000_000) -> F1Intervals:
    """Percentile bootstrap intervals of F1 per class and of macro-F1.

    Macro-F1 is the mean F1 over the classes with at least one image in the data (in each resample too),
    so a class absent from the split does not count as a zero. Each resample draws len(labels) images
    with replacement; all its counts come from one ``bincount`` over (resample, class, outcome) cells,
    in chunks of about ``chunk_elements`` drawn indices.
    """
    y, p = _labels(labels), _labels(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels and preds must have one length, got {len(y)} and {len(p)}")
    k = int(n_classes)
    if k < 1 or (len(y) and max(y.max(), p.max()) >= k):
        raise ValueError(f"n_classes must be >= 1 and above every label and prediction, got {n_classes}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    z_for(level)
    tp, support, predicted = _counts(y, p, k)
    f1 = _f1(tp, support, predicted)
    present = support > 0
    macro = float(f1[present].mean()) if present.any() else 0.0
    n = len(y)
    if n == 0:
        zeros = np.zeros(k)
        return F1Intervals(f1=zeros, lo=zeros, hi=np.ones(k), macro=0.0, macro_lo=0.0, macro_hi=1.0,
                           resamples=int(resamples), level=level, seed=int(seed))
    # Per true class two cells, 2c (right) and 2c + 1 (missed): tp and support from one bincount over
    # (resample, cell); a second bincount over (resample, predicted class) gives the predictions.
    right = (y == p).astype(np.int64)
    code_true = (2 * y + (1 - right)).astype(np.int32)  # int32: the gathers below move half the bytes
    pred32 = p.astype(np.int32)
    rng = np.random.default_rng(seed)
    samples = np.empty((resamples, k))
    macro_s = np.empty(resamples)
    step = max(1, chunk_elements // n)
    dtype = np.int32 if n < 2**31 else np.int64
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        idx = rng.integers(0, n, size=(b, n), dtype=dtype)
        offset = np.arange(b, dtype=np.int64)[:, None]
        cells = np.bincount((offset * (2 * k) + code_true[idx]).ravel(), minlength=b * 2 * k).reshape(b, k, 2)
        pred_counts = np.bincount((offset * k + pred32[idx]).ravel(), minlength=b * k).reshape(b, k)
        tp_b = cells[:, :, 0]
        support_b = tp_b + cells[:, :, 1]
        f1_b = _f1(tp_b, support_b, pred_counts)
        samples[start:start + b] = f1_b
        # Macro-F1 of a resample averages the classes with an image in that resample, as the point value
        # does on the data: a small class that a resample happens to leave out is not a zero.
        held = support_b > 0
        macro_s[start:start + b] = (f1_b * held).sum(axis=1) / np.maximum(held.sum(axis=1), 1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha], axis=0)
    lo, hi = _widen_collapsed(lo, hi, tp, support, predicted, z_for(level))
    if present.any():
        macro_lo, macro_hi = (float(v) for v in np.quantile(macro_s, [alpha, 1.0 - alpha]))
    else:
        macro_lo = macro_hi = 0.0
    return F1Intervals(f1=f1, lo=lo, hi=hi, macro=macro, macro_lo=macro_lo, macro_hi=macro_hi,
                       resamples=int(resamples), level=level, seed=int(seed))


def _harmonic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(a + b > 0, 2.0 * a * b / np.maximum(a + b, 1e-300), 0.0)


def _widen_collapsed(lo: np.ndarray, hi: np.ndarray, tp: np.ndarray, support: np.ndarray, predicted: np.ndarray,
                     z: float) -> tuple[np.ndarray, np.ndarray]:
    """Where resampling cannot move F1, take that end from the Wilson intervals of precision and recall.

    With no hit (tp = 0) every resample has F1 = 0, and with no miss (fp = fn = 0) every resample that
    holds the class has F1 = 1: the percentile interval collapses to a point whatever n is, so 0 of 1
    would look as certain as 0 of 1,000. F1 rises with precision and with recall, so the harmonic mean of
    their Wilson upper (lower) ends bounds it from above (below); that end is used instead.
    """
    p_lo, p_hi = wilson_interval(tp, predicted, z)
    r_lo, r_hi = wilson_interval(tp, support, z)
    no_hit = tp == 0
    no_miss = (tp > 0) & (tp == support) & (tp == predicted)
    hi = np.where(no_hit, np.maximum(hi, _harmonic(p_hi, r_hi)), hi)
    lo = np.where(no_miss, np.minimum(lo, _harmonic(p_lo, r_lo)), lo)
    return lo, hi


# --------------------------------------------------------------------------- the per-class table

def per_class_table(labels: Any, preds: Any, classes: Union[int, Sequence[str]], *, level: float = LEVEL,
                    resamples: int = RESAMPLES, seed: int = 0, few: int = FEW_IMAGES,
                    f1: Optional[F1Intervals] = None) -> pd.DataFrame:
    """Per class: n (images of the class), predicted, tp, precision and recall with Wilson intervals, F1 with
    a bootstrap interval, and ``few`` (n < ``few``). In class order; sort with :func:`worst_first`.

    ``classes`` is the number of classes or their names. Pass ``f1`` to reuse a :func:`bootstrap_f1`.
    """
    names = None if isinstance(classes, (int, np.integer)) else list(classes)
    k = int(classes) if names is None else len(names)
    y, p = _labels(labels), _labels(preds, "preds")
    if f1 is None:
        f1 = bootstrap_f1(y, p, k, resamples=resamples, level=level, seed=seed)
    elif len(f1.f1) != k:
        raise ValueError(f"f1 intervals cover {len(f1.f1)} classes, expected {k}")
    tp, support, predicted = _counts(y, p, k)
    z = z_for(level)
    p_lo, p_hi = wilson_interval(tp, predicted, z)
    r_lo, r_hi = wilson_interval(tp, support, z)
    frame = pd.DataFrame({
        "class_idx": np.arange(k),
        "n": support.astype(np.int64),
        "predicted": predicted.astype(np.int64),
        "tp": tp.astype(np.int64),
        "precision": np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0),
        "precision_lo": p_lo, "precision_hi": p_hi,
        "recall": np.where(support > 0, tp / np.maximum(support, 1), 0.0),
        "recall_lo": r_lo, "recall_hi": r_hi,
        "f1": f1.f1, "f1_lo": f1.lo, "f1_hi": f1.hi,
        "few": support < few,
    })
    if names is not None:
        frame.insert(1, "class", names)
    return frame


def worst_first(table: pd.DataFrame, *, by: str = "f1", upper: bool = False) -> pd.DataFrame:
    """The table sorted worst first by ``by`` (f1, precision or recall).

    ``upper=False`` sorts by the point value (ties: more images first); ``upper=True`` by the upper end of
    the interval (ties: point value, then more images first), so a class ranks as bad only when even its
    best plausible value is bad. :func:`ordering_note` says which in words.
    """
    if by not in SORT_KEYS:
        raise ValueError(f"by must be one of {', '.join(SORT_KEYS)}, got {by!r}")
    keys = ([f"{by}_hi", by] if upper else [by]) + ["n", "class_idx"]
    asc = [True] * (len(keys) - 2) + [False, True]
    return table.sort_values(keys, ascending=asc, kind="stable").reset_index(drop=True)


def ordering_note(by: str = "f1", upper: bool = False, level: float = LEVEL, few: int = FEW_IMAGES) -> str:
    """One sentence that says how a worst-first list was ordered, for a caption."""
    pct = round(level * 100)
    if upper:
        return (f"Worst first by the upper end of the {pct}% interval of {by}: a class ranks low only when even "
                f"its best plausible {by} is low. Classes with fewer than {few} images are marked.")
    return (f"Worst first by {by}; with few images a low {by} may be chance (see the {pct}% interval). "
            f"Classes with fewer than {few} images are marked.")


# --------------------------------------------------------------------------- intervals on existing tables

def add_wilson(frame: pd.DataFrame, k: str, n: str, name: str, level: float = LEVEL) -> pd.DataFrame:
    """``frame`` with ``<name>_lo`` and ``<name>_hi``: the Wilson interval of column ``k`` of column ``n``."""
    if frame.empty:
        return frame.assign(**{f"{name}_lo": pd.Series(dtype=float), f"{name}_hi": pd.Series(dtype=float)})
    lo, hi = wilson_interval(frame[k].to_numpy(dtype=np.int64), frame[n].to_numpy(dtype=np.int64), z_for(level))
    return frame.assign(**{f"{name}_lo": np.atleast_1d(lo), f"{name}_hi": np.atleast_1d(hi)})


def attach_intervals(per_class: pd.DataFrame, labels: Any, preds: Any, *, level: float = LEVEL,
                     resamples: int = RESAMPLES, seed: int = 0, few: int = FEW_IMAGES
                     ) -> tuple[pd.DataFrame, F1Intervals]:
    """A per-class table of ``core.metrics.per_class_metrics`` (class, precision, recall, f1, support,
    predicted, class_idx; any order) with the intervals of :func:`per_class_table` added, row for row:
    precision_lo/hi, recall_lo/hi (Wilson), f1_lo/hi (bootstrap) and ``few`` (support < ``few``).
    Returns the table and the bootstrap, whose ``macro_lo``/``macro_hi`` bound macro-F1."""
    k = len(per_class)
    y, p = _labels(labels), _labels(preds, "preds")
    if k == 0:
        empty = F1Intervals(f1=np.zeros(0), lo=np.zeros(0), hi=np.zeros(0), macro=0.0, macro_lo=0.0, macro_hi=1.0,
                            resamples=int(resamples), level=level, seed=int(seed))
        extra = {c: pd.Series(dtype=float) for c in INTERVAL_COLUMNS}
        return per_class.assign(**extra), empty
    f1 = bootstrap_f1(y, p, k, resamples=resamples, level=level, seed=seed)
    table = per_class_table(y, p, k, level=level, few=few, f1=f1).set_index("class_idx")
    idx = per_class["class_idx"].to_numpy(dtype=np.int64)
    extra = {c: table[c].to_numpy()[idx] for c in INTERVAL_COLUMNS}
    return per_class.assign(**extra), f1


INTERVAL_COLUMNS = ("precision_lo", "precision_hi", "recall_lo", "recall_hi", "f1_lo", "f1_hi", "few")


# --------------------------------------------------------------------------- numbers that depend on the model

# Below this top-1 accuracy the suspects a model's confidences point at are mostly its own mistakes.
MIN_SUSPECT_ACCURACY = 0.5


def suspects_warning(accuracy: Rate, n_classes: int, threshold: float = MIN_SUSPECT_ACCURACY) -> Optional[str]:
    """A plain warning when the model whose confidences pick suspect labels is too weak for them to mean
    much (top-1 under ``threshold``), ``None`` otherwise. "Near chance" when the interval reaches down to
    twice the chance rate (1 / classes)."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if accuracy.n == 0:
        return "No out-of-sample predictions: nothing says whether these suspects mean anything."
    if accuracy.value >= threshold:
        return None
    chance = 1.0 / n_classes
    if accuracy.lo <= 2 * chance:
        return (f"The model is near chance (top-1 {accuracy.value:.1%} of {accuracy.n:,} images, chance "
                f"{chance:.1%}); these suspects are mostly noise.")
    return (f"The model's top-1 accuracy is {accuracy.value:.1%} of {accuracy.n:,} images, under "
            f"{threshold:.0%}: many of these suspects are the model's own mistakes, not wrong labels.")


ACCURACY_COLUMNS = ["split", "metric", "value", "k", "n", "lo", "hi", "interval"]


def accuracy_table(preds: pd.DataFrame, n_classes: int, top5: Optional[dict[str, tuple[int, int]]] = None, *,
                   level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Per split of ``preds`` (split, label, pred), in order of appearance: top-1 and (where ``top5`` gives
    its (k, n)) top-5 accuracy with Wilson intervals, and macro-F1 with its bootstrap interval.
    Columns :data:`ACCURACY_COLUMNS`; k is empty for macro-F1, whose n counts the images."""
    rows = []
    for split in pd.unique(preds["split"]):
        part = preds[preds["split"] == split]
        y, p = part["label"].to_numpy(dtype=np.int64), part["pred"].to_numpy(dtype=np.int64)
        r1 = accuracy_rate(y, p, level)
        rows.append((split, "top1", r1.value, r1.k, r1.n, r1.lo, r1.hi, "Wilson"))
        if top5 and split in top5:
            r5 = rate(*top5[split], level)
            rows.append((split, "top5", r5.value, r5.k, r5.n, r5.lo, r5.hi, "Wilson"))
        f1 = bootstrap_f1(y, p, n_classes, resamples=resamples, level=level, seed=seed)
        rows.append((split, "macro_f1", f1.macro, None, len(y), f1.macro_lo, f1.macro_hi, "bootstrap"))
    frame = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    frame["k"] = frame["k"].astype("Int64")
    return frame
