"""Server render time of every dashboard page on a 100-class, 14,500-image store.

``python -m bench.dashboard`` builds the store in a temporary folder (a few hundred real 224 px JPEGs,
the other rows hard-linked to them), then drives the app with ``streamlit.testing.v1.AppTest``: the first
visit of each page (cold caches), the warm re-render, each filter change, and a 50-tile gallery page with
its tile cache cleared. Goals: warm page or filter change <= 1 s, cold 50-tile page <= 1.5 s.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from streamlit.testing.v1 import AppTest

from core.splits import SPLITS, TEST, TRAIN, VALID
from db.builder import build_store

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
WARM_GOAL, COLD_TILES_GOAL = 1.0, 1.5


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=100, help="number of classes (default 100)")
    p.add_argument("--train-per-class", type=int, default=125, help="train images per class (default 125)")
    p.add_argument("--eval-per-class", type=int, default=10, help="valid and test images per class (default 10)")
    p.add_argument("--files", type=int, default=400, help="distinct JPEG files written (default 400)")
    p.add_argument("--error-rate", type=float, default=0.2, help="share of misclassified images (default 0.2)")
    p.add_argument("--repeat", type=int, default=3, help="warm timings are the best of this many (default 3)")
    p.add_argument("--db", default=None,
                   help="build into this empty database (e.g. PostgreSQL) with the batched builder of "
                        "db.builder_large (default: a SQLite file in a temporary folder)")
    return p


LARGE_FROM = 200_000  # images: above this (or with --db) the store is built in batches, as bench.scale does


def main_large(args: argparse.Namespace) -> int:
    """A store of ``db.builder_large`` (train images without predictions) and every page's cold and warm time."""
    from bench.scale import COLD_GOAL, measure_pages
    from db.builder_large import build_large_store

    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    built = build_large_store(tmp, url=args.db, n_classes=args.classes, train_per_class=args.train_per_class,
                              eval_per_class=args.eval_per_class, error_rate=args.error_rate, files=args.files,
                              say=lambda m: print(f"  {m}", flush=True))
    print(f"store: {built.n_images:,} images ({built.n_predictions:,} predicted), {args.classes} classes, built in "
          f"{built.seconds:.0f} s ({built.write_seconds:.0f} s writing predictions, logits and maps)")
    rows = measure_pages(built.url, args.repeat)
    print(f"\n{'page':28s} {'cold s':>7s} {'warm s':>7s}  ok (cold <= {COLD_GOAL:g}, warm <= {WARM_GOAL:g})")
    ok = True
    for r in rows:
        good = r["cold"] <= COLD_GOAL and r["warm"] <= WARM_GOAL
        ok &= good
        print(f"{r['page']:28s} {r['cold']:7.2f} {r['warm']:7.2f}  {'yes' if good else 'NO'}")
    return 0 if ok else 1


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(args: argparse.Namespace) -> int:
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    if args.db or args.classes * (args.train_per_class + 2 * args.eval_per_class) > LARGE_FROM:
        return main_large(args)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    t = time.perf_counter()
    per = {TRAIN: args.train_per_class, VALID: args.eval_per_class, TEST: args.eval_per_class}
    url, _, _ = build_store(tmp, n_classes=args.classes, n_per_class=per, splits=SPLITS,
                            image_size=224, reuse_files=args.files, error_rate=args.error_rate, cam_size=14)
    n_images = args.classes * sum(per.values())
    print(f"store: {n_images:,} images, {args.classes} classes, built in {time.perf_counter() - t:.1f} s ({url})")
    os.environ["SPORTS_DB"] = url

    at = AppTest.from_file(str(HOME), default_timeout=120)
    rows: list[tuple[str, str, float, float]] = []

    def check() -> None:
        if at.exception:
            raise RuntimeError(at.exception[0].value)

    def page(name: str, path: str) -> None:
        cold = timed(lambda: (at.switch_page(path).run() if path else at.run()))
        check()
        warm = min(timed(at.run) for _ in range(args.repeat))
        check()
        rows.append(("page", name, cold, warm))

    def change(name: str, act: Callable[[], object], goal: float = WARM_GOAL) -> None:
        secs = timed(lambda: act().run())
        check()
        rows.append(("filter", name, secs, goal))

    page("Overview", "")
    page("Confusion matrix", "views/confusion.py")
    change("confusion: row-normalized", lambda: at.radio(key="cm_scale").set_value("row-normalized"))
    change("confusion: grouped by confusion", lambda: at.radio(key="cm_order").set_value("grouped by confusion"))
    change("confusion: split = valid", lambda: at.selectbox(key="cm_split").set_value("valid"))
    change("confusion: another pair", lambda: at.selectbox(key="cm_pair").set_value(at.selectbox(key="cm_pair").options[3]))
    at.selectbox(key="cm_split").set_value("all").run()
    page("Per-class accuracy", "views/per_class.py")
    change("per-class: sort by recall", lambda: at.selectbox(key="pc_sort").set_value("recall"))
    change("per-class: split = test", lambda: at.selectbox(key="pc_split").set_value("test"))
    at.selectbox(key="pc_split").set_value("all").run()
    page("Misclassifications", "views/gallery.py")
    names = at.multiselect(key="gal_true").options
    change("gallery: true sport", lambda: at.multiselect(key="gal_true").set_value([names[5]]))
    change("gallery: predicted sport", lambda: at.multiselect(key="gal_pred").set_value([names[6]]))
    change("gallery: clear sports", lambda: at.multiselect(key="gal_true").set_value([]))
    change("gallery: clear predicted", lambda: at.multiselect(key="gal_pred").set_value([]))
    change("gallery: split = train", lambda: at.selectbox(key="gal_split").set_value("train"))
    change("gallery: confidence 0.5-0.9", lambda: at.slider(key="gal_conf").set_value((0.5, 0.9)))
    change("gallery: page 2", lambda: at.number_input(key="gal_page").set_value(2))

    from dashboard import loaders, tiles as tile_module

    tile_module.render_view.clear()
    loaders.load_maps.clear()
    change("gallery: 50 tiles per page, tiles cold", lambda: at.selectbox(key="gal_size").set_value(50),
           COLD_TILES_GOAL)
    tiles = len(at.get("image"))
    change("gallery: same 50 tiles warm", lambda: at)
    page("Heatmap comparison", "views/compare.py")
    change("compare: next image", lambda: at.button(key="cmp_next").click())
    change("compare: colormap", lambda: at.selectbox(key="cmp_cmap").set_value("inferno"))
    change("compare: shared scale", lambda: at.radio(key="cmp_norm").set_value("shared across both maps"))
    change("compare: opacity", lambda: at.slider(key="cmp_alpha").set_value(0.7))

    print(f"\n{'what':46s} {'first/cold s':>12s} {'warm s':>8s} {'goal s':>7s}  ok")
    worst = True
    for kind, name, a, b in rows:
        if kind == "page":
            ok = b <= WARM_GOAL
            print(f"{'page: ' + name:46s} {a:12.3f} {b:8.3f} {WARM_GOAL:7.1f}  {'yes' if ok else 'NO'}")
        else:
            ok = a <= b
            print(f"{name:46s} {'':12s} {a:8.3f} {b:7.1f}  {'yes' if ok else 'NO'}")
        worst &= ok
    print(f"\n(the cold 50-tile row rendered {tiles} tiles; 'first/cold' of a page includes loading its data)")
    return 0 if worst else 1


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
