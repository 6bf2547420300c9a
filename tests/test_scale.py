"""Large runs: the store's aggregates against pandas on the same rows, the plans that use the indexes, the
index step for older stores, the cell bootstrap, and every page (and bench.scale) on a 1,000-class store."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from bench import scale as bench_scale
from core.counts import binned_confidence_histogram, bootstrap_f1_cells, class_intervals, expand_confusion
from core.intervals import bootstrap_f1
from dashboard import confusion_large
from db import queries
from db.builder_large import build_large_store
from db.queries import scale as q
from db.store import make_engine, make_sessionmaker

INDEXES = ("ix_predictions_run_confidence", "ix_predictions_run_pred")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """1,000 classes, 1 train + 1 valid + 1 test image each: 2,000 predictions with logits and maps."""
    return build_large_store(tmp_path_factory.mktemp("big"), n_classes=1000, train_per_class=1, eval_per_class=1,
                             files=20, error_rate=0.3)


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    return build_large_store(tmp_path_factory.mktemp("mid"), n_classes=30, train_per_class=20, eval_per_class=15,
                             files=20, error_rate=0.3, seed=3)


def session(url):
    return make_sessionmaker(make_engine(url, readonly=True))()


def test_aggregates_match_the_predictions_frame(mid):
    with session(mid.url) as s:
        preds = queries.predictions_frame(s, mid.run_id)
        counts = q.split_counts(s, mid.run_id)
        cm = q.confusion_counts(s, mid.run_id, 30, ("valid",))
        bins = q.confidence_bins(s, mid.run_id, 10)
        errors = queries.errors_frame(s, mid.run_id, splits=["test"], pred_classes=[4, 5], confidence=(0.2, 0.9))
        page = q.errors_page(s, mid.run_id, splits=("test",), pred_classes=(4, 5), confidence=(0.2, 0.9),
                             offset=2, limit=3)
        n = q.errors_count(s, mid.run_id, splits=("test",), pred_classes=(4, 5), confidence=(0.2, 0.9))
        pair = q.pair_images(s, mid.run_id, 3, 4, limit=50)
    assert list(counts["split"]) == ["valid", "test"]  # train images have no predictions
    by = preds.groupby("split")
    assert counts.set_index("split")["predictions"].to_dict() == by.size().to_dict()
    assert counts.set_index("split")["correct"].to_dict() == by.apply(lambda f: int((f.label == f.pred).sum())).to_dict()
    v = preds[preds["split"] == "valid"]
    want = np.zeros((30, 30), np.int64)
    np.add.at(want, (v["label"], v["pred"]), 1)
    assert (cm == want).all()
    want_bins = np.minimum((preds["confidence"] * 10).astype(int), 9)
    assert bins["n"].sum() == len(preds)
    assert bins.groupby("bin")["n"].sum().to_dict() == want_bins.value_counts().to_dict()
    assert n == len(errors) and n > 3
    assert page["image_id"].tolist() == errors["image_id"].tolist()[2:5]
    assert set(pair["image_id"]) == set(preds.loc[(preds.label == 3) & (preds.pred == 4), "image_id"])


def test_plans_use_the_indexes(mid):
    with session(mid.url) as s:
        counts = " ".join(q.query_plan(s, q.pair_counts_select(mid.run_id)))
        page = " ".join(q.query_plan(s, q.errors_page_select(mid.run_id, offset=50)))
        by_pred = " ".join(q.query_plan(s, q.errors_page_select(mid.run_id, pred_classes=(3,))))
    assert "predictions USING COVERING INDEX ix_predictions_run_pred" in counts
    assert "images USING INTEGER PRIMARY KEY" in counts and "SCAN" not in counts
    assert "ix_predictions_run_confidence" in page and "SCAN" not in page
    assert "ix_predictions_run_pred (run_id=? AND pred=?" in by_pred


def test_an_older_store_gets_the_new_indexes_on_open(mid, tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(mid.url[len("sqlite:///"):]) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
        for name in INDEXES:
            dst.execute(f"DROP INDEX {name}")
    make_engine(f"sqlite:///{path}", readonly=True).dispose()  # the dashboard adds nothing
    with sqlite3.connect(path) as con:
        assert not {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")} & set(INDEXES)
    make_engine(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as con:
        assert set(INDEXES) <= {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_cell_bootstrap_agrees_with_the_image_bootstrap():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 12, 3000)
    p = np.where(rng.random(3000) < 0.7, y, rng.integers(0, 12, 3000))
    cm = np.zeros((12, 12), np.int64)
    np.add.at(cm, (y, p), 1)
    ey, ep = expand_confusion(cm)
    assert len(ey) == 3000 and (np.bincount(ey * 12 + ep, minlength=144).reshape(12, 12) == cm).all()
    cells, images = bootstrap_f1_cells(cm, seed=0), bootstrap_f1(y, p, 12, seed=0)
    assert np.allclose(cells.f1, images.f1) and cells.macro == pytest.approx(images.macro)
    assert np.abs(cells.lo - images.lo).max() < 0.03 and np.abs(cells.hi - images.hi).max() < 0.03
    assert cells.macro_lo < cells.macro < cells.macro_hi
    table, _ = class_intervals(cm, [f"c{i}" for i in range(12)])
    assert ((table["f1_lo"] <= table["f1"]) & (table["f1"] <= table["f1_hi"])).all()
    with pytest.raises(ValueError, match="square"):
        bootstrap_f1_cells(np.ones((2, 3)))


def test_binned_histogram_stacks_the_counts():
    counts = pd.DataFrame({"bin": [0, 19, 19], "correct": [False, True, False], "n": [3, 5, 2]})
    fig = binned_confidence_histogram(counts, bins=20)
    right, wrong = fig.data
    assert right.y[19] == 5 and wrong.y[19] == 2 and wrong.y[0] == 3 and sum(right.y) == 5


def test_groups_csv_is_checked():
    names = ("air hockey", "archery", "curling")
    assert confusion_large.parse_groups(b"class,group\narchery,target\ncurling,ice\n", names) == {
        "archery": "target", "curling": "ice"}
    with pytest.raises(ValueError, match="rows \\[2\\]"):
        confusion_large.parse_groups(b"archery,target\nbowling,alley\n", names)


def test_every_page_at_1000_classes(big):
    """bench.scale's own page walk, at its CI size: every page renders and shows what it should."""
    rows = bench_scale.measure_pages(big.url, repeat=1)
    assert [r["page"] for r in rows] == [p[0] for p in bench_scale.PAGES]
    assert all(r["cold"] > 0 and r["warm"] > 0 for r in rows)


