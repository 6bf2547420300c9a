"""Can a confidence be believed? Calibration of a classifier's top-1 confidence, from its logits.

Pure numpy/scipy: logits are float arrays of shape (images, classes) of any float dtype (the store keeps
them as float16) and labels are class indices. Every function returns plain numbers, arrays or lists of
dicts that serialise to JSON without NaN; nothing here reads the store or draws.

Definitions (N images, C classes, p the softmax of the logits, c_i = max_k p_ik the top-1 confidence,
a_i = 1 when the top-1 class is the label):

- **Bins**: ``bins`` equal-width intervals over [0, 1], ``[lo, hi)`` with the last one closed, ``[lo, 1]``.
- **ECE** (expected calibration error, L1): ``sum_b (n_b / N) |acc_b - conf_b|`` over the non-empty bins
  (Guo et al. 2017, eq. 3).
- **MCE** (maximum calibration error): ``max_b |acc_b - conf_b|`` over the non-empty bins.
- **NLL**: ``-(1/N) sum_i log p_{i, y_i}``, from a stable log-softmax, so it stays finite however large the
  logits are.
- **Brier score**: ``(1/N) sum_i sum_k (p_ik - [y_i = k])^2``, the original multi-class definition, in
  [0, 2]. It equals scikit-learn's ``brier_score_loss(y, p, labels=range(C), scale_by_half=False)`` (the
  default ``scale_by_half="auto"`` gives the same for C > 2 and halves it for C = 2).
- **Temperature scaling** (Guo et al. 2017, section 4.2): one scalar T > 0 divides every logit; T is fitted
  on the validation split by minimising its NLL over log T with a bounded Brent search. T > 1 means the
  raw confidences were too high, T < 1 too low.

Degenerate inputs give defined numbers: one class (every confidence is 1 and every prediction right), all
predictions right, a single image, float16 logits near their largest value. An empty bin has ``count`` 0
and ``confidence``/``accuracy`` None (JSON null): nothing was measured there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

DEFAULT_BINS = 15
MAX_BINS = 1000
# Search range of the temperature. A fit that lands on a bound says the split cannot pin T down (e.g.
# every prediction right: the NLL keeps falling as T -> 0).
T_BOUNDS = (0.01, 100.0)

SPLIT_KEYS = ("n", "ece", "mce", "nll", "brier", "ece_calibrated", "nll_calibrated", "bins")


# --------------------------------------------------------------------------- inputs

def check_logits(logits: Any, labels: Any = None, *, what: str = "logits") -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Logits as float64 (images, classes) and labels as int64 (images,), or ValueError naming the problem.

    ``None`` logits mean the run stored none; that is said plainly, so a caller can add how to get them.
    """
    if logits is None:
        raise ValueError(f"{what} are missing (got None); expected a float array of shape (images, classes)")
    z = np.asarray(logits)
    if z.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numbers, got an array of dtype {z.dtype}")
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"{what} must have shape (images, classes) with at least one of each, got shape {z.shape}")
    z = z.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(z)))
    if bad:
        raise ValueError(f"{what} must be finite, got {bad} infinite or NaN values among {z.size}")
    if labels is None:
        return z, None
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(z):
        raise ValueError(f"labels for {what} must have shape ({len(z)},), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind != "f" or not np.all(y == np.round(y)):
            raise ValueError(f"labels for {what} must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels for {what} must lie in 0..{z.shape[1] - 1} (the logits have {z.shape[1]} "
                         f"classes), got {y.min()}..{y.max()}")
    return z, y


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an integer in 1..{MAX_BINS}, got {bins!r}")
    return int(bins)


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


# --------------------------------------------------------------------------- probabilities

def _log_softmax(z: np.ndarray, t: float) -> np.ndarray:
    s = z / t
    s -= s.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def log_softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row-wise log-softmax of ``logits / temperature`` in float64, shifted by the row maximum."""
    z, _ = check_logits(logits)
    return _log_softmax(z, _check_temperature(temperature))


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64; rows sum to 1 for any finite logits."""
    return np.exp(log_softmax(logits, temperature))


def top1(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, predicted class) per row; ties go to the lowest class index, as ``argmax``."""
    p = np.asarray(probs, dtype=np.float64)
    pred = p.argmax(axis=1)
    return p[np.arange(len(p)), pred], pred


def calibrated_top(logits: Any, temperature: float = 1.0, *, pred: Any = None, k: int = 5
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of softmax(logits / temperature): the confidence of the predicted class, and the ``k`` best
    classes with their probabilities, best first.

    ``pred`` names the predicted class of each row (the one the store recorded); by default the top
    class. Given, the confidence is that class's probability, so a float16 tie cannot make the shown
    confidence belong to another class than the shown prediction.
    """
    z, _ = check_logits(logits)
    p = np.exp(_log_softmax(z, _check_temperature(temperature)))
    k = max(1, min(int(k), p.shape[1]))
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    prob = np.take_along_axis(p, idx, axis=1)
    if pred is None:
        return prob[:, 0].copy(), idx, prob
    c = np.asarray(pred, dtype=np.int64)
    if c.shape != (len(p),) or (len(c) and (c.min() < 0 or c.max() >= p.shape[1])):
        raise ValueError(f"pred must hold {len(p)} class indices in 0..{p.shape[1] - 1}, got shape {c.shape}")
    return p[np.arange(len(p)), c], idx, prob


# --------------------------------------------------------------------------- binned calibration

@dataclass(frozen=True)
class Bins:
    """Equal-width bins over the top-1 confidence. ``confidence``/``accuracy`` are 0 where ``count`` is 0."""

    lo: np.ndarray
    hi: np.ndarray
    count: np.ndarray
    confidence: np.ndarray  # mean confidence in the bin
    accuracy: np.ndarray  # fraction right in the bin

    @property
    def n(self) -> int:
        return int(self.count.sum())

    @property
    def gaps(self) -> np.ndarray:
        """|accuracy - confidence| per bin, 0 for empty bins."""
        return np.abs(self.accuracy - self.confidence)

    def ece(self) -> float:
        n = self.n
        return float((self.count * self.gaps).sum() / n) if n else 0.0

    def mce(self) -> float:
        filled = self.count > 0
        return float(self.gaps[filled].max()) if filled.any() else 0.0

    def records(self) -> list[dict[str, Any]]:
        """The JSON form: one dict per bin with lo, hi, count, confidence, accuracy (None when empty)."""
        out = []
        for lo, hi, k, c, a in zip(self.lo, self.hi, self.count, self.confidence, self.accuracy):
            out.append(dict(lo=float(lo), hi=float(hi), count=int(k),
                            confidence=float(c) if k else None, accuracy=float(a) if k else None))
        return out


def bin_edges(bins: int = DEFAULT_BINS) -> np.ndarray:
    return np.linspace(0.0, 1.0, _check_bins(bins) + 1)


def bin_index(confidence: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The bin of each confidence: ``[lo, hi)``, the last bin closed so that a confidence of 1 lands in it."""
    edges = bin_edges(bins)
    idx = np.searchsorted(edges, np.asarray(confidence, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, len(edges) - 2)


def _check_pair(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64)
    a = np.asarray(correct)
    if c.ndim != 1 or a.shape != c.shape:
        raise ValueError(f"confidence and correct must be 1-D of one length, got shapes {c.shape} and {a.shape}")
    if len(c) and (not np.all(np.isfinite(c)) or c.min() < 0 or c.max() > 1):
        raise ValueError("confidence must lie in [0, 1] and be finite")
    return c, a.astype(np.float64)


def reliability_bins(confidence: Any, correct: Any, bins: int = DEFAULT_BINS) -> Bins:
    """Count, mean confidence and accuracy per equal-width bin of the top-1 confidence."""
    c, a = _check_pair(confidence, correct)
    edges = bin_edges(bins)
    idx = bin_index(c, bins)
    count = np.bincount(idx, minlength=bins).astype(np.int64)
    safe = np.maximum(count, 1)
    conf = np.bincount(idx, weights=c, minlength=bins) / safe
    acc = np.bincount(idx, weights=a, minlength=bins) / safe
    return Bins(lo=edges[:-1].copy(), hi=edges[1:].copy(), count=count, confidence=conf, accuracy=acc)


def expected_calibration_error(confidence: Any, correct: Any, bins: int = DEFAULT_BINS) -> float:
    """ECE, L1, equal-width bins (see the module's definitions); 0 for no images."""
    return reliability_bins(confidence, correct, bins).ece()


def maximum_calibration_error(confidence: Any, correct: Any, bins: int = DEFAULT_BINS) -> float:
    """MCE: the largest |accuracy - confidence| over the non-empty bins; 0 for no images."""
    return reliability_bins(confidence, correct, bins).mce()


# --------------------------------------------------------------------------- proper scores

def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    z, y = check_logits(logits, labels)
    logp = log_softmax(z, temperature)
    return float(-logp[np.arange(len(y)), y].mean())


def brier(probs: Any, labels: Any) -> float:
    """Multi-class Brier score in [0, 2]: mean over images of the squared distance to the one-hot label."""
    p, y = check_logits(probs, labels, what="probabilities")
    return _brier(p, y)


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    sq = (p * p).sum(axis=1) - 2.0 * p[np.arange(len(y)), y] + 1.0
    return float(np.clip(sq, 0.0, 2.0).mean())


# --------------------------------------------------------------------------- temperature scaling

@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float  # at T = 1
    nll_after: float  # at the fitted T
    at_bound: bool  # the search ended on a bound of T_BOUNDS: the split cannot pin T down
    evaluations: int


class _ScaledNLL:
    """NLL(T) with one exp pass per call: log-sum-exp(z / T) = max(z) / T + log sum exp((z - max z) / T)."""

    def __init__(self, z: np.ndarray, y: np.ndarray):
        zmax = z.max(axis=1)
        self.shifted = z - zmax[:, None]  # <= 0
        self.margin = float((zmax - z[np.arange(len(y)), y]).mean())  # >= 0
        self.calls = 0

    def __call__(self, t: float) -> float:
        self.calls += 1
        lse = np.log(np.exp(self.shifted / t).sum(axis=1))
        return float(lse.mean() + self.margin / t)


def fit_temperature(logits: Any, labels: Any, bounds: tuple[float, float] = T_BOUNDS) -> TemperatureFit:
    """The T > 0 that minimises the NLL of ``softmax(logits / T)`` on these labels.

    NLL is convex in 1/T, hence unimodal in log T, so a bounded Brent search over log T finds the minimum.
    Where no T does better than T = 1 (one class, or rows of equal logits: the NLL does not depend on T),
    T stays 1.
    """
    z, y = check_logits(logits, labels)
    lo, hi = (float(b) for b in bounds)
    if not (0 < lo < 1 < hi and math.isfinite(hi)):
        raise ValueError(f"temperature bounds must satisfy 0 < low < 1 < high, got {bounds!r}")
    f = _ScaledNLL(z, y)
    before = f(1.0)
    from scipy.optimize import minimize_scalar  # only the fit needs it; readers of a report do not

    res = minimize_scalar(lambda u: f(math.exp(u)), bounds=(math.log(lo), math.log(hi)), method="bounded",
                          options=dict(xatol=1e-6, maxiter=200))
    t, after = math.exp(float(res.x)), float(res.fun)
    if not after < before - 1e-12 * max(1.0, abs(before)):
        t, after = 1.0, before
    at_bound = t != 1.0 and (abs(math.log(t / lo)) < 1e-3 or abs(math.log(hi / t)) < 1e-3)
    return TemperatureFit(temperature=t, nll_before=before, nll_after=after, at_bound=bool(at_bound),
                          evaluations=f.calls)


# --------------------------------------------------------------------------- per class

def per_class_ece(logits: Any, labels: Any, *, bins: int = DEFAULT_BINS, temperature: float = 1.0,
                  by: str = "label", names: Optional[list[str]] = None) -> pd.DataFrame:
    """ECE within each class's images, worst first, with n; classes with no image are left out.

    ``by="label"`` groups the images by their true class (how well-founded the confidences on a sport's
    images are); ``by="pred"`` by the predicted class (what "the model says X with 90 %" is worth, the
    grouping one can use before the label is known). Columns: class_idx, [class], n, ece, confidence
    (mean), accuracy and gap (confidence - accuracy: above 0 overconfident).
    """
    if by not in ("label", "pred"):
        raise ValueError(f"by must be 'label' or 'pred', got {by!r}")
    z, y = check_logits(logits, labels)
    k = z.shape[1]
    if names is not None and len(names) != k:
        raise ValueError(f"names must list {k} classes (the logits' width), got {len(names)}")
    nb = _check_bins(bins)
    conf, pred = top1(np.exp(_log_softmax(z, _check_temperature(temperature))))
    right = (pred == y).astype(np.float64)
    group = y if by == "label" else pred
    cell = group * nb + bin_index(conf, nb)
    sum_c = np.bincount(cell, weights=conf, minlength=k * nb).reshape(k, nb)
    sum_a = np.bincount(cell, weights=right, minlength=k * nb).reshape(k, nb)
    n = np.bincount(group, minlength=k)
    keep = n > 0
    safe = np.maximum(n, 1)
    frame = pd.DataFrame({
        "class_idx": np.arange(k)[keep],
        "n": n[keep].astype(np.int64),
        # sum_b (n_b / n) |acc_b - conf_b| = sum_b |sum a - sum c| / n
        "ece": (np.abs(sum_a - sum_c).sum(axis=1) / safe)[keep],
        "confidence": (sum_c.sum(axis=1) / safe)[keep],
        "accuracy": (sum_a.sum(axis=1) / safe)[keep],
    })
    frame["gap"] = frame["confidence"] - frame["accuracy"]
    if names is not None:
        frame.insert(1, "class", [names[i] for i in frame["class_idx"]])
    return frame.sort_values(["ece", "n", "class_idx"], ascending=[False, False, True], kind="stable").reset_index(
        drop=True)


# --------------------------------------------------------------------------- the report

def split_metrics(logits: Any, labels: Any, *, temperature: float = 1.0, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """One split's entry of :func:`calibration_report` (keys :data:`SPLIT_KEYS`), ``temperature`` applied to
    the ``*_calibrated`` keys."""
    z, y = check_logits(logits, labels)
    nb = _check_bins(bins)
    rows = np.arange(len(y))
    out: dict[str, Any] = {"n": int(len(y))}
    for suffix, t in (("", 1.0), ("_calibrated", _check_temperature(temperature))):
        logp = _log_softmax(z, t)
        p = np.exp(logp)
        conf, pred = top1(p)
        b = reliability_bins(conf, pred == y, nb)
        out["ece" + suffix] = b.ece()
        out["nll" + suffix] = float(-logp[rows, y].mean())
        if not suffix:
            out["mce"] = b.mce()
            out["brier"] = _brier(p, y)
            out["bins"] = b.records()
    return {key: out[key] for key in SPLIT_KEYS}


def calibration_report(valid_logits: Any, valid_labels: Any, test_logits: Any = None, test_labels: Any = None,
                       bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Calibration of a run: the temperature fitted on valid, and per split the scores before and after it.

    Returns ``{"temperature": T, "valid": {...}, "test": {...}}`` (``test`` only when test logits are
    given); each split holds n, ece, mce, nll, brier (raw confidences), ece_calibrated, nll_calibrated
    (with T) and bins (the raw reliability bins: lo, hi, count, confidence, accuracy). JSON-safe: no NaN.
    """
    zv, yv = check_logits(valid_logits, valid_labels, what="valid logits")
    nb = _check_bins(bins)
    if (test_logits is None) != (test_labels is None):
        raise ValueError("test logits and test labels go together: got "
                         f"{'logits without labels' if test_labels is None else 'labels without logits'}")
    fit = fit_temperature(zv, yv)
    report: dict[str, Any] = {"temperature": fit.temperature,
                              "valid": split_metrics(zv, yv, temperature=fit.temperature, bins=nb)}
    if test_logits is not None:
        zt, yt = check_logits(test_logits, test_labels, what="test logits")
        if zt.shape[1] != zv.shape[1]:
            raise ValueError(f"test logits have {zt.shape[1]} classes, valid logits {zv.shape[1]}; expected the same")
        report["test"] = split_metrics(zt, yt, temperature=fit.temperature, bins=nb)
    return report
