"""Checks a job makes before it spends time: a split that no image of can be read stops training at once.

The reasons of every skipped file are in the store (``python -m jobs.runs --skipped RUN`` lists them), so the
message is one line that names the split, the count and that command.
"""
from __future__ import annotations

from typing import Optional, Sequence

from core.splits import SPLITS
from db import store, storecheck

REASON_CHARS = 160  # of the first file's reason, quoted in the message


def unusable_split(records: Sequence[store.ImageRecord], run_id: int, db: Optional[str]) -> Optional[str]:
    """The one-line message for the first split (in split order) none of whose images can be read, else None."""
    by_split: dict[str, list[store.ImageRecord]] = {}
    for r in records:
        by_split.setdefault(r.split, []).append(r)
    for split in sorted(by_split, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS)):
        rows = by_split[split]
        if rows and all(r.skipped for r in rows):
            first = f"{rows[0].relpath}: {rows[0].skip_reason or 'no reason recorded'}"
            if len(first) > REASON_CHARS:
                first = first[: REASON_CHARS - 3] + "..."
            return (f"split {split!r}: all {len(rows)} images are unreadable (first: {first}); the reason of "
                    f"each: python -m jobs.runs --skipped {run_id} {storecheck.db_arg(db)}")
    return None