def test_confusion_page_at_1000_classes_draws_the_raster(big, monkeypatch):
    monkeypatch.setenv("SPORTS_DB", big.url)
    at = AppTest.from_file(str(bench_scale.HOME), default_timeout=120)
    at.switch_page("views/confusion.py").run()
    assert not at.exception
    raster = [c for c in at.get("plotly_chart") if '"type":"image"' in c.proto.spec.replace(" ", "")]
    assert raster, "the 1,000-class page should draw the raster"
    assert "all 1000 classes" in " ".join(c.value for c in at.caption)
    at.radio(key="cm_view").set_value("top-N most confused").run()
    assert not at.exception and "the 50 classes with the most mistakes" in " ".join(c.value for c in at.caption)
    at.radio(key="cm_view").set_value("search").run()
    at.text_input(key="cm_search").set_value("sport 12").run()
    assert not at.exception and "matching 'sport 12'" in " ".join(c.value for c in at.caption)
    assert "image" in " ".join(m.value for m in at.markdown)  # the chosen pair's images below


def test_gallery_pages_through_sql(big, monkeypatch):
    monkeypatch.setenv("SPORTS_DB", big.url)
    at = AppTest.from_file(str(bench_scale.HOME), default_timeout=120)
    at.switch_page("views/gallery.py").run()
    with session(big.url) as s:
        n = q.errors_count(s, big.run_id)
        second = q.errors_page(s, big.run_id, offset=25, limit=25)
    assert f"**{n:,}** misclassified images match" in " ".join(m.value for m in at.markdown)
    at.number_input(key="gal_page").set_value(2).run()
    assert not at.exception
    assert "Showing 26–50" in " ".join(c.value for c in at.caption) and len(second) == 25
