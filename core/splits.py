"""The names of the dataset's splits, defined once for the data loader, the jobs, the store and the pages.

Plain constants (no torch, no SQL), so that ``db`` and ``dashboard`` can import them too.
"""
from __future__ import annotations

from typing import Iterable

TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS = (TRAIN, VALID, TEST)
# The splits a training job predicts (and explains) once it has trained, unless told otherwise.
EVAL_SPLITS = (VALID, TEST)
# Spellings of the split column of a Kaggle-style ``sports.csv``.
SPLIT_ALIASES = {"train": TRAIN, "valid": VALID, "validation": VALID, "val": VALID, "test": TEST}


def ordered(splits: Iterable[str]) -> list[str]:
    """``splits`` without repeats, in train/valid/test order, any other names after them in sorted order."""
    found = set(splits)
    return [s for s in SPLITS if s in found] + sorted(found - set(SPLITS))
