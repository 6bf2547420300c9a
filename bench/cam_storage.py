"""What the maps of several CAM methods cost on disk, and what a page pays to read its share of them.

    python -m bench.cam_storage [--images 2000] [--error-rate 0.05] [--methods gradcam,...] [--target 14500]

Builds a SQLite store (``db.builder``) of one run whose maps are 14x14 (VGG-19's features.35 at 224 px),
stored per method as a training job stores them: one "pred" map for a right prediction, "pred", "true" and
"contrast" for a mistake (Eigen-CAM: "pred" only). It measures the bytes the ``cam_maps`` table and its
indexes take (the file after VACUUM, with and without the maps), divides by the rows, and scales to a run of
``--target`` evaluated images. Then it times ``db.queries.maps_for`` for one gallery page (25 images) per
method and prints the query plan SQLite uses for it.
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from core.cammaps import CLASS_FREE_METHODS, GRADIENT_METHODS, parse_methods
from db import queries
from db.builder import build_store
from db.store import make_engine, make_sessionmaker

PAGE = 25


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="evaluated images in the generated run (default: 2000)")
    p.add_argument("--error-rate", type=float, default=0.05, help="share of mistakes (default: 0.05)")
    p.add_argument("--methods", default=",".join(GRADIENT_METHODS), help="CAM methods stored (default: the "
                   "gradient methods, the training job's default)")
    p.add_argument("--target", type=int, default=14500, help="images of the run to extrapolate to (default: 14500)")
    p.add_argument("--cam-size", type=int, default=14, help="side of a stored map (default: 14, 224 px input)")
    return p


def vacuumed_size(path: Path) -> int:
    """The file's size once compacted: in WAL mode VACUUM writes to the log, so checkpoint after it."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("VACUUM")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path.stat().st_size


def main(args: argparse.Namespace) -> None:
    methods = parse_methods(args.methods)
    classes = 100
    per_class = max(1, args.images // classes)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        url, run_id, _ = build_store(Path(tmp), n_classes=classes, n_per_class={"valid": per_class}, splits=("valid",),
                                     error_rate=args.error_rate, cam_size=args.cam_size, methods=methods,
                                     reuse_files=20, file_size=32, image_size=224, seed=1)
        built = time.perf_counter() - t0
        path = Path(url.removeprefix("sqlite:///"))
        engine = make_engine(url, readonly=True)
        with make_sessionmaker(engine)() as s:
            preds = queries.predictions_frame(s, run_id)
            rows = int(sum(len(m.targets) for meth in methods
                           for m in queries.maps_for(s, run_id, preds["image_id"], meth).values()))
            page = preds["image_id"].head(PAGE).tolist()
            timings = {}
            for meth in methods:
                t = time.perf_counter()
                got = queries.maps_for(s, run_id, page, meth)
                timings[meth] = (time.perf_counter() - t) * 1000
                assert len(got) == len(page)
            plan = queries.maps_query_plan(s, page, methods[0])
        engine.dispose()
        with_maps = vacuumed_size(path)
        copy = Path(tmp) / "without.db"
        shutil.copyfile(path, copy)
        with sqlite3.connect(copy) as con:
            con.execute("DELETE FROM cam_maps")
        without = vacuumed_size(copy)
    n = len(preds)
    wrong = float((preds["pred"] != preds["label"]).mean())
    per_map = (with_maps - without) / rows
    per_image = sum(1 if m in CLASS_FREE_METHODS else 1 + 2 * wrong for m in methods)
    total = per_image * args.target * per_map
    print(f"{n} images, {wrong:.1%} wrong, methods {', '.join(methods)}, {args.cam_size}x{args.cam_size} maps "
          f"({2 * args.cam_size ** 2} B of float16 data each); store built in {built:.1f} s")
    print(f"map rows {rows:,} ({rows / n:.2f} per image); store {with_maps / 1e6:.2f} MB, without maps "
          f"{without / 1e6:.2f} MB")
    print(f"bytes per stored map, table and both indexes: {per_map:.0f} B")
    print(f"a run of {args.target:,} images at {wrong:.1%} wrong: {per_image:.2f} maps per image, "
          f"{per_image * args.target:,.0f} maps, {total / 1e6:.1f} MB of maps")
    worst = sum(1 if m in CLASS_FREE_METHODS else 3 for m in methods) * args.target * per_map
    print(f"  (every image wrong, the upper bound: {worst / 1e6:.1f} MB)")
    print(f"maps_for, one page of {PAGE} images: " + ", ".join(f"{m} {v:.1f} ms" for m, v in timings.items()))
    print("query plan: " + " | ".join(plan))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
