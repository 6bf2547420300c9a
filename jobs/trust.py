"""Score how faithful a run's Grad-CAM maps are, and run the cascading-randomisation sanity check.

    python -m jobs.trust --run RUN [--split valid] [--sample N] [--steps 16] [--json] [--db URL]
    torchrun --nproc_per_node=N -m jobs.trust --run-id RUN ...   # torchrun claims a bare --run

For every chosen image the maps of the predicted class (and of the true class where they differ) are
recomputed from the run's checkpoint and scored with deletion and insertion curves, next to a random and
a centre map (see ``core.trust``). The images are sharded over the ranks, gathered on rank 0, and rank 0
runs the sanity check on a sample and writes both to the store. Running it again replaces the scores of
the same images and the run's sanity check.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.cammaps import TARGET_PRED, TARGET_TRUE
from core.defaults import FILLS
from core.metrics import trust_summary
from core.splits import VALID
from db import queries, store
from jobs.common import DefaultsHelpFormatter, add_db_arg, add_run_arg, run_cli, run_distributed, say_run

if TYPE_CHECKING:  # torch and the model load when the job runs, not for --help
    import torch

    from core import dist
    from core.data import ImageDataset

log = logging.getLogger("jobs.trust")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.trust", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_run_arg(p)
    add_db_arg(p)
    p.add_argument("--split", default=VALID, help="split whose images are scored")
    p.add_argument("--sample", type=int, default=0, help="score a seeded random sample of this many images "
                   "(0: all of the split)")
    p.add_argument("--steps", type=int, default=16, help="steps of each deletion / insertion curve")
    p.add_argument("--fill", choices=FILLS, default="mean", help="what deleted pixels become: the "
                   "dataset mean (zeros after normalisation) or the blurred image")
    p.add_argument("--blur-sigma", type=float, default=None, help="Gaussian blur of the insertion start in "
                   "pixels (default: 1/16 of the image side)")
    p.add_argument("--sanity-sample", type=int, default=16, help="images of the randomisation cascade")
    p.add_argument("--sanity-depth", default="conv1_1", help="deepest VGG convolution the cascade "
                   "re-initialises (conv5_4 ... conv1_1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, the random maps and re-initialisation")
    p.add_argument("--layer", default=None, help="Grad-CAM layer (default: the run's)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the run's best checkpoint)")
    p.add_argument("--batch-size", type=int, default=8, help="images explained together per rank")
    p.add_argument("--chunk", type=int, default=64, help="perturbed inputs per forward pass")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes per rank")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs")
    p.add_argument("--json", action="store_true", help="print the aggregate scores and the sanity check as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.steps < 2 or args.sample < 0 or args.sanity_sample < 1 or args.batch_size < 1 or args.chunk < 1:
        raise ValueError(
            "need --steps >= 2, --sample >= 0, --sanity-sample >= 1, --batch-size >= 1, --chunk >= 1; got "
            f"--steps {args.steps}, --sample {args.sample}, --sanity-sample {args.sanity_sample}, "
            f"--batch-size {args.batch_size}, --chunk {args.chunk}"
        )


def plan_images(s, run: queries.RunInfo, split: str, sample: int, seed: int) -> list[tuple[int, str, int]]:
    """(image_id, relpath, label) of the usable images of ``split``, or a seeded sample of them, by id."""
    rows = queries.usable_images(s, run.id, split)
    if not rows:
        raise ValueError(f"run {run.id} ({run.name}) has no usable images in split {split!r}")
    if sample and sample < len(rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=sample, replace=False))
        rows = [rows[i] for i in keep]
    return [(int(i), rel, int(lab)) for i, rel, lab in rows]


def map_seed(seed: int, image_id: int) -> int:
    """Seed of an image's random map: fixed by the job's seed and the image, not by batch or rank."""
    return (int(seed) * 1_000_003 + int(image_id)) & 0x7FFF_FFFF


def score_images(model, dataset: ImageDataset, ids: list[int], positions: list[int], args, layer: str):
    """Score this rank's images; returns (score rows, skipped image ids, labelled inputs for the cascade)."""
    import torch

    from core import trust
    from core.data import collate
    from core.gradcam import predict_and_explain

    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, positions), batch_size=args.batch_size,
                                         shuffle=False, num_workers=args.workers, collate_fn=collate)
    rows, bad = [], []
    for x, y, idx, skipped, _ in loader:
        bad += [ids[i] for i, _ in skipped]
        if x is None:
            continue
        x, y = x.to(device), y.to(device)
        e = predict_and_explain(model, x, y, layer=layer)
        # One map per image for "pred", plus one for "true" where the prediction is wrong.
        wrong = (e.pred != y).nonzero()[:, 0]
        which = torch.cat([torch.arange(len(y), device=device), wrong])
        column = torch.cat([torch.zeros(len(y), dtype=torch.long), torch.ones(len(wrong), dtype=torch.long)])
        maps = e.maps[which, column.to(device)]
        classes = torch.where(column.to(device) == 0, e.pred[which], y[which])
        image_ids = [ids[int(i)] for i in idx[which.cpu()]]
        curves = trust.faithfulness(model, x[which], maps, classes, [map_seed(args.seed, i) for i in image_ids],
                                    steps=args.steps, fill=args.fill, blur_sigma=args.blur_sigma, chunk=args.chunk)
        for r, image_id in enumerate(image_ids):
            for method, c in curves.items():
                rows.append(dict(
                    image_id=image_id, target=TARGET_PRED if column[r] == 0 else TARGET_TRUE,
                    class_index=int(classes[r]),
                    method=method, deletion_auc=float(c.deletion_auc[r, 0]),
                    insertion_auc=float(c.insertion_auc[r, 0]),
                    deletion_curve=[round(float(v), 5) for v in c.deletion[r, 0]],
                    insertion_curve=[round(float(v), 5) for v in c.insertion[r, 0]],
                ))
    return rows, bad


