"""Explanation drift: how much two maps of the same image and class differ (numpy, OpenCV; no torch).

Two measures per pair of maps, computed for many pairs at once:

- the Spearman rank correlation of the cells: 1 when both maps order the cells the same way, about 0 for
  unrelated maps, negative when the hot and cold regions swap;
- the IoU of the top cells: the ``TOP_FRACTION`` (20 %) hottest cells of each map, intersection over union.
  1 when both maps put their top fifth on the same cells. Two unrelated maps of 14x14 cells share by chance
  about 40 * 40 / 196 = 8 of their 40 top cells, an IoU of about 0.11.

A map with all cells equal (nothing lit, as a ReLU'd Grad-CAM can be) has no order: both measures are NaN
for its pair, and the pair is left out of medians. Ties inside a map are ranked by their average rank
(Spearman) and, for the top cells, broken by cell position, so two identical maps always score exactly 1.

Maps of different resolutions are compared on a common grid: the coarser of the two (the smaller height
and the smaller width), the finer map reduced to it by area averaging, so no detail is invented.

``looking_elsewhere`` is the rule both flags of a comparison use: a pair whose Spearman correlation is below
``ELSEWHERE_SPEARMAN`` (0.5) *and* whose top-cell IoU is below ``ELSEWHERE_IOU`` (0.25). Both measures must
agree, so that one noisy measure does not raise the flag. For scale, measured on 14x14 maps made of a
Gaussian blob (sigma 2 cells) plus uniform noise of a tenth of its peak (means of 500 pairs): the blob moved
by one cell gives Spearman 0.72, IoU 0.69, by one cell in each direction 0.67, 0.59 (neither flagged); moved
7 cells in each direction -0.24, 0.02 (flagged); two unrelated noise maps 0.00, 0.11 (flagged).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

from core.cammaps import StoredMaps

TOP_FRACTION = 0.2
ELSEWHERE_SPEARMAN = 0.5
ELSEWHERE_IOU = 0.25


def common_grid(*shapes: tuple[int, int]) -> tuple[int, int]:
    """The coarser grid of ``shapes`` (h, w): the smallest height and the smallest width."""
    if not shapes:
        raise ValueError("common_grid needs at least one (h, w) shape, got none")
    return min(int(s[0]) for s in shapes), min(int(s[1]) for s in shapes)


def to_grid(cam: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``cam`` (h, w) on ``grid`` (h, w): unchanged when it already is, else reduced by area averaging
    (enlarged bilinearly if the grid is finer in a direction)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"a map must be 2-D (h, w), got shape {cam.shape}")
    h, w = grid
    if cam.shape == (h, w):
        return cam
    finer = cam.shape[0] >= h and cam.shape[1] >= w
    return cv2.resize(cam, (w, h), interpolation=cv2.INTER_AREA if finer else cv2.INTER_LINEAR)


def ranked(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One sort of each row of ``x`` (n, cells): the cells hottest first (ties: the earlier cell first) and
    each cell's rank in that order, tied cells sharing the mean of their ranks (as Spearman wants)."""
    n, cells = x.shape
    order = np.argsort(-x, axis=1, kind="stable")
    v = np.take_along_axis(x, order, axis=1)
    new = np.ones((n, cells), dtype=bool)
    new[:, 1:] = v[:, 1:] != v[:, :-1]
    group = np.cumsum(new.ravel()) - 1              # a tie group never spans two rows: each row opens one
    pos = np.tile(np.arange(cells, dtype=np.float64), n)
    mean_rank = np.bincount(group, weights=pos) / np.bincount(group)
    ranks = np.empty((n, cells))
    np.put_along_axis(ranks, order, mean_rank[group].reshape(n, cells), axis=1)
    return order, ranks


