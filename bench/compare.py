"""Time of comparing two runs: ``core.compare`` alone, then ``jobs.compare`` and the Compare runs page on a store.

    python -m bench.compare [--images 14500] [--classes 100] [--grid 14] [--resamples 2000] [--repeat 3] [--no-store]

Core: two runs of the same images (hashes shared, B's paths moved so matching must use the hashes), A right
on about 80 % and B on about 84 %, with 14x14 maps per image as the store keeps them (a right image its
"pred" map, a wrong one "pred" and "true"); B's maps are A's, moved for a tenth of the images. Printed: the
time of ``compare_runs`` with the bootstrap and the drift, its parts, and the load of the machine.

Store: ``db.builder`` writes a store of two complete runs over the same ``--images`` test images of
``--classes`` classes (real 224 px JPEGs, ``--files`` of them, the rest hard-linked; file hashes recorded;
B's answers A's with some flipped, its maps A's with some moved). Timed: ``python -m jobs.compare`` end to
end as a subprocess (start-up, queries, bootstrap, printing; goal <= 10 s), and the page: the cached
comparison cold and warm, and the whole page under ``AppTest`` cold and warm (goal: warm <= 1 s).
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    p.add_argument("--store", action=argparse.BooleanOptionalAction, default=True,
                   help="also time jobs.compare and the page on a generated store (default: yes)")
    p.add_argument("--files", type=int, default=200, help="distinct JPEG files in the store (default: 200)")
    return p


CLI_GOAL_S = 10.0
PAGE_GOAL_S = 1.0


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min)"
            f"{' - busy, times are upper bounds' if one > 1 else ''}; "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def _cli(url: str, *argv: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of ``python -m jobs.compare`` and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "jobs.compare", "--db", url, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise RuntimeError(f"jobs.compare failed: {r.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), r.stdout


def store_bench(args: argparse.Namespace) -> dict[str, float]:
    """The CLI end to end and the page, on a generated store of two runs."""
    from streamlit.testing.v1 import AppTest

    from core.splits import TEST
    from db.builder import add_hashes, build_store
    from db.builder_pairs import add_compared_run

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    t = time.perf_counter()
    url, a_id, _ = build_store(tmp, n_classes=args.classes, n_per_class={TEST: args.images // args.classes},
                               splits=(TEST,), image_size=224, reuse_files=args.files, error_rate=0.2,
                               cam_size=args.grid, name="bench-a")
    add_hashes(url, a_id)
    b_id = add_compared_run(url, a_id, name="bench-b", lose=0.05, gain=0.3, moved=0.1)
    n = args.classes * (args.images // args.classes)
    print(f"\nstore: two runs of {n:,} test images, {args.classes} classes, built in {time.perf_counter() - t:.1f} s")

    figures: dict[str, float] = {}
    summary = ""
    for name, extra in (("jobs.compare (summary)", ()), ("jobs.compare --json", ("--json",))):
        wall, cpu, out = min((_cli(url, "--a", str(a_id), "--b", str(b_id), *extra) for _ in range(args.repeat)),
                             key=lambda x: x[0])
        summary = summary or out
        figures[name], figures[name + " CPU"] = wall, cpu
        print(f"  {name:<34} {wall:6.2f} s wall, {cpu:5.2f} s CPU   goal <= {CLI_GOAL_S:.0f} s: wall "
              f"{'yes' if wall <= CLI_GOAL_S else 'NO'}, CPU {'yes' if cpu <= CLI_GOAL_S else 'NO'}")
    print("  " + summary.splitlines()[6][:150])

    os.environ["SPORTS_DB"] = url
    from dashboard import compare_runs_ui as ui
    from dashboard import loaders

    runs = ui.ordered_runs(loaders.load_runs(url))
    rows = {int(r.id): r for r in runs.itertuples()}
    key = (url, a_id, b_id, TEST, ui.stamp(rows[a_id]), ui.stamp(rows[b_id]))
    cold, _ = best_of(1, lambda: ui.load_comparison(*key))
    warm, _ = best_of(args.repeat, lambda: ui.load_comparison(*key))
    ui.load_comparison.clear()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"), default_timeout=180)
    at.query_params.update({"a": str(a_id), "b": str(b_id)})
    at.run()
    page_cold, _ = best_of(1, lambda: at.switch_page("views/compare_runs.py").run())
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    page_warm, _ = best_of(args.repeat, at.run)
    figures.update({"page: comparison cold": cold, "page: comparison warm": warm, "page cold (AppTest)": page_cold,
                    "page warm (AppTest)": page_warm})
    for name in ("page: comparison cold", "page: comparison warm", "page cold (AppTest)", "page warm (AppTest)"):
        goal = f"   goal <= {PAGE_GOAL_S:.0f} s: {'yes' if figures[name] <= PAGE_GOAL_S else 'NO'}" \
            if "warm" in name else ""
        print(f"  {name:<34} {figures[name]:6.2f} s{goal}")
    print(f"  machine: {_load()}")
    return figures


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
    print(f"  machine: {_load()}")
    if args.store:
        figures.update(store_bench(args))
    return figures


if __name__ == "__main__":
    main(get_args_parser().parse_args())
