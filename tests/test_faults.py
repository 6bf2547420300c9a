"""Faults during a run: kill -9 while evaluating, readers while a job writes, and bad files in the data."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select, text

from db import queries, store
from db.models import CamMap, EpochRow, EvalRow, ImageRow, Prediction, Run
from jobs import train as train_job
from tests.conftest import make_dataset

TINY = ["--image-size", "32", "--workers", "0", "--weights", "none", "--device", "cpu", "--seed", "3"]


def train_cmd(data: Path, tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.train", "--data", str(data), "--db", str(tmp / "s.db"),
            "--out", str(tmp / "ck"), "--run-name", "faulty", *TINY, *extra]


def open_when_ready(db: Path):
    """A read-only sessionmaker once the store exists with its schema, else None."""
    try:
        return store.make_sessionmaker(store.make_engine(str(db), create=False))
    except store.StoreError:  # not there yet, or its schema is being created
        return None


def kill_when(cmd: list[str], db: Path, ready: Callable, timeout: float = 300) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``ready(session)`` holds for its store."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    S = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            S = S or open_when_ready(db)
            if S is not None:
                with S() as s:
                    if ready(s):
                        os.kill(proc.pid, signal.SIGKILL)
                        return
            if proc.poll() is not None:
                pytest.fail(f"the job ended (rc {proc.returncode}) before the moment to kill it: "
                            f"{proc.stderr.read()[-1500:]!r}")
            time.sleep(0.05)
        pytest.fail(f"the moment to kill did not come within {timeout} s")
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def split_counts(s, split: str) -> tuple[int, int, int]:
    """(predictions, distinct predicted images, images with maps) of one split."""
    on_split = select(ImageRow.id).where(ImageRow.split == split)
    n = s.scalar(select(func.count()).select_from(Prediction).where(Prediction.image_id.in_(on_split)))
    distinct = s.scalar(select(func.count(func.distinct(Prediction.image_id))).where(Prediction.image_id.in_(on_split)))
    maps = s.scalar(select(func.count(func.distinct(CamMap.image_id))).where(CamMap.image_id.in_(on_split)))
    return n, distinct, maps


def mid_test_evaluation(s) -> bool:
    ev = s.get(EvalRow, (1, "test"))
    return ev is not None and ev.status == "running" and split_counts(s, "test")[0] > 0


# --------------------------------------------------------------------------- kill -9 while evaluating

N_TEST = 60  # 20 per class, predicted one at a time: the kill lands between two written chunks


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("evalkill") / "data",
                        per_split={"train": 1, "valid": 1, "test": N_TEST // 3})


@pytest.mark.parametrize("rerun", ["train --resume", "cams"])
def test_kill_during_evaluation_then_rerun(tmp_path, eval_data, rerun):
    cmd = train_cmd(eval_data, tmp_path, "--epochs-frozen", "1", "--epochs-finetune", "0", "--batch-size", "1")
    db = tmp_path / "s.db"
    kill_when(cmd, db, mid_test_evaluation)
    S = store.make_sessionmaker(store.make_engine(str(db), create=False))
    with S() as s:
        run = s.get(Run, 1)
        assert run.status == "running" and run.checkpoint_path is None
        assert s.get(EvalRow, (1, "valid")).status == "complete"
        assert s.get(EvalRow, (1, "test")).status == "running"
        n, _, _ = split_counts(s, "test")
        assert 0 < n < N_TEST, "the kill must land mid-evaluation"
        (summary,) = queries.run_summaries(s)
        assert summary["status"] == "running" and summary["splits"]["test"]["evaluation"] == "running"

    if rerun == "cams":
        again = [sys.executable, "-m", "jobs.cams", "--run", "1", "--db", str(db), "--batch-size", "8",
                 "--workers", "0", "--device", "cpu"]
    else:
        again = cmd + ["--resume"]
    r = subprocess.run(again, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    with S() as s:
        run = s.get(Run, 1)
        assert run.status == "complete" and run.error is None
        assert Path(run.checkpoint_path).name == "best.pt" and Path(run.checkpoint_path).is_file()
        assert run.metrics["test"]["images"] == N_TEST and run.metrics["valid"]["images"] == 3
        assert run.metrics["best_val_acc"] is not None and run.best_epoch == 1
        assert [e.global_epoch for e in s.scalars(select(EpochRow))] == [1]
        for split, n_images in (("valid", 3), ("test", N_TEST)):
            ev = s.get(EvalRow, (1, split))
            assert ev.status == "complete" and ev.n_images == n_images
            assert split_counts(s, split) == (n_images, n_images, n_images)
        assert s.scalar(select(func.count()).select_from(ImageRow)) == 3 + 3 + N_TEST


# --------------------------------------------------------------------------- readers while a job writes

def test_dashboard_reads_while_a_job_writes(tmp_path):
    data = make_dataset(tmp_path / "data", per_split={"train": 2, "valid": 4})
    db = tmp_path / "s.db"
    cmd = train_cmd(data, tmp_path, "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors: list[str] = []
    seen: set[str] = set()
    reads = 0

    def read_loop() -> None:
        nonlocal reads
        S = None
        while proc.poll() is None:
            try:
                S = S or open_when_ready(db)
                if S is None:
                    continue
                with S() as s:  # what a dashboard page asks for
                    for r in queries.run_summaries(s):
                        seen.add(f"{r['status']}:{(r['splits'].get('valid') or {}).get('evaluation')}")
                    s.execute(select(EpochRow).order_by(EpochRow.global_epoch)).all()
                    s.execute(select(Prediction.pred, ImageRow.label).join(ImageRow)).all()
                    s.execute(select(CamMap.data).limit(5)).all()
                reads += 1
            except Exception as exc:  # any error a page would show
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    reader = threading.Thread(target=read_loop)
    reader.start()
    _, err = proc.communicate(timeout=300)
    reader.join()
    assert proc.returncode == 0, err[-2000:]
    assert "locked" not in err
    assert errors == []
    assert reads > 5 and any(k.startswith("running") for k in seen), (reads, seen)


def test_read_only_open_never_writes(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(store.StoreError, match="does not exist"):
        store.make_engine(str(missing), readonly=True)
    assert list(tmp_path.iterdir()) == []

    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(store.StoreError, match="is empty"):
        store.make_engine(str(empty), readonly=True).dispose()
    assert empty.stat().st_size == 0

    db = tmp_path / "s.db"
    engine = store.make_engine(str(db))
    with store.make_sessionmaker(engine).begin() as s:
        store.create_run(s, name="r", config={}, data_root="/d", device="cpu", weights="none", image_size=32,
                         cam_layer=None, class_names=["a", "b"], absent_splits={})
    engine.dispose()
    before = db.read_bytes()
    reader = store.make_engine(str(db), readonly=True)
    with store.make_sessionmaker(reader)() as s:
        assert [r["name"] for r in queries.run_summaries(s)] == ["r"]
        with pytest.raises(Exception, match="readonly|read-only|query_only|attempt to write"):
            s.execute(text("DELETE FROM runs"))
    reader.dispose()
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "s.db"]


# --------------------------------------------------------------------------- bad files in a run

ODD_CLASSES = ["tug of war", "o'neil \"quoted\"", "ski jümp"]


def write_bad_files(folder: Path) -> dict[str, str]:
    """The four unusable files, named awkwardly; returns name -> the reason expected in the store."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = folder / "tmp.jpg"
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(buf, quality=95)
    jpeg = buf.read_bytes()
    buf.unlink()
    (folder / "half 'cut'.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "zero \"bytes\".jpg").write_bytes(b"")
    (folder / "not an imäge.jpg").write_text("just text\n")
    Image.new("1", (20000, 20000)).save(folder / "huge ☃.png")  # 400 MP, a few kB on disk
    return {"half 'cut'.jpg": "cannot", "zero \"bytes\".jpg": "empty file", "not an imäge.jpg": "cannot",
            "huge ☃.png": "too large"}


