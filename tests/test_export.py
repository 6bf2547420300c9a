"""Figure sets: ``jobs.export`` on generated stores, the pieces of ``core.report``, and the Export page's zip."""
from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sqlalchemy import select, update
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from core import report
from core.cammaps import DEFAULT_METHOD, TARGET_PRED, TARGET_TRUE, StoredMaps, encode_maps, overlay
from db.models import ImageRow, RunClass, TrustScore
from db.store import make_engine, make_sessionmaker
from jobs import export
from tests.storefactory import add_audit, build_store

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
CHROMIUM = Path("/usr/bin/chromium")
ODD = '../évil/ski "jump".日本'
NO_BROWSER = ["--browser", "/nonexistent/chromium"]


def _need_browser() -> None:
    if CHROMIUM.is_file():
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{CHROMIUM} is missing under CI; the plots of a figure set need it")
    pytest.skip(f"{CHROMIUM} is missing: plots cannot be rendered (apt-get install chromium)")


def _export(url: str, out: Path, *extra: str) -> int:
    return export.run_cli(export.main, export.get_args_parser(), ["--db", url, "--out", str(out), *extra])


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    url, run_id, root = build_store(tmp_path_factory.mktemp("export"), n_classes=8, n_per_class=4, seed=3,
                                    name="export-test")
    add_audit(url, run_id, [[("valid", "valid/archery/001.jpg", 2), ("test", "test/archery/002.jpg", 2)],
                            [("valid", "valid/baseball/001.jpg", 7), ("test", "test/baseball/001.jpg", 7),
                             ("test", "test/baseball/003.jpg", 7)]])
    return url, run_id, root


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory):
    """A run whose first class is named with a slash, '..', quotes, a dot and non-ASCII characters."""
    url, run_id, root = build_store(tmp_path_factory.mktemp("odd"), n_classes=5, n_per_class=4, seed=4,
                                    error_rate=0.5)
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as s:
        s.execute(update(RunClass).where(RunClass.run_id == run_id, RunClass.index == 0).values(name=ODD))
    engine.dispose()
    return url, run_id, root


@pytest.fixture(scope="module")
def full_set(audited, tmp_path_factory):
    """The whole figure set in every format, plots included (skipped when there is no browser)."""
    _need_browser()
    out = tmp_path_factory.mktemp("full") / "set"
    url, _, _ = audited
    assert _export(url, out, "--format", "png,svg,pdf") == 0
    return out


# --------------------------------------------------------------------------- the command line

def test_every_listed_file_is_written_and_nothing_else(full_set, audited):
    url, run_id, _ = audited
    m = _manifest(full_set)
    listed = {f["file"] for f in m["files"]}
    assert listed | {"manifest.json"} == {p.name for p in full_set.iterdir()}
    assert m["skipped"] == []
    assert m["run"] == {"id": run_id, "name": "export-test"}
    assert m["formats"] == ["png", "svg", "pdf"] and m["filters"]["splits"] == "all"
    assert all(f["caption"] for f in m["files"])
    stems = {Path(f).stem for f in listed}
    for stem in ("confusion-all", "confusion-top", "per-class", "training-curves", "worst-errors",
                 "duplicate-groups"):
        assert {f"{stem}.{x}" for x in ("png", "svg", "pdf")} <= listed, stem
    for table in ("per-class-metrics", "confused-pairs", "predictions", "leakage-accuracy"):
        assert f"{table}.csv" in listed
    assert len([s for s in stems if s.startswith("sport-")]) == len(m["filters"]["sports"]) > 0


def test_pngs_have_the_print_size_and_dpi(full_set):
    m = _manifest(full_set)
    pngs = [f for f in m["files"] if f["file"].endswith(".png")]
    assert {f["kind"] for f in pngs} == {"plot", "sheet"}
    for f in pngs:
        with Image.open(full_set / f["file"]) as im:
            assert im.size == (f["width_px"], f["height_px"]), f["file"]
            assert im.info["dpi"] == pytest.approx((300, 300), abs=0.01), f["file"]
        expected = round(f.get("width_in", 7.0) * 300)
        assert f["width_px"] == expected, f["file"]
    with Image.open(full_set / "worst-errors.png") as im:
        assert im.width == 2100
    for f in m["files"]:
        if f["file"].endswith(".pdf"):
            assert (full_set / f["file"]).read_bytes().startswith(b"%PDF")
        if f["file"].endswith(".svg"):
            assert "<svg" in (full_set / f["file"]).read_text(encoding="utf-8")[:2000]


