"""Build time and JSON size of the confusion-matrix figure at 100 and 1,000 classes, raster against heatmap.

    python -m bench.confusion [--classes 100 1000] [--per-class 50] [--error-rate 0.25] [--repeat 3] [--no-old]

A generated evaluation: ``--per-class`` images a class, a share ``--error-rate`` of them mistaken for one of
the ten classes of their block (blocks of consecutive indices, names shuffled so that no order starts
grouped). For each size it prints, best of ``--repeat``: the clustered order (``confusion_view``), the
figure (``raster_figure``), its ``to_json()`` and the JSON's size; then the same for
``core.figures.confusion_heatmap`` (alphabetical, as its clustered order alone costs seconds at 1,000
classes), and the cost of the optimal leaf order that ``OPTIMAL_LEAF_LIMIT`` avoids. Browser render times
are not measured here.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import numpy as np

from core import figures
from core import figures_confusion as fc


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000], help="class counts (default: 100 1000)")
    p.add_argument("--per-class", type=int, default=50, help="evaluation images per class (default: 50)")
    p.add_argument("--error-rate", type=float, default=0.25, help="share of mistaken images (default: 0.25)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is printed (default: 3)")
    p.add_argument("--no-old", action="store_true", help="skip core.figures.confusion_heatmap (default: run it)")
    return p


def make_confusion(n: int, per_class: int, error_rate: float, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n), per_class)
    near = (labels // 10 * 10 + rng.integers(0, 10, labels.size)) % n
    pred = np.where(rng.random(labels.size) < error_rate, near, labels)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm, [f"sport {c:04d}" for c in rng.permutation(n)]


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(args: argparse.Namespace) -> dict:
    rows = {}
    fc.raster_figure(fc.confusion_view(*make_confusion(10, 5, 0.5)))  # imports (scipy, PIL) out of the timings
    print(f"{args.per_class} images a class, {args.error_rate:.0%} mistaken within blocks of 10; best of {args.repeat}")
    print(f"  {'classes':>7} {'figure':<20} {'order s':>8} {'build s':>8} {'to_json s':>9} {'JSON MB':>8}  order used")
    for n in args.classes:
        cm, names = make_confusion(n, args.per_class, args.error_rate)
        order_s, view = best_of(args.repeat, lambda: fc.confusion_view(cm, names))
        build_s, fig = best_of(args.repeat, lambda: fc.raster_figure(view))
        json_s, text = best_of(args.repeat, fig.to_json)
        rows[(n, "raster")] = (order_s, build_s, json_s, len(text))
        print(f"  {n:>7} {'raster_figure':<20} {order_s:8.2f} {build_s:8.2f} {json_s:9.2f} {len(text) / 1e6:8.2f}  "
              f"{view.method}")
        if not args.no_old:
            old_s, old = best_of(1, lambda: figures.confusion_heatmap(cm, names, hide_diagonal=True))
            old_json_s, old_text = best_of(1, old.to_json)
            rows[(n, "heatmap")] = (0.0, old_s, old_json_s, len(old_text))
            print(f"  {n:>7} {'confusion_heatmap':<20} {'-':>8} {old_s:8.2f} {old_json_s:9.2f} "
                  f"{len(old_text) / 1e6:8.2f}  alphabetical, {old.layout.height} px tall")
    n = max(args.classes)
    if n > fc.OPTIMAL_LEAF_LIMIT:
        cm, names = make_confusion(n, args.per_class, args.error_rate)
        olo_s, view = best_of(1, lambda: fc.confusion_view(cm, names, optimal_limit=n))
        rows[(n, "optimal leaf order")] = (olo_s, 0.0, 0.0, 0)
        print(f"  the optimal leaf order at {n} classes would take {olo_s:.2f} s (above {fc.OPTIMAL_LEAF_LIMIT} "
              f"classes the plain leaf order is used)")
    load = os.getloadavg()
    print(f"  machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          f"(1 / 5 / 15 min){' - busy, times are upper bounds' if load[0] > 1 else ''}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
