"""What every job's command line shares that needs no torch: the help formatter, ``--db`` and ``--run``, and
turning known errors into one line. ``jobs.common`` adds the torch side (devices, process groups, the model's
and the data's errors); a job that never touches the model (``jobs.compare``) imports this alone, which
spares it the two seconds torch takes to import."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from db.store import ENV_VAR, StoreError

# Errors whose message is the whole story: print it as one line, exit non-zero, no traceback.
STORE_ERRORS = (StoreError, ValueError, FileNotFoundError)


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


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir`` / ``--no-cache`` of the jobs that read a run's images after training."""
    from core.cache import ENV_VAR as cache_env  # torch-free

    parser.add_argument("--cache-dir", default=None, help="folder of the decoded cache, shared with jobs.train "
                        f"(default: ${cache_env}, else ~/.cache/sports-cam/decoded)")
    parser.add_argument("--no-cache", action="store_true", help="read and decode the JPEG files")


def add_run_arg(parser: argparse.ArgumentParser) -> None:
    # torchrun takes any unambiguous prefix of its own flags, even after the module name, and reads
    # "--run" as its "--run-path"; "--run-id" is the spelling that survives a torchrun launch.
    parser.add_argument("--run", "--run-id", dest="run", default="latest",
                        help="run id, run name, or 'latest' (under torchrun spell it --run-id)")


def run_cli(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
            argv: list[str] | None = None, errors: tuple[type[BaseException], ...] = STORE_ERRORS) -> int:
    """Parse ``argv``, run ``main``; ``errors`` become ``error: ...`` on stderr and exit 2, Ctrl-C exit 130."""
    args = parser.parse_args(argv)
    try:
        return int(main(args) or 0)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
