"""A comparison of two runs (``core.compare``) as a figure set for a report, written like a run's
(``core.report.write_artifacts``): the per-class change as a table and a plot, the confusion change as a
plot and a table, the flips as a table and as image sheets (each image with A's and B's map of the true class
on one colour scale), the summary as ``comparison.json`` and the manifest.

Pure: the comparison, two image loaders and two map loaders in, files out; no store, no widgets.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from core.cammaps import overlay
from core.compare import PER_CLASS_KEYS, ComparisonResult
from core.figures_compare import confusion_change_heatmap, per_class_change
from core.report import write_artifacts
from core.report_parts import Artifact, CamLoader, ExportOptions, ImageLoader, Manifest, Plot, Sheet, Table
from core.sheets import Tile, draw_sheet, font, panel_side, placeholder

SUMMARY_FILE = "comparison.json"
FLIP_COLUMNS = ["change", "split", "relpath", "label", "pred_a", "conf_a", "pred_b", "conf_b", "spearman_true",
                "iou_true", "looking_elsewhere", "flipped_and_moved"]


@dataclass(frozen=True)
class CompareData:
    """What a comparison's figure set is drawn from: the result, and per run a name, an image loader (its own
    data root) and a loader of its stored maps."""

    result: ComparisonResult
    a: dict  # {"id", "name", "stage"}
    b: dict
    load_image_a: ImageLoader
    load_image_b: ImageLoader
    load_maps_a: CamLoader
    load_maps_b: CamLoader


def _map(maps, image_id: int, cls: int) -> Optional[np.ndarray]:
    sm = maps.get(int(image_id))
    if sm is None:
        return None
    for target in sm.targets:
        if sm.class_of(target) == cls:
            return sm.get(target)
    return None


def pair_tiles(data: CompareData, rows: pd.DataFrame, side: int, dpi: int) -> list[Tile]:
    """Per compared image: the image, A's and B's map of the true class over it on one colour scale (the
    larger peak of the two), with the labels, both predictions and the drift."""
    small = font(round(7 * dpi / 72))
    maps_a = data.load_maps_a([int(i) for i in rows["image_id_a"]]) if len(rows) else {}
    maps_b = data.load_maps_b([int(i) for i in rows["image_id_b"]]) if len(rows) else {}
    tiles = []
    for r in rows.itertuples():
        try:
            rgb, why = data.load_image_a(r.relpath, side), ""
        except (OSError, ValueError):
            try:
                rgb, why = data.load_image_b(r.relpath_b, side), ""
            except (OSError, ValueError):
                rgb, why = None, "image missing"
        cams = [_map(maps_a, r.image_id_a, int(r.label_index_a)), _map(maps_b, r.image_id_b, int(r.label_index_b))]
        peak = max([float(c.max()) for c in cams if c is not None] or [0.0])
        panels = [(rgb if rgb is not None else placeholder(side, why, small), r.relpath.rsplit("/", 1)[-1])]
        for cam, who in zip(cams, ("A", "B")):
            if rgb is None or cam is None or peak <= 0:
                panels.append((placeholder(side, why or "no map stored", small), f"{who}: true-class map"))
            else:
                panels.append((overlay(rgb, cam, alpha=0.5, normalize=("fixed", peak)), f"{who}: true-class map"))
        drift = "" if pd.isna(r.spearman_true) else f"  ρ {r.spearman_true:.2f} IoU {r.iou_true:.2f}"
        tiles.append(Tile(header=[f"true: {r.label}{drift}",
                                  f"A: {r.pred_a} ({r.conf_a:.0%})  B: {r.pred_b} ({r.conf_b:.0%})"], panels=panels))
    return tiles


def _sheet(data: CompareData, title: str, rows: pd.DataFrame, options: ExportOptions):
    width, per_row, per_tile = round(options.width_in * options.dpi), 2, 3
    side = panel_side(width, per_row, per_tile, options.dpi)
    return draw_sheet(title, pair_tiles(data, rows, side, options.dpi), width_px=width, per_row=per_row,
                      panels_per_tile=per_tile, dpi=options.dpi)


def comparison_artifacts(data: CompareData, options: ExportOptions) -> list[Artifact]:
    """The plots, tables and sheets of the set, in order."""
    r = data.result
    an, bn = r.a, r.b
    out: list[Artifact] = [
        Table("per-class-change", f"Accuracy per sport of A ({an}) and B ({bn}), the change B - A and its paired "
              "bootstrap 95% interval, worst change first", r.per_class[list(PER_CLASS_KEYS)]),
        Plot("per-class-change", f"Accuracy change per sport, B ({bn}) - A ({an}), with 95% intervals; the "
             f"{min(options.top_confused, len(r.per_class))} worst changes",
             per_class_change(r.per_class, a="A", b="B", limit=options.top_confused), options.width_in),
    ]
    if r.confusion_delta.any():
        heatmap = confusion_change_heatmap(r.confusion_delta, r.classes, a="A", b="B")
        out += [Plot("confusion-change", "Confusion change B - A (rows true, columns predicted) on the sports whose "
                     "row or column changed", heatmap, options.width_in),
                Table("confusion-change", "Cells of the confusion matrix that changed, largest change first",
                      r.changed_cells(limit=None))]
    flips = r.pairs[r.pairs["change"].isin(["right to wrong", "wrong to right"]) | r.pairs["looking_elsewhere"]]
    out.append(Table("flips", "Images right in one run and wrong in the other, and images right in both but "
                     "looking elsewhere, with both predictions and the drift of the true-class map",
                     flips[FLIP_COLUMNS].sort_values(["change", "relpath"], ignore_index=True)))
    n = options.worst
    for stem, title, rows in (
        ("flips-right-to-wrong", f"Right in A, wrong in B (first {n})",
         r.right_to_wrong.sort_values("conf_b", ascending=False)),
        ("flips-wrong-to-right", f"Wrong in A, right in B (first {n})",
         r.wrong_to_right.sort_values("conf_a", ascending=False)),
        ("looking-elsewhere", f"Right in both, looking elsewhere (first {n})", r.looking_elsewhere),
    ):
        if len(rows):
            out.append(Sheet(stem, f"{title}: image, A's and B's map of the true class on one scale",
                             _sheet(data, f"{title} · A {an} · B {bn}", rows.head(n), options)))
    return out


def write_comparison_set(data: CompareData, out: str | os.PathLike,
                         options: ExportOptions = ExportOptions()) -> Manifest:
    """Write the comparison's figure set into ``out`` and return its manifest (``out/manifest.json``)."""
    r = data.result
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        run={"a": data.a, "b": data.b},
        filters={"split": r.split or "all", "images_per_sheet": options.worst,
                 "per_class_plotted": options.top_confused},
        formats=list(options.formats), dpi=options.dpi,
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    artifacts = comparison_artifacts(data, options)
    summary = out / SUMMARY_FILE
    summary.write_text(json.dumps(r.to_json(details=True), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    manifest.files.append({"file": SUMMARY_FILE, "caption": "The comparison's summary: the keys of "
                           "python -m jobs.compare --json, the summary sentence and the image lists", "kind": "json"})
    return write_artifacts(artifacts, out, options, manifest)
