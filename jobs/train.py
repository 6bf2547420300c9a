"""Train the two phases, keep the best checkpoint, then write predictions and Grad-CAM maps to the store.

    python -m jobs.train --data PATH          # the Kaggle "100 Sports Image Classification" folder
    python -m jobs.train                      # the built-in synthetic demo, on the CPU in minutes
    torchrun --nproc_per_node=N -m jobs.train --data PATH   # DistributedDataParallel, same flags

Phase 1 trains the new layers with the VGG-19 base frozen (the base runs without an autograd graph);
phase 2 fine-tunes everything at a lower learning rate with a cosine schedule.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core import dist
from core.data import DatasetIndex, ImageDataset, collate, discover, file_sha256, read_image_header
from core.engine import Skipped, evaluate, train_one_epoch
from core.model import (
    DEFAULT_CAM_LAYER,
    MIN_IMAGE_SIZE,
    CheckpointError,
    ModelMeta,
    SportsVGG,
    build_model,
    imagenet_weights_cached,
    load_imagenet_base,
    read_checkpoint,
    resolve_module,
    save_checkpoint,
)
from db import store
from jobs.common import add_db_arg, run_cli, run_distributed
from jobs.evaluation import evaluate_split

log = logging.getLogger("jobs.train")

# Defaults for real data (the published method at 224 px) and for the synthetic demo on a CPU.
REAL_DEFAULTS = dict(epochs_frozen=3, epochs_finetune=10, lr_frozen=1e-3, lr_finetune=1e-4, batch_size=64,
                     image_size=224, weights="imagenet", dropout=0.5, cam_layer=DEFAULT_CAM_LAYER)
# The demo trains VGG-19 from scratch (no ImageNet weights offline): the frozen random base teaches the head
# little, so phase 1 is one short epoch and phase 2 does the work, at a higher rate, with small batches for
# more steps, at 48 px to fit a 2-core CPU in minutes. At 48 px features.35 is a 3x3 grid, too coarse to say
# where an object is (its peak hit the object box in 56 % of correct test images); features.26, the ReLU
# after conv4_4, is 6x6 there (93 %).
DEMO_DEFAULTS = dict(epochs_frozen=1, epochs_finetune=12, lr_frozen=1e-3, lr_finetune=3e-4, batch_size=16,
                     image_size=48, weights="auto", dropout=0.2, cam_layer="features.26")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description="Fine-tune VGG-19 on the sports dataset in two phases and write predictions and "
        "Grad-CAM maps to the results store. Without --data, trains the built-in synthetic demo.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=None, help="dataset folder (train/ valid/ test/ and/or sports.csv); "
                   "omitted: generate and train the synthetic demo set")
    add_db_arg(p)
    p.add_argument("--out", default="runs/checkpoints", help="folder for checkpoints, one subfolder per run")
    p.add_argument("--weights", default=None, help="imagenet | none | PATH to a VGG-19 state dict "
                   "(default: imagenet for real data; the demo uses imagenet only when already cached)")
    def per_mode(flag: str, type_, what: str) -> None:
        """A flag whose default differs between real data and the demo; both defaults go in its help."""
        key = flag[2:].replace("-", "_")
        p.add_argument(flag, type=type_, default=None,
                       help=f"{what} (default: {REAL_DEFAULTS[key]}, demo {DEMO_DEFAULTS[key]})")

    per_mode("--epochs-frozen", int, "phase 1 epochs, base frozen")
    per_mode("--epochs-finetune", int, "phase 2 epochs, everything trains")
    per_mode("--lr-frozen", float, "phase 1 AdamW learning rate")
    per_mode("--lr-finetune", float, "phase 2 peak AdamW learning rate, warmed up then cosine-annealed")
    per_mode("--batch-size", int, "images per batch and process")
    per_mode("--image-size", int, f"square input size in pixels, at least {MIN_IMAGE_SIZE}")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--dropout", type=float, default=None,
                   help=f"dropout of the new classifier (default: {REAL_DEFAULTS['dropout']}, demo "
                   f"{DEMO_DEFAULTS['dropout']})")
    p.add_argument("--warmup-steps", type=int, default=100, help="phase 2 linear learning-rate warm-up, in steps")
    p.add_argument("--clip-norm", type=float, default=5.0, help="gradient norm clipping (0 disables)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto takes the GPU when there is one")
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast + GradScaler) on CUDA")
    p.add_argument("--workers", type=int, default=2, help="data-loader worker processes per rank")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    p.add_argument("--run-name", default=None, help="name of the run in the store (default: data folder + time)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue an interrupted run: its last.pt under --out (the newest one, or the one of "
                   "--run-name), or the CHECKPOINT given")
    p.add_argument("--cam-layer", default=None,
                   help=f"module path of the Grad-CAM target layer (default: {REAL_DEFAULTS['cam_layer']}, the ReLU "
                   f"after conv5_4; demo {DEMO_DEFAULTS['cam_layer']})")
    p.add_argument("--no-cams", action="store_true", help="write predictions without Grad-CAM maps")
    p.add_argument("--eval-splits", default="valid,test",
                   help="splits to predict after training (comma-separated; add train on request)")
    p.add_argument("--audit", action="store_true", help="audit the data (duplicates, leakage, suspect labels) "
                   "when training ends, as python -m jobs.audit does")
    p.add_argument("--demo-root", default=None, help="cache folder of the demo set (default: $SPORTS_CACHE or "
                   "~/.cache/sports-cam)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


# --------------------------------------------------------------------------- set-up

def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left unset from the real-data or the demo defaults."""
    defaults = DEMO_DEFAULTS if args.data is None else REAL_DEFAULTS
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.weights == "auto":
        args.weights = "imagenet" if imagenet_weights_cached() else "none"
    if args.image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image-size {args.image_size}: must be at least {MIN_IMAGE_SIZE}")
    for flag in ("epochs_frozen", "epochs_finetune"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be 0 or more, got {getattr(args, flag)}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.run_name is not None and not 0 < len(args.run_name) <= 200:
        raise ValueError(f"--run-name must have 1 to 200 characters, got {len(args.run_name)}")
    bad = [s for s in args.eval_splits.split(",") if s and s not in ("train", "valid", "test")]
    if bad:
        raise ValueError(f"--eval-splits: unknown split(s) {bad}, expected train, valid, test")
    return args


def slug(name: str) -> str:
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


def find_resume_checkpoint(args: argparse.Namespace) -> Path:
    if args.resume != "auto":
        return Path(args.resume)
    out = Path(args.out)
    if args.run_name:
        base = slug(args.run_name)
        found = sorted((p for p in [out / base / "last.pt", *out.glob(f"{base}-*/last.pt")] if p.is_file()),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise CheckpointError(f"--resume: no checkpoint {out / base / 'last.pt'} for run name {args.run_name!r}")
        return found[-1]
    found = sorted(out.glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CheckpointError(f"--resume: no */last.pt under {out}; nothing to resume")
    return found[-1]


def prepare_dataset(args: argparse.Namespace, env: dist.DistEnv) -> DatasetIndex:
    """The dataset of ``--data``, or the demo set (generated once into its cache folder).

    A ``boxes.json`` beside the data (relative path -> [x0, y0, x1, y1]; the demo writes one) gives each image
    its object box, which the store keeps for the localisation checks.
    """
    from core.synth import default_demo_root, generate_demo_dataset, load_boxes

    if args.data is not None:
        root = Path(args.data)
        return discover(root, boxes=load_boxes(root) if (root / "boxes.json").is_file() else None)

    root = Path(args.demo_root) if args.demo_root else default_demo_root(seed=args.seed)
    if env.is_main:
        log.info("demo: synthetic data set in %s", root)
        generate_demo_dataset(root, seed=args.seed)
    dist.barrier(env)
    return discover(root, boxes=load_boxes(root))


def image_records(index: DatasetIndex) -> list[store.ImageRecord]:
    """One record per image of every split, with its size from the file header (no decoding) and the
    SHA-256 of its bytes."""
    records = []
    for split, samples in index.splits.items():
        for s in samples:
            size, reason = read_image_header(index.root / s.relpath)
            records.append(store.ImageRecord(
                split, s.relpath, s.label, width=size[0] if size else None, height=size[1] if size else None,
                skipped=reason is not None, skip_reason=reason, bbox=list(s.bbox) if s.bbox else None,
                sha256=file_sha256(index.root / s.relpath)))
    return records


def make_train_loader(ds: ImageDataset, args: argparse.Namespace, env: dist.DistEnv):
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=env.world_size, rank=env.rank,
                                                  shuffle=True, seed=args.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                         collate_fn=collate, pin_memory=torch.cuda.is_available(),
                                         persistent_workers=False, drop_last=False)
    return sampler, loader


def make_val_loader(ds: ImageDataset, args: argparse.Namespace, env: dist.DistEnv):
    sub = torch.utils.data.Subset(ds, dist.shard(len(ds), env))
    return torch.utils.data.DataLoader(sub, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                                       collate_fn=collate, pin_memory=torch.cuda.is_available())


@dataclasses.dataclass
class Phase:
    number: int  # 1 or 2
    epochs: int
    first_global: int  # global epoch index (0-based) of its first epoch


def phase_of(global_epoch: int, e1: int) -> int:
    return 1 if global_epoch < e1 else 2


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0.01 at step ``total``."""
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    t = min(1.0, step / max(total, 1))
    return ramp * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def make_optimizer(model: SportsVGG, phase: int, args: argparse.Namespace, steps_per_epoch: int = 1):
    """AdamW over the layers that train in ``phase`` and its per-step schedule.

    Phase 1 keeps its rate constant; phase 2 warms up over ``--warmup-steps`` (the fine-tuned base must not
    take full-size steps while the head is still settling) and then follows a cosine to 1 % of the peak.
    """
    if phase == 1:
        for p in model.base_parameters():
            p.requires_grad_(False)
        params, lr = model.head_parameters(), args.lr_frozen
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        params, lr = list(model.parameters()), args.lr_finetune
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    if phase == 1:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    else:
        total = max(1, args.epochs_finetune * steps_per_epoch)
        warmup = min(getattr(args, "warmup_steps", 0), total // 2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup))
    return opt, sched


def wrap(model: nn.Module, env: dist.DistEnv, device: torch.device) -> nn.Module:
    if not env.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# --------------------------------------------------------------------------- main

def main(args: argparse.Namespace) -> int:
    return run_distributed(args, _main)


def _main(args: argparse.Namespace, device: torch.device, env: dist.DistEnv) -> int:
    resume_state: Optional[dict[str, Any]] = None
    if args.resume:
        if env.is_main:  # rank 0 alone writes checkpoints, so it alone need see them (other nodes may not)
            ckpt_path = find_resume_checkpoint(args)
            resume_state = read_checkpoint(ckpt_path)
            log.info("resuming from %s (%d epochs done)", ckpt_path, resume_state["epochs_done"])
        resume_state = dist.broadcast_from_main(env, resume_state)
        saved = resume_state.get("args", {})
        # The run continues with its own configuration; only where-to-run flags may change.
        keep = {"device", "amp", "workers", "db", "out", "verbose", "resume"}
        for k, v in saved.items():
            if k not in keep and hasattr(args, k):
                setattr(args, k, v)
    args = resolve_defaults(args)
    if args.amp and device.type != "cuda":
        log.warning("--amp has no effect on the CPU; training in float32")
    torch.manual_seed(args.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True

    index = prepare_dataset(args, env)
    log.info("dataset %s: %s", index.root, index.summary())
    for split, why in index.absent.items():
        log.warning("split %s is absent (%s): %s", split, why,
                    "no test evaluation" if split == "test" else "not evaluated")
    if "valid" not in index.splits:
        log.warning("no validation split: the best checkpoint is the last one")

    meta = ModelMeta(class_names=index.classes, image_size=args.image_size, cam_layer=args.cam_layer,
                     dropout=args.dropout, extra={"weights": args.weights})
    model = build_model(meta)
    resolve_module(model, args.cam_layer)  # fail early on a wrong --cam-layer
    weights_desc = args.weights
    if resume_state is None:
        weights_desc = load_imagenet_base(model, args.weights)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    Session_ = None
    run_id: Optional[int] = None
    if env.is_main:
        engine = store.make_engine(args.db)
        Session_ = store.make_sessionmaker(engine)
    config = {k: v for k, v in vars(args).items() if k not in ("verbose",)}
    config["world_size"] = env.world_size
    if resume_state is not None:
        run_id = int(resume_state["run_id"])
        run_dir = Path(resume_state["run_dir"])
        if env.is_main:
            with Session_.begin() as s:
                run = s.get(store.Run, run_id)
                if run is None:
                    raise CheckpointError(f"checkpoint belongs to run {run_id}, which the store {args.db or ''} "
                                          "does not hold")
                run.status, run.error = "running", None
                store.delete_epochs_after(s, run_id, resume_state["epochs_done"])
    else:
        name = args.run_name or f"{'demo' if args.data is None else Path(args.data).name}-" \
                                f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        # Rank 0 decides the name (the clock) and the folder (its disk); the other ranks take both.
        name, run_dir = dist.broadcast_from_main(
            env, (name, fresh_run_dir(Path(args.out), name)) if env.is_main else None)
        args.run_name = name
        config["run_name"] = name
        config["run_dir"] = str(run_dir.resolve())  # where jobs.cams finds the checkpoints of an unfinished run
        if env.is_main:
            with Session_.begin() as s:
                run = store.create_run(s, name=name, config=config, data_root=str(index.root.resolve()),
                                       device=str(device) + (f" x{env.world_size}" if env.distributed else ""),
                                       weights=weights_desc[:300], image_size=args.image_size, cam_layer=args.cam_layer,
                                       class_names=index.classes, absent_splits=index.absent)
                run_id = run.id
                store.upsert_images(s, run_id, image_records(index))
            log.info("run %d %r started; checkpoints in %s", run_id, name, run_dir)
        run_id = dist.broadcast_from_main(env, run_id)
    try:
        best = train(model, args, index, meta, device, env, Session_, run_id, run_dir, resume_state, weights_desc)
        finish(model, args, index, meta, device, env, Session_, run_id, run_dir, best)
    except BaseException as exc:
        if env.is_main and Session_ is not None and run_id is not None:
            with Session_.begin() as s:
                store.finish_run(s, run_id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return 0


def train(model, args, index, meta, device, env, Session_, run_id, run_dir, resume_state, weights_desc) -> dict:
    """Both phases; returns {'acc', 'epoch'} of the best validation accuracy."""
    e1, e2 = args.epochs_frozen, args.epochs_finetune
    total = e1 + e2
    train_ds = ImageDataset(index.root, index.splits["train"], args.image_size, train=True, seed=args.seed,
                            mean=meta.mean, std=meta.std)
    sampler, train_loader = make_train_loader(train_ds, args, env)
    val_loader = None
    if "valid" in index.splits:
        val_ds = ImageDataset(index.root, index.splits["valid"], args.image_size, train=False,
                              mean=meta.mean, std=meta.std)
        val_loader = make_val_loader(val_ds, args, env)
    scaler = torch.amp.GradScaler("cuda") if (args.amp and device.type == "cuda") else None
    start, best = 0, {"acc": -1.0, "epoch": None}
    opt = sched = None
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        start = int(resume_state["epochs_done"])
        best = dict(resume_state["best"])
        if start < total:
            opt, sched = make_optimizer(model, phase_of(start, e1), args, len(train_loader))
            if resume_state.get("phase") == phase_of(start, e1) and resume_state.get("optimizer"):
                opt.load_state_dict(resume_state["optimizer"])
                sched.load_state_dict(resume_state["scheduler"])
                if scaler is not None and resume_state.get("scaler"):
                    scaler.load_state_dict(resume_state["scaler"])
    ddp = None
    for g in range(start, total):
        phase = phase_of(g, e1)
        if opt is None or g == e1 or ddp is None:
            if opt is None or g == e1:
                opt, sched = make_optimizer(model, phase, args, len(train_loader))
            ddp = wrap(model, env, device)  # DDP sees the parameters that train in this phase
        torch.manual_seed(args.seed * 100_003 + g)  # dropout draws: reproducible across a resume
        sampler.set_epoch(g)
        train_ds.set_epoch(g)
        t0 = time.perf_counter()
        skipped = Skipped()
        epoch_in_phase = g + 1 if phase == 1 else g - e1 + 1
        tr = train_one_epoch(ddp, train_loader, opt, device, frozen_base=phase == 1, scaler=scaler, env=env,
                             clip_norm=args.clip_norm, scheduler=sched,
                             skipped=skipped, desc=f"phase {phase} epoch {epoch_in_phase}")
        lr = opt.param_groups[0]["lr"]  # the rate the epoch ended with (the schedule steps per batch)
        va = evaluate(model, val_loader, device, amp=args.amp, env=env, skipped=Skipped()) \
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
            with Session_.begin() as s:
                bad = {i: r for items in skipped_here for i, r in items.items()}
                if bad:
                    store.upsert_images(s, run_id, [
                        store.ImageRecord("train", train_ds.samples[i].relpath, train_ds.samples[i].label,
                                          skipped=True, skip_reason=r) for i, r in bad.items()])
                store.add_epoch(s, run_id, phase=phase, epoch=epoch_in_phase, global_epoch=g + 1,
                                train_loss=tr["loss"], train_acc=tr["acc"],
                                val_loss=va["loss"] if va else None, val_acc=va["acc"] if va else None,
                                lr=lr, seconds=seconds)
            # The epoch row goes in before the checkpoint: a kill between the two makes --resume redo the
            # epoch (its row is replaced), never leaves a checkpoint whose epoch the store lacks.
            state = checkpoint_state(model, meta, args, run_id, run_dir, g + 1, phase, best, opt, sched, scaler)
            if improved:
                save_checkpoint(run_dir / "best.pt", state)
            save_checkpoint(run_dir / "last.pt", state)
        dist.barrier(env)
    if total == 0 and env.is_main:
        state = checkpoint_state(model, meta, args, run_id, run_dir, 0, 1, best, None, None, None)
        save_checkpoint(run_dir / "last.pt", state)
        save_checkpoint(run_dir / "best.pt", state)
    return best


def checkpoint_state(model, meta, args, run_id, run_dir, epochs_done, phase, best, opt, sched, scaler) -> dict:
    return {
        "model": model.state_dict(),
        "meta": meta.to_dict(),
        "args": {k: v for k, v in vars(args).items()},
        "run_id": run_id,
        "run_dir": str(run_dir),
        "epochs_done": epochs_done,
        "phase": phase,
        "best": best,
        "optimizer": opt.state_dict() if opt is not None else None,
        "scheduler": sched.state_dict() if sched is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }


def finish(model, args, index, meta, device, env, Session_, run_id, run_dir, best) -> None:
    """Reload the best weights, evaluate the requested splits, and mark the run complete."""
    best_path = run_dir / "best.pt"
    if env.is_main and not best_path.is_file():
        raise CheckpointError(f"{best_path}: the best checkpoint is missing")
    if env.is_main:
        model.load_state_dict(read_checkpoint(best_path)["model"])
    dist.broadcast_module(env, model)  # other nodes need not see rank 0's checkpoint folder
    model.eval()
    splits = [s for s in args.eval_splits.split(",") if s in index.splits]
    results = {}
    for split in splits:
        results[split] = evaluate_split(Session_, run_id, model, meta, index, split, device=device, env=env,
                                        batch_size=args.batch_size, workers=args.workers,
                                        cams=not args.no_cams, layer=args.cam_layer)
    if env.is_main:
        metrics = {"best_val_acc": best["acc"] if "valid" in index.splits else None}
        for split, r in results.items():
            metrics[split] = {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"], "images": r["n_images"]}
        with Session_.begin() as s:
            store.finish_run(s, run_id, "complete", best_epoch=best["epoch"], metrics=metrics,
                             checkpoint_path=str(best_path.resolve()))
        log.info("run %d complete: %s", run_id, json.dumps(metrics))
        if args.audit:
            from jobs.audit import audit_run, format_summary

            with Session_.begin() as s:
                report = audit_run(s, run_id)
            log.info("data audit:\n%s", format_summary(*report))
    dist.barrier(env)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
