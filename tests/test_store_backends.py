"""The store on SQLite and on PostgreSQL: schema, version check, the writes of a run, and jobs against a server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from core.cammaps import DEFAULT_METHOD
from db import queries, store
from db.models import SCHEMA_VERSION, CamMap, EpochRow, EvalRow, ImageRow, Prediction, Run
from tests.conftest import make_dataset
from tests.pg import new_database

TINY = ["--image-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "4",
        "--workers", "0", "--weights", "none", "--device", "cpu"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """An empty store of each backend: a SQLite file, or a fresh database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return new_database(request.getfixturevalue("pg_url"))


def new_run(S, name: str = "r", classes=("alpha", "beta")) -> int:
    with S.begin() as s:
        run = store.create_run(s, name=name, config={"lr": 1e-3, "nested": {"a": [1, 2]}}, data_root="/data",
                               device="cpu", weights="none", image_size=32, cam_layer="features.35",
                               class_names=list(classes), absent_splits={"test": "no test/ folder"})
        return run.id


def predictions_for(S, run_id: int, image_ids: dict, split: str) -> None:
    with S.begin() as s:
        store.begin_evaluation(s, run_id, split)
    rows = [dict(image_id=i, run_id=run_id, pred=1, confidence=0.75, top5_idx=[1, 0], top5_prob=[0.75, 0.25],
                 loss=0.3) for (sp, _), i in image_ids.items() if sp == split]
    cams = [dict(image_id=r["image_id"], run_id=run_id, method=DEFAULT_METHOD, target="pred", class_index=1, h=2, w=2,
                 data=bytes(range(8))) for r in rows]
    with S.begin() as s:
        store.add_predictions(s, rows, cams)
        store.finish_evaluation(s, run_id, split, n_images=len(rows), top1=0.5, top5=1.0, loss=0.3)


def test_schema_is_created_once_and_reopened(db_url):
    store.make_engine(db_url)
    eng = store.make_engine(db_url, create=False)
    with store.make_sessionmaker(eng)() as s:
        assert s.get(store.SchemaInfo, "version").value == str(SCHEMA_VERSION)
        assert queries.run_summaries(s) == []


def test_jobs_opening_an_empty_store_together_all_succeed(db_url):
    """Each job calls make_engine on start; on an empty store they race to create the schema."""
    barrier, failures = threading.Barrier(4), []

    def open_store() -> None:
        barrier.wait()
        try:
            store.make_engine(db_url).dispose()
        except Exception as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    with store.make_sessionmaker(store.make_engine(db_url, create=False))() as s:
        assert s.scalars(select(store.SchemaInfo.value)).all() == [str(SCHEMA_VERSION)]


def test_empty_store_is_refused_without_create(db_url):
    with pytest.raises(store.StoreError, match="empty"):
        store.make_engine(db_url, create=False)


def test_version_mismatch_is_refused(db_url):
    eng = store.make_engine(db_url)
    with eng.begin() as c:
        c.execute(text("UPDATE schema_info SET value = '99' WHERE key = 'version'"))
    eng.dispose()
    with pytest.raises(store.StoreError, match=rf"schema version 99, this tool expects {SCHEMA_VERSION}"):
        store.make_engine(db_url)


def test_round_trip_of_a_run(db_url):
    S = store.make_sessionmaker(store.make_engine(db_url))
    run_id = new_run(S)
    records = [store.ImageRecord("valid", f"valid/alpha/{k}.jpg", 0, width=32, height=24, bbox=[1.0, 2.0, 3.5, 4.0])
               for k in range(3)]
    records.append(store.ImageRecord("valid", "valid/beta/bad.jpg", 1, skipped=True, skip_reason="cannot read"))
    with S.begin() as s:
        ids = store.upsert_images(s, run_id, records)
        store.add_epoch(s, run_id, phase=1, epoch=1, global_epoch=1, train_loss=1.0, train_acc=0.5, val_loss=None,
                        val_acc=None, lr=1e-3, seconds=0.1)
    good = {k: v for k, v in ids.items() if not k[1].endswith("bad.jpg")}
    predictions_for(S, run_id, good, "valid")
    with S.begin() as s:
        store.finish_run(s, run_id, "complete", best_epoch=1, metrics={"valid": {"top1": 0.5}})
    with S() as s:
        run = s.get(Run, run_id)
        assert run.config == {"lr": 1e-3, "nested": {"a": [1, 2]}} and run.absent_splits["test"]
        assert run.started_at is not None and run.finished_at >= run.started_at
        assert queries.class_names(s, run_id) == ["alpha", "beta"]
        img = s.scalars(select(ImageRow).where(ImageRow.relpath == "valid/alpha/0.jpg")).one()
        assert (img.width, img.height, img.bbox, img.skipped) == (32, 24, [1.0, 2.0, 3.5, 4.0], False)
        cam = s.scalars(select(CamMap)).first()
        assert bytes(cam.data) == bytes(range(8)) and (cam.method, cam.target, cam.class_index) == (DEFAULT_METHOD, "pred", 1)
        p = s.scalars(select(Prediction)).first()
        assert p.top5_idx == [1, 0] and p.top5_prob == [0.75, 0.25]
        assert s.scalar(select(EpochRow.val_acc)) is None
        (summary,) = queries.run_summaries(s)
    assert summary["status"] == "complete" and summary["classes"] == 2 and summary["best_epoch"] == 1
    v = summary["splits"]["valid"]
    assert (v["images"], v["predictions"], v["skipped"], v["maps"], v["evaluation"]) == (4, 3, 1, 3, "complete")
    json.dumps(summary)  # what jobs.runs --json prints


