"""What every job shares: logging set-up, the --db flag, and turning known errors into one line."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Callable

from core.errors import CheckpointError, WeightsUnavailable
from db.store import ENV_VAR, StoreError

if TYPE_CHECKING:  # torch loads in main(), not for --help
    import torch

    from core import dist

# Errors whose message is the whole story: print it as one line, exit non-zero, no traceback. A
# core.data.DatasetError is a ValueError.
USER_ERRORS = (WeightsUnavailable, CheckpointError, StoreError, ValueError, FileNotFoundError)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a flag's help, unless the help already states its default or there is no
    value to state (a default of None, described in words where it matters)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is None:
            return text
        return super()._get_help_string(action)


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


def say_run(ref: str, run) -> None:
    """Log which run ``--run latest`` picked (``run``: a ``db.queries.RunInfo``), so it is never a guess."""
    if str(ref).strip() == "latest":
        logging.getLogger("jobs").info("run #%d %s [%s] (latest: the newest complete run)", run.id, run.name,
                                       run.status)


def setup_logging(verbose: bool = False, rank: int = 0) -> None:
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if rank:
        fmt = f"[rank {rank}] " + fmt
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", force=True)


def pick_device(choice: str) -> torch.device:
    """``--device``: auto takes this rank's GPU when there is one."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def run_distributed(args: argparse.Namespace,
                    body: Callable[[argparse.Namespace, torch.device, dist.DistEnv], int]) -> int:
    """Pick the device, join torchrun's process group when launched by it, set up logging per rank, run
    ``body(args, device, env)`` and always leave the group (a single process has no group to join)."""
    from core import dist

    device = pick_device(args.device)
    env = dist.init_from_env(device.type)
    setup_logging(args.verbose, env.rank)
    try:
        return body(args, device, env)
    finally:
        dist.shutdown()


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
