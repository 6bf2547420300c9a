"""Where a training run stands, from the epoch rows it has written: phase, epoch, elapsed time, and an
estimate of the time left from the epochs' own durations.

Phase 1 (the base frozen, run without a graph) and phase 2 (everything trains) take very different times
per epoch, so each phase's remaining epochs are costed at that phase's mean; before the first fine-tuning
epoch has ended there is no honest figure for phase 2, and the estimate says so instead of guessing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

PHASE_NAMES = {1: "base frozen", 2: "fine-tuning"}


@dataclass(frozen=True)
class Progress:
    phase: int  # of the epoch in progress (or of the last one, once all are done)
    epoch: int  # in progress, counted within its phase from 1
    epochs_in_phase: int
    done: int  # epochs finished, both phases
    total: int
    elapsed_s: float
    left_s: Optional[float]  # None while phase 2's epoch time is unknown
    training_done: bool

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def line(self) -> str:
        """One line for a page: where the run is, how long it has run, how long it has left."""
        if self.training_done:
            where = f"all {self.total} epochs done; writing the predictions and maps"
        else:
            where = (f"phase {self.phase} ({PHASE_NAMES.get(self.phase, '')}), epoch {self.epoch} of "
                     f"{self.epochs_in_phase} · {self.done} of {self.total} epochs done")
        left = ("" if self.training_done else
                f" · about {duration(self.left_s)} of training left" if self.left_s is not None else
                " · time left known after the first fine-tuning epoch")
        return f"{where} · {duration(self.elapsed_s)} elapsed{left}"


def duration(seconds: float) -> str:
    """``95`` -> "1 min 35 s"; ``4000`` -> "1 h 06 min"."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def training_progress(epochs: pd.DataFrame, epochs_frozen: int, epochs_finetune: int,
                      elapsed_s: float) -> Progress:
    """``epochs``: the run's epoch rows (``db.queries.epochs_frame``: phase, global_epoch, seconds)."""
    if epochs_frozen < 0 or epochs_finetune < 0:
        raise ValueError(f"epoch counts must be 0 or more, got {epochs_frozen} and {epochs_finetune}")
    total = epochs_frozen + epochs_finetune
    done = min(int(len(epochs)), total)
    if done < epochs_frozen:
        phase, epoch, in_phase = 1, done + 1, epochs_frozen
    elif done < total:
        phase, epoch, in_phase = 2, done - epochs_frozen + 1, epochs_finetune
    else:
        phase = 2 if epochs_finetune else 1
        in_phase = epochs_finetune if epochs_finetune else epochs_frozen
        epoch = in_phase
    seconds = {p: pd.to_numeric(epochs.loc[epochs["phase"] == p, "seconds"], errors="coerce").dropna()
               for p in (1, 2)}
    left: Optional[float] = 0.0
    for p, remaining in ((1, max(0, epochs_frozen - done)), (2, min(epochs_finetune, total - max(done, epochs_frozen)))):
        if remaining == 0:
            continue
        if seconds[p].empty:
            left = None
            break
        left += remaining * float(seconds[p].mean())
    return Progress(phase=phase, epoch=epoch, epochs_in_phase=in_phase, done=done, total=total,
                    elapsed_s=float(elapsed_s), left_s=left, training_done=done >= total)