def write_other_modes(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    rgb.convert("L").save(folder / "grey scale.png")
    rgb.convert("CMYK").save(folder / "cmyk “print”.jpg")  # PNG cannot hold CMYK
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "with alpha ñ.png")
    return ["grey scale.png", "cmyk “print”.jpg", "with alpha ñ.png"]


def test_run_over_bad_and_odd_files_completes(tmp_path):
    data = make_dataset(tmp_path / "da ta 'set'", classes=ODD_CLASSES, per_split={"train": 2, "valid": 1})
    bad = {}
    for split, cls in (("train", ODD_CLASSES[0]), ("valid", ODD_CLASSES[1])):
        bad.update({f"{split}/{cls}/{name}": why for name, why in write_bad_files(data / split / cls).items()})
    odd = [f"valid/{ODD_CLASSES[2]}/{name}" for name in write_other_modes(data / "valid" / ODD_CLASSES[2])]
    db = f"sqlite:///{tmp_path / 's.db'}"
    args = train_job.get_args_parser().parse_args(
        ["--data", str(data), "--db", db, "--out", str(tmp_path / "ck"), "--epochs-frozen", "1",
         "--epochs-finetune", "1", "--batch-size", "4", *TINY])
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert train_job.main(args) == 0
    # Decoding the 20000x20000 file as RGB would take 1.2 GB; refusing it from its header takes nothing.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 1_000_000  # kB

    S = store.make_sessionmaker(store.make_engine(db, create=False))
    with S() as s:
        run = s.scalars(select(Run).where(Run.stage.is_(None))).one()
        assert run.status == "complete"
        assert queries.class_names(s, run.id) == sorted(ODD_CLASSES)
        rows = {r.relpath: r for r in s.scalars(select(ImageRow).where(ImageRow.run_id == run.id))}
        predicted = set(s.scalars(select(ImageRow.relpath).join(Prediction, Prediction.image_id == ImageRow.id)
                                  .where(ImageRow.run_id == run.id)))
        for rel, why in bad.items():
            assert rows[rel].skipped and why in rows[rel].skip_reason, (rel, rows[rel].skip_reason)
            assert rel not in predicted
        for rel in odd:
            assert not rows[rel].skipped and rel in predicted
            assert (rows[rel].width, rows[rel].height) == (30, 40)
        assert s.get(EvalRow, (run.id, "valid")).n_images == 3 + len(odd)
