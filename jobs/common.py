"""What every job shares: logging set-up, the --db flag, and turning known errors into one line."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from core.data import DatasetError
from core.model import CheckpointError, WeightsUnavailable
from db.store import ENV_VAR, StoreError

# Errors whose message is the whole story: print it as one line, exit non-zero, no traceback.
USER_ERRORS = (DatasetError, WeightsUnavailable, CheckpointError, StoreError, ValueError, FileNotFoundError)


def add_db_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=None,
        help=f"SQLAlchemy URL or SQLite file of the results store (default: ${ENV_VAR}, else runs/sports.db)",
    )


def add_run_arg(parser: argparse.ArgumentParser) -> None:
    # torchrun takes any unambiguous prefix of its own flags, even after the module name, and reads
    # "--run" as its "--run-path"; "--run-id" is the spelling that survives a torchrun launch.
    parser.add_argument("--run", "--run-id", dest="run", default="latest",
                        help="run id, run name, or 'latest' (under torchrun spell it --run-id)")


def setup_logging(verbose: bool = False, rank: int = 0) -> None:
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if rank:
        fmt = f"[rank {rank}] " + fmt
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", force=True)


def run_cli(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
            argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    try:
        return int(main(args) or 0)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
