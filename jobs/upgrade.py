"""Upgrade a results store written by an older version of this tool to the schema this version reads.

    python -m jobs.upgrade [--db URL] [--dry-run]

A SQLite store is first copied next to itself (``NAME.v<old version>.bak``); the copy's path is printed.
Each step runs in one transaction, so an interrupted upgrade leaves the store at a version it can resume from.
"""
from __future__ import annotations

import argparse

from db.upgrade import upgrade
from jobs.common import DefaultsHelpFormatter, add_db_arg, run_cli, setup_logging


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.upgrade", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_db_arg(p)
    p.add_argument("--dry-run", action="store_true", help="say which steps would run; change nothing")
    return p


def main(args: argparse.Namespace) -> int:
    setup_logging()
    upgrade(args.db, dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
