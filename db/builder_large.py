"""Large generated stores (ImageNet-1k's shape: 1,000 classes, 1.28 million train images) for the scale bench.

``build_large_store`` writes one complete run with batched inserts (Core ``insert`` of a few thousand rows a
statement): train images as image rows without predictions, as a run's training set is stored; valid and
test images with predictions (top 5, loss), their logit vectors and Grad-CAM maps (the predicted class's,
and the true class's for a mistake). Mistakes follow ``db.builder``'s pattern (class ``i`` mostly taken for
``i + 1``), so that confused pairs are predictable. Only the evaluated images get files: ``files`` real
JPEGs, hard-linked under every other evaluated image's path (train rows point at no file: no page opens them).

``prediction_batch`` generates what an evaluation writes for a batch of images at no model cost; the
bench uses it as a GPU-speed producer to time the store's writes (``write_rate``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from sqlalchemy import func, insert, select

from core.cammaps import DEFAULT_METHOD, TARGET_PRED, TARGET_TRUE
from core.splits import TEST, TRAIN, VALID
from db.builder import _blob, _write_jpeg, class_list
from db.models import ImageRow
from db.store import (
    add_epoch,
    add_predictions,
    begin_evaluation,
    create_run,
    finish_evaluation,
    finish_run,
    make_engine,
    make_sessionmaker,
    record_cams,
)

CHUNK = 5_000  # rows a statement: well inside SQLite's and PostgreSQL's parameter limits per executemany


@dataclass(frozen=True)
class LargeStore:
    url: str
    run_id: int
    data_root: Path
    n_images: int
    n_predictions: int
    seconds: float  # to build, files included
    write_seconds: float  # of it, writing predictions, logits and maps


def prediction_batch(rng: np.random.Generator, run_id: int, image_ids: np.ndarray, labels: np.ndarray,
                     n_classes: int, *, error_rate: float, cam_size: int, bank: list[bytes],
                     logits: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Prediction rows (with float16 logits) and map rows for images ``image_ids`` of classes ``labels``;
    also returns how many are right. The predicted class has the top logit, so confidence, top 5 and loss
    are what the logits say."""
    n = len(image_ids)
    wrong = rng.random(n) < error_rate
    near = np.where(rng.random(n) < 0.7, (labels + 1) % n_classes, rng.integers(0, n_classes, n))
    pred = np.where(wrong, np.where(near == labels, (labels + 2) % n_classes, near), labels)
    z = rng.standard_normal((n, n_classes), dtype=np.float32)
    z[np.arange(n), pred] = z.max(axis=1) + rng.uniform(0.2, 6.0, n).astype(np.float32)
    z = z.astype("<f2")
    zf = z.astype(np.float32)
    zf -= zf.max(axis=1, keepdims=True)
    prob = np.exp(zf)
    prob /= prob.sum(axis=1, keepdims=True)
    top = np.argsort(-prob, axis=1)[:, :5]
    top_p = np.take_along_axis(prob, top, axis=1)
    loss = -np.log(np.maximum(prob[np.arange(n), labels], 1e-12))
    rows, maps = [], []
    for i in range(n):
        iid, p, t = int(image_ids[i]), int(pred[i]), int(labels[i])
        rows.append(dict(image_id=iid, run_id=run_id, pred=p, confidence=float(top_p[i, 0]),
                         top5_idx=top[i].tolist(), top5_prob=[round(float(x), 6) for x in top_p[i]],
                         loss=float(loss[i]), logits=z[i].tobytes() if logits else None))
        for target, cls in ((TARGET_PRED, p),) + (((TARGET_TRUE, t),) if p != t else ()):
            maps.append(dict(image_id=iid, run_id=run_id, method=DEFAULT_METHOD, target=target, class_index=cls,
                             h=cam_size, w=cam_size, data=bank[(iid + cls) % len(bank)]))
    return rows, maps, int((pred == labels).sum())


def map_bank(rng: np.random.Generator, cam_size: int, n: int = 64) -> list[bytes]:
    return [_blob(rng, cam_size, cam_size).astype("<f2").tobytes() for _ in range(n)]


def _write_files(data_root: Path, rng: np.random.Generator, relpaths: list[str], labels: np.ndarray,
                 n_classes: int, files: int, side: int) -> None:
    written: list[Path] = []
    for k, (rel, lab) in enumerate(zip(relpaths, labels)):
        path = data_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(written) < files:
            _write_jpeg(path, rng, int(lab), n_classes, side)
            written.append(path)
        else:
            os.link(written[k % len(written)], path)


