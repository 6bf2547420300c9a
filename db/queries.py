"""Read-only queries the dashboard and the report exporter share.

Every function takes a ``session`` and returns a DataFrame or plain Python objects; none of them writes
or commits. Class indices stay integers here; callers map them to names with ``class_names``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import and_, exists, func, inspect, select
from sqlalchemy.orm import Session

from core.cammaps import DEFAULT_METHOD, METHOD_NAMES, TARGET_PRED, TARGET_TRUE, TARGETS, StoredMaps, check_method

from db.models import (
    AuditRow,
    CamMap,
    EpochRow,
    EvalRow,
    ImageRow,
    Prediction,
    Run,
    RunClass,
    SanityCheck,
    TrustScore,
)
from db.store import class_names

PREDICTION_COLUMNS = ["image_id", "split", "relpath", "label", "pred", "confidence", "loss", "has_cam"]


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


# --------------------------------------------------------------------------- runs

def list_runs(session: Session) -> pd.DataFrame:
    """One row per run, newest first: id, name, status, created_at, finished_at, classes."""
    n_classes = (
        select(RunClass.run_id, func.count().label("classes")).group_by(RunClass.run_id).subquery()
    )
    stmt = (
        select(Run.id, Run.name, Run.status, Run.created_at, Run.finished_at, n_classes.c.classes)
        .outerjoin(n_classes, n_classes.c.run_id == Run.id)
        .order_by(Run.id.desc())
    )
    cols = ["id", "name", "status", "created_at", "finished_at", "classes"]
    df = pd.DataFrame(session.execute(stmt).all(), columns=cols)
    if df.empty:
        return _empty(cols)
    df["classes"] = df["classes"].fillna(0).astype(int)
    return df


def default_run_id(session: Session) -> Optional[int]:
    """The newest complete run, else the newest run of any status, else ``None``."""
    for cond in (Run.status == "complete", True):
        rid = session.scalar(select(Run.id).where(cond).order_by(Run.id.desc()).limit(1))
        if rid is not None:
            return int(rid)
    return None


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    status: str
    config: dict[str, Any]
    data_root: str
    device: str
    weights: str
    image_size: int
    cam_layer: Optional[str]
    best_epoch: Optional[int]
    metrics: dict[str, Any]
    absent_splits: dict[str, Any]
    error: Optional[str]
    created_at: Optional[str]
    finished_at: Optional[str]
    classes: tuple[str, ...]


def run_info(session: Session, run_id: int) -> Optional[RunInfo]:
    run = session.get(Run, run_id)
    if run is None:
        return None
    return RunInfo(
        id=run.id,
        name=run.name,
        status=run.status,
        config=dict(run.config or {}),
        data_root=run.data_root,
        device=run.device,
        weights=run.weights,
        image_size=int(run.image_size),
        cam_layer=run.cam_layer,
        best_epoch=run.best_epoch,
        metrics=dict(run.metrics or {}),
        absent_splits=dict(run.absent_splits or {}),
        error=run.error,
        created_at=run.created_at.isoformat(timespec="seconds") if run.created_at else None,
        finished_at=run.finished_at.isoformat(timespec="seconds") if run.finished_at else None,
        classes=tuple(class_names(session, run_id)),
    )


def epochs_frame(session: Session, run_id: int) -> pd.DataFrame:
    """The run's epochs in order: phase, epoch, global_epoch, losses, accuracies, lr, seconds."""
    cols = ["phase", "epoch", "global_epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    stmt = (
        select(*(getattr(EpochRow, c) for c in cols))
        .where(EpochRow.run_id == run_id)
        .order_by(EpochRow.global_epoch)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=cols)
    return df if not df.empty else _empty(cols)


def evaluations_frame(session: Session, run_id: int) -> pd.DataFrame:
    cols = ["split", "status", "n_images", "top1", "top5", "loss"]
    stmt = select(*(getattr(EvalRow, c) for c in cols)).where(EvalRow.run_id == run_id).order_by(EvalRow.split)
    df = pd.DataFrame(session.execute(stmt).all(), columns=cols)
    return df if not df.empty else _empty(cols)


def prediction_splits(session: Session, run_id: int) -> list[str]:
    """Splits that have at least one prediction, in train/valid/test order."""
    found = set(
        session.scalars(
            select(ImageRow.split)
            .join(Prediction, Prediction.image_id == ImageRow.id)
            .where(ImageRow.run_id == run_id)
            .distinct()
        )
    )
    return [s for s in ("train", "valid", "test") if s in found] + sorted(found - {"train", "valid", "test"})


