"""The two training phases of ``jobs.train``: loaders, optimizer and schedule per phase, the epoch loop that
writes an epoch row and a checkpoint after every epoch, and the checkpoint's contents.

Phase 1 trains the new layers with the VGG-19 base frozen (the base runs without an autograd graph);
phase 2 fine-tunes everything at a lower learning rate with a warm-up and a cosine schedule.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from sqlalchemy.orm import Session, sessionmaker
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core import dist
from core.cache import DecodedCache
from core.data import DatasetIndex
from core.engine import Skipped, choose_precision, evaluate, train_one_epoch
from core.feed import split_feed
from core.model import ModelMeta, SportsVGG, save_checkpoint
from core.splits import TRAIN, VALID
from db import store

log = logging.getLogger("jobs.train")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What the training loop needs of the command line."""

    epochs_frozen: int
    epochs_finetune: int
    lr_frozen: float
    lr_finetune: float
    weight_decay: float
    warmup_steps: int
    batch_size: int
    image_size: int
    seed: int
    workers: int
    clip_norm: float
    label_smoothing: float
    amp: bool
    precision: Optional[str] = None  # core.engine.PRECISIONS; None: the device's default

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainSettings":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class RunOutput:
    """Where a run's results go: the store (rank 0 only; None on the other ranks), the run's id in it, its
    checkpoint folder, and the job's flags as saved in every checkpoint (``--resume`` restores them)."""

    Session_: Optional[sessionmaker[Session]]
    run_id: int
    run_dir: Path
    saved_args: dict[str, Any]


