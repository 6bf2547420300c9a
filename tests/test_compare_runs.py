"""Comparing stored runs: jobs.compare, run references with snapshots, the Compare runs page, the export.

The store: run 1, run 2 (the same images, answers changed at random) and run 3, the phase-1 snapshot of run 2.
Expected counts are computed here from the two runs' predictions, independently of ``core.compare``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sqlalchemy import select, update
from streamlit.testing.v1 import AppTest

from core.cammaps import DEFAULT_METHOD, method_label
from core.stages import PHASE1, split_ref
from db import queries, store
from db.builder import add_hashes, build_store
from db.builder_pairs import add_compared_run
from db.models import ImageRow, Run
from jobs import compare as compare_job
from jobs import export as export_job
from jobs import runs as runs_job

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
PAGE = "views/compare_runs.py"
JSON_KEYS = {"a", "b", "split", "matched", "only_a", "only_b", "right_to_wrong", "wrong_to_right", "wrong_both",
             "top1_a", "top1_b", "mcnemar_p", "per_class", "drift"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(url, tmp folder): runs 1 and 2 over the same images, run 3 the phase-1 snapshot of run 2."""
    tmp = tmp_path_factory.mktemp("pair")
    url, first, _ = build_store(tmp, n_classes=6, n_per_class=6, seed=2, error_rate=0.3, name="first")
    add_hashes(url, first)
    second = add_compared_run(url, first, name="second", lose=0.15, gain=0.5, seed=4)
    snap = add_compared_run(url, second, stage=PHASE1, lose=0.35, gain=0.1, moved=0.3, seed=5)
    assert (first, second, snap) == (1, 2, 3)
    return url, tmp


def copy_of(pair, tmp_path) -> str:
    url, tmp = pair
    shutil.copy(tmp / "store.db", tmp_path / "store.db")
    return f"sqlite:///{tmp_path / 'store.db'}"


