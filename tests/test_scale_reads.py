"""A large run's pages read what they show: every statement a page sends is recorded (a SQLAlchemy event) and
its SQLite plan checked (no scan of a run's images or predictions, no logit read); the reads that replaced
whole-run loads (images by id, Previous/Next, the logits coverage, calibration from counts) against the
frames they replaced; and the figures the Calibration page now draws from counts or from the stored report
against the same figures computed from the logits."""
from __future__ import annotations

import re
import sqlite3
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from bench import scale as bench_scale
from core import calibration as cal
from core import calibration_views as views
from core.figures_calibration import confidence_histogram_counts, confidence_split_histogram
from dashboard import calibration_ui, calibration_view, scale_ui
from db import queries
from db.builder_large import build_large_store
from db.models import Prediction
from db.queries import scale as q
from db.queries.calibration import calibration_for, logits_coverage, missing_logits
from db.store import make_engine, make_sessionmaker
from jobs.calibrate import calibrate_run

N_CLASSES = 40
RUN_TABLES = ("images", "predictions", "cam_maps")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """40 classes x (5 train + 15 valid + 15 test): 1,200 predictions with logits, not calibrated."""
    return build_large_store(tmp_path_factory.mktemp("plain"), n_classes=N_CLASSES, train_per_class=5,
                             eval_per_class=15, files=10, error_rate=0.3, seed=4)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    built = build_large_store(tmp_path_factory.mktemp("calibrated"), n_classes=N_CLASSES, train_per_class=5,
                              eval_per_class=15, files=10, error_rate=0.3, seed=5)
    with make_sessionmaker(make_engine(built.url, create=False)).begin() as s:
        calibrate_run(s, built.run_id)
    return built


def session(url):
    return make_sessionmaker(make_engine(url, readonly=True))()


def path_of(url: str) -> str:
    return url[len("sqlite:///"):]


@contextmanager
def recorded():
    """Every statement any engine sends while the block runs, with its parameters."""
    seen: list[tuple[str, tuple]] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, tuple(parameters or ())))

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", before)


def run_reads(url: str, seen) -> list[tuple[str, list[str], tuple]]:
    """The SELECTs among ``seen`` that touch a run's rows, each with its SQLite plan and parameters."""
    out = []
    with sqlite3.connect(path_of(url)) as con:
        for stmt, params in seen:
            if not stmt.lstrip().upper().startswith("SELECT") or not re.search(r"\b(images|predictions|cam_maps)\b", stmt):
                continue
            plan = [r[-1] for r in con.execute("EXPLAIN QUERY PLAN " + stmt, params).fetchall()]
            out.append((stmt, plan, params))
    return out


def assert_reads_what_it_shows(url: str, seen) -> list[tuple[str, list[str], tuple]]:
    reads = run_reads(url, seen)
    assert reads, "the page read nothing of the run"
    for stmt, plan, params in reads:
        steps = " | ".join(plan)
        for table in RUN_TABLES:  # no scan, but of the partial index of rows without logits (nearly empty)
            assert not re.search(rf"\bSCAN {table}\b(?! USING (COVERING )?INDEX ix_predictions_run_no_logits)",
                                 steps), (stmt, steps)
        assert "ix_images_run_split" not in steps, (stmt, steps)  # would walk every image of the run
        # the run's logits are never read: a statement that selects them reads one image by its key (the shown
        # image's details); elsewhere the only mention is the partial index's "logits IS NULL"
        if re.search(r"predictions\.logits(?!\s+IS\s+NULL)", stmt):
            assert all("PRIMARY KEY" in step for step in plan) and len(params) <= 30, (stmt, steps)
    return reads


def as_large(monkeypatch) -> None:
    """The pages as they are at 1.3M images: above every size where a page still reads a small run whole;
    and no read cached by an earlier test, so that each page's own reads are seen."""
    st.cache_data.clear()
    monkeypatch.setattr(calibration_view, "LOGITS_UP_TO", 0)
    monkeypatch.setattr(calibration_ui, "WHOLE_RUN_UP_TO", 0)
    monkeypatch.setattr(scale_ui, "EXACT_BOOTSTRAP_UP_TO", 0)


