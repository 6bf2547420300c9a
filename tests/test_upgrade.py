"""A store of an older schema: a clear error on open, and ``python -m jobs.upgrade`` that keeps its data."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import store
from db import upgrade as upgrade_mod
from db.models import SCHEMA_VERSION, EvalRow, Prediction
from jobs import upgrade as upgrade_job
from jobs.common import run_cli

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
    assert "would apply upgrade_0_to_1" in out and "not changed" in out
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
        (run,) = store.run_summaries(s)
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
