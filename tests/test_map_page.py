"""The Map page, "It looks like these" on the comparison page and the neighbour-label tab of Data issues,
under ``AppTest`` on generated stores with vectors (``db.builder.add_embedding``)."""
from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import delete, select
from streamlit.testing.v1 import AppTest

from core import reviews as rv

from dashboard.embedding import selected_ids, selection_rows, selection_summary
from db import queries
from db.builder import add_hashes, build_store
from db.builder_embed import add_embedding
from db.models import ImageRow, Prediction
from db.queries import embed as embed_queries
from db.store import make_engine, make_sessionmaker
from jobs.auditing import audit_run
from tests.test_dashboard import V1_STORE, app, param

MAP = "views/map.py"
SPLITS3 = ("train", "valid", "test")


def sessions(url):
    return make_sessionmaker(make_engine(url, create=False))


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """5 classes, 8 train + 2 valid + 2 test images each, vectors, a map and an audit that has read them."""
    url, run_id, root = build_store(tmp_path_factory.mktemp("mapped"), n_classes=5, splits=SPLITS3,
                                    n_per_class={"train": 8, "valid": 2, "test": 2})
    planted = add_embedding(url, run_id)
    with sessions(url).begin() as s:
        audit_run(s, run_id)
    return url, run_id, planted


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("bare"), n_classes=4, n_per_class=2)


def spec(at: AppTest) -> dict:
    (chart,) = at.get("plotly_chart")
    return json.loads(chart.proto.spec)


def trace_names(at: AppTest) -> list[str]:
    return [t["name"] for t in spec(at)["data"]]


def map_caption(at: AppTest) -> str:
    (line,) = [c.value for c in at.main.caption if "The map (" in c.value]
    return line


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_map_shows_every_image_in_each_colouring(mapped, monkeypatch):
    url, run_id, _ = mapped
    at = app(url, monkeypatch, MAP)
    ok(at)
    assert [t.value for t in at.title] == ["Map"]
    assert map_caption(at).startswith("60 of 60 images; confidences raw. The map (layout, seed 0")
    assert "cannot show a picture on hover" in map_caption(at)
    with sessions(url)() as s:
        names = queries.class_names(s, run_id)
        points = embed_queries.map_points(s, run_id)
    by_class = trace_names(at)
    assert by_class == [f"{n} (12)" for n in names]
    assert sum(len(t["customdata"]["bdata"]) > 0 for t in spec(at)["data"]) == 5
    wrong = int((points["pred"] != points["label"]).sum())
    at.selectbox(key="map_color").set_value("correct").run()
    ok(at)
    assert trace_names(at) == [f"right ({60 - wrong})", f"wrong ({wrong})"]
    at.selectbox(key="map_color").set_value("split").run()
    assert trace_names(at) == ["train (40)", "valid (10)", "test (10)"]
    at.selectbox(key="map_color").set_value("confidence").run()
    ok(at)
    assert trace_names(at) == ["confidence (60)"]
    at.selectbox(key="map_color").set_value("audit").run()
    ok(at)
    with sessions(url)() as s:
        flags = queries.flagged_images(s, run_id)["flags"].value_counts()
    unflagged = 60 - int(flags.sum())
    want = ([f"no flag ({unflagged})"] if unflagged else []) + [f"{k} ({flags[k]})" for k in sorted(flags.index)]
    assert trace_names(at) == want and any("neighbours" in k for k in flags.index)


def test_split_filter_and_sport_highlight(mapped, monkeypatch):
    url, run_id, _ = mapped
    at = app(url, monkeypatch, MAP)
    at.multiselect(key="map_splits").set_value(["valid", "test"]).run()
    ok(at)
    assert map_caption(at).startswith("20 of 60 images")
    sport = at.selectbox(key="map_sport").options[2]
    at.selectbox(key="map_sport").set_value(sport).run()
    ok(at)
    assert spec(at)["layout"]["title"]["text"] == f"highlighted: {sport} (4 images)"
    assert param(at, "sport") == [sport]


