"""Small generated results stores, for the tests and the benchmarks of the dashboard and the export.

``build_store`` writes real JPEGs under ``<tmp>/data/<split>/<class>/`` and a SQLite store holding one
complete run over them, written through ``db.store`` the way the training job writes: both training
phases, images, predictions with top-5, float16 Grad-CAM maps (one row per target), and evaluations.
Mistakes follow a pattern (class ``i`` is mostly taken for ``i + 1``) so that confused pairs are
predictable. ``add_audit`` and ``add_trust`` add what ``jobs.audit`` and ``jobs.trust`` would store,
``add_hashes`` the file hashes that ``jobs.train`` records; ``db.builder_pairs`` adds a second run (or a
snapshot) over the same images, for comparisons.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from core.cammaps import (
    BASELINE_CENTRE, BASELINE_RANDOM, BASELINES, DEFAULT_METHOD, TARGET_PRED, TARGET_TRUE, stored_targets,
)
from core.metrics import top5_to_probs
from core.splits import TEST, TRAIN, VALID
from db import queries
from db.store import (
    ImageRecord,
    add_epoch,
    add_predictions,
    begin_evaluation,
    create_run,
    finish_evaluation,
    finish_run,
    make_engine,
    make_sessionmaker,
    record_cams,
    replace_audit,
    replace_pointing_scores,
    replace_sanity_check,
    replace_trust_scores,
    upsert_images,
)

SPORTS = (
    "air hockey", "ampute football", "archery", "arm wrestling", "axe throwing", "balance beam",
    "barell racing", "baseball", "basketball", "baton twirling", "bike polo", "billiards", "bmx",
    "bobsled", "bowling", "boxing", "bull riding", "bungee jumping", "canoe slamon", "cheerleading",
    "chuckwagon racing", "cricket", "croquet", "curling", "disc golf", "fencing", "field hockey",
    "figure skating men", "figure skating pairs", "figure skating women", "fly fishing", "football",
    "formula 1 racing", "frisbee", "gaga", "giant slalom", "golf", "hammer throw", "hang gliding",
    "harness racing", "high jump", "hockey", "horse jumping", "horse racing", "horseshoe pitching",
    "hurdles", "hydroplane racing", "ice climbing", "ice yachting", "jai alai", "javelin", "jousting",
    "judo", "lacrosse", "log rolling", "luge", "motorcycle racing", "mushing", "nascar racing",
    "olympic wrestling", "parallel bar", "pole climbing", "pole dancing", "pole vault", "polo",
    "pommel horse", "rings", "rock climbing", "roller derby", "rollerblade racing", "rowing", "rugby",
    "sailboat racing", "shot put", "shuffleboard", "sidecar racing", "ski jumping", "sky surfing",
    "skydiving", "snow boarding", "snowmobile racing", "speed skating", "steer wrestling", "sumo wrestling",
    "surfing", "swimming", "table tennis", "tennis", "track bicycle", "trapeze", "tug of war",
    "ultimate", "uneven bars", "volleyball", "water cycling", "water polo", "weightlifting",
    "wheelchair basketball", "wheelchair racing", "wingsuit flying",
)


def class_list(n: int) -> list[str]:
    if n <= len(SPORTS):
        return sorted(SPORTS[:n])
    return sorted(SPORTS) + [f"sport {i:03d}" for i in range(len(SPORTS), n)]


def build_empty_store(tmp_path: Path) -> str:
    """A store with the schema and no runs; returns its URL."""
    url = f"sqlite:///{Path(tmp_path) / 'empty.db'}"
    make_engine(url, create=True).dispose()
    return url


def _write_jpeg(path: Path, rng: np.random.Generator, cls: int, n_classes: int, size: int) -> None:
    hue = np.array([np.sin(cls * 2.1) + 1, np.cos(cls * 1.3) + 1, np.sin(cls * 0.7 + 1) + 1]) * 110
    yy, xx = np.mgrid[0:size, 0:size]
    base = hue[None, None, :] + 30 * np.sin((xx + yy * (1 + cls % 3)) / (4 + cls % 5))[..., None]
    noise = rng.normal(0, 12, size=(size, size, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=80)


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.25 * max(h, w)) ** 2)) * rng.uniform(0.5, 3.0)


def plant_audit(data_root: Path, records: list[ImageRecord], ids: dict, full: dict[int, tuple[int, np.ndarray]],
                names: Sequence[str]) -> dict:
    """Copy a few files over others and return the audit of that (the keywords of ``replace_audit``): the
    findings are known in advance.

    Planted, by position in the first split's list (``a``) and the last split's (``b``): ``b[0]`` is a byte
    copy of ``a[0]`` (same class: an exact duplicate, leaked when the splits differ); ``b`` of the third
    class is a copy of ``a`` of the second (exact, conflicting labels); ``a[1]`` is ``a[0]`` a little
    brighter (near, score 0.95). Suspect labels come from ``core.audit`` on the stored probabilities.
    """
    # Imported here: only a store with a planted audit needs the audit's search code (and cleanlab).
    from core.audit import (
        AuditReport,
        ImageRef,
        accuracy_without_leakage,
        find_conflicts,
        find_leakage,
        find_suspect_labels,
        group_pairs,
    )

    first = [r for r in records if r.split == records[0].split]
    last = [r for r in records if r.split == records[-1].split]
    by_class = lambda rs, c: [r for r in rs if r.label == c]  # noqa: E731
    planted = [
        (first[0], last[0] if last[0] is not first[0] else last[-1], "exact"),
        (by_class(first, 1)[0], by_class(last, 2)[-1], "exact"),
        (first[0], first[1], "near"),
    ]
    for src, dst, kind in planted:
        if kind == "exact":
            shutil.copyfile(data_root / src.relpath, data_root / dst.relpath)
        else:
            with Image.open(data_root / src.relpath) as im:
                arr = np.clip(np.asarray(im.convert("RGB"), np.float32) * 1.08, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(data_root / dst.relpath, quality=90)
    refs = [ImageRef(r.split, r.relpath, r.label, ids[(r.split, r.relpath)]) for r in records]
    pos = {(r.split, r.relpath): i for i, r in enumerate(records)}
    pairs = pd.DataFrame(
        sorted((min(pos[(a.split, a.relpath)], pos[(b.split, b.relpath)]),
                max(pos[(a.split, a.relpath)], pos[(b.split, b.relpath)]), kind, 1.0 if kind == "exact" else 0.95)
               for a, b, kind in planted),
        columns=["i", "j", "kind", "score"],
    )
    groups = group_pairs(pairs, len(refs))
    leakage = find_leakage(refs, groups, pairs)
    scored = [i for i, r in enumerate(refs) if r.image_id in full]
    suspects = find_suspect_labels(np.array([refs[i].label for i in scored]),
                                   np.stack([full[refs[i].image_id][1] for i in scored]))
    suspects["index"] = np.asarray(scored, dtype=int)[suspects["index"].to_numpy(int)]
    report = AuditReport(images=refs, groups=groups, pairs=pairs, leakage=leakage,
                         conflicts=find_conflicts(refs, groups), suspects=suspects.reset_index(drop=True),
                         skipped=[], stats={"n_images": len(refs), "n_readable": len(refs), "hash_seconds": 0.1,
                                            "search_seconds": 0.1, "n_pairs": len(pairs), "n_groups": len(groups)})
    preds = pd.DataFrame([(r.split, r.relpath, r.label, full[r.image_id][0]) for r in refs],
                         columns=["split", "relpath", "label", "pred"])
    acc = accuracy_without_leakage(preds, report.to_frames()["leakage"])
    return dict(seconds=0.2, report={**report.to_dict(), "class_names": list(names)},
                leakage_accuracy=json.loads(acc.to_json(orient="records")))


def build_store(
    tmp_path: Path,
    *,
    n_classes: int = 10,
    n_per_class: int | dict[str, int] = 4,
    error_rate: float = 0.3,
    with_errors: bool = True,
    splits: Sequence[str] = (VALID, TEST),
    image_size: int = 64,
    seed: int = 0,
    file_size: Optional[int] = None,
    reuse_files: Optional[int] = None,
    cam_size: int = 7,
    name: str = "synthetic",
    audit: bool = False,
    trust: bool = False,
    methods: Optional[Sequence[str]] = None,
    boxes: bool = False,
) -> tuple[str, int, Path]:
    """Build a store with one complete run; returns ``(db_url, run_id, data_root)``.

    ``n_per_class`` images per class and split (or a dict of them by split). ``reuse_files`` writes only
    that many JPEGs and hard-links the rest to them (fast large stores for the benchmark); ``file_size`` is the JPEG side (default
    ``image_size``).
    ``audit`` plants duplicates among the files (see :func:`plant_audit`) and stores a data audit of them.
    ``trust`` stores faithfulness scores of the first split and a sanity check (see :func:`add_trust`).
    ``methods``: the CAM methods whose maps are stored, as a training job stores them (per method: "pred"
    for a right image, "pred", "true" and "contrast" for a mistake; Eigen-CAM "pred" only); default: the
    Grad-CAM maps of "pred" and, for a mistake, "true". ``boxes`` gives every image an object box (the middle
    half of the picture), so that the trust scores include the pointing game.
    """
    tmp_path = Path(tmp_path)
    rng = np.random.default_rng(seed)
    names = class_list(n_classes)
    data_root = tmp_path / "data"
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url, create=True)
    Session = make_sessionmaker(engine)
    side = file_size or image_size
    rate = error_rate if with_errors else 0.0

    records: list[ImageRecord] = []
    written: list[Path] = []
    for split in splits:
        for c, cname in enumerate(names):
            for j in range(n_per_class[split] if isinstance(n_per_class, dict) else n_per_class):
                rel = f"{split}/{cname}/{j + 1:03d}.jpg"
                path = data_root / rel
                if reuse_files is not None and len(written) >= reuse_files:
                    src = written[len(records) % len(written)]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.link(src, path)
                else:
                    _write_jpeg(path, rng, c, n_classes, side)
                    written.append(path)
                box = [side / 4, side / 4, 3 * side / 4, 3 * side / 4] if boxes else None
                records.append(ImageRecord(split=split, relpath=rel, label=c, width=side, height=side, bbox=box))

    with Session.begin() as s:
        run = create_run(
            s, name=name, config={"epochs_phase1": 3, "epochs_phase2": 4, "batch_size": 32, "lr": 1e-3,
                                  "image_size": image_size, "seed": seed},
            data_root=str(data_root), device="cpu", weights="none", image_size=image_size,
            cam_layer="features.35", class_names=names,
            absent_splits={} if TEST in splits else {TEST: "no test/ folder"},
        )
        run_id = run.id
        record_cams(s, run_id, methods=list(methods or [DEFAULT_METHOD]))
        g = 0
        for phase, n_ep in ((1, 3), (2, 4)):
            for ep in range(1, n_ep + 1):
                g += 1
                add_epoch(
                    s, run_id, phase=phase, epoch=ep, global_epoch=g,
                    train_loss=2.5 / g, train_acc=min(0.99, 0.3 + 0.1 * g), val_loss=2.7 / g + 0.05,
                    val_acc=min(0.97, 0.25 + 0.09 * g), lr=1e-3 if phase == 1 else 1e-4, seconds=12.0,
                )
        ids = upsert_images(s, run_id, records)

    full: dict[int, tuple[int, np.ndarray]] = {}  # image id -> (pred, all classes' probabilities)
    metrics: dict = {"best_val_acc": 0.0}
    by_split: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_split.setdefault(r.split, []).append(r)
    for split, recs in by_split.items():
        rows, cams = [], []
        top1 = top5 = 0
        for r in recs:
            wrong = rng.random() < rate
            if wrong:
                pred = (r.label + 1) % n_classes if rng.random() < 0.7 else int(rng.integers(n_classes))
                if pred == r.label:
                    pred = (r.label + 2) % n_classes
            else:
                pred = r.label
            conf = float(rng.uniform(0.3, 0.99))
            others = [i for i in rng.permutation(n_classes)[:6].tolist() if i != pred]
            if wrong and rng.random() < 0.6 and r.label not in others[:4]:
                others = [r.label] + others
            idx = [pred] + others[: min(4, n_classes - 1)]
            rest = rng.dirichlet(np.ones(len(idx) - 1)) * (1 - conf) * 0.9 if len(idx) > 1 else np.array([])
            probs = [conf] + sorted(rest.tolist(), reverse=True)
            top1 += pred == r.label
            top5 += r.label in idx
            image_id = ids[(r.split, r.relpath)]
            p_true = conf if pred == r.label else float(rest[idx.index(r.label) - 1]) if r.label in idx else 1e-3
            full[image_id] = (pred, top5_to_probs([idx], [probs], n_classes)[0])
            rows.append(dict(image_id=image_id, run_id=run_id, pred=pred, confidence=conf, top5_idx=idx,
                             top5_prob=probs, loss=float(-np.log(max(p_true, 1e-6)))))
            if methods is None:
                targets = [(TARGET_PRED, pred)] + ([(TARGET_TRUE, r.label)] if pred != r.label else [])
                layout = [(DEFAULT_METHOD, t, cls) for t, cls in targets]
            else:
                layout = [(m, t, r.label if t == TARGET_TRUE else pred)
                          for m in methods for t in stored_targets(m, pred == r.label)]
            for method, target, cls in layout:
                cams.append(dict(image_id=image_id, run_id=run_id, method=method, target=target,
                                 class_index=cls, h=cam_size, w=cam_size,
                                 data=_blob(rng, cam_size, cam_size).astype("<f2").tobytes()))
        n = len(recs)
        with Session.begin() as s:
            begin_evaluation(s, run_id, split)
            add_predictions(s, rows, cams)
            finish_evaluation(s, run_id, split, n_images=n, top1=top1 / n, top5=top5 / n, loss=1.0)
        metrics[split] = {"top1": top1 / n, "top5": top5 / n}
    metrics["best_val_acc"] = metrics.get(VALID, {}).get("top1", 0.0)
    with Session.begin() as s:
        finish_run(s, run_id, "complete", metrics=metrics, best_epoch=7)
    if audit:
        with Session.begin() as s:
            replace_audit(s, run_id, **plant_audit(data_root, records, ids, full, names))
    engine.dispose()
    if trust:
        add_trust(url, run_id, split=splits[0], seed=seed,
                  methods=tuple(methods or [DEFAULT_METHOD]) + BASELINES)
    return url, run_id, data_root


TRUST_METHODS = (DEFAULT_METHOD,) + BASELINES
# How faithful each map is made to look: the lower, the faster its deletion curve falls. Methods not named
# here are spread between Grad-CAM's level and the random map's, in the order given.
TRUST_LEVELS = {DEFAULT_METHOD: 0.25, BASELINE_RANDOM: 0.45, BASELINE_CENTRE: 0.4}
SANITY_STAGES = (("repeat", "reference"), ("noise", "reference"), ("classifier", "randomised"),
                 ("reduce", "randomised"), ("conv5_4", "randomised"), ("conv5_3", "randomised"))


def add_trust(url: str, run_id: int, *, split: str = VALID, steps: int = 4, seed: int = 0,
              methods: Sequence[str] = TRUST_METHODS) -> None:
    """Store what ``jobs.trust`` writes for the predictions of ``split``: per image one row per map
    (``methods``, CAM methods and baselines) of the predicted class, and of the true class for a mistake, with
    falling deletion and rising insertion curves (Grad-CAM's deletion AUC mostly, not always, below the random
    map's; see ``TRUST_LEVELS``); for the correctly classified images with a box, the pointing game of
    every map (the CAM methods hit more often than the baselines); and a sanity check whose similarities fall
    along ``SANITY_STAGES``."""
    rng = np.random.default_rng(seed + 7919)  # its own stream: the rest of the store does not change
    fractions = np.linspace(0.0, 1.0, steps + 1)
    engine = make_engine(url, create=False)
    Session = make_sessionmaker(engine)
    with Session() as s:
        preds = queries.predictions_frame(s, run_id, [split])
        boxed = set(queries.images_frame(s, run_id, [split]).dropna(subset=["bbox"])["image_id"].astype(int))
    others = [m for m in methods if m not in TRUST_LEVELS]
    levels = {**TRUST_LEVELS, **{m: 0.25 + 0.15 * (k + 1) / (len(others) + 1) for k, m in enumerate(others)}}
    rows, points = [], []
    for p in preds.itertuples():
        targets = [(TARGET_PRED, int(p.pred))] + ([(TARGET_TRUE, int(p.label))] if p.pred != p.label else [])
        for target, cls in targets:
            for method in methods:
                level = levels[method] + rng.uniform(-0.2, 0.2)
                deletion = (1 - fractions) ** (1 / max(level, 0.05) - 1) * p.confidence
                insertion = fractions ** (max(level, 0.05) / (1 - level)) * p.confidence
                auc = lambda y: float(np.sum((y[1:] + y[:-1]) * np.diff(fractions)) / 2)  # noqa: E731
                rows.append(dict(run_id=run_id, image_id=int(p.image_id), target=target, class_index=cls,
                                 method=method, deletion_auc=auc(deletion), insertion_auc=auc(insertion),
                                 deletion_curve=deletion.round(4).tolist(),
                                 insertion_curve=insertion.round(4).tolist()))
        if p.pred == p.label and int(p.image_id) in boxed:
            for method in methods:
                hit = bool(rng.random() < (0.5 if method in BASELINES else 0.9 - levels[method]))
                points.append(dict(image_id=int(p.image_id), method=method, hit=hit, box_share=0.25))
    stages = []
    for k, (stage, kind) in enumerate(SANITY_STAGES):
        mean = 1.0 if stage == "repeat" else 0.9 if kind == "reference" else 0.6 / k
        stages.append(dict(stage=stage, kind=kind, modules=[] if kind == "reference" else [stage], n=4,
                           spearman_mean=mean, spearman_std=0.0 if stage == "repeat" else 0.05,
                           ssim_mean=mean * 0.8, ssim_std=0.0 if stage == "repeat" else 0.04))
    with Session.begin() as s:
        replace_trust_scores(s, run_id, preds["image_id"].tolist(), rows)
        replace_pointing_scores(s, run_id, preds["image_id"].tolist(), points)
        replace_sanity_check(s, run_id, layer="features.35", n_images=4, stages=stages,
                             settings=dict(steps=steps, fill="mean", split=split, images=len(preds), seed=seed))
    engine.dispose()


def add_audit(url: str, run_id: int, groups: Sequence[Sequence[tuple[str, str, int]]]) -> None:
    """Store a data audit for the run: ``groups`` of (split, relpath, label) members, each group an exact
    duplicate set, with the accuracy-without-leakage rows that ``jobs.audit`` would write."""
    engine = make_engine(url, create=False)
    report = {
        "stats": {"n_images": sum(len(g) for g in groups)},
        "groups": [
            {"id": k, "kind": "exact", "score": 1.0,
             "members": [{"index": j, "split": s, "relpath": p, "label": lab} for j, (s, p, lab) in enumerate(g)]}
            for k, g in enumerate(groups)
        ],
        "leakage": [], "conflicts": [], "suspects": [], "skipped": [],
    }
    leaked = sum(1 for g in groups for s, _, _ in g if s != TRAIN) - len(groups)
    acc = [{"split": VALID, "n": 40, "accuracy": 0.7, "n_leaked": max(leaked, 0), "n_clean": 40 - max(leaked, 0),
            "accuracy_clean": 0.68, "change": -0.02}]
    with make_sessionmaker(engine).begin() as s:
        replace_audit(s, run_id, seconds=0.1, report=report, leakage_accuracy=acc)
    engine.dispose()


def add_hashes(url: str, run_id: int) -> int:
    """Record the sha256 of the run's files, as ``jobs.train`` does (after ``plant_audit`` copied some over
    others, so that copies share a hash); returns how many were recorded."""
    from core.reviews import file_sha256
    from db.store import set_image_hashes

    engine = make_engine(url, create=False)
    S = make_sessionmaker(engine)
    with S() as s:
        root = Path(queries.run_info(s, run_id).data_root)
        missing = queries.images_without_sha256(s, run_id)
    hashes = {i: file_sha256(root / rel) for i, rel in missing if (root / rel).is_file()}
    with S.begin() as s:
        set_image_hashes(s, hashes)
    engine.dispose()
    return len(hashes)
