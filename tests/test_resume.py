"""kill -9 during training, then --resume: the same run ends with the same weights as an uninterrupted one."""
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
from db.models import EpochRow, Prediction, Run
from tests.conftest import make_dataset

BASE = ["--image-size", "32", "--batch-size", "4", "--workers", "0", "--weights", "none", "--device", "cpu",
        "--seed", "7", "--run-name", "faulty"]


def train_cmd(data: Path, tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.train", "--data", str(data), "--db", str(tmp / "s.db"),
            "--out", str(tmp / "ck"), *BASE, *extra]


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

    work = tmp_path / "work"
    cmd = train_cmd(data, work, *epochs)
    kill_after_epoch(cmd, work / "ck" / "faulty" / "last.pt", kill_at)
    killed = torch.load(work / "ck" / "faulty" / "last.pt", weights_only=True)
    assert kill_at <= killed["epochs_done"] < e1 + e2, "the kill must land before the last epoch"
    S = store.make_sessionmaker(store.make_engine(str(work / "s.db")))
    with S() as s:
        assert s.scalars(select(Run)).one().status == "running"
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
        (run,) = s.scalars(select(Run)).all()
        assert run.status == "complete"
        got = [e.global_epoch for e in s.scalars(select(EpochRow).order_by(EpochRow.global_epoch))]
        assert got == list(range(1, e1 + e2 + 1))
        assert s.scalar(select(func.count()).select_from(Prediction)) == 6


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, data):
    r = subprocess.run(train_cmd(data, tmp_path, "--resume"), capture_output=True, text=True)
    assert r.returncode == 2 and "error: --resume: no checkpoint" in r.stderr
