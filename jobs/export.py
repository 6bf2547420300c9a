"""Export a run's figure set for a report: plots, image sheets, CSV tables and a manifest.

    python -m jobs.export --run RUN --out DIR [--db URL] [--sports NAME ...] [--format png,svg,pdf]
    python -m jobs.export --compare A B --out DIR [--compare-split test]   # two runs, or RUN:phase1 and RUN

The set holds the confusion matrix (all classes and the most confused ones), per-class precision/recall/F1,
the training curves, a grid of the most confident mistakes with both Grad-CAM maps, a sheet of errors per
chosen sport, the tables behind them, for an audited run the leakage table and the duplicate groups and,
for a run scored by ``jobs.trust``, the per-class faithfulness table and plot and the sanity-check cascade,
the accuracies with their intervals and, for a run calibrated by ``jobs.calibrate``, its tables and figures.
``manifest.json`` lists every file with its caption. Plots need a Chromium (``--browser``); without one
they are skipped and the rest is written. ``--compare A B`` writes the comparison of run B with run A instead
(``core.compare_report``): the per-class change, the confusion change, the flips and the summary JSON.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from core.report import FORMATS, ExportOptions, write_figure_set
from db import queries, store
from jobs.common import DefaultsHelpFormatter, add_db_arg, add_run_arg, run_cli, say_run, setup_logging

log = logging.getLogger("jobs.export")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.export", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_run_arg(p)
    p.add_argument("--out", default=None, help="folder to write into (default: runs/export-<run id>)")
    add_db_arg(p)
    p.add_argument("--sports", nargs="*", default=None, metavar="NAME",
                   help="sports that get an error sheet, each one argument (quote names with spaces); "
                        "default: the sports with the most errors, up to --max-sports")
    p.add_argument("--format", default="png", type=_csv,
                   help=f"comma-separated formats of plots and sheets, among {','.join(FORMATS)}")
    p.add_argument("--splits", default=None, type=_csv, help="comma-separated splits to use (default: all)")
    p.add_argument("--max-sports", type=int, default=10, help="sport sheets when --sports is not given")
    p.add_argument("--worst", type=int, default=12, help="mistakes in the worst-errors grid")
    p.add_argument("--per-sheet", type=int, default=12, help="mistakes on each sport's sheet")
    p.add_argument("--top-confused", type=int, default=20, help="classes in the most-confused matrix")
    p.add_argument("--dpi", type=int, default=300, help="print resolution of plots and sheets")
    p.add_argument("--width", type=float, default=7.0, help="width of a figure in inches")
    p.add_argument("--browser", default="auto",
                   help="Chromium executable for the plots; 'auto': $BROWSER_PATH, /usr/bin/chromium, PATH")
    p.add_argument("--compare", nargs=2, default=None, metavar=("A", "B"),
                   help="write the comparison of run B with run A instead (RUN or RUN:phase1 each, as for "
                        "python -m jobs.compare); --worst images per flips sheet, --top-confused sports plotted")
    p.add_argument("--compare-split", default="test", help="with --compare: split to compare on, or 'all'")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    for noisy in ("choreographer", "kaleido", "logistro"):  # the browser's own progress lines
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    options = ExportOptions(
        formats=tuple(args.format), sports=tuple(args.sports) if args.sports is not None else None,
        max_sports=args.max_sports, worst=args.worst, per_sheet=args.per_sheet, top_confused=args.top_confused,
        dpi=args.dpi, width_in=args.width, splits=tuple(args.splits) if args.splits else None,
        browser=args.browser,
    )
    engine = store.make_engine(args.db, readonly=True)
    if args.compare:
        return export_comparison(args, engine, options)
    try:
        with store.make_sessionmaker(engine)() as s:
            run = queries.find_run(s, args.run)
            say_run(args.run, run)
            out = Path(args.out) if args.out else Path("runs") / f"export-{run.id}"
            data = queries.run_data(s, run.id, options.splits)
            manifest = write_figure_set(data, out, options)
    finally:
        engine.dispose()
    log.info("run #%d %s: %d files in %s (%.1f s), %d skipped; see %s", manifest.run["id"], manifest.run["name"],
             len(manifest.files), out, manifest.seconds, len(manifest.skipped), out / "manifest.json")
    return 0


def export_comparison(args: argparse.Namespace, engine, options: ExportOptions) -> int:
    """``--compare A B``: the comparison's figure set (``core.compare_report``) instead of a run's."""
    from core.compare_report import write_comparison_set

    a_ref, b_ref = args.compare
    try:
        with store.make_sessionmaker(engine)() as s:
            split = None if args.compare_split == "all" else args.compare_split
            data = queries.comparison_data(s, a_ref, b_ref, split=split)
            out = Path(args.out) if args.out else Path("runs") / f"compare-{data.a['id']}-{data.b['id']}"
            manifest = write_comparison_set(data, out, options)
    finally:
        engine.dispose()
    log.info("comparison of #%d with #%d: %d files in %s (%.1f s), %d skipped; see %s", data.b["id"], data.a["id"],
             len(manifest.files), out, manifest.seconds, len(manifest.skipped), out / "manifest.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
