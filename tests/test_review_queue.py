"""The review queue (``core.review_queue``), the Review queue page and the verdict widget on the other pages,
under ``AppTest``: verdicts are written before the page says so, hostile text is kept verbatim and shown
escaped, and the dashboard's own engine stays read-only."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError, OperationalError
from streamlit.testing.v1 import AppTest

from core import review_queue as rq
from core import reviews as rv
from dashboard import loaders, reviews_ui
from db import queries, store
from db.builder import add_hashes, build_store
from db.review_writer import ReviewWriter

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / "dashboard" / "Home.py"
NOTE = "<script>alert('n')</script> <img src=x onerror=alert(2)> **bold** \"q\" it's; DROP TABLE reviews; --"
NAME = "Eve <b onmouseover=alert(3)>'); DELETE FROM reviews;--"
NAMES = ["alpha", "beta", "gamma", "delta"]


# --------------------------------------------------------------------------- the queue, pure

def predictions() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [1, 2, 3, 4, 5], "split": ["valid"] * 5,
        "relpath": [f"valid/x/{i}.jpg" for i in range(1, 6)], "label": [0, 1, 2, 3, 0],
        "pred": [1, 1, 0, 0, 2], "confidence": [0.95, 0.99, 0.5, 0.97, 0.91],
    })


def report() -> dict:
    ref = lambda i, split="valid", label=None: {  # noqa: E731
        "image_id": i, "split": split, "relpath": f"{split}/x/{i}.jpg", "label": [0, 1, 2, 3, 0][i - 1]
        if label is None else label}
    return {
        "groups": [{"id": 0, "kind": "exact", "score": 1.0, "members": [ref(3), ref(9, "train", 1)]}],
        "conflicts": [{"group": 0, "labels": {"2": 1, "1": 1}}],
        "leakage": [{"image": ref(3), "duplicate_of": ref(9, "train", 1), "group": 0, "kind": "exact", "score": 1.0}],
        "suspects": [{**ref(2), "given_prob": 0.02, "pred_label": 3, "pred_prob": 0.8}],
    }


def test_the_queue_lists_each_image_once_with_every_reason_most_serious_first():
    q = rq.build_queue(NAMES, predictions=predictions(), report=report(), confident=0.9)
    assert list(q["image_id"]) == [3, 9, 2, 4, 1, 5]  # then the most confident errors first
    by_id = q.set_index("image_id")
    assert by_id.loc[3, "reasons"] == (rq.LEAK, rq.CONFLICT, rq.DUPLICATE)
    assert "leaked: an exact copy of train/x/9.jpg (train)" in by_id.loc[3, "why"]
    assert by_id.loc[2, "reasons"] == (rq.SUSPECT,)  # right at 99 %, but its label is doubted
    assert by_id.loc[2, "suggest"] == 3 and "the model gives delta 80%" in by_id.loc[2, "why"]
    assert by_id.loc[1, "suggest"] == 1 and by_id.loc[1, "why"] == "confident error: predicted beta at 95%"
    assert by_id.loc[9, "pred"] == -1 and np.isnan(by_id.loc[9, "confidence"])  # a train image, no prediction
    assert by_id.loc[3, "suggest"] == 1  # its duplicate's label
    assert 3 not in set(rq.build_queue(NAMES, predictions=predictions(), report=None)["image_id"])
    looks = pd.DataFrame([{"image_id": 6, "split": "test", "relpath": "test/x/6.jpg", "label": 0,
                           "majority_label": 2, "note": "7 of its 10 nearest training images are labelled gamma"}])
    q2 = rq.build_queue(NAMES, predictions=predictions(), report=None, looks_like=looks)
    assert q2.set_index("image_id").loc[6, "why"].startswith("looks like gamma: 7 of its 10")


def test_filters_and_how_often_each_reason_was_right():
    q = rq.build_queue(NAMES, predictions=predictions(), report=report())
    assert set(rq.filter_queue(q, NAMES, sports=["alpha"])["image_id"]) == {1, 5}
    assert set(rq.filter_queue(q, NAMES, reasons=[rq.SUSPECT, rq.LEAK])["image_id"]) == {2, 3}
    verdicts = pd.Series([rv.DROP, None, rv.RELABEL, rv.RELABEL, rv.FINE, None], index=q.index)
    t = rq.reason_table(q, verdicts).set_index("reason")
    err = t.loc[rq.REASON_LABELS[rq.CONFIDENT_ERROR]]
    # confident errors are images 4, 1, 5 -> verdicts relabel, fine, none
    assert (err["in_queue"], err["reviewed"], err["confirmed"]) == (3, 2, 1)
    assert err["confirmed_share"] == 0.5 and 0 < err["low"] < 0.5 < err["high"] < 1
    dup = t.loc[rq.REASON_LABELS[rq.DUPLICATE]]  # images 3 (dropped) and 9 (not reviewed)
    assert (dup["in_queue"], dup["reviewed"], dup["confirmed"], dup["high"]) == (2, 1, 1, 1.0)
    assert rq.reason_table(q, pd.Series(None, index=q.index, dtype=object))["confirmed_share"].isna().all()
    with pytest.raises(ValueError, match="confident"):
        rq.build_queue(NAMES, predictions=predictions(), confident=1.5)


# --------------------------------------------------------------------------- pages

@pytest.fixture(scope="module")
def hashed_store(tmp_path_factory):
    url, run_id, _ = build_store(tmp_path_factory.mktemp("queue"), n_classes=6, n_per_class=3, seed=1, audit=True)
    add_hashes(url, run_id)
    return Path(url.removeprefix("sqlite:///")), run_id


@pytest.fixture
def hashed(hashed_store, tmp_path):
    """A fresh copy of an audited store with file hashes and no verdicts (its images stay where they are)."""
    path, run_id = hashed_store
    copy = tmp_path / "store.db"
    copy.write_bytes(path.read_bytes())
    return f"sqlite:///{copy}", run_id


def app(url, monkeypatch, page) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=60)
    at.run()
    at.switch_page(page).run()
    assert not at.exception
    return at


def stored(url) -> pd.DataFrame:
    eng = store.make_engine(url, readonly=True)
    with store.make_sessionmaker(eng)() as s:
        out = queries.review_history(s)
    eng.dispose()
    return out


def leaves(at):
    def walk(node):
        kids = getattr(node, "children", None)
        if kids:
            for c in kids.values():
                yield from walk(c)
        else:
            yield node
    yield from walk(at.main)
    yield from walk(at.sidebar)


def assert_shown_escaped(at, literal: str) -> None:
    """``literal`` appears in plain-text elements only: in no Markdown, caption, alert or HTML element, and no
    element allows raw HTML."""
    plain = []
    for el in leaves(at):
        proto = getattr(el, "proto", None)
        body = getattr(proto, "body", None)
        if not isinstance(body, str):
            continue
        if getattr(proto, "allow_html", False) or el.type == "html":
            assert literal not in body and "<script>" not in body
        if literal in body:
            assert el.type == "text", f"{literal!r} shown in a {el.type} element"
            plain.append(body)
    return plain


@pytest.fixture(autouse=True)
def fresh_caches():
    yield
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()


def test_queue_page_reviews_with_keys_and_keeps_hostile_text_verbatim(hashed, monkeypatch):
    url, run_id = hashed
    at = app(url, monkeypatch, "views/review_queue.py")
    queue = rq.build_queue(
        tuple(loaders.load_run(url, run_id, "x").classes), predictions=loaders.load_predictions(url, run_id, "x"),
        report=loaders.load_audit(url, run_id, loaders.load_audit_stamp(url, run_id)))
    n = len(queue)
    assert n > 3
    assert any(f"**0 of {n}** images in the queue reviewed" in m.value for m in at.markdown)
    assert at.title[0].value == "Review queue"
    assert any(t.value.startswith("Why: ") for t in at.text)
    shortcuts = {b.key: b.proto.shortcut.upper() for b in at.button if b.key and b.key.startswith("rq_")}
    assert shortcuts == {"rq_prev": "K", "rq_next": "J", "rq_fine": "F", "rq_relabel": "L", "rq_ambiguous": "A",
                         "rq_drop": "D"}
    first = next(m.value for m in at.markdown if m.value.startswith("**") and "labelled" in m.value)

    at.sidebar.text_input(key="sb_reviewer").set_value(NAME).run()
    note_key = next(w.key for w in at.text_input if w.key and w.key.startswith("rq_note_"))
    class_box = next(w for w in at.selectbox if w.key and w.key.startswith("rq_class_"))
    target = class_box.options[-1]
    at.text_input(key=note_key).set_value(NOTE)
    class_box.set_value(target)
    at.button(key="rq_relabel").click().run()
    assert not at.exception
    assert any(s.value.startswith("Saved: label wrong:") for s in at.success)
    rows = stored(url)
    assert len(rows) == 1
    assert (rows.loc[0, "note"], rows.loc[0, "reviewer"], rows.loc[0, "new_label"]) == (NOTE, NAME, target)
    with store.make_sessionmaker(store.make_engine(url, readonly=True))() as s:
        images = queries.images_frame(s, run_id).set_index("image_id")
    shas = images.loc[queue["image_id"], "sha256"]
    copies = int((shas == rows.loc[0, "sha256"]).sum())  # a verdict follows the content: exact copies share it
    assert any(f"**{copies} of {n}** images in the queue reviewed" in m.value for m in at.markdown)
    # the reviewed image left the "to review" list: the same place shows the next one
    assert next(m.value for m in at.markdown if m.value.startswith("**") and "labelled" in m.value) != first
    done = next(d.value for d in at.dataframe if "reviewer" in d.value.columns)
    assert list(done["note"]) == [NOTE] * copies and list(done["reviewer"]) == [NAME] * copies
    assert_shown_escaped(at, NOTE)
    assert_shown_escaped(at, NAME)

    at.button(key="rq_next").click().run()
    assert any("Image 2 of" in c.value for c in at.caption)
    at.radio(key="rq_status").set_value("reviewed").run()
    assert any(f"Image 1 of {copies} (reviewed)" in c.value for c in at.caption)
    plain = assert_shown_escaped(at, NOTE)
    assert plain == [f"Note: {NOTE}"]  # the reviewed image's history, as plain text
    # a verdict from another session shows here too, once the few seconds of the stamp's cache are over
    other = images.loc[[i for i in queue["image_id"] if images.loc[i, "sha256"] != rows.loc[0, "sha256"]][0]]
    ReviewWriter(url).save_one(rv.Verdict(other["sha256"], other["split"], other["relpath"], "x", rv.FINE,
                                          reviewer="bob"))
    reviews_ui.load_stamp.clear()
    at.run()
    more = int((shas == other["sha256"]).sum())
    assert any(f"**{copies + more} of {n}** images in the queue reviewed" in m.value for m in at.markdown)


def test_a_failed_write_never_says_saved_and_a_retry_stores_one(hashed, monkeypatch):
    url, _ = hashed
    at = app(url, monkeypatch, "views/review_queue.py")
    real = ReviewWriter._write

    def broken(self, verdicts, tokens):
        raise DatabaseError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(ReviewWriter, "_write", broken)
    at.button(key="rq_drop").click().run()
    assert not at.exception and not at.success
    assert any(e.value.startswith("Not saved:") for e in at.error)
    assert stored(url).empty

    # the store answers "locked" twice, then the write goes through: one row, and only then "saved"
    calls = []

    def locked_then_ok(self, verdicts, tokens):
        calls.append(1)
        if len(calls) <= 2:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real(self, verdicts, tokens)

    monkeypatch.setattr(ReviewWriter, "_write", locked_then_ok)
    at.button(key="rq_drop").click().run()
    assert any(s.value.startswith("Saved: not a valid image") for s in at.success)
    assert not any("locked" in e.value for e in at.error)
    assert len(stored(url)) == 1


def test_verdict_form_on_the_comparison_page(hashed, monkeypatch):
    url, run_id = hashed
    at = app(url, monkeypatch, "views/compare.py")
    assert any(m.value == "**Your verdict on this image**" for m in at.markdown)
    form_radio = next(r for r in at.radio if r.key and r.key.startswith("cmp_review_"))
    key = form_radio.key.removesuffix("_v")
    form_radio.set_value(rv.AMBIGUOUS)
    at.text_area(key=f"{key}_n").set_value(NOTE)
    next(b for b in at.button if b.label == "Save verdict").click().run()
    assert not at.exception
    assert any(s.value.startswith("Saved: ambiguous") for s in at.success)
    rows = stored(url)
    assert list(rows["verdict"]) == [rv.AMBIGUOUS] and rows.loc[0, "note"] == NOTE
    at.run()
    assert f"Note: {NOTE}" in [t.value for t in at.text]
    assert_shown_escaped(at, NOTE)


def test_review_popovers_on_the_gallery_and_data_issues(hashed, monkeypatch):
    url, _ = hashed
    for page in ("views/gallery.py", "views/data_issues.py"):
        at = app(url, monkeypatch, page)
        forms = [b for b in at.button if b.label == "Save verdict"]
        assert forms, page
        assert at.sidebar.text_input(key="sb_reviewer").value == rv.default_reviewer()


def test_the_dashboard_engine_stays_read_only_after_a_review(hashed, monkeypatch):
    url, _ = hashed
    at = app(url, monkeypatch, "views/review_queue.py")
    at.button(key="rq_fine").click().run()
    assert len(stored(url)) == 1
    with loaders.session(url) as s:
        with pytest.raises(OperationalError, match="readonly|read-only|query_only"):
            s.execute(text("DELETE FROM reviews"))
    assert len(stored(url)) == 1


def test_an_empty_queue_says_why(tmp_path, monkeypatch):
    url, _, _ = build_store(tmp_path, n_classes=3, n_per_class=2, with_errors=False)
    at = app(url, monkeypatch, "views/review_queue.py")
    assert any("Nothing in run" in i.value and "jobs.audit" in i.value for i in at.info)


def test_the_dashboard_still_binds_to_localhost():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