def test_map_without_vectors_names_the_command(bare, monkeypatch):
    url, run_id, _ = bare
    at = app(url, monkeypatch, MAP)
    ok(at)
    (info,) = [i.value for i in at.info]
    assert f"`python -m jobs.embed --run {run_id} --db {url}`" in info and "no feature vectors" in info
    assert not at.get("plotly_chart")


def test_map_with_vectors_but_no_map_names_the_command(tmp_path, monkeypatch):
    url, run_id, _ = build_store(tmp_path, n_classes=3, n_per_class=2)
    add_embedding(url, run_id, map_=False)
    at = app(url, monkeypatch, MAP)
    ok(at)
    (info,) = [i.value for i in at.info]
    assert "has 12 feature vectors but no map yet" in info and "python -m jobs.embed --run 1" in info


def test_a_run_of_three_images(tmp_path, monkeypatch):
    from core.projection import project_2d
    from db.store import replace_map

    url, run_id, _ = build_store(tmp_path, n_classes=3, n_per_class=1, splits=("valid",))
    add_embedding(url, run_id, map_=False)
    with sessions(url)() as s:
        stored = embed_queries.stored_vectors(s, run_id)
    proj = project_2d(stored.vectors, seed=0)  # three vectors: the PCA map
    with sessions(url).begin() as s:
        replace_map(s, run_id, stored.images["image_id"], proj.xy, method=proj.method, seed=0, params=proj.params,
                    seconds=proj.seconds)
    at = app(url, monkeypatch, MAP)
    ok(at)
    assert map_caption(at).startswith("3 of 3 images; confidences raw. The map (PCA, seed 0")
    assert sum(int(n.rsplit("(", 1)[1].rstrip(")")) for n in trace_names(at)) == 3
    assert any("draw a box or a lasso" in i.value for i in at.info)  # nothing selected yet


def test_the_map_page_on_an_empty_and_an_old_store(tmp_path, monkeypatch):
    from tests.storefactory import build_empty_store

    at = app(build_empty_store(tmp_path), monkeypatch, MAP)
    assert not at.exception and any("python -m jobs.train" in i.value for i in at.info)
    old = tmp_path / "old.db"
    shutil.copyfile(V1_STORE, old)
    at = app(f"sqlite:///{old}", monkeypatch, MAP)
    assert not at.exception and "python -m jobs.upgrade" in at.error[0].value


# --------------------------------------------------------------------------- a selection and its gallery

def test_selected_ids_reads_the_points_of_a_selection_event():
    event = {"selection": {"points": [{"customdata": 7}, {"customdata": [3]}, {"customdata": 7}, {"x": 1}],
                           "point_indices": [0, 1, 2, 3], "box": [], "lasso": []}}
    assert selected_ids(event) == [7, 3]
    assert selected_ids(None) == [] and selected_ids({"selection": {"points": []}}) == []


def test_selection_rows_and_summary(mapped):
    url, run_id, _ = mapped
    with sessions(url)() as s:
        points = embed_queries.map_points(s, run_id)
        names = queries.class_names(s, run_id)
    picked = points["image_id"].iloc[:8].tolist() + [points["image_id"].iloc[-1], 10_000]  # 10,000: not on the map
    rows = selection_rows(points, picked)
    assert len(rows) == 9
    wrong = (rows["pred"] != rows["label"]).to_numpy()
    assert wrong.any() and wrong[: wrong.sum()].all()  # mistakes first
    assert rows["confidence"][wrong].is_monotonic_decreasing
    lines = selection_summary(rows, names)
    right = int((~wrong).sum())
    assert lines[0] == "**9 images selected** (8 train, 1 test)"
    assert lines[1].startswith(f"Accuracy of the selected images the model predicted: {right / 9:.1%} ({right} of 9; "
                               "95% interval")
    assert lines[2] == f"Most common true classes: {names[0]} ×8, {names[4]} ×1"
    assert selection_rows(points, []).empty


