"""The dashboard's pages under ``AppTest``, and the queries, figures and image loading they rest on."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import figures
from core.metrics import confused_pairs
from core.images import load_display_image, safe_image_path
from core import cammaps as _cam
from dashboard import loaders, tiles
from dashboard.context import Ctx, upgrade_message
from dashboard.loaders import db_url_from_argv
from dashboard.state import filter_errors
from dashboard.tiles import map_of_class
from db import queries
from db.store import make_engine, make_sessionmaker
from tests.storefactory import build_empty_store, build_store

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
PAGES = ["views/overview.py", "views/confusion.py", "views/per_class.py", "views/gallery.py", "views/compare.py",
         "views/data_issues.py"]
TITLES = dict(zip(PAGES, ["Overview", "Confusion matrix", "Per-class accuracy", "Misclassifications",
                          "Heatmap comparison", "Data issues"]))
ALL_PAGES = PAGES + ["views/export.py", "views/trust.py"]
ALL_TITLES = {**TITLES, "views/export.py": "Export", "views/trust.py": "Can the maps be trusted?"}
V1_STORE = Path(__file__).resolve().parent / "fixtures" / "store_v1.db"


# --------------------------------------------------------------------------- stores

@pytest.fixture(scope="module")
def normal(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("normal"), n_classes=10, n_per_class=4, seed=1)


@pytest.fixture(scope="module")
def no_errors(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("clean"), with_errors=False, splits=("valid",))


@pytest.fixture(scope="module")
def hundred(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("hundred"), n_classes=100, n_per_class=2, seed=2)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("audited"), n_classes=10, n_per_class=4, seed=1, audit=True)


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    return build_empty_store(tmp_path_factory.mktemp("empty"))


def session_for(url):
    return make_sessionmaker(make_engine(url, create=False))()


def app(url: str, monkeypatch, page: str | None = None, **params) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=60)
    at.query_params.update(params)
    at.run()
    if page and page != PAGES[0]:
        at.switch_page(page).run()
    return at


def param(at: AppTest, name: str) -> list[str]:
    value = at.query_params.get(name, [])
    return [value] if isinstance(value, str) else list(value)


def pictures(at: AppTest) -> list:
    """The images a page shows, without the colour bar that is the key to its heatmaps."""
    return [im for im in at.get("image") if not im.proto.imgs[0].caption.startswith("Heatmap colours")]


def shown_count(at: AppTest) -> int:
    for m in at.markdown:
        found = re.match(r"\*\*([\d,]+)\*\* misclassified images match", m.value)
        if found:
            return int(found.group(1).replace(",", ""))
    raise AssertionError(f"no count shown; markdown: {[m.value for m in at.markdown]}")


# --------------------------------------------------------------------------- every page, every store

@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("store", ["normal", "no_errors", "hundred"])
def test_page_renders(page, store, request, monkeypatch):
    url, _, _ = request.getfixturevalue(store)
    at = app(url, monkeypatch, page)
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [TITLES[page]]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_empty_store_explains(page, empty, monkeypatch):
    at = app(empty, monkeypatch, page)
    assert not at.exception
    assert any("python -m jobs.train" in i.value for i in at.info)


@pytest.mark.parametrize("page", PAGES)
def test_missing_store_explains(page, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'nowhere.db'}"
    at = app(url, monkeypatch, page)
    assert not at.exception
    assert any("python -m jobs.train" in i.value for i in at.info)
    assert not (tmp_path / "nowhere.db").exists(), "the dashboard must not create a store"


def test_unreadable_store_is_an_error_not_a_traceback(tmp_path, monkeypatch):
    bad = tmp_path / "junk.db"
    bad.write_bytes(b"this is not a database" * 100)
    at = app(f"sqlite:///{bad}", monkeypatch)
    assert not at.exception
    assert [e.value for e in at.error] == [f"Cannot read the store: {bad} is not a SQLite file (it does not start "
                                           "with SQLite's header); check the --db path"]
    assert not at.info and not at.metric  # the page stopped at the message


@pytest.mark.parametrize("page", ALL_PAGES)
def test_v1_store_names_the_upgrade(page, tmp_path, monkeypatch):
    store = tmp_path / "old.db"
    shutil.copyfile(V1_STORE, store)
    before = store.read_bytes()
    url = f"sqlite:///{store}"
    at = app(url, monkeypatch, page)
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [ALL_TITLES[page]]
    (line,) = [e.value for e in at.error]
    assert line == upgrade_message(url) and "\n" not in line
    assert f"`python -m jobs.upgrade --db {url}`" in line
    assert not at.info and not at.warning and not at.metric and not at.dataframe
    assert store.read_bytes() == before, "the dashboard must not change the store"


def test_overview_headline(normal, monkeypatch):
    url, run_id, _ = normal
    at = app(url, monkeypatch)
    labels = [m.label for m in at.metric]
    assert labels.count("Top-1 accuracy") == 2  # valid and test
    with session_for(url) as s:
        ev = queries.evaluations_frame(s, run_id).set_index("split")
        errors = len(queries.errors_frame(s, run_id, splits=["valid"]))
    values = {m.label: m.value for m in at.metric[:4]}  # the first split drawn is valid
    assert values["Top-1 accuracy"] == f"{ev.loc['valid', 'top1']:.1%}"
    assert values["Errors"] == f"{errors:,}"
    assert param(at, "run") == [str(run_id)]


# --------------------------------------------------------------------------- filters and carried choices

def test_gallery_filters_reduce_count(normal, monkeypatch):
    url, run_id, _ = normal
    at = app(url, monkeypatch, "views/gallery.py")
    everything = shown_count(at)
    assert everything > 0
    with session_for(url) as s:
        names = queries.run_info(s, run_id).classes
        errs = queries.errors_frame(s, run_id)
    sport = names[int(errs["label"].value_counts().index[0])]
    at.multiselect(key="gal_true").set_value([sport]).run()
    assert not at.exception
    one = shown_count(at)
    assert 0 < one < everything
    assert one == int((errs["label"] == names.index(sport)).sum())
    assert param(at, "sport") == [sport]

    at.slider(key="gal_conf").set_value((0.99, 1.0)).run()
    assert not at.exception
    assert shown_count(at) <= one

    at.multiselect(key="gal_true").set_value([]).run()
    at.slider(key="gal_conf").set_value((0.0, 1.0)).run()
    at.selectbox(key="gal_split").set_value("test").run()
    assert shown_count(at) == int((errs["split"] == "test").sum())


def test_gallery_pages(hundred, monkeypatch):
    url, _, _ = hundred
    at = app(url, monkeypatch, "views/gallery.py")
    total = shown_count(at)
    assert total > 25
    assert len(pictures(at)) == 25
    at.number_input(key="gal_page").set_value(2).run()
    assert not at.exception
    assert len(pictures(at)) == min(25, total - 25)
    at.selectbox(key="gal_size").set_value(50).run()
    assert at.number_input(key="gal_page").value == 1  # a new filter starts at page 1
    assert len(pictures(at)) == min(50, total)


def test_link_reproduces_gallery_view(normal, monkeypatch):
    url, run_id, _ = normal
    with session_for(url) as s:
        names = queries.run_info(s, run_id).classes
        errs = queries.errors_frame(s, run_id)
    sport = names[int(errs["label"].iloc[0])]
    at = app(url, monkeypatch, "views/gallery.py", run=str(run_id), sport=sport, split="valid")
    assert not at.exception
    assert at.multiselect(key="gal_true").value == [sport]
    assert at.selectbox(key="gal_split").value == "valid"
    expected = int(((errs["label"] == names.index(sport)) & (errs["split"] == "valid")).sum())
    assert shown_count(at) == expected


def test_per_class_sport_carries_to_gallery(normal, monkeypatch):
    url, run_id, _ = normal
    at = app(url, monkeypatch, "views/per_class.py")
    table = at.dataframe[0].value
    assert list(table["f1"]) == sorted(table["f1"])  # worst first by default
    sport = table["class"].iloc[-1]
    at.selectbox(key="pc_sport").set_value(sport).run()
    at.button(key="pc_to_gallery").click().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Misclassifications"]
    assert at.multiselect(key="gal_true").value == [sport]


def test_confusion_pair_choice_shows_its_images(normal, monkeypatch):
    url, run_id, _ = normal
    at = app(url, monkeypatch, "views/confusion.py")
    pairs = at.dataframe[0].value
    assert list(pairs["count"]) == sorted(pairs["count"], reverse=True)
    options = at.selectbox(key="cm_pair").options
    last = options[-1]
    at.selectbox(key="cm_pair").set_value(last).run()
    assert not at.exception
    true, pred = re.match(r"(.+) → (.+) \((\d+)\)", last).group(1, 2)
    assert any(f"of *{true}* predicted as *{pred}*" in m.value for m in at.markdown)
    at.radio(key="cm_scale").set_value("row-normalized").run()
    at.radio(key="cm_order").set_value("grouped by confusion").run()
    assert not at.exception
    assert at.selectbox(key="cm_pair").value == last
    at.button(key="cm_to_gallery").click().run()
    assert [t.value for t in at.title] == ["Misclassifications"]
    assert at.multiselect(key="gal_pred").value == [pred]


def test_compare_walks_the_gallery(normal, monkeypatch):
    url, run_id, _ = normal
    at = app(url, monkeypatch, "views/compare.py")
    first = at.session_state["image"]
    at.button(key="cmp_next").click().run()
    assert not at.exception
    assert at.session_state["image"] != first
    at.button(key="cmp_prev").click().run()
    assert at.session_state["image"] == first
    for norm in ("shared across both maps", "none (raw values)"):
        at.radio(key="cmp_norm").set_value(norm).run()
        assert not at.exception
    at.selectbox(key="cmp_cmap").set_value("viridis").run()
    assert not at.exception
    assert param(at, "image") == [str(first)]
    assert not at.info  # a misclassified image of this store has both maps stored
    # the input, the predicted and the true class's map; below, the row of every stored method (Grad-CAM
    # alone here) for each target the store holds (no contrast in this store); colour bars not counted
    assert len(pictures(at)) == 3 + 2


def test_compare_from_link_on_a_correct_image(normal, monkeypatch):
    url, run_id, _ = normal
    with session_for(url) as s:
        p = queries.predictions_frame(s, run_id)
    right = int(p.loc[p["label"] == p["pred"], "image_id"].iloc[0])
    at = app(url, monkeypatch, "views/compare.py", image=str(right))
    assert not at.exception
    assert at.session_state["image"] == right and param(at, "image") == [str(right)]
    (line,) = [m.value for m in at.markdown if m.value.startswith("**") and " · true **" in m.value]
    assert line.endswith(" · correct") or " · correct · loss " in line, line
    assert [i.value for i in at.info] == ["Prediction is correct: the true class's map is the one to its left."]
    assert len(pictures(at)) == 2 + 1  # the input and the predicted class's map; its method row


# --------------------------------------------------------------------------- queries

def test_queries_counts_and_pairs(normal):
    url, run_id, _ = normal
    with session_for(url) as s:
        info = queries.run_info(s, run_id)
        preds = queries.predictions_frame(s, run_id)
        cm = queries.confusion_matrix(s, run_id, len(info.classes))
        cm_valid = queries.confusion_matrix(s, run_id, len(info.classes), ["valid"])
        errors = queries.errors_frame(s, run_id)
        assert queries.prediction_splits(s, run_id) == ["valid", "test"]
        assert len(queries.epochs_frame(s, run_id)) == 7
        assert set(queries.epochs_frame(s, run_id)["phase"]) == {1, 2}
        assert queries.image_detail(s, run_id, 10**6) is None
        one = queries.errors_frame(s, run_id, true_classes=[0], pred_classes=[1], confidence=(0.5, 1.0))
    assert len(preds) == 2 * 10 * 4
    assert cm.sum() == len(preds) and cm_valid.sum() == 40
    assert np.trace(cm) == int((preds["label"] == preds["pred"]).sum())
    assert len(errors) == cm.sum() - np.trace(cm)
    assert list(errors["confidence"]) == sorted(errors["confidence"], reverse=True)
    assert ((one["label"] == 0) & (one["pred"] == 1) & (one["confidence"] >= 0.5)).all()

    pairs = confused_pairs(cm, info.classes, limit=None)
    assert pairs["count"].sum() == len(errors)
    assert list(pairs["count"]) == sorted(pairs["count"], reverse=True)
    top = pairs.iloc[0]
    assert cm[top.true_idx, top.pred_idx] == top["count"]
    assert top.reverse_count == cm[top.pred_idx, top.true_idx]


def test_default_run_prefers_complete(tmp_path):
    url, run_id, _ = build_store(tmp_path, n_classes=3, n_per_class=1)
    from db.store import create_run

    Session = make_sessionmaker(make_engine(url))
    with Session.begin() as s:
        newer = create_run(s, name="later", config={}, data_root=str(tmp_path), device="cpu", weights="none",
                           image_size=32, cam_layer=None, class_names=["x"], absent_splits={}).id
    with Session() as s:
        assert queries.default_run_id(s) == run_id
        runs = queries.list_runs(s)
    assert list(runs["id"]) == [newer, run_id]
    assert list(runs["status"]) == ["running", "complete"]


def test_filter_errors_matches_query(normal):
    url, run_id, _ = normal
    with session_for(url) as s:
        names = queries.run_info(s, run_id).classes
        all_errors = queries.errors_frame(s, run_id)
        by_sql = queries.errors_frame(s, run_id, splits=["test"], true_classes=[1, 2], confidence=(0.4, 0.9))
    by_pandas = filter_errors(all_errors, names, splits=["test"], true=[names[1], names[2]], conf=(0.4, 0.9))
    assert list(by_pandas["image_id"]) == list(by_sql["image_id"])


def test_one_engine_and_sessionmaker_per_store(normal):
    url = normal[0]
    first = loaders.connect(url)
    assert loaders.connect(url) is first  # cached with the engine, not made per load
    with loaders.session(url) as a, loaders.session(url) as b:
        assert a is not b and a.get_bind() is b.get_bind() is first.engine


def test_argv_db_option():
    assert db_url_from_argv(["--db", "sqlite:///x.db"]) == "sqlite:///x.db"
    assert db_url_from_argv(["-q", "tests"]) is None


# --------------------------------------------------------------------------- images

@pytest.fixture()
def root(tmp_path):
    (tmp_path / "root" / "a").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "root" / "a" / "x.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.jpg")
    return tmp_path / "root"


def test_safe_path_inside(root):
    assert safe_image_path(root, "a/x.jpg") == (root / "a" / "x.jpg").resolve()
    with pytest.raises(FileNotFoundError):
        safe_image_path(root, "a/missing.jpg")


@pytest.mark.parametrize("bad", ["../secret.jpg", "a/../../secret.jpg", "/etc/passwd", "", "C:\\x.jpg", "\\\\srv\\x.jpg"])
def test_safe_path_refuses_escapes(root, bad):
    with pytest.raises(ValueError) as err:
        safe_image_path(root, bad)
    assert repr(bad) in str(err.value)


def test_safe_path_refuses_symlink_out(root):
    os.symlink(root.parent / "secret.jpg", root / "a" / "link.jpg")
    with pytest.raises(ValueError, match="outside the data root"):
        safe_image_path(root, "a/link.jpg")
    os.symlink(root / "a" / "x.jpg", root / "inner.jpg")
    assert safe_image_path(root, "inner.jpg") == (root / "a" / "x.jpg").resolve()


def test_load_display_image(root):
    img = load_display_image(root, "a/x.jpg", 24)
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8
    assert img[..., 0].mean() > 150 and img[..., 2].mean() < 60
    with pytest.raises(ValueError):
        load_display_image(root, "../secret.jpg", 24)


# --------------------------------------------------------------------------- maps and figures

def test_decode_and_overlay():
    maps = np.random.default_rng(0).random((2, 7, 7)).astype(np.float16)
    out = _cam.decode_maps(maps.tobytes(), 2, 7, 7)
    assert out.dtype == np.float32 and np.array_equal(out, maps.astype(np.float32))
    with pytest.raises(ValueError):
        _cam.decode_maps(maps.tobytes(), 1, 7, 7)
    rgb = np.full((32, 32, 3), 128, np.uint8)
    before = rgb.copy()
    for norm in ("image", "none", ("fixed", 2.0)):
        o = _cam.overlay(rgb, out[0], alpha=0.5, normalize=norm)
        assert o.shape == rgb.shape and o.dtype == np.uint8
    assert np.array_equal(rgb, before)
    assert np.array_equal(_cam.overlay(rgb, out[0], alpha=0.0), rgb)
    with pytest.raises(ValueError):
        _cam.overlay(rgb, out[0], colormap="rainbow-unicorn")


def test_map_of_class_finds_only_the_map_that_explains_it():
    def stored(targets, classes):
        data = tuple(_cam.encode_maps(np.full((1, 2, 2), i + 1, np.float32)) for i in range(len(targets)))
        return _cam.StoredMaps(image_id=1, method=_cam.DEFAULT_METHOD, targets=targets, classes=classes, h=2, w=2,
                               data=data)

    wrong = stored((_cam.TARGET_PRED, _cam.TARGET_TRUE, _cam.TARGET_CONTRAST), (3, 5, 3))
    assert map_of_class(wrong, 3)[0, 0] == 1 and map_of_class(wrong, 5)[0, 0] == 2
    assert map_of_class(wrong, 4) is None and map_of_class(None, 3) is None
    right = stored((_cam.TARGET_PRED,), (3,))  # a correct prediction stores one map, for both classes
    assert map_of_class(right, 3)[0, 0] == 1
    assert map_of_class(stored((_cam.TARGET_PRED,), (3,)), 5) is None  # never the predicted map for another class


def test_tiles_show_the_predicted_class_map(normal):
    url, run_id, _ = normal
    with session_for(url) as s:
        info = queries.run_info(s, run_id)
        errs = queries.errors_frame(s, run_id).head(4)
        maps = queries.maps_for(s, run_id, errs["image_id"])
    assert len(errs) == 4 and set(maps) == set(errs["image_id"])
    ctx = Ctx(url=url, run_id=run_id, stamp="test", info=info)
    px = min(tiles.TILE_PX, info.image_size)
    for r, pic in zip(errs.itertuples(), tiles.tile_images(ctx, errs)):
        cam = maps[int(r.image_id)].map(_cam.TARGET_PRED)
        assert maps[int(r.image_id)].class_of(_cam.TARGET_PRED) == r.pred
        assert pic == tiles.render_view(info.data_root, r.relpath, px, cam, _cam.DEFAULT_COLORMAP, _cam.DEFAULT_ALPHA,
                                        "image")
        assert pic != tiles.render_view(info.data_root, r.relpath, px)  # the map is drawn over the image


def test_confusion_order_is_a_permutation_grouping_confused_classes():
    names = [f"c{i}" for i in range(6)]
    cm = np.eye(6, dtype=int) * 10
    cm[0, 5] = cm[5, 0] = 6  # c0 and c5 are confused with each other
    cm[1, 3] = cm[3, 1] = 6
    order = figures.confusion_order(cm, names, "confusion")
    assert sorted(order) == list(range(6))
    pos = {c: i for i, c in enumerate(order)}
    assert abs(pos[0] - pos[5]) == 1 and abs(pos[1] - pos[3]) == 1
    assert list(figures.confusion_order(cm, ["b", "a", "c", "f", "e", "d"])) == [1, 0, 2, 5, 4, 3]


def test_confusion_heatmap_readable_at_100(hundred):
    url, run_id, _ = hundred
    with session_for(url) as s:
        names = queries.run_info(s, run_id).classes
        cm = queries.confusion_matrix(s, run_id, len(names))
    fig = figures.confusion_heatmap(cm, names, normalize=True, order="confusion", hide_diagonal=True)
    heat, pairs = fig.data
    assert len(heat.x) == 100 and fig.layout.xaxis.dtick == 1  # every class labelled
    assert fig.layout.height >= 12 * 100
    off = cm.copy()
    np.fill_diagonal(off, 0)
    assert len(pairs.customdata) == np.count_nonzero(off)
    t, p = (int(v) for v in pairs.customdata[0][:2])
    assert cm[t, p] > 0 and t != p


def test_training_curves_mark_phase_boundary(normal):
    url, run_id, _ = normal
    with session_for(url) as s:
        epochs = queries.epochs_frame(s, run_id)
    fig = figures.training_curves(epochs)
    lines = [sh for sh in fig.layout.shapes if sh.type == "line"]
    assert len(lines) == 2 and lines[0].x0 == pytest.approx(3.5)
    assert {tr.name for tr in fig.data} >= {"train loss", "val loss", "train acc", "val acc"}
    assert len(figures.training_curves(epochs[epochs.phase == 1]).layout.shapes) == 0


def test_other_figures_handle_empty_input():
    empty = pd.DataFrame(columns=["label", "pred", "confidence"])
    for fig in (figures.confidence_histogram(empty), figures.training_curves(pd.DataFrame()),
                figures.per_class_bars(pd.DataFrame())):
        assert fig.layout.annotations


def test_dashboard_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, dashboard.context, dashboard.figureset, dashboard.loaders, "
            "dashboard.state, dashboard.tiles, core.cammaps, core.figures, core.images, db.queries; "
            "sys.exit('torch' in sys.modules)")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    assert subprocess.run([sys.executable, "-c", code], cwd=repo, env=env).returncode == 0


# --------------------------------------------------------------------------- data audit

def audit_of(url, run_id):
    with session_for(url) as s:
        return queries.audit_report(s, run_id), queries.flagged_images(s, run_id), queries.run_info(s, run_id).classes


def test_page_renders_with_an_audit(audited, monkeypatch):
    url, _, _ = audited
    for page in ("views/data_issues.py", "views/gallery.py", "views/per_class.py"):
        at = app(url, monkeypatch, page)
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]


def test_data_issues_without_audit_says_how_to_run_it(normal, monkeypatch):
    url, run_id, _ = normal
    at = app(url, monkeypatch, "views/data_issues.py")
    assert not at.exception
    assert any(f"python -m jobs.audit --run {run_id}" in i.value for i in at.info)
    assert not at.tabs and not at.metric


def test_audit_queries(audited, normal):
    url, run_id, _ = audited
    report, flags, names = audit_of(url, run_id)
    # planted: an exact copy valid -> test, an exact copy across classes (conflict), a brighter near copy
    assert sorted(g["kind"] for g in report["groups"]) == ["exact", "near"]
    assert len(report["leakage"]) == 2 and len(report["conflicts"]) == 1
    assert [a["split"] for a in report["leakage_accuracy"]] == ["valid", "test"]
    assert report["class_names"] == list(names) and report["created_at"]
    assert flags["image_id"].is_unique
    leaked = {lk["image"]["image_id"] for lk in report["leakage"]}
    by_id = flags.set_index("image_id")
    for i in leaked:
        assert "leak" in by_id.loc[i, "flags"] and by_id.loc[i, "note"].startswith("⚠ leaked: duplicate of valid/")
    for sp in report["suspects"]:
        assert "suspect" in by_id.loc[sp["image_id"], "flags"]
    members = {m["image_id"] for g in report["groups"] for m in g["members"]}
    assert set(flags.loc[flags["flags"].str.contains("duplicate"), "image_id"]) == members
    with session_for(normal[0]) as s:
        assert queries.audit_report(s, normal[1]) is None and queries.audit_stamp(s, normal[1]) is None
        assert queries.flagged_images(s, normal[1]).empty


def table_with(at, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


def group_headers(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**Group ")]


def test_data_issues_filters_by_kind_and_sport(audited, monkeypatch):
    url, run_id, _ = audited
    report, _, names = audit_of(url, run_id)
    at = app(url, monkeypatch, "views/data_issues.py")
    # each group is drawn on the duplicates tab, conflicting ones again on theirs
    n_conf = len(report["conflicts"])
    assert len(group_headers(at)) == len(report["groups"]) + n_conf
    assert at.tabs[1].label == f"Leakage ({len(report['leakage'])})"
    assert len(table_with(at, "duplicate of")) == len(report["leakage"])
    acc = table_with(at, "accuracy_clean")
    assert list(acc["split"]) == ["valid", "test"] and list(acc["n_leaked"]) == [0, 2]

    at.multiselect(key="di_kind").set_value(["near"]).run()
    assert not at.exception
    headers = group_headers(at)
    assert headers and all(" · near · " in h for h in headers)
    assert at.tabs[1].label == "Leakage (0)"  # both leaks are exact copies
    assert param(at, "kind") == ["near"]

    at.multiselect(key="di_kind").set_value([]).run()
    conflict = next(g for g in report["groups"] if g["id"] == report["conflicts"][0]["group"])
    sport = names[conflict["members"][-1]["label"]]
    at.multiselect(key="di_sport").set_value([sport]).run()
    assert not at.exception
    headers = group_headers(at)
    assert headers and all(h.startswith(f"**Group {conflict['id']}**") for h in headers)
    wanted = names.index(sport)
    n_sus = sum(wanted in (sp["label"], sp["pred_label"]) for sp in report["suspects"])
    assert at.tabs[3].label == f"Suspect labels ({n_sus})"
    assert param(at, "sport") == [sport]
    # the sport filter is the shared one: the gallery opens with it
    at.switch_page("views/gallery.py").run()
    assert at.multiselect(key="gal_true").value == [sport]


def test_data_issues_suspects_paged_with_maps(audited, monkeypatch):
    url, run_id, _ = audited
    report, _, _ = audit_of(url, run_id)
    n = len(report["suspects"])
    assert n > 10, "the generated store should have more suspects than one page"
    at = app(url, monkeypatch, "views/data_issues.py")
    captions = [c.value for c in at.caption if c.value.startswith("#")]
    assert len(captions) == 10 and captions[0].startswith("#1 ")
    assert all("given:" in c and "model:" in c for c in captions)
    first = report["suspects"][0]
    assert first["relpath"] in captions[0]
    at.number_input(key="di_suspects_page").set_value(2).run()
    assert not at.exception
    captions = [c.value for c in at.caption if c.value.startswith("#")]
    assert len(captions) == n - 10 and captions[0].startswith("#11 ")
    at.button(key=f"di_sus_{report['suspects'][10]['image_id']}").click().run()
    assert [t.value for t in at.title] == ["Heatmap comparison"]


def test_flags_on_gallery_and_per_class(audited, normal, monkeypatch):
    url, run_id, _ = audited
    report, flags, names = audit_of(url, run_id)
    at = app(url, monkeypatch, "views/gallery.py")
    badges = [c.value for c in at.caption if "⚠" in c.value]
    with session_for(url) as s:
        errors = queries.errors_frame(s, run_id)
    expected = errors["image_id"].isin(flags["image_id"]).head(25).sum()
    assert expected > 0 and len(badges) == expected

    at = app(url, monkeypatch, "views/per_class.py")
    table = at.dataframe[0].value.set_index("class")
    predicted = flags[flags["split"].isin(["valid", "test"])]
    assert table["flagged"].sum() == len(predicted)
    leaked = report["leakage"][0]["image"]
    assert table.loc[names[leaked["label"]], "flagged"] >= 1
    at.selectbox(key="pc_sport").set_value(names[leaked["label"]]).run()
    at.button(key="pc_to_issues").click().run()
    assert [t.value for t in at.title] == ["Data issues"]
    assert at.multiselect(key="di_sport").value == [names[leaked["label"]]]

    # without an audit, no badge and no column
    at = app(normal[0], monkeypatch, "views/per_class.py")
    assert "flagged" not in at.dataframe[0].value.columns
    at = app(normal[0], monkeypatch, "views/gallery.py")
    assert not [c.value for c in at.caption if "⚠" in c.value]
