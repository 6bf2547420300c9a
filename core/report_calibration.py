"""The figure set's sections on how far its numbers can be believed: accuracy and macro-F1 with their
intervals, the run's calibration (when ``jobs.calibrate`` stored one), and the data audit's suspect labels
with the accuracy of the model whose confidences picked them.

Each section takes the run's data and the options and yields artifacts, as those of
:mod:`core.report_sections`, whose :data:`SECTIONS` lists them.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from core import calibration as cal
from core import figures
from core.figures_calibration import confidence_split_histogram, ece_before_after, per_class_ece_bars, reliability_diagram
from core.intervals import FEW_IMAGES, rate, suspects_warning, wilson_interval
from core.report_parts import Artifact, ExportOptions, Plot, RunData, Table
from core.splits import TEST, TRAIN, VALID


def accuracy_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    if data.accuracy is None or data.accuracy.empty:
        return
    yield Table("accuracy", "Top-1 and top-5 accuracy and macro-F1 per split, each with its n and 95% interval "
                "(Wilson for the accuracies, a 2,000-resample bootstrap over the images for macro-F1).", data.accuracy)


# --------------------------------------------------------------------------- calibration

def _parts(data: RunData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    frame, z = data.logits
    out = {}
    for split in (VALID, TEST):
        rows = (frame["split"] == split).to_numpy()
        if rows.any():
            out[split] = (z[rows], frame["label"].to_numpy()[rows])
    return out


def calibration_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    if data.calibration is None or data.logits is None:
        return
    t, nb = float(data.calibration["temperature"]), int(data.calibration["bins"])
    parts = _parts(data)
    if not parts:
        return
    stale = (" The predictions were evaluated again after the calibration: run python -m jobs.calibrate again."
             if data.calibration.get("stale") else "")
    reports = {s: cal.split_metrics(z, y, temperature=t, bins=nb) for s, (z, y) in parts.items()}
    yield Table("calibration", f"Calibration per split: n, ECE and MCE over {nb} equal-width bins of the top-1 "
                f"confidence, NLL and Brier score of the raw softmax, and ECE and NLL after temperature scaling with "
                f"T = {t:.4g} (fitted on valid by minimising its NLL).{stale}",
                pd.DataFrame([{"split": s, "temperature": t, **{k: v for k, v in m.items() if k != "bins"}}
                              for s, m in reports.items()]))
    bins = []
    for s, m in reports.items():
        for b in m["bins"]:
            k = round((b["accuracy"] or 0.0) * b["count"])
            lo, hi = wilson_interval(k, b["count"])
            bins.append({"split": s, **b, "accuracy_lo": lo if b["count"] else None,
                         "accuracy_hi": hi if b["count"] else None})
    yield Table("calibration-bins", "Reliability bins per split (raw confidences): confidence range, images, mean "
                "confidence and accuracy with its 95% Wilson interval (empty bins blank).", pd.DataFrame(bins))
    fig = figures.print_layout(ece_before_after({"temperature": t, **reports}),
                               "ECE before and after temperature scaling")
    yield Plot("ece-before-after", f"Expected calibration error of each split with the raw confidences and after "
               f"temperature scaling (T = {t:.3g}); n per split on the axis.{stale}", fig, options.width_in)
    for s, (z, y) in parts.items():
        conf, pred = cal.top1(cal.softmax(z, t))
        scaled = cal.reliability_bins(conf, pred == y, nb).records()
        fig = figures.print_layout(reliability_diagram(reports[s]["bins"], calibrated=scaled),
                                   f"Reliability, {s} ({len(y):,} images)")
        yield Plot(f"reliability-{s}", f"Reliability diagram of {s}: accuracy per confidence bin (bars, with 95% "
                   "Wilson intervals) against perfect calibration (dashed), each bin's mean confidence (diamonds), "
                   f"the same after temperature scaling (line), and the images per bin below.", fig, options.width_in)
    focus = TEST if TEST in parts else VALID
    z, y = parts[focus]
    conf, pred = cal.top1(cal.softmax(z, t))
    fig = figures.print_layout(confidence_split_histogram(conf, pred == y),
                               f"Calibrated confidence of right and wrong predictions, {focus}")
    yield Plot("confidence-right-wrong", f"Calibrated confidence (T = {t:.3g}) of the right and the wrong "
               f"predictions of {focus}, with their n.", fig, options.width_in)
    table = cal.per_class_ece(z, y, bins=nb, temperature=t, names=list(data.names))
    table = table.assign(few=table["n"] < FEW_IMAGES)
    fig = figures.print_layout(per_class_ece_bars(table, top=30, few=FEW_IMAGES),
                               f"Per-class ECE after temperature scaling, {focus}")
    yield Plot("per-class-ece", f"ECE within each true class of {focus} after temperature scaling, the 30 worst, "
               f"each labelled with its n (classes under {FEW_IMAGES} images marked 'few').", fig, options.width_in)
    yield Table("per-class-ece", f"ECE per true class of {focus} after temperature scaling, worst first: n, ECE, "
                "mean confidence, accuracy, gap (confidence - accuracy) and few (fewer than "
                f"{FEW_IMAGES} images).", table.drop(columns=["class_idx"]))


# --------------------------------------------------------------------------- suspect labels

def calibrated_suspects(suspects: Sequence[dict[str, Any]], image_ids: Sequence[int], logits: np.ndarray,
                        temperature: float) -> list[dict[str, Any]]:
    """The audit's suspects with ``given_prob``/``pred_prob`` recomputed as softmax(logits / T) (the stored
    ones kept as ``*_raw``), ranked by the calibrated probability of the given label, lowest first.
    ``image_ids`` name the rows of ``logits``; a suspect without logits keeps its stored numbers."""
    items = [dict(sp) for sp in suspects]
    index = pd.Index(np.asarray(image_ids, dtype=np.int64))
    rows = index.get_indexer(pd.Index([int(sp.get("image_id", -1)) for sp in items], dtype=np.int64))
    have = np.flatnonzero(rows >= 0)
    if len(have):
        p = cal.softmax(logits[rows[have]], temperature)
        for j, i in enumerate(have):
            sp = items[i]
            sp["given_prob_raw"], sp["pred_prob_raw"] = sp["given_prob"], sp["pred_prob"]
            sp["given_prob"], sp["pred_prob"] = float(p[j, int(sp["label"])]), float(p[j, int(sp["pred_label"])])
    order = sorted(range(len(items)), key=lambda i: (items[i]["given_prob"], i))
    return [items[i] for i in order]


def suspects_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    if data.audit is None:
        return
    suspects = list(data.audit.get("suspects") or [])
    held = data.predictions[data.predictions["split"] != TRAIN]
    acc = rate(int((held["label"] == held["pred"]).sum()), len(held))
    warning = suspects_warning(acc, len(data.names))
    calibrated = data.calibration is not None and data.logits is not None
    if calibrated:
        frame, z = data.logits
        suspects = calibrated_suspects(suspects, frame["image_id"].to_numpy(), z, float(data.calibration["temperature"]))
    names = data.names

    def name(i: Any) -> str:
        return names[int(i)] if 0 <= int(i) < len(names) else str(i)

    table = pd.DataFrame([{
        "rank": r + 1, "split": sp.get("split"), "relpath": sp.get("relpath"), "given": name(sp["label"]),
        "given_prob": sp["given_prob"], "model": name(sp["pred_label"]), "pred_prob": sp["pred_prob"],
        **({"given_prob_raw": sp.get("given_prob_raw"), "pred_prob_raw": sp.get("pred_prob_raw")} if calibrated else {}),
    } for r, sp in enumerate(suspects)], columns=["rank", "split", "relpath", "given", "given_prob", "model",
                                                  "pred_prob"] + (["given_prob_raw", "pred_prob_raw"] if calibrated else []))
    order = (f"ranked by the calibrated probability of the given label (T = {float(data.calibration['temperature']):.3g}; "
             "the stored raw ones in *_raw)" if calibrated else "ranked by the probability of the given label")
    yield Table("suspect-labels", f"Suspect labels of the data audit, most suspect first, {order}. They come from "
                f"the confidences of a model with top-1 accuracy {acc} on the splits it did not train on."
                + (f" Warning: {warning}" if warning else ""), table)