def test_tables_hold_the_run(full_set, audited):
    url, run_id, _ = audited
    preds = pd.read_csv(full_set / "predictions.csv")
    assert len(preds) == 8 * 4 * 2  # 8 classes, 4 images, valid and test
    assert set(preds.columns) >= {"relpath", "true", "predicted", "confidence", "correct"}
    per_class = pd.read_csv(full_set / "per-class-metrics.csv")
    assert len(per_class) == 8 and per_class["support"].sum() == len(preds)
    pairs = pd.read_csv(full_set / "confused-pairs.csv")
    assert pairs["count"].sum() == int((~preds["correct"]).sum())
    leak = pd.read_csv(full_set / "leakage-accuracy.csv")
    assert list(leak.columns[:3]) == ["split", "n", "accuracy"]


def test_without_a_browser_tables_and_sheets_are_still_written(audited, tmp_path, capsys):
    url, _, _ = audited
    out = tmp_path / "set"
    assert _export(url, out, *NO_BROWSER) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "Chromium" in line or "plots" in line]
    assert len(lines) == 1 and "no Chromium found (tried /nonexistent/chromium)" in lines[0], err
    assert "WARNING" in lines[0] and "Traceback" not in err
    m = _manifest(out)
    assert {s["item"] for s in m["skipped"]} == {"confusion-all", "confusion-top", "per-class", "training-curves"}
    files = {f["file"] for f in m["files"]}
    assert files | {"manifest.json"} == {p.name for p in out.iterdir()}
    assert {"worst-errors.png", "duplicate-groups.png", "predictions.csv", "per-class-metrics.csv"} <= files
    assert not any(f["kind"] == "plot" for f in m["files"])


def test_sports_restrict_the_sheets(audited, tmp_path):
    url, _, _ = audited
    out = tmp_path / "set"
    assert _export(url, out, *NO_BROWSER, "--sports", "baseball", "air hockey") == 0
    m = _manifest(out)
    assert m["filters"]["sports"] == ["baseball", "air hockey"]
    sheets = sorted(f["file"] for f in m["files"] if f["file"].startswith("sport-"))
    assert sheets == sorted([f"sport-{report.slug('baseball')}.png", f"sport-{report.slug('air hockey')}.png"])


def test_default_sports_are_those_with_the_most_errors(audited, tmp_path):
    url, _, _ = audited
    out = tmp_path / "set"
    assert _export(url, out, *NO_BROWSER, "--max-sports", "2", "--splits", "valid") == 0
    m = _manifest(out)
    errors = pd.read_csv(out / "predictions.csv").query("not correct")
    assert set(pd.read_csv(out / "predictions.csv")["split"]) == {"valid"}
    counts = errors["true"].value_counts()
    assert [counts[s] for s in m["filters"]["sports"]] == sorted(counts, reverse=True)[:2]
    assert len([f for f in m["files"] if f["file"].startswith("sport-")]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--sports", "no such sport"], "not among the run's"),
    (["--run", "999"], "no run '999'"),
    (["--format", "png,gif"], "formats must be among"),
    (["--splits", "train"], "no predictions for train"),
])
def test_bad_input_is_one_line(audited, tmp_path, capsys, argv, message):
    url, _, _ = audited
    assert _export(url, tmp_path / "set", *NO_BROWSER, *argv) == 2
    err = capsys.readouterr().err.strip()
    said = [line for line in err.splitlines() if " INFO jobs: run #" not in line]  # which run 'latest' picked
    assert message in err and len(said) == 1 and "Traceback" not in err


