"""Train the two phases, keep the best checkpoint, then write predictions and Grad-CAM maps to the store.

    python -m jobs.train --data PATH          # the Kaggle "100 Sports Image Classification" folder
    python -m jobs.train                      # the built-in synthetic demo, on the CPU in minutes
    torchrun --nproc_per_node=N -m jobs.train --data PATH   # DistributedDataParallel, same flags

Phase 1 trains the new layers with the VGG-19 base frozen (the base runs without an autograd graph);
phase 2 fine-tunes everything at a lower learning rate with a cosine schedule.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from core.cache import ENV_VAR as CACHE_ENV_VAR
from core.cammaps import GRADIENT_METHODS, parse_methods
from core.defaults import DEFAULT_CAM_LAYER, MIN_IMAGE_SIZE, PRECISIONS, SCORECAM_COST
from core.errors import CheckpointError
from core.splits import EVAL_SPLITS, SPLITS, TEST, VALID
from db import store, storecheck
from jobs.common import DefaultsHelpFormatter, add_db_arg, run_cli, run_distributed
from jobs.corrections import add_correction_args
from jobs.rundir import DEFAULT_OUT, find_resume_checkpoint, fresh_run_dir

if TYPE_CHECKING:  # torch and the model load when the job runs, not for --help
    import torch
    from torch import nn

    from core import dist
    from core.cache import DecodedCache
    from core.data import DatasetIndex
    from core.model import ModelMeta
    from jobs.training import RunOutput

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
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--data", default=None, help="dataset folder (train/ valid/ test/ and/or sports.csv) "
                   "(default: none: the synthetic demo set is generated and trained)")
    add_db_arg(p)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for checkpoints, one subfolder per run")

    def per_mode(flag: str, type_, what: str) -> None:
        """A flag whose default differs between real data and the demo; both defaults go in its help."""
        key = flag[2:].replace("-", "_")
        p.add_argument(flag, type=type_, default=None,
                       help=f"{what} (default: {REAL_DEFAULTS[key]}, demo {DEMO_DEFAULTS[key]})")

    per_mode("--weights", str, "imagenet | none | PATH to a VGG-19 state dict; auto: imagenet when its weights "
             "are already cached, else none")
    per_mode("--epochs-frozen", int, "phase 1 epochs, base frozen")
    per_mode("--epochs-finetune", int, "phase 2 epochs, everything trains")
    per_mode("--lr-frozen", float, "phase 1 AdamW learning rate")
    per_mode("--lr-finetune", float, "phase 2 peak AdamW learning rate, warmed up then cosine-annealed")
    per_mode("--batch-size", int, "images per batch and process")
    per_mode("--image-size", int, f"square input size in pixels, at least {MIN_IMAGE_SIZE}")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    per_mode("--dropout", float, "dropout of the new classifier")
    p.add_argument("--warmup-steps", type=int, default=100, help="phase 2 linear learning-rate warm-up, in steps")
    p.add_argument("--clip-norm", type=float, default=5.0, help="gradient norm clipping (0 disables)")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="label smoothing of the training loss (0: plain cross-entropy)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto takes the GPU when there is one")
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast + GradScaler) on CUDA, "
                   "as --precision fp16")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="arithmetic of the forward pass "
                   "(default: bf16 on a GPU that has it, else fp16 with a GradScaler; fp32 on the CPU)")
    p.add_argument("--cache-dir", default=None, help="folder of the decoded cache, written by the first epoch or "
                   f"ahead by python -m jobs.cache (default: ${CACHE_ENV_VAR}, else ~/.cache/sports-cam/decoded)")
    p.add_argument("--no-cache", action="store_true", help="read and decode the JPEG files every epoch")
    p.add_argument("--workers", type=int, default=2, help="data-loader worker processes per rank")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    p.add_argument("--run-name", default=None, help="name of the run in the store (default: data folder + time)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue an interrupted run: its last.pt under --out (the newest one, or the one of "
                   "--run-name), or the CHECKPOINT given (default: none, a new run starts)")
    per_mode("--cam-layer", str, f"module path of the Grad-CAM target layer ({DEFAULT_CAM_LAYER} is the ReLU "
             "after conv5_4)")
    p.add_argument("--no-cams", action="store_true", help="write predictions without Grad-CAM maps")
    p.add_argument("--cam-methods", default=",".join(GRADIENT_METHODS),
                   help="comma-separated CAM methods whose maps the evaluation stores; the gradient methods share "
                   "one forward and backward (together about the cost of inference), eigencam needs no backward, "
                   f"scorecam is opt-in: {SCORECAM_COST}")
    p.add_argument("--no-phase1-snapshot", action="store_true",
                   help="do not evaluate and keep the model at the end of phase 1 as a snapshot of the run "
                   "(run '<name>:phase1', which python -m jobs.compare compares with the final model)")
    p.add_argument("--eval-splits", default=",".join(EVAL_SPLITS),
                   help="splits to predict after training (comma-separated; add train on request)")
    p.add_argument("--audit", action="store_true", help="audit the data (duplicates, leakage, suspect labels) "
                   "when training ends, as python -m jobs.audit does")
    p.add_argument("--demo-root", default=None, help="cache folder of the demo set (default: $SPORTS_CACHE or "
                   "~/.cache/sports-cam)")
    add_correction_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


# --------------------------------------------------------------------------- set-up

def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left unset from the real-data or the demo defaults."""
    from core.model import imagenet_weights_cached

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
    try:
        parse_methods(args.cam_methods)
    except ValueError as exc:
        raise ValueError(f"--cam-methods: {exc}") from None
    bad = [s for s in args.eval_splits.split(",") if s and s not in SPLITS]
    if bad:
        raise ValueError(f"--eval-splits: unknown split(s) {bad}, expected {', '.join(SPLITS)}")
    return args


