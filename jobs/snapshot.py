"""The phase-1 snapshot of a run: the model at the end of phase 1, evaluated and kept as a run of its own.

When phase 1 ends (the new head trained on the frozen base), ``jobs.train`` evaluates the model as it stands
on the evaluation splits exactly as it evaluates the final model (predictions, logits and maps, through
``jobs.evaluation``) and stores the result as a snapshot: a run row with ``parent_id`` = the run and
``stage`` = "phase1", a copy of the run's image rows (same relpaths and SHA-256) and phase-1 epochs, and its
weights in ``<run dir>/phase1.pt`` (its ``checkpoint_path``). Every page and job then works on it, and
``jobs.compare`` compares a run with its own phase 1. Cost: one evaluation pass over the evaluation splits.

``--resume`` keeps it right: a complete snapshot is kept; one a kill or an error interrupted (status running or
failed) is finished from ``phase1.pt``, its complete splits kept; a run resumed before the end of phase 1
makes it when phase 1 ends. ``--no-phase1-snapshot`` turns it off; a run without phase 1 or without phase 2
(where the snapshot would be the final model) takes none.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from core import dist
from core.cammaps import DEFAULT_METHOD
from core.cache import DecodedCache
from core.data import DatasetIndex
from core.model import ModelMeta, read_checkpoint, save_checkpoint
from core.splits import VALID
from core.stages import PHASE1
from db import queries, store
from db.queries.compare import snapshot_id
from db.snapshots import create_snapshot
from jobs.evaluation import evaluate_split
from jobs.training import RunOutput, checkpoint_state

log = logging.getLogger("jobs.train")

CHECKPOINT = "phase1.pt"


@dataclasses.dataclass
class Phase1Snapshot:
    """The hook ``jobs.training.train`` calls with (model, epochs done, best so far) when phase 1 ends and
    when a resumed run starts; every rank calls it (the evaluation is sharded over them), rank 0 writes."""

    index: DatasetIndex
    meta: ModelMeta
    device: torch.device
    env: dist.DistEnv
    out: RunOutput
    epochs_frozen: int
    epochs_finetune: int
    eval_splits: Sequence[str]
    batch_size: int
    workers: int
    cams: bool
    layer: str
    cache: Optional[DecodedCache] = None  # the final evaluation's decoded cache, so both see the same pixels
    methods: Sequence[str] = (DEFAULT_METHOD,)  # the CAM methods the final evaluation stores
    seconds: Optional[float] = None  # what the last snapshot pass took, on rank 0

    @property
    def checkpoint(self) -> Path:
        return self.out.run_dir / CHECKPOINT

    @property
    def splits(self) -> list[str]:
        return [s for s in self.eval_splits if s in self.index.splits]

    def __call__(self, model: nn.Module, epochs_done: int, best: dict) -> None:
        if self.epochs_frozen < 1 or self.epochs_finetune < 1 or not self.splits or epochs_done < self.epochs_frozen:
            return
        t0 = time.perf_counter()
        plan = self._plan(model, epochs_done, best) if self.env.is_main else None
        plan = dist.broadcast_from_main(self.env, plan)
        if plan is None:
            return
        evaluated = model
        if plan["from_checkpoint"]:  # resumed in phase 2: the phase-1 weights come from phase1.pt
            evaluated = copy.deepcopy(model)
            if self.env.is_main:
                evaluated.load_state_dict(read_checkpoint(self.checkpoint)["model"])
            dist.broadcast_module(self.env, evaluated)
        sid = plan["snapshot_id"]
        try:
            for split in plan["splits"]:
                evaluate_split(self.out.Session_, sid, evaluated, self.meta, self.index, split, device=self.device,
                               env=self.env, batch_size=self.batch_size, workers=self.workers, cams=self.cams,
                               layer=self.layer, cache=self.cache, methods=self.methods)
        except BaseException as exc:
            if self.env.is_main:
                with self.out.Session_.begin() as s:
                    store.finish_run(s, sid, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        if self.env.is_main:
            self.seconds = time.perf_counter() - t0
            self._finish(sid)
        dist.barrier(self.env)

    def _plan(self, model: nn.Module, epochs_done: int, best: dict) -> Optional[dict[str, Any]]:
        """Rank 0: nothing to do (None), or the snapshot to write and the splits it still lacks."""
        S = self.out.Session_
        with S() as s:
            sid = snapshot_id(s, self.out.run_id, PHASE1)
            info = queries.run_info(s, sid) if sid is not None else None
            if info is not None and info.status == "complete":
                return None
            done = {sp for sp, e in queries.evaluation_rows(s, sid).items() if e["status"] == "complete"} \
                if sid is not None else set()
        at_end_of_phase1 = epochs_done == self.epochs_frozen
        if at_end_of_phase1:
            save_checkpoint(self.checkpoint, checkpoint_state(model, self.meta, self.out, epochs_done=epochs_done,
                                                              phase=1, best=best))
        elif not self.checkpoint.is_file():
            log.warning("phase-1 snapshot: %s is missing, so the model at the end of phase 1 is gone; the run goes "
                        "on without its snapshot", self.checkpoint)
            return None
        with S.begin() as s:
            path = str(self.checkpoint.resolve())
            if sid is None:
                sid = create_snapshot(s, self.out.run_id, PHASE1, checkpoint_path=path,
                                      through_epoch=self.epochs_frozen).id
            else:
                store.reopen_run(s, sid)
        todo = [sp for sp in self.splits if sp not in done]
        log.info("phase-1 snapshot: run %d evaluates %s as run %d%s", self.out.run_id, ", ".join(todo), sid,
                 f" (kept: {', '.join(sorted(done))})" if done else "")
        return {"snapshot_id": sid, "splits": todo, "from_checkpoint": not at_end_of_phase1}

    def _finish(self, sid: int) -> None:
        with self.out.Session_.begin() as s:
            evals = queries.evaluation_rows(s, sid)
            metrics: dict[str, Any] = {"best_val_acc": evals[VALID]["top1"] if VALID in evals else None,
                                       "snapshot_seconds": round(self.seconds or 0.0, 3)}
            for sp in self.splits:
                e = evals[sp]
                metrics[sp] = {"top1": e["top1"], "top5": e["top5"], "loss": e["loss"], "images": e["n_images"]}
            store.finish_run(s, sid, "complete", best_epoch=self.epochs_frozen, metrics=metrics, error=None)
        tops = ", ".join(f"{sp} top-1 {metrics[sp]['top1']:.4f}" for sp in self.splits
                         if metrics[sp]["top1"] is not None)
        log.info("phase-1 snapshot: run %d complete (%s) in %.1f s", sid, tops, self.seconds or 0.0)