def test_odd_class_names_give_safe_file_names(odd_names, tmp_path):
    url, _, _ = odd_names
    out = tmp_path / "set"
    assert _export(url, out, *NO_BROWSER, "--sports", ODD) == 0
    m = _manifest(out)
    (sheet,) = [f["file"] for f in m["files"] if f["file"].startswith("sport-")]
    assert re.fullmatch(r"sport-[a-z0-9-]+\.png", sheet), sheet
    assert (out / sheet).resolve().parent == out.resolve()
    assert {p.name for p in out.iterdir()} == {f["file"] for f in m["files"]} | {"manifest.json"}
    assert all(p.parent == out for p in tmp_path.rglob("*") if p.is_file())  # nothing written beside DIR
    assert ODD in m["files"][[f["file"] for f in m["files"]].index(sheet)]["caption"]
    assert ODD in set(pd.read_csv(out / "per-class-metrics.csv")["class"])


# --------------------------------------------------------------------------- core.report pieces

@pytest.mark.parametrize("name", ["a/b", "a.b", "a b", "..", ".", "", "Pétanque", "日本", '"quoted"', "x" * 300])
def test_slug_is_safe(name):
    s = report.slug(name)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*-[0-9a-f]{6}", s), s
    assert len(s) <= 48 and s == report.slug(name)


def test_slug_keeps_distinct_names_distinct():
    names = ["a/b", "a.b", "a b", "A B", "a-b", "ab", "..", ".", "", "日本", "中国"]
    assert len({report.slug(n) for n in names}) == len(names)


def test_png_with_dpi_keeps_pixels():
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 30)).save(buf, "PNG", dpi=(72, 72))
    out = report.png_with_dpi(buf.getvalue(), 300)
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == (30, 20) and im.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert im.getpixel((5, 5)) == (10, 200, 30)
    with pytest.raises(ValueError):
        report.png_with_dpi(b"GIF89a", 300)


def test_a_new_section_is_one_entry(audited, tmp_path, monkeypatch):
    def trust_section(data, options):
        yield report.Table("trust-scores", "A later table.", pd.DataFrame({"class": list(data.names)}))

    monkeypatch.setattr(report, "SECTIONS", [*report.SECTIONS, trust_section])
    url, _, _ = audited
    assert _export(url, tmp_path / "set", *NO_BROWSER) == 0
    assert "trust-scores.csv" in {f["file"] for f in _manifest(tmp_path / "set")["files"]}


def _stored(image_id, targets, classes, h=4, w=4):
    rng = np.random.default_rng(image_id)
    return StoredMaps(image_id=image_id, method=DEFAULT_METHOD, targets=tuple(targets), classes=tuple(classes),
                      h=h, w=w, data=tuple(encode_maps(rng.random((1, h, w)).astype(np.float32)) for _ in targets))


def test_error_tiles_draw_the_stored_maps_of_the_classes_shown():
    grey = np.full((40, 40, 3), 128, np.uint8)
    empty = pd.DataFrame()
    errors = pd.DataFrame({"image_id": [1, 2, 3], "split": "test", "relpath": ["a/1.jpg", "a/2.jpg", "a/3.jpg"],
                           "label": [0, 0, 1], "pred": [1, 2, 0], "confidence": [0.9, 0.8, 0.7]})
    stored = {1: _stored(1, [TARGET_PRED, TARGET_TRUE], [1, 0]),
              2: _stored(2, [TARGET_PRED], [2])}  # no true-class map: it must not stand in for one
    asked = []

    def load_cams(ids):
        asked.append(list(ids))
        return {i: stored[i] for i in ids if i in stored}

    data = report.RunData(run_id=1, run_name="r", names=("a", "b", "c"), predictions=errors, errors=errors,
                          cm=np.zeros((3, 3), int), per_class=empty, pairs=empty, epochs=empty,
                          load_image=lambda relpath, side: np.full((side, side, 3), 128, np.uint8),
                          load_cams=load_cams)
    tiles = report.error_tiles(data, errors, side=40, dpi=72)
    assert asked == [[1, 2, 3]]  # one call for the whole sheet
    placeholder = (225, 225, 225)

    def drawn(panel):
        return tuple(panel[0][0, 0]) != placeholder and not np.array_equal(panel[0], grey)

    assert [label for _, label in tiles[0].panels] == ["test · 1.jpg", "Grad-CAM: predicted", "Grad-CAM: true"]
    assert tiles[0].header == ["true: a", "pred: b (90%)"]
    assert [drawn(p) for p in tiles[0].panels[1:]] == [True, True]
    for panel, target in zip(tiles[0].panels[1:], (TARGET_PRED, TARGET_TRUE)):
        assert np.array_equal(panel[0], overlay(grey, stored[1].map(target))), target  # the shared colours
    assert [drawn(p) for p in tiles[1].panels[1:]] == [True, False]
    assert [drawn(p) for p in tiles[2].panels[1:]] == [False, False]


