"""What every job shares: logging set-up, the --db flag, and turning known errors into one line."""
from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Callable

from core.errors import CheckpointError, WeightsUnavailable
from db.store import StoreError
from jobs import cli
from jobs.cli import DefaultsHelpFormatter, add_cache_args, add_db_arg, add_run_arg  # noqa: F401 (re-exported for the jobs)

if TYPE_CHECKING:  # torch loads in main(), not for --help
    import torch

    from core import dist

# Errors whose message is the whole story: print it as one line, exit non-zero, no traceback. A
# core.data.DatasetError is a ValueError.
USER_ERRORS = (WeightsUnavailable, CheckpointError, StoreError, ValueError, FileNotFoundError)


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
    """``jobs.cli.run_cli`` with the model's and the data's errors among the one-line ones."""
    return cli.run_cli(main, parser, argv, USER_ERRORS)
