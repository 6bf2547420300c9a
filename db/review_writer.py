"""Writing verdicts while other processes use the same store: ``add_review``, the one write of a verdict, and
``ReviewWriter``, which owns the transactions.

One short transaction per submission, SQLite's write lock taken when the transaction begins (``BEGIN
IMMEDIATE``: a deferred transaction that reads first and then writes can fail at once with "database is
locked" when another writer committed in between, and the busy timeout does not help there), the busy
timeout of ``db.store`` for the wait, and a few retries with back-off for what a busy store can still
raise. Every verdict carries a token (``add_review``), so a retry after an unclear outcome never
stores it twice.

The dashboard's own engine is read-only (SQLite ``query_only``); a ``ReviewWriter`` is the one writer it
opens, and it writes nothing but reviews. ``jobs.reviews import`` writes through it too.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from datetime import timezone
from typing import Optional, Sequence

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core.reviews import Verdict
from db import store
from db.models import Review, utcnow

log = logging.getLogger(__name__)

ATTEMPTS = 6
BACKOFF_S = 0.05


class ReviewNotSaved(store.StoreError):
    """A verdict could not be written; nothing of that submission is in the store."""


def add_review(session: Session, verdict: Verdict, token: Optional[str] = None) -> int:
    """Append one verdict (a ``core.reviews.Verdict``) to the review history; returns its row id.

    The only write the dashboard makes; like ``db.store``'s writes it takes a session and does not commit.
    ``token`` (1 to 64 characters) names one submission: when a row with it exists (a retry of a write that
    did commit), its id is returned and nothing is added. The verdict's time is its ``reviewed_at`` (as naive
    UTC, like every time in the store), else now.
    """
    if not isinstance(verdict, Verdict):
        raise ValueError(f"add_review takes a core.reviews.Verdict, got {type(verdict).__name__}")
    if token is not None:
        if not 0 < len(token) <= 64:
            raise ValueError(f"a review token has 1 to 64 characters, got {len(token)}")
        found = session.scalar(select(Review.id).where(Review.token == token))
        if found is not None:
            return int(found)
    when = verdict.reviewed_at
    if when is not None and when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    row = Review(sha256=verdict.sha256, split=verdict.split, relpath=verdict.relpath, label=verdict.label,
                 verdict=verdict.verdict, new_label=verdict.new_label, note=verdict.note, reviewer=verdict.reviewer,
                 created_at=when or utcnow(), token=token)
    session.add(row)
    session.flush()
    return int(row.id)


def new_token() -> str:
    """A fresh key for one submission."""
    return uuid.uuid4().hex


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, (OperationalError, IntegrityError)):
        return True  # a lock, a lost connection, a serialisation failure; a token written meanwhile
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _one_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    if "locked" in first or "busy" in first:
        return "the store stayed busy (another job held its write lock)"
    return f"{type(exc).__name__}: {first}"


class ReviewWriter:
    """Writes verdicts to the store at ``url`` (``make_engine`` without ``readonly``, not creating a store).

    Opening it checks the schema and adds the ``reviews`` table to a store written before it existed.
    """

    def __init__(self, url: Optional[str] = None, *, attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S):
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        url = store.resolve_url(url)
        store.make_engine(url, create=False).dispose()  # schema check, and the reviews table where missing
        self.engine = store.make_engine(url, create=False, check=False)
        self.sessions = store.make_sessionmaker(self.engine)
        self.attempts, self.backoff_s = attempts, backoff_s
        self._sqlite = self.engine.dialect.name == "sqlite"

    def save(self, verdicts: Sequence[Verdict], tokens: Optional[Sequence[str]] = None) -> list[int]:
        """Write ``verdicts`` in one transaction and return their row ids once it has committed.

        ``tokens``: one per verdict (default: fresh ones). Raises ``ReviewNotSaved`` when every attempt
        failed; then none of them is stored.
        """
        verdicts = list(verdicts)
        tokens = [new_token() for _ in verdicts] if tokens is None else list(tokens)
        if len(tokens) != len(verdicts):
            raise ValueError(f"one token per verdict: got {len(tokens)} tokens for {len(verdicts)} verdicts")
        for attempt in range(1, self.attempts + 1):
            try:
                return self._write(verdicts, tokens)
            except DBAPIError as exc:
                if attempt == self.attempts or not _retryable(exc):
                    raise ReviewNotSaved(f"not saved after {attempt} attempt(s): {_one_line(exc)}") from exc
                log.info("review write attempt %d failed (%s); retrying", attempt, _one_line(exc))
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * (1 + random.random()))
        raise AssertionError("unreachable")

    def save_one(self, verdict: Verdict, token: Optional[str] = None) -> int:
        return self.save([verdict], None if token is None else [token])[0]

    def _write(self, verdicts: list[Verdict], tokens: list[str]) -> list[int]:
        with self.sessions.begin() as s:
            if self._sqlite:
                s.connection().exec_driver_sql("BEGIN IMMEDIATE")
            return [add_review(s, v, t) for v, t in zip(verdicts, tokens)]

    def dispose(self) -> None:
        self.engine.dispose()
