"""A store of an older schema: a clear error on open, and ``python -m jobs.upgrade`` that keeps its data.

``fixtures/store_v1.db`` is a schema-1 store as the code of that version wrote it (``build_store`` at commit
650887b, two runs: 16 images with one map, 6 with two, a data audit and faithfulness scores).
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, func, inspect, select, text

from core.cammaps import DEFAULT_METHOD, StoredMaps
from db import queries, store
from db import upgrade as upgrade_mod
from db.models import SCHEMA_VERSION, EvalRow, Prediction
from jobs import upgrade as upgrade_job
from jobs.common import run_cli
from tests.pg import new_database

# Version 0 as it was written: no evaluations table, no predictions.loss column.
V0_SCHEMA = """
CREATE TABLE schema_info ("key" VARCHAR(64) NOT NULL PRIMARY KEY, value VARCHAR(256) NOT NULL);
CREATE TABLE runs (
    id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL, status VARCHAR(16) NOT NULL,
    config JSON NOT NULL, data_root TEXT NOT NULL, device VARCHAR(64) NOT NULL, weights VARCHAR(300) NOT NULL,
    image_size INTEGER NOT NULL, cam_layer VARCHAR(120), created_at DATETIME NOT NULL, started_at DATETIME,
    finished_at DATETIME, best_epoch INTEGER, metrics JSON NOT NULL, absent_splits JSON NOT NULL,
    checkpoint_path TEXT, error TEXT);
CREATE INDEX ix_runs_name ON runs (name);
CREATE TABLE run_classes (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE, "index" INTEGER NOT NULL,
    name VARCHAR(300) NOT NULL, PRIMARY KEY (run_id, "index"));
CREATE TABLE epochs (
    id INTEGER NOT NULL PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    phase INTEGER NOT NULL, epoch INTEGER NOT NULL, global_epoch INTEGER NOT NULL, train_loss FLOAT NOT NULL,
    train_acc FLOAT NOT NULL, val_loss FLOAT, val_acc FLOAT, lr FLOAT NOT NULL, seconds FLOAT NOT NULL,
    CONSTRAINT uq_epoch UNIQUE (run_id, global_epoch));
CREATE INDEX ix_epochs_run_id ON epochs (run_id);
CREATE TABLE images (
    id INTEGER NOT NULL PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    split VARCHAR(8) NOT NULL, relpath TEXT NOT NULL, label INTEGER NOT NULL, width INTEGER, height INTEGER,
    skipped BOOLEAN NOT NULL, skip_reason TEXT, bbox JSON, CONSTRAINT uq_image UNIQUE (run_id, split, relpath));
CREATE INDEX ix_images_run_split ON images (run_id, split);
CREATE TABLE predictions (
    image_id INTEGER NOT NULL PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE, pred INTEGER NOT NULL,
    confidence FLOAT NOT NULL, top5_idx JSON NOT NULL, top5_prob JSON NOT NULL);
