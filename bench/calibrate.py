"""Time of a run's calibration report, of the intervals on its per-class table, and of ``jobs.calibrate``.

    python -m bench.calibrate [--images 14500] [--classes 100] [--bins 15] [--resamples 2000] [--repeat 3] [--no-job]

Generated float16 logits (as the store keeps them) with a too-sharp softmax, split in half into valid and
test. Times: ``core.calibration.calibration_report`` (temperature fitted on valid, every score on both
splits), ``per_class_ece`` on test, and ``core.intervals.per_class_table`` (Wilson intervals and a
2,000-resample bootstrap of F1 over all images) plus the accuracy and top-5 rates. Then the same logits go
into a SQLite store (one run, valid and test predictions, no files) and ``jobs.calibrate`` runs on it: in
this process (its work: read and decode the logits, fit, score, store), and once as
``python -m jobs.calibrate`` (with the interpreter's start and its imports, torch among them). The best of
``--repeat`` runs is printed with the load average, since other work on the machine slows every figure.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from core import calibration as cal
from core import intervals as iv


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=14500, help="images, split in half valid/test (default: 14500)")
    p.add_argument("--classes", type=int, default=100, help="classes (default: 100)")
    p.add_argument("--bins", type=int, default=cal.DEFAULT_BINS, help=f"confidence bins (default: {cal.DEFAULT_BINS})")
    p.add_argument("--resamples", type=int, default=iv.RESAMPLES, help=f"bootstrap resamples (default: {iv.RESAMPLES})")
    p.add_argument("--repeat", type=int, default=3, help="runs per timing, the best is printed (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated logits (default: 0)")
    p.add_argument("--no-job", action="store_true", help="skip the timing of jobs.calibrate on a store")
    return p


def write_store(folder: Path, z: np.ndarray, y: np.ndarray) -> str:
    """A SQLite store with one complete run whose first half of the images is valid, the rest test, each with
    its prediction and float16 logits (no image files: calibration reads none). Returns its URL."""
    from core.metrics import encode_logits
    from db import store

    url = f"sqlite:///{folder / 'bench.db'}"
    engine = store.make_engine(url, create=True)
    Session = store.make_sessionmaker(engine)
    half, k = len(z) // 2, z.shape[1]
    split = np.where(np.arange(len(z)) < half, "valid", "test")
    z32 = np.asarray(z, dtype=np.float32)
    pred = z32.argmax(axis=1)
    conf, top_idx, top_prob = cal.calibrated_top(z32, pred=pred)
    with Session.begin() as s:
        run = store.create_run(s, name="bench-calibrate", config={}, data_root=str(folder), device="cpu",
                               weights="none", image_size=224, cam_layer=None,
                               class_names=[f"class {i:03d}" for i in range(k)], absent_splits={})
        ids = store.upsert_images(s, run.id, [store.ImageRecord(str(split[i]), f"{split[i]}/{i:06d}.jpg", int(y[i]))
                                              for i in range(len(z))])
        rows = [dict(image_id=ids[(str(split[i]), f"{split[i]}/{i:06d}.jpg")], run_id=run.id, pred=int(pred[i]),
                     confidence=float(conf[i]), top5_idx=top_idx[i].tolist(), top5_prob=top_prob[i].tolist(),
                     loss=None, logits=encode_logits(z32[i])) for i in range(len(z))]
        store.add_predictions(s, rows)
        store.finish_run(s, run.id, "complete")
    engine.dispose()
    return url


def time_job(args: argparse.Namespace, z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from jobs import calibrate as job

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        url = write_store(Path(tmp), z, y)
        print(f"store of {len(z):,} predictions with logits written in {time.perf_counter() - t0:.1f} s")
        argv = ["--db", url, "--run", "latest", "--bins", str(args.bins)]
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            wall, cpu, _ = best_of(args.repeat, lambda: job.main(job.get_args_parser().parse_args(argv)))
        print(f"jobs.calibrate in this process (read, decode, fit, score, store): {wall:.3f} s wall, {cpu:.3f} s CPU "
              f"(goal: <= 5 s)")
        figures["job"] = wall
        t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, "-m", "jobs.calibrate", *argv], capture_output=True, text=True)
        wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"python -m jobs.calibrate failed: {done.stderr.strip()[-500:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(f"python -m jobs.calibrate as a new process (with its imports): {wall:.3f} s wall, {cpu:.3f} s CPU")
        figures["job_process"] = wall
    return figures


def generated(images: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 logits and labels drawn from softmax(logits / 2): the raw confidences are too high."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=4.0, size=(images, classes))
    p = cal.softmax(z, 2.0)
    y = (p.cumsum(axis=1) > rng.random(images)[:, None]).argmax(axis=1)
    return z.astype(np.float16), y


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, float, object]:
    """(best wall seconds, CPU seconds of that run, result)."""
    best = (float("inf"), 0.0, None)
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        if wall < best[0]:
            best = (wall, cpu, out)
    return best


def main(args: argparse.Namespace) -> dict[str, float]:
    if args.images < 4 or args.classes < 2 or args.repeat < 1 or args.resamples < 1:
        raise ValueError(f"need --images >= 4, --classes >= 2, --repeat >= 1, --resamples >= 1; got {args.images}, "
                         f"{args.classes}, {args.repeat}, {args.resamples}")
    z, y = generated(args.images, args.classes, args.seed)
    half = args.images // 2
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.images} images x {args.classes} classes (float16 logits), {args.bins} bins, "
          f"{args.resamples} resamples; {os.cpu_count()} CPUs, load average {load:.1f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
          + (" (the machine is busy: figures are upper bounds)" if load >= 1.0 else ""))
    wall, cpu, report = best_of(args.repeat, lambda: cal.calibration_report(z[:half], y[:half], z[half:], y[half:],
                                                                             bins=args.bins))
    test = report["test"]
    print(f"calibration_report: {wall:.3f} s wall, {cpu:.3f} s CPU; T = {report['temperature']:.3f} (2.0 generated), "
          f"test ECE {test['ece']:.4f} -> {test['ece_calibrated']:.4f}, NLL {test['nll']:.4f} -> "
          f"{test['nll_calibrated']:.4f}")
    figures = {"report": wall}
    wall, cpu, _ = best_of(args.repeat, lambda: cal.per_class_ece(z[half:], y[half:], bins=args.bins,
                                                                  temperature=report["temperature"]))
    print(f"per_class_ece (test): {wall:.3f} s wall, {cpu:.3f} s CPU")
    figures["per_class_ece"] = wall
    pred = np.asarray(z, dtype=np.float32).argmax(axis=1)
    top5 = np.argsort(-np.asarray(z, dtype=np.float32), axis=1)[:, :5]

    def intervals():
        table = iv.per_class_table(y, pred, args.classes, resamples=args.resamples)
        return table, iv.accuracy_rate(y, pred), iv.top_k_rate(y, top5)

    wall, cpu, (table, acc, top) = best_of(args.repeat, intervals)
    print(f"per_class_table + accuracy + top-5 ({args.resamples} resamples of {args.images} images): "
          f"{wall:.3f} s wall, {cpu:.3f} s CPU; accuracy {acc}; top-5 {top}; median F1 interval width "
          f"{float((table['f1_hi'] - table['f1_lo']).median()):.3f}")
    figures["intervals"] = wall
    if not args.no_job:
        figures.update(time_job(args, z, y))
    return figures


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as exc:
        sys.exit(f"error: {exc}")
