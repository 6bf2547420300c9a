"""A second run over the images of a store that ``db.builder.build_store`` wrote, for the tests and the benchmark
of comparisons: ``add_compared_run`` writes a run (or a snapshot of the first) whose answers and maps are the
first run's, some of them changed. Record the files' hashes first (``db.builder.add_hashes``) so that the
runs match by content.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from core.cammaps import DEFAULT_METHOD, TARGET_PRED, TARGET_TRUE
from db import queries
from db.builder import _blob
from db.store import (
    ImageRecord,
    add_predictions,
    begin_evaluation,
    create_run,
    finish_evaluation,
    finish_run,
    make_engine,
    make_sessionmaker,
    record_cams,
    upsert_images,
)
from db.snapshots import create_snapshot


def add_compared_run(url: str, run_id: int, *, stage: Optional[str] = None, name: Optional[str] = None,
                     lose: float = 0.05, gain: float = 0.4, moved: float = 0.15, seed: int = 1) -> int:
    """A complete run over the same images as ``run_id`` whose answers are the source run's, changed: a right
    image turns wrong with probability ``lose``, a wrong one right with ``gain``. Maps: the source's map of
    the same class, or a new blob where there is none or for a share ``moved`` of the images (attention
    moved). With ``stage`` it is that snapshot of ``run_id`` (``db.snapshots.create_snapshot``), else a run of
    its own named ``name``. Returns its id."""
    rng = np.random.default_rng(seed)
    engine = make_engine(url, create=False)
    Session = make_sessionmaker(engine)
    with Session() as s:
        info = queries.run_info(s, run_id)
        images = queries.images_frame(s, run_id)
        preds = queries.predictions_frame(s, run_id)
        maps = queries.maps_for(s, run_id, preds["image_id"].tolist())
    n_classes = len(info.classes)
    with Session.begin() as s:
        if stage is not None:
            new_id = create_snapshot(s, run_id, stage, through_epoch=3).id
        else:
            new_id = create_run(s, name=name or f"{info.name}-b", config=dict(info.config), data_root=info.data_root,
                                device=info.device, weights=info.weights, image_size=info.image_size,
                                cam_layer=info.cam_layer, class_names=list(info.classes),
                                absent_splits=dict(info.absent_splits)).id
            upsert_images(s, new_id, [ImageRecord(r.split, r.relpath, int(r.label), width=r.width, height=r.height,
                                                  sha256=r.sha256) for r in images.itertuples()])
        record_cams(s, new_id, layer=info.cam_layer, methods=[DEFAULT_METHOD])
        ids = {(r.split, r.relpath): int(r.image_id) for r in queries.images_frame(s, new_id).itertuples()}
    metrics: dict = {}
    for split, part in preds.groupby("split", sort=False):
        rows, cams = [], []
        for r in part.itertuples():
            label, pred = int(r.label), int(r.pred)
            if pred == label and rng.random() < lose:
                pred = (label + 1 + int(rng.integers(n_classes - 1))) % n_classes
            elif pred != label and rng.random() < gain:
                pred = label
            image_id = ids[(split, r.relpath)]
            conf = float(rng.uniform(0.3, 0.99))
            others = [c for c in ([label] if pred != label else []) + rng.permutation(n_classes)[:5].tolist()
                      if c != pred]
            idx = [pred] + list(dict.fromkeys(others))[: min(4, n_classes - 1)]
            rest = (rng.dirichlet(np.ones(len(idx) - 1)) * (1 - conf) * 0.9).tolist() if len(idx) > 1 else []
            rows.append(dict(image_id=image_id, run_id=new_id, pred=pred, confidence=conf, top5_idx=idx,
                             top5_prob=[conf] + sorted(rest, reverse=True), loss=float(-np.log(conf)) if pred == label
                             else 3.0))
            source = maps.get(int(r.image_id))
            shift = rng.random() < moved
            for target, cls in [(TARGET_PRED, pred)] + ([(TARGET_TRUE, label)] if pred != label else []):
                old = None
                if source is not None and not shift:
                    old = next((source.data[k] for k, c in enumerate(source.classes) if c == cls), None)
                h = source.h if source is not None else 7
                data = old if old is not None else _blob(rng, h, h).astype("<f2").tobytes()
                cams.append(dict(image_id=image_id, run_id=new_id, method=DEFAULT_METHOD, target=target,
                                 class_index=cls, h=h, w=h, data=data))
        n = len(rows)
        top1 = sum(row["pred"] == int(lab) for row, lab in zip(rows, part["label"])) / n
        with Session.begin() as s:
            begin_evaluation(s, new_id, split)
            add_predictions(s, rows, cams)
            finish_evaluation(s, new_id, split, n_images=n, top1=top1, top5=1.0, loss=1.0)
        metrics[split] = {"top1": top1, "top5": 1.0}
    with Session.begin() as s:
        finish_run(s, new_id, "complete", metrics=metrics, best_epoch=3 if stage else 7)
    engine.dispose()
    return new_id