def phase_of(global_epoch: int, e1: int) -> int:
    return 1 if global_epoch < e1 else 2


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0.01 at step ``total``."""
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    t = min(1.0, step / max(total, 1))
    return ramp * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def make_optimizer(model: SportsVGG, phase: int, settings, steps_per_epoch: int = 1):
    """AdamW over the layers that train in ``phase`` and its per-step schedule.

    ``settings`` has the fields of :class:`TrainSettings` that name rates and epochs. Phase 1 keeps its rate
    constant; phase 2 warms up over ``warmup_steps`` (the fine-tuned base must not take full-size steps
    while the head is still settling) and then follows a cosine to 1 % of the peak.
    """
    if phase == 1:
        for p in model.base_parameters():
            p.requires_grad_(False)
        params, lr = model.head_parameters(), settings.lr_frozen
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        params, lr = list(model.parameters()), settings.lr_finetune
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
    if phase == 1:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    else:
        total = max(1, settings.epochs_finetune * steps_per_epoch)
        warmup = min(getattr(settings, "warmup_steps", 0), total // 2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup))
    return opt, sched


def wrap(model: nn.Module, env: dist.DistEnv, device: torch.device) -> nn.Module:
    if not env.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def train(model: SportsVGG, *, settings: TrainSettings, index: DatasetIndex, meta: ModelMeta,
          device: torch.device, env: dist.DistEnv, out: RunOutput,
          resume_state: Optional[dict[str, Any]] = None, cache: Optional[DecodedCache] = None,
          phase1_hook: Optional[Callable[[nn.Module, int, dict], None]] = None) -> dict:
    """Both phases; returns {'acc', 'epoch'} of the best validation accuracy.

    With ``cache`` the loaders read the decoded cache (the first epoch writes it when absent), else the
    JPEG files. ``phase1_hook(model, epochs_done, best)`` (``jobs.snapshot``) runs on every rank when phase 1
    ends and, for a resumed run, before training goes on.
    """
    e1, e2 = settings.epochs_frozen, settings.epochs_finetune
    total = e1 + e2
    feed = dict(size=settings.image_size, batch_size=settings.batch_size, env=env, device=device,
                seed=settings.seed, mean=meta.mean, std=meta.std, workers=settings.workers, cache=cache)
    train_ds, sampler, train_loader = split_feed(index, TRAIN, train=True, **feed)
    val_loader = split_feed(index, VALID, train=False, **feed).loader if VALID in index.splits else None
    precision = choose_precision(device, settings.precision, amp=settings.amp)
    scaler = precision.make_scaler()
    start, best = 0, {"acc": -1.0, "epoch": None}
    opt = sched = None
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        start = int(resume_state["epochs_done"])
        best = dict(resume_state["best"])
        if start < total:
            opt, sched = make_optimizer(model, phase_of(start, e1), settings, len(train_loader))
            if resume_state.get("phase") == phase_of(start, e1) and resume_state.get("optimizer"):
                opt.load_state_dict(resume_state["optimizer"])
                sched.load_state_dict(resume_state["scheduler"])
                if scaler is not None and resume_state.get("scaler"):
                    scaler.load_state_dict(resume_state["scaler"])
        if phase1_hook is not None:
            phase1_hook(model, start, best)
    ddp = None
    for g in range(start, total):
        phase = phase_of(g, e1)
        if opt is None or g == e1 or ddp is None:
            if opt is None or g == e1:
                opt, sched = make_optimizer(model, phase, settings, len(train_loader))
            ddp = wrap(model, env, device)  # DDP sees the parameters that train in this phase
        torch.manual_seed(settings.seed * 100_003 + g)  # dropout draws: reproducible across a resume
        sampler.set_epoch(g)
        train_ds.set_epoch(g)
        t0 = time.perf_counter()
        skipped = Skipped()
        epoch_in_phase = g + 1 if phase == 1 else g - e1 + 1
        tr = train_one_epoch(ddp, train_loader, opt, device, frozen_base=phase == 1, scaler=scaler, env=env,
                             clip_norm=settings.clip_norm, scheduler=sched, precision=precision,
                             label_smoothing=settings.label_smoothing, skipped=skipped,
                             desc=f"phase {phase} epoch {epoch_in_phase}")
        lr = opt.param_groups[0]["lr"]  # the rate the epoch ended with (the schedule steps per batch)
        va = evaluate(model, val_loader, device, amp=precision, env=env, skipped=Skipped()) \
            if val_loader is not None else None
        seconds = time.perf_counter() - t0
        skipped_here = dist.gather_to_main(env, skipped.items)  # each rank meets the bad files of its own shard
        acc = va["acc"] if va else tr["acc"]
        improved = acc > best["acc"]
        if improved:
            best = {"acc": acc, "epoch": g + 1}
        log.info("phase %d epoch %d/%d: train loss %.4f acc %.4f%s lr %.2e %.1fs%s", phase, epoch_in_phase,
                 e1 if phase == 1 else e2, tr["loss"], tr["acc"],
                 f", valid loss {va['loss']:.4f} acc {va['acc']:.4f}" if va else "", lr, seconds,
                 " (best)" if improved else "")
        if env.is_main:
            with out.Session_.begin() as s:
                bad = {i: r for items in skipped_here for i, r in items.items()}
                if bad:
                    store.upsert_images(s, out.run_id, [
                        store.ImageRecord(TRAIN, train_ds.samples[i].relpath, train_ds.samples[i].label,
                                          skipped=True, skip_reason=r) for i, r in bad.items()])
                store.add_epoch(s, out.run_id, phase=phase, epoch=epoch_in_phase, global_epoch=g + 1,
                                train_loss=tr["loss"], train_acc=tr["acc"],
                                val_loss=va["loss"] if va else None, val_acc=va["acc"] if va else None,
                                lr=lr, seconds=seconds)
            # The epoch row goes in before the checkpoint: a kill between the two makes --resume redo the
            # epoch (its row is replaced), never leaves a checkpoint whose epoch the store lacks.
            state = checkpoint_state(model, meta, out, epochs_done=g + 1, phase=phase, best=best, opt=opt,
                                     sched=sched, scaler=scaler)
            if improved:
                save_checkpoint(out.run_dir / "best.pt", state)
            save_checkpoint(out.run_dir / "last.pt", state)
        dist.barrier(env)
        if phase1_hook is not None and g + 1 == e1:
            phase1_hook(model, g + 1, best)
    if total == 0 and env.is_main:
        state = checkpoint_state(model, meta, out, epochs_done=0, phase=1, best=best)
        save_checkpoint(out.run_dir / "last.pt", state)
        save_checkpoint(out.run_dir / "best.pt", state)
    return best


def checkpoint_state(model: nn.Module, meta: ModelMeta, out: RunOutput, *, epochs_done: int, phase: int,
                     best: dict, opt=None, sched=None, scaler=None) -> dict:
    """A plain dict of tensors and plain data, loadable with ``torch.load(..., weights_only=True)``."""
    return {
        "model": model.state_dict(),
        "meta": meta.to_dict(),
        "args": dict(out.saved_args),
        "run_id": out.run_id,
        "run_dir": str(out.run_dir),
        "epochs_done": epochs_done,
        "phase": phase,
        "best": best,
        "optimizer": opt.state_dict() if opt is not None else None,
        "scheduler": sched.state_dict() if sched is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