def build_large_store(tmp_path: Path, *, url: Optional[str] = None, n_classes: int = 1000,
                      train_per_class: int = 1281, eval_per_class: int = 50, error_rate: float = 0.2,
                      cam_size: int = 14, files: int = 200, file_size: int = 64, logits: bool = True,
                      seed: int = 0, name: str = "large", say=lambda msg: None) -> LargeStore:
    """One complete run of ``n_classes`` x (``train_per_class`` train + ``eval_per_class`` valid and test)
    images at ``url`` (default a SQLite file in ``tmp_path``); files under ``tmp_path/data``."""
    if n_classes < 2 or train_per_class < 0 or eval_per_class < 1:
        raise ValueError(f"need >= 2 classes, >= 0 train and >= 1 eval images a class; got {n_classes}, "
                         f"{train_per_class}, {eval_per_class}")
    t0 = time.perf_counter()
    tmp_path = Path(tmp_path)
    rng = np.random.default_rng(seed)
    names = class_list(n_classes)
    data_root = tmp_path / "data"
    url = url or f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url, create=True)
    Session = make_sessionmaker(engine)
    with Session.begin() as s:
        run_id = create_run(
            s, name=name, config={"epochs_phase1": 1, "epochs_phase2": 1, "batch_size": 256, "image_size": 224,
                                  "seed": seed, "generated": True},
            data_root=str(data_root), device="cuda", weights="imagenet", image_size=224, cam_layer="features.35",
            class_names=names, absent_splits={}).id
        record_cams(s, run_id, methods=[DEFAULT_METHOD])
        for g, phase in ((1, 1), (2, 2)):
            add_epoch(s, run_id, phase=phase, epoch=1, global_epoch=g, train_loss=2.0 / g, train_acc=0.5 + 0.2 * g,
                      val_loss=2.2 / g, val_acc=0.45 + 0.2 * g, lr=1e-3, seconds=3600.0)
        next_id = int(s.scalar(select(func.coalesce(func.max(ImageRow.id), 0)))) + 1
    bank = map_bank(rng, cam_size)
    metrics: dict[str, Any] = {}
    n_images = n_predictions = 0
    write_s = 0.0
    for split, per in ((TRAIN, train_per_class), (VALID, eval_per_class), (TEST, eval_per_class)):
        if per == 0:
            continue
        labels = np.repeat(np.arange(n_classes, dtype=np.int64), per)
        ids = np.arange(next_id, next_id + len(labels), dtype=np.int64)
        next_id += len(labels)
        relpaths = [f"{split}/{names[c]}/{j + 1:05d}.jpg" for c in range(n_classes) for j in range(per)]
        with Session.begin() as s:
            for lo in range(0, len(ids), CHUNK * 4):
                s.execute(insert(ImageRow), [
                    dict(id=int(ids[k]), run_id=run_id, split=split, relpath=relpaths[k], label=int(labels[k]),
                         width=file_size, height=file_size, skipped=False)
                    for k in range(lo, min(lo + CHUNK * 4, len(ids)))])
        n_images += len(ids)
        say(f"{split}: {len(ids):,} image rows ({time.perf_counter() - t0:.0f} s)")
        if split == TRAIN:
            continue
        _write_files(data_root, rng, relpaths, labels, n_classes, files, file_size)
        with Session.begin() as s:
            begin_evaluation(s, run_id, split)
        right = 0
        for lo in range(0, len(ids), CHUNK):
            rows, maps, r = prediction_batch(rng, run_id, ids[lo:lo + CHUNK], labels[lo:lo + CHUNK], n_classes,
                                             error_rate=error_rate, cam_size=cam_size, bank=bank, logits=logits)
            right += r
            t = time.perf_counter()
            with Session.begin() as s:
                add_predictions(s, rows, maps)
            write_s += time.perf_counter() - t
        n_predictions += len(ids)
        top1 = right / len(ids)
        with Session.begin() as s:
            finish_evaluation(s, run_id, split, n_images=len(ids), top1=top1, top5=min(1.0, top1 + 0.1), loss=1.0)
        metrics[split] = {"top1": top1, "top5": min(1.0, top1 + 0.1)}
        say(f"{split}: {len(ids):,} predictions with logits and maps ({time.perf_counter() - t0:.0f} s)")
    metrics["best_val_acc"] = metrics.get(VALID, {}).get("top1", 0.0)
    with Session.begin() as s:
        finish_run(s, run_id, "complete", metrics=metrics, best_epoch=2)
    engine.dispose()
    return LargeStore(url, run_id, data_root, n_images, n_predictions, time.perf_counter() - t0, write_s)
