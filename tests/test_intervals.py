"""core.intervals: Wilson against statsmodels, the bootstrap against a plain loop, the worst-first order."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from core import intervals as iv


def predictions(n: int, k: int, accuracy: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < accuracy, y, rng.integers(0, k, n))
    return y, p


# --------------------------------------------------------------------------- Wilson

@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_wilson_equals_statsmodels(alpha):
    sm = pytest.importorskip("statsmodels.stats.proportion")
    n = np.array([1, 1, 2, 5, 5, 5, 10, 37, 100, 100, 1000, 14500])
    k = np.array([0, 1, 1, 0, 4, 5, 3, 20, 40, 100, 999, 11600])
    lo, hi = iv.wilson_interval(k, n, iv.z_for(1 - alpha))
    ref_lo, ref_hi = sm.proportion_confint(k, n, alpha=alpha, method="wilson")
    np.testing.assert_allclose(lo, ref_lo, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hi, ref_hi, rtol=1e-10, atol=1e-12)
    for kk, nn, a, b in zip(k, n, lo, hi):  # the scalar form gives the same floats
        assert iv.wilson_interval(int(kk), int(nn), iv.z_for(1 - alpha)) == (a, b)


def test_wilson_edges_and_the_issue_example():
    assert iv.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = iv.wilson_interval(4, 5)
    assert (round(lo, 2), round(hi, 2)) == (0.38, 0.96)  # "4 of 5": about 38 % to 96 %
    assert iv.wilson_interval(0, 10)[0] == 0.0 and iv.wilson_interval(10, 10)[1] == 1.0
    wide, narrow = iv.wilson_interval(5, 10, z=2.58), iv.wilson_interval(5, 10, z=1.0)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    for bad in [dict(k=3, n=2), dict(k=-1, n=2), dict(k=1, n=2, z=0.0)]:
        with pytest.raises(ValueError):
            iv.wilson_interval(**bad)
    with pytest.raises(ValueError, match="level"):
        iv.z_for(1.0)


def test_accuracy_and_top5_rates():
    y = np.array([0, 1, 2, 3, 4])
    acc = iv.accuracy_rate(y, np.array([0, 1, 2, 3, 0]))
    assert (acc.k, acc.n, acc.value) == (4, 5, 0.8) and (acc.lo, acc.hi) == iv.wilson_interval(4, 5)
    assert "4 of 5" in str(acc) and acc.as_dict()["hi"] == acc.hi
    ranked = np.array([[0, 1], [2, 1], [0, 1], [3, 4], [0, 1]])
    assert iv.top_k_rate(y, ranked).k == 3
    assert iv.accuracy_rate(np.array([], dtype=int), np.array([], dtype=int)).as_dict() == dict(
        value=0.0, k=0, n=0, lo=0.0, hi=1.0, level=0.95)
    with pytest.raises(ValueError, match="ranked must have shape"):
        iv.top_k_rate(y, ranked[:3])
    with pytest.raises(ValueError, match="one length"):
        iv.accuracy_rate(y, y[:2])


# --------------------------------------------------------------------------- bootstrap

def test_bootstrap_equals_a_plain_loop_over_the_same_resamples():
    y, p = predictions(300, 7, 0.6, seed=1)
    got = iv.bootstrap_f1(y, p, 7, resamples=200, seed=5, chunk_elements=10**9)  # one chunk: the same draws
    idx = np.random.default_rng(5).integers(0, len(y), size=(200, len(y)), dtype=np.int32)
    per = np.array([f1_score(y[i], p[i], labels=np.arange(7), average=None, zero_division=0) for i in idx])
    np.testing.assert_allclose(got.lo, np.quantile(per, 0.025, axis=0))
    np.testing.assert_allclose(got.hi, np.quantile(per, 0.975, axis=0))
    np.testing.assert_allclose(got.f1, f1_score(y, p, labels=np.arange(7), average=None, zero_division=0))
    assert got.macro == pytest.approx(f1_score(y, p, average="macro"))
    macro = per.mean(axis=1)
    assert (got.macro_lo, got.macro_hi) == pytest.approx(tuple(np.quantile(macro, [0.025, 0.975])))


def test_bootstrap_is_seeded_and_chunking_keeps_its_meaning():
    y, p = predictions(2000, 20, 0.7, seed=2)
    a = iv.bootstrap_f1(y, p, 20, resamples=400, seed=1)
    b = iv.bootstrap_f1(y, p, 20, resamples=400, seed=1)
    c = iv.bootstrap_f1(y, p, 20, resamples=400, seed=1, chunk_elements=5000)
    np.testing.assert_array_equal(a.lo, b.lo)
    assert np.all(a.lo <= a.f1 + 1e-12) and np.all(a.f1 <= a.hi + 1e-12)
    np.testing.assert_allclose(a.lo, c.lo, atol=0.05)  # other draws, the same distribution
    assert a.macro_lo < a.macro < a.macro_hi and a.macro_hi - a.macro_lo < 0.06


def test_bootstrap_macro_ignores_classes_absent_from_the_split():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0, 1, 1, 1, 1])
    r = iv.bootstrap_f1(y, p, 5, resamples=300)
    assert r.macro == pytest.approx(np.mean(f1_score(y, p, labels=[0, 1], average=None)))
    assert np.all(r.f1[2:] == 0) and np.all(r.lo[2:] == 0) and np.all(r.hi[2:] == 1)  # 0 of 0: nothing known
    with pytest.raises(ValueError, match="n_classes"):
        iv.bootstrap_f1(y, p, 1)


def test_macro_interval_holds_its_value_with_many_small_classes():
    # 100 classes of 3 images: a resample leaves about 5 % of them out; they must not count as zeros
    y = np.repeat(np.arange(100), 3)
    p = np.where(np.random.default_rng(4).random(300) < 0.7, y, (y + 1) % 100)
    r = iv.bootstrap_f1(y, p, 100, resamples=500, seed=2, chunk_elements=10**9)
    assert r.macro_lo < r.macro < r.macro_hi
    idx = np.random.default_rng(2).integers(0, 300, size=(500, 300), dtype=np.int32)
    macro = [f1_score(y[i], p[i], labels=np.unique(y[i]), average="macro", zero_division=0) for i in idx]
    assert (r.macro_lo, r.macro_hi) == pytest.approx(tuple(np.quantile(macro, [0.025, 0.975])))


# --------------------------------------------------------------------------- per-class table and order

def test_per_class_table_matches_scikit_learn_and_flags_few_images():
    y, p = predictions(400, 9, 0.6, seed=3)
    y[:5], p[:5] = 8, 8
    y[y == 8] = 7
    y[:3] = 8  # class 8 keeps 3 images
    names = [f"sport {i}" for i in range(9)]
    table = iv.per_class_table(y, p, names, resamples=200)
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=np.arange(9), zero_division=0)
    np.testing.assert_allclose(table["precision"], prec)
    np.testing.assert_allclose(table["recall"], rec)
    np.testing.assert_allclose(table["f1"], f1)
    assert table["n"].tolist() == support.tolist() and table["class"].tolist() == names
    lo, hi = iv.wilson_interval(table["tp"], table["n"])
    np.testing.assert_allclose(table["recall_lo"], lo)
    np.testing.assert_allclose(table["recall_hi"], hi)
    assert table["few"].tolist() == [n < 10 for n in support] and table.loc[8, "few"]
    assert (table["f1_lo"] <= table["f1"] + 1e-12).all() and (table["f1"] <= table["f1_hi"] + 1e-12).all()


def test_worst_first_by_upper_bound_ranks_a_tiny_class_below_a_measured_one():
    # class 0: 0 of 1 right; class 1: 40 of 100 right; class 2: 90 of 100 right
    y = np.array([0] + [1] * 100 + [2] * 100)
    p = np.array([2] + [1] * 40 + [2] * 60 + [2] * 90 + [1] * 10)
    table = iv.per_class_table(y, p, ["tiny", "middling", "good"], resamples=200)
    assert iv.worst_first(table, by="recall")["class"].tolist() == ["tiny", "middling", "good"]
    assert iv.worst_first(table, by="recall", upper=True)["class"].tolist() == ["middling", "tiny", "good"]
    assert iv.worst_first(table, by="f1", upper=True)["class"].iloc[0] == "middling"
    # no hit: every resample gives F1 = 0, so the upper end comes from the Wilson ends of precision and recall
    tiny = table.set_index("class").loc["tiny"]
    assert (tiny["f1"], tiny["f1_lo"]) == (0.0, 0.0)
    r_hi, p_hi = iv.wilson_interval(0, 1)[1], 1.0  # recall 0 of 1; precision 0 of 0 (never predicted)
    assert tiny["f1_hi"] == pytest.approx(2 * r_hi * p_hi / (r_hi + p_hi))
    assert "upper end" in iv.ordering_note("recall", upper=True) and "fewer than 10" in iv.ordering_note()
    with pytest.raises(ValueError, match="by must be one of"):
        iv.worst_first(table, by="accuracy")


def test_a_class_without_a_miss_keeps_an_honest_lower_end():
    y = np.array([0] * 5 + [1] * 200)
    p = np.array([0] * 5 + [1] * 150 + [2] * 50)  # class 0: 5 of 5, nothing else called 0
    r = iv.bootstrap_f1(y, p, 3, resamples=500)
    assert r.f1[0] == 1.0 and r.hi[0] == 1.0
    assert r.lo[0] == pytest.approx(iv.wilson_interval(5, 5)[0])  # not the collapsed [1, 1]
