"""Audit a run's data: duplicates, leakage between splits, conflicting and suspect labels.

    python -m jobs.audit --run RUN [--db URL] [--json]

The findings are written to the store (the dashboard's "Data issues" page and the report export read
them) and printed. Suspect labels use the run's valid/test predictions: out of sample, since the model
never trained on those images. The store keeps each image's top-5 probabilities; the rest of the mass is
spread evenly over the other classes, which keeps the self-confidence ranking exact whenever the given
label is in the top 5 and makes it a bound otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from db import queries, store
from jobs.common import DefaultsHelpFormatter, add_db_arg, add_run_arg, run_cli, say_run, setup_logging

log = logging.getLogger("jobs.audit")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.audit", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_run_arg(p)
    add_db_arg(p)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--workers", type=int, default=1, help="threads that decode and hash images")
    p.add_argument("--min-score", type=float, default=None, help="similarity from which two images are near "
                   "duplicates (0-1) (default: measured on the data set, 0.90 at least; see core/dupcalibrate.py)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(args: argparse.Namespace) -> int:
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun the audit (no model, no collectives) runs once, on rank 0
    from jobs.auditing import audit_run, format_summary

    setup_logging(args.verbose)
    engine = store.make_engine(args.db, create=False)
    with store.make_sessionmaker(engine).begin() as s:
        run = queries.find_run(s, args.run)
        say_run(args.run, run)
        run_id, report, acc = audit_run(s, run.id, workers=args.workers, min_score=args.min_score)
    if args.json:
        json.dump({"run_id": run_id, **report, "leakage_accuracy": acc}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_summary(run_id, report, acc, args.db))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
