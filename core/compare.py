"""Compare two runs on the images they share: which images flipped, is the difference real, did the
explanations move (numpy, pandas, scipy; no torch, no SQL).

Each run comes as a ``RunInput``: a frame of its predictions on one or more splits, its class list and,
optionally, a loader of its stored maps. ``compare_runs`` returns a ``ComparisonResult``.

Matching (``core.runmatch``): by file content (``sha256``), so runs on copies of the data or on a moved
folder still match, else by (split, relpath) where a hash is missing. Images of one run only are counted
and listed (``only_a``, ``only_b``). A matched image whose label differs between the runs (a relabelled
image) is right or wrong in a different sense in each: it is listed in ``relabelled`` and left out of
every figure.

Classes. Runs with different class lists are compared on the classes they share, by name: images whose
label is not a shared class are counted in ``label_not_shared`` and left out; the classes each run has
alone are listed. A prediction of a class that the other run lacks is simply wrong; the confusion matrices
hold shared classes only (such predictions are counted in ``pred_outside``).

Statistics (``core.pairstats``): top-1 of each run with a Wilson interval, McNemar's exact test on the
images only one run gets right, the per-class change of accuracy with a paired bootstrap interval
(resampling images within each class).

Explanation drift (``core.mapdrift``), per map target: "true" compares A's and B's map of the true class
for every matched image (both runs have it: a right prediction's map is the true-class map); "pred"
compares the maps of the predicted class where both runs predict the same class (for different predictions
they explain different classes; where both are right it equals "true"). Flags, on the true-class maps:
"right in both but looking elsewhere" and "flipped and attention moved" (a flip either way).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from core import mapdrift
from core.cammaps import TARGET_PRED, TARGET_TRUE, StoredMaps
from core.pairstats import mcnemar_exact, paired_bootstrap, wilson
from core.runmatch import match_images, prepare

MapLoader = Callable[[Sequence[int]], Mapping[int, StoredMaps]]

DRIFT_TARGETS = (TARGET_TRUE, TARGET_PRED)
CHANGES = ("both right", "right to wrong", "wrong to right", "wrong in both, same", "wrong in both, different")
PER_CLASS_KEYS = ("class", "n", "acc_a", "acc_b", "delta", "ci_low", "ci_high")


@dataclass(frozen=True)
class RunInput:
    """One side of a comparison.

    ``predictions``: one row per predicted image with columns image_id, split, relpath, label, pred and
    optionally sha256 (hex; missing or empty falls back to the path) and confidence. ``label`` and ``pred``
    are class names or indices into ``classes``. ``maps``: ids -> {image_id: StoredMaps} of one CAM method,
    or None for no drift.
    """

    name: str
    predictions: pd.DataFrame
    classes: Sequence[str]
    maps: Optional[MapLoader] = None


# --------------------------------------------------------------------------- result

def _rate(k: int, n: int, level: float) -> dict[str, Any]:
    low, high = wilson(k, n, level)
    return {"correct": int(k), "n": int(n), "acc": k / n if n else None, "ci_low": low, "ci_high": high}


def _p_words(p: float) -> str:
    return "1" if p >= 1 else f"{p:.2f}" if p >= 0.01 else f"{p:.3f}" if p >= 0.001 else "less than 0.001"


def _images(k: int) -> str:
    return f"{k} image" if k == 1 else f"{k} images"


def _median(x: pd.Series) -> Optional[float]:
    x = x.dropna()
    return float(x.median()) if len(x) else None


@dataclass
class ComparisonResult:
    """What ``compare_runs`` found. ``pairs`` has one row per compared image; the flip and flag lists are
    views of it."""

    a: str
    b: str
    split: Optional[str]
    classes: list[str]
    classes_only_a: list[str]
    classes_only_b: list[str]
    pairs: pd.DataFrame
    only_a: pd.DataFrame
    only_b: pd.DataFrame
    relabelled: pd.DataFrame
    label_not_shared: int
    pred_outside: dict[str, int]
    top1_a: dict[str, Any]
    top1_b: dict[str, Any]
    mcnemar_p: float
    per_class: pd.DataFrame
    confusion_a: np.ndarray
    confusion_b: np.ndarray
    drift: dict[str, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def count(self, change: str) -> int:
        return int((self.pairs["change"] == change).sum())

    @property
    def matched(self) -> int:
        return len(self.pairs)

    @property
    def right_to_wrong(self) -> pd.DataFrame:
        return self.pairs[self.pairs["change"] == "right to wrong"]

    @property
    def wrong_to_right(self) -> pd.DataFrame:
        return self.pairs[self.pairs["change"] == "wrong to right"]

    @property
    def looking_elsewhere(self) -> pd.DataFrame:
        """Right in both, true-class maps far apart; most moved first."""
        return self.pairs[self.pairs["looking_elsewhere"]].sort_values(["iou_true", "spearman_true"])

    @property
    def flipped_and_moved(self) -> pd.DataFrame:
        return self.pairs[self.pairs["flipped_and_moved"]].sort_values(["iou_true", "spearman_true"])

    @property
    def confusion_delta(self) -> np.ndarray:
        """B - A, rows true and columns predicted, on ``classes``."""
        return self.confusion_b - self.confusion_a

    def changed_cells(self, limit: Optional[int] = 20) -> pd.DataFrame:
        """Off-diagonal cells of the confusion change, largest change first: true, pred, a, b, delta."""
        delta = self.confusion_delta
        t, p = np.nonzero(delta)
        keep = t != p
        t, p = t[keep], p[keep]
        names = np.asarray(self.classes, dtype=object)
        cells = pd.DataFrame({"true": names[t], "pred": names[p], "a": self.confusion_a[t, p],
                              "b": self.confusion_b[t, p], "delta": delta[t, p]})
        cells = cells.assign(size=cells["delta"].abs()).sort_values(["size", "true", "pred"],
                                                                     ascending=[False, True, True])
        return cells.drop(columns="size").head(limit if limit is not None else len(cells)).reset_index(drop=True)

    @property
    def sentence(self) -> str:
        """McNemar's test in words."""
        b, c = self.count("right to wrong"), self.count("wrong to right")
        if b + c == 0:
            return (f"B ({self.b}) and A ({self.a}) are right and wrong on exactly the same images, so their "
                    f"accuracies do not differ here (p = 1).")
        return (f"B ({self.b}) is right on {_images(c)} that A ({self.a}) got wrong and wrong on {b} that A got "
                f"right; a difference this large would arise by chance with probability {_p_words(self.mcnemar_p)}"
                f" if the two models were equally accurate (McNemar's exact test).")

    def to_json(self, details: bool = False) -> dict[str, Any]:
        """The stable keys scripts rely on; ``details`` adds the lists and notes pages show."""
        per_class = self.per_class[list(PER_CLASS_KEYS)].to_dict("records")
        out = {
            "a": self.a, "b": self.b, "split": self.split, "matched": self.matched,
            "only_a": len(self.only_a), "only_b": len(self.only_b),
            "right_to_wrong": self.count("right to wrong"), "wrong_to_right": self.count("wrong to right"),
            "wrong_both": {"same": self.count("wrong in both, same"),
                           "different": self.count("wrong in both, different"),
                           "total": self.count("wrong in both, same") + self.count("wrong in both, different")},
            "top1_a": self.top1_a, "top1_b": self.top1_b, "mcnemar_p": self.mcnemar_p,
            "per_class": per_class, "drift": self.drift,
        }
        if details:
            image_cols = ["image_id_a", "image_id_b", "relpath", "label", "pred_a", "pred_b"]
            out.update({
                "summary": self.sentence, "classes_compared": len(self.classes),
                "classes_only_a": self.classes_only_a, "classes_only_b": self.classes_only_b,
                "label_not_shared": self.label_not_shared, "pred_outside": self.pred_outside,
                "matched_by": self.pairs["matched_by"].value_counts().to_dict(),
                "relabelled": self.relabelled.to_dict("records"),
                "only_a_images": self.only_a.to_dict("records"), "only_b_images": self.only_b.to_dict("records"),
                "right_to_wrong_images": self.right_to_wrong[image_cols].to_dict("records"),
                "wrong_to_right_images": self.wrong_to_right[image_cols].to_dict("records"),
                "looking_elsewhere_images": self.looking_elsewhere[image_cols].to_dict("records"),
                "flipped_and_moved_images": self.flipped_and_moved[image_cols].to_dict("records"),
                "confusion_changes": self.changed_cells().to_dict("records"), "settings": self.settings,
            })
        return _plain(out)


