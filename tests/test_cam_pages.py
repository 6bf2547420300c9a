"""The CAM methods on the pages and in the export: the picker, the row of every stored method, the ranking of
the methods (``core.method_rank``), its CSV, and how a page's maps are read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.cammaps import BASELINES, METHOD_LABELS, encode_maps, method_label, parse_methods, stored_targets
from core.intervals import wilson_interval
from core.method_rank import rank_methods
from db import queries
from db.store import make_engine, make_sessionmaker
from jobs import export
from tests.storefactory import build_store

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
METHODS = ("gradcam", "layercam", "eigencam")
MAP_PAGES = ["views/gallery.py", "views/compare.py", "views/data_issues.py", "views/trust.py"]
PICKERS = {"views/gallery.py": "gal_method", "views/compare.py": "cmp_method", "views/data_issues.py": "di_method",
           "views/trust.py": "tr_method"}


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A run holding three methods' maps, scored by the trust job, audited, with object boxes."""
    return build_store(tmp_path_factory.mktemp("methods"), n_classes=4, n_per_class=3, seed=5, methods=METHODS,
                       trust=True, audit=True, boxes=True)


def app(url: str, monkeypatch, page: str, **params) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=60)
    at.query_params.update(params)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def param(at: AppTest, name: str):
    value = at.query_params.get(name)
    return value[-1] if isinstance(value, list) else value


# --------------------------------------------------------------------------- the picker


@pytest.mark.parametrize("page", MAP_PAGES)
def test_picker_offers_the_stored_methods_and_follows_the_url(many, monkeypatch, page):
    at = app(many[0], monkeypatch, page, method="layercam")
    box = at.selectbox(key=PICKERS[page])
    assert box.options == [METHOD_LABELS[m] for m in METHODS]
    assert box.value == "layercam" and param(at, "method") == "layercam"
    box.set_value("eigencam").run()
    assert not at.exception and param(at, "method") == "eigencam"


def test_a_method_the_run_lacks_falls_back_to_grad_cam(many, monkeypatch):
    at = app(many[0], monkeypatch, "views/gallery.py", method="hirescam")
    assert at.selectbox(key="gal_method").value == "gradcam" and param(at, "method") == "gradcam"
    assert any("Grad-CAM map of the predicted sport" in c.value for c in at.caption)


def test_the_choice_carries_to_the_other_pages(many, monkeypatch):
    at = app(many[0], monkeypatch, "views/gallery.py")
    at.selectbox(key="gal_method").set_value("eigencam").run()
    at.switch_page("views/compare.py").run()
    assert not at.exception
    assert at.selectbox(key="cmp_method").value == "eigencam" and param(at, "method") == "eigencam"
    assert any("Eigen-CAM: predicted" in m.value for m in at.markdown)


# --------------------------------------------------------------------------- the comparison row


def _image(url: str, wrong: bool) -> int:
    with make_sessionmaker(make_engine(url, readonly=True))() as s:
        preds = queries.predictions_frame(s, 1)
    pick = preds[(preds["pred"] != preds["label"]) == wrong]
    return int(pick["image_id"].iloc[0])


def bar_notes(at: AppTest) -> list[str]:
    """The captions of the colour bars a page shows (the key to its heatmaps)."""
    return [i.caption for im in at.get("image") for i in im.proto.imgs if i.caption.startswith("Heatmap colours")]


@pytest.mark.parametrize("wrong", [True, False])
def test_comparison_shows_every_method_for_each_target(many, monkeypatch, wrong):
    image_id = _image(many[0], wrong)
    at = app(many[0], monkeypatch, "views/compare.py", image=str(image_id))
    titles = ["Predicted class", "True class", "Predicted vs true"]
    rows = [m.value.split("**")[1] for m in at.markdown
            if m.value.count("**") == 2 and m.value.split("**")[1] in titles]
    assert rows == (titles if wrong else titles[:1])
    captions = [c.value for c in at.caption if " · peak " in c.value]
    # Eigen-CAM explains no class: no contrast map, its one map stands in for the true class.
    expected = sum(len(METHODS) - (t == "contrast") for t in (stored_targets("gradcam", not wrong)))
    assert len(captions) == expected
    assert {c.split(" · ")[0] for c in captions} == {METHOD_LABELS[m] for m in METHODS}
    colour_bars = len(rows)
    main = 3 if wrong else 2  # the model input, the predicted class's map and, for a mistake, the true class's
    # ... and one colour bar for those, one for each row of methods
    assert len(at.get("image")) == main + expected + 1 + colour_bars
    assert sum("one scale for the row" in c for c in bar_notes(at)) == colour_bars
    at.radio(key="cmp_row_scale").set_value("each map to its own peak").run()
    assert not at.exception and sum("each map scaled to its own peak" in c for c in bar_notes(at)) == colour_bars + 1


# --------------------------------------------------------------------------- the ranking