def _spearman(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / den
    return np.where(den > 0, np.clip(rho, -1.0, 1.0), np.nan)


def _top_mask(order: np.ndarray, fraction: float) -> np.ndarray:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    n, cells = order.shape
    k = max(1, math.ceil(fraction * cells - 1e-9))
    mask = np.zeros((n, cells), dtype=bool)
    np.put_along_axis(mask, order[:, :k], True, axis=1)
    return mask


def _iou(order_x: np.ndarray, order_y: np.ndarray, flat: np.ndarray, fraction: float) -> np.ndarray:
    mx, my = _top_mask(order_x, fraction), _top_mask(order_y, fraction)
    inter = (mx & my).sum(axis=1)
    union = (mx | my).sum(axis=1)
    return np.where(flat, np.nan, inter / np.maximum(union, 1))


def _flat(x: np.ndarray) -> np.ndarray:
    return x.max(axis=1) == x.min(axis=1)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row of ``x`` with the same row of ``y`` (n, cells) -> (n,);
    NaN where a row is constant."""
    return _spearman(ranked(x)[1], ranked(y)[1])


def top_cells(x: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Boolean mask (n, cells) of the ``ceil(fraction * cells)`` hottest cells of each row; ties broken by
    cell position (the earlier cell wins)."""
    return _top_mask(ranked(x)[0], fraction)


def top_iou_rows(x: np.ndarray, y: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """IoU of the top ``fraction`` cells of each row of ``x`` and ``y`` (n, cells) -> (n,); NaN where a row
    is constant (its top cells would be arbitrary)."""
    return _iou(ranked(x)[0], ranked(y)[0], _flat(x) | _flat(y), fraction)


def drift(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(Spearman, top-cell IoU) of paired maps ``a``, ``b`` of shape (n, h, w) on one grid; one sort per map."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"paired maps must share one shape (n, h, w), got {a.shape} and {b.shape}")
    x, y = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("maps must be finite, got NaN or inf values")
    (ox, rx), (oy, ry) = ranked(x), ranked(y)
    return _spearman(rx, ry), _iou(ox, oy, _flat(x) | _flat(y), fraction)


def pair_drift(cam_a: np.ndarray, cam_b: np.ndarray, fraction: float = TOP_FRACTION) -> tuple[float, float]:
    """(Spearman, top-cell IoU) of two maps of any resolutions (put on their common grid first)."""
    grid = common_grid(np.shape(cam_a), np.shape(cam_b))
    rho, iou = drift(to_grid(cam_a, grid)[None], to_grid(cam_b, grid)[None], fraction)
    return float(rho[0]), float(iou[0])


def looking_elsewhere(rho: np.ndarray, iou: np.ndarray, *, max_spearman: float = ELSEWHERE_SPEARMAN,
                      max_iou: float = ELSEWHERE_IOU) -> np.ndarray:
    """True where both measures say the map moved (NaN scores never flag)."""
    rho, iou = np.asarray(rho, dtype=np.float64), np.asarray(iou, dtype=np.float64)
    return (rho < max_spearman) & (iou < max_iou)


def _stored(maps: Mapping[int, StoredMaps], image_id: int, target: str, cls: int, side: str) -> Optional[np.ndarray]:
    sm = maps.get(image_id)
    if sm is None:
        return None
    cam = sm.get(target)
    if cam is not None and sm.class_of(target) != cls:
        raise ValueError(f"run {side}: the {target!r} map of image {image_id} explains class index "
                         f"{sm.class_of(target)}, expected {cls}")
    return cam


def paired_drift(maps_a: Mapping[int, StoredMaps], maps_b: Mapping[int, StoredMaps], ids_a: Sequence[int],
                 ids_b: Sequence[int], cls_a: Sequence[int], cls_b: Sequence[int], target: str,
                 fraction: float = TOP_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Spearman and top-cell IoU between A's and B's stored ``target`` map of each matched image.

    ``ids_a[i]`` and ``ids_b[i]`` are one image in each run and ``cls_a[i]``, ``cls_b[i]`` the class index
    (in each run's own class list) that the map must explain, which is checked. Images without a map in
    either run score NaN.
    """
    n = len(ids_a)
    if not (len(ids_b) == len(cls_a) == len(cls_b) == n):
        raise ValueError(f"need as many ids and classes for both runs, got {len(ids_a)}, {len(ids_b)}, "
                         f"{len(cls_a)}, {len(cls_b)}")
    rho = np.full(n, np.nan)
    iou = np.full(n, np.nan)
    pos, pa, pb = [], [], []
    for i in range(n):
        ca = _stored(maps_a, int(ids_a[i]), target, int(cls_a[i]), "A")
        cb = _stored(maps_b, int(ids_b[i]), target, int(cls_b[i]), "B")
        if ca is not None and cb is not None:
            pos.append(i)
            pa.append(ca)
            pb.append(cb)
    if not pos:
        return rho, iou
    shapes = {c.shape for c in pa} | {c.shape for c in pb}
    if len(shapes) > 1:
        grid = common_grid(*shapes)
        pa = [to_grid(c, grid) for c in pa]
        pb = [to_grid(c, grid) for c in pb]
    r, u = drift(np.stack(pa), np.stack(pb), fraction)
    rho[pos] = r
    iou[pos] = u
    return rho, iou
