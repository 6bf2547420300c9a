"""Bring a results store written by an older version of this tool up to the current schema.

``STEPS[n]`` takes a store from version ``n`` to ``n + 1``. Each step runs in one transaction together with
the update of the version row, so a store is either upgraded by a step or left exactly as it was. A step
spells out its own tables instead of using today's models: it must keep meaning what it meant when it was
written, after the models have moved on. A SQLite file is copied next to itself before the first step.

Version 0 is the layout before evaluations were tracked: no ``evaluations`` table and no ``loss`` column
in ``predictions``. Version 1 kept all Grad-CAM maps of an image in one ``cams`` row (float16 bytes of
shape (k, h, w): the predicted class's map, then the true class's when they differ); version 2 keeps one
``cam_maps`` row per image, CAM method and target, and adds ``runs.cam_methods``, ``runs.parent_id``,
``runs.stage``, ``predictions.logits`` and ``images.sha256``.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    inspect,
    text,
)

from db.indexes import add_missing_indexes
from db.models import SCHEMA_VERSION, Base
from db.store import StoreError, make_engine

Step = Callable[[Connection], None]
STEPS: dict[int, Step] = {}


def step(from_version: int) -> Callable[[Step], Step]:
    def register(fn: Step) -> Step:
        if from_version in STEPS:
            raise ValueError(f"two upgrade steps from version {from_version}: {STEPS[from_version].__name__}, "
                             f"{fn.__name__}")
        STEPS[from_version] = fn
        return fn
    return register


@step(0)
def upgrade_0_to_1(conn: Connection) -> None:
    """Add predictions.loss and the evaluations table; evaluations are filled in from the predictions."""
    conn.execute(text("ALTER TABLE predictions ADD COLUMN loss FLOAT"))
    md = MetaData()
    Table("runs", md, Column("id", Integer, primary_key=True))  # only for the foreign key below
    evaluations = Table(
        "evaluations", md,
        Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        Column("split", String(8), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("n_images", Integer, nullable=False),
        Column("top1", Float),
        Column("top5", Float),
        Column("loss", Float),
        Column("finished_at", DateTime),
    )
    evaluations.create(conn)
    # One row per split that has predictions. Only a complete run had written all of them; the loss of a
    # prediction was not kept before, so it stays unknown.
    rows = conn.execute(text(
        "SELECT i.run_id, i.split, i.label, p.pred, p.top5_idx, r.status, r.finished_at "
        "FROM predictions p JOIN images i ON i.id = p.image_id JOIN runs r ON r.id = i.run_id"
    ).columns(finished_at=DateTime)).all()
    acc: dict[tuple[int, str], dict] = {}
    for run_id, split, label, pred, top5, status, finished in rows:
        a = acc.setdefault((run_id, split), {"n": 0, "c1": 0, "c5": 0, "status": status, "finished": finished})
        top5 = json.loads(top5) if isinstance(top5, str) else (top5 or [])
        a["n"] += 1
        a["c1"] += int(pred == label)
        a["c5"] += int(label in top5)
    for (run_id, split), a in sorted(acc.items()):
        done = a["status"] == "complete"
        conn.execute(evaluations.insert().values(
            run_id=run_id, split=split, status="complete" if done else "running", n_images=a["n"],
            top1=a["c1"] / a["n"], top5=a["c5"] / a["n"], loss=None, finished_at=a["finished"] if done else None))


# The names version 2 gave the gradcam method and the two targets a version-1 row held; spelled out here so
# that the step keeps its meaning if the shared names change.
_V2_METHOD, _V2_TARGETS = "gradcam", ("pred", "true")
_MOVE_CHUNK = 500  # v1 rows read and written per round trip


@step(1)
def upgrade_1_to_2(conn: Connection) -> None:
    """Split each cams row into one cam_maps row per map (method gradcam, targets pred and true), add
    runs.cam_methods / parent_id / stage, predictions.logits and images.sha256, and drop cams."""
    md = MetaData()
    Table("runs", md, Column("id", Integer, primary_key=True))
    Table("images", md, Column("id", Integer, primary_key=True))
    cam_maps = Table(
        "cam_maps", md,
        Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        Column("method", String(16), primary_key=True),
        Column("target", String(8), primary_key=True),
        Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        Column("class_index", Integer, nullable=False),
        Column("h", Integer, nullable=False),
        Column("w", Integer, nullable=False),
        Column("data", LargeBinary, nullable=False),
        Index("ix_cam_maps_run_method", "run_id", "method"),
    )
    cam_maps.create(conn)
    old = conn.execute(text("SELECT image_id, run_id, classes, h, w, data FROM cams ORDER BY image_id"),
                       execution_options={"stream_results": True})
    for chunk in old.partitions(_MOVE_CHUNK):
        rows = []
        for image_id, run_id, classes, h, w, data in chunk:
            classes = json.loads(classes) if isinstance(classes, str) else list(classes)
            size = 2 * h * w  # bytes of one float16 map
            if len(classes) > len(_V2_TARGETS) or len(data) != size * len(classes):
                raise StoreError(f"cams row of image {image_id}: {len(classes)} classes and {len(data)} bytes "
                                 f"do not make (k, {h}, {w}) float16 maps with k <= 2")
            for i, cls in enumerate(classes):
                rows.append(dict(image_id=image_id, method=_V2_METHOD, target=_V2_TARGETS[i], run_id=run_id,
                                 class_index=int(cls), h=h, w=w, data=bytes(data[i * size:(i + 1) * size])))
        if rows:
            conn.execute(cam_maps.insert(), rows)
    # Column types compiled for this dialect (JSON, BLOB / BYTEA), so the statements hold on both backends.
    def ddl(type_) -> str:
        return type_.compile(dialect=conn.dialect)

    conn.execute(text(f"ALTER TABLE runs ADD COLUMN cam_methods {ddl(JSON())} NOT NULL DEFAULT '[]'"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN parent_id INTEGER REFERENCES runs (id) ON DELETE SET NULL"))
    conn.execute(text(f"ALTER TABLE runs ADD COLUMN stage {ddl(String(32))}"))
    conn.execute(text(f"ALTER TABLE predictions ADD COLUMN logits {ddl(LargeBinary())}"))
    conn.execute(text(f"ALTER TABLE images ADD COLUMN sha256 {ddl(String(64))}"))
    conn.execute(text("CREATE INDEX ix_images_sha256 ON images (sha256)"))
    conn.execute(text("UPDATE runs SET cam_methods = :m WHERE id IN (SELECT DISTINCT run_id FROM cams)")
                 .bindparams(bindparam("m", type_=JSON)), {"m": [_V2_METHOD]})
    conn.execute(text("DROP TABLE cams"))


# --------------------------------------------------------------------------- running the steps

@dataclass
class UpgradeReport:
    url: str
    found: int
    target: int
    steps: list[str]
    backup: Optional[Path] = None
    applied: list[str] = field(default_factory=list)


def read_version(conn: Connection) -> Optional[int]:
    """The schema version the store records; None for an empty store."""
    tables = set(inspect(conn).get_table_names())
    if "schema_info" not in tables:
        if tables & {"runs", "images", "predictions"}:
            raise StoreError("the store has tables but no schema version; it was not written by this tool")
        return None
    value = conn.execute(text("SELECT value FROM schema_info WHERE key = 'version'")).scalar()
    if value is None:
        raise StoreError("the store's schema_info table holds no version row")
    return int(value)


def plan(found: int, target: int = SCHEMA_VERSION) -> list[Step]:
    if found > target:
        raise StoreError(f"the store has schema version {found}, newer than this tool's {target}; "
                         "use a newer version of the tool")
    missing = [v for v in range(found, target) if v not in STEPS]
    if missing:
        raise StoreError(f"no upgrade step from schema version {missing[0]} (store at {found}, tool at {target})")
    return [STEPS[v] for v in range(found, target)]


def backup_sqlite(engine: Engine, found: int) -> Optional[Path]:
    """Copy a SQLite file next to itself (``NAME.v<found>.bak``, stamped if that exists); None otherwise."""
    db = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return None
    src = Path(db)
    dest = src.with_name(f"{src.name}.v{found}.bak")
    if dest.exists():
        dest = src.with_name(f"{src.name}.v{found}.{datetime.now():%Y%m%d-%H%M%S}.bak")
    # The backup API copies what the WAL holds too, which a plain file copy would miss.
    s_conn, d_conn = sqlite3.connect(src), sqlite3.connect(dest)
    try:
        s_conn.backup(d_conn)
    finally:
        s_conn.close()
        d_conn.close()
    return dest


def _transactional_ddl(engine: Engine) -> None:
    """Make the sqlite3 driver run DDL inside our transactions (it begins them only before DML)."""
    if engine.url.get_backend_name() != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_conn, _record):
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(url: Optional[str] = None, dry_run: bool = False, say: Callable[[str], None] = print) -> UpgradeReport:
    """Apply every step from the store's version to this tool's; with ``dry_run``, only say which."""
    # A dry run opens the store read-only: it must not even switch the file to WAL.
    engine = make_engine(url, create=False, readonly=dry_run, check=False)
    if not dry_run:
        _transactional_ddl(engine)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            found = read_version(conn)
        if found is None:
            raise StoreError(f"store {shown} is empty; there is nothing to upgrade")
        steps = plan(found)
        report = UpgradeReport(shown, found, SCHEMA_VERSION, [s.__name__ for s in steps])
        say(f"store {shown}: schema version {found}, this tool expects {SCHEMA_VERSION}")
        if not steps:
            say("nothing to upgrade")
            return report
        if dry_run:
            for s in steps:
                say(f"would apply {s.__name__}: {s.__doc__.strip() if s.__doc__ else ''}")
            say("dry run: the store was not changed")
            return report
        report.backup = backup_sqlite(engine, found)
        if report.backup:
            say(f"backup of the store before upgrading: {report.backup}")
        version = found
        for s in steps:
            with engine.begin() as conn:
                s(conn)
                version += 1
                conn.execute(text("UPDATE schema_info SET value = :v WHERE key = 'version'"), {"v": str(version)})
            report.applied.append(s.__name__)
            say(f"applied {s.__name__}: store now at schema version {version}")
        with engine.begin() as conn:  # tables of features added since the last step, as a fresh store has
            Base.metadata.create_all(conn)
            made = add_missing_indexes(conn)  # and indexes added to the models since then
        if made:
            say(f"added indexes: {', '.join(made)}")
        return report
    finally:
        engine.dispose()