def cli(capsys, module, *argv: str) -> tuple[int, str, str]:
    rc = module.run_cli(module.main, module.get_args_parser(), list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def expected(url: str, a: int, b: int, split: str = "test") -> dict:
    S = store.make_sessionmaker(store.make_engine(url, readonly=True))
    with S() as s:
        fa = queries.predictions_frame(s, a, [split])
        fb = queries.predictions_frame(s, b, [split])
    m = fa.merge(fb[["relpath", "pred"]], on="relpath", suffixes=("", "_b"))
    ra, rb = m["pred"] == m["label"], m["pred_b"] == m["label"]
    both_wrong = ~ra & ~rb
    return {"matched": len(m), "right_to_wrong": int((ra & ~rb).sum()), "wrong_to_right": int((~ra & rb).sum()),
            "same": int((both_wrong & (m["pred"] == m["pred_b"])).sum()),
            "different": int((both_wrong & (m["pred"] != m["pred_b"])).sum()),
            "correct_a": int(ra.sum()), "correct_b": int(rb.sum()),
            "per_class": (rb.astype(float) - ra.astype(float)).groupby(m["label"]).mean()}


# --------------------------------------------------------------------------- jobs.compare

def test_json_keys_and_counts(pair, capsys):
    url, _ = pair
    rc, out, err = cli(capsys, compare_job, "--db", url, "--a", "1", "--b", "second", "--json", "--resamples", "300")
    assert rc == 0, err
    j = json.loads(out)
    assert set(j) == JSON_KEYS
    e = expected(url, 1, 2)
    assert (j["a"], j["b"], j["split"]) == ("#1 first", "#2 second", "test")
    assert (j["matched"], j["only_a"], j["only_b"]) == (e["matched"], 0, 0) and e["matched"] == 36
    assert (j["right_to_wrong"], j["wrong_to_right"]) == (e["right_to_wrong"], e["wrong_to_right"])
    assert e["right_to_wrong"] + e["wrong_to_right"] > 0
    assert j["wrong_both"] == {"same": e["same"], "different": e["different"], "total": e["same"] + e["different"]}
    assert (j["top1_a"]["correct"], j["top1_b"]["correct"], j["top1_a"]["n"]) == (e["correct_a"], e["correct_b"], 36)
    b, c = e["right_to_wrong"], e["wrong_to_right"]
    assert j["mcnemar_p"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    assert sum(p["n"] for p in j["per_class"]) == 36
    for p in j["per_class"]:
        assert set(p) == {"class", "n", "acc_a", "acc_b", "delta", "ci_low", "ci_high"}
        assert p["delta"] == pytest.approx(e["per_class"][queries_class_index(url, p["class"])])
        assert p["ci_low"] <= p["delta"] <= p["ci_high"]
    assert set(j["drift"]) == {"true", "pred"} and j["drift"]["true"]["n"] == 36


def queries_class_index(url: str, name: str) -> int:
    S = store.make_sessionmaker(store.make_engine(url, readonly=True))
    with S() as s:
        return queries.class_names(s, 1).index(name)


def test_a_run_against_itself(pair, capsys):
    url, _ = pair
    rc, out, err = cli(capsys, compare_job, "--db", url, "--a", "2", "--b", "second", "--json", "--split", "all")
    assert rc == 0, err
    j = json.loads(out)
    assert j["matched"] == 72 and j["right_to_wrong"] == j["wrong_to_right"] == 0 and j["mcnemar_p"] == 1.0
    for target in ("true", "pred"):
        assert (j["drift"][target]["spearman"], j["drift"][target]["iou"]) == (1.0, 1.0)
    assert all(p["delta"] == p["ci_low"] == p["ci_high"] == 0 for p in j["per_class"])


def test_snapshot_reference_and_summary(pair, capsys):
    url, _ = pair
    rc, out, err = cli(capsys, compare_job, "--db", url, "--a", "latest:phase1", "--b", "latest", "--top", "3")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "A = #3 second:phase1 (phase 1 of #2)" and lines[1] == "B = #2 second (final)"
    assert "36 images compared (36 by sha256)" in lines[2]
    assert any("McNemar's exact test" in line for line in lines)
    assert sum(line.startswith("  ") and " n " in line for line in lines) == 3
    assert any(line.startswith("explanation drift, maps of the true class: median Spearman") for line in lines)


@pytest.mark.parametrize("status, words", [("running", "is still running"), ("failed", "has status 'failed': boom")])
def test_unfinished_runs_are_refused(pair, tmp_path, capsys, status, words):
    url = copy_of(pair, tmp_path)
    engine = store.make_engine(url)
    with store.make_sessionmaker(engine).begin() as s:
        s.execute(update(Run).where(Run.id == 2).values(status=status, error="boom" if status == "failed" else None))
    engine.dispose()
    rc, out, err = cli(capsys, compare_job, "--db", url, "--a", "1", "--b", "2")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: run #2 second ") and words in err


def test_runs_sharing_no_image_say_so_in_one_line(pair, tmp_path, capsys):
    url = copy_of(pair, tmp_path)
    engine = store.make_engine(url)
    with store.make_sessionmaker(engine).begin() as s:
        for img in s.scalars(select(ImageRow).where(ImageRow.run_id == 2)):
            img.relpath, img.sha256 = "elsewhere/" + img.relpath, (img.sha256 or "")[::-1]
    engine.dispose()
    rc, out, err = cli(capsys, compare_job, "--db", url, "--a", "1", "--b", "2")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "share no image" in err


def test_the_cli_starts_without_torch():
    """jobs.compare never runs the model: it imports neither torch nor scipy (seconds of its start-up)."""
    code = "import sys, jobs.compare; print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_references_to_missing_snapshots_and_stages(pair, capsys):
    url, _ = pair
    rc, _, err = cli(capsys, compare_job, "--db", url, "--a", "first:phase1", "--b", "2")
    assert rc == 2 and "run #1 (first) has no phase 1 snapshot" in err
    rc, _, err = cli(capsys, compare_job, "--db", url, "--a", "2:phase2", "--b", "2")
    assert rc == 2 and "unknown stage 'phase2'" in err


@pytest.mark.parametrize("ref, parsed", [("latest", ("latest", None)), ("7:phase1", ("7", PHASE1)),
                                         ("my:run", ("my:run", None)), ("a:b:phase1", ("a:b", PHASE1))])
def test_split_ref(ref, parsed):
    assert split_ref(ref) == parsed


def test_split_ref_refuses_a_stage_without_a_run():
    with pytest.raises(ValueError, match="names a stage but no run"):
        split_ref(":phase1")


def test_latest_and_default_never_pick_a_snapshot(pair, capsys):
    url, _ = pair
    S = store.make_sessionmaker(store.make_engine(url, readonly=True))
    with S() as s:
        assert store.resolve_run(s, "latest").id == 2 and queries.default_run_id(s) == 2
        runs = queries.list_runs(s)
        assert list(runs["id"]) == [3, 2, 1] and list(runs["stage"].isna()) == [False, True, True]
        assert runs["stage"].iloc[0] == PHASE1 and list(runs["parent_id"].isna()) == [False, True, True]
        assert queries.snapshots_of(s, 2) == {PHASE1: 3} and queries.snapshot_id(s, 1, PHASE1) is None
    rc, out, _ = cli(capsys, runs_job, "--db", url, "--json")
    listed = json.loads(out)
    assert rc == 0 and [r["id"] for r in listed] == [1, 2] and [x["id"] for x in listed[1]["snapshots"]] == [3]


# --------------------------------------------------------------------------- the page

def page(url: str, monkeypatch, **params) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=60)
    at.query_params.update(params)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def widget(at: AppTest, key: str):
    return next(w for w in [*at.selectbox, *at.multiselect] if w.key == key)


def url_params(at: AppTest) -> dict[str, list[str]]:
    return {k: ([v] if isinstance(v, str) else list(v)) for k, v in at.query_params.items()}


def test_page_defaults_to_the_newest_runs_phase1_against_its_final_model(pair, monkeypatch):
    url, _ = pair
    at = page(url, monkeypatch)
    assert [t.value for t in at.title] == ["Compare runs"]
    assert (widget(at, "cr_a").value, widget(at, "cr_b").value, widget(at, "cr_split").value) == (3, 2, "test")
    e = expected(url, 3, 2)
    assert any(f"is right on {e['wrong_to_right']} images that A (#3 second:phase1) got wrong" in m.value
               for m in at.markdown)
    labels = [t.label for t in at.tabs]
    assert f"Right → wrong ({e['right_to_wrong']})" in labels and f"Wrong → right ({e['wrong_to_right']})" in labels
    assert any("of 36 · 95% interval" in c.value for c in at.caption)
    assert url_params(at) == {"a": ["3"], "b": ["2"], "split": ["test"], "method": [DEFAULT_METHOD]}
    assert widget(at, "cr_method").options == [method_label(DEFAULT_METHOD)]  # the methods both runs hold
    assert not at.error


def test_page_link_and_sport_filter(pair, monkeypatch):
    url, _ = pair
    S = store.make_sessionmaker(store.make_engine(url, readonly=True))
    with S() as s:
        sport = queries.class_names(s, 1)[2]
    at = page(url, monkeypatch, a="1", b="2", split="valid", sport=sport)
    assert (widget(at, "cr_a").value, widget(at, "cr_b").value, widget(at, "cr_split").value) == (1, 2, "valid")
    assert widget(at, "cr_sport").value == [sport]
    table = next(d.value for d in at.dataframe if "sport" in d.value.columns)  # the per-class table
    assert list(table["sport"]) == [sport] and list(table["images"]) == [6]
    assert url_params(at) == {"a": ["1"], "b": ["2"], "split": ["valid"], "sport": [sport], "method": [DEFAULT_METHOD]}
    counts = [int(t.label.rsplit("(", 1)[1].rstrip(")")) for t in at.tabs]
    assert all(n <= 6 for n in counts)
    widget(at, "cr_sport").set_value([]).run()  # every sport again: the counts grow back
    assert sum(int(t.label.rsplit("(", 1)[1].rstrip(")")) for t in at.tabs) >= sum(counts)
    assert "sport" not in url_params(at)


def test_page_refuses_a_running_run(pair, tmp_path, monkeypatch):
    url = copy_of(pair, tmp_path)
    engine = store.make_engine(url)
    with store.make_sessionmaker(engine).begin() as s:
        store.reopen_run(s, 2)
    engine.dispose()
    at = page(url, monkeypatch, a="1", b="2")
    assert any("#2 second (final, running) is still running" in w.value for w in at.warning)
    assert not at.tabs


def test_page_with_one_run_explains(tmp_path, monkeypatch):
    url, _, _ = build_store(tmp_path, n_classes=3, n_per_class=2)
    at = page(url, monkeypatch)
    assert any("Comparing needs two runs" in i.value for i in at.info)


# --------------------------------------------------------------------------- the export

def test_export_compare_writes_the_figure_set(pair, tmp_path, capsys):
    url, _ = pair
    out = tmp_path / "set"
    rc, _, err = cli(capsys, export_job, "--db", url, "--compare", "second:phase1", "second", "--out", str(out),
                     "--browser", "/nonexistent/chromium", "--worst", "4")
    assert rc == 0, err
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["run"]["a"] == {"id": 3, "name": "second:phase1", "stage": PHASE1}
    files = {f["file"] for f in manifest["files"]}
    assert {"comparison.json", "per-class-change.csv", "flips.csv", "flips-right-to-wrong.png",
            "flips-wrong-to-right.png"} <= files
    assert {s["item"] for s in manifest["skipped"]} == {"per-class-change", "confusion-change"}  # no browser
    summary = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert JSON_KEYS <= set(summary) and summary["a"] == "#3 second:phase1"
    per_class = pd.read_csv(out / "per-class-change.csv")
    assert list(per_class.columns) == ["class", "n", "acc_a", "acc_b", "delta", "ci_low", "ci_high"]
    assert per_class["n"].sum() == summary["matched"] == 36
    flips = pd.read_csv(out / "flips.csv")
    assert (flips["change"] == "right to wrong").sum() == summary["right_to_wrong"]
    assert np.all(np.diff(per_class["delta"].to_numpy()) >= 0)  # worst change first