def app(url: str, monkeypatch, page: str | None = None, **state) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(bench_scale.HOME), default_timeout=120)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --------------------------------------------------------------------------- pages

@pytest.mark.parametrize("store", ["plain", "calibrated"])
@pytest.mark.parametrize("page", ["views/overview.py", "views/gallery.py", "views/compare.py", "views/confusion.py",
                                  "views/export.py", "views/calibration.py", "views/data_issues.py"])
def test_pages_of_a_large_run_read_only_what_they_show(store, page, request, monkeypatch):
    """Raw and calibrated (the sidebar switch starts on for a calibrated run)."""
    built = request.getfixturevalue(store)
    as_large(monkeypatch)
    monkeypatch.setenv("SPORTS_DB", built.url)
    at = AppTest.from_file(str(bench_scale.HOME), default_timeout=120)
    with recorded() as seen:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert_reads_what_it_shows(built.url, seen)
    assert at.sidebar.toggle(key="sb_calibrated").value == (store == "calibrated")


def test_a_large_calibrated_run_shows_calibrated_numbers_of_what_it_shows(calibrated, monkeypatch):
    as_large(monkeypatch)
    with session(calibrated.url) as s:
        stored = calibration_for(s, calibrated.run_id)
        errors = queries.errors_frame(s, calibrated.run_id)
        logits = queries.logits_for(s, calibrated.run_id, N_CLASSES)
    second = int(errors["image_id"].iloc[1])
    row = int(np.flatnonzero(logits.frame["image_id"].to_numpy() == second)[0])
    p = cal.softmax(logits.logits[row:row + 1], stored.temperature)[0]
    at = app(calibrated.url, monkeypatch, "views/compare.py", image=second)
    (head,) = [m.value for m in at.markdown if " · true **" in m.value]
    assert f"at {p[int(logits.frame['pred'].iloc[row])]:.1%} calibrated" in head
    assert f"Image 2 of {len(errors)} in the gallery's current filter." in [c.value for c in at.caption]
    at.button(key="cmp_next").click().run()
    assert at.session_state["image"] == int(errors["image_id"].iloc[2])
    # the gallery's list stays in the store, in the raw order, and says so
    at = app(calibrated.url, monkeypatch, "views/gallery.py")
    assert any("the list filters and orders on the stored confidences" in c.value for c in at.caption)
    shown = [c.value for c in at.caption if c.value.startswith("true:")]
    assert f"({errors['confidence'].iloc[0]:.0%})" in shown[0]
    # the overview's histogram: the calibrated counts the calibration stored
    at = app(calibrated.url, monkeypatch)
    assert any("valid and test as the calibration stored them" in c.value for c in at.caption)


def test_gallery_tiles_name_only_the_shown_images(plain, monkeypatch):
    monkeypatch.setenv("SPORTS_DB", plain.url)
    at = AppTest.from_file(str(bench_scale.HOME), default_timeout=120)
    with recorded() as seen:
        at.switch_page("views/gallery.py").run()
    assert not at.exception
    hashes = [(s, p) for s, p in seen if "images.sha256" in s]
    assert hashes, "the tiles' review popovers read the shown images"
    for stmt, params in hashes:
        assert "IN (" in stmt and len(params) <= 25, stmt  # one page of ids, not the run's images
    with sqlite3.connect(path_of(plain.url)) as con:
        plan = [r[-1] for r in con.execute("EXPLAIN QUERY PLAN " + hashes[0][0], hashes[0][1])]
    assert plan == ["SEARCH images USING INTEGER PRIMARY KEY (rowid=?)"]