def _plain(x: Any) -> Any:
    """numpy scalars -> Python, NaN -> None, recursively, so ``json.dumps`` takes the result."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


# --------------------------------------------------------------------------- the comparison

def compare_runs(a: RunInput, b: RunInput, *, split: Optional[str] = "test", resamples: int = 2000, seed: int = 0,
                 level: float = 0.95, top_fraction: float = mapdrift.TOP_FRACTION,
                 max_spearman: float = mapdrift.ELSEWHERE_SPEARMAN,
                 max_iou: float = mapdrift.ELSEWHERE_IOU) -> ComparisonResult:
    """Compare run ``b`` with run ``a`` on the images of ``split`` (None: all splits) they share."""
    fa = prepare(a.predictions, a.classes, split, f"run A ({a.name})")
    fb = prepare(b.predictions, b.classes, split, f"run B ({b.name})")
    in_b = set(b.classes)
    shared = [c for c in a.classes if c in in_b]
    if not shared:
        raise ValueError(f"runs {a.name} and {b.name} share no class; A has {len(a.classes)}, B {len(b.classes)}")
    links, rest_a, rest_b = match_images(fa, fb)
    if links.empty:
        raise ValueError(f"runs {a.name} and {b.name} share no image on split {split!r} ({len(fa)} images in A, "
                         f"{len(fb)} in B, matched by content or path: 0)")
    pairs, relabelled, label_not_shared = _paired(fa, fb, links, shared)
    if pairs.empty:
        raise ValueError(f"runs {a.name} and {b.name} match {len(links)} images on split {split!r} but none has the "
                         f"same label in both and a shared class ({len(relabelled)} relabelled, "
                         f"{label_not_shared} of classes one run lacks)")
    ra = (pairs["pred_a"] == pairs["label"]).to_numpy()
    rb = (pairs["pred_b"] == pairs["label"]).to_numpy()
    same_pred = (pairs["pred_a"] == pairs["pred_b"]).to_numpy()
    change = np.select([ra & rb, ra & ~rb, ~ra & rb, same_pred], CHANGES[:4], CHANGES[4])
    pairs["change"], pairs["right_a"], pairs["right_b"] = change, ra, rb

    index = {c: i for i, c in enumerate(shared)}
    true_idx = pairs["label"].map(index).to_numpy(np.int64)
    per_class, confusion, pred_outside = _per_class(pairs, shared, true_idx, ra, rb, resamples, seed, level)
    for col, values in _drift_columns(a, b, pairs, top_fraction).items():
        pairs[col] = values
    elsewhere = mapdrift.looking_elsewhere(pairs["spearman_true"], pairs["iou_true"], max_spearman=max_spearman,
                                           max_iou=max_iou)
    pairs["looking_elsewhere"] = elsewhere & ra & rb
    pairs["flipped_and_moved"] = elsewhere & (ra != rb)
    drift = {t: {"spearman": _median(pairs[f"spearman_{t}"]), "iou": _median(pairs[f"iou_{t}"]),
                 "n": int(pairs[f"iou_{t}"].notna().sum())} for t in DRIFT_TARGETS}
    n = len(pairs)
    only_cols = ["image_id", "sha256", "split", "relpath", "label"]
    return ComparisonResult(
        a=a.name, b=b.name, split=split, classes=shared,
        classes_only_a=[c for c in a.classes if c not in index], classes_only_b=[c for c in b.classes if c not in index],
        pairs=pairs, only_a=fa.iloc[rest_a][only_cols].reset_index(drop=True),
        only_b=fb.iloc[rest_b][only_cols].reset_index(drop=True), relabelled=relabelled,
        label_not_shared=label_not_shared, pred_outside=pred_outside,
        top1_a=_rate(int(ra.sum()), n, level), top1_b=_rate(int(rb.sum()), n, level),
        mcnemar_p=mcnemar_exact(int((ra & ~rb).sum()), int((~ra & rb).sum())), per_class=per_class,
        confusion_a=confusion[0], confusion_b=confusion[1], drift=drift,
        settings={"resamples": resamples, "seed": seed, "level": level, "top_fraction": top_fraction,
                  "max_spearman": max_spearman, "max_iou": max_iou},
    )


def _paired(fa: pd.DataFrame, fb: pd.DataFrame, links: pd.DataFrame, shared: list[str]):
    """One row per matched image with the same label in both runs, of a shared class; the relabelled
    images; the number of images of classes that one run lacks."""
    pa = fa.iloc[links["ia"].to_numpy()].reset_index(drop=True)
    pb = fb.iloc[links["ib"].to_numpy()].reset_index(drop=True)
    pairs = pd.DataFrame({
        "image_id_a": pa["image_id"], "image_id_b": pb["image_id"], "sha256": pa["sha256"].fillna(pb["sha256"]),
        "split": pa["split"], "relpath": pa["relpath"], "relpath_b": pb["relpath"], "label": pa["label"],
        "label_b": pb["label"], "pred_a": pa["pred"], "pred_b": pb["pred"], "conf_a": pa["confidence"],
        "conf_b": pb["confidence"], "label_index_a": pa["label_index"], "label_index_b": pb["label_index"],
        "pred_index_a": pa["pred_index"], "pred_index_b": pb["pred_index"], "matched_by": links["how"].to_numpy(),
    })
    relabel = pairs["label"] != pairs["label_b"]
    relabelled = pairs.loc[relabel, ["image_id_a", "image_id_b", "relpath", "label", "label_b"]].reset_index(drop=True)
    pairs = pairs[~relabel]
    in_shared = pairs["label"].isin(shared)
    label_not_shared = int((~in_shared).sum())
    pairs = pairs[in_shared].drop(columns="label_b").reset_index(drop=True)
    return pairs, relabelled, label_not_shared


def _per_class(pairs: pd.DataFrame, shared: list[str], true_idx: np.ndarray, ra: np.ndarray, rb: np.ndarray,
               resamples: int, seed: int, level: float):
    k = len(shared)
    n = np.bincount(true_idx, minlength=k)
    acc_a = np.bincount(true_idx, weights=ra, minlength=k) / np.maximum(n, 1)
    acc_b = np.bincount(true_idx, weights=rb, minlength=k) / np.maximum(n, 1)
    ci = paired_bootstrap(true_idx, ra, rb, resamples=resamples, seed=seed, level=level)
    present = np.flatnonzero(n)
    table = pd.DataFrame({
        "class": [shared[i] for i in present], "n": n[present], "acc_a": acc_a[present], "acc_b": acc_b[present],
        "delta": acc_b[present] - acc_a[present], "ci_low": [ci[i][0] for i in present],
        "ci_high": [ci[i][1] for i in present],
    }).sort_values(["delta", "ci_high", "class"], ignore_index=True)
    index = {c: i for i, c in enumerate(shared)}
    confusions, outside = [], {}
    for side, col in (("a", "pred_a"), ("b", "pred_b")):
        pred = pairs[col].map(index)
        inside = pred.notna().to_numpy()
        outside[side] = int((~inside).sum())
        cells = true_idx[inside] * k + pred[inside].to_numpy(np.int64)
        confusions.append(np.bincount(cells, minlength=k * k).reshape(k, k))
    return table, confusions, outside


def _drift_columns(a: RunInput, b: RunInput, pairs: pd.DataFrame, fraction: float) -> dict[str, np.ndarray]:
    n = len(pairs)
    cols = {f"{m}_{t}": np.full(n, np.nan) for t in DRIFT_TARGETS for m in ("spearman", "iou")}
    if a.maps is None or b.maps is None:
        return cols
    maps_a = a.maps([int(i) for i in pairs["image_id_a"]])
    maps_b = b.maps([int(i) for i in pairs["image_id_b"]])
    ids_a, ids_b = pairs["image_id_a"].to_numpy(), pairs["image_id_b"].to_numpy()
    rho, iou = mapdrift.paired_drift(maps_a, maps_b, ids_a, ids_b, pairs["label_index_a"].to_numpy(),
                                     pairs["label_index_b"].to_numpy(), TARGET_TRUE, fraction)
    cols["spearman_true"], cols["iou_true"] = rho, iou
    agree = np.flatnonzero((pairs["pred_a"] == pairs["pred_b"]).to_numpy())
    rho, iou = mapdrift.paired_drift(maps_a, maps_b, ids_a[agree], ids_b[agree],
                                     pairs["pred_index_a"].to_numpy()[agree], pairs["pred_index_b"].to_numpy()[agree],
                                     TARGET_PRED, fraction)
    cols["spearman_pred"][agree], cols["iou_pred"][agree] = rho, iou
    return cols