def sanity(model, dataset: ImageDataset, args, layer: str) -> tuple[list[dict], int]:
    """The cascade on the first ``--sanity-sample`` readable images of the plan (rank 0 only)."""
    import torch

    from core import trust

    device = next(model.parameters()).device
    xs = []
    for i in range(len(dataset)):
        x, _, _, reason, _ = dataset[i]
        if not reason:
            xs.append(x)
        if len(xs) == args.sanity_sample:
            break
    if not xs:
        return [], 0
    x = torch.stack(xs).to(device)
    with torch.inference_mode():
        pred = model(x).argmax(1)
    stages = trust.vgg_stages(model, args.sanity_depth)
    result = trust.cascade_randomisation(model, x, pred.clone(), stages, layer=layer, seed=args.seed)
    return result.summary(), len(xs)


def main(args: argparse.Namespace) -> int:
    _check_args(args)
    return run_distributed(args, _main)


def _main(args: argparse.Namespace, device: torch.device, env: dist.DistEnv) -> int:
    from core import dist, trust
    from core.data import ImageDataset, Sample
    from core.model import load_checkpoint, resolve_module

    t0 = time.perf_counter()
    engine = store.make_engine(args.db, create=False) if env.is_main else None
    Session_ = store.make_sessionmaker(engine) if engine is not None else None
    plan = None
    if env.is_main:
        with Session_() as s:
            run = queries.find_run(s, args.run)
            say_run(args.run, run)
            ckpt = args.checkpoint or run.checkpoint_path
            if not ckpt:
                raise ValueError(f"run {run.id} ({run.name}) has no checkpoint yet (status {run.status})")
            images = plan_images(s, run, args.split, args.sample, args.seed)
            plan = dict(run_id=run.id, name=run.name, root=run.data_root, checkpoint=ckpt, images=images)
    plan = dist.broadcast_from_main(env, plan)
    model, meta = load_checkpoint(plan["checkpoint"])
    layer = args.layer or meta.cam_layer
    resolve_module(model, layer)
    model.to(device)
    ids = [i for i, _, _ in plan["images"]]
    dataset = ImageDataset(Path(plan["root"]), [Sample(rel, lab) for _, rel, lab in plan["images"]],
                           meta.image_size, train=False, mean=meta.mean, std=meta.std)
    log.info("run %d (%s): scoring %d %s images, %d steps, layer %s", plan["run_id"], plan["name"], len(ids),
             args.split, args.steps, layer)
    t1 = time.perf_counter()
    local = score_images(model, dataset, ids, dist.shard(len(ids), env), args, layer)
    gathered = dist.gather_to_main(env, local)
    if not env.is_main:
        return 0
    rows = [r for part, _ in gathered for r in part]
    bad = [i for _, part in gathered for i in part]
    seconds_scores = time.perf_counter() - t1
    stages, n_sanity = sanity(model, dataset, args, layer)
    settings = dict(split=args.split, sample=args.sample, steps=args.steps, fill=args.fill,
                    blur_sigma=args.blur_sigma or trust.default_blur_sigma(meta.image_size, meta.image_size),
                    seed=args.seed, image_size=meta.image_size, images=len(ids) - len(bad), skipped=len(bad),
                    seconds_scores=round(seconds_scores, 2), seconds=round(time.perf_counter() - t0, 2))
    with Session_.begin() as s:
        store.replace_trust_scores(s, plan["run_id"], ids, [{**r, "run_id": plan["run_id"]} for r in rows])
        store.replace_sanity_check(s, plan["run_id"], layer=layer, n_images=n_sanity, stages=stages,
                                   settings=settings)
    with Session_() as s:
        frame = queries.trust_frame(s, plan["run_id"], curves=False)
    frame = frame[frame["image_id"].isin(ids)]
    report = dict(run_id=plan["run_id"], layer=layer, settings=settings,
                  scores={t: trust_summary(frame, t) for t in (TARGET_PRED, TARGET_TRUE)}, sanity=stages)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_summary(report))
    engine.dispose()
    return 0


def format_summary(report: dict) -> str:
    st = report["settings"]
    lines = [f"run {report['run_id']}: {st['images']} {st['split']} images scored in {st['seconds_scores']:.1f} s "
             f"({st['steps']} steps, fill {st['fill']}, layer {report['layer']}); lower deletion AUC and higher "
             "insertion AUC are better"]
    summary = report["scores"][TARGET_PRED]
    for m, v in summary["methods"].items():
        lines.append(f"  {m:<8} deletion AUC {v['deletion_auc']:.3f}  insertion AUC {v['insertion_auc']:.3f}  "
                     f"(n={v['n']})")
    for base, share in summary["gradcam_beats"].items():
        lines.append(f"  Grad-CAM beats {base} on {share['deletion']:.0%} of images (deletion), "
                     f"{share['insertion']:.0%} (insertion)")
    if report["sanity"]:
        lines.append("sanity check (similarity of trained and randomised maps, Spearman / SSIM):")
        for r in report["sanity"]:
            lines.append(f"  {r['stage']:<10} {r['spearman_mean']:+.3f} ± {r['spearman_std']:.3f}   "
                         f"{r['ssim_mean']:.3f} ± {r['ssim_std']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
