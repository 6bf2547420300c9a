"""Fault scenarios on a small demo-like set: what each tried, and what survived.

``python -m bench.faults [--workdir DIR] [--keep]`` writes a small demo-like data set (coloured squares in
the Kaggle layout) and runs ``jobs.train`` on it in subprocesses:

- an uninterrupted reference run, with a dashboard-style reader polling the store while it writes;
- kill -9 after an epoch of phase 1, then ``--resume``;
- kill -9 after an epoch of phase 2, then ``--resume``;
- kill -9 while the test split's predictions are being written, then ``--resume``, and again with
  ``jobs.cams --run ID`` as the second attempt.

Per scenario it prints the run status, the epoch rows, predictions and maps against usable images,
duplicate rows, whether the final weights equal the reference run's, and the reader's errors.
About 3-5 minutes on two busy CPU cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from sqlalchemy import func, select

from core.splits import EVAL_SPLITS, TEST, TRAIN, VALID
from db import queries, store
from db.models import CamMap, EpochRow, EvalRow, ImageRow, Prediction, Run

EPOCHS = (2, 2)  # frozen, fine-tune
FLAGS = ["--image-size", "32", "--batch-size", "4", "--workers", "0", "--weights", "none", "--device", "cpu",
         "--seed", "5", "--run-name", "bench", "--epochs-frozen", str(EPOCHS[0]),
         "--epochs-finetune", str(EPOCHS[1])]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None, help="folder for data, stores and checkpoints (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    return p


# --------------------------------------------------------------------------- data

def make_data(root: Path) -> Path:
    """3 classes of coloured 32 px squares in the Kaggle layout: 12 train, 6 valid, 48 test images.

    Smaller than the synthetic demo set on purpose: ten runs of it must fit in a few minutes, and the
    test split must be long enough for a kill to land between two written chunks.
    """
    rng = np.random.default_rng(0)
    for ci, cls in enumerate(("archery", "bobsled", "curling")):
        for split, n in ((TRAIN, 4), (VALID, 2), (TEST, 16)):
            for k in range(n):
                arr = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
                arr[..., ci] += 150
                path = root / split / cls / f"{k:03d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path, quality=90)
    return root


# --------------------------------------------------------------------------- running and killing

def train_cmd(data: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.train", "--data", str(data), "--db", str(work / "s.db"),
            "--out", str(work / "ck"), *FLAGS, *extra]


def last_epochs(work: Path) -> int:
    path = work / "ck" / "bench" / "last.pt"
    try:
        return int(torch.load(path, weights_only=True)["epochs_done"]) if path.exists() else -1
    except Exception:  # mid-rename on another platform, say
        return -1


def open_store(db: Path):
    try:
        return store.make_sessionmaker(store.make_engine(str(db), create=False))
    except store.StoreError:
        return None


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 300) -> str:
    """Run ``cmd``, SIGKILL it once ``ready()``; return what happened."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return "killed"
            if proc.poll() is not None:
                return f"ended by itself (rc {proc.returncode}) before the kill"
            time.sleep(0.05)
        return "timed out"
    finally:
        proc.kill()
        proc.wait()


def mid_test_evaluation(db: Path) -> Callable[[], bool]:
    S = None

    def ready() -> bool:
        nonlocal S
        S = S or open_store(db)
        if S is None:
            return False
        with S() as s:
            ev = s.get(EvalRow, (1, TEST))
            return ev is not None and ev.status == "running" and test_predictions(s) > 0
    return ready


def test_predictions(s) -> int:
    on_test = select(ImageRow.id).where(ImageRow.split == TEST)
    return s.scalar(select(func.count()).select_from(Prediction).where(Prediction.image_id.in_(on_test)))