def test_calibration_page_of_a_large_calibrated_run_draws_the_stored_report(calibrated, monkeypatch):
    as_large(monkeypatch)
    monkeypatch.setenv("SPORTS_DB", calibrated.url)
    at = AppTest.from_file(str(bench_scale.HOME), default_timeout=120)
    with recorded() as seen:
        at.switch_page("views/calibration.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert_reads_what_it_shows(calibrated.url, seen)
    with session(calibrated.url) as s:
        stored = calibration_for(s, calibrated.run_id)
        logits = queries.logits_for(s, calibrated.run_id, N_CLASSES)
    assert any("From the report `jobs.calibrate` stored at" in c.value for c in at.caption)
    table = at.dataframe[0].value.set_index("split")
    assert table.loc["test", "ECE after T"] == pytest.approx(stored.report["test"]["ece_calibrated"])
    assert table.loc["test", "Brier"] == pytest.approx(stored.report["test"]["brier"])
    # the per-class table is the calibrated one (the switch is on), as computed from the logits
    test = (logits.frame["split"] == "test").to_numpy()
    want = cal.per_class_ece(logits.logits[test], logits.frame["label"].to_numpy()[test],
                             bins=stored.bins, temperature=stored.temperature)
    shown = next(d.value for d in at.dataframe if "ece" in d.value.columns)
    assert np.allclose(shown["ece"].to_numpy(), want["ece"].to_numpy())
    assert [c.key for c in at.get("plotly_chart")] == ["cal_ece", "cal_reliability", "cal_hist", "cal_per_class_bars"]


def test_calibration_page_of_a_large_uncalibrated_run_counts_in_the_store(plain, monkeypatch):
    as_large(monkeypatch)
    at = app(plain.url, monkeypatch, "views/calibration.py")
    assert any("Raw confidences counted in the store" in c.value for c in at.caption)
    with session(plain.url) as s:
        preds = queries.predictions_frame(s, plain.run_id)
    test = preds[preds["split"] == "test"]
    want = cal.reliability_bins(test["confidence"].to_numpy(), (test["label"] == test["pred"]).to_numpy(), 15)
    table = at.dataframe[0].value.set_index("split")
    assert table.loc["test", "ECE"] == pytest.approx(want.ece())
    assert table.loc["test", "n"] == len(test) and pd.isna(table.loc["test", "Brier"])
    assert table.loc["test", "NLL"] == pytest.approx(1.0)  # the evaluation's mean loss, as the builder wrote it


# --------------------------------------------------------------------------- the reads

def test_images_by_id_and_by_path(plain):
    with session(plain.url) as s:
        every = queries.images_frame(s, plain.run_id).set_index("image_id")
        ids = list(every.index[[3, 1, 500, 1300]]) + [10 ** 9]
        got = q.images_by_id(s, plain.run_id, ids)
        other_run = q.images_by_id(s, plain.run_id + 1, ids)
        one = q.image_by_path(s, plain.run_id, "valid", every.loc[ids[2], "relpath"])
        many = q.images_by_id(s, plain.run_id, every.index[:1203])  # more than one IN list
    assert got["image_id"].tolist() == sorted(ids[:4]) and other_run.empty
    assert got.set_index("image_id")["relpath"].to_dict() == every.loc[sorted(ids[:4]), "relpath"].to_dict()
    assert one["image_id"].tolist() == [ids[2]] and len(many) == 1203


def test_neighbours_walk_the_gallery_order(plain):
    filters = [{}, dict(splits=("test",), confidence=(0.2, 0.9)), dict(pred_classes=(3, 4, 5))]
    with session(plain.url) as s:
        for f in filters:
            order = queries.errors_frame(s, plain.run_id, splits=f.get("splits"),
                                         pred_classes=f.get("pred_classes"),
                                         confidence=f.get("confidence", (0.0, 1.0)))["image_id"].tolist()
            assert len(order) > 3 and q.errors_count(s, plain.run_id, **f) == len(order)
            for at in (0, 1, len(order) // 2, len(order) - 1):
                nb = q.errors_neighbours(s, plain.run_id, order[at], **f)
                assert nb.position == at and nb.first == order[0]
                assert nb.previous == (order[at - 1] if at else None)
                assert nb.next == (order[at + 1] if at + 1 < len(order) else None)
        outside = q.errors_neighbours(s, plain.run_id, 1, splits=("test",))  # a train image
        assert outside.position is None and outside.previous is None and outside.first is not None


def test_counts_stay_in_the_indexes(plain):
    with session(plain.url) as s:
        count = " ".join(q.query_plan(s, select(func.count()).select_from(q._errors_select(
            plain.run_id, None, (), (), (0.2, 0.9), count=True).subquery())))
        with recorded() as seen:
            missing_logits(s, plain.run_id)
    assert "COVERING INDEX ix_predictions_run_pred" in count and "ix_predictions_run_confidence" not in count
    ((stmt, plan, _),) = run_reads(plain.url, seen)
    assert "logits IS NULL" in stmt and plan[0] == "SCAN predictions USING INDEX ix_predictions_run_no_logits"


def test_logits_coverage_counts_the_missing_ones(plain, tmp_path):
    copy = tmp_path / "store.db"
    with sqlite3.connect(path_of(plain.url)) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    url = f"sqlite:///{copy}"
    with session(url) as s:
        valid = queries.predictions_frame(s, plain.run_id, ["valid"])["image_id"].tolist()[:7]
    engine = make_engine(url, create=False)
    with make_sessionmaker(engine).begin() as s:
        s.execute(update(Prediction).where(Prediction.image_id.in_(valid)).values(logits=None))
    engine.dispose()
    with session(url) as s:
        cov = logits_coverage(s, plain.run_id).set_index("split")
        assert missing_logits(s, plain.run_id) == {"valid": 7}
    assert cov.loc["valid", "predictions"] == 600 and cov.loc["valid", "with_logits"] == 593
    assert cov.loc["test", "with_logits"] == 600


def test_calibration_cells_give_the_bins_of_the_stored_confidences(plain):
    with session(plain.url) as s:
        cells = q.calibration_cells(s, plain.run_id, 10)
        summed = q.calibration_cells(s, plain.run_id, 10, by_class=False)
        preds = queries.predictions_frame(s, plain.run_id)
    for split in ("valid", "test"):
        p = preds[preds["split"] == split]
        right = (p["label"] == p["pred"]).to_numpy()
        want = cal.reliability_bins(p["confidence"].to_numpy(), right, 10)
        for c in (cells, summed):
            got = views.bins_from_cells(c[c["split"] == split], 10)
            assert (got.count == want.count).all() and np.allclose(got.confidence, want.confidence)
            assert got.ece() == pytest.approx(want.ece())
        table = views.per_class_from_cells(cells[cells["split"] == split], N_CLASSES, 10)
        assert table["n"].sum() == len(p) and list(table["ece"]) == sorted(table["ece"], reverse=True)
    assert len(summed) <= 2 * 10 * 2 < len(cells)


# --------------------------------------------------------------------------- core

def test_figures_from_counts_match_the_figures_from_logits():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2.5, (700, 6)).astype(np.float32)
    y = rng.integers(0, 6, 700)
    f = views.split_figures(z, y, temperature=1.7, bins=12)
    conf, pred = cal.top1(cal.softmax(z))
    right = pred == y
    assert f["correct"] == int(right.sum()) and f["n"] == 700
    raw = views.per_class_table(f["per_class"]["raw"])
    assert raw.equals(cal.per_class_ece(z, y, bins=12))
    conf_t, _ = cal.top1(cal.softmax(z, 1.7))
    assert f["bins_calibrated"] == cal.reliability_bins(conf_t, right, 12).records()
    # the same from counts per (class, bin, right): what the store aggregates
    b = cal.bin_index(conf, 12)
    cells = (pd.DataFrame({"label": y, "bin": b, "correct": right, "conf": conf})
             .groupby(["label", "bin", "correct"], as_index=False)
             .agg(n=("conf", "size"), confidence_sum=("conf", "sum")))
    from_cells = views.per_class_from_cells(cells, 6, 12)
    assert np.allclose(from_cells["ece"], raw["ece"]) and (from_cells["class_idx"] == raw["class_idx"]).all()
    assert views.bins_from_cells(cells, 12).ece() == pytest.approx(cal.reliability_bins(conf, right, 12).ece())
    # the histogram from counts draws what the one from confidences draws
    hist = f["hist"]["raw"]
    a, c = confidence_split_histogram(conf, right), confidence_histogram_counts(hist)
    assert [list(t.y) for t in a.data] == [list(t.y) for t in c.data] and [t.name for t in a.data] == [
        t.name for t in c.data]
    with pytest.raises(ValueError, match="per-class columns lack"):
        views.per_class_table({"class_idx": [0]})
    with pytest.raises(ValueError, match="cell bins must lie in 0..11"):
        views.bins_from_cells(cells.assign(bin=12), 12)
