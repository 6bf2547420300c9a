"""Compute the feature vectors a run lacks from its checkpoint, then store the 2-D map of all of them.

    python -m jobs.embed --run RUN [--splits train,valid,test] [--db URL]
    torchrun --nproc_per_node=N -m jobs.embed --run-id RUN ...   # torchrun claims a bare --run

The vector of an image is the model's pooled 256-d feature vector (``core.embed``), stored as float16.
``jobs.train`` already stores those of the images it predicts (valid, test); this job adds the others,
the training images above all, so that neighbours can be drawn from the training set. Resumable: images
that have a vector are skipped, and every batch is committed as it is done, so a second run after a
complete one computes nothing. The images are sharded over the ranks; rank 0 writes.

The map (``core.projection``: UMAP on a PCA of the unit vectors, seeded, reproducible) covers every vector
of the run. It is redrawn when vectors were added, when it is missing, or when another seed or method is
asked for; ``--remap`` redraws it regardless, ``--no-map`` leaves it as it is.

The images are read through the decoded cache that training wrote (``core.feed.split_feed``; the same
tensors as the JPEG files, exactly), built first where it is missing; ``--no-cache`` reads the JPEG files.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Optional

from core.errors import CheckpointError
from core.projection import METHODS, project_2d
from db import queries, store
from db.queries import embed as embed_queries
from jobs.cams import run_index
from jobs.common import DefaultsHelpFormatter, add_cache_args, add_db_arg, add_run_arg, run_cli, run_distributed, say_run
from jobs.rundir import run_dir_of
from jobs.vectors import vector_rows

if TYPE_CHECKING:  # torch and the model load when the job runs, not for --help
    import torch

    from core import dist

log = logging.getLogger("jobs.embed")

# Images per batch by device: a GPU keeps busy with large batches (128 VGG-19 images of 224 px peak at about
# 3.5 GB in a forward pass, within a small GPU); on a CPU large batches only cost memory.
BATCH = {"cpu": 32, "cuda": 128}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.embed", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_run_arg(p)
    add_db_arg(p)
    p.add_argument("--splits", default=None, help="comma-separated splits to embed (default: every split the "
                   "run has images of)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the run's best checkpoint)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch and process (default: "
                   f"{BATCH['cuda']} on a GPU, {BATCH['cpu']} on the CPU)")
    p.add_argument("--workers", type=int, default=2, help="data-loader worker processes per rank")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs")
    p.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    add_cache_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the 2-D map")
    p.add_argument("--method", choices=METHODS, default="auto", help="how the map is drawn: UMAP where the "
                   "vectors allow it (auto), UMAP or PCA")
    p.add_argument("--remap", action="store_true", help="redraw the map even when it is up to date")
    p.add_argument("--no-map", action="store_true", help="store vectors only; leave the map as it is")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def checkpoint_of(run: queries.RunInfo, override: Optional[str]) -> str:
    """``--checkpoint``, else the run's best checkpoint (an unfinished run's ``best.pt`` in its folder)."""
    folder = run_dir_of(run.config, run.name)
    ckpt = override or run.checkpoint_path
    if not ckpt and (folder / "best.pt").is_file():
        ckpt = str(folder / "best.pt")
    if not ckpt:
        raise CheckpointError(f"run {run.id} ({run.name}) has no checkpoint yet (status {run.status}; none in {folder})")
    return ckpt


def make_plan(s, args: argparse.Namespace) -> dict[str, Any]:
    """Rank 0's view of the work: the run, its splits and the images without a vector."""
    run = queries.find_run(s, args.run)
    say_run(args.run, run)
    have = queries.image_splits(s, run.id)
    splits = [x for x in args.splits.split(",") if x] if args.splits else have
    unknown = [x for x in splits if x not in have]
    if unknown or not splits:
        raise ValueError(f"run {run.id} ({run.name}) has no images in split(s) {', '.join(unknown or splits) or '-'}; "
                         f"it has {', '.join(have) or 'none'}")
    todo = embed_queries.images_without_vectors(s, run.id, splits)
    # The split's images in training's order, so the decoded cache is training's; todo picks positions in it.
    index = run_index(s, run, sorted({sp for _, sp, _, _ in todo}))
    return dict(run_id=run.id, name=run.name, root=run.data_root, splits=splits, todo=todo, index=index,
                checkpoint=checkpoint_of(run, args.checkpoint) if todo else None,
                before=embed_queries.vector_counts(s, run.id))


