"""CAM maps into the store: every method's rows for a batch, and further methods for an evaluated run.

``jobs.evaluation`` writes a split's predictions and maps together, the maps of every method from one
forward (``methods_explainer``, ``map_rows``). ``add_methods`` (``python -m jobs.cams --methods``) computes
the maps of more methods for the predictions a run already holds, and writes only those: the predictions
and the maps of other methods stay as they are.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from core import cam_methods, dist
from core.cache import DecodedCache
from core.cammaps import TARGET_TRUE, TARGETS, stored_targets
from core.data import DatasetIndex
from core.gradcam import check_methods, encode_maps, predict_and_explain_many
from core.model import ModelMeta
from core.progress import progress
from db import queries, store

log = logging.getLogger(__name__)


def methods_explainer(layer: str, methods: Sequence[str]):
    """``explain_fn`` for ``core.engine.predict_batches``: logits and ``{method: maps (N, 3, h, w)}`` of the
    predicted class, the true class and their contrast, from one forward."""
    methods = check_methods(methods)

    def explain_fn(model, x, y):
        e = predict_and_explain_many(model, x, y, methods, layer=layer,
                                     scorecam_max_channels=cam_methods.SCORECAM_MAX_CHANNELS)
        return e.logits, e.maps

    return explain_fn


def map_rows(run_id: int, image_ids: Sequence[int], preds: Sequence[int], labels: Sequence[int],
             maps: dict[str, np.ndarray]) -> list[dict]:
    """``CamMap`` rows of a batch: per image and method, the targets ``core.cammaps.stored_targets`` keeps
    (a right prediction: "pred" alone; a mistake: "pred", "true" and "contrast"; Eigen-CAM: "pred").

    ``maps[method]`` is (N, 3, h, w) in ``TARGETS`` order. A non-finite value is a ``ValueError`` from
    ``encode_maps``: the store never holds a NaN.
    """
    rows = []
    for j, image_id in enumerate(image_ids):
        pred, label = int(preds[j]), int(labels[j])
        for method, m in maps.items():
            for target in stored_targets(method, pred == label):
                cam = np.asarray(m[j, TARGETS.index(target)], dtype=np.float32)
                rows.append(dict(image_id=int(image_id), run_id=run_id, method=method, target=target,
                                 class_index=label if target == TARGET_TRUE else pred,
                                 h=int(cam.shape[-2]), w=int(cam.shape[-1]), data=encode_maps(cam[None])))
    return rows


def _stored_predictions(Session_, run_id: int, split: str, env: dist.DistEnv) -> dict[str, tuple[int, int]]:
    """``{relpath: (image_id, pred)}`` of the split's stored predictions, read on rank 0, known to all."""
    found = None
    if env.is_main:
        with Session_() as s:
            preds = queries.predictions_frame(s, run_id, [split])
        found = {str(r.relpath): (int(r.image_id), int(r.pred)) for r in preds.itertuples()}
    return dist.broadcast_from_main(env, found)


def _batches(model, loader, samples, stored, methods, layer, device, env, desc) -> Iterator[tuple[list, list]]:
    """Per batch: the image ids explained and their map rows (images without a stored prediction left out)."""
    for x, y, idx, _bad, _sizes in progress(loader, desc, show=env.is_main):
        if x is None:
            continue
        keep = [k for k, i in enumerate(idx.tolist()) if samples[i].relpath in stored]
        if not keep:
            continue
        ids = [stored[samples[int(idx[k])].relpath][0] for k in keep]
        preds = torch.tensor([stored[samples[int(idx[k])].relpath][1] for k in keep])
        labels = y[keep]
        e = predict_and_explain_many(model, x[keep].to(device), labels.to(device), methods, layer=layer,
                                     preds=preds.to(device), scorecam_max_channels=cam_methods.SCORECAM_MAX_CHANNELS)
        maps = {m: v.cpu().numpy() for m, v in e.maps.items()}
        yield ids, map_rows(0, ids, preds.tolist(), labels.tolist(), maps)


def add_methods(
    Session_: Optional[sessionmaker[Session]],
    run_id: int,
    model: torch.nn.Module,
    meta: ModelMeta,
    index: DatasetIndex,
    split: str,
    methods: Sequence[str],
    *,
    device: torch.device,
    env: dist.DistEnv,
    batch_size: int,
    workers: int,
    layer: str,
    cache: Optional[DecodedCache] = None,
) -> Optional[int]:
    """Compute and (re)write the ``methods`` maps of the split's images that have a stored prediction,
    explaining that prediction (not a fresh argmax), the images read as the evaluation reads them (``cache``:
    the decoded cache); record the methods on the run. Returns the images
    written (rank 0; other ranks None). Maps are written per batch, each replacing that batch's earlier maps
    of the same methods, so an interrupted pass can simply be run again."""
    from jobs.evaluation import make_eval_loader  # the evaluation's own preprocessing and sharding

    methods = check_methods(methods)
    stored = _stored_predictions(Session_, run_id, split, env)
    if not stored:
        raise ValueError(f"run {run_id} has no predictions of split {split!r} to explain; run "
                         f"'python -m jobs.cams --run {run_id}' without --methods first")
    ds, loader = make_eval_loader(index, split, meta, env, batch_size, workers, device=device, cache=cache)
    model.eval()
    batches = _batches(model, loader, ds.samples, stored, methods, layer, device, env, f"maps {split}")
    if env.distributed:
        gathered = dist.gather_to_main(env, list(batches))
        if not env.is_main:
            return None
        batches = iter([b for part in gathered for b in part])
    written = 0
    for ids, rows in batches:
        for r in rows:
            r["run_id"] = run_id
        with Session_.begin() as s:
            for m in methods:
                store.replace_maps(s, run_id, m, ids, [r for r in rows if r["method"] == m])
        written += len(ids)
    with Session_.begin() as s:
        store.record_cams(s, run_id, methods=methods)
    log.info("%s: %s maps of %d images written", split, ", ".join(methods), written)
    return written
