"""core.calibration against reference implementations, and on the inputs that tend to break it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import sklearn
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import brier_score_loss, log_loss

from core import calibration as cal
from core import figures_calibration as figs


def generated(n: int, k: int, seed: int = 0, scale: float = 2.5, boost: float = 2.0):
    """Logits where the label's logit gets a boost, so accuracy sits well between chance and 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(scale=scale, size=(n, k))
    z[np.arange(n), y] += boost
    return z, y


def sampled_labels(z: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One label per row, drawn from softmax(z / temperature)."""
    p = cal.softmax(z, temperature)
    return (p.cumsum(axis=1) > rng.random(len(z))[:, None]).argmax(axis=1)


# --------------------------------------------------------------------------- references

@pytest.mark.parametrize("n,k,bins,seed", [(2000, 10, 15, 0), (500, 100, 10, 1), (3000, 3, 20, 2), (50, 5, 15, 3)])
def test_ece_and_mce_equal_torchmetrics(n, k, bins, seed):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    z, y = generated(n, k, seed)
    conf, pred = cal.top1(cal.softmax(z))
    # torchmetrics gives a confidence of exactly 1 a bin of its own; ours joins the last bin. Keep clear of it.
    assert conf.max() < 1.0 - 1e-6
    ece = cal.expected_calibration_error(conf, pred == y, bins)
    mce = cal.maximum_calibration_error(conf, pred == y, bins)
    zt, yt = torch.tensor(z, dtype=torch.float32), torch.tensor(y)
    ref_ece = tm.MulticlassCalibrationError(num_classes=k, n_bins=bins, norm="l1")(zt, yt).item()
    ref_mce = tm.MulticlassCalibrationError(num_classes=k, n_bins=bins, norm="max")(zt, yt).item()
    assert ece > 0.01  # a miscalibrated model, so the comparison means something
    assert ece == pytest.approx(ref_ece, abs=2e-6)
    assert mce == pytest.approx(ref_mce, abs=2e-6)
    report = cal.split_metrics(z, y, bins=bins)
    assert report["ece"] == pytest.approx(ref_ece, abs=2e-6) and report["mce"] == pytest.approx(ref_mce, abs=2e-6)


@pytest.mark.parametrize("n,k,seed", [(1000, 10, 0), (300, 100, 1), (400, 3, 2), (200, 2, 3)])
def test_nll_and_brier_equal_scikit_learn(n, k, seed):
    z, y = generated(n, k, seed)
    p = cal.softmax(z)
    labels = np.arange(k)
    assert cal.nll(z, y) == pytest.approx(log_loss(y, p, labels=labels), rel=1e-9)
    assert cal.split_metrics(z, y)["nll"] == pytest.approx(log_loss(y, p, labels=labels), rel=1e-9)
    if tuple(int(x) for x in sklearn.__version__.split(".")[:2]) < (1, 7):
        pytest.skip("multi-class brier_score_loss needs scikit-learn >= 1.7")
    ref = brier_score_loss(y, p, labels=labels, scale_by_half=False)
    assert cal.brier(p, y) == pytest.approx(ref, rel=1e-9)
    assert cal.split_metrics(z, y)["brier"] == pytest.approx(ref, rel=1e-9)
    if k > 2:  # scikit-learn's default keeps the [0, 2] range for more than two classes
        assert cal.brier(p, y) == pytest.approx(brier_score_loss(y, p, labels=labels), rel=1e-9)


def test_softmax_is_stable_and_matches_scipy():
    z, _ = generated(200, 7)
    np.testing.assert_allclose(cal.softmax(z), scipy_softmax(z, axis=1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cal.softmax(z, 2.0), scipy_softmax(z / 2.0, axis=1), rtol=1e-12, atol=1e-15)
    big = np.array([[1e300, 0.0, -1e300]])
    np.testing.assert_allclose(cal.softmax(big), [[1.0, 0.0, 0.0]])


@pytest.mark.parametrize("t_true", [0.6, 1.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(t_true):
    rng = np.random.default_rng(7)
    z = rng.normal(scale=4.0, size=(50_000, 10))
    y = sampled_labels(z, t_true, rng)
    fit = cal.fit_temperature(z, y)
    assert fit.temperature == pytest.approx(t_true, rel=0.02)
    assert fit.nll_after < fit.nll_before and not fit.at_bound


def test_temperature_scaling_improves_a_miscalibrated_test_split():
    rng = np.random.default_rng(3)
    z = rng.normal(scale=4.0, size=(6000, 20))
    y = sampled_labels(z, 2.0, rng)  # the logits are twice too sharp
    report = cal.calibration_report(z[:3000], y[:3000], z[3000:], y[3000:])
    assert report["temperature"] == pytest.approx(2.0, rel=0.1)
    test = report["test"]
    assert test["ece_calibrated"] < test["ece"] / 2 and test["nll_calibrated"] < test["nll"]


# --------------------------------------------------------------------------- the report's shape

def test_report_shape_and_bins():
    z, y = generated(900, 12)
    report = cal.calibration_report(z[:400], y[:400], z[400:], y[400:], bins=10)
    assert set(report) == {"temperature", "valid", "test"}
    for split, n in (("valid", 400), ("test", 500)):
        s = report[split]
        assert list(s) == list(cal.SPLIT_KEYS) and s["n"] == n
        assert len(s["bins"]) == 10 and sum(b["count"] for b in s["bins"]) == n
        assert [b["lo"] for b in s["bins"]] == pytest.approx(np.linspace(0, 0.9, 10))
        assert s["bins"][-1]["hi"] == 1.0
        for b in s["bins"]:
            assert set(b) == {"lo", "hi", "count", "confidence", "accuracy"}
            if b["count"]:
                assert b["lo"] <= b["confidence"] <= b["hi"] and 0 <= b["accuracy"] <= 1
        weighted = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in s["bins"] if b["count"]) / n
        assert s["ece"] == pytest.approx(weighted)
    assert report["valid"]["nll_calibrated"] <= report["valid"]["nll"] + 1e-12
    json.dumps(report, allow_nan=False)
    only_valid = cal.calibration_report(z[:400], y[:400], bins=10)
    assert set(only_valid) == {"temperature", "valid"} and only_valid["valid"] == report["valid"]


def test_confidence_of_one_joins_the_last_bin_and_empty_bins_are_null():
    bins = cal.reliability_bins([1.0, 0.999, 0.05], [True, False, True], bins=10)
    assert bins.count.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    records = bins.records()
    assert records[1]["confidence"] is None and records[1]["accuracy"] is None
    assert records[-1]["confidence"] == pytest.approx(0.9995) and records[-1]["accuracy"] == 0.5
    assert bins.mce() == pytest.approx(0.95)


@pytest.mark.parametrize("case", ["one class", "all correct", "one image", "float16 large", "ties"])
def test_degenerate_inputs_give_defined_numbers(case):
    rng = np.random.default_rng(0)
    if case == "one class":
        z, y = rng.normal(size=(30, 1)), np.zeros(30, dtype=int)
    elif case == "all correct":
        z = rng.normal(size=(40, 5))
        y = z.argmax(axis=1)
    elif case == "one image":
        z, y = np.array([[2.0, 1.0, 0.0]]), np.array([1])
    elif case == "float16 large":
        z = (rng.choice([-1.0, 1.0], size=(50, 8)) * 65000).astype(np.float16)
        y = rng.integers(0, 8, 50)
    else:  # every logit equal: the NLL does not depend on T
        z, y = np.zeros((20, 4)), rng.integers(0, 4, 20)
    before = np.array(z, copy=True)
    report = cal.calibration_report(z, y, z, y)
    np.testing.assert_array_equal(z, before)  # inputs not changed in place
    text = json.dumps(report, allow_nan=False)  # raises on NaN or infinity
    assert "NaN" not in text
    s = report["valid"]
    assert 0 <= s["ece"] <= 1 and 0 <= s["mce"] <= 1 and 0 <= s["brier"] <= 2 and s["nll"] >= 0
    assert np.isfinite(report["temperature"]) and report["temperature"] > 0
    if case == "one class":
        assert (report["temperature"], s["ece"], s["nll"], s["brier"]) == (1.0, 0.0, 0.0, 0.0)
    if case == "ties":
        assert report["temperature"] == 1.0 and s["nll"] == pytest.approx(np.log(4))
    if case == "one image":
        assert s["ece"] == pytest.approx(cal.softmax(z).max())  # confident and wrong
    if case == "all correct":
        assert s["ece"] == pytest.approx(1 - cal.softmax(z).max(axis=1).mean())
        assert report["temperature"] < 1  # sharper is always better when every answer is right
    per_class = cal.per_class_ece(z, y)
    assert per_class["ece"].between(0, 1).all() and per_class["n"].sum() == len(y)


@pytest.mark.parametrize("bad,message", [
    (dict(valid_logits=None), "valid logits are missing"),
    (dict(valid_logits=np.zeros((0, 3)), valid_labels=np.zeros(0, dtype=int)), "at least one"),
    (dict(valid_labels=np.array([0, 5])), "must lie in 0..2"),
    (dict(valid_labels=np.array([0])), r"shape \(2,\)"),
    (dict(valid_logits=np.array([[0.0, np.nan, 1.0], [0, 0, 0]])), "must be finite"),
    (dict(test_logits=np.zeros((2, 3))), "go together"),
    (dict(test_logits=np.zeros((2, 4)), test_labels=np.array([0, 1])), "4 classes"),
    (dict(bins=0), "bins must be"),
])
def test_bad_input_names_what_was_got(bad, message):
    args = dict(valid_logits=np.zeros((2, 3)), valid_labels=np.array([0, 1]), test_logits=None, test_labels=None,
                bins=15)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        cal.calibration_report(**args)


# --------------------------------------------------------------------------- per class

@pytest.mark.parametrize("by", ["label", "pred"])
def test_per_class_ece_equals_ece_of_each_group(by):
    z, y = generated(600, 6, seed=4)
    table = cal.per_class_ece(z, y, bins=10, by=by, names=[f"c{i}" for i in range(6)])
    conf, pred = cal.top1(cal.softmax(z))
    group = y if by == "label" else pred
    for row in table.itertuples():
        mask = group == row.class_idx
        assert row.n == mask.sum() and row[2] == f"c{row.class_idx}"
        assert row.ece == pytest.approx(cal.expected_calibration_error(conf[mask], (pred == y)[mask], 10))
        assert row.gap == pytest.approx(conf[mask].mean() - (pred == y)[mask].mean())
    assert table["ece"].is_monotonic_decreasing


def test_per_class_ece_leaves_out_classes_without_images():
    z, _ = generated(10, 5)
    table = cal.per_class_ece(z, np.array([0, 0, 1, 1, 1, 3, 3, 3, 3, 3]))
    assert sorted(table["class_idx"]) == [0, 1, 3] and table.set_index("class_idx")["n"].to_dict() == {0: 2, 1: 3, 3: 5}


# --------------------------------------------------------------------------- figures

def test_figures_build_with_the_expected_traces():
    z, y = generated(800, 10)
    report = cal.calibration_report(z[:400], y[:400], z[400:], y[400:])
    conf, pred = cal.top1(cal.softmax(z[400:]))
    conf2, pred2 = cal.top1(cal.softmax(z[400:], 2.0))
    scaled = cal.reliability_bins(conf2, pred2 == y[400:]).records()
    fig = figs.reliability_diagram(report["test"]["bins"], calibrated=scaled, title="test")
    names = [t.name for t in fig.data]
    assert names == ["perfect calibration", "accuracy (95% interval)", "mean confidence",
                     "after temperature scaling", "images per bin"]
    filled = [b for b in report["test"]["bins"] if b["count"]]
    from core.intervals import wilson_interval
    acc = np.array([b["accuracy"] for b in filled])
    lo, hi = wilson_interval(np.rint(acc * [b["count"] for b in filled]).astype(int), [b["count"] for b in filled])
    np.testing.assert_allclose(acc + np.asarray(fig.data[1].error_y.array), hi)  # each bin's Wilson interval
    np.testing.assert_allclose(acc - np.asarray(fig.data[1].error_y.arrayminus), lo)
    assert list(fig.data[-1].y) == [b["count"] for b in filled] == [int(t) for t in fig.data[-1].text]
    hist = figs.confidence_split_histogram(conf, pred == y[400:])
    right = int((pred == y[400:]).sum())
    assert [t.name for t in hist.data] == [f"right, n={right}", f"wrong, n={400 - right}"]
    assert sum(hist.data[0].y) == right and sum(hist.data[1].y) == 400 - right
    table = cal.per_class_ece(z, y, names=[f"sport {i}" for i in range(10)])
    bars = figs.per_class_ece_bars(table, top=5)
    assert list(bars.data[0].x) == list(table["ece"].head(5)) and bars.data[0].text[0].startswith("n=")
    both = figs.ece_before_after(report)
    assert [list(t.y) for t in both.data] == [[report["valid"]["ece"], report["test"]["ece"]],
                                             [report["valid"]["ece_calibrated"], report["test"]["ece_calibrated"]]]


def test_figures_of_nothing_say_so():
    assert figs.reliability_diagram([]).layout.annotations[0].text == "no predictions"
    assert figs.confidence_split_histogram([], []).layout.annotations[0].text == "no predictions"
    assert figs.ece_before_after({}).layout.annotations[0].text == "no calibration report"