def embed_missing(plan: dict, args, device: torch.device, env: dist.DistEnv, Session_) -> tuple[int, list]:
    """Compute and store the vectors of ``plan['todo']``, a split at a time; every rank takes its share, rank 0
    commits each batch of all ranks as it comes. Returns (vectors written, unreadable (image_id, reason)) on
    rank 0."""
    from core import dist
    from core.cache import DecodedCache
    from core.embed import embed_batches
    from core.engine import Skipped
    from core.feed import device_batch_size, split_feed
    from core.model import build_model, load_checkpoint

    model, meta = load_checkpoint(plan["checkpoint"]) if env.is_main else (None, None)
    meta = dist.broadcast_from_main(env, meta)
    if model is None:
        model = build_model(meta).eval()
    model.to(device)
    dist.broadcast_module(env, model)
    batch_size = device_batch_size(device, args.batch_size, **BATCH)
    cache = None if args.no_cache else DecodedCache(args.cache_dir, workers=args.workers)
    index = plan["index"]
    written, bad = 0, []
    for split in sorted({sp for _, sp, _, _ in plan["todo"]}):
        where = {s.relpath: k for k, s in enumerate(index.splits[split])}
        ids = {where[rel]: image_id for image_id, sp, rel, _ in plan["todo"] if sp == split}
        positions = sorted(ids)
        feed = split_feed(index, split, train=False, size=meta.image_size, batch_size=batch_size, env=env,
                          device=device, mean=meta.mean, std=meta.std, workers=args.workers, cache=cache,
                          positions=positions)
        # Every rank steps through the same number of batches (the largest shard's), so the gathers pair up.
        steps = math.ceil(math.ceil(len(positions) / env.world_size) / batch_size)
        skipped = Skipped()
        batches = embed_batches(model, feed.loader, device, env=env, skipped=skipped, amp=args.amp,
                                desc=f"embed {split}")
        for _ in range(steps):
            b = next(batches, None)
            rows = [] if b is None else vector_rows(b.vectors, [ids[int(i)] for i in b.index])
            parts = dist.gather_to_main(env, rows)
            if env.is_main:
                rows = [r for part in parts for r in part]
                with Session_.begin() as s:
                    written += store.put_vectors(s, plan["run_id"], rows)
        batches.close()
        parts = dist.gather_to_main(env, [(ids[i], why) for i, why in skipped.items.items()])
        bad += [x for part in parts for x in part] if env.is_main else []
    return written, bad


def draw_map(Session_, run_id: int, args: argparse.Namespace, added: int) -> Optional[dict]:
    """Project every vector of the run when the stored map is missing or out of date; returns the map's
    info, or None when the run has no vectors."""
    with Session_() as s:
        info = embed_queries.map_info(s, run_id)
        total = sum(embed_queries.vector_counts(s, run_id).values())
    if not total:
        return None
    current = (info is not None and not added and info["n_points"] == total and info["seed"] == args.seed
               and args.method in ("auto", info["method"]))
    if current and not args.remap:
        log.info("run %d: the map of its %d vectors is up to date (%s, seed %d)", run_id, total, info["method"],
                 info["seed"])
        return {**info, "redrawn": False}
    with Session_() as s:
        stored = embed_queries.stored_vectors(s, run_id)
    proj = project_2d(stored.vectors, seed=args.seed, method=args.method)
    with Session_.begin() as s:
        store.replace_map(s, run_id, stored.images["image_id"].tolist(), proj.xy, method=proj.method,
                          seed=proj.seed, params=proj.params, seconds=proj.seconds)
    log.info("run %d: map of %d vectors drawn (%s, seed %d) in %.1f s", run_id, len(stored), proj.method,
             proj.seed, proj.seconds)
    return dict(method=proj.method, seed=proj.seed, n_points=len(stored), seconds=proj.seconds, redrawn=True)


def main(args: argparse.Namespace) -> int:
    if (args.batch_size is not None and args.batch_size < 1) or args.workers < 0 or args.seed < 0:
        raise ValueError(f"need --batch-size >= 1, --workers >= 0 and --seed >= 0; got {args.batch_size}, "
                         f"{args.workers}, {args.seed}")
    return run_distributed(args, _main)


def _main(args: argparse.Namespace, device: torch.device, env: dist.DistEnv) -> int:
    from core import dist

    t0 = time.perf_counter()
    engine = store.make_engine(args.db, create=False) if env.is_main else None
    Session_ = store.make_sessionmaker(engine) if engine is not None else None
    plan = None
    if env.is_main:
        with Session_() as s:
            plan = make_plan(s, args)
        log.info("run %d (%s): %d images of %s without a vector", plan["run_id"], plan["name"], len(plan["todo"]),
                 ",".join(plan["splits"]))
    plan = dist.broadcast_from_main(env, plan)
    written, bad = embed_missing(plan, args, device, env, Session_) if plan["todo"] else (0, [])
    if not env.is_main:
        return 0
    for image_id, why in bad[:10]:
        log.warning("image %d could not be read: %s", image_id, why)
    info = None if args.no_map else draw_map(Session_, plan["run_id"], args, written)
    with Session_() as s:
        after = embed_queries.vector_counts(s, plan["run_id"])
    engine.dispose()
    print(format_summary(plan, written, bad, after, info, time.perf_counter() - t0))
    return 0


def format_summary(plan: dict, written: int, bad: list, after: dict[str, int], info: Optional[dict],
                   seconds: float) -> str:
    had = sum(plan["before"].get(sp, 0) for sp in plan["splits"])
    per_split = ", ".join(f"{sp} {after.get(sp, 0):,}" for sp in sorted(after)) or "none"
    lines = [f"run {plan['run_id']} ({plan['name']}): {written:,} vectors computed, {had:,} already stored, "
             f"{len(bad):,} unreadable images in {seconds:.1f} s; vectors per split: {per_split}"]
    if info is None:
        lines.append("map: none (no vectors)" if not after else "map: left as it is (--no-map)")
    else:
        lines.append(f"map: {info['n_points']:,} points ({info['method']}, seed {info['seed']}), "
                     + (f"drawn in {info['seconds']:.1f} s" if info["redrawn"] else "up to date"))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
