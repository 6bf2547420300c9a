"""Score how faithful a run's CAM maps are, rank the methods, and run the cascading-randomisation sanity check.

    python -m jobs.trust --run RUN [--methods all|LIST] [--split valid] [--sample N] [--steps 16] [--json]
    torchrun --nproc_per_node=N -m jobs.trust --run-id RUN ...   # torchrun claims a bare --run

For every chosen image the maps of each method in ``--methods`` of the predicted class (and of the true class
where they differ) are recomputed from the run's checkpoint, all from one forward, and scored with deletion
and insertion curves, next to a random and a centre map (see ``core.trust``). Where the images have object
boxes (the demo), the correctly classified ones also play the pointing game with every map. The methods are
then ranked (``core.method_rank``). The images are sharded over the ranks, gathered on rank 0, and rank 0
runs the sanity check on a sample and writes everything to the store. Running it again replaces the scores
of the same images (of every method) and the run's sanity check.
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

from core.cammaps import BASELINES, DEFAULT_METHOD, TARGET_PRED, TARGET_TRUE, TARGETS, parse_methods, peak_location
from core.defaults import FILLS
from core.method_rank import rank_methods
from core.metrics import trust_summary
from core.splits import VALID
from db import queries, store
from jobs.common import DefaultsHelpFormatter, add_cache_args, add_db_arg, add_run_arg, run_cli, run_distributed, say_run

if TYPE_CHECKING:  # torch and the model load when the job runs, not for --help
    import torch

    from core import dist

log = logging.getLogger("jobs.trust")

# Per device: images explained together, and perturbed inputs per forward pass of the curves.
BATCH = {"cpu": 8, "cuda": 32}
CHUNK = {"cpu": 64, "cuda": 256}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.trust", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_run_arg(p)
    add_db_arg(p)
    p.add_argument("--methods", default="all", help="comma-separated CAM methods to score and rank, or all: "
                   "those whose maps the run stores. Each method adds 2 x (steps - 1) forwards per map")
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
    p.add_argument("--batch-size", type=int, default=None, help="images explained together per rank "
                   f"(default: {BATCH['cuda']} on a GPU, {BATCH['cpu']} on the CPU)")
    p.add_argument("--chunk", type=int, default=None, help="perturbed inputs per forward pass "
                   f"(default: {CHUNK['cuda']} on a GPU, {CHUNK['cpu']} on the CPU)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes per rank")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs")
    add_cache_args(p)
    p.add_argument("--json", action="store_true", help="print the aggregate scores and the sanity check as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _check_args(args: argparse.Namespace) -> None:
    batch, chunk = (1 if v is None else v for v in (args.batch_size, args.chunk))  # None: the device's choice
    if args.steps < 2 or args.sample < 0 or args.sanity_sample < 1 or batch < 1 or chunk < 1:
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


def split_plan(s, run: queries.RunInfo, split: str, images: list[tuple[int, str, int]]) -> dict:
    """The whole split, in the order of core.data.discover (so its decoded cache is the one training wrote),
    and the positions in it of the planned images."""
    samples = sorted(((rel, label) for _, rel, label in queries.image_samples(s, run.id, [split])),
                     key=lambda x: x[0])
    at = {rel: k for k, (rel, _) in enumerate(samples)}
    return dict(samples=samples, classes=list(run.classes), positions=[at[rel] for _, rel, _ in images])


def pointing_rows(image_id: int, cams: dict[str, np.ndarray], box, size: tuple[int, int], input_size: int,
                  seed: int) -> list[dict]:
    """The pointing game of one image: for each map (and both baselines) whether its peak falls in the box."""
    from core import trust

    x0, y0, x1, y1 = box
    w, h = size
    base = trust.baseline_maps([seed], next(iter(cams.values())).shape[-2:])
    cams = {**cams, **{b: base[b][0].numpy() for b in BASELINES}}
    share = max(0.0, x1 - x0) * max(0.0, y1 - y0) / float(w * h)
    rows = []
    for method, cam in cams.items():
        px, py = peak_location(cam, input_size, (w, h))
        rows.append(dict(image_id=image_id, method=method, hit=bool(x0 <= px < x1 and y0 <= py < y1),
                         box_share=share))
    return rows


def score_images(model, loader, ids: dict[int, int], args, layer: str, boxes: dict[int, tuple], input_size: int):
    """Score this rank's images; returns (score rows, pointing rows, skipped image ids). ``ids`` maps a
    position in the split to its image id; ``boxes``: {image_id: (bbox, (width, height))} of the images that
    have an object box."""
    import torch

    from core import cam_methods, trust
    from core.gradcam import predict_and_explain_many

    device = next(model.parameters()).device
    rows, points, bad = [], [], []
    pred_col, true_col = TARGETS.index(TARGET_PRED), TARGETS.index(TARGET_TRUE)
    for x, y, idx, skipped, _ in loader:
        bad += [ids[i] for i, _ in skipped]
        if x is None:
            continue
        x, y = x.to(device), y.to(device)
        e = predict_and_explain_many(model, x, y, args.methods, layer=layer,
                                     scorecam_max_channels=cam_methods.SCORECAM_MAX_CHANNELS)
        # One map per image and method for "pred", plus one for "true" where the prediction is wrong.
        wrong = (e.pred != y).nonzero()[:, 0]
        which = torch.cat([torch.arange(len(y), device=device), wrong])
        column = torch.cat([torch.full((len(y),), pred_col), torch.full((len(wrong),), true_col)]).to(device)
        maps = {m: v[which, column] for m, v in e.maps.items()}
        classes = torch.where(column == pred_col, e.pred[which], y[which])
        image_ids = [ids[int(i)] for i in idx[which.cpu()]]
        curves = trust.faithfulness_many(model, x[which], maps, classes,
                                         [map_seed(args.seed, i) for i in image_ids], steps=args.steps,
                                         fill=args.fill, blur_sigma=args.blur_sigma, chunk=args.chunk)
        for r, image_id in enumerate(image_ids):
            for method, c in curves.items():
                rows.append(dict(
                    image_id=image_id, target=TARGET_PRED if column[r] == pred_col else TARGET_TRUE,
                    class_index=int(classes[r]),
                    method=method, deletion_auc=float(c.deletion_auc[r, 0]),
                    insertion_auc=float(c.insertion_auc[r, 0]),
                    deletion_curve=[round(float(v), 5) for v in c.deletion[r, 0]],
                    insertion_curve=[round(float(v), 5) for v in c.insertion[r, 0]],
                ))
        for k in range(len(y)):  # the pointing game: correctly classified images with a box
            image_id = ids[int(idx[k])]
            if int(e.pred[k]) == int(y[k]) and image_id in boxes:
                box, size = boxes[image_id]
                cams = {m: v[k, pred_col].cpu().numpy() for m, v in e.maps.items()}
                points += pointing_rows(image_id, cams, box, size, input_size, map_seed(args.seed, image_id))
    return rows, points, bad


def sanity(model, loader, args, layer: str) -> tuple[list[dict], int]:
    """The cascade on the first ``--sanity-sample`` readable images of the plan (rank 0 only, ``loader``
    reads the whole plan in order)."""
    import torch

    from core import trust

    device = next(model.parameters()).device
    xs = []
    for x, *_ in loader:
        if x is not None:
            xs.append(x[: args.sanity_sample - sum(len(t) for t in xs)].to(device))
        if sum(len(t) for t in xs) == args.sanity_sample:
            break
    if not xs:
        return [], 0
    x = torch.cat(xs)
    with torch.inference_mode():
        pred = model(x).argmax(1)
    stages = trust.vgg_stages(model, args.sanity_depth)
    result = trust.cascade_randomisation(model, x, pred.clone(), stages, layer=layer, seed=args.seed)
    return result.summary(), len(xs)


def main(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.methods.strip() != "all":
        try:
            args.methods = parse_methods(args.methods)
        except ValueError as exc:
            raise ValueError(f"--methods: {exc}") from None
    return run_distributed(args, _main)


def image_boxes(s, run_id: int, split: str) -> dict[int, tuple]:
    """{image_id: (bbox, (width, height))} of the split's images with an object box and a known size."""
    images = queries.images_frame(s, run_id, [split])
    return {int(r.image_id): (tuple(float(v) for v in r.bbox), (int(r.width), int(r.height)))
            for r in images.itertuples() if r.bbox is not None and r.width and r.height}