def test_evaluating_again_leaves_no_duplicates(db_url):
    S = store.make_sessionmaker(store.make_engine(db_url))
    run_id = new_run(S)
    other = new_run(S, "other")
    recs = [store.ImageRecord(sp, f"{sp}/alpha/{k}.jpg", 0) for sp in ("valid", "test") for k in range(4)]
    with S.begin() as s:
        ids = store.upsert_images(s, run_id, recs)
        ids_other = store.upsert_images(s, other, recs)
    for _ in range(2):
        predictions_for(S, run_id, ids, "valid")
    predictions_for(S, run_id, ids, "test")
    predictions_for(S, other, ids_other, "valid")
    with S.begin() as s:  # upserting the same images again adds none
        assert store.upsert_images(s, run_id, recs) == ids
    with S() as s:
        def count(model, rid: int) -> int:
            return s.scalar(select(func.count()).select_from(model).where(model.run_id == rid))

        assert (count(ImageRow, run_id), count(Prediction, run_id), count(CamMap, run_id)) == (8, 8, 8)
        assert (count(ImageRow, other), count(Prediction, other), count(CamMap, other)) == (8, 4, 4)
        assert s.get(EvalRow, (run_id, "valid")).status == "complete"


# --------------------------------------------------------------------------- jobs against PostgreSQL

@pytest.mark.postgres
def test_train_into_postgres_then_list_runs(tmp_path, pg_url):  # noqa: F811
    url = new_database(pg_url)
    data = make_dataset(tmp_path / "data", per_split={"train": 3, "valid": 2})
    r = subprocess.run([sys.executable, "-m", "jobs.train", "--data", str(data), "--out", str(tmp_path / "ck"),
                        "--run-name", "on a server", *TINY], capture_output=True, text=True,
                       env={**_env(), "SPORTS_DB": url})
    assert r.returncode == 0, r.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "jobs.runs", "--db", url, "--json"], capture_output=True,
                         text=True, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = json.loads(out.stdout)
    assert run["name"] == "on a server" and run["status"] == "complete"
    v = run["splits"]["valid"]
    assert (v["images"], v["predictions"], v["maps"], v["evaluation"]) == (6, 6, 6, "complete")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SPORTS_DB"}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.postgres
def test_two_runs_write_one_server_store_while_it_is_read(tmp_path, pg_url):  # noqa: F811
    """Two jobs start together on an empty database (both create the schema) and a reader polls throughout."""
    url = new_database(pg_url)
    sizes = {"a": {"train": 3, "valid": 2}, "b": {"train": 2, "valid": 3, "test": 1}}
    procs = {}
    for name, per_split in sizes.items():
        data = make_dataset(tmp_path / name, classes=("x", "y", "z") if name == "a" else ("p", "q"),
                            per_split=per_split, seed=len(name))
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "jobs.train", "--data", str(data), "--db", url, "--out", str(tmp_path / "ck"),
             "--run-name", name, *TINY], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    errors: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        engine = None
        while not stop.is_set():
            try:
                engine = engine or store.make_engine(url, create=False)
                with store.make_sessionmaker(engine)() as s:
                    queries.run_summaries(s)
                reads += 1
            except store.StoreError:
                pass  # the schema is not there yet
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return
            time.sleep(0.2)

    t = threading.Thread(target=reader)
    t.start()
    try:
        stderr = {name: p.communicate(timeout=240)[1] for name, p in procs.items()}
    finally:
        stop.set()
        t.join()
        for p in procs.values():
            p.kill()
    for name, p in procs.items():
        assert p.returncode == 0, f"run {name} failed:\n{stderr[name][-3000:]}"
    assert not errors, f"the reader failed: {errors[0]!r}"
    assert reads > 0
    S = store.make_sessionmaker(store.make_engine(url, create=False))
    with S() as s:
        runs = {r.name: r for r in s.scalars(select(Run).where(Run.stage.is_(None)))}
        assert runs.keys() == {"a", "b"} and all(r.status == "complete" for r in runs.values())
        for name, per_split in sizes.items():
            run = runs[name]
            n_classes = 3 if name == "a" else 2
            assert len(queries.class_names(s, run.id)) == n_classes
            images = s.scalars(select(ImageRow).where(ImageRow.run_id == run.id)).all()
            assert len(images) == sum(per_split.values()) * n_classes
            assert Path(run.data_root).name == name
            assert {i.relpath.split("/")[1] for i in images} == set(queries.class_names(s, run.id))
            evaluated = [i.id for i in images if i.split != "train"]
            pred_rows = s.execute(select(Prediction.image_id, Prediction.run_id).join(ImageRow)
                                  .where(ImageRow.run_id == run.id)).all()
            assert sorted(i for i, _ in pred_rows) == sorted(evaluated)
            assert {r for _, r in pred_rows} == {run.id}
            assert s.scalar(select(func.count()).select_from(Prediction).where(Prediction.run_id == run.id)) \
                == len(evaluated)
            assert s.scalar(select(func.count(func.distinct(CamMap.image_id))).where(CamMap.run_id == run.id)) \
                == len(evaluated)
            assert [e.global_epoch for e in s.scalars(select(EpochRow).where(EpochRow.run_id == run.id))] == [1, 2]


def test_the_store_imports_neither_torch_nor_scikit_learn():
    """The dashboard and the export read the store without the model's framework."""
    code = ("import sys, db.builder, db.models, db.queries, db.store, db.upgrade; "
            "print(sorted(m for m in ('torch', 'sklearn', 'cleanlab') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env())
    assert out.stdout.strip() == "[]"
