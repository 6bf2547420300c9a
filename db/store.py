"""Engine and session factory, schema creation and version check, and the writes the jobs make.

The store location is one setting for every entry point: an explicit URL (``--db``), else the environment
variable ``SPORTS_DB``, else the SQLite file ``runs/sports.db``. A bare file path is accepted as SQLite.
Functions here take a ``session`` and never commit: the caller owns the transaction.
"""
from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from sqlalchemy import Connection, Engine, create_engine, delete, event, insert, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from core.cammaps import TARGETS, check_method
from db.models import (
    SCHEMA_VERSION,
    Base,
    CamMap,
    EpochRow,
    EvalRow,
    ImageRow,
    Prediction,
    Run,
    RunClass,
    SchemaInfo,
    utcnow,
)

DEFAULT_DB_PATH = Path("runs") / "sports.db"
ENV_VAR = "SPORTS_DB"


class StoreError(RuntimeError):
    """The store cannot be opened or used: wrong schema, bad URL, unknown run."""


def resolve_url(url: Optional[str] = None) -> str:
    """``--db`` value, else ``$SPORTS_DB``, else ``sqlite:///runs/sports.db``; plain paths mean SQLite."""
    url = url or os.environ.get(ENV_VAR) or str(DEFAULT_DB_PATH)
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser()}"
    try:
        make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"--db {url!r} is not a SQLAlchemy URL ({exc})") from exc
    return url


def _sqlite_writer_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # busy_timeout first: it waits for a writer instead of failing with "database is locked". WAL lets the
    # dashboard read while a job writes; it is a property of the file, set once, readers inherit it. Switching
    # a fresh file to WAL needs a lock that SQLite may refuse at once (without the busy handler) while
    # another job opening the same new store holds it, so the switch is retried for a while.
    cur.execute("PRAGMA busy_timeout=30000")
    for attempt in range(200):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_reader_pragmas(dbapi_conn, _record) -> None:
    # Connection settings only: setting journal_mode would write the header of an empty file.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA query_only=ON")  # a reader (the dashboard) can never change the store
    cur.close()


def make_engine(url: Optional[str] = None, create: bool = True, readonly: bool = False,
                check: bool = True) -> Engine:
    """Create the engine for ``url`` and make sure the schema is there and of our version.

    ``create=False`` opens an existing store only: a missing file or schema is then an error rather than
    created. ``readonly=True`` (implies ``create=False``) also makes SQLite refuse every write on the
    connection, which the dashboard and ``jobs.runs`` use. ``check=False`` skips the schema check and
    creation (``jobs.upgrade`` opens older stores with it).
    """
    url = resolve_url(url)
    u = make_url(url)
    create = create and not readonly
    kwargs: dict[str, Any] = {}
    if u.get_backend_name() == "sqlite":
        db = u.database
        if db and db != ":memory:":
            path = Path(db)
            from db.storecheck import check_readable, check_writable

            if create:
                check_writable(url)
            else:
                check_readable(path)
                if not readonly:
                    check_writable(url)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if u.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_reader_pragmas if readonly else _sqlite_writer_pragmas)
    if check:
        ensure_schema(engine, create=create, add_tables=not readonly)
    return engine


# Any constant shared by every process that opens a store; names the PostgreSQL advisory lock below.
_SCHEMA_LOCK_KEY = 0x5350_4F52  # "SPOR"


def ensure_schema(engine: Engine, create: bool = True, add_tables: bool = True) -> None:
    """Check the schema version; ``create`` makes the schema in an empty store, ``add_tables`` adds the
    tables that a newer feature brought (``create_all`` is a no-op for tables that exist)."""
    writes = create or add_tables
    with engine.begin() as conn:
        if writes and conn.dialect.name == "postgresql":
            # Two jobs that open an empty database together would both run CREATE TABLE, and the second
            # fails on the catalog ("duplicate key ... pg_type_typname_nsp_index"). The lock lasts until
            # this transaction ends, so they take turns and the second finds the schema made.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        elif writes and conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the same race on SQLite: take the write lock first
        _check_or_create_schema(conn, create, add_tables)


