"""The review history in the store, on SQLite and PostgreSQL: append-only, the latest counts, retries that
never store a verdict twice, hostile text kept verbatim, and reviewers writing while a training job writes."""
from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from core import reviews as rv
from db import queries, store
from db.models import Review
from db.review_writer import ReviewNotSaved, ReviewWriter, add_review
from tests.pg import new_database

HOSTILE_NOTE = ("<script>alert('x')</script> <img src=x onerror=alert(1)> \"quoted\" it's; "
                "DROP TABLE reviews; -- **bold** [link](javascript:alert(1)) \n second line")
HOSTILE_NAME = "Robert'); DROP TABLE reviews;-- <b>"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = new_database(request.getfixturevalue("pg_url"))
    store.make_engine(url).dispose()  # an empty store of this version
    return url


def sha(text_: str) -> str:
    return hashlib.sha256(text_.encode()).hexdigest()


def verdict(name: str, v: str = rv.FINE, new=None, t=None, note="", reviewer="ann") -> rv.Verdict:
    return rv.Verdict(sha(name), "train", f"train/a/{name}.jpg", "alpha", v, new, note, reviewer, t)


def reader(url):
    return store.make_sessionmaker(store.make_engine(url, readonly=True))


def test_history_is_append_only_and_the_latest_counts(db_url):
    w = ReviewWriter(db_url)
    t0 = datetime(2026, 3, 1, 12, 0, 0)
    # written out of time order: the latest by time counts, not the last written
    w.save([verdict("a", rv.DROP, t=t0 + timedelta(minutes=2)), verdict("a", rv.FINE, t=t0),
            verdict("b", rv.RELABEL, "beta", t=t0)])
    w.save_one(verdict("a", rv.AMBIGUOUS, t=t0 + timedelta(minutes=1), note="unclear"))
    with reader(db_url)() as s:
        latest = queries.latest_reviews(s)
        assert list(latest["sha256"]) == sorted([sha("a"), sha("b")])
        assert dict(zip(latest["sha256"], latest["verdict"])) == {sha("a"): rv.DROP, sha("b"): rv.RELABEL}
        hist = queries.review_history(s, [sha("a")])
        assert list(hist["verdict"]) == [rv.FINE, rv.AMBIGUOUS, rv.DROP]
        assert queries.review_counts(s, [sha("a"), sha("b"), sha("c")]) == {
            rv.DROP: 1, rv.RELABEL: 1, "reviewed": 2, "total": 3}
        got = queries.latest_verdicts(s)
        assert got[sha("b")] == verdict("b", rv.RELABEL, "beta", t=t0)
        assert queries.latest_reviews(s, []).empty


def test_a_retried_submission_is_stored_once(db_url):
    w = ReviewWriter(db_url)
    v = verdict("a", rv.DROP)
    first = w.save_one(v, token="t-1")
    assert w.save_one(v, token="t-1") == first
    with reader(db_url)() as s:
        assert s.scalar(select(func.count()).select_from(Review)) == 1


def test_a_commit_whose_answer_was_lost_is_not_written_twice(db_url, monkeypatch):
    """The write committed but the connection broke before the answer came: the retry finds the token."""
    w = ReviewWriter(db_url, backoff_s=0.001)
    real = w._write
    calls = []

    def lost_answer(verdicts, tokens):
        calls.append(1)
        ids = real(verdicts, tokens)
        if len(calls) == 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return ids

    monkeypatch.setattr(w, "_write", lost_answer)
    first_id = w.save([verdict("a"), verdict("b")])
    assert len(calls) == 2
    with reader(db_url)() as s:
        assert sorted(queries.review_history(s)["id"]) == sorted(first_id)


def test_lock_errors_are_retried_and_never_shown_raw(db_url, monkeypatch):
    w = ReviewWriter(db_url, backoff_s=0.001)
    real = w._write
    calls = []

    def flaky(verdicts, tokens):
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real(verdicts, tokens)

    monkeypatch.setattr(w, "_write", flaky)
    w.save_one(verdict("a"))
    assert len(calls) == 3

    def locked(verdicts, tokens):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(w, "_write", locked)
    with pytest.raises(ReviewNotSaved) as err:
        w.save_one(verdict("b"))
    assert "database is locked" not in str(err.value) and "busy" in str(err.value)
    with reader(db_url)() as s:
        assert list(queries.review_history(s)["sha256"]) == [sha("a")]