def _gallery_script(url: str, run_id: int, ids: list[int]) -> None:
    import streamlit as st

    from dashboard import embedding, loaders
    from dashboard.context import Ctx

    stamp = "complete|test"
    info = loaders.load_run(url, run_id, stamp)
    ctx = Ctx(url=url, run_id=run_id, stamp=stamp, info=info)
    points, _ = embedding.load_map(url, run_id, embedding.load_embed_stamp(url, run_id))
    picked = embedding.show_selection(ctx, points, ids, key="sel")
    st.write(f"picked: {picked}")


@pytest.mark.parametrize("how_many", [0, 3, 25])
def test_a_selection_opens_its_gallery(mapped, how_many):
    url, run_id, _ = mapped
    with sessions(url)() as s:
        ids = embed_queries.map_points(s, run_id)["image_id"].tolist()[-how_many:] if how_many else []
    at = AppTest.from_function(_gallery_script, args=(url, run_id, ids), default_timeout=60)
    at.run()
    ok(at)
    if not how_many:
        assert any("draw a box or a lasso" in i.value for i in at.info)
        assert not at.get("image")
        return
    assert at.markdown[0].value.startswith(f"**{how_many} images selected**")
    shown = min(how_many, 20)
    assert len(at.get("image")) == shown
    if how_many > 20:
        assert at.number_input(key="sel_page").value == 1
        at.number_input(key="sel_page").set_value(2).run()
        assert len(at.get("image")) == 5
    buttons = [b for b in at.button if b.key and b.key.startswith("sel_cmp_")]
    assert buttons  # every image of the builder's store has a prediction
    buttons[0].click().run()
    assert any(m.value == f"picked: {buttons[0].key.rsplit('_', 1)[1]}" for m in at.markdown)


@pytest.fixture
def reviewable(tmp_path):
    """A small store with vectors, a map and file hashes (so its images can be reviewed), no verdicts, and a
    training image without a prediction (as in a real run)."""
    url, run_id, _ = build_store(tmp_path, n_classes=3, n_per_class={"train": 2, "valid": 2}, splits=("train", "valid"))
    add_embedding(url, run_id, plant=False)
    add_hashes(url, run_id)
    with sessions(url).begin() as s:
        unpredicted = s.scalars(select(ImageRow.id).where(ImageRow.run_id == run_id, ImageRow.split == "train")
                                .order_by(ImageRow.id)).first()
        s.execute(delete(Prediction).where(Prediction.image_id == unpredicted))
    return url, run_id, unpredicted


def test_each_tile_of_a_selection_has_a_review_popover_that_saves(reviewable, monkeypatch):
    url, run_id, unpredicted = reviewable
    at = app(url, monkeypatch, MAP)
    ok(at)
    assert at.sidebar.text_input(key="sb_reviewer").value == rv.default_reviewer()
    with sessions(url)() as s:
        points = embed_queries.map_points(s, run_id)
        sha = queries.images_frame(s, run_id).set_index("image_id")["sha256"]
    ids = [unpredicted] + points.loc[points["split"] == "valid", "image_id"].tolist()[:3]
    at = AppTest.from_function(_gallery_script, args=(url, run_id, ids), default_timeout=60)
    at.run()
    ok(at)
    assert len(at.get("image")) == 4 and len([b for b in at.button if b.key.startswith("sel_cmp_")]) == 3
    assert [p.proto.popover.label for p in at.get("popover")] == ["Review"] * 4
    key = f"sel_rv_{unpredicted}"  # the training image: a verdict needs no prediction
    at.radio(key=f"{key}_v").set_value(rv.AMBIGUOUS)
    at.text_area(key=f"{key}_n").set_value("two sports in one frame")
    at.button(key=f"FormSubmitter:{key}-Save verdict").click().run()
    ok(at)
    assert any(s.value.startswith("Saved: ambiguous") for s in at.success)
    with sessions(url)() as s:
        rows = queries.review_history(s)
    assert list(rows["verdict"]) == [rv.AMBIGUOUS] and list(rows["sha256"]) == [sha[unpredicted]]
    assert rows["note"].iat[0] == "two sports in one frame"
    at.run()  # the verdict reads back: the tile's popover says so, and shows it
    copies = [i for i in ids if sha[i] == sha[unpredicted]]
    labels = [p.proto.popover.label for p in at.get("popover")]
    tiles = [int(r.key.split("_")[2]) for r in at.radio if r.key and r.key.startswith("sel_rv_")]  # shown order
    assert sorted(tiles) == sorted(ids)
    assert sorted(i for i, lab in zip(tiles, labels) if lab == "Reviewed: ambiguous") == sorted(copies)
    assert "Current verdict: ambiguous (by " in " ".join(x.value for x in at.text)