@dataclass
class Reader:
    """A dashboard-style reader: summaries and plain selects through a read-only engine, in a loop."""

    db: Path
    reads: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def loop(self) -> None:
        S = None
        while not self._stop.is_set():
            try:
                S = S or open_store(self.db)
                if S is not None:
                    with S() as s:
                        queries.run_summaries(s)
                        s.execute(select(EpochRow)).all()
                        s.execute(select(Prediction.pred, ImageRow.label).join(ImageRow)).all()
                        s.execute(select(CamMap.data).limit(5)).all()
                    self.reads += 1
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)  # a page refreshes far less often; this only keeps the writer its CPU

    def __enter__(self) -> "Reader":
        self._thread = threading.Thread(target=self.loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- what survived

def survey(work: Path, reference: Optional[dict] = None) -> dict:
    S = store.make_sessionmaker(store.make_engine(str(work / "s.db"), create=False))
    with S() as s:
        runs = s.scalars(select(Run)).all()
        usable = s.scalar(select(func.count()).select_from(ImageRow).where(
            ImageRow.split.in_(EVAL_SPLITS), ImageRow.skipped.is_(False)))
        n_pred = s.scalar(select(func.count()).select_from(Prediction))
        # images with maps (the key of cam_maps, image + method + target, rules out duplicate maps)
        n_cams = s.scalar(select(func.count(func.distinct(CamMap.image_id))))
        dup = (n_pred - s.scalar(select(func.count(func.distinct(Prediction.image_id))))
               + s.scalar(select(func.count()).select_from(EpochRow))
               - s.scalar(select(func.count(func.distinct(EpochRow.global_epoch)))))
        epochs = [e.global_epoch for e in s.scalars(select(EpochRow).order_by(EpochRow.global_epoch))]
        evals = {e.split: e.status for e in s.scalars(select(EvalRow))}
        preds = dict(s.execute(select(ImageRow.relpath, Prediction.pred).join(Prediction)).all())
    out = {"runs": len(runs), "status": runs[0].status if runs else None, "epochs": epochs, "evals": evals,
           "predictions": n_pred, "maps": n_cams, "usable": usable, "duplicates": dup, "preds": preds}
    last = work / "ck" / "bench" / "last.pt"
    out["model"] = torch.load(last, weights_only=True)["model"] if last.exists() else None
    if reference is not None:
        out["weights_equal"] = out["model"] is not None and all(
            torch.equal(v, out["model"][k]) for k, v in reference["model"].items())
        out["same_predictions"] = out["preds"] == reference["preds"]
    return out


def report(name: str, tried: str, outcome: str, seconds: float, r: dict, reader: Optional[Reader] = None) -> bool:
    total = sum(EPOCHS)
    ok = (r["runs"] == 1 and r["status"] == "complete" and r["epochs"] == list(range(1, total + 1))
          and r["predictions"] == r["maps"] == r["usable"] and r["duplicates"] == 0
          and set(r["evals"].values()) == {"complete"} and r.get("weights_equal", True)
          and r.get("same_predictions", True) and (reader is None or not reader.errors))
    print(f"\n== {name}: {'OK' if ok else 'FAILED'} ({seconds:.0f} s)")
    print(f"   tried:       {tried}")
    print(f"   interrupted: {outcome}")
    print(f"   run status:  {r['status']} (runs in store: {r['runs']}); evaluations: {r['evals']}")
    print(f"   epoch rows:  {r['epochs']} (expected 1..{total})")
    print(f"   predictions: {r['predictions']} / {r['usable']} usable valid+test images; maps {r['maps']}; "
          f"duplicate rows {r['duplicates']}")
    if "weights_equal" in r:
        print(f"   vs uninterrupted run: weights equal {r['weights_equal']}, "
              f"predictions equal {r['same_predictions']}")
    if reader is not None:
        print(f"   reader:      {reader.reads} reads, {len(reader.errors)} errors"
              + (f" (first: {reader.errors[0]})" if reader.errors else ""))
    return ok


# --------------------------------------------------------------------------- scenarios

def main(args: argparse.Namespace) -> int:
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    data = make_data(root / "data")
    print(f"work folder {root}; {sum(1 for _ in data.rglob('*.jpg'))} images; epochs {EPOCHS[0]}+{EPOCHS[1]}")
    results = []
    try:
        t0 = time.perf_counter()
        ref_dir = root / "reference"
        with Reader(ref_dir / "s.db") as reader:
            r = subprocess.run(train_cmd(data, ref_dir), capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:])
            return 1
        reference = survey(ref_dir)
        results.append(report("uninterrupted run + dashboard-style reader", "train while a reader loops over "
                              "run_summaries and selects on a read-only engine", "no",
                              time.perf_counter() - t0, reference, reader))

        for name, done in (("kill -9 in phase 1", 1), ("kill -9 in phase 2", EPOCHS[0] + 1)):
            t0 = time.perf_counter()
            work = root / name.replace(" ", "-")
            cmd = train_cmd(data, work)
            outcome = kill_when(cmd, lambda: last_epochs(work) >= done)
            outcome += f" with {last_epochs(work)} epochs checkpointed"
            rc = subprocess.run(cmd + ["--resume"], capture_output=True).returncode
            results.append(report(name, f"SIGKILL once last.pt holds {done} epoch(s), then jobs.train --resume "
                                  f"(rc {rc})", outcome, time.perf_counter() - t0, survey(work, reference)))

        # One kill during evaluation; each way of finishing it works on its own copy of the store and
        # checkpoint folder (the checkpoints name the first folder, which neither rerun writes to).
        t0 = time.perf_counter()
        killed = root / "kill-eval"
        cmd = train_cmd(data, killed)
        outcome = kill_when(cmd, mid_test_evaluation(killed / "s.db"))
        with store.make_sessionmaker(store.make_engine(str(killed / "s.db"), create=False))() as s:
            outcome += (f"; then: run {s.get(Run, 1).status}, test evaluation "
                        f"{s.get(EvalRow, (1, 'test')).status}, {test_predictions(s)} test predictions")
        kill_seconds = time.perf_counter() - t0
        for how in ("jobs.train --resume", "jobs.cams --run 1"):
            t0 = time.perf_counter()
            work = root / f"kill-eval-{how.split()[0]}"
            shutil.copytree(killed, work)
            cmd = train_cmd(data, work)
            again = cmd + ["--resume"] if how.startswith("jobs.train") else [
                sys.executable, "-m", "jobs.cams", "--run", "1", "--db", str(work / "s.db"), "--batch-size", "4",
                "--workers", "0", "--device", "cpu"]
            rc = subprocess.run(again, capture_output=True).returncode
            results.append(report(f"kill -9 during evaluation, rerun with {how}",
                                  f"SIGKILL while test predictions are written, then {how} (rc {rc})", outcome,
                                  kill_seconds + time.perf_counter() - t0, survey(work, reference)))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{sum(results)}/{len(results)} scenarios survived")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