IMAGE_COLUMNS = ["image_id", "split", "relpath", "label", "width", "height", "skipped", "skip_reason", "bbox",
                 "sha256"]


def images_frame(session: Session, run_id: int, splits: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Every image the run recorded (skipped ones too), by id: ``IMAGE_COLUMNS``; ``bbox`` holds a list or None."""
    stmt = select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label, ImageRow.width, ImageRow.height,
                  ImageRow.skipped, ImageRow.skip_reason, ImageRow.bbox, ImageRow.sha256).where(
        ImageRow.run_id == run_id).order_by(ImageRow.id)
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    df = pd.DataFrame(session.execute(stmt).all(), columns=IMAGE_COLUMNS)
    if df.empty:
        return _empty(IMAGE_COLUMNS)
    df["image_id"] = df["image_id"].astype(np.int64)
    df["label"] = df["label"].astype(np.int64)
    df["skipped"] = df["skipped"].astype(bool)
    return df


# --------------------------------------------------------------------------- predictions

def _prediction_select(run_id: int):
    return (
        select(
            ImageRow.id,
            ImageRow.split,
            ImageRow.relpath,
            ImageRow.label,
            Prediction.pred,
            Prediction.confidence,
            Prediction.loss,
            exists().where(CamMap.image_id == ImageRow.id),
        )
        .join(Prediction, Prediction.image_id == ImageRow.id)
        .where(ImageRow.run_id == run_id, ImageRow.skipped.is_(False))
    )


def _typed(rows: list, columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    if df.empty:
        return _empty(columns)
    for c in ("image_id", "label", "pred"):
        df[c] = df[c].astype(np.int64)
    df["confidence"] = df["confidence"].astype(np.float64)
    df["loss"] = pd.to_numeric(df["loss"], errors="coerce")
    df["has_cam"] = df["has_cam"].astype(bool)
    return df


def predictions_frame(session: Session, run_id: int, splits: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Every predicted, non-skipped image: image_id, split, relpath, label, pred, confidence, loss, has_cam."""
    stmt = _prediction_select(run_id)
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    return _typed(session.execute(stmt.order_by(ImageRow.id)).all(), PREDICTION_COLUMNS)


def errors_frame(
    session: Session,
    run_id: int,
    *,
    splits: Optional[Iterable[str]] = None,
    true_classes: Optional[Iterable[int]] = None,
    pred_classes: Optional[Iterable[int]] = None,
    confidence: tuple[float, float] = (0.0, 1.0),
) -> pd.DataFrame:
    """Misclassified images matching the filters, most confident mistakes first."""
    stmt = _prediction_select(run_id).where(Prediction.pred != ImageRow.label)
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    if true_classes is not None:
        stmt = stmt.where(ImageRow.label.in_([int(c) for c in true_classes]))
    if pred_classes is not None:
        stmt = stmt.where(Prediction.pred.in_([int(c) for c in pred_classes]))
    lo, hi = confidence
    stmt = stmt.where(and_(Prediction.confidence >= lo, Prediction.confidence <= hi))
    stmt = stmt.order_by(Prediction.confidence.desc(), ImageRow.id)
    return _typed(session.execute(stmt).all(), PREDICTION_COLUMNS)


def confusion_matrix(
    session: Session, run_id: int, n_classes: int, splits: Optional[Iterable[str]] = None
) -> np.ndarray:
    """Counts ``cm[true, pred]`` of shape (n_classes, n_classes), int64."""
    stmt = (
        select(ImageRow.label, Prediction.pred, func.count())
        .join(Prediction, Prediction.image_id == ImageRow.id)
        .where(ImageRow.run_id == run_id, ImageRow.skipped.is_(False))
        .group_by(ImageRow.label, Prediction.pred)
    )
    if splits is not None:
        stmt = stmt.where(ImageRow.split.in_(list(splits)))
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p, n in session.execute(stmt).all():
        if not (0 <= t < n_classes and 0 <= p < n_classes):
            raise ValueError(f"run {run_id}: class index ({t}, {p}) outside 0..{n_classes - 1}")
        cm[t, p] = n
    return cm


def confused_pairs(cm: np.ndarray, names: Sequence[str], limit: Optional[int] = 20) -> pd.DataFrame:
    """Off-diagonal cells by count: true, predicted, count, share of the true class, and the reverse count."""
    cols = ["true", "predicted", "count", "share_of_true", "reverse_count", "true_idx", "pred_idx"]
    off = cm.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    if t.size == 0:
        return _empty(cols)
    counts = off[t, p]
    support = cm.sum(axis=1)
    order = np.lexsort((p, t, -counts))
    if limit is not None:
        order = order[:limit]
    t, p, counts = t[order], p[order], counts[order]
    return pd.DataFrame(
        {
            "true": [names[i] for i in t],
            "predicted": [names[j] for j in p],
            "count": counts.astype(int),
            "share_of_true": counts / np.maximum(support[t], 1),
            "reverse_count": cm[p, t].astype(int),
            "true_idx": t.astype(int),
            "pred_idx": p.astype(int),
        }
    )


def per_class_metrics(labels: np.ndarray, preds: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (sklearn, zero where undefined), worst F1 first."""
    from sklearn.metrics import precision_recall_fscore_support

    k = len(names)
    cols = ["class", "precision", "recall", "f1", "support", "predicted", "class_idx"]
    if k == 0:
        return _empty(cols)
    idx = np.arange(k)
    if len(labels):
        p, r, f, s = precision_recall_fscore_support(labels, preds, labels=idx, zero_division=0)
        predicted = np.bincount(np.asarray(preds, dtype=np.int64), minlength=k)[:k]
    else:
        p = r = f = np.zeros(k)
        s = predicted = np.zeros(k, dtype=np.int64)
    df = pd.DataFrame(
        {
            "class": list(names),
            "precision": p,
            "recall": r,
            "f1": f,
            "support": np.asarray(s, dtype=np.int64),
            "predicted": predicted,
            "class_idx": idx,
        }
    )
    return df.sort_values(["f1", "support", "class"], ascending=[True, False, True], kind="stable").reset_index(
        drop=True
    )


# --------------------------------------------------------------------------- one image

@dataclass(frozen=True)
class ImageDetail:
    image_id: int
    split: str
    relpath: str
    label: int
    pred: Optional[int]
    confidence: Optional[float]
    loss: Optional[float]
    top5_idx: tuple[int, ...]
    top5_prob: tuple[float, ...]
    maps: Optional[StoredMaps]  # the maps of the method asked for; None when the image has none
    methods: tuple[str, ...]  # every CAM method with maps of this image
    bbox: Optional[tuple[float, ...]]
    skipped: bool
    skip_reason: Optional[str]
    sha256: Optional[str] = None

    # The layout of schema 1, for pages not yet reading ``maps``: the "pred" map, then the "true" one.
    @property
    def cam_classes(self) -> tuple[int, ...]:
        return tuple(self.maps.class_of(t) for t in self._v1_targets())

    @property
    def cam_h(self) -> int:
        return self.maps.h if self.maps else 0

    @property
    def cam_w(self) -> int:
        return self.maps.w if self.maps else 0

    @property
    def cam_data(self) -> Optional[bytes]:
        if self.maps is None:
            return None
        return b"".join(self.maps.data[self.maps.targets.index(t)] for t in self._v1_targets())

    def _v1_targets(self) -> tuple[str, ...]:
        if self.maps is None:
            return ()
        return tuple(t for t in (TARGET_PRED, TARGET_TRUE) if t in self.maps.targets)


def image_detail(session: Session, run_id: int, image_id: int, method: str = DEFAULT_METHOD) -> Optional[ImageDetail]:
    """One image of the run with its prediction and its raw ``method`` maps; ``None`` when the run has no
    such image."""
    row = session.execute(
        select(ImageRow, Prediction)
        .outerjoin(Prediction, Prediction.image_id == ImageRow.id)
        .where(ImageRow.id == image_id, ImageRow.run_id == run_id)
    ).first()
    if row is None:
        return None
    img, pr = row
    methods = _ordered_methods(session.scalars(
        select(CamMap.method).where(CamMap.image_id == image_id, CamMap.run_id == run_id).distinct()))
    return ImageDetail(
        image_id=img.id,
        split=img.split,
        relpath=img.relpath,
        label=img.label,
        pred=pr.pred if pr else None,
        confidence=pr.confidence if pr else None,
        loss=pr.loss if pr else None,
        top5_idx=tuple(int(i) for i in (pr.top5_idx or [])) if pr else (),
        top5_prob=tuple(float(x) for x in (pr.top5_prob or [])) if pr else (),
        maps=maps_for(session, run_id, [image_id], method).get(image_id),
        methods=tuple(methods),
        bbox=tuple(img.bbox) if img.bbox else None,
        skipped=bool(img.skipped),
        skip_reason=img.skip_reason,
        sha256=img.sha256,
    )


# Ids per IN (...) list: well under SQLite's and PostgreSQL's limits on bound parameters.
_ID_CHUNK = 500


def maps_for(session: Session, run_id: int, image_ids: Iterable[int],
             method: str = DEFAULT_METHOD) -> dict[int, StoredMaps]:
    """The stored ``method`` maps of several images, ``{image_id: StoredMaps}`` with the targets in
    ``core.cammaps.TARGETS`` order; images without such maps are left out."""
    check_method(method)
    ids = sorted({int(i) for i in image_ids})
    found: dict[int, list] = {}
    for lo in range(0, len(ids), _ID_CHUNK):
        stmt = select(CamMap.image_id, CamMap.target, CamMap.class_index, CamMap.h, CamMap.w, CamMap.data).where(
            CamMap.run_id == run_id, CamMap.method == method, CamMap.image_id.in_(ids[lo:lo + _ID_CHUNK]))
        for row in session.execute(stmt).all():
            found.setdefault(int(row.image_id), []).append(row)
    out = {}
    for image_id, rows in found.items():
        rows.sort(key=lambda r: TARGETS.index(r.target) if r.target in TARGETS else len(TARGETS))
        sizes = {(r.h, r.w) for r in rows}
        if len(sizes) != 1:
            raise ValueError(f"run {run_id}, image {image_id}: {method} maps of different sizes {sorted(sizes)}")
        (h, w), = sizes
        out[image_id] = StoredMaps(image_id=image_id, method=method, targets=tuple(r.target for r in rows),
                                   classes=tuple(int(r.class_index) for r in rows), h=int(h), w=int(w),
                                   data=tuple(bytes(r.data) for r in rows))
    return out


def cams_for(session: Session, run_id: int, image_ids: Iterable[int]) -> dict[int, tuple[tuple[int, ...], int, int, bytes]]:
    """The schema-1 shape of :func:`maps_for` for the gradcam maps, ``{image_id: (classes, h, w, float16
    bytes of the pred map then the true map)}``; kept while pages move to ``maps_for``."""
    out = {}
    for image_id, m in maps_for(session, run_id, image_ids, DEFAULT_METHOD).items():
        targets = [t for t in (TARGET_PRED, TARGET_TRUE) if t in m.targets]
        out[image_id] = (tuple(m.class_of(t) for t in targets), m.h, m.w,
                         b"".join(m.data[m.targets.index(t)] for t in targets))
    return out


def _ordered_methods(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [m for m in METHOD_NAMES if m in names] + sorted(names - set(METHOD_NAMES))


def stored_methods(session: Session, run_id: int) -> list[str]:
    """The CAM methods the run has maps of, in ``core.cammaps.METHOD_NAMES`` order."""
    return _ordered_methods(session.scalars(select(CamMap.method).where(CamMap.run_id == run_id).distinct()))


# --------------------------------------------------------------------------- data audit

FLAG_COLUMNS = ["image_id", "split", "relpath", "label", "flags", "note"]
FLAG_KINDS = ("duplicate", "leak", "conflict", "suspect")


def audit_stamp(session: Session, run_id: int) -> Optional[str]:
    """When the run's data audit was written (ISO time), ``None`` when it has none; cheap to poll."""
    when = session.scalar(select(AuditRow.created_at).where(AuditRow.run_id == run_id))
    return when.isoformat(timespec="seconds") if when is not None else None


def audit_report(session: Session, run_id: int) -> Optional[dict[str, Any]]:
    """The run's data audit (``AuditReport.to_dict()`` plus ``class_names``) with ``leakage_accuracy``,
    ``created_at`` and ``seconds`` added; ``None`` when the run has not been audited."""
    row = session.get(AuditRow, run_id)
    if row is None:
        return None
    report = dict(row.report or {})
    for key in ("groups", "leakage", "conflicts", "suspects", "skipped"):
        report.setdefault(key, [])
    report.setdefault("stats", {})
    report.setdefault("class_names", class_names(session, run_id))
    report["leakage_accuracy"] = list(row.leakage_accuracy or [])
    report["created_at"] = row.created_at.isoformat(timespec="seconds") if row.created_at else None
    report["seconds"] = float(row.seconds)
    return report


def flagged_images(session: Session, run_id: int) -> pd.DataFrame:
    """The images the run's data audit involves (see :func:`flags_from_report`); empty without an audit."""
    return flags_from_report(audit_report(session, run_id))


def flags_from_report(report: Optional[dict[str, Any]]) -> pd.DataFrame:
    """One row per image the audit involves: image_id, split, relpath, label, ``flags`` (the findings,
    comma-separated, from ``FLAG_KINDS``) and ``note``, a short reason for a tile caption.

    ``report`` is what :func:`audit_report` returns; images without a store id are left out.
    """
    if not report:
        return _empty(FLAG_COLUMNS)
    rows: dict[int, dict[str, Any]] = {}

    def entry(ref: dict[str, Any]) -> Optional[dict[str, Any]]:
        if ref.get("image_id") is None:
            return None
        return rows.setdefault(int(ref["image_id"]), {
            "image_id": int(ref["image_id"]), "split": ref["split"], "relpath": ref["relpath"],
            "label": int(ref["label"]), "flags": set(), "dup": None, "leak": None, "suspect": None})

    conflicting = {int(c["group"]) for c in report.get("conflicts", [])}
    for g in report.get("groups", []):
        for m in g["members"]:
            e = entry(m)
            if e is None:
                continue
            others = [o["relpath"] for o in g["members"] if o is not m]
            e["flags"].add("duplicate")
            e["dup"] = others[0] + (f" (+{len(others) - 1} more)" if len(others) > 1 else "")
            if int(g["id"]) in conflicting:
                e["flags"].add("conflict")
    for lk in report.get("leakage", []):
        e = entry(lk["image"])
        if e is not None:
            e["flags"].add("leak")
            e["leak"] = lk["duplicate_of"]
    for sp in report.get("suspects", []):
        e = entry(sp)
        if e is not None:
            e["flags"].add("suspect")
            e["suspect"] = sp
    if not rows:
        return _empty(FLAG_COLUMNS)
    out = []
    for e in rows.values():
        parts = []
        if e["leak"] is not None:
            parts.append(f"leaked: duplicate of {e['leak']['relpath']}")
        elif e["dup"] is not None:
            parts.append(f"duplicate of {e['dup']}")
        if "conflict" in e["flags"]:
            parts.append("labelled differently")
        if e["suspect"] is not None:
            parts.append("suspect label")
        out.append({**{k: e[k] for k in ("image_id", "split", "relpath", "label")},
                    "flags": ", ".join(k for k in FLAG_KINDS if k in e["flags"]),
                    "note": "⚠ " + "; ".join(parts)})
    df = pd.DataFrame(out, columns=FLAG_COLUMNS).sort_values("image_id", kind="stable").reset_index(drop=True)
    df["image_id"] = df["image_id"].astype(np.int64)
    df["label"] = df["label"].astype(np.int64)
    return df


LEAKAGE_COLUMNS = ["split", "n", "accuracy", "n_leaked", "n_clean", "accuracy_clean", "change"]


def audit_for(session: Session, run_id: int) -> Optional[tuple[dict[str, Any], pd.DataFrame]]:
    """The run's latest data audit (:func:`audit_report`) and its accuracy with leaked images removed as a
    DataFrame, one row per split; ``None`` when the run was never audited."""
    report = audit_report(session, run_id)
    if report is None:
        return None
    leakage = pd.DataFrame(report["leakage_accuracy"])
    leakage = leakage.reindex(columns=LEAKAGE_COLUMNS) if not leakage.empty else _empty(LEAKAGE_COLUMNS)
    return report, leakage


# --------------------------------------------------------------------------- trust

TRUST_COLUMNS = ["image_id", "split", "relpath", "label", "pred", "target", "class_index", "method",
                 "deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve"]


def trust_frame(session: Session, run_id: int, *, curves: bool = True) -> pd.DataFrame:
    """One row per scored map of the run (``TRUST_COLUMNS``; the curve columns hold lists, or None
    without ``curves``), ordered by image, target and method."""
    cols = [TrustScore.deletion_curve, TrustScore.insertion_curve] if curves else []
    stmt = (
        select(ImageRow.id, ImageRow.split, ImageRow.relpath, ImageRow.label, Prediction.pred, TrustScore.target,
               TrustScore.class_index, TrustScore.method, TrustScore.deletion_auc, TrustScore.insertion_auc, *cols)
        .join(ImageRow, ImageRow.id == TrustScore.image_id)
        .outerjoin(Prediction, Prediction.image_id == ImageRow.id)
        .where(TrustScore.run_id == run_id)
        .order_by(ImageRow.id, TrustScore.target, TrustScore.method)
    )
    rows = session.execute(stmt).all()
    if not rows:
        return _empty(TRUST_COLUMNS)
    names = TRUST_COLUMNS if curves else TRUST_COLUMNS[:-2]
    df = pd.DataFrame(rows, columns=names)
    if not curves:
        df["deletion_curve"] = None
        df["insertion_curve"] = None
    df["pred"] = pd.to_numeric(df["pred"], errors="coerce").astype("Int64")
    return df


def sanity_check(session: Session, run_id: int) -> Optional[dict[str, Any]]:
    """The run's latest sanity check: created_at, layer, n_images, stages (list of dicts), settings."""
    row = session.get(SanityCheck, run_id)
    if row is None:
        return None
    return dict(created_at=row.created_at, layer=row.layer, n_images=row.n_images, stages=list(row.stages),
                settings=dict(row.settings))


def trust_summary(frame: pd.DataFrame, target: str = "pred") -> dict[str, Any]:
    """Aggregate scores of one target: per method the mean AUCs and count, and how often Grad-CAM beats
    each baseline on the same image (deletion: lower AUC; insertion: higher AUC)."""
    f = frame[frame["target"] == target]
    methods = {
        m: dict(n=int(len(g)), deletion_auc=float(g["deletion_auc"].mean()),
                insertion_auc=float(g["insertion_auc"].mean()))
        for m, g in f.groupby("method", sort=True)
    }
    wide = f.pivot_table(index="image_id", columns="method", values=["deletion_auc", "insertion_auc"])
    beats: dict[str, dict[str, float]] = {}
    if "gradcam" in methods:
        for base in (m for m in methods if m != "gradcam"):
            d, i = wide["deletion_auc"], wide["insertion_auc"]
            beats[base] = dict(deletion=float((d["gradcam"] < d[base]).mean()),
                               insertion=float((i["gradcam"] > i[base]).mean()))
    return dict(target=target, n_images=int(f["image_id"].nunique()), methods=methods, gradcam_beats=beats)


def trust_per_class(frame: pd.DataFrame, names: Sequence[str], target: str = "pred") -> pd.DataFrame:
    """Per true class: images, mean deletion / insertion AUC per method (columns ``del_<m>``, ``ins_<m>``)
    and the share of images where Grad-CAM's deletion AUC is below the random map's (``beats_random``)."""
    f = frame[frame["target"] == target]
    if f.empty:
        return _empty(["class", "images", "beats_random"])
    means = f.pivot_table(index="label", columns="method", values=["deletion_auc", "insertion_auc"], aggfunc="mean")
    out = pd.DataFrame(index=means.index)
    out.insert(0, "class", [names[int(i)] if 0 <= int(i) < len(names) else str(i) for i in means.index])
    out["images"] = f.groupby("label")["image_id"].nunique()
    for kind, short in (("deletion_auc", "del"), ("insertion_auc", "ins")):
        for m in means[kind].columns:
            out[f"{short}_{m}"] = means[kind][m]
    wide = f.pivot_table(index=["label", "image_id"], columns="method", values="deletion_auc")
    if {"gradcam", "random"} <= set(wide.columns):
        out["beats_random"] = (wide["gradcam"] < wide["random"]).groupby(level="label").mean()
    else:
        out["beats_random"] = np.nan
    return out.reset_index(drop=True)


class TrustTables(NamedTuple):
    """What a report shows of a run's trust job; each part ``None`` when the run has none."""

    scores: Optional[pd.DataFrame]  # trust_frame(curves=False), rows of the chosen splits
    per_class: Optional[pd.DataFrame]  # trust_per_class of the predicted-class maps
    sanity: Optional[dict[str, Any]]  # sanity_check


def trust_for(session: Session, run_id: int, names: Sequence[str],
              splits: Optional[Iterable[str]] = None) -> TrustTables:
    """The run's faithfulness scores (of ``splits``, default all), their per-class table and its sanity
    check. A store written before the trust tables existed reads as a run without them."""
    tables = inspect(session.connection())
    if not (tables.has_table(TrustScore.__tablename__) and tables.has_table(SanityCheck.__tablename__)):
        return TrustTables(None, None, None)
    scores = trust_frame(session, run_id, curves=False)
    if splits is not None:
        scores = scores[scores["split"].isin(list(splits))].reset_index(drop=True)
    per_class = trust_per_class(scores, names, "pred")
    return TrustTables(scores=scores if not scores.empty else None,
                       per_class=per_class if not per_class.empty else None,
                       sanity=sanity_check(session, run_id))