@pytest.mark.parametrize("kwargs", [{"formats": ()}, {"formats": ("jpg",)}, {"worst": 0}, {"dpi": 10}])
def test_options_are_checked(kwargs):
    with pytest.raises(ValueError):
        report.ExportOptions(**kwargs)


# --------------------------------------------------------------------------- the Export page

class _KeptFiles(app_test_module.MemoryMediaFileStorage):
    """Media storage whose files outlive the AppTest run, so a download button's bytes can be read."""

    kept: dict[str, bytes] = {}

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
        _KeptFiles.kept[file_id] = self.get_file(file_id).content
        return file_id


def _page(url: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", _KeptFiles)
    at = AppTest.from_file(str(HOME), default_timeout=120)
    at.run()
    at.switch_page("views/export.py").run()
    return at


def test_export_page_renders(audited, monkeypatch):
    at = _page(audited[0], monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Export"]
    assert not at.download_button  # built only on request


def test_download_button_returns_the_same_files(full_set, audited, monkeypatch):
    at = _page(audited[0], monkeypatch)
    at.multiselect(key="exp_formats").set_value(["png", "svg", "pdf"]).run()
    at.button(key="exp_build").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (button,) = at.download_button
    file_id = button.proto.url.rsplit("/", 1)[-1].split(".")[0]
    data = _KeptFiles.kept[file_id]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        with Image.open(io.BytesIO(zf.read("worst-errors.png"))) as im:
            assert im.width == 2100
    assert names == {p.name for p in full_set.iterdir()}
    assert {f["file"] for f in manifest["files"]} == {f["file"] for f in _manifest(full_set)["files"]}
    # a changed choice hides the stale zip until it is built again
    at.multiselect(key="exp_formats").set_value(["png"]).run()
    assert not at.download_button


# --------------------------------------------------------------------------- trust: faithfulness and sanity check

TRUST_PLOTS = {"trust-per-class", "sanity-cascade"}


def _trust_files(m: dict) -> set[str]:
    return {f["file"] for f in m["files"] if f["file"].startswith(("trust-", "sanity-"))}


@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    """A run scored by the trust job: faithfulness rows for the valid split and a sanity check."""
    return build_store(tmp_path_factory.mktemp("trusted"), n_classes=5, n_per_class=4, seed=6, name="trusted",
                       trust=True)


def _per_class_from_store(url: str, run_id: int) -> pd.DataFrame:
    """Per class, straight from the rows: mean AUCs per map and the share where Grad-CAM deletes better."""
    engine = make_engine(url, readonly=True)
    with make_sessionmaker(engine)() as s:
        rows = pd.DataFrame(s.execute(
            select(ImageRow.label, TrustScore.image_id, TrustScore.method, TrustScore.deletion_auc,
                   TrustScore.insertion_auc)
            .join(ImageRow, ImageRow.id == TrustScore.image_id)
            .where(TrustScore.run_id == run_id, TrustScore.target == "pred")).all(),
            columns=["label", "image_id", "method", "deletion_auc", "insertion_auc"])
        names = [c.name for c in s.scalars(select(RunClass).where(RunClass.run_id == run_id)
                                           .order_by(RunClass.index))]
    engine.dispose()
    out = {}
    for label, g in rows.groupby("label"):
        means = g.groupby("method")[["deletion_auc", "insertion_auc"]].mean()
        d = g.pivot(index="image_id", columns="method", values="deletion_auc")
        out[names[label]] = {"images": g["image_id"].nunique(),
                             **{f"del_{m}": means.loc[m, "deletion_auc"] for m in means.index},
                             **{f"ins_{m}": means.loc[m, "insertion_auc"] for m in means.index},
                             "beats_random": float((d["gradcam"] < d["random"]).mean())}
    return pd.DataFrame.from_dict(out, orient="index")


def test_trust_table_matches_the_store(trusted, tmp_path):
    url, run_id, _ = trusted
    out = tmp_path / "set"
    assert _export(url, out, *NO_BROWSER) == 0
    m = _manifest(out)
    assert _trust_files(m) == {"trust-per-class.csv"}
    assert {s["item"] for s in m["skipped"]} >= TRUST_PLOTS  # yielded, then skipped for want of a browser
    (entry,) = [f for f in m["files"] if f["file"] == "trust-per-class.csv"]
    assert "beats_random" in entry["caption"] and entry["kind"] == "table"
    table = pd.read_csv(out / "trust-per-class.csv").set_index("class")
    expected = _per_class_from_store(url, run_id)
    assert entry["rows"] == len(table) == 5
    assert set(table.columns) == set(expected.columns) == {
        "images", "beats_random", *(f"{k}_{m}" for k in ("del", "ins") for m in ("gradcam", "random", "centre"))}
    pd.testing.assert_frame_equal(table.sort_index()[sorted(expected.columns)],
                                  expected.sort_index()[sorted(expected.columns)],
                                  check_dtype=False, check_names=False, atol=1e-9)
    assert table["images"].sum() == 5 * 4  # every valid image scored once


def test_trust_plots_are_written_and_listed(trusted, tmp_path):
    _need_browser()
    url, _, _ = trusted
    out = tmp_path / "set"
    assert _export(url, out, "--format", "png,svg") == 0
    m = _manifest(out)
    assert m["skipped"] == []
    expected = {f"{s}.{x}" for s in TRUST_PLOTS for x in ("png", "svg")} | {"trust-per-class.csv"}
    assert _trust_files(m) == expected
    assert {f["file"] for f in m["files"]} | {"manifest.json"} == {p.name for p in out.iterdir()}
    captions = {f["file"]: f["caption"] for f in m["files"]}
    assert "Deletion AUC" in captions["trust-per-class.png"]
    assert "features.35" in captions["sanity-cascade.png"] and "4 images" in captions["sanity-cascade.png"]
    for stem in TRUST_PLOTS:
        with Image.open(out / f"{stem}.png") as im:
            assert im.width == 2100 and im.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def test_splits_without_scores_leave_only_the_sanity_check(trusted, tmp_path):
    url, _, _ = trusted
    out = tmp_path / "set"
    assert _export(url, out, *NO_BROWSER, "--splits", "test") == 0  # scores exist for valid only
    m = _manifest(out)
    assert _trust_files(m) == set()
    assert "sanity-cascade" in {s["item"] for s in m["skipped"]}
    assert "trust-per-class" not in {s["item"] for s in m["skipped"]}


def test_without_trust_rows_nothing_trust_related_is_written(audited, tmp_path):
    url, _, _ = audited
    out = tmp_path / "set"
    assert _export(url, out, *NO_BROWSER) == 0
    m = _manifest(out)
    assert _trust_files(m) == set() and not any(p.name.startswith(("trust-", "sanity-")) for p in out.iterdir())
    assert not TRUST_PLOTS & {s["item"] for s in m["skipped"]}


def test_a_store_from_before_the_trust_tables_exports(tmp_path):
    url, _, _ = build_store(tmp_path, n_classes=3, n_per_class=2, splits=("valid",))
    with sqlite3.connect(url.removeprefix("sqlite:///")) as con:
        con.execute("DROP TABLE trust_scores")
        con.execute("DROP TABLE sanity_checks")
    out = tmp_path / "set"
    assert _export(url, out, *NO_BROWSER) == 0
    assert _trust_files(_manifest(out)) == set()


def test_export_page_includes_the_trust_files(trusted, tmp_path, monkeypatch):
    url, _, _ = trusted
    cli = tmp_path / "cli"
    assert _export(url, cli) == 0  # the same browser choice as the page: plots where Chromium is found
    at = _page(url, monkeypatch)
    at.button(key="exp_build").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (button,) = at.download_button
    data = _KeptFiles.kept[button.proto.url.rsplit("/", 1)[-1].split(".")[0]]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = set(zf.namelist())
        table = pd.read_csv(io.BytesIO(zf.read("trust-per-class.csv")))
    assert names == {p.name for p in cli.iterdir()} and "trust-per-class.csv" in names
    pd.testing.assert_frame_equal(table, pd.read_csv(cli / "trust-per-class.csv"))
