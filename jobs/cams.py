"""Recompute the predictions and Grad-CAM maps of an existing run from its checkpoint, without retraining.

    python -m jobs.cams --run RUN [--layer PATH] [--split valid,test] [--db URL]
    python -m jobs.cams --run RUN --methods eigencam,scorecam     # add the maps of more CAM methods
    torchrun --nproc_per_node=N -m jobs.cams --run-id RUN ...   # torchrun claims a bare --run

RUN is a run id, a run name, or ``latest``. The images are those the run recorded; the evaluation of each
split is replaced as a whole, so running this again (after an interruption, say) leaves no duplicates.
The maps are those of the methods the run records (``runs.cam_methods``).

With ``--methods`` the predictions stay as they are: only the maps of the methods named are computed, for
the stored predictions, and (re)written (``jobs.camstore.add_methods``); the run then records them too.

A run whose training finished but whose evaluation was interrupted (its ``last.pt`` counts every epoch,
its status still reads ``running`` or ``failed``) is marked ``complete`` once every split it evaluates is.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from core.cammaps import DEFAULT_METHOD, parse_methods
from core.defaults import SCORECAM_COST
from core.errors import CheckpointError
from core.splits import EVAL_SPLITS, SPLITS, VALID
from db import queries, store
from jobs.common import DefaultsHelpFormatter, add_cache_args, add_db_arg, add_run_arg, run_cli, run_distributed, say_run
from jobs.rundir import run_dir_of

if TYPE_CHECKING:  # torch and the model load when the job runs, not for --help
    import torch

    from core import dist
    from core.data import DatasetIndex

log = logging.getLogger("jobs.cams")

# Images per batch by device: a GPU keeps busy with large batches (Grad-CAM's backward runs only above the
# layer, so memory stays modest); on a CPU they would only cost memory.
BATCH = {"cpu": 32, "cuda": 128}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.cams", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_run_arg(p)
    add_db_arg(p)
    p.add_argument("--layer", default=None, help="module path of the Grad-CAM target layer "
                   "(default: the layer the run used)")
    p.add_argument("--split", default=None, help="comma-separated splits (default: those the run evaluated)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the run's best checkpoint)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch and process (default: "
                   f"{BATCH['cuda']} on a GPU, {BATCH['cpu']} on the CPU)")
    p.add_argument("--workers", type=int, default=2, help="data-loader worker processes per rank")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs")
    p.add_argument("--no-cams", action="store_true", help="recompute predictions only")
    add_cache_args(p)
    p.add_argument("--methods", default=None,
                   help="comma-separated CAM methods to add to the run, keeping its predictions and its other "
                   f"methods' maps (default: none; recompute everything). {SCORECAM_COST}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def run_index(s, run: queries.RunInfo, splits: list[str]) -> DatasetIndex:
    """The run's own images (not a fresh scan of the folder), so a recomputation covers the same files."""
    from core.data import DatasetIndex, Sample

    by_split: dict[str, list[Sample]] = {}
    for split, rel, label in queries.image_samples(s, run.id, splits):
        by_split.setdefault(split, []).append(Sample(rel, label))
    for samples in by_split.values():  # the order of core.data.discover, so the decoded cache is training's
        samples.sort(key=lambda x: x.relpath)
    return DatasetIndex(root=Path(run.data_root), classes=list(run.classes), splits=by_split)


def run_splits(s, run: queries.RunInfo) -> list[str]:
    """The splits the run's training job evaluates (or has begun to), among those it has images of."""
    have = set(queries.image_splits(s, run.id))
    begun = set(queries.evaluation_rows(s, run.id))
    wanted = set((run.config or {}).get("eval_splits", ",".join(EVAL_SPLITS)).split(",")) | begun
    return [sp for sp in SPLITS if sp in wanted and sp in have]


def finished_training(run: queries.RunInfo) -> Optional[dict[str, Any]]:
    """The ``last.pt`` state when it counts every epoch of the run, else None (training not over)."""
    from core.model import read_checkpoint

    path = run_dir_of(run.config, run.name) / "last.pt"
    if not path.is_file():
        return None
    state = read_checkpoint(path)
    a = state.get("args", {})
    total = int(a.get("epochs_frozen") or 0) + int(a.get("epochs_finetune") or 0)
    if state.get("run_id") != run.id or int(state.get("epochs_done", -1)) < total:
        return None
    return state


def complete_if_done(s, run_id: int) -> bool:
    """Mark a run complete when its training finished and every split it evaluates has a complete evaluation.

    Only ``last.pt`` can tell that training finished: the epoch rows go in before the checkpoint, so
    they can count an epoch whose weights were never saved.
    """
    run = queries.run_info(s, run_id)
    if run.status == "complete":
        return False
    state = finished_training(run)
    splits = run_splits(s, run)
    evals = queries.evaluation_rows(s, run_id)
    if state is None or not splits or any(sp not in evals or evals[sp]["status"] != "complete" for sp in splits):
        return False
    best = state.get("best") or {}
    metrics: dict[str, Any] = {"best_val_acc": best.get("acc") if VALID in splits else None}
    for sp in splits:
        e = evals[sp]
        metrics[sp] = {"top1": e["top1"], "top5": e["top5"], "loss": e["loss"], "images": e["n_images"]}
    best_path = run_dir_of(run.config, run.name) / "best.pt"
    store.finish_run(s, run_id, "complete", best_epoch=best.get("epoch"), metrics=metrics,
                     checkpoint_path=str(best_path.resolve()), error=None)
    return True