def _check_or_create_schema(conn: Connection, create: bool, add_tables: bool) -> None:
    where = conn.engine.url.render_as_string(hide_password=True)
    tables = set(inspect(conn).get_table_names())
    if "schema_info" not in tables:
        if tables & {"runs", "images", "predictions"}:
            raise StoreError(f"store {where} has tables but no schema version; it was not written by this tool")
        if not create:
            from db.storecheck import db_arg

            raise StoreError(f"store {where} is empty; run 'python -m jobs.train {db_arg(where)}' to create a run")
        Base.metadata.create_all(conn)
        conn.execute(insert(SchemaInfo).values(key="version", value=str(SCHEMA_VERSION)))
        return
    found = conn.scalar(select(SchemaInfo.value).where(SchemaInfo.key == "version"))
    found = int(found) if found is not None else None
    if found != SCHEMA_VERSION:
        shown = conn.engine.url.render_as_string(hide_password=True)
        advice = ("it was written by a newer version of this tool" if (found or 0) > SCHEMA_VERSION
                  else f"run 'python -m jobs.upgrade --db {shown}' to upgrade it")
        raise StoreError(f"store {shown} has schema version {found}, this tool expects {SCHEMA_VERSION}; {advice}")
    if add_tables:
        Base.metadata.create_all(conn)  # adds tables that a newer minor feature brought; no-op otherwise
        from db.indexes import add_missing_indexes  # create_all leaves existing tables' indexes alone

        add_missing_indexes(conn)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# --------------------------------------------------------------------------- runs

def create_run(
    session: Session,
    *,
    name: str,
    config: dict[str, Any],
    data_root: str,
    device: str,
    weights: str,
    image_size: int,
    cam_layer: Optional[str],
    class_names: list[str],
    absent_splits: dict[str, str],
) -> Run:
    run = Run(
        name=name,
        status="running",
        config=config,
        data_root=data_root,
        device=device,
        weights=weights,
        image_size=image_size,
        cam_layer=cam_layer,
        started_at=utcnow(),
        absent_splits=absent_splits,
        metrics={},
    )
    run.classes = [RunClass(index=i, name=n) for i, n in enumerate(class_names)]
    session.add(run)
    session.flush()
    return run


def resolve_run(session: Session, ref: str | int) -> Run:
    """A run by id, by name (the newest of that name), or ``latest``: the newest complete run that is not a
    snapshot of another (the same run the dashboard opens on)."""
    ref_s = str(ref).strip()
    run: Optional[Run]
    if ref_s == "latest":
        from db.storecheck import LATEST, no_latest

        run = session.scalars(select(Run).where(*LATEST).order_by(Run.id.desc()).limit(1)).first()
        if run is None:
            raise StoreError(no_latest(session))
    elif ref_s.isdigit():
        run = session.get(Run, int(ref_s))
    else:
        run = session.scalars(select(Run).where(Run.name == ref_s).order_by(Run.id.desc()).limit(1)).first()
    if run is None:
        raise StoreError(f"no run {ref_s!r} in the store (give an id, a name, or 'latest')")
    return run


def add_epoch(session: Session, run_id: int, **fields: Any) -> None:
    # An epoch re-run after a resume replaces the row of the same number.
    session.execute(
        delete(EpochRow).where(EpochRow.run_id == run_id, EpochRow.global_epoch == fields["global_epoch"])
    )
    session.add(EpochRow(run_id=run_id, **fields))


def delete_epochs_after(session: Session, run_id: int, global_epoch: int) -> None:
    session.execute(delete(EpochRow).where(EpochRow.run_id == run_id, EpochRow.global_epoch > global_epoch))


@dataclass
class ImageRecord:
    split: str
    relpath: str
    label: int
    width: Optional[int] = None
    height: Optional[int] = None
    skipped: bool = False
    skip_reason: Optional[str] = None
    bbox: Optional[list[float]] = None
    sha256: Optional[str] = None  # hex digest of the file's bytes


def upsert_images(session: Session, run_id: int, records: Iterable[ImageRecord]) -> dict[tuple[str, str], int]:
    """Insert images not yet known for the run, update size/skip fields of known ones; return their ids."""
    existing = {
        (r.split, r.relpath): r
        for r in session.scalars(select(ImageRow).where(ImageRow.run_id == run_id))
    }
    for rec in records:
        row = existing.get((rec.split, rec.relpath))
        if row is None:
            row = ImageRow(run_id=run_id, split=rec.split, relpath=rec.relpath, label=rec.label)
            session.add(row)
            existing[(rec.split, rec.relpath)] = row
        row.label = rec.label
        if rec.width is not None:
            row.width, row.height = rec.width, rec.height
        if rec.bbox is not None:
            row.bbox = rec.bbox
        if rec.sha256 is not None:
            row.sha256 = rec.sha256
        if rec.skipped:
            row.skipped, row.skip_reason = True, rec.skip_reason
    session.flush()
    return {k: r.id for k, r in existing.items()}


