"""kill -9 during training, then --resume: the same run ends with the same weights as an uninterrupted one, and
with its phase-1 snapshot made once and complete, whenever the kill struck (before, during or after it)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from core.cache import default_cache_root, split_folder, split_key
from core.data import discover
from db import store
from db.models import EpochRow, EvalRow, ImageRow, Prediction, Run
from tests.conftest import make_dataset

BASE = ["--image-size", "32", "--batch-size", "4", "--workers", "0", "--weights", "none", "--device", "cpu",
        "--seed", "7", "--run-name", "faulty"]


def train_cmd(data: Path, tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.train", "--data", str(data), "--db", str(tmp / "s.db"),
            "--out", str(tmp / "ck"), *BASE, *extra]


def snapshot_predictions(S, parent_id: int = 1) -> tuple[list[Run], dict[str, tuple[int, float]]]:
    """The run's snapshots, and the predictions of its (only) snapshot by relpath; {} without one."""
    with S() as s:
        snaps = s.scalars(select(Run).where(Run.parent_id == parent_id)).all()
        if len(snaps) != 1:
            return snaps, {}
        rows = s.execute(select(ImageRow.relpath, Prediction.pred, Prediction.confidence)
                         .join(Prediction, Prediction.image_id == ImageRow.id)
                         .where(Prediction.run_id == snaps[0].id)).all()
        return snaps, {rel: (pred, round(conf, 5)) for rel, pred, conf in rows}


def kill_after_epoch(cmd: list[str], ckpt: Path, epochs_done: int) -> None:
    """Start training and SIGKILL it as soon as the checkpoint of ``epochs_done`` epochs is on disk."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            if ckpt.exists() and torch.load(ckpt, weights_only=True)["epochs_done"] >= epochs_done:
                os.kill(proc.pid, signal.SIGKILL)
                return
            if proc.poll() is not None:
                pytest.fail(f"training ended (rc {proc.returncode}) before epoch {epochs_done} was saved")
            if time.monotonic() > deadline:
                pytest.fail(f"epoch {epochs_done} not saved within 300 s")
            time.sleep(0.02)
    finally:
        proc.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("resume") / "data", per_split={"train": 6, "valid": 2})


# (epochs frozen, epochs fine-tune, epochs done when killed): killed in phase 1, and in phase 2 with the
# fine-tuning optimizer and scheduler state in the checkpoint.
PLANS = {"phase1": (3, 1, 1), "phase2": (1, 3, 2)}


@pytest.mark.parametrize("plan", PLANS)
def test_kill_then_resume_matches_uninterrupted(tmp_path, data, plan):
    e1, e2, kill_at = PLANS[plan]
    epochs = ["--epochs-frozen", str(e1), "--epochs-finetune", str(e2)]
    ref_dir = tmp_path / "ref"
    subprocess.run(train_cmd(data, ref_dir, *epochs), check=True, capture_output=True)
    reference = torch.load(ref_dir / "ck" / "faulty" / "last.pt", weights_only=True)
    _, ref_snapshot = snapshot_predictions(store.make_sessionmaker(store.make_engine(str(ref_dir / "s.db"))))
    assert len(ref_snapshot) == 6

    work = tmp_path / "work"
    cmd = train_cmd(data, work, *epochs)
    kill_after_epoch(cmd, work / "ck" / "faulty" / "last.pt", kill_at)
    killed = torch.load(work / "ck" / "faulty" / "last.pt", weights_only=True)
    assert kill_at <= killed["epochs_done"] < e1 + e2, "the kill must land before the last epoch"
    S = store.make_sessionmaker(store.make_engine(str(work / "s.db")))
    with S() as s:
        assert s.scalars(select(Run).where(Run.stage.is_(None))).one().status == "running"
    snaps, kept = snapshot_predictions(S)
    # killed in phase 1: no snapshot yet; killed in phase 2: the snapshot was taken, complete, before the kill
    assert [sn.status for sn in snaps] == ([] if kill_at < e1 else ["complete"])
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    final = torch.load(work / "ck" / "faulty" / "last.pt", weights_only=True)
    assert final["epochs_done"] == e1 + e2
    # Both runs read the decoded cache (the tests' own folder, see conftest.py), not the JPEG files.
    train = discover(data).splits["train"]
    folder = split_folder(default_cache_root(), data, "train", 32, split_key(data, train, "train", 32))
    assert (folder / "index.json").is_file(), "training did not go through the decoded cache"
    assert final["args"]["no_cache"] is False
    for k, v in reference["model"].items():
        assert torch.equal(v, final["model"][k]), f"{k} differs from the uninterrupted run"
    with S() as s:
        (run,) = s.scalars(select(Run).where(Run.stage.is_(None))).all()
        assert run.status == "complete"
        got = [e.global_epoch for e in s.scalars(select(EpochRow).where(EpochRow.run_id == run.id)
                                                 .order_by(EpochRow.global_epoch))]
        assert got == list(range(1, e1 + e2 + 1))
        assert s.scalar(select(func.count()).select_from(Prediction).where(Prediction.run_id == run.id)) == 6
    snaps, after = snapshot_predictions(S)
    assert [(sn.stage, sn.status) for sn in snaps] == [("phase1", "complete")]
    assert after == ref_snapshot, "the snapshot differs from the uninterrupted run's"
    if kept:
        assert after == kept, "a complete snapshot must be kept as it was"


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, data):
    r = subprocess.run(train_cmd(data, tmp_path, "--resume"), capture_output=True, text=True)
    assert r.returncode == 2 and "error: --resume: no checkpoint" in r.stderr


# Runs jobs.train with the snapshot's evaluation of each split followed by SIGKILL: the process dies inside the
# phase-1 snapshot, after its first split is written and before the second is begun.
DIE_IN_SNAPSHOT = """
import os, signal, sys
import jobs.snapshot as snapshot
real = snapshot.evaluate_split
def evaluate_then_die(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
snapshot.evaluate_split = evaluate_then_die
from jobs import train
from jobs.common import run_cli
sys.exit(run_cli(train.main, train.get_args_parser(), sys.argv[1:]))
"""


def test_killed_during_the_snapshot_is_completed_on_resume(tmp_path):
    data = make_dataset(tmp_path / "data", per_split={"train": 4, "valid": 2, "test": 2})
    cmd = train_cmd(data, tmp_path, "--epochs-frozen", "1", "--epochs-finetune", "1")
    killed = subprocess.run([sys.executable, "-c", DIE_IN_SNAPSHOT, *cmd[3:]], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    S = store.make_sessionmaker(store.make_engine(str(tmp_path / "s.db")))
    snaps, before = snapshot_predictions(S)
    with S() as s:
        (snap,) = snaps
        assert snap.status == "running" and s.get(EvalRow, (snap.id, "valid")).status == "complete"
        assert s.get(EvalRow, (snap.id, "test")) is None and len(before) == 6
        assert s.get(Run, 1).status == "running"
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    snaps, after = snapshot_predictions(S)
    with S() as s:
        (snap,) = snaps
        assert snap.status == "complete" and s.get(Run, 1).status == "complete"
        assert {e.split: e.status for e in s.scalars(select(EvalRow).where(EvalRow.run_id == snap.id))} == \
            {"valid": "complete", "test": "complete"}
        assert snap.metrics["test"]["images"] == 6 and snap.metrics["valid"]["images"] == 6
    assert len(after) == 12 and {k: v for k, v in after.items() if k.startswith("valid/")} == before
