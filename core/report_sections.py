"""The sections of a figure set: each takes the run's data and the options and yields artifacts.

What the set holds is the list :data:`SECTIONS`, in order: a plot, an image sheet or a table each. A new
figure is one more function in that list. Image sheets show each error with the stored maps of its
predicted and of its true class, drawn over the image as the model saw it.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import pandas as pd
from PIL import Image

from core import figures
from core.cammaps import (
    DEFAULT_COLORMAP,
    DEFAULT_METHOD,
    METHOD_LABELS,
    TARGET_PRED,
    TARGET_TRUE,
    colorbar_strip,
    overlay,
)
from core.figures_methods import method_ranking_figure
from core.report_calibration import accuracy_section, calibration_section, suspects_section
from core.report_parts import CSS_DPI, Artifact, ExportOptions, Plot, RunData, Sheet, Table, slug
from core.sheets import Tile, draw_sheet, font, panel_side, placeholder

log = logging.getLogger("core.report")


def _panel_image(data: RunData, relpath: str, side: int) -> tuple[Optional[np.ndarray], str]:
    try:
        return data.load_image(relpath, side), ""
    except (OSError, ValueError) as exc:
        log.warning("cannot load %s: %s", relpath, exc)
        return None, "image missing"


def error_tiles(data: RunData, rows: pd.DataFrame, side: int, dpi: int) -> list[Tile]:
    """Per error: the image, the map of the predicted class and that of the true class, with labels and
    confidence. A map counts only when it explains the class it is shown for."""
    names = data.names
    stored = data.load_cams([int(i) for i in rows["image_id"]]) if len(rows) else {}
    small = font(round(7 * dpi / 72))
    tiles = []
    for r in rows.itertuples():
        rgb, why = _panel_image(data, r.relpath, side)
        maps = stored.get(int(r.image_id))
        method = METHOD_LABELS.get(maps.method, maps.method) if maps is not None else METHOD_LABELS[DEFAULT_METHOD]
        panels = [(rgb if rgb is not None else placeholder(side, why, small),
                   f"{r.split} · {r.relpath.rsplit('/', 1)[-1]}")]
        for target, cls, what in ((TARGET_PRED, int(r.pred), "predicted"), (TARGET_TRUE, int(r.label), "true")):
            cam = maps.get(target) if maps is not None and maps.class_of(target) == cls else None
            if rgb is None or cam is None:
                panels.append((placeholder(side, why or "no map stored", small), f"{method}: {what}"))
            else:
                panels.append((overlay(rgb, cam), f"{method}: {what}"))
        tiles.append(Tile(header=[f"true: {names[int(r.label)]}",
                                  f"pred: {names[int(r.pred)]} ({float(r.confidence):.0%})"], panels=panels))
    return tiles


# Every map on a sheet is scaled to its own peak (as on the dashboard's tiles), so the bar is relative.
MAP_LEGEND = (colorbar_strip(DEFAULT_COLORMAP), "map: low", "its peak")


def _sheet_px(options: ExportOptions) -> int:
    return round(options.width_in * options.dpi)


def _error_sheet(data: RunData, title: str, rows: pd.DataFrame, options: ExportOptions) -> Image.Image:
    width, per_row, per_tile = _sheet_px(options), 2, 3
    side = panel_side(width, per_row, per_tile, options.dpi)
    return draw_sheet(title, error_tiles(data, rows, side, options.dpi), width_px=width, per_row=per_row,
                      panels_per_tile=per_tile, dpi=options.dpi, legend=MAP_LEGEND)


# --------------------------------------------------------------------------- sections

def chosen_sports(data: RunData, options: ExportOptions) -> list[str]:
    """The sports that get a sheet: ``options.sports`` (checked against the run's classes), else those with
    the most errors (ties by name), at most ``max_sports``."""
    if options.sports is not None:
        unknown = [s for s in options.sports if s not in data.names]
        if unknown:
            raise ValueError(f"--sports: {', '.join(map(repr, unknown))} not among the run's "
                             f"{len(data.names)} classes")
        return list(dict.fromkeys(options.sports))
    if data.errors.empty:
        return []
    counts = data.errors["label"].value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], data.names[int(kv[0])]))
    return [data.names[int(c)] for c, _ in ranked[: options.max_sports]]


def confusion_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    n = len(data.names)
    fig = figures.print_layout(figures.confusion_heatmap(data.cm, data.names, order="confusion"),
                               f"Confusion matrix, all {n} classes ({data.cm.sum():,} images)")
    # Wide matrices keep about 12 CSS px a row legible by growing the page instead of shrinking the text.
    width = max(options.width_in, round((fig.layout.height or 500) / CSS_DPI * 4) / 4)
    yield Plot("confusion-all", f"Confusion matrix of all {n} classes, rows true, columns predicted; classes "
               "that are mistaken for each other are grouped.", fig, min(width, 20.0))
    top = figures.most_confused_classes(data.cm, options.top_confused)
    if len(top) >= 2:
        sub = data.cm[np.ix_(top, top)]
        names = [data.names[i] for i in top]
        fig = figures.print_layout(figures.confusion_heatmap(sub, names, order="confusion", hide_diagonal=True),
                                   f"The {len(top)} most confused classes (correct predictions left blank)")
        yield Plot("confusion-top", f"Mistakes among the {len(top)} classes with the most mistakes made on them "
                   "or into them; the diagonal (correct predictions) is left blank so the mistakes set the "
                   "colour scale.", fig, options.width_in)
    yield Table("confused-pairs", "Off-diagonal cells of the confusion matrix, most frequent first; where known, "
                "n (images of the true class) and the 95% Wilson interval of the share (share_lo, share_hi).",
                data.pairs.drop(columns=["true_idx", "pred_idx"], errors="ignore"))


def per_class_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    fig = figures.print_layout(figures.per_class_bars(data.per_class), "Precision, recall and F1 per class")
    yield Plot("per-class", "F1 per class (bars, with their 95% bootstrap interval where known) with precision and "
               "recall (markers), worst F1 first.", fig, options.width_in)
    yield Table("per-class-metrics", "Precision, recall, F1, support (n) and predicted count per class, with 95% "
                "intervals where known (precision_lo/hi, recall_lo/hi: Wilson; f1_lo/hi: bootstrap) and few (fewer "
                "than 10 images).", data.per_class.drop(columns=["class_idx"], errors="ignore"))


def training_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    fig = figures.print_layout(figures.training_curves(data.epochs), "Training curves")
    yield Plot("training-curves", "Loss and accuracy per epoch, train and validation, over both phases "
               "(frozen base, then fine-tuning).", fig, options.width_in)


def worst_errors_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    rows = data.errors.head(options.worst)
    title = f"The {len(rows)} most confident mistakes, run #{data.run_id} {data.run_name}"
    yield Sheet("worst-errors", f"The {len(rows)} highest-confidence mistakes: each image with the Grad-CAM map "
                "of the predicted and of the true class.", _error_sheet(data, title, rows, options))


def sport_sheets_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    index = {n: i for i, n in enumerate(data.names)}
    for sport in chosen_sports(data, options):
        mine = data.errors[data.errors["label"] == index[sport]]
        rows = mine.head(options.per_sheet)
        title = f"{sport}: {len(rows)} of {len(mine)} errors, most confident first"
        yield Sheet(f"sport-{slug(sport)}", f"Errors on true class '{sport}' ({len(rows)} of {len(mine)}), "
                    "each with the Grad-CAM map of the predicted and of the true class.",
                    _error_sheet(data, title, rows, options))


def predictions_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    p = data.predictions
    names = np.asarray(data.names, dtype=object)
    table = pd.DataFrame({
        "image_id": p["image_id"], "split": p["split"], "relpath": p["relpath"],
        "true": names[p["label"].to_numpy(dtype=np.int64)] if len(p) else [],
        "predicted": names[p["pred"].to_numpy(dtype=np.int64)] if len(p) else [],
        "correct": (p["label"] == p["pred"]).to_numpy(), "confidence": p["confidence"], "loss": p["loss"],
    })
    yield Table("predictions", "Every predicted image: split, path, true and predicted class, confidence and "
                "loss of the true class.", table)


def audit_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    if data.audit is None:
        return
    if data.leakage is not None:
        yield Table("leakage-accuracy", "Accuracy per split as measured and with the images that also appear in "
                    "an earlier split removed.", data.leakage)
    groups = list(data.audit.get("groups", []))[: options.max_groups]
    per_tile, width = 6, _sheet_px(options)
    side = panel_side(width, 1, per_tile, options.dpi)
    small = font(round(7 * options.dpi / 72))
    tiles = []
    for g in groups:
        members = list(g.get("members", []))
        panels = []
        for m in members[:per_tile]:
            rgb, why = _panel_image(data, m["relpath"], side)
            label = data.names[m["label"]] if 0 <= m["label"] < len(data.names) else str(m["label"])
            panels.append((rgb if rgb is not None else placeholder(side, why, small), f"{m['split']} · {label}"))
        more = f", {len(members) - per_tile} more not shown" if len(members) > per_tile else ""
        tiles.append(Tile([f"group {g.get('id')}: {g.get('kind')} duplicates, similarity {g.get('score', 0):.3f}, "
                           f"{len(members)} images{more}"], panels))
    total = len(data.audit.get("groups", []))
    sheet = draw_sheet(f"Duplicate groups ({len(groups)} of {total})", tiles, width_px=width, per_row=1,
                       panels_per_tile=per_tile, dpi=options.dpi)
    yield Sheet("duplicate-groups", f"Duplicate groups found by the data audit ({len(groups)} of {total}): "
                "the images side by side with their split and label.", sheet)


def trust_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    if data.trust_per_class is not None:
        yield Table("trust-per-class", "Faithfulness of the maps of the predicted class, per true class: images "
                    "scored, mean deletion AUC (del_<map>, lower is better) and insertion AUC (ins_<map>, higher "
                    "is better) of Grad-CAM and of the random and centred baselines, and the share of images "
                    "where Grad-CAM's deletion AUC is below the random map's (beats_random).", data.trust_per_class)
    if data.trust is not None:
        rows = data.trust[data.trust["target"] == "pred"]
        if not rows.empty:
            fig = figures.print_layout(figures.trust_distribution(rows, data.names, metric="deletion_auc"),
                                       "Deletion AUC per class, Grad-CAM against baseline maps")
            yield Plot("trust-per-class", "Deletion AUC of the predicted-class maps per true class, one box per "
                       "map (Grad-CAM, random, centred; mean dashed): the probability left as the pixels the map "
                       "ranks highest are removed, so lower means a more faithful map.", fig, options.width_in)


def method_ranking_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    ranking = data.method_ranking
    if ranking is None:
        return
    sure = ranking.confidence
    yield Table("method-ranking", f"{ranking.sentence} The CAM methods ranked by the faithfulness of their "
                "predicted-class maps: score = insertion AUC - deletion AUC (mean over images, higher is better); "
                "beats_random = share of images whose map scores higher than the random map's, with its 95% "
                "Wilson interval; pointing = share of correctly classified images with a box where the map's peak "
                "falls in the box (pointing_random: a random point's rate). The baselines close the table. The "
                f"winner beats the runner-up on {sure.k} of {sure.n} images.", ranking.table)
    if not ranking.per_class.empty:
        yield Table("method-ranking-per-class", "Per true class, the CAM method with the best mean score, the "
                    "runner-up, and the share of the class's images where the winner's map scores higher, with n and "
                    "its 95% Wilson interval.", ranking.per_class)
    fig = figures.print_layout(method_ranking_figure(ranking.table), "Faithfulness of each CAM method")
    yield Plot("method-ranking", "Mean score (insertion AUC - deletion AUC) of each CAM method's predicted-class "
               "maps, best first, and of the random and centred baseline maps.", fig, options.width_in)


def sanity_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    if data.sanity is None or not data.sanity.get("stages"):
        return
    layer, n = data.sanity.get("layer", "?"), data.sanity.get("n_images", "?")
    fig = figures.print_layout(figures.sanity_cascade(data.sanity["stages"]), "Sanity check: cascading randomisation")
    yield Plot("sanity-cascade", f"Model-randomisation sanity check on {n} images (maps of {layer}): similarity "
               "(Spearman rank correlation and SSIM, mean and standard deviation) of the trained model's "
               "Grad-CAM maps with those after re-initialising the layers from the top down, cumulatively; the "
               "trained model against itself and with input noise on the left for scale. Maps that stay "
               "similar as weights are randomised do not depend on what the model learnt.", fig,
               options.width_in)


# The figure set, in order. Each entry: (RunData, ExportOptions) -> artifacts.
SECTIONS: list[Callable[[RunData, ExportOptions], Iterable[Artifact]]] = [
    confusion_section,
    per_class_section,
    training_section,
    worst_errors_section,
    sport_sheets_section,
    predictions_section,
    audit_section,
    trust_section,
    method_ranking_section,
    sanity_section,
    accuracy_section,
    calibration_section,
    suspects_section,
]
