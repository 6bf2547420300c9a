"""Tests of core.audit on generated images with planted duplicates, leaks and label problems."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench.audit import PLANT_KINDS, make_planted_set
from core.audit import (
    ImageRef,
    accuracy_without_leakage,
    audit,
    find_suspect_labels,
    hash_images,
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_set(
        tmp_path_factory.mktemp("planted"), 40, copies_per_kind=2, n_lookalikes=6, n_conflicts=1, seed=3
    )


@pytest.fixture(scope="module")
def report(planted):
    return audit(planted.root, planted.images)


def _found(report) -> set[tuple[int, int]]:
    return set(zip(report.pairs["i"].tolist(), report.pairs["j"].tolist()))


def test_planted_set_covers_within_and_across_splits(planted):
    cross = [planted.images[a].split != planted.images[b].split for a, b in planted.duplicates]
    assert any(cross) and not all(cross)
    assert sorted(set(planted.duplicates.values())) == sorted(PLANT_KINDS)


@pytest.mark.parametrize("kind", PLANT_KINDS)
def test_every_planted_duplicate_is_found(planted, report, kind):
    expected = {tuple(sorted(p)) for p, k in planted.duplicates.items() if k == kind}
    assert expected and expected <= _found(report)
    pairs = report.pairs.set_index(["i", "j"])
    for p in expected:
        row = pairs.loc[p]
        assert row["kind"] == ("exact" if kind in ("bytes", "pixels") else "near")
        assert 0.0 <= row["score"] <= 1.0


def test_nothing_but_planted_pairs_reported(planted, report):
    truth = {tuple(sorted(p)) for p in planted.duplicates}
    assert _found(report) == truth
    for a, b in planted.lookalikes:
        assert tuple(sorted((a, b))) not in _found(report)


def test_groups_are_the_planted_pairs(planted, report):
    truth = {tuple(sorted(p)): k for p, k in planted.duplicates.items()}
    assert len(report.groups) == len(truth)
    for g in report.groups:
        assert len(g.members) == 2
        kind = truth[tuple(g.members)]
        assert g.kind == ("exact" if kind in ("bytes", "pixels") else "near")
        assert 0.9 <= g.score <= 1.0
        if g.kind == "exact":
            assert g.score == 1.0


def test_leakage_lists_later_split_copies_with_their_original(planted, report):
    order = {"train": 0, "valid": 1, "test": 2}
    expected = set()
    for a, b in planted.duplicates:
        sa, sb = order[planted.images[a].split], order[planted.images[b].split]
        if sa != sb:
            expected.add((b, a) if sb > sa else (a, b))
    assert {(lk.index, lk.other) for lk in report.leakage} == expected
    frame = report.to_frames()["leakage"]
    assert len(frame) == len(expected)
    assert (frame["split"].map(order) > frame["other_split"].map(order)).all()


def test_conflicting_labels(planted, report):
    assert len(report.conflicts) == len(planted.conflicts) == 1
    assert set(report.conflicts[0].members) == set(planted.conflicts[0])
    assert len(report.conflicts[0].label_counts) == 2


def test_json_and_frames(planted, report):
    doc = json.loads(report.to_json())
    assert len(doc["groups"]) == len(report.groups)
    g = doc["groups"][0]
    assert {"kind", "score", "members"} <= set(g)
    assert {"relpath", "split", "label"} <= set(g["members"][0])
    frames = report.to_frames()
    assert set(frames) == {"groups", "pairs", "leakage", "conflicts", "suspects", "skipped"}
    assert len(frames["groups"]) == sum(len(g.members) for g in report.groups)
    assert report.stats["n_readable"] == len(planted.images)


def test_threads_give_the_same_hashes(planted):
    one = hash_images(planted.root, planted.images[:20])
    two = hash_images(planted.root, planted.images[:20], workers=2)
    assert one.sha1 == two.sha1 and one.pixel_sha1 == two.pixel_sha1
    assert np.array_equal(one.phash, two.phash) and np.array_equal(one.thumbs, two.thumbs)


def test_embeddings_veto_near_pairs(planted):
    hashes = hash_images(planted.root, planted.images)
    emb = np.eye(len(planted.images), dtype=np.float32)  # every image unlike every other
    rep = audit(planted.root, planted.images, hashes=hashes, embeddings=emb)
    assert set(rep.pairs["kind"]) == {"exact"}  # exact pairs are never vetoed
    assert len(rep.pairs) == sum(k in ("bytes", "pixels") for k in planted.duplicates.values())


def test_unreadable_and_missing_files_are_reported(tmp_path):
    ps = make_planted_set(tmp_path, 4, copies_per_kind=1, n_lookalikes=0, n_conflicts=0, seed=1)
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "train" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    images = [*ps.images, ImageRef("train", "train/broken.jpg", 0), ImageRef("valid", "valid/missing.jpg", 1)]
    rep = audit(tmp_path, images)
    assert [i for i, _ in rep.skipped] == [len(images) - 2, len(images) - 1]
    skipped = rep.to_frames()["skipped"]
    assert list(skipped["relpath"]) == ["train/broken.jpg", "valid/missing.jpg"]
    assert all(isinstance(r, str) and r for r in skipped["reason"])
    assert {tuple(sorted(p)) for p in ps.duplicates} <= set(zip(rep.pairs["i"], rep.pairs["j"]))
    assert json.loads(rep.to_json())["skipped"][0]["relpath"] == "train/broken.jpg"


def test_accuracy_without_leakage_hand_built():
    preds = pd.DataFrame(
        {
            "split": ["valid"] * 4 + ["test"] * 3,
            "relpath": ["v0", "v1", "v2", "v3", "t0", "t1", "t2"],
            "label": [0, 1, 2, 0, 1, 1, 2],
            "pred": [0, 1, 0, 1, 1, 0, 2],
        }
    )
    # valid: 2/4 right; v0 and v1 leak (both right) -> clean 0/2. test: 2/3; t1 leaks (wrong) -> 2/2.
    leaked = pd.DataFrame({"split": ["valid", "valid", "test"], "relpath": ["v0", "v1", "t1"]})
    table = accuracy_without_leakage(preds, leaked).set_index("split")
    assert list(table.index) == ["valid", "test"]
    assert table.loc["valid", "accuracy"] == pytest.approx(0.5)
    assert table.loc["valid", "accuracy_clean"] == pytest.approx(0.0)
    assert table.loc["valid", "n_leaked"] == 2 and table.loc["valid", "n_clean"] == 2
    assert table.loc["test", "accuracy"] == pytest.approx(2 / 3)
    assert table.loc["test", "accuracy_clean"] == pytest.approx(1.0)
    assert table.loc["test", "change"] == pytest.approx(1 / 3)
    # same leak given as tuples; a leak key of another split does not count
    again = accuracy_without_leakage(preds, [("valid", "v0"), ("valid", "v1"), ("train", "t1")])
    assert again.set_index("split").loc["test", "n_leaked"] == 0
    with pytest.raises(ValueError, match="columns"):
        accuracy_without_leakage(preds.drop(columns="pred"), leaked)


def _probs(labels: np.ndarray, n_classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(n_classes), len(labels)) * 0.2
    p[np.arange(len(labels)), labels] += 0.8
    return p / p.sum(axis=1, keepdims=True)


def test_suspect_labels_rank_the_planted_mislabel_first():
    labels = np.repeat(np.arange(4), 15)
    p = _probs(labels, 4)
    p[7] = [0.01, 0.02, 0.95, 0.02]  # labelled 0, the model is sure it is class 2
    p[20] = [0.3, 0.4, 0.2, 0.1]  # labelled 1, uncertain but agrees
    out = find_suspect_labels(labels, p)
    assert out["method"].iloc[0] == "cleanlab"
    assert out.iloc[0][["index", "given_label", "pred_label"]].tolist() == [7, 0, 2]
    assert out.iloc[0]["given_prob"] == pytest.approx(0.01)
    assert out.iloc[0]["pred_prob"] == pytest.approx(0.95)
    assert 20 not in set(out["index"])


@pytest.mark.parametrize("n", [1, 3, 8])
def test_suspect_labels_tiny_sample_falls_back(n):
    labels = np.zeros(n, dtype=int)
    p = _probs(labels, 5)
    p[n - 1] = [0.02, 0.9, 0.04, 0.02, 0.02]
    out = find_suspect_labels(labels, p)
    assert list(out["index"]) == [n - 1]
    assert set(out["method"]) == {"self_confidence"}


def test_suspect_labels_with_classes_missing_from_the_sample():
    labels = np.repeat([0, 2, 4], 10)  # classes 1 and 3 never given
    p = _probs(labels, 5)
    p[12] = [0.01, 0.01, 0.02, 0.95, 0.01]
    out = find_suspect_labels(labels, p)
    assert out.iloc[0]["index"] == 12 and out.iloc[0]["pred_label"] == 3
    assert out.iloc[0]["method"] == "self_confidence"  # cleanlab cannot flag into an absent class


def test_suspect_labels_reject_bad_input():
    with pytest.raises(ValueError, match="labels must be integers"):
        find_suspect_labels(np.array([0, 5]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="summing to 1"):
        find_suspect_labels(np.array([0, 1]), np.ones((2, 3)))
    assert find_suspect_labels(np.zeros(0, int), np.zeros((0, 3))).empty


def test_audit_uses_only_out_of_sample_probabilities(planted):
    images = planted.images
    labels = np.array([r.label for r in images])
    p = _probs(labels, 5)
    train = [i for i, r in enumerate(images) if r.split == "train"]
    held = [i for i, r in enumerate(images) if r.split != "train"]
    wrong = np.roll(np.eye(5), 1, axis=1)[labels]  # put all mass on another class
    p[train[0]] = wrong[train[0]] * 0.99 + 0.002  # in-sample: must be ignored
    p[held[0]] = wrong[held[0]] * 0.99 + 0.002
    rep = audit(planted.root, images, pred_probs=p)
    assert rep.suspects.iloc[0]["index"] == held[0]
    assert train[0] not in set(rep.suspects["index"])
    assert set(rep.suspects["index"]) <= set(held)
    with pytest.raises(ValueError, match="pred_probs must have shape"):
        audit(planted.root, images, pred_probs=p[:3])
