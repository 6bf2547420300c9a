"""The evaluation pass shared by ``jobs.train`` and ``jobs.cams``: predictions and Grad-CAM maps into the store.

Each split is sharded over the ranks without padding (every image exactly once), the results are gathered
on rank 0 and written there; a single process writes them in chunks as it goes. A split's ``evaluations`` row
reads ``running`` until its last row is written, so an interrupted pass is never mistaken for a complete one;
running the pass again replaces its rows.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional, Sequence

import torch
from sqlalchemy.orm import Session, sessionmaker

from core import dist
from core.cache import DecodedCache
from core.cammaps import DEFAULT_METHOD
from core.data import DatasetIndex
from core.embed import with_vectors
from core.engine import BatchResult, Skipped, predict_batches
from core.feed import split_feed
from core.metrics import encode_logits
from core.model import ModelMeta
from db import store
from jobs.camstore import map_rows, methods_explainer
from jobs.vectors import vector_rows

log = logging.getLogger(__name__)

# Rows per transaction while evaluating: small enough that progress shows and a kill loses little.
WRITE_CHUNK = 32


def make_eval_loader(index: DatasetIndex, split: str, meta: ModelMeta, env: dist.DistEnv, batch_size: int,
                     workers: int, *, device: Optional[torch.device] = None,
                     cache: Optional[DecodedCache] = None) -> tuple[object, Iterable]:
    """The split's data set and this rank's loader: from the decoded cache when ``cache`` gives it (the same
    tensors as the JPEG files, exactly), else from the JPEG files."""
    feed = split_feed(index, split, train=False, size=meta.image_size, batch_size=batch_size, env=env,
                      device=device or torch.device("cpu"), mean=meta.mean, std=meta.std, workers=workers,
                      cache=cache)
    return feed.dataset, feed.loader


def _rows(res: BatchResult, ids: list[int], run_id: int) -> tuple[list[dict], list[dict]]:
    """Prediction rows and map rows of one batch: every method's maps (``jobs.camstore.map_rows``)."""
    preds = []
    for j, image_id in enumerate(ids):
        pred = int(res.pred[j])
        preds.append(dict(image_id=image_id, run_id=run_id, pred=pred, confidence=float(res.confidence[j]),
                          top5_idx=[int(v) for v in res.top_idx[j]],
                          top5_prob=[round(float(v), 6) for v in res.top_prob[j]],
                          loss=float(res.loss[j]),
                          logits=encode_logits(res.logits[j]) if res.logits is not None else None))
    maps = map_rows(run_id, ids, res.pred, res.label, res.maps) if res.maps is not None else []
    return preds, maps


def evaluate_split(
    Session_: Optional[sessionmaker[Session]],
    run_id: int,
    model: torch.nn.Module,
    meta: ModelMeta,
    index: DatasetIndex,
    split: str,
    *,
    device: torch.device,
    env: dist.DistEnv,
    batch_size: int,
    workers: int,
    cams: bool = True,
    layer: Optional[str] = None,
    cache: Optional[DecodedCache] = None,
    methods: Sequence[str] = (DEFAULT_METHOD,),
    vectors: bool = True,
) -> Optional[dict]:
    """Predict (and explain with every one of ``methods``) one split; rank 0 writes it and returns its
    metrics, other ranks return None.

    ``vectors``: also store each image's feature vector, taken from the same forward."""
    layer = layer or meta.cam_layer
    ds, loader = make_eval_loader(index, split, meta, env, batch_size, workers, device=device, cache=cache)
    skipped = Skipped()
    explain = methods_explainer(layer, methods) if cams else None
    batches: Iterable[BatchResult] = predict_batches(model, loader, device, explain_fn=explain, env=env,
                                                     skipped=skipped, desc=f"evaluate {split}")
    if vectors:
        batches = with_vectors(model, batches)
    if env.distributed:
        gathered = dist.gather_to_main(env, (list(batches), skipped.items))
        if not env.is_main:
            return None
        batches = [r for part, _ in gathered for r in part]
        skipped = Skipped({i: reason for _, items in gathered for i, reason in items.items()})
    assert Session_ is not None
    samples = ds.samples
    # One process writes as it predicts, so the rows (and the dashboard's view of them) grow chunk by
    # chunk under a ``running`` evaluation row and memory stays flat; a kill leaves that row running.
    with Session_.begin() as s:
        store.begin_evaluation(s, run_id, split)
        if cams:
            store.record_cams(s, run_id, layer=layer, methods=methods)
        ids = store.upsert_images(s, run_id, [store.ImageRecord(split, x.relpath, x.label) for x in samples])
    sizes: dict[int, tuple[int, int]] = {}
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    pending_p: list[dict] = []
    pending_c: list[dict] = []
    pending_v: list[dict] = []
    for r in batches:
        sizes.update(r.sizes)
        image_ids = [ids[(split, samples[int(i)].relpath)] for i in r.index]
        p, c = _rows(r, image_ids, run_id)
        pending_p += p
        pending_c += c
        pending_v += vector_rows(r.vectors, image_ids)
        n += len(image_ids)
        correct1 += int((r.pred == r.label).sum())
        correct5 += int((r.top_idx == r.label[:, None]).any(1).sum())
        loss_sum += float(r.loss.sum())
        if len(pending_p) >= WRITE_CHUNK:
            with Session_.begin() as s:
                store.add_predictions(s, pending_p, pending_c)
                store.put_vectors(s, run_id, pending_v)
            pending_p, pending_c, pending_v = [], [], []
    bad = skipped.items
    metrics = {
        "n_images": n,
        "top1": correct1 / n if n else None,
        "top5": correct5 / n if n else None,
        "loss": loss_sum / n if n else None,
    }
    with Session_.begin() as s:
        store.upsert_images(s, run_id, [
            store.ImageRecord(split, samples[i].relpath, samples[i].label, width=w, height=h)
            for i, (w, h) in sizes.items()
        ] + [
            store.ImageRecord(split, samples[i].relpath, samples[i].label, skipped=True, skip_reason=reason)
            for i, reason in bad.items()
        ])
        store.add_predictions(s, pending_p, pending_c)
        store.put_vectors(s, run_id, pending_v)
        store.finish_evaluation(s, run_id, split, **metrics)
    log.info("%s: %d images, top-1 %.4f, top-5 %.4f, %d skipped", split, n, metrics["top1"] or 0,
             metrics["top5"] or 0, len(bad))
    return {**metrics, "skipped": len(bad)}