def begin_evaluation(session: Session, run_id: int, split: str) -> None:
    """Mark a split's evaluation as running and drop whatever an earlier, interrupted pass left."""
    image_ids = select(ImageRow.id).where(ImageRow.run_id == run_id, ImageRow.split == split)
    session.execute(delete(CamMap).where(CamMap.image_id.in_(image_ids)))
    session.execute(delete(Prediction).where(Prediction.image_id.in_(image_ids)))
    ev = session.get(EvalRow, (run_id, split))
    if ev is None:
        ev = EvalRow(run_id=run_id, split=split)
        session.add(ev)
    ev.status, ev.top1, ev.top5, ev.loss, ev.finished_at, ev.n_images = "running", None, None, None, None, 0
    session.flush()


def add_predictions(session: Session, rows: list[dict[str, Any]], maps: list[dict[str, Any]] = ()) -> None:
    """Insert prediction rows and their map rows (dicts of ``Prediction`` and ``CamMap`` columns)."""
    if rows:
        session.execute(Prediction.__table__.insert(), rows)
    add_maps(session, maps)


def add_maps(session: Session, rows: Iterable[dict[str, Any]]) -> None:
    """Insert map rows: dicts of ``CamMap`` columns, one per (image, method, target)."""
    rows = list(rows)
    for row in rows:
        check_method(row["method"])
        if row["target"] not in TARGETS:
            raise ValueError(f"map of image {row['image_id']}: target {row['target']!r}, expected one of "
                             f"{', '.join(TARGETS)}")
    if rows:
        session.execute(CamMap.__table__.insert(), rows)


def replace_maps(session: Session, run_id: int, method: str, image_ids: Iterable[int],
                 rows: Iterable[dict[str, Any]]) -> None:
    """Drop the run's ``method`` maps of ``image_ids`` and insert ``rows`` (of that method) in their place."""
    check_method(method)
    ids = [int(i) for i in image_ids]
    for lo in range(0, len(ids), 500):
        session.execute(delete(CamMap).where(CamMap.run_id == run_id, CamMap.method == method,
                                             CamMap.image_id.in_(ids[lo:lo + 500])))
    rows = list(rows)
    strays = {r["method"] for r in rows} - {method}
    if strays:
        raise ValueError(f"replace_maps of method {method!r} was given rows of {', '.join(sorted(strays))}")
    add_maps(session, rows)


def record_cams(session: Session, run_id: int, *, layer: Optional[str] = None, methods: Iterable[str] = ()) -> None:
    """Note the run's CAM layer (when given) and add ``methods`` to the methods it stores."""
    run = session.get(Run, run_id)
    if run is None:
        raise StoreError(f"no run {run_id}")
    if layer is not None:
        run.cam_layer = layer
    known = list(run.cam_methods or [])
    new = [check_method(m) for m in methods if m not in known]
    if new:
        run.cam_methods = known + list(dict.fromkeys(new))


def finish_evaluation(session: Session, run_id: int, split: str, **metrics: Any) -> None:
    ev = session.get(EvalRow, (run_id, split))
    if ev is None:
        raise StoreError(f"run {run_id}: no evaluation of split {split!r} was begun")
    for k, v in metrics.items():
        setattr(ev, k, v)
    ev.status = "complete"
    ev.finished_at = utcnow()


def reopen_run(session: Session, run_id: int) -> bool:
    """Mark a run running again (a resumed job), clearing its error; False when the store has no such run."""
    run = session.get(Run, run_id)
    if run is None:
        return False
    run.status, run.error = "running", None
    return True


def set_image_hashes(session: Session, hashes: dict[int, str]) -> None:
    """Record the SHA-256 of image files by image id."""
    for image_id, digest in hashes.items():
        session.execute(update(ImageRow).where(ImageRow.id == image_id).values(sha256=digest))


def finish_run(session: Session, run_id: int, status: str, **fields: Any) -> None:
    run = session.get(Run, run_id)
    if run is None:
        raise StoreError(f"no run {run_id}")
    run.status = status
    run.finished_at = utcnow()
    for k, v in fields.items():
        setattr(run, k, v)


# --------------------------------------------------------------------------- results written after training
from db.store_results import (  # noqa: E402,F401  (written there, used as store.*)
    replace_audit, replace_calibration, replace_pointing_scores, replace_sanity_check, replace_trust_scores,
    set_logits,
)
from db.store_vectors import put_vectors, replace_map  # noqa: E402,F401  (written there, used as store.*)