# --------------------------------------------------------------------------- "It looks like these" and the audit tab

def test_compare_page_shows_what_an_error_looks_like(mapped, monkeypatch):
    url, run_id, _ = mapped
    with sessions(url)() as s:
        error = queries.errors_frame(s, run_id, splits=["valid", "test"]).iloc[0]
        names = queries.class_names(s, run_id)
    at = app(url, monkeypatch, "views/compare.py", image=str(int(error.image_id)))
    ok(at)
    assert "It looks like these" in [h.value for h in at.subheader]
    sentence = next(m.value for m in at.markdown if "nearest training images" in m.value)
    pred = names[int(error.pred)]
    assert f"nearest training images are labelled *{pred}*." in sentence or f"is labelled *{pred}*." in sentence
    assert sentence.endswith("(its given label).")
    sims = [c.value for c in at.caption if c.value.startswith("**") and "similarity" in c.value]
    assert len(sims) == 10 and all(c.startswith("**train**") for c in sims)


def test_compare_page_without_vectors_names_the_command(bare, monkeypatch):
    url, run_id, _ = bare
    at = app(url, monkeypatch, "views/compare.py")
    ok(at)
    assert any("no feature vectors" in c.value and f"python -m jobs.embed --run {run_id}" in c.value
               for c in at.caption)


def test_data_issues_lists_the_neighbour_label_suspects(mapped, monkeypatch):
    url, run_id, planted = mapped
    at = app(url, monkeypatch, "views/data_issues.py")
    ok(at)
    with sessions(url)() as s:
        n = len(queries.audit_report(s, run_id)["neighbour_suspects"])
    assert n >= 2 and f"Neighbour labels ({n})" in [t.label for t in at.tabs]
    heads = [m.value for m in at.markdown if "of its 10 nearest images are labelled" in m.value]
    assert len(heads) == n
    assert any(h.startswith("**train/air hockey/001.jpg** (train) · labelled **air hockey** · 10 of its 10 nearest "
                            "images are labelled **ampute football**") for h in heads)


def test_the_map_honours_the_calibrated_confidences_switch(tmp_path, monkeypatch):
    import base64

    import numpy as np

    from db.builder_calibration import add_calibration, add_logits

    url, run_id, _ = build_store(tmp_path, n_classes=4, n_per_class=5, seed=4)
    add_logits(url, run_id)
    t = add_calibration(url, run_id, temperature=2.5)
    add_embedding(url, run_id)
    at = app(url, monkeypatch, MAP)
    at.selectbox(key="map_color").set_value("confidence").run()
    ok(at)

    def colours() -> np.ndarray:
        (trace,) = spec(at)["data"]
        c = trace["marker"]["color"]
        return np.frombuffer(base64.b64decode(c["bdata"]), dtype=c["dtype"])

    assert f"confidences calibrated (T = {t:.3g})" in map_caption(at)
    scaled = colours()
    at.sidebar.toggle(key="sb_calibrated").set_value(False).run()
    ok(at)
    assert "confidences raw" in map_caption(at)
    with sessions(url)() as s:
        raw = embed_queries.map_points(s, run_id)["confidence"].to_numpy(dtype=np.float32)
        stored = queries.logits_for(s, run_id, 4)
    np.testing.assert_allclose(colours(), raw, rtol=1e-6)
    z = stored.logits.astype(np.float64) / t  # softmax(logits / T) of the predicted class, every image by id
    want = (np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)).max(1)
    np.testing.assert_allclose(scaled, want, rtol=1e-4)