def test_trust_page_ranks_the_methods_and_details_the_chosen_one(many, monkeypatch):
    at = app(many[0], monkeypatch, "views/trust.py")
    sentences = [m.value for m in at.markdown if m.value.startswith("**Read") or m.value.startswith("**No CAM")]
    assert len(sentences) == 1 and sentences[0].count(". ") == 0  # one sentence
    with make_sessionmaker(make_engine(many[0], readonly=True))() as s:
        expected = queries.method_ranking(s, 1, queries.class_names(s, 1))
    sure = expected.confidence
    assert sentences[0] == f"**{expected.sentence}**"
    margin = at.metric[0]
    assert margin.label == f"{METHOD_LABELS[expected.winner]} beats {METHOD_LABELS[expected.runner_up]}"
    assert margin.value == f"{sure.value:.0%}"
    assert f"{sure.k} of {sure.n} images · 95% interval {sure.lo:.0%}-{sure.hi:.0%}" in [c.value for c in at.caption]
    table = at.dataframe[0].value  # the ranking comes first, its maps by name
    assert list(table["map"])[-len(BASELINES):] == list(map(method_label, BASELINES))  # the baselines close it
    assert set(table["map"]) == set(map(method_label, (*METHODS, *BASELINES)))
    at.selectbox(key="tr_method").set_value("layercam").run()
    assert not at.exception
    assert [m.label for m in at.metric if "deletion AUC" in m.label][:3] == [
        "LayerCAM: deletion AUC", "random map: deletion AUC", "centred map: deletion AUC"]


def _frame(scores: dict[str, list[float]], labels: list[int]) -> pd.DataFrame:
    """trust_frame-like rows of the "pred" target: the score of each map goes into its insertion AUC."""
    rows = []
    for method, values in scores.items():
        for i, v in enumerate(values):
            rows.append(dict(image_id=i, label=labels[i], target="pred", method=method, deletion_auc=0.2,
                             insertion_auc=0.2 + v))
    return pd.DataFrame(rows)


def test_ranking_order_margin_and_interval():
    labels = [0] * 6 + [1] * 4
    scores = {"gradcam": [0.5] * 10, "layercam": [0.6] * 9 + [0.1], "random": [0.0] * 10,
              "centre": [0.05] * 10}
    r = rank_methods(_frame(scores, labels), ["a", "b"])
    assert list(r.table["method"]) == ["layercam", "gradcam", "random", "centre"]
    assert list(r.table["rank"].astype(object)) == [1, 2, pd.NA, pd.NA]
    assert r.winner == "layercam" and r.runner_up == "gradcam"
    assert (r.confidence.k, r.confidence.n) == (9, 10)
    assert (r.confidence.lo, r.confidence.hi) == pytest.approx(wilson_interval(9, 10))
    assert r.sentence.startswith("Read LayerCAM:") and "9 of 10 images" in r.sentence
    per = r.per_class.set_index("class")
    assert per.loc["a", "winner"] == "layercam" and per.loc["a", "n"] == 6 and per.loc["a", "beats_runner_up"] == 1
    # Class b's one bad LayerCAM map pulls its mean below Grad-CAM's: the winner differs by class.
    assert per.loc["b", "winner"] == "gradcam" and per.loc["b", "runner_up"] == "layercam"
    assert per.loc["b", "beats_runner_up"] == pytest.approx(0.25) and per.loc["b", "n"] == 4
    assert r.table.set_index("method").loc["gradcam", "beats_random"] == 1.0


def test_ranking_says_when_it_cannot_tell_or_nothing_is_faithful():
    close = rank_methods(_frame({"gradcam": [0.5, 0.1] * 3, "hirescam": [0.2, 0.3] * 3, "random": [0.0] * 6},
                                [0] * 6), ["a"])
    assert close.winner == "gradcam" and "close behind" in close.sentence and "3 of 6" in close.sentence
    bad = rank_methods(_frame({"gradcam": [0.1] * 4, "random": [0.3] * 4}, [0] * 4), ["a"])
    assert bad.sentence.startswith("No CAM method is faithful")
    assert rank_methods(_frame({"random": [0.1] * 3}, [0] * 3), ["a"]) is None


def test_parse_methods():
    assert parse_methods(" gradcam, layercam,gradcam ") == ("gradcam", "layercam")
    assert parse_methods("all", all_means=("eigencam",)) == ("eigencam",)
    for bad in ("", "all", "gradcam,nope"):
        with pytest.raises(ValueError, match="expected"):
            parse_methods(bad)


# --------------------------------------------------------------------------- the export and the store


def test_export_carries_the_ranking_table(many, tmp_path):
    url, run_id, _ = many
    out = tmp_path / "set"
    assert export.run_cli(export.main, export.get_args_parser(),
                          ["--db", url, "--out", str(out), "--browser", "/nonexistent/chromium"]) == 0
    table = pd.read_csv(out / "method-ranking.csv")
    with make_sessionmaker(make_engine(url, readonly=True))() as s:
        expected = queries.method_ranking(s, run_id, queries.class_names(s, run_id))
    assert list(table["method"]) == list(expected.table["method"])
    np.testing.assert_allclose(table["score"], expected.table["score"])
    assert table["pointing_n"].notna().all()  # the boxes gave every map a pointing game
    assert (out / "method-ranking-per-class.csv").is_file()


def test_a_page_of_maps_is_read_by_key_not_by_scan(many):
    url, run_id, _ = many
    with make_sessionmaker(make_engine(url, readonly=True))() as s:
        ids = queries.predictions_frame(s, run_id)["image_id"].head(25).tolist()
        plan = queries.maps_query_plan(s, ids, "layercam")
        assert len(queries.maps_for(s, run_id, ids, "layercam")) == len(ids)
        assert queries.maps_for(s, run_id + 1, ids, "layercam") == {}  # another run's images are not its own
    # One lookup per image by the primary key (image_id, method, target): never a read of the whole run.
    assert plan == ["SEARCH cam_maps USING INDEX sqlite_autoindex_cam_maps_1 (image_id=? AND method=?)"], plan


def test_a_stored_14x14_map_is_392_bytes():
    assert len(encode_maps(np.ones((1, 14, 14), np.float32))) == 392 <= 512
