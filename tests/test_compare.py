"""Comparing two runs (core.compare and its parts) on constructed runs whose answers are known."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, spearmanr

from core import figures_compare, mapdrift
from core.cammaps import StoredMaps, encode_maps
from core.compare import PER_CLASS_KEYS, RunInput, compare_runs
from core.pairstats import mcnemar_exact, paired_bootstrap, wilson
from core.runmatch import match_images, prepare

CLASSES = ["archery", "boxing", "curling", "diving", "fencing"]
JSON_KEYS = {"a", "b", "split", "matched", "only_a", "only_b", "right_to_wrong", "wrong_to_right", "wrong_both",
             "top1_a", "top1_b", "mcnemar_p", "per_class", "drift"}


def frame(labels, preds, *, first_id=1, relpaths=None, sha=None, split="test", classes=CLASSES):
    labels, preds = list(labels), list(preds)
    n = len(labels)
    return pd.DataFrame({
        "image_id": np.arange(first_id, first_id + n),
        "split": split,
        "relpath": relpaths if relpaths is not None else [f"{split}/{classes[l]}/{i:04d}.jpg" for i, l in enumerate(labels)],
        "sha256": sha if sha is not None else [f"{i:064x}" for i in range(n)],
        "label": labels,
        "pred": preds,
        "confidence": 0.8,
    })


def blob(cy, cx, size=14, sigma=2.0):
    yy, xx = np.mgrid[0:size, 0:size]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def loader(df: pd.DataFrame, cam_of, calls=None):
    """Maps as the store keeps them: a right image has its "pred" map only, a wrong one "pred" and "true"."""
    stored = {}
    for row in df.itertuples():
        label, pred = int(row.label), int(row.pred)
        targets, classes = (("pred",), (pred,)) if label == pred else (("pred", "true"), (pred, label))
        cams = np.stack([cam_of(row.image_id, t) for t in targets])
        stored[int(row.image_id)] = StoredMaps(int(row.image_id), "gradcam", targets, classes, cams.shape[1],
                                               cams.shape[2], tuple(encode_maps(c[None]) for c in cams))

    def load(ids):
        if calls is not None:
            calls.append(list(ids))
        return {i: stored[i] for i in ids if i in stored}
    return load


# Eleven images of each class; per class the same pattern of outcomes, so every count is known.
# (A right, B right): 4 both right, 3 right->wrong, 2 wrong->right, 1 wrong both same, 1 wrong both different
def known_runs():
    labels, pa, pb = [], [], []
    for c in range(5):
        o1, o2 = (c + 1) % 5, (c + 2) % 5
        labels += [c] * 11
        pa += [c] * 4 + [c] * 3 + [o1] * 2 + [o1] + [o1]
        pb += [c] * 4 + [o1] * 3 + [c] * 2 + [o1] + [o2]
    return frame(labels, pa), frame(labels, pb, first_id=101)


# --------------------------------------------------------------------------- counts and tests

def test_counts_and_top1_intervals():
    fa, fb = known_runs()
    r = compare_runs(RunInput("a", fa, CLASSES), RunInput("b", fb, CLASSES), resamples=200)
    j = r.to_json()
    assert (j["matched"], j["only_a"], j["only_b"]) == (55, 0, 0)
    assert (j["right_to_wrong"], j["wrong_to_right"]) == (15, 10)
    assert j["wrong_both"] == {"same": 5, "different": 5, "total": 10}
    assert j["top1_a"]["correct"] == 35 and j["top1_b"]["correct"] == 30 and j["top1_a"]["n"] == 55
    low, high = wilson(35, 55)
    assert j["top1_a"]["ci_low"] == pytest.approx(low) and j["top1_a"]["ci_high"] == pytest.approx(high)
    assert j["mcnemar_p"] == pytest.approx(binomtest(15, 25, 0.5).pvalue, rel=1e-12)
    assert "right on 10 images that A (a) got wrong and wrong on 15" in r.sentence
    assert {tuple(sorted(p)) for p in j["per_class"]} == {tuple(sorted(PER_CLASS_KEYS))}
    assert all(p["n"] == 11 and p["delta"] == pytest.approx(-1 / 11) for p in j["per_class"])


def test_wilson_known_values():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    assert all(np.isnan(wilson(0, 0)))


@pytest.mark.parametrize("b, c", [(0, 0), (31, 12), (5, 5), (0, 7), (1, 0), (100, 130), (400, 380)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-10, abs=1e-300)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="b=-1"):
        mcnemar_exact(-1, 3)


# --------------------------------------------------------------------------- bootstrap

def test_bootstrap_zero_width_when_every_pair_changes_alike():
    cls = np.repeat([0, 1, 2, 3], 20)
    ra = np.r_[np.ones(20), np.zeros(20), np.ones(20), np.tile([1, 0], 10)].astype(bool)
    rb = np.r_[np.ones(20), np.ones(20), np.zeros(20), np.tile([0, 1], 10)].astype(bool)
    ci = paired_bootstrap(cls, ra, rb, resamples=500, seed=3)
    assert ci[0] == (0.0, 0.0)       # right in both: no change anywhere
    assert ci[1] == (1.0, 1.0)       # every image gained
    assert ci[2] == (-1.0, -1.0)     # every image lost
    low, high = ci[3]                # mean change 0, but images move both ways: a real interval
    assert low < 0 < high


def test_bootstrap_known_effect_and_reproducible():
    cls = np.zeros(400, dtype=np.int64)
    ra = np.zeros(400, dtype=bool)
    rb = np.zeros(400, dtype=bool)
    rb[:120] = True                  # B gains 120 of 400: the change is exactly +0.3
    ci = paired_bootstrap(cls, ra, rb, resamples=2000, seed=1)[0]
    half = 1.96 * np.sqrt(0.3 * 0.7 / 400)
    assert ci[0] < 0.3 < ci[1] and ci[0] > 0
    assert (ci[1] - ci[0]) == pytest.approx(2 * half, rel=0.15)
    assert paired_bootstrap(cls, ra, rb, resamples=2000, seed=1)[0] == ci
    assert paired_bootstrap(cls, ra, rb, resamples=2000, seed=2)[0] != ci


def test_bootstrap_interval_covers_a_known_change_about_95_percent_of_the_time():
    # 300 classes, each an independent sample of 60 images from one population in which B gains an image
    # with probability 0.3 and loses one with probability 0.1: every class's true change is +0.2.
    rng = np.random.default_rng(7)
    cls = np.repeat(np.arange(300), 60)
    u = rng.random(cls.size)
    ra, rb = u < 0.1, (u >= 0.1) & (u < 0.4)
    ci = paired_bootstrap(cls, ra, rb, resamples=1000, seed=0)
    cover = np.mean([lo <= 0.2 <= hi for lo, hi in ci.values()])
    assert 0.88 <= cover <= 0.99


# --------------------------------------------------------------------------- drift

def test_drift_equal_shifted_unrelated():
    rng = np.random.default_rng(0)
    base = np.stack([blob(*rng.uniform(4, 9, 2)) + 0.05 * rng.random((14, 14), dtype=np.float32) for _ in range(50)])
    rho, iou = mapdrift.drift(base, base.copy())
    assert np.all(rho == 1.0) and np.all(iou == 1.0)
    shifted = np.roll(base, 1, axis=2)
    rho_s, iou_s = mapdrift.drift(base, shifted)
    unrelated = rng.random((50, 14, 14)).astype(np.float32)
    rho_u, iou_u = mapdrift.drift(base, unrelated)
    assert 0.5 < np.median(rho_s) < 1 and 0.4 < np.median(iou_s) < 1
    assert abs(np.median(rho_u)) < 0.2 and np.median(iou_u) < 0.25
    assert not mapdrift.looking_elsewhere(rho_s, iou_s).any()
    assert mapdrift.looking_elsewhere(rho_u, iou_u).mean() > 0.9


def test_spearman_with_ties_matches_scipy():
    rng = np.random.default_rng(1)
    x = np.round(rng.random((60, 49)) * rng.integers(1, 6, (60, 1))) / 5     # many ties, as a ReLU'd map has
    x[:5, :40] = 0
    y = np.round(rng.random((60, 49)) * 4) / 4
    expected = [spearmanr(u, v).statistic for u, v in zip(x, y)]
    assert np.allclose(mapdrift.spearman_rows(x, y), expected)


def test_drift_constant_map_is_nan_and_grids_are_reconciled():
    rho, iou = mapdrift.drift(np.zeros((1, 14, 14)), blob(7, 7)[None])
    assert np.isnan(rho[0]) and np.isnan(iou[0])
    coarse = blob(3, 10)
    fine = np.kron(coarse, np.ones((2, 2), dtype=np.float32))   # 28x28, its 2x2 means are the coarse map
    assert mapdrift.pair_drift(fine, coarse) == (1.0, 1.0)


def test_drift_in_comparison_per_target_and_flags():
    fa, fb = known_runs()
    pos = {i: ((7 * i) % 11, (3 * i) % 11) for i in range(1, 56)}
    moved = {101, 105, 110}     # image 1: right in both; 5: right->wrong; 10: wrong in both, same prediction

    def cam_a(i, target):
        return blob(*pos[i])

    def cam_b(i, target):
        j = i - 100
        return blob((pos[j][0] + 7) % 14, (pos[j][1] + 7) % 14) if i in moved else blob(*pos[j])

    calls = []
    r = compare_runs(RunInput("a", fa, CLASSES, loader(fa, cam_a, calls)), RunInput("b", fb, CLASSES, loader(fb, cam_b)),
                     resamples=50)
    assert calls == [list(range(1, 56))]          # one call with every matched image
    d = r.to_json()["drift"]
    assert d["true"]["n"] == 55 and d["true"]["spearman"] == 1.0 and d["true"]["iou"] == 1.0   # medians
    assert d["pred"]["n"] == 4 * 5 + 1 * 5         # both right, or wrong in both with the same prediction
    assert list(r.looking_elsewhere["image_id_a"]) == [1]
    assert list(r.flipped_and_moved["image_id_a"]) == [5]
    assert np.isnan(r.pairs.loc[r.pairs["image_id_a"] == 5, "iou_pred"]).all()   # predictions differ
    assert r.pairs.loc[r.pairs["image_id_a"] == 10, "iou_pred"].iloc[0] < 0.25


def test_maps_of_the_wrong_class_are_refused():
    fa, fb = known_runs()
    # B's maps explain the class after each image's label and prediction
    load_b = loader(fb.assign(label=(fb["label"] + 1) % 5, pred=(fb["pred"] + 1) % 5), lambda i, t: blob(5, 5))
    with pytest.raises(ValueError, match="explains class index"):
        compare_runs(RunInput("a", fa, CLASSES, loader(fa, lambda i, t: blob(5, 5))), RunInput("b", fb, CLASSES, load_b),
                     resamples=10)


# --------------------------------------------------------------------------- matching

def test_match_by_hash_when_paths_differ_and_by_path_without_hash():
    fa, fb = known_runs()
    fb = fb.assign(relpath=["moved/" + p for p in fb["relpath"]])
    r = compare_runs(RunInput("a", fa, CLASSES), RunInput("b", fb, CLASSES), resamples=10)
    assert r.matched == 55 and set(r.pairs["matched_by"]) == {"sha256"}
    fa2, fb2 = known_runs()
    fb2.loc[:9, "sha256"] = None                      # ten images of B without a hash: matched by path
    fb2.loc[10:14, "sha256"] = [f"{k:064x}" for k in range(900, 905)]   # same path, new content: not matched
    fb2 = fb2.drop(index=[20, 21])                    # two images that B lacks
    extra = frame([0], [0], first_id=500, sha=["e" * 64], relpaths=["test/archery/extra.jpg"])
    r2 = compare_runs(RunInput("a", fa2, CLASSES), RunInput("b", pd.concat([fb2, extra]), CLASSES), resamples=10)
    assert r2.pairs["matched_by"].value_counts().to_dict() == {"sha256": 38, "path": 10}
    assert sorted(r2.only_a["image_id"]) == [11, 12, 13, 14, 15, 21, 22]
    assert sorted(r2.only_b["image_id"]) == [111, 112, 113, 114, 115, 500]
    assert (r2.to_json()["only_a"], r2.to_json()["only_b"]) == (7, 6)


def test_copies_of_one_file_pair_in_path_order():
    a = prepare(frame([0, 0, 1], [0, 0, 1], sha=["a" * 64, "a" * 64, "b" * 64],
                      relpaths=["x/2.jpg", "x/1.jpg", "y/1.jpg"]), CLASSES, "test", "A")
    b = prepare(frame([0, 0], [0, 0], sha=["A" * 64, "a" * 64], relpaths=["z/9.jpg", "x/2.jpg"]), CLASSES, "test", "B")
    pairs, only_a, only_b = match_images(a, b)
    assert sorted(zip(pairs["ia"], pairs["ib"])) == [(0, 1), (1, 0)]   # same path first, then the other copy
    assert list(only_a) == [2] and list(only_b) == []


def test_different_class_lists_compare_on_shared_classes():
    fa, fb = known_runs()
    classes_b = ["diving", "boxing", "curling", "archery", "judo"]    # no fencing, a judo, another order
    to_b = {i: classes_b.index(c) if c in classes_b else 4 for i, c in enumerate(CLASSES)}
    fb = fb.assign(label=fb["label"].map(to_b), pred=fb["pred"].map(to_b))
    fb = fb[fb["label"] != 4]                                       # B has no fencing images
    names_a = fa.assign(label=fa["label"].map(dict(enumerate(CLASSES))), pred=fa["pred"].map(dict(enumerate(CLASSES))))
    r = compare_runs(RunInput("a", names_a, CLASSES), RunInput("b", fb, classes_b), resamples=10)
    assert r.classes == ["archery", "boxing", "curling", "diving"]
    assert r.classes_only_a == ["fencing"] and r.classes_only_b == ["judo"]
    assert r.matched == 44 and len(r.only_a) == 11
    # diving's mistakes in B point at fencing's index, i.e. judo in B's list: outside the shared classes
    assert r.pred_outside["b"] > 0 and r.confusion_b.shape == (4, 4)
    assert r.to_json()["right_to_wrong"] == 12 and r.to_json()["wrong_to_right"] == 8


def test_relabelled_images_are_listed_and_left_out():
    fa, fb = known_runs()
    fb.loc[0, "label"] = 3
    r = compare_runs(RunInput("a", fa, CLASSES), RunInput("b", fb, CLASSES), resamples=10)
    assert r.matched == 54 and list(r.relabelled["image_id_a"]) == [1]
    assert r.relabelled.iloc[0]["label_b"] == "diving"


# --------------------------------------------------------------------------- result as a whole

def test_self_comparison():
    fa, _ = known_runs()
    load = loader(fa, lambda i, t: blob(i % 14, (3 * i) % 14) + (0.5 if t == "true" else 0))
    run = RunInput("r", fa, CLASSES, load)
    r = compare_runs(run, run, resamples=100)
    j = r.to_json()
    assert j["right_to_wrong"] == j["wrong_to_right"] == 0 and j["mcnemar_p"] == 1.0
    assert all(j["drift"][t]["spearman"] == 1.0 and j["drift"][t]["iou"] == 1.0 for t in ("true", "pred"))
    assert all(p["delta"] == p["ci_low"] == p["ci_high"] == 0 for p in j["per_class"])
    assert not r.confusion_delta.any() and r.changed_cells().empty
    assert "exactly the same images" in r.sentence


def test_json_keys_order_and_serialisable():
    fa, fb = known_runs()
    fb.loc[fb["label"] == 2, "pred"] = 2        # B now right on every curling image
    r = compare_runs(RunInput("a", fa, CLASSES), RunInput("b", fb, CLASSES), resamples=300, seed=4)
    j = r.to_json()
    assert set(j) == JSON_KEYS
    deltas = [p["delta"] for p in j["per_class"]]
    assert deltas == sorted(deltas) and j["per_class"][-1]["class"] == "curling"
    assert j["per_class"][-1]["ci_low"] > 0
    full = json.loads(json.dumps(r.to_json(details=True)))
    assert set(JSON_KEYS) < set(full) and full["summary"] == r.sentence
    assert len(full["right_to_wrong_images"]) == j["right_to_wrong"]


def test_confusion_change_cells():
    fa, fb = known_runs()
    r = compare_runs(RunInput("a", fa, CLASSES), RunInput("b", fb, CLASSES), resamples=10)
    # per class c: A predicts c+1 on 4 images; B on 3 + 1 = 4, and c+2 on 1
    assert r.confusion_a[0, 1] == 4 and r.confusion_b[0, 1] == 4 and r.confusion_delta[0, 2] == 1
    assert np.trace(r.confusion_delta) == 30 - 35
    cells = r.changed_cells()
    assert list(cells.columns) == ["true", "pred", "a", "b", "delta"] and (cells["delta"] == 1).all()
    assert len(cells) == 5


def test_no_shared_image_is_one_line():
    fa, fb = known_runs()
    fb = fb.assign(sha256=[f"{k:064x}" for k in range(1000, 1055)])
    with pytest.raises(ValueError, match="share no image on split 'test'") as err:
        compare_runs(RunInput("a", fa, CLASSES), RunInput("b", fb, CLASSES))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns="pred"), "lack columns"),
    (lambda f: f.assign(label=7), "outside the 5 classes"),
    (lambda f: f.assign(label="karate"), "not in the class list"),
    (lambda f: f.assign(split="valid"), "no predictions on split 'test'"),
    (lambda f: pd.concat([f, f.head(1)]), "twice"),
])
def test_bad_input_names_what_was_expected(change, message):
    fa, fb = known_runs()
    with pytest.raises(ValueError, match=message):
        compare_runs(RunInput("a", fa, CLASSES), RunInput("b", change(fb), CLASSES), resamples=10)


def test_inputs_are_not_changed():
    fa, fb = known_runs()
    before = fa.copy(), fb.copy()
    compare_runs(RunInput("a", fa, CLASSES), RunInput("b", fb, CLASSES), resamples=10)
    pd.testing.assert_frame_equal(fa, before[0])
    pd.testing.assert_frame_equal(fb, before[1])


# --------------------------------------------------------------------------- figures

def test_figures():
    fa, fb = known_runs()
    fb.loc[fb["label"] == 2, "pred"] = 2
    r = compare_runs(RunInput("a", fa, CLASSES), RunInput("b", fb, CLASSES), resamples=100)
    fig = figures_compare.per_class_change(r.per_class, a="a", b="b")
    trace = fig.data[0]
    assert list(trace.y)[-1] == "curling" and trace.error_x.array is not None
    assert np.allclose(np.asarray(trace.x), r.per_class["delta"] * 100)
    heat = figures_compare.confusion_change_heatmap(r.confusion_delta, r.classes)
    assert heat.data[0].zmid == 0 and heat.data[0].zmax == -heat.data[0].zmin
    with pytest.raises(ValueError, match="does not match 5 class names"):
        figures_compare.confusion_change_heatmap(r.confusion_delta[:3, :3], r.classes)
