"""Shared fixtures: small generated datasets in the Kaggle layout, written to tmp_path."""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest
from PIL import Image

from core.cache import ENV_VAR as DECODED_CACHE_VAR

# The PostgreSQL server fixture (pg_url), shared by every module that needs it: one server per session.
pytest_plugins = ["tests.pg"]

_saved_cache_var: list = []


def pytest_configure(config) -> None:
    """Every decoded cache the tests write (training's default included, in this process and in the jobs
    they start as subprocesses, which inherit the environment) goes to a folder of this session, never to
    the user's ~/.cache."""
    _saved_cache_var.append(os.environ.get(DECODED_CACHE_VAR))
    os.environ[DECODED_CACHE_VAR] = tempfile.mkdtemp(prefix="sports-decoded-test-")


def pytest_unconfigure(config) -> None:
    shutil.rmtree(os.environ[DECODED_CACHE_VAR], ignore_errors=True)
    before = _saved_cache_var.pop() if _saved_cache_var else None
    if before is None:
        os.environ.pop(DECODED_CACHE_VAR, None)
    else:
        os.environ[DECODED_CACHE_VAR] = before


def write_image(path: Path, rng: np.random.Generator, size: int = 32, colour: int = 0) -> None:
    """A small JPEG whose dominant colour channel depends on ``colour`` so classes are learnable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    c = colour % 3
    arr[..., c] = np.clip(arr[..., c].astype(int) + 150 + 20 * (colour // 3), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)


def make_dataset(
    root: Path,
    classes: Iterable[str] = ("alpha", "beta", "gamma"),
    per_split: dict[str, int] | None = None,
    *,
    size: int = 32,
    csv_index: bool = False,
    class_id_column: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/<nnn>.jpg``; with ``csv_index`` also ``root/sports.csv``."""
    per_split = per_split or {"train": 4, "valid": 2, "test": 2}
    rng = np.random.default_rng(seed)
    rows = []
    for ci, cls in enumerate(sorted(classes)):
        for split, n in per_split.items():
            for k in range(n):
                rel = f"{split}/{cls}/{k:03d}.jpg"
                write_image(root / rel, rng, size, ci)
                rows.append((ci, rel, cls, split))
    if csv_index:
        with open(root / "sports.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["class id", "filepaths", "labels", "data set"] if class_id_column
                       else ["filepaths", "labels", "data set"])
            for r in rows:
                w.writerow(r if class_id_column else r[1:])
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")
