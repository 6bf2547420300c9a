"""What the Calibration page draws of a split, from logits, from a stored report, or from counts.

``core.calibration`` computes the scores (ECE, MCE, NLL, Brier) from logits. A large run's page cannot
decode 100,000 logit vectors of 1,000 classes to draw a figure, so the three things it draws besides the
scores are kept in forms that stay small for any number of images:

- **reliability bins** (``core.calibration.Bins``) after temperature scaling, as records;
- the **right/wrong confidence histogram**: per equal-width bin of the top-1 confidence, the right and the
  wrong predictions, with the mean confidence of each (``hist_counts``);
- **per-class ECE** as columns (class_idx, n, ece, confidence, accuracy), one entry per class with images.

``split_figures`` makes them from logits, raw and after temperature scaling; ``jobs.calibrate`` stores
them with its report (``figures`` in the stored JSON), so the page reads them back whatever the run's size.
For a run not calibrated yet, ``bins_from_cells`` and ``per_class_from_cells`` make the raw ones from
counts the store aggregates per (split, class, bin, right/wrong): the number of images and the sum of
their stored confidences, which is all that ECE needs (``sum_b |sum a - sum c| / n``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from core.calibration import (
    Bins,
    _check_bins,
    _check_temperature,
    _log_softmax,
    bin_edges,
    bin_index,
    check_logits,
    per_class_ece,
    reliability_bins,
    top1,
)

HIST_BINS = 20
PER_CLASS_COLUMNS = ["class_idx", "n", "ece", "confidence", "accuracy"]
CELL_COLUMNS = ["split", "label", "bin", "correct", "n", "confidence_sum"]
RAW, CALIBRATED = "raw", "calibrated"
FIGURES = "figures"  # the key of split_figures per split in a stored calibration report


def hist_counts(confidence: Any, correct: Any, bins: int = HIST_BINS) -> dict[str, Any]:
    """Right and wrong predictions per equal-width confidence bin (the last one closed), their numbers and
    mean confidences: the JSON form ``core.figures_calibration.confidence_histogram_counts`` draws."""
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if c.ndim != 1 or ok.shape != c.shape:
        raise ValueError(f"confidence and correct must be 1-D of one length, got shapes {c.shape} and {ok.shape}")
    idx = bin_index(c, _check_bins(bins))
    out: dict[str, Any] = {"bins": int(bins)}
    for name, mask in (("right", ok), ("wrong", ~ok)):
        out[name] = np.bincount(idx[mask], minlength=bins).astype(np.int64).tolist()
        out[f"{name}_mean"] = float(c[mask].mean()) if mask.any() else None
    return out


def _columns(table: pd.DataFrame) -> dict[str, list]:
    return {c: table[c].tolist() for c in PER_CLASS_COLUMNS}


def split_figures(logits: Any, labels: Any, *, temperature: float = 1.0, bins: int = 15,
                  hist_bins: int = HIST_BINS) -> dict[str, Any]:
    """What the page draws of one split besides its scores: ``correct`` (top-1 right), ``bins_calibrated``
    (reliability records after ``temperature``), ``hist`` and ``per_class`` each as ``{"raw": ..,
    "calibrated": ..}`` (see the module). JSON-safe."""
    z, y = check_logits(logits, labels)
    nb = _check_bins(bins)
    t = _check_temperature(temperature)
    out: dict[str, Any] = {"n": int(len(y)), "hist": {}, "per_class": {}}
    for name, temp in ((RAW, 1.0), (CALIBRATED, t)):
        conf, pred = top1(np.exp(_log_softmax(z, temp)))
        right = pred == y
        if name == RAW:
            out["correct"] = int(right.sum())
        else:
            out["bins_calibrated"] = reliability_bins(conf, right, nb).records()
        out["hist"][name] = hist_counts(conf, right, hist_bins)
        out["per_class"][name] = _columns(per_class_ece(z, y, bins=nb, temperature=temp))
    return out


def per_class_table(columns: Mapping[str, Sequence], names: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The stored per-class columns as ``core.calibration.per_class_ece`` returns them: with ``class``
    (when ``names`` are given) and ``gap``, worst ECE first."""
    missing = [c for c in PER_CLASS_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"per-class columns lack {missing}; expected {PER_CLASS_COLUMNS}")
    frame = pd.DataFrame({c: list(columns[c]) for c in PER_CLASS_COLUMNS})
    frame["class_idx"] = frame["class_idx"].astype(np.int64)
    frame["n"] = frame["n"].astype(np.int64)
    frame["gap"] = frame["confidence"] - frame["accuracy"]
    if names is not None:
        if len(frame) and frame["class_idx"].max() >= len(names):
            raise ValueError(f"class index {int(frame['class_idx'].max())} but only {len(names)} names")
        frame.insert(1, "class", [names[i] for i in frame["class_idx"]])
    return frame.sort_values(["ece", "n", "class_idx"], ascending=[False, False, True], kind="stable").reset_index(
        drop=True)


