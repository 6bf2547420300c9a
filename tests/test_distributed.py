"""Two gloo processes under torchrun: one complete run, every image evaluated exactly once, the same predictions
as a single process computes from the same checkpoint."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.cammaps import DEFAULT_METHOD
from db import store
from db.models import CamMap, EpochRow, EvalRow, ImageRow, Prediction, Run
from tests.conftest import make_dataset

TINY = ["--image-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "2",
        "--workers", "0", "--weights", "none", "--device", "cpu", "--seed", "3"]
# Odd split sizes, so that two ranks get shards of different lengths: 3 classes x 3 images, plus one
# unreadable file in valid. In train, unreadable files (caught when the run starts) and truncated ones (whose
# header reads, caught only by the rank that decodes them). With seed 3 and 2 images a batch, one of rank 1's
# batches holds nothing but bad files.
PER_SPLIT = {"train": 4, "valid": 3, "test": 3}
UNREADABLE = ["train/alpha/zz-broken.jpg", "train/beta/zz-broken.jpg", "valid/beta/zz-broken.jpg"]
TRUNCATED = ["train/alpha/000.jpg", "train/beta/001.jpg", "train/gamma/002.jpg", "train/gamma/003.jpg"]


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("SPORTS_DB", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    e["OMP_NUM_THREADS"] = "1"
    return e


def torchrun(module: str, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", module, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}"


def single(module: str, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


def predictions(db: str, run_id: int) -> dict[str, tuple[int, float]]:
    """relpath -> (pred, confidence); fails if an image has more than one prediction."""
    S = store.make_sessionmaker(store.make_engine(db, create=False))
    with S() as s:
        rows = s.execute(select(ImageRow.relpath, Prediction.pred, Prediction.confidence)
                         .join(Prediction, Prediction.image_id == ImageRow.id)
                         .where(ImageRow.run_id == run_id)).all()
    out = {rel: (pred, conf) for rel, pred, conf in rows}
    assert len(out) == len(rows), "an image was predicted more than once"
    return out


def assert_same_predictions(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for rel in a:
        assert a[rel][0] == b[rel][0], f"{rel}: class {a[rel][0]} vs {b[rel][0]}"
        assert a[rel][1] == pytest.approx(b[rel][1], abs=1e-5), rel


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_dataset(tmp / "data", per_split=PER_SPLIT)
    for rel in UNREADABLE:
        (data / rel).write_bytes(b"not a jpeg")
    for rel in TRUNCATED:
        (data / rel).write_bytes((data / rel).read_bytes()[:800])
    db = f"sqlite:///{tmp / 'store.db'}"
    torchrun("jobs.train", "--data", str(data), "--db", db, "--out", str(tmp / "ck"), "--run-name", "ddp", *TINY)
    return tmp, db


def test_one_complete_run_with_each_image_once(ddp_run):
    tmp, db = ddp_run
    S = store.make_sessionmaker(store.make_engine(db, create=False))
    with S() as s:
        (run,) = s.scalars(select(Run).where(Run.stage.is_(None))).all()
        assert run.status == "complete" and run.config["world_size"] == 2 and run.device.endswith("x2")
        epochs = s.scalars(select(EpochRow).where(EpochRow.run_id == run.id).order_by(EpochRow.global_epoch)).all()
        assert [(e.phase, e.epoch, e.global_epoch) for e in epochs] == [(1, 1, 1), (2, 1, 2)]
        # the phase-1 snapshot is evaluated over both ranks too, each image once
        (snap,) = s.scalars(select(Run).where(Run.parent_id == run.id)).all()
        assert snap.stage == "phase1" and snap.status == "complete"
        for rid in (run.id, snap.id):
            for split, n in (("valid", 9), ("test", 9)):
                ids = s.scalars(select(ImageRow.id).where(ImageRow.split == split, ImageRow.skipped.is_(False),
                                                          ImageRow.run_id == rid)).all()
                assert len(ids) == n
                preds = s.scalars(select(Prediction.image_id).join(ImageRow).where(ImageRow.split == split,
                                                                                   ImageRow.run_id == rid)).all()
                assert sorted(preds) == sorted(ids), f"{split}: not every image predicted exactly once"
                cams = s.scalars(select(CamMap.image_id).join(ImageRow).where(ImageRow.split == split,
                                                                              ImageRow.run_id == rid,
                                                                              CamMap.target == "pred",
                                                                              CamMap.method == DEFAULT_METHOD)).all()
                assert sorted(cams) == sorted(ids)
                ev = s.get(EvalRow, (rid, split))
                assert ev.status == "complete" and ev.n_images == n
        skipped = set(s.scalars(select(ImageRow.relpath).where(ImageRow.skipped.is_(True), ImageRow.run_id == run.id)))
        assert skipped == set(UNREADABLE + TRUNCATED), "files skipped on rank 1 must reach the store too"


def test_predictions_match_a_single_process(ddp_run):
    tmp, db = ddp_run
    run_id = 1
    ddp = predictions(db, run_id)
    assert len(ddp) == 18
    second = tmp / "single.db"
    shutil.copy(tmp / "store.db", second)
    single("jobs.cams", "--db", str(second), "--run", str(run_id), "--checkpoint", str(tmp / "ck" / "ddp" / "best.pt"),
           "--workers", "0", "--device", "cpu")
    assert_same_predictions(ddp, predictions(f"sqlite:///{second}", run_id))


def test_cams_under_torchrun_predicts_each_image_once(ddp_run):
    tmp, db = ddp_run
    before = predictions(db, 1)
    torchrun("jobs.cams", "--db", db, "--run-id", "ddp", "--workers", "0", "--device", "cpu", "--batch-size", "4")
    after = predictions(db, 1)
    assert_same_predictions(before, after)
    S = store.make_sessionmaker(store.make_engine(db, create=False))
    with S() as s:
        assert s.scalar(select(func.count()).select_from(CamMap).where(CamMap.target == "pred",
                                                                       CamMap.run_id == 1,
                                                                       CamMap.method == DEFAULT_METHOD)) == 18
        assert {e.status for e in s.scalars(select(EvalRow))} == {"complete"}


def test_resume_under_torchrun(ddp_run):
    """Rank 0 reads the checkpoint and hands it to rank 1; resuming a finished run evaluates it again."""
    tmp, db = ddp_run
    before = predictions(db, 1)
    torchrun("jobs.train", "--db", db, "--out", str(tmp / "ck"), "--resume", str(tmp / "ck" / "ddp" / "last.pt"),
             "--workers", "0", "--device", "cpu")
    assert_same_predictions(before, predictions(db, 1))
    S = store.make_sessionmaker(store.make_engine(db, create=False))
    with S() as s:
        (run,) = s.scalars(select(Run).where(Run.stage.is_(None))).all()
        assert run.status == "complete"
        assert s.scalar(select(func.count()).select_from(EpochRow).where(EpochRow.run_id == run.id)) == 2
        assert s.scalar(select(func.count()).select_from(Run).where(Run.parent_id == run.id)) == 1