def prepare_dataset(args: argparse.Namespace, env: dist.DistEnv) -> DatasetIndex:
    """The dataset of ``--data``, or the demo set (generated once into its cache folder).

    A ``boxes.json`` beside the data (relative path -> [x0, y0, x1, y1]; the demo writes one) gives each image
    its object box, which the store keeps for the localisation checks.
    """
    from core import dist
    from core.data import discover
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
    from core.data import file_sha256, read_image_header

    records = []
    for split, samples in index.splits.items():
        for s in samples:
            size, reason = read_image_header(index.root / s.relpath)
            records.append(store.ImageRecord(
                split, s.relpath, s.label, width=size[0] if size else None, height=size[1] if size else None,
                skipped=reason is not None, skip_reason=reason, bbox=list(s.bbox) if s.bbox else None,
                sha256=file_sha256(index.root / s.relpath)))
    return records


# --------------------------------------------------------------------------- main

def main(args: argparse.Namespace) -> int:
    if int(os.environ.get("RANK", "0")) == 0:
        storecheck.check_writable(args.db)  # before the data, the model and the epochs: not after them
    return run_distributed(args, _main)


def _main(args: argparse.Namespace, device: torch.device, env: dist.DistEnv) -> int:
    import torch

    from core import dist
    from core.cache import DecodedCache
    from core.data import DatasetError
    from core.engine import choose_precision
    from core.gradcam import check_methods_for_layer
    from core.model import ModelMeta, build_model, load_imagenet_base, read_checkpoint, resolve_module
    from jobs.checks import unusable_split
    from jobs.corrections import apply_reviews
    from jobs.snapshot import Phase1Snapshot
    from jobs.training import RunOutput, TrainSettings, train

    resume_state: Optional[dict[str, Any]] = None
    if args.resume:
        if env.is_main:  # rank 0 alone writes checkpoints, so it alone need see them (other nodes may not)
            ckpt_path = find_resume_checkpoint(args.resume, Path(args.out), args.run_name)
            resume_state = read_checkpoint(ckpt_path)
            log.info("resuming from %s (%d epochs done)", ckpt_path, resume_state["epochs_done"])
        resume_state = dist.broadcast_from_main(env, resume_state)
        saved = resume_state.get("args", {})
        # The run continues with its own configuration; only where-to-run flags may change.
        keep = {"device", "amp", "precision", "cache_dir", "no_cache", "workers", "db", "out", "verbose", "resume"}
        for k, v in saved.items():
            if k not in keep and hasattr(args, k):
                setattr(args, k, v)
    args = resolve_defaults(args)
    args.precision = choose_precision(device, args.precision, amp=args.amp).name  # the run records its choice
    if args.amp and device.type != "cuda":
        log.warning("--amp has no effect on the CPU; training in float32")
    cache = None if args.no_cache else DecodedCache(args.cache_dir, workers=args.workers)
    log.info("precision %s; %s", args.precision,
             "reading the JPEG files" if cache is None else f"decoded cache in {cache.root}")
    torch.manual_seed(args.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True

    index = apply_reviews(args, prepare_dataset(args, env), env)
    log.info("dataset %s: %s", index.root, index.summary())
    for split, why in index.absent.items():
        log.warning("split %s is absent (%s): %s", split, why,
                    "no test evaluation" if split == TEST else "not evaluated")
    if VALID not in index.splits:
        log.warning("no validation split: the best checkpoint is the last one")

    meta = ModelMeta(class_names=index.classes, image_size=args.image_size, cam_layer=args.cam_layer,
                     dropout=args.dropout, extra={"weights": args.weights})
    model = build_model(meta)
    resolve_module(model, args.cam_layer)  # fail early on a wrong --cam-layer
    if not args.no_cams:  # and on a method the layer cannot take (Score-CAM on thousands of channels)
        check_methods_for_layer(model, parse_methods(args.cam_methods), args.cam_layer, args.image_size)
    weights_desc = args.weights
    if resume_state is None:
        weights_desc = load_imagenet_base(model, args.weights)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    Session_ = None
    run_id: Optional[int] = None
    unusable: Optional[str] = None
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
                if not store.reopen_run(s, run_id):
                    raise CheckpointError(f"checkpoint belongs to run {run_id}, which the store {args.db or ''} "
                                          "does not hold")
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
                records = image_records(index)
                store.upsert_images(s, run_id, records)
            unusable = unusable_split(records, run_id, args.db)
            log.info("run %d %r started; checkpoints in %s", run_id, name, run_dir)
        run_id = dist.broadcast_from_main(env, run_id)
    out = RunOutput(Session_=Session_, run_id=run_id, run_dir=run_dir, saved_args=dict(vars(args)))
    eval_splits = [s for s in args.eval_splits.split(",") if s]
    snapshot = None if args.no_phase1_snapshot else Phase1Snapshot(
        index=index, meta=meta, device=device, env=env, out=out, epochs_frozen=args.epochs_frozen,
        epochs_finetune=args.epochs_finetune, eval_splits=eval_splits, batch_size=args.batch_size,
        workers=args.workers, cams=not args.no_cams, layer=args.cam_layer, cache=cache,
        methods=parse_methods(args.cam_methods))
    try:
        unusable = dist.broadcast_from_main(env, unusable)
        if unusable:
            raise DatasetError(unusable)
        best = train(model, settings=TrainSettings.from_args(args), index=index, meta=meta, device=device,
                     env=env, out=out, resume_state=resume_state, cache=cache, phase1_hook=snapshot)
        finish(model, best, index=index, meta=meta, device=device, env=env, out=out,
               eval_splits=eval_splits, batch_size=args.batch_size,
               workers=args.workers, cams=not args.no_cams, layer=args.cam_layer, audit=args.audit, cache=cache,
               cam_methods=parse_methods(args.cam_methods))
    except BaseException as exc:
        if env.is_main and Session_ is not None and run_id is not None:
            with Session_.begin() as s:
                store.finish_run(s, run_id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return 0


def finish(model: nn.Module, best: dict, *, index: DatasetIndex, meta: ModelMeta, device: torch.device,
           env: dist.DistEnv, out: RunOutput, eval_splits: Sequence[str], batch_size: int, workers: int,
           cams: bool, layer: str, audit: bool, cache: Optional[DecodedCache] = None,
           cam_methods: Sequence[str] = GRADIENT_METHODS) -> None:
    """Reload the best weights, evaluate ``eval_splits``, mark the run complete and, with ``audit``, audit it."""
    from core import dist
    from core.model import read_checkpoint
    from jobs.auditing import audit_run, format_summary
    from jobs.calibrate import calibrate_after_training
    from jobs.evaluation import evaluate_split

    best_path = out.run_dir / "best.pt"
    if env.is_main and not best_path.is_file():
        raise CheckpointError(f"{best_path}: the best checkpoint is missing")
    if env.is_main:
        model.load_state_dict(read_checkpoint(best_path)["model"])
    dist.broadcast_module(env, model)  # other nodes need not see rank 0's checkpoint folder
    model.eval()
    splits = [s for s in eval_splits if s in index.splits]
    results = {}
    for split in splits:
        results[split] = evaluate_split(out.Session_, out.run_id, model, meta, index, split, device=device,
                                        env=env, batch_size=batch_size, workers=workers, cams=cams, layer=layer,
                                        cache=cache, methods=cam_methods)
    if env.is_main:
        metrics = {"best_val_acc": best["acc"] if VALID in index.splits else None}
        for split, r in results.items():
            metrics[split] = {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"], "images": r["n_images"]}
        with out.Session_.begin() as s:
            store.finish_run(s, out.run_id, "complete", best_epoch=best["epoch"], metrics=metrics,
                             checkpoint_path=str(best_path.resolve()))
        log.info("run %d complete: %s", out.run_id, json.dumps(metrics))
        calibrate_after_training(out.Session_, out.run_id)
        if audit:
            with out.Session_.begin() as s:
                report = audit_run(s, out.run_id)
            log.info("data audit:\n%s", format_summary(*report, db=out.saved_args.get("db")))
    dist.barrier(env)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
