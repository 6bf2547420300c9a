"""Suspect labels: given labels that out-of-sample predicted probabilities disagree with.

Suspect labels come from confident learning (``cleanlab``) on *out-of-sample* predicted probabilities:
the probabilities of a model that never trained on those images. In this project those are the
``valid`` and ``test`` predictions of the trained model; its ``train`` predictions are in-sample (the
model has fitted, possibly memorised, those labels), so a mislabelled training image tends to get a
confident vote for its wrong label and would not be flagged. Train probabilities may be used only when
they come from cross-validation (each fold predicted by a model trained on the other folds); pass their
split in ``prob_splits`` then.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SUSPECT_MIN_EXAMPLES = 20  # fewer out-of-sample rows than this: self-confidence fallback
SUSPECT_MAX_SELF_CONF = 0.1  # fallback: flag an image whose given label gets less than this

SUSPECT_COLUMNS = ["index", "given_label", "given_prob", "pred_label", "pred_prob", "method"]


def find_suspect_labels(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    min_examples: int = SUSPECT_MIN_EXAMPLES,
    max_self_confidence: float = SUSPECT_MAX_SELF_CONF,
) -> pd.DataFrame:
    """Images whose given label the (out-of-sample) probabilities disagree with, most suspect first.

    ``labels``: (N,) class indices; ``pred_probs``: (N, C) rows summing to 1, out of sample (see the module
    docstring). Uses ``cleanlab.filter.find_label_issues`` ranked by self-confidence (the probability of the
    given label). With fewer than ``min_examples`` rows or fewer than two distinct labels, where confident
    learning's per-class thresholds cannot be estimated, or if cleanlab rejects the input, it falls back to
    flagging rows whose self-confidence is below ``max_self_confidence`` and whose top class is another,
    ranked the same way. Classes absent from ``labels`` are allowed: cleanlab cannot flag an image whose
    predicted class nobody is labelled with, so such images are added by the same self-confidence rule.
    The ``method`` column says which rule flagged each row. Columns: index (row in the input), given_label, given_prob, pred_label, pred_prob, method.
    """
    labels = np.asarray(labels)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if pred_probs.ndim != 2 or labels.shape != (len(pred_probs),):
        raise ValueError(f"expected labels (N,) and pred_probs (N, C); got {labels.shape} and {pred_probs.shape}")
    if len(labels) == 0:
        return pd.DataFrame(columns=SUSPECT_COLUMNS)
    n_classes = pred_probs.shape[1]
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be integers in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    if not np.allclose(pred_probs.sum(axis=1), 1.0, atol=1e-3) or (pred_probs < 0).any():
        raise ValueError("pred_probs rows must be probabilities summing to 1 (apply softmax first)")

    self_conf = pred_probs[np.arange(len(labels)), labels]
    top = pred_probs.argmax(axis=1)
    low = (self_conf < max_self_confidence) & (top != labels)
    issues, method = None, np.array([], dtype=object)
    if len(labels) >= min_examples and len(np.unique(labels)) >= 2:
        from cleanlab.filter import find_label_issues

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "too few examples in class k": handled below
                issues = np.asarray(
                    find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence"), dtype=int
                )
        except (ValueError, ZeroDivisionError) as e:
            log.warning("cleanlab could not rank these labels (%s); using self-confidence", e)
    if issues is None:
        issues = np.flatnonzero(low)
        method = np.full(len(issues), "self_confidence", dtype=object)
    else:
        # confident learning has no threshold for a class nobody is labelled with, so an image the model
        # puts in such a class is never flagged by it: add those by the self-confidence rule
        absent = ~np.isin(top, labels)
        extra = np.setdiff1d(np.flatnonzero(low & absent), issues)
        method = np.array(["cleanlab"] * len(issues) + ["self_confidence"] * len(extra), dtype=object)
        issues = np.concatenate([issues, extra]).astype(int)
    order = np.argsort(self_conf[issues], kind="stable")
    issues, method = issues[order], method[order]
    pred = pred_probs[issues].argmax(axis=1)
    return pd.DataFrame(
        {
            "index": issues,
            "given_label": labels[issues].astype(int),
            "given_prob": self_conf[issues],
            "pred_label": pred.astype(int),
            "pred_prob": pred_probs[issues, pred],
            "method": method.astype(str),
        },
        columns=SUSPECT_COLUMNS,
    )
