"""The Calibration page, the calibrated-confidences switch on the other pages, the intervals the pages show,
and what the export carries of both."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import calibration as cal
from core import intervals as iv
from core.report import ExportOptions, write_figure_set
from core.report_calibration import calibrated_suspects
from dashboard.context import upgrade_message
from db import queries, store
from db.builder import build_store
from db.builder_calibration import add_calibration, add_logits
from db.queries.calibration import calibration_for
from jobs import calibrate as calibrate_job

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
PAGE = "views/calibration.py"
V1_STORE = Path(__file__).resolve().parent / "fixtures" / "store_v1.db"


def sessions(url: str):
    return store.make_sessionmaker(store.make_engine(url, create=False))


def calibrate(url: str, run_id: int) -> float:
    with sessions(url).begin() as s:
        _, report = calibrate_job.calibrate_run(s, run_id)
    return report["temperature"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """An audited run with logits and a calibration."""
    url, run_id, _ = build_store(tmp_path_factory.mktemp("calibrated"), n_classes=10, n_per_class=4, seed=1,
                                 audit=True)
    add_logits(url, run_id)
    return url, run_id, calibrate(url, run_id)


@pytest.fixture(scope="module")
def logits_only(tmp_path_factory):
    url, run_id, _ = build_store(tmp_path_factory.mktemp("logits"), n_classes=6, n_per_class=4, seed=2)
    add_logits(url, run_id)
    return url, run_id


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    url, run_id, _ = build_store(tmp_path_factory.mktemp("bare"), n_classes=6, n_per_class=4, seed=2)
    return url, run_id


def app(url: str, monkeypatch, page: str | None = None, **params) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=60)
    at.query_params.update(params)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def switch(at: AppTest):
    return at.sidebar.toggle(key="sb_calibrated")


def param(at: AppTest, name: str) -> list[str]:
    value = at.query_params.get(name, [])
    return [value] if isinstance(value, str) else list(value)


def stored_logits(url: str, run_id: int):
    with sessions(url)() as s:
        return queries.logits_for(s, run_id, len(queries.class_names(s, run_id)))


# --------------------------------------------------------------------------- the Calibration page

def test_calibration_page_with_a_calibration(calibrated, monkeypatch):
    url, run_id, t = calibrated
    at = app(url, monkeypatch, PAGE)
    assert [x.value for x in at.title] == ["Calibration"]
    assert not at.error and not at.info
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Temperature"] == f"{t:.3g}"
    stored = stored_logits(url, run_id)
    test = (stored.frame["split"] == "test").to_numpy()
    ref = cal.split_metrics(stored.logits[test], stored.frame["label"].to_numpy()[test], temperature=t)
    assert metrics["ECE, test"] == f"{ref['ece']:.4f}"
    table = at.dataframe[0].value.set_index("split")
    assert list(table.index) == ["valid", "test"] and list(table["n"]) == [40, 40]
    assert table.loc["test", "ECE after T"] == pytest.approx(ref["ece_calibrated"])
    assert table.loc["test", "accuracy 95%"].endswith("%")
    per_class = next(d.value for d in at.dataframe if "ece" in d.value.columns)
    assert list(per_class["ece"]) == sorted(per_class["ece"], reverse=True)  # worst first
    assert (per_class["n"] == 4).all() and per_class["few"].all()  # 4 images a class: marked as few
    assert [c.key for c in at.get("plotly_chart")] == ["cal_ece", "cal_reliability", "cal_hist", "cal_per_class_bars"]
    assert switch(at).value and not switch(at).disabled
    at.selectbox(key="cal_split").set_value("valid").run()
    assert not at.exception


def test_calibration_page_without_a_calibration_names_the_job(logits_only, monkeypatch):
    url, run_id = logits_only
    at = app(url, monkeypatch, PAGE)
    (info,) = [i.value for i in at.info]
    assert f"`python -m jobs.calibrate --run {run_id} --db {url}`" in info
    assert {m.label: m.value for m in at.metric}["Temperature"] == "–"
    assert at.dataframe and at.get("plotly_chart")  # the raw reliability still shows
    assert switch(at).disabled and not switch(at).value
    assert any("not calibrated yet" in c.value and "jobs.calibrate" in c.value for c in at.sidebar.caption)


def test_calibration_page_without_logits_names_jobs_cams(bare, monkeypatch):
    url, run_id = bare
    at = app(url, monkeypatch, PAGE)
    (info,) = [i.value for i in at.info]
    assert f"`python -m jobs.cams --run {run_id} --db {url}`" in info and not at.dataframe
    assert switch(at).disabled
    (reason,) = [c.value for c in at.sidebar.caption if "unavailable" in c.value]
    assert "stored no logits" in reason and "\n" not in reason


def test_calibration_page_on_an_old_store_names_the_upgrade(tmp_path, monkeypatch):
    old = tmp_path / "old.db"
    shutil.copyfile(V1_STORE, old)
    url = f"sqlite:///{old}"
    at = app(url, monkeypatch, PAGE)
    assert [e.value for e in at.error] == [upgrade_message(url)]


# --------------------------------------------------------------------------- the switch on other pages

def header(at: AppTest) -> str:
    (line,) = [m.value for m in at.markdown if m.value.startswith("**") and " · true **" in m.value]
    return line


def test_switch_changes_the_confidences_shown(calibrated, monkeypatch):
    url, run_id, t = calibrated
    stored = stored_logits(url, run_id)
    with sessions(url)() as s:
        errors = queries.errors_frame(s, run_id)
    image = int(errors["image_id"].iloc[0])
    row = int(np.flatnonzero(stored.frame["image_id"].to_numpy() == image)[0])
    p = cal.softmax(stored.logits[row:row + 1], t)[0]
    pred = int(stored.frame["pred"].iloc[row])
    raw = float(errors["confidence"].iloc[0])
    assert f"{p[pred]:.1%}" != f"{raw:.1%}"

    at = app(url, monkeypatch, "views/compare.py", image=str(image))
    assert f"at {p[pred]:.1%} calibrated · wrong" in header(at)
    assert any("calibrated (T = " in c.value for c in at.caption)
    switch(at).set_value(False).run()
    assert not at.exception
    assert f"at {raw:.1%} · wrong" in header(at) and param(at, "calibrated") == ["0"]

    # the gallery orders and filters by the confidence shown: a link with calibrated=0 gives the raw order
    at = app(url, monkeypatch, "views/gallery.py", calibrated="0")
    assert not switch(at).value
    raw_captions = [c.value for c in at.caption if c.value.startswith("true:")]
    at = app(url, monkeypatch, "views/gallery.py")
    cal_captions = [c.value for c in at.caption if c.value.startswith("true:")]
    shown = [float(re.search(r"\((\d+)%\)", c).group(1)) for c in cal_captions]
    assert shown == sorted(shown, reverse=True) and cal_captions != raw_captions


def test_overview_shows_rates_with_n_and_interval(calibrated, monkeypatch):
    url, run_id, _ = calibrated
    at = app(url, monkeypatch)
    with sessions(url)() as s:
        preds = queries.predictions_frame(s, run_id, ["valid"])
        ev = queries.evaluations_frame(s, run_id).set_index("split")
    top1 = iv.rate(int((preds["label"] == preds["pred"]).sum()), len(preds))
    top5 = iv.rate(round(ev.loc["valid", "top5"] * 40), 40)
    captions = [c.value for c in at.caption]
    assert top1.brief() in captions and top5.brief() in captions
    assert f"{top1.k} of 40 · 95% interval" in top1.brief()
    assert any(c.startswith("40 images · 95% bootstrap interval ") for c in captions)
    assert any("calibrated (T = " in c for c in captions)  # the histogram says which confidences it shows


def test_per_class_intervals_few_mark_and_upper_bound_order(calibrated, monkeypatch):
    url, run_id, _ = calibrated
    at = app(url, monkeypatch, "views/per_class.py")
    at.selectbox(key="pc_split").set_value("valid").run()
    table = at.dataframe[0].value
    assert {"precision 95%", "recall 95%", "f1 95%", "support", "few"} <= set(table.columns)
    assert (table["support"] == 4).all() and table["few"].all()
    row = table.iloc[0]
    k = round(row["recall"] * 4)
    lo, hi = iv.wilson_interval(k, 4)
    assert row["recall 95%"] == f"{lo:.2f}–{hi:.2f}"
    assert any(iv.ordering_note("f1") in c.value for c in at.caption)
    at.toggle(key="pc_upper").set_value(True).run()
    assert not at.exception
    assert any(iv.ordering_note("f1", upper=True) in c.value for c in at.caption)
    upper = at.dataframe[0].value
    ends = [float(s.split("–")[1]) for s in upper["f1 95%"]]
    assert ends == sorted(ends)  # worst first by the upper end of the interval


def test_confusion_pairs_carry_n_and_interval(calibrated, monkeypatch):
    url, run_id, _ = calibrated
    at = app(url, monkeypatch, "views/confusion.py")
    pairs = at.dataframe[0].value
    assert {"n", "share 95%"} <= set(pairs.columns)
    first = pairs.iloc[0]
    lo, hi = iv.wilson_interval(int(first["count"]), int(first["n"]))
    assert first["share 95%"] == f"{lo:.2f}–{hi:.2f}" and first["share_of_true"] == first["count"] / first["n"]


@pytest.fixture(scope="module")
def hot(tmp_path_factory):
    """An audited run with logits whose stored temperature is far from 1 (the page applies whatever is stored)."""
    url, run_id, _ = build_store(tmp_path_factory.mktemp("hot"), n_classes=10, n_per_class=4, seed=1, audit=True)
    add_logits(url, run_id)
    return url, run_id, add_calibration(url, run_id, temperature=4.0)


def test_data_issues_shows_the_model_and_ranks_by_calibrated_confidence(hot, monkeypatch):
    url, run_id, t = hot
    with sessions(url)() as s:
        report = queries.audit_report(s, run_id)
        preds = queries.predictions_frame(s, run_id)
    stored = stored_logits(url, run_id)
    expected = calibrated_suspects(report["suspects"], stored.frame["image_id"].to_numpy(), stored.logits, t)
    assert [sp["relpath"] for sp in expected] != [sp["relpath"] for sp in report["suspects"]]
    acc = iv.rate(int((preds["label"] == preds["pred"]).sum()), len(preds))
    at = app(url, monkeypatch, "views/data_issues.py")
    assert any(acc.brief() in c.value for c in at.caption)
    assert not at.warning  # a model at ~70 %: no warning
    first = [c.value for c in at.caption if c.value.startswith("#1 ")][0]
    assert expected[0]["relpath"] in first and f"({expected[0]['given_prob']:.0%})" in first
    switch(at).set_value(False).run()
    first = [c.value for c in at.caption if c.value.startswith("#1 ")][0]
    assert report["suspects"][0]["relpath"] in first


def test_data_issues_warns_on_a_model_near_chance(tmp_path, monkeypatch):
    url, run_id, _ = build_store(tmp_path, n_classes=10, n_per_class=4, seed=5, error_rate=0.95, audit=True)
    at = app(url, monkeypatch, "views/data_issues.py")
    (warning,) = [w.value for w in at.warning]
    assert warning.startswith("The model is near chance") and "these suspects are mostly noise" in warning


# --------------------------------------------------------------------------- the export

def test_export_carries_intervals_and_calibration(calibrated, tmp_path):
    url, run_id, t = calibrated
    with sessions(url)() as s:
        data = queries.run_data(s, run_id)
        manifest = write_figure_set(data, tmp_path, ExportOptions(browser=None))
        row = calibration_for(s, run_id)
    per_class = pd.read_csv(tmp_path / "per-class-metrics.csv")
    assert {"precision_lo", "precision_hi", "recall_lo", "recall_hi", "f1_lo", "f1_hi", "few"} <= set(per_class.columns)
    assert (per_class["precision_lo"] <= per_class["precision"]).all() and (per_class["f1"] <= per_class["f1_hi"]).all()
    acc = pd.read_csv(tmp_path / "accuracy.csv").set_index(["split", "metric"])
    valid = acc.loc[("valid", "top1")]
    assert (valid["lo"], valid["hi"]) == pytest.approx(iv.wilson_interval(int(valid["k"]), int(valid["n"])))
    assert set(acc.index.get_level_values("metric")) == {"top1", "top5", "macro_f1"}
    pairs = pd.read_csv(tmp_path / "confused-pairs.csv")
    assert {"n", "share_lo", "share_hi"} <= set(pairs.columns)
    calib = pd.read_csv(tmp_path / "calibration.csv").set_index("split")
    assert calib.loc["test", "ece"] == pytest.approx(row.report["test"]["ece"])
    assert calib["temperature"].iloc[0] == pytest.approx(t)
    assert len(pd.read_csv(tmp_path / "calibration-bins.csv")) == 2 * row.bins
    suspects = pd.read_csv(tmp_path / "suspect-labels.csv")
    assert list(suspects["given_prob"]) == sorted(suspects["given_prob"]) and "given_prob_raw" in suspects
    captions = {f["file"]: f["caption"] for f in json.loads((tmp_path / "manifest.json").read_text())["files"]}
    assert "top-1 accuracy" in captions["suspect-labels.csv"] and "interval" in captions["suspect-labels.csv"]
    skipped = {s["item"] for s in manifest.skipped}  # no browser: the plots are listed as skipped
    assert {"reliability-valid", "reliability-test", "ece-before-after", "per-class-ece"} <= skipped
