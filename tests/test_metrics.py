"""core.metrics: the computations on stored results, checked against scikit-learn and by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_recall_fscore_support

from core import metrics


@pytest.mark.parametrize("n, k, seed", [(0, 3, 0), (1, 1, 1), (40, 5, 2), (200, 12, 3), (7, 9, 4)])
def test_per_class_metrics_equal_scikit_learn(n, k, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))  # some classes never predicted
    names = [f"c{i}" for i in range(k)]
    df = metrics.per_class_metrics(labels, preds, names).sort_values("class_idx")
    if n:
        p, r, f, s = precision_recall_fscore_support(labels, preds, labels=np.arange(k), zero_division=0)
    else:
        p = r = f = np.zeros(k)
        s = np.zeros(k, dtype=np.int64)
    assert np.array_equal(df["precision"].to_numpy(), p) and np.array_equal(df["recall"].to_numpy(), r)
    assert np.array_equal(df["f1"].to_numpy(), f) and np.array_equal(df["support"].to_numpy(), s)
    assert df["predicted"].sum() == n and list(df["class"]) == names


def test_per_class_metrics_worst_first_and_checked():
    df = metrics.per_class_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    assert list(df["class"]) == ["c", "b", "a"]  # f1 0, 0.5 (tie broken by support), 0.667
    with pytest.raises(ValueError, match=r"preds must be class indices in 0..2, got values 0..3"):
        metrics.per_class_metrics(np.array([0, 1]), np.array([0, 3]), ["a", "b", "c"])
    assert metrics.per_class_metrics(np.array([]), np.array([]), []).empty


def test_confused_pairs_by_hand():
    cm = np.array([[5, 3, 0], [1, 4, 0], [0, 2, 6]])
    pairs = metrics.confused_pairs(cm, ["a", "b", "c"])
    assert list(zip(pairs["true"], pairs["predicted"], pairs["count"])) == [("a", "b", 3), ("c", "b", 2), ("b", "a", 1)]
    assert pairs["reverse_count"].tolist() == [1, 0, 3]
    assert pairs["share_of_true"].iloc[0] == pytest.approx(3 / 8)
    assert metrics.confused_pairs(np.eye(3, dtype=int), ["a", "b", "c"]).empty


def test_logits_round_trip_and_range():
    v = np.array([-3.5, 0.0, 12.25, 1e6])
    data = metrics.encode_logits(v)
    assert len(data) == 8
    back = metrics.decode_logits(data, 4)
    assert back.dtype == np.float32 and back[:3].tolist() == [-3.5, 0.0, 12.25] and back[3] == 65504.0
    with pytest.raises(ValueError, match="must be 6 bytes, got 8"):
        metrics.decode_logits(data, 3)
    with pytest.raises(ValueError, match="finite"):
        metrics.encode_logits(np.array([np.nan, 1.0]))


def test_trust_summary_names_the_method_that_beats_the_baselines():
    frame = pd.DataFrame({
        "image_id": [1, 1, 2, 2], "target": ["pred"] * 4, "label": [0, 0, 1, 1],
        "method": ["layercam", "random", "layercam", "random"],
        "deletion_auc": [0.1, 0.5, 0.6, 0.4], "insertion_auc": [0.9, 0.2, 0.3, 0.5],
    })
    s = metrics.trust_summary(frame, "pred", method="layercam")
    assert s["n_images"] == 2 and s["methods"]["random"]["n"] == 2
    assert s["gradcam_beats"]["random"] == {"deletion": 0.5, "insertion": 0.5}
    assert metrics.trust_summary(frame, "pred")["gradcam_beats"] == {}  # no gradcam rows: nothing to compare
    per_class = metrics.trust_per_class(frame, ["a", "b"], "pred", method="layercam")
    assert per_class["beats_random"].tolist() == [1.0, 0.0]


def test_top5_to_probs_spreads_the_rest_evenly():
    p = metrics.top5_to_probs([[2, 0], [1, 2]], [[0.7, 0.2], [0.5, 0.5]], 4)
    assert p.shape == (2, 4) and abs(p.sum(1) - 1).max() < 1e-12
    assert p[0].tolist() == pytest.approx([0.2, 0.05, 0.7, 0.05]) and p[1, 0] == p[1, 3] == 0.0
