"""Checks on a store and on run references that a job makes before it spends time, and that pages share.

The SQLite file behind ``--db``: one that cannot be written fails at once with the path and the reason
(:func:`check_writable`, which tries rather than reads permission bits, since those do not stop a root
user on a read-only mount); one that cannot be read says what it is instead (:func:`check_readable`).
:func:`db_arg` spells ``--db`` so that a suggested command reaches the same store when copied. ``latest``
is the newest complete run that is not a snapshot of another (:data:`LATEST`), for the jobs and the
dashboard alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from db.models import Run
from db.store import StoreError, resolve_url

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


class StoreUnreadable(StoreError):
    """The store's location exists but cannot be read as a store: a folder, another kind of file, no access."""


def sqlite_path(url: Optional[str] = None) -> Optional[Path]:
    """The file of a SQLite store (``--db`` resolved as every job does); ``None`` for another backend or memory."""
    u = make_url(resolve_url(url))
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def db_arg(url: Optional[str] = None) -> str:
    """``--db X`` as a user types it to reach this store again: a SQLite store's file, else the URL (any
    password hidden), quoted for a shell."""
    import shlex

    path = sqlite_path(url)
    shown = str(path) if path is not None else make_url(resolve_url(url)).render_as_string(hide_password=True)
    return f"--db {shlex.quote(shown)}"


def _file_in_the_way(path: Path) -> Optional[Path]:
    """The nearest existing ancestor of ``path`` when it is not a folder (a file where a folder must be)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_writable(url: Optional[str] = None) -> None:
    """Fail at once, naming the path and the reason, when a job could not create or write the SQLite store
    (checked by doing it: creating the folder, a scratch file in it, opening the file for writing, since
    permission bits do not tell a root user about a read-only mount). Other backends are checked on connect."""
    path = sqlite_path(url)
    if path is None:
        return
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise StoreError(f"cannot create the store {path}: {blocker} is a file, not a folder; "
                         "give --db a path in a folder")
    if path.is_dir():
        raise StoreError(f"cannot use the store {path}: it is a folder, not a SQLite file; give --db a file path")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # SQLite writes its journal files beside the store, so the folder itself must take new files.
        import tempfile

        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise StoreError(f"cannot write the store {path}: the folder {folder} does not take new files "
                         f"({exc.strerror or exc}); give --db a path in a folder you can write") from None
    if path.exists():
        try:
            with open(path, "r+b"):
                pass
        except OSError as exc:
            raise StoreError(f"cannot write the store {path} ({exc.strerror or exc})") from None
        _check_sqlite_header(path)


def check_readable(path: Path) -> None:
    """Say what is wrong with a SQLite store's file that should exist: missing (and why), a folder, no
    access, not a SQLite file. An empty file passes (it is an empty store)."""
    if not path.exists():
        blocker = _file_in_the_way(path)
        if blocker is not None:
            raise StoreUnreadable(f"store {path} cannot exist: {blocker} is a file, not a folder")
        raise StoreError(f"store {path} does not exist; run 'python -m jobs.train {db_arg(str(path))}' to create it")
    if path.is_dir():
        raise StoreUnreadable(f"store {path} is a folder, not a SQLite file")
    _check_sqlite_header(path)


def _check_sqlite_header(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StoreUnreadable(f"cannot read the store {path} ({exc.strerror or exc})") from None
    if head and head != SQLITE_HEADER:
        raise StoreUnreadable(f"{path} is not a SQLite file (it does not start with SQLite's header); "
                              "check the --db path")


# --------------------------------------------------------------------------- what 'latest' means

# ``latest`` everywhere (the jobs' --run, the dashboard's first run): complete, and a run of its own rather
# than a snapshot of one (a snapshot has a stage such as "phase1").
LATEST = (Run.status == "complete", Run.stage.is_(None))


def no_latest(session: Session) -> str:
    """Why ``latest`` names no run: the store is empty, or its newest run is not complete (and how to pick it)."""
    newest = session.scalars(select(Run).where(Run.stage.is_(None)).order_by(Run.id.desc()).limit(1)).first()
    if newest is None:
        where = session.get_bind().url.render_as_string(hide_password=False)
        return f"no run in the store for 'latest'; create one with 'python -m jobs.train {db_arg(where)}'"
    return (f"no complete run in the store for 'latest' (the newest, #{newest.id} {newest.name}, is {newest.status}); "
            f"give --run {newest.id} to use it anyway")