def _main(args: argparse.Namespace, device: torch.device, env: dist.DistEnv) -> int:
    from core import dist, trust
    from core.cache import DecodedCache
    from core.data import DatasetIndex, Sample
    from core.feed import device_batch_size, split_feed
    from core.gradcam import check_methods_for_layer
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
            methods = args.methods
            if isinstance(methods, str):  # "all": the methods whose maps the run stores
                methods = tuple(run.cam_methods) or tuple(queries.stored_methods(s, run.id)) or (DEFAULT_METHOD,)
            plan = dict(run_id=run.id, name=run.name, root=run.data_root, checkpoint=ckpt, images=images,
                        methods=methods, names=list(run.classes), boxes=image_boxes(s, run.id, args.split),
                        **split_plan(s, run, args.split, images))
    plan = dist.broadcast_from_main(env, plan)
    args.methods = plan["methods"]
    model, meta = load_checkpoint(plan["checkpoint"])
    layer = args.layer or meta.cam_layer
    resolve_module(model, layer)
    model.to(device)
    check_methods_for_layer(model, args.methods, layer, meta.image_size)
    ids = [i for i, _, _ in plan["images"]]
    index = DatasetIndex(root=Path(plan["root"]), classes=plan["classes"],
                         splits={args.split: [Sample(rel, lab) for rel, lab in plan["samples"]]})
    args.batch_size = device_batch_size(device, args.batch_size, **BATCH)
    args.chunk = device_batch_size(device, args.chunk, **CHUNK)
    cache = None if args.no_cache else DecodedCache(args.cache_dir, workers=args.workers)

    def feed(env_: dist.DistEnv, batch_size: int):
        return split_feed(index, args.split, train=False, size=meta.image_size, batch_size=batch_size, env=env_,
                          device=device, mean=meta.mean, std=meta.std, workers=args.workers, cache=cache,
                          positions=plan["positions"]).loader

    log.info("run %d (%s): scoring %s on %d %s images, %d steps, layer %s, batches of %d", plan["run_id"],
             plan["name"], ", ".join(args.methods), len(ids), args.split, args.steps, layer, args.batch_size)
    t1 = time.perf_counter()
    local = score_images(model, feed(env, args.batch_size), dict(zip(plan["positions"], ids)), args, layer,
                         plan["boxes"], meta.image_size)
    gathered = dist.gather_to_main(env, local)
    if not env.is_main:
        return 0
    rows = [r for part, _, _ in gathered for r in part]
    points = [r for _, part, _ in gathered for r in part]
    bad = [i for _, _, part in gathered for i in part]
    seconds_scores = time.perf_counter() - t1
    stages, n_sanity = sanity(model, feed(dist.DistEnv(), args.sanity_sample), args, layer)
    settings = dict(split=args.split, sample=args.sample, steps=args.steps, fill=args.fill,
                    blur_sigma=args.blur_sigma or trust.default_blur_sigma(meta.image_size, meta.image_size),
                    seed=args.seed, image_size=meta.image_size, images=len(ids) - len(bad), skipped=len(bad),
                    methods=list(args.methods),
                    seconds_scores=round(seconds_scores, 2), seconds=round(time.perf_counter() - t0, 2))
    with Session_.begin() as s:
        store.replace_trust_scores(s, plan["run_id"], ids, [{**r, "run_id": plan["run_id"]} for r in rows])
        store.replace_pointing_scores(s, plan["run_id"], ids, points)
        store.replace_sanity_check(s, plan["run_id"], layer=layer, n_images=n_sanity, stages=stages,
                                   settings=settings)
    with Session_() as s:
        frame = queries.trust_frame(s, plan["run_id"], curves=False)
        pointing = queries.pointing_frame(s, plan["run_id"])
    frame = frame[frame["image_id"].isin(ids)]
    ranking = rank_methods(frame, plan["names"], pointing[pointing["image_id"].isin(ids)])
    report = dict(run_id=plan["run_id"], layer=layer, settings=settings,
                  scores={t: trust_summary(frame, t) for t in (TARGET_PRED, TARGET_TRUE)}, sanity=stages,
                  ranking=ranking_report(ranking))
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_summary(report))
    engine.dispose()
    return 0


