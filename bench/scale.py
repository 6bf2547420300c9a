"""Every dashboard page at 14.5k, 150k and 1.38M images: store size, build time, cold and warm server time, RSS.

    python -m bench.scale [--sizes small medium large] [--db URL] [--repeat 2]

Each size is a store of ``db.builder_large`` (train images as rows without predictions, valid and test with
predictions, float16 logits and Grad-CAM maps), built with batched inserts into a SQLite file in a temporary
folder, or into ``--db`` (a PostgreSQL URL; the database should be empty). Then a fresh Python process opens
the dashboard with ``streamlit.testing.v1.AppTest`` and visits every page: "cold" is the first visit (empty
caches, the store's pages not yet in the OS cache only on a fresh machine), "warm" the best of ``--repeat``
re-runs; both are server time (the script's run, no browser). The process's peak resident memory is read
at the end. Goals at 1.33M on two cores: warm <= 1 s, cold <= 3 s, memory <= 2 GB.

The store writes are timed too: predictions, logits and maps written in batches of ``db.builder_large.CHUNK``
rows, against a producer that makes ``--producer`` images a second (a GPU's evaluation speed).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from db.builder_large import build_large_store

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
WARM_GOAL, COLD_GOAL, RSS_GOAL_MB = 1.0, 3.0, 2048.0
PRODUCER = 3000.0  # images a second an H100-class GPU evaluates VGG-19 at 224 px with maps (assumed)


@dataclass(frozen=True)
class Size:
    name: str
    classes: int
    train: int
    eval: int

    @property
    def images(self) -> int:
        return self.classes * (self.train + 2 * self.eval)


SIZES = {
    "tiny": Size("tiny", 1000, 0, 1),  # the CI size: 1,000 classes, 2,000 predictions
    "small": Size("small", 100, 105, 20),  # 14,500 images, 4,000 predicted
    "medium": Size("medium", 100, 1000, 250),  # 150,000 images, 50,000 predicted
    "large": Size("large", 1000, 1281, 50),  # 1,381,000 images, 100,000 predicted: ImageNet-1k's train + 2 x val
}

# (title, page file, a text the page shows when it works)
PAGES = (
    ("Overview", "views/overview.py", "Top-1 accuracy"),
    ("Confusion matrix", "views/confusion.py", "Most confused pairs"),
    ("Per-class accuracy", "views/per_class.py", "Look at a sport"),
    ("Misclassifications", "views/gallery.py", "misclassified images match"),
    ("Heatmap comparison", "views/compare.py", "Top-5 probabilities"),
    ("Data issues", "views/data_issues.py", ""),
    ("Export", "views/export.py", ""),
    ("Can the maps be trusted?", "views/trust.py", ""),
    ("Calibration", "views/calibration.py", ""),
)


def page_text(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "subheader", "metric", "title", "success", "warning"):
        for el in at.get(kind):
            parts.append(str(getattr(el, "value", "")) + " " + str(getattr(el, "label", "")))
    return "\n".join(parts)


def measure_pages(url: str, repeat: int = 2, pages=PAGES) -> list[dict]:
    """Cold and warm server time of every page of the store at ``url`` (its newest run), in this process.
    Raises ``RuntimeError`` when a page fails or does not show its text."""
    from streamlit.testing.v1 import AppTest

    os.environ["SPORTS_DB"] = url
    at = AppTest.from_file(str(HOME), default_timeout=600)
    rows = []
    for title, path, expect in pages:
        t = time.perf_counter()
        (at.switch_page(path) if rows else at).run()
        cold = time.perf_counter() - t
        if at.exception:
            raise RuntimeError(f"{title}: {at.exception[0].value}")
        text = page_text(at)
        if expect and expect not in text:
            raise RuntimeError(f"{title}: the page does not show {expect!r}")
        warm = float("inf")
        for _ in range(max(1, repeat)):
            t = time.perf_counter()
            at.run()
            warm = min(warm, time.perf_counter() - t)
        rows.append(dict(page=title, cold=cold, warm=warm))
    return rows


def store_bytes(url: str) -> Optional[int]:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    with eng.connect() as c:
        n = c.execute(text("select pg_database_size(current_database())")).scalar()
    eng.dispose()
    return int(n)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def child(url: str, repeat: int) -> None:
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    # Module imports are the process's start-up, not a page's cost: made before the first page is timed.
    import plotly.graph_objects  # noqa: F401
    import scipy.cluster.hierarchy  # noqa: F401
    import streamlit.testing.v1  # noqa: F401

    import core.counts, core.figures, core.figures_confusion  # noqa: F401, E401
    import dashboard.calibration_ui, dashboard.context, dashboard.tiles, dashboard.confusion_large  # noqa: F401, E401
    rows = measure_pages(url, repeat)
    print(json.dumps(dict(pages=rows, rss_mb=peak_rss_mb())))


def run_size(size: Size, repeat: int, db: Optional[str], say=print) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-scale-{size.name}-"))
    built = build_large_store(tmp, url=db, n_classes=size.classes, train_per_class=size.train,
                              eval_per_class=size.eval, say=lambda m: say(f"  {m}"))
    nbytes = store_bytes(built.url)
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(HOME.parents[1]))}
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--child", built.url, "--repeat", str(repeat)],
                         capture_output=True, text=True, env=env, cwd=str(HOME.parents[1]))
    if out.returncode != 0:
        raise RuntimeError(f"the dashboard process failed on {size.name}: {out.stderr.strip()[-2000:]}")
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    writes = built.n_predictions / built.write_seconds if built.write_seconds else float("nan")
    return dict(size=size.name, images=built.n_images, predictions=built.n_predictions, store_mb=nbytes / 1e6,
                build_s=built.seconds, write_rows_s=writes, **measured)


def report(results: list[dict], producer: float) -> bool:
    ok = True
    load = os.getloadavg()
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
          f"{' (busy: times are upper bounds)' if load[0] > 1 else ''}")
    for r in results:
        print(f"\n{r['size']}: {r['images']:,} images ({r['predictions']:,} with predictions), store "
              f"{r['store_mb']:,.0f} MB, built in {r['build_s']:.0f} s; dashboard peak RSS {r['rss_mb']:,.0f} MB "
              f"(goal <= {RSS_GOAL_MB:,.0f})")
        share = producer / r["write_rows_s"]  # write seconds per producer second
        print(f"  writes: {r['write_rows_s']:,.0f} predictions/s with logits and maps; at {producer:,.0f} images/s "
              f"the writes take {share:.1%} of an evaluation's wall time (goal < 10%)")
        ok &= r["rss_mb"] <= RSS_GOAL_MB and share < 0.10
        print(f"  {'page':28s} {'cold s':>7s} {'warm s':>7s}  ok (cold <= {COLD_GOAL:g}, warm <= {WARM_GOAL:g})")
        for p in r["pages"]:
            good = p["cold"] <= COLD_GOAL and p["warm"] <= WARM_GOAL
            ok &= good
            print(f"  {p['page']:28s} {p['cold']:7.2f} {p['warm']:7.2f}  {'yes' if good else 'NO'}")
    return ok


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["small", "medium", "large"], choices=list(SIZES),
                   help="store sizes (default: small medium large = 14.5k, 150k, 1.38M images)")
    p.add_argument("--db", default=None, help="build into this (empty) database instead of a SQLite file; "
                                              "one size per run then (default: SQLite in a temporary folder)")
    p.add_argument("--repeat", type=int, default=2, help="warm timings are the best of this many (default 2)")
    p.add_argument("--producer", type=float, default=PRODUCER,
                   help=f"images a second the simulated GPU evaluation produces (default {PRODUCER:g})")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> int:
    if args.child:
        child(args.child, args.repeat)
        return 0
    if args.db and len(args.sizes) > 1:
        raise SystemExit("--db takes one size at a time (each build needs an empty database)")
    results = []
    for name in args.sizes:
        size = SIZES[name]
        print(f"{name}: {size.classes} classes x ({size.train} train + 2 x {size.eval} eval) = {size.images:,} images")
        results.append(run_size(size, args.repeat, args.db))
    return 0 if report(results, args.producer) else 1


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
