"""Time of comparing two runs in ``core.compare``, on generated runs the size of the real test set times 29.

    python -m bench.compare [--images 14500] [--classes 100] [--grid 14] [--resamples 2000] [--repeat 3]

Two runs of the same images (hashes shared, B's paths moved so matching must use the hashes), A right on
about 80 % and B on about 84 %, with 14x14 maps per image as the store keeps them (a right image its
"pred" map, a wrong one "pred" and "true"); B's maps are A's, moved for a tenth of the images. Printed:
the time of ``compare_runs`` with the bootstrap and the drift, its parts, and the load of the machine.
The goal it serves: ``jobs.compare`` within 10 s on two cores, so the core should take a fraction of it.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from core.cammaps import StoredMaps, encode_maps
from core.compare import RunInput, compare_runs
from core.pairstats import paired_bootstrap


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=14500, help="matched test images (default: 14500)")
    p.add_argument("--classes", type=int, default=100, help="classes (default: 100)")
    p.add_argument("--grid", type=int, default=14, help="side of the maps in cells (default: 14)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is printed (default: 3)")
    return p


def blobs(rng: np.random.Generator, n: int, grid: int) -> np.ndarray:
    yy, xx = np.mgrid[0:grid, 0:grid]
    cy, cx = rng.uniform(0, grid, (2, n, 1, 1))
    cams = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (grid / 7) ** 2))
    return (cams + 0.1 * rng.random((n, grid, grid))).astype(np.float32)


def stored_maps(ids: np.ndarray, labels: np.ndarray, preds: np.ndarray, cams: np.ndarray) -> dict[int, StoredMaps]:
    out = {}
    grid = cams.shape[1]
    for i, label, pred, cam in zip(ids.tolist(), labels.tolist(), preds.tolist(), cams):
        data = encode_maps(cam[None])
        if label == pred:
            out[i] = StoredMaps(i, "gradcam", ("pred",), (pred,), grid, grid, (data,))
        else:
            out[i] = StoredMaps(i, "gradcam", ("pred", "true"), (pred, label), grid, grid, (data, data))
    return out


def make_runs(n: int, k: int, grid: int, seed: int = 0) -> tuple[RunInput, RunInput]:
    rng = np.random.default_rng(seed)
    classes = [f"sport {c:03d}" for c in range(k)]
    labels = np.arange(n) % k
    skill = rng.random(n)
    right_a, right_b = skill < 0.80, skill + 0.08 * rng.standard_normal(n) < 0.84
    wrong = (labels + rng.integers(1, k, n)) % k
    preds_a = np.where(right_a, labels, wrong)
    preds_b = np.where(right_b, labels, np.where(rng.random(n) < 0.5, wrong, (labels + 1) % k))
    sha = [f"{h:064x}" for h in rng.integers(0, 2**62, n)]
    relpaths = [f"test/{classes[c]}/{i:05d}.jpg" for i, c in enumerate(labels)]
    cams_a = blobs(rng, n, grid)
    cams_b = cams_a.copy()
    moved = rng.random(n) < 0.1
    cams_b[moved] = blobs(rng, int(moved.sum()), grid)
    runs = []
    for name, first, preds, cams, paths in (("A", 1, preds_a, cams_a, relpaths),
                                             ("B", n + 1, preds_b, cams_b, ["moved/" + p for p in relpaths])):
        ids = np.arange(first, first + n)
        df = pd.DataFrame({"image_id": ids, "split": "test", "relpath": paths, "sha256": sha, "label": labels,
                           "pred": preds, "confidence": rng.random(n)})
        maps = stored_maps(ids, labels, preds, cams)
        runs.append(RunInput(name, df, classes, lambda wanted, maps=maps: {i: maps[i] for i in wanted if i in maps}))
    return runs[0], runs[1]


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(args: argparse.Namespace) -> dict[str, float]:
    if args.images < args.classes or args.classes < 2 or args.grid < 2 or args.resamples < 1 or args.repeat < 1:
        raise ValueError(f"need --images >= --classes >= 2, --grid >= 2, --resamples >= 1, --repeat >= 1; got "
                         f"{args.images}, {args.classes}, {args.grid}, {args.resamples}, {args.repeat}")
    t0 = time.perf_counter()
    a, b = make_runs(args.images, args.classes, args.grid)
    made = time.perf_counter() - t0
    bare_a, bare_b = RunInput(a.name, a.predictions, a.classes), RunInput(b.name, b.predictions, b.classes)
    full, result = best_of(args.repeat, lambda: compare_runs(a, b, resamples=args.resamples))
    no_maps, _ = best_of(args.repeat, lambda: compare_runs(bare_a, bare_b, resamples=args.resamples))
    pairs = result.pairs
    cls = pairs["label_index_a"].to_numpy()
    boot, _ = best_of(args.repeat, lambda: paired_bootstrap(cls, pairs["right_a"].to_numpy(), pairs["right_b"].to_numpy(),
                                                            resamples=args.resamples))
    to_json, _ = best_of(args.repeat, lambda: result.to_json(details=True))
    load = os.getloadavg()
    figures = {"compare_runs": full, "without maps": no_maps, "drift (difference)": full - no_maps,
               "bootstrap alone": boot, "to_json(details=True)": to_json}
    print(f"{args.images} matched images, {args.classes} classes, {args.grid}x{args.grid} maps, "
          f"{args.resamples} resamples; best of {args.repeat} (generating the runs took {made:.1f} s)")
    for name, secs in figures.items():
        print(f"  {name:<24} {secs:6.2f} s")
    j = result.to_json()
    print(f"  result: {j['matched']} matched, {j['right_to_wrong']} right->wrong, {j['wrong_to_right']} "
          f"wrong->right, p = {j['mcnemar_p']:.2g}, median drift (true) Spearman "
          f"{j['drift']['true']['spearman']:.2f}, IoU {j['drift']['true']['iou']:.2f}, "
          f"{len(result.looking_elsewhere)} looking elsewhere")
    print(f"  machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          f"(1 / 5 / 15 min){' - busy, times are upper bounds' if load[0] > 1 else ''}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    return figures


if __name__ == "__main__":
    main(get_args_parser().parse_args())