def ranking_report(ranking) -> dict:
    """The ranking as plain JSON: the sentence, the winner's margin, the table and the per-class table."""
    if ranking is None:
        return {}
    table = ranking.table.astype(object).where(ranking.table.notna(), None)
    per_class = ranking.per_class.astype(object).where(ranking.per_class.notna(), None)
    return dict(sentence=ranking.sentence, winner=ranking.winner, runner_up=ranking.runner_up,
                confidence=ranking.confidence.as_dict(), table=table.to_dict(orient="records"),
                per_class=per_class.to_dict(orient="records"))


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
    ranking = report.get("ranking")
    if ranking:
        lines.append("methods by score (insertion AUC - deletion AUC of the predicted-class maps, higher is better):")
        for r in ranking["table"]:
            point = (f"  pointing {r['pointing']:.0%} of {r['pointing_n']}" if r.get("pointing") is not None else "")
            lines.append(f"  {r['rank'] or '-':>2} {r['name']:<12} {r['score']:+.3f}{point}")
        lines.append(ranking["sentence"])
    if report["sanity"]:
        lines.append("sanity check (similarity of trained and randomised maps, Spearman / SSIM):")
        for r in report["sanity"]:
            lines.append(f"  {r['stage']:<10} {r['spearman_mean']:+.3f} ± {r['spearman_std']:.3f}   "
                         f"{r['ssim_mean']:.3f} ± {r['ssim_std']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