def hash_missing_files(Session_, run_id: int, root: Path) -> int:
    """Record the SHA-256 of the run's files that have none yet (a run from a schema-1 store); returns how
    many were hashed."""
    from core.data import file_sha256

    with Session_() as s:
        missing = queries.images_without_sha256(s, run_id)
    hashes = {i: h for i, rel in missing if (h := file_sha256(root / rel)) is not None}
    if hashes:
        with Session_.begin() as s:
            store.set_image_hashes(s, hashes)
    return len(hashes)


def main(args: argparse.Namespace) -> int:
    if args.methods is not None:
        try:
            args.methods = parse_methods(args.methods)
        except ValueError as exc:
            raise ValueError(f"--methods: {exc}") from None
        if args.no_cams:
            raise ValueError("--methods adds maps; it cannot go with --no-cams")
    return run_distributed(args, _main)


def _main(args: argparse.Namespace, device: torch.device, env: dist.DistEnv) -> int:
    from core import dist
    from core.cache import DecodedCache
    from core.feed import device_batch_size
    from core.gradcam import check_methods_for_layer
    from core.model import build_model, load_checkpoint, resolve_module
    from jobs.camstore import add_methods
    from jobs.evaluation import evaluate_split

    engine = store.make_engine(args.db, create=False) if env.is_main else None
    Session_ = store.make_sessionmaker(engine) if engine is not None else None
    plan = None
    if env.is_main:
        with Session_() as s:
            run = queries.find_run(s, args.run)
            say_run(args.run, run)
            # By default every split the run evaluates: a kill may have struck before some were begun.
            splits = args.split.split(",") if args.split else run_splits(s, run)
            index = run_index(s, run, splits)
            missing = [sp for sp in splits if sp not in index.splits]
            if missing or not splits:
                raise ValueError(f"run {run.id} ({run.name}) has no images in split(s) {missing or splits}")
            # An interrupted run has no checkpoint_path yet; its best.pt is in its checkpoint folder.
            folder = run_dir_of(run.config, run.name)
            ckpt = args.checkpoint or run.checkpoint_path
            if not ckpt and (folder / "best.pt").is_file():
                ckpt = str(folder / "best.pt")
            if not ckpt:
                raise CheckpointError(f"run {run.id} ({run.name}) has no checkpoint yet (status {run.status}; "
                                      f"none in {folder})")
            if args.methods and args.layer and run.cam_layer and args.layer != run.cam_layer:
                raise ValueError(f"--layer {args.layer}: the run's maps are of layer {run.cam_layer}; methods added "
                                 "to it use that layer too, so that its maps stay comparable")
            plan = dict(run_id=run.id, name=run.name, splits=splits, index=index, checkpoint=ckpt,
                        no_cams=bool(run.config.get("no_cams")), methods=run.cam_methods or (DEFAULT_METHOD,))
        hashed = hash_missing_files(Session_, run.id, index.root)
        if hashed:
            log.info("run %d: recorded the SHA-256 of %d files", run.id, hashed)
    plan = dist.broadcast_from_main(env, plan)
    # As in jobs.train, only rank 0 need see the checkpoint; the others get its weights over the process group.
    model, meta = load_checkpoint(plan["checkpoint"]) if env.is_main else (None, None)
    meta = dist.broadcast_from_main(env, meta)
    if model is None:
        model = build_model(meta).eval()
    layer = args.layer or meta.cam_layer
    resolve_module(model, layer)
    model.to(device)
    dist.broadcast_module(env, model)
    batch_size = device_batch_size(device, args.batch_size, **BATCH)
    cache = None if args.no_cache else DecodedCache(args.cache_dir, workers=args.workers)
    if args.methods:
        check_methods_for_layer(model, args.methods, layer, meta.image_size)
        for split in plan["splits"]:
            add_methods(Session_, plan["run_id"], model, meta, plan["index"], split, args.methods, device=device,
                        env=env, batch_size=batch_size, workers=args.workers, layer=layer, cache=cache)
        return 0
    log.info("run %d (%s): recomputing %s with layer %s, batches of %d", plan["run_id"], plan["name"],
             plan["splits"], layer, batch_size)
    for split in plan["splits"]:
        evaluate_split(Session_, plan["run_id"], model, meta, plan["index"], split, device=device, env=env,
                       batch_size=batch_size, workers=args.workers, cams=not args.no_cams, layer=layer,
                       cache=cache, methods=plan["methods"],
                       vectors=args.checkpoint is None)  # another checkpoint's vectors would not fit the map
    if env.is_main:
        with Session_.begin() as s:
            # Only a pass like the training job's own (its checkpoint, maps unless it went without) completes it.
            like_training = args.checkpoint is None and (not args.no_cams or plan["no_cams"])
            if like_training and complete_if_done(s, plan["run_id"]):
                log.info("run %d (%s): training had finished; the run is complete", plan["run_id"], plan["name"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
