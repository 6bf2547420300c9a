"""Where a run's checkpoints live: one folder per run under ``--out``, named after the run.

``jobs.train`` picks the folder, ``jobs.cams`` finds it again from what the store recorded.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional

from core.errors import CheckpointError

DEFAULT_OUT = "runs/checkpoints"


def slug(name: str) -> str:
    """A run name as a folder name: runs of characters other than letters, digits, ``._-`` become ``-``."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return s[:80] or "run"


def fresh_run_dir(out: Path, name: str) -> Path:
    """A checkpoint folder no earlier run uses: ``<out>/<name>``, else ``<out>/<name>-2``, ``-3``, ...

    Two runs given the same ``--run-name`` must not overwrite each other's checkpoints: the store keeps
    each run's checkpoint path, and ``jobs.cams`` would otherwise explain the first run with the second's weights.
    """
    base = out / slug(name)
    path, k = base, 1
    while path.exists() and any(path.iterdir()):
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def run_dir_of(config: Mapping[str, Any], name: str) -> Path:
    """A run's checkpoint folder: recorded in its config, else where ``jobs.train`` would have put it."""
    return Path(config.get("run_dir") or Path(config.get("out", DEFAULT_OUT)) / slug(name))


def find_resume_checkpoint(resume: str, out: Path, run_name: Optional[str]) -> Path:
    """``--resume``: the CHECKPOINT given, else the newest ``last.pt`` under ``out`` (of ``run_name`` when set)."""
    if resume != "auto":
        return Path(resume)
    if run_name:
        base = slug(run_name)
        found = sorted((p for p in [out / base / "last.pt", *out.glob(f"{base}-*/last.pt")] if p.is_file()),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise CheckpointError(f"--resume: no checkpoint {out / base / 'last.pt'} for run name {run_name!r}")
        return found[-1]
    found = sorted(out.glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CheckpointError(f"--resume: no */last.pt under {out}; nothing to resume")
    return found[-1]