CREATE INDEX ix_predictions_run_id ON predictions (run_id);
CREATE TABLE cams (
    image_id INTEGER NOT NULL PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE, layer VARCHAR(120) NOT NULL,
    classes JSON NOT NULL, h INTEGER NOT NULL, w INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX ix_cams_run_id ON cams (run_id);
"""


def make_v0_store(path: Path, version: str = "0") -> Path:
    """One complete run with 3 valid images (one skipped), 2 predictions (1 right) and their maps."""
    con = sqlite3.connect(path)
    con.executescript(V0_SCHEMA)
    con.execute("INSERT INTO schema_info VALUES ('version', ?)", (version,))
    con.execute("INSERT INTO runs (id, name, status, config, data_root, device, weights, image_size, cam_layer, "
                "created_at, finished_at, best_epoch, metrics, absent_splits) VALUES (1, 'old run', 'complete', "
                "'{}', '/data', 'cpu', 'none', 32, 'features.35', '2024-01-01 10:00:00', '2024-01-01 11:00:00', "
                "2, '{}', '{}')")
    con.executemany("INSERT INTO run_classes VALUES (1, ?, ?)", [(0, "archery"), (1, "bowling"), (2, "curling")])
    con.executemany("INSERT INTO epochs (run_id, phase, epoch, global_epoch, train_loss, train_acc, lr, seconds) "
                    "VALUES (1, ?, 1, ?, 1.0, 0.5, 0.001, 3.0)", [(1, 1), (2, 2)])
    con.executemany("INSERT INTO images (id, run_id, split, relpath, label, skipped, skip_reason) "
                    "VALUES (?, 1, 'valid', ?, ?, ?, ?)",
                    [(1, "valid/archery/a.jpg", 0, 0, None), (2, "valid/bowling/b.jpg", 1, 0, None),
                     (3, "valid/curling/c.jpg", 2, 1, "empty file (0 bytes)")])
    con.executemany("INSERT INTO predictions VALUES (?, 1, ?, ?, ?, ?)",
                    [(1, 0, 0.9, json.dumps([0, 1, 2]), json.dumps([0.9, 0.06, 0.04])),
                     (2, 2, 0.6, json.dumps([2, 1, 0]), json.dumps([0.6, 0.3, 0.1]))])
    con.executemany("INSERT INTO cams VALUES (?, 1, 'features.35', ?, 2, 2, ?)",
                    [(1, json.dumps([0]), b"\0" * 8), (2, json.dumps([2, 1]), b"\0" * 16)])
    con.commit()
    con.close()
    return path


def version_of(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT value FROM schema_info WHERE key = 'version'").fetchone()[0]
    finally:
        con.close()


def columns(path: Path, table: str) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    finally:
        con.close()


@pytest.mark.parametrize("create", [True, False])
def test_old_store_is_refused_with_the_upgrade_command(tmp_path, create):
    db = make_v0_store(tmp_path / "old.db")
    with pytest.raises(store.StoreError) as err:
        store.make_engine(str(db), create=create)
    msg = str(err.value)
    assert f"schema version 0, this tool expects {SCHEMA_VERSION}" in msg
    assert f"python -m jobs.upgrade --db sqlite:///{db}" in msg
    assert version_of(db) == "0" and "evaluations" not in columns(db, "sqlite_master")


def test_dry_run_changes_nothing(tmp_path, capsys):
    db = make_v0_store(tmp_path / "old.db")
    before = db.read_bytes()
    assert run_cli(upgrade_job.main, upgrade_job.get_args_parser(), ["--db", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would apply upgrade_0_to_1" in out and "would apply upgrade_1_to_2" in out and "not changed" in out
    assert db.read_bytes() == before
    assert not list(tmp_path.glob("*.bak"))


def test_upgrade_keeps_the_data_and_backs_up_first(tmp_path, capsys):
    db = make_v0_store(tmp_path / "old.db")
    assert run_cli(upgrade_job.main, upgrade_job.get_args_parser(), ["--db", str(db)]) == 0
    out = capsys.readouterr().out
    backup = tmp_path / "old.db.v0.bak"
    assert f"backup of the store before upgrading: {backup}" in out
    assert version_of(backup) == "0" and "loss" not in columns(backup, "predictions")
    assert version_of(db) == str(SCHEMA_VERSION)

    S = store.make_sessionmaker(store.make_engine(str(db), create=False))
    with S() as s:
        (run,) = queries.run_summaries(s)
        assert (run["name"], run["status"], run["classes"]) == ("old run", "complete", 3)
        v = run["splits"]["valid"]
        assert (v["images"], v["predictions"], v["skipped"], v["maps"]) == (3, 2, 1, 2)
        assert (v["evaluation"], v["top1"], v["top5"]) == ("complete", 0.5, 1.0)
        assert s.get(EvalRow, (1, "valid")).n_images == 2
        assert s.scalar(select(func.count()).where(Prediction.loss.is_(None))) == 2
    # A second upgrade has nothing to do and makes no second backup.
    assert run_cli(upgrade_job.main, upgrade_job.get_args_parser(), ["--db", str(db)]) == 0
    assert "nothing to upgrade" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.bak"))) == 1


def test_a_failing_step_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    db = make_v0_store(tmp_path / "old.db")

    def half_done(conn):
        upgrade_mod.upgrade_0_to_1(conn)
        raise RuntimeError("disk full, say")

    monkeypatch.setitem(upgrade_mod.STEPS, 0, half_done)
    with pytest.raises(RuntimeError, match="disk full"):
        upgrade_mod.upgrade(str(db), say=lambda _: None)
    assert version_of(db) == "0"
    assert "loss" not in columns(db, "predictions")
    con = sqlite3.connect(db)
    assert con.execute("SELECT name FROM sqlite_master WHERE name = 'evaluations'").fetchone() is None
    con.close()


def test_newer_store_is_not_upgraded(tmp_path, capsys):
    db = make_v0_store(tmp_path / "new.db", version=str(SCHEMA_VERSION + 1))
    with pytest.raises(store.StoreError, match="newer version of this tool"):
        store.make_engine(str(db), create=False)
    assert run_cli(upgrade_job.main, upgrade_job.get_args_parser(), ["--db", str(db)]) == 2
    assert "newer than this tool's" in capsys.readouterr().err


def test_missing_store_is_not_created(tmp_path, capsys):
    assert run_cli(upgrade_job.main, upgrade_job.get_args_parser(), ["--db", str(tmp_path / "none.db")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


# --------------------------------------------------------------------------- version 1 -> 2

V1_FIXTURE = Path(__file__).parent / "fixtures" / "store_v1.db"


@pytest.fixture
def v1_store(tmp_path) -> Path:
    db = tmp_path / "v1.db"
    shutil.copyfile(V1_FIXTURE, db)
    return db


def v1_maps(path: Path) -> dict[int, tuple[int, list[int], int, int, bytes]]:
    """image id -> (run id, classes, h, w, bytes) of every ``cams`` row of a version-1 store."""
    con = sqlite3.connect(path)
    try:
        return {i: (r, json.loads(c), h, w, bytes(d))
                for i, r, c, h, w, d in con.execute("SELECT image_id, run_id, classes, h, w, data FROM cams")}
    finally:
        con.close()


def counts(path: Path, tables: list[str]) -> dict[str, int]:
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        con.close()


KEPT = ["runs", "run_classes", "epochs", "images", "predictions", "evaluations", "audits", "trust_scores",
        "sanity_checks"]


def test_the_v1_fixture_is_what_it_claims(v1_store):
    assert version_of(v1_store) == "1"
    old = v1_maps(v1_store)
    assert sorted(len(c) for _, c, _, _, _ in old.values()) == [1] * 16 + [2] * 6
    assert V1_FIXTURE.stat().st_size < 200_000


def test_v1_store_is_refused_with_the_upgrade_command(v1_store):
    with pytest.raises(store.StoreError) as err:
        store.make_engine(str(v1_store), create=False)
    assert f"schema version 1, this tool expects {SCHEMA_VERSION}" in str(err.value)
    assert f"python -m jobs.upgrade --db sqlite:///{v1_store}" in str(err.value)
    assert version_of(v1_store) == "1"


def test_v1_upgrade_keeps_every_prediction_and_map_byte_for_byte(v1_store, capsys):
    before, old = counts(v1_store, KEPT), v1_maps(v1_store)
    assert run_cli(upgrade_job.main, upgrade_job.get_args_parser(), ["--db", str(v1_store)]) == 0
    assert "applied upgrade_1_to_2: store now at schema version 2" in capsys.readouterr().out
    assert version_of(v1_store) == str(SCHEMA_VERSION) == "2"
    assert counts(v1_store, KEPT) == before
    assert counts(v1_store, ["cam_maps"])["cam_maps"] == sum(len(c) for _, c, _, _, _ in old.values()) == 28
    assert "cams" not in columns(v1_store, "sqlite_master") and not columns(v1_store, "cams")

    S = store.make_sessionmaker(store.make_engine(str(v1_store), create=False))
    with S() as s:
        for run_id in (1, 2):
            ids = [i for i, (r, *_rest) in old.items() if r == run_id]
            maps = queries.maps_for(s, run_id, ids)
            assert sorted(maps) == sorted(ids)
            for image_id, m in maps.items():
                _, classes, h, w, data = old[image_id]
                assert isinstance(m, StoredMaps) and m.method == DEFAULT_METHOD and (m.h, m.w) == (h, w)
                assert m.targets == ("pred", "true")[:len(classes)] and list(m.classes) == classes
                assert b"".join(m.data) == data  # byte-equal, in the order of the v1 row
            assert queries.stored_methods(s, run_id) == [DEFAULT_METHOD]
        runs = {r["id"]: r for r in queries.run_summaries(s)}
        assert {r["cam_methods"][0] for r in runs.values()} == {DEFAULT_METHOD}
        assert sum(sp["maps"] for r in runs.values() for sp in r["splits"].values()) == len(old)
        assert s.scalar(select(func.count()).where(Prediction.logits.is_not(None))) == 0


def test_v1_upgrade_matches_a_fresh_v2_schema(v1_store, tmp_path):
    upgrade_mod.upgrade(str(v1_store), say=lambda _: None)
    fresh = tmp_path / "fresh.db"
    store.make_engine(str(fresh)).dispose()
    con_u, con_f = sqlite3.connect(v1_store), sqlite3.connect(fresh)
    try:
        tables = [r[0] for r in con_f.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for t in tables:
            assert set(columns(v1_store, t)) == set(columns(fresh, t)), t
        index_sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'"
        assert {r[0] for r in con_u.execute(index_sql)} == {r[0] for r in con_f.execute(index_sql)}
    finally:
        con_u.close()
        con_f.close()


def test_a_failing_v1_step_leaves_the_store_as_it_was(v1_store, monkeypatch):
    old = v1_maps(v1_store)

    def half_done(conn):
        upgrade_mod.upgrade_1_to_2(conn)
        raise RuntimeError("power cut, say")

    monkeypatch.setitem(upgrade_mod.STEPS, 1, half_done)
    with pytest.raises(RuntimeError, match="power cut"):
        upgrade_mod.upgrade(str(v1_store), say=lambda _: None)
    assert version_of(v1_store) == "1" and v1_maps(v1_store) == old
    assert "sha256" not in columns(v1_store, "images") and "cam_methods" not in columns(v1_store, "runs")
    assert not columns(v1_store, "cam_maps")


def copy_store(src_path: Path, url: str) -> None:
    """Copy a SQLite store, tables and rows, to the empty database ``url`` (types made generic on the way)."""
    src, dst = create_engine(f"sqlite:///{src_path}"), create_engine(url)
    md = MetaData()
    md.reflect(src)
    for table in md.tables.values():
        for col in table.columns:
            col.type = col.type.as_generic()
    md.create_all(dst)
    with src.connect() as a, dst.begin() as b:
        for table in md.sorted_tables:
            rows = [dict(r) for r in a.execute(select(table)).mappings()]
            if rows:
                b.execute(table.insert(), rows)
    src.dispose()
    dst.dispose()


@pytest.mark.postgres
def test_v1_upgrade_on_postgresql(v1_store, pg_url):
    url = new_database(pg_url)
    copy_store(v1_store, url)
    old = v1_maps(v1_store)
    before = counts(v1_store, KEPT)
    with pytest.raises(store.StoreError, match="python -m jobs.upgrade"):
        store.make_engine(url, create=False)
    report = upgrade_mod.upgrade(url, say=lambda _: None)
    assert (report.found, report.applied, report.backup) == (1, ["upgrade_1_to_2"], None)
    engine = store.make_engine(url, create=False)
    with engine.connect() as c:
        assert {t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in KEPT} == before
        assert c.execute(text("SELECT count(*) FROM cam_maps")).scalar() == 28
        assert not inspect(c).has_table("cams")
    with store.make_sessionmaker(engine)() as s:
        for run_id in (1, 2):
            maps = queries.maps_for(s, run_id, [i for i, (r, *_rest) in old.items() if r == run_id])
            assert {i: b"".join(m.data) for i, m in maps.items()} == {
                i: d for i, (r, _, _, _, d) in old.items() if r == run_id}
        assert {r["cam_methods"][0] for r in queries.run_summaries(s)} == {DEFAULT_METHOD}
    engine.dispose()
