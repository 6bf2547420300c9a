"""Snapshots of a run: the stages a run can be kept at besides its final model, and how a reference names one.

A snapshot is a run of its own in the store (``runs.parent_id`` = the run, ``runs.stage`` = the stage) with its
own predictions and maps. ``PHASE1`` is the model at the end of phase 1 (new head trained, base still frozen),
which ``jobs.train`` evaluates and keeps unless told ``--no-phase1-snapshot``. Plain constants and string
handling: no torch, no SQL.
"""
from __future__ import annotations

from typing import Optional

PHASE1 = "phase1"
STAGES = (PHASE1,)
STAGE_LABELS = {PHASE1: "phase 1"}


def split_ref(text: str) -> tuple[str, Optional[str]]:
    """``RUN`` or ``RUN:STAGE`` -> (RUN, STAGE or None). Only a known stage after the last colon counts, so a
    run name with a colon of its own stays whole; an unknown stage is a ValueError naming the known ones."""
    text = str(text).strip()
    head, sep, tail = text.rpartition(":")
    if not sep:
        return text, None
    if tail in STAGES:
        if not head.strip():
            raise ValueError(f"run reference {text!r} names a stage but no run; expected RUN:{tail}")
        return head.strip(), tail
    if tail.lower().startswith("phase"):
        raise ValueError(f"run reference {text!r}: unknown stage {tail!r}, expected one of {', '.join(STAGES)}")
    return text, None


def stage_label(stage: Optional[str]) -> str:
    """How pages and summaries name a stage: "phase 1" for "phase1", "final" for a run itself."""
    return "final" if stage is None else STAGE_LABELS.get(stage, stage)