def test_hostile_text_is_stored_verbatim(db_url):
    ReviewWriter(db_url).save_one(verdict("a", note=HOSTILE_NOTE, reviewer=HOSTILE_NAME))
    with reader(db_url)() as s:
        row = queries.review_history(s).iloc[0]
        assert row["note"] == HOSTILE_NOTE and row["reviewer"] == HOSTILE_NAME
        assert s.execute(text("SELECT count(*) FROM reviews")).scalar() == 1  # the table is still there


def test_add_review_refuses_what_is_not_a_verdict(db_url):
    with store.make_sessionmaker(store.make_engine(db_url)).begin() as s:
        with pytest.raises(ValueError, match="core.reviews.Verdict"):
            add_review(s, {"sha256": sha("a")})
        with pytest.raises(ValueError, match="token"):
            add_review(s, verdict("a"), token="x" * 65)


def test_a_store_from_before_reviews_reads_empty_and_the_writer_adds_the_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store.make_engine(url).dispose()
    eng = store.make_engine(url)
    with eng.begin() as c:
        c.exec_driver_sql("DROP TABLE reviews")
    eng.dispose()
    with reader(url)() as s:
        assert queries.reviews_stamp(s) == "none"
        assert queries.latest_reviews(s).empty and queries.review_history(s).empty
        assert queries.review_counts(s, [sha("a")]) == {"reviewed": 0, "total": 1}
    ReviewWriter(url).save_one(verdict("a"))
    with reader(url)() as s:
        assert len(queries.latest_reviews(s)) == 1 and queries.reviews_stamp(s).startswith("1:")


def test_two_reviewers_and_a_training_writer_at_once(db_url):
    """Two dashboard sessions save verdicts while a training-like job writes images and predictions in
    transactions that hold the write lock, and a page keeps reading: every verdict is stored exactly once
    and nobody sees an error."""
    S = store.make_sessionmaker(store.make_engine(db_url, create=False))
    with S.begin() as s:
        run_id = store.create_run(s, name="busy", config={}, data_root="/d", device="cpu", weights="none",
                                  image_size=32, cam_layer=None, class_names=["alpha", "beta"], absent_splits={}).id
    per_reviewer = 20
    stop = threading.Event()
    errors: list[BaseException] = []
    written_batches = []

    def training():
        try:
            k = 0
            while not stop.is_set() or k < 3:
                with S.begin() as s:
                    recs = [store.ImageRecord("train", f"train/alpha/{k}-{i}.jpg", i % 2) for i in range(50)]
                    ids = store.upsert_images(s, run_id, recs)
                    store.add_predictions(s, [dict(image_id=i, run_id=run_id, pred=0, confidence=0.5,
                                                   top5_idx=[0, 1], top5_prob=[0.5, 0.5]) for i in ids.values()
                                              if i not in written_batches])
                    written_batches.extend(ids.values())
                    time.sleep(0.02)  # hold the write lock as an epoch's writes do
                k += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    def reviewer(name: str):
        try:
            w = ReviewWriter(db_url)
            for i in range(per_reviewer):
                w.save_one(verdict(f"{name}-{i}", rv.DROP if i % 2 else rv.FINE, note=f"{name} {i}", reviewer=name),
                           token=f"{name}-{i}")
            w.dispose()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def page():
        try:
            R = reader(db_url)
            while not stop.is_set():
                with R() as s:
                    queries.latest_reviews(s)
                    queries.reviews_stamp(s)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=training), threading.Thread(target=page)]
    threads += [threading.Thread(target=reviewer, args=(n,)) for n in ("ann", "bob")]
    for t in threads:
        t.start()
    for t in threads[2:]:
        t.join(timeout=120)
    stop.set()
    for t in threads[:2]:
        t.join(timeout=60)
    assert not errors, errors
    with S() as s:
        rows = s.execute(select(Review.token, Review.note, Review.reviewer)).all()
    assert len(rows) == 2 * per_reviewer
    assert sorted(r.token for r in rows) == sorted(f"{n}-{i}" for n in ("ann", "bob") for i in range(per_reviewer))
    assert all(r.note == r.token.replace("-", " ") for r in rows)
    assert len(written_batches) >= 150  # the training writer really wrote meanwhile
