"""Reviews: the verdicts people gave on images, keyed by the image file's sha256 (``db.models.Review``).

The history is append-only; the verdict that counts for an image is its latest by time (the higher row id
on equal times), as ``core.reviews.latest`` has it. A store written before the reviews table existed reads
as one without reviews.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Iterable, Optional

import pandas as pd
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from core.reviews import Verdict
from db.models import ImageRow, Review, Run, RunClass
from db.queries.frames import ID_CHUNK, empty

REVIEW_COLUMNS = ["id", "sha256", "split", "relpath", "label", "verdict", "new_label", "note", "reviewer",
                  "created_at"]


def has_reviews_table(session: Session) -> bool:
    return inspect(session.connection()).has_table(Review.__tablename__)


def reviews_stamp(session: Session) -> str:
    """Changes whenever a verdict is added (count and highest id); cheap to poll, a cache key."""
    if not has_reviews_table(session):
        return "none"
    n, top = session.execute(select(func.count(), func.max(Review.id))).one()
    return f"{int(n)}:{top}"


def _frame(rows: list) -> pd.DataFrame:
    if not rows:
        return empty(REVIEW_COLUMNS)
    df = pd.DataFrame(rows, columns=REVIEW_COLUMNS)
    df["id"] = df["id"].astype("int64")
    df["note"] = df["note"].fillna("")
    df["new_label"] = df["new_label"].astype(object).where(df["new_label"].notna(), None)
    return df


def _columns():
    return (Review.id, Review.sha256, Review.split, Review.relpath, Review.label, Review.verdict, Review.new_label,
            Review.note, Review.reviewer, Review.created_at)


def _chunks(values: Iterable[str]) -> list[list[str]]:
    vals = sorted({str(v) for v in values if v})
    return [vals[i:i + ID_CHUNK] for i in range(0, len(vals), ID_CHUNK)]


def review_history(session: Session, sha256s: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Every verdict (of the images with these hashes; default all), oldest first: ``REVIEW_COLUMNS``."""
    if not has_reviews_table(session):
        return empty(REVIEW_COLUMNS)
    stmt = select(*_columns()).order_by(Review.created_at, Review.id)
    if sha256s is None:
        return _frame(session.execute(stmt).all())
    rows = []
    for chunk in _chunks(sha256s):
        rows += session.execute(stmt.where(Review.sha256.in_(chunk))).all()
    rows.sort(key=lambda r: (r.created_at, r.id))
    return _frame(rows)


def latest_reviews(session: Session, sha256s: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """The verdict that counts per image (of these hashes; default all), one row per sha256, by sha256."""
    if not has_reviews_table(session):
        return empty(REVIEW_COLUMNS)
    rank = func.row_number().over(partition_by=Review.sha256,
                                  order_by=(Review.created_at.desc(), Review.id.desc())).label("rank")
    ranked = select(*_columns(), rank)
    if sha256s is not None:
        chunks = _chunks(sha256s)
        if not chunks:
            return empty(REVIEW_COLUMNS)
        rows = []
        for chunk in chunks:
            sub = ranked.where(Review.sha256.in_(chunk)).subquery()
            rows += session.execute(select(*[sub.c[c] for c in REVIEW_COLUMNS]).where(sub.c.rank == 1)).all()
    else:
        sub = ranked.subquery()
        rows = session.execute(select(*[sub.c[c] for c in REVIEW_COLUMNS]).where(sub.c.rank == 1)).all()
    return _frame(sorted(rows, key=lambda r: r.sha256))


def to_verdicts(frame: pd.DataFrame) -> list[Verdict]:
    """Rows of a reviews frame as ``core.reviews.Verdict`` values (``reviewed_at`` = ``created_at``)."""
    out = []
    for r in frame.itertuples(index=False):
        when = r.created_at.to_pydatetime() if isinstance(r.created_at, pd.Timestamp) else r.created_at
        out.append(Verdict(r.sha256, r.split, r.relpath, r.label, r.verdict,
                           r.new_label if isinstance(r.new_label, str) and r.new_label else None, r.note or "",
                           r.reviewer, when))
    return out


def latest_verdicts(session: Session) -> dict[str, Verdict]:
    """``{sha256: Verdict}`` of every reviewed image: what ``jobs.train --apply-reviews`` applies."""
    return {v.sha256: v for v in to_verdicts(latest_reviews(session))}


def review_counts(session: Session, sha256s: Iterable[str]) -> dict[str, int]:
    """How many of the images with these hashes have a verdict, by the verdict that counts, plus
    ``"reviewed"`` (all of them) and ``"total"`` (distinct hashes asked about)."""
    wanted = {str(s) for s in sha256s if s}
    latest = latest_reviews(session, wanted)
    counts = {k: int(v) for k, v in latest["verdict"].value_counts().items()}
    return {**counts, "reviewed": int(len(latest)), "total": len(wanted)}


def has_same_review(session: Session, verdict: Verdict) -> bool:
    """Whether the history already holds this verdict: same image, verdict, class, note and reviewer, at the
    same time to the second (what a CSV keeps). ``jobs.reviews import`` skips those."""
    if not has_reviews_table(session) or verdict.reviewed_at is None:
        return False
    t = verdict.reviewed_at.replace(microsecond=0)
    stmt = select(Review.id).where(
        Review.sha256 == verdict.sha256, Review.verdict == verdict.verdict, Review.reviewer == verdict.reviewer,
        Review.created_at >= t, Review.created_at < t + timedelta(seconds=1),
    )
    for _, new_label, note in session.execute(stmt.add_columns(Review.new_label, Review.note)).all():
        if (new_label or None) == (verdict.new_label or None) and (note or "") == verdict.note:
            return True
    return False


# --------------------------------------------------------------------------- finding images to review

def store_classes(session: Session) -> list[str]:
    """Every class name any run of the store knows, sorted."""
    return sorted(set(session.scalars(select(RunClass.name).distinct())))


def find_image(session: Session, sha256: str, split: str, relpath: str) -> Optional[tuple[str, str, str, str]]:
    """An image of the store by sha256, else by split and relpath (the newest run that has it), as
    (sha256, split, relpath, label name); ``None`` when there is none, or when it has no recorded hash."""
    stmt = (select(ImageRow.sha256, ImageRow.split, ImageRow.relpath, RunClass.name)
            .join(RunClass, (RunClass.run_id == ImageRow.run_id) & (RunClass.index == ImageRow.label))
            .join(Run, Run.id == ImageRow.run_id)
            .order_by(Run.id.desc()).limit(1))
    if sha256:
        row = session.execute(stmt.where(ImageRow.sha256 == sha256.lower())).first()
    elif split and relpath:
        row = session.execute(stmt.where(ImageRow.split == split, ImageRow.relpath == relpath,
                                         ImageRow.sha256.is_not(None))).first()
    else:
        row = None
    return None if row is None else (row[0], row[1], row[2], row[3])

