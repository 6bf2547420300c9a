"""Verdicts to and from a CSV file, so that reviews can come from or go to a spreadsheet or another tool.

    python -m jobs.reviews export --out corrections.csv [--history] [--db URL]
    python -m jobs.reviews import corrections.csv [--reviewer NAME] [--db URL]

Columns: relpath, split, sha256, label, verdict, new_label, note, reviewer, reviewed_at; ``verdict`` is one of
relabel, ambiguous, drop, fine. On import an image is found by sha256, else by split and relpath; every row
is checked first and a file with any bad row (unknown class, unknown image, bad verdict) is rejected with the
line numbers, before anything is written. Rows already in the history (same image, verdict, class, note,
reviewer and time) are skipped, so importing a file twice adds nothing.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial

from core.reviews import default_reviewer, read_csv, write_csv
from db import queries, store
from db.queries.reviews import has_same_review, to_verdicts
from db.review_writer import ReviewWriter
from jobs.common import DefaultsHelpFormatter, add_db_arg, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.reviews", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{export,import}")
    ex = sub.add_parser("export", help="write the verdicts to a CSV file", formatter_class=DefaultsHelpFormatter)
    ex.add_argument("--out", required=True, help="CSV file to write ('-' for standard output)")
    ex.add_argument("--history", action="store_true",
                    help="every verdict ever given, oldest first (default: the latest per image, which is what "
                    "jobs.train --corrections applies)")
    add_db_arg(ex)
    im = sub.add_parser("import", help="add the verdicts of a CSV file to the store",
                        formatter_class=DefaultsHelpFormatter)
    im.add_argument("file", help="CSV file with the columns above")
    im.add_argument("--reviewer", default=default_reviewer(),
                    help="name recorded for rows whose reviewer column is empty (default: the OS user)")
    add_db_arg(im)
    return p


def export(args: argparse.Namespace) -> int:
    engine = store.make_engine(args.db, readonly=True)
    with store.make_sessionmaker(engine)() as s:
        frame = queries.review_history(s) if args.history else queries.latest_reviews(s)
    verdicts = to_verdicts(frame)
    engine.dispose()
    if args.out == "-":
        n = write_csv(verdicts, sys.stdout)
    else:
        with open(args.out, "w", newline="", encoding="utf-8") as fh:
            n = write_csv(verdicts, fh)
    what = "verdicts" if args.history else "latest verdicts (one per image)"
    print(f"wrote {n} {what} to {args.out}", file=sys.stderr if args.out == "-" else sys.stdout)
    return 0


def import_file(args: argparse.Namespace) -> int:
    engine = store.make_engine(args.db, readonly=True)
    with store.make_sessionmaker(engine)() as s:
        verdicts = read_csv(args.file, queries.store_classes(s), partial(queries.find_image, s),
                            default_reviewer_name=args.reviewer)
        new = [v for v in verdicts if not has_same_review(s, v)]
    engine.dispose()
    if new:
        writer = ReviewWriter(args.db)
        writer.save(new)
        writer.dispose()
    print(f"imported {len(new)} verdict(s) from {args.file}"
          + (f"; {len(verdicts) - len(new)} already in the store" if len(new) < len(verdicts) else ""))
    return 0


def main(args: argparse.Namespace) -> int:
    return export(args) if args.command == "export" else import_file(args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