# --------------------------------------------------------------------------- from counts

def _check_cells(cells: pd.DataFrame, bins: int) -> pd.DataFrame:
    missing = [c for c in CELL_COLUMNS[1:] if c not in cells.columns]
    if missing:
        raise ValueError(f"cells lack columns {missing}; expected {CELL_COLUMNS[1:]}")
    if len(cells) and (cells["bin"].min() < 0 or cells["bin"].max() >= bins):
        raise ValueError(f"cell bins must lie in 0..{bins - 1}, got {cells['bin'].min()}..{cells['bin'].max()}")
    return cells


def bins_from_cells(cells: pd.DataFrame, bins: int) -> Bins:
    """Reliability bins of the images counted in ``cells`` (one split: columns bin, correct, n,
    confidence_sum, any others summed over)."""
    nb = _check_bins(bins)
    c = _check_cells(cells, nb)
    b = c["bin"].to_numpy(dtype=np.int64)
    n = c["n"].to_numpy(dtype=np.float64)
    count = np.bincount(b, weights=n, minlength=nb)
    safe = np.maximum(count, 1)
    conf = np.bincount(b, weights=c["confidence_sum"].to_numpy(dtype=np.float64), minlength=nb) / safe
    acc = np.bincount(b, weights=n * c["correct"].to_numpy(dtype=np.float64), minlength=nb) / safe
    edges = bin_edges(nb)
    return Bins(lo=edges[:-1].copy(), hi=edges[1:].copy(), count=count.astype(np.int64), confidence=conf,
                accuracy=acc)


def per_class_from_cells(cells: pd.DataFrame, n_classes: int, bins: int,
                         names: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """``per_class_table`` of the images counted in ``cells`` (one split), by true class."""
    nb = _check_bins(bins)
    c = _check_cells(cells, nb)
    lab = c["label"].to_numpy(dtype=np.int64)
    if len(lab) and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(f"cell labels must lie in 0..{n_classes - 1}")
    cell = lab * nb + c["bin"].to_numpy(dtype=np.int64)
    n = c["n"].to_numpy(dtype=np.float64)
    sum_c = np.bincount(cell, weights=c["confidence_sum"].to_numpy(dtype=np.float64),
                        minlength=n_classes * nb).reshape(n_classes, nb)
    sum_a = np.bincount(cell, weights=n * c["correct"].to_numpy(dtype=np.float64),
                        minlength=n_classes * nb).reshape(n_classes, nb)
    count = np.bincount(lab, weights=n, minlength=n_classes)
    keep = count > 0
    safe = np.maximum(count, 1)
    columns = {"class_idx": np.arange(n_classes)[keep], "n": count[keep].astype(np.int64),
               "ece": (np.abs(sum_a - sum_c).sum(axis=1) / safe)[keep],
               "confidence": (sum_c.sum(axis=1) / safe)[keep], "accuracy": (sum_a.sum(axis=1) / safe)[keep]}
    return per_class_table(columns, names)


def hist_from_bin_counts(counts: pd.DataFrame, cells: pd.DataFrame, bins: int = HIST_BINS) -> dict[str, Any]:
    """``hist_counts`` from the store's counts: ``counts`` per (bin of ``bins``, correct) with n, as
    ``db.queries.scale.confidence_bins`` gives them for one split; the means from ``cells`` (any binning)."""
    out: dict[str, Any] = {"bins": int(bins)}
    for name, right in (("right", True), ("wrong", False)):
        part = counts[counts["correct"] == right].groupby("bin")["n"].sum()
        y = np.zeros(bins, dtype=np.int64)
        y[part.index.to_numpy(dtype=np.int64)] = part.to_numpy(dtype=np.int64)
        out[name] = y.tolist()
        mine = cells[cells["correct"] == right]
        k = float(mine["n"].sum())
        out[f"{name}_mean"] = float(mine["confidence_sum"].sum()) / k if k else None
    return out
