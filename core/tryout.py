"""A run's model on new images, the part that needs no torch: where the run's checkpoint is, decoding a file
exactly as evaluation does, and a tried image's result as JSON, overlays and a printable sheet.

``core.inference.Predictor`` computes the results (``TryResult``: the model's view of the image, its logits
and probabilities, the top-k, and the raw maps ``maps[method]["top1" | "picked"]``); the "Try an image"
page and ``jobs.explain`` draw and save them with the functions here, so both give the same files.
"""
from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from core.cammaps import DEFAULT_ALPHA, DEFAULT_COLORMAP, METHOD_LABELS, colorbar_strip, overlay
from core.images import MAX_PIXELS, open_upload
from core.sheets import Tile, draw_sheet

if TYPE_CHECKING:  # the results come from core.inference, which needs torch
    from core.inference import TryResult

# What a tried image's maps explain (the keys of ``TryResult.maps[method]``; core.inference uses the same).
TOP1, PICKED = "top1", "picked"
CHECKPOINT_NAME = "best.pt"
# Display scales of a map, as on the comparison page.
SCALES = ("per image", "shared across the maps of an image", "none (raw values)")


class NoCheckpoint(ValueError):
    """The run's checkpoint cannot be found; the message is one line naming where it was looked for."""


# --------------------------------------------------------------------------------------------------
# The run's checkpoint
# --------------------------------------------------------------------------------------------------
def find_checkpoint(checkpoint_path: Optional[str], config: Mapping[str, Any], run: str) -> Path:
    """The checkpoint a run's predictions came from: the path the run recorded, else the ``best.pt``
    beside it, else the ``best.pt`` of the run's checkpoint folder (a run that has not finished records no
    path yet). ``run`` names the run in the message of ``NoCheckpoint``."""
    candidates: list[Path] = []
    if checkpoint_path:
        candidates += [Path(checkpoint_path), Path(checkpoint_path).with_name(CHECKPOINT_NAME)]
    if config.get("run_dir"):
        candidates.append(Path(str(config["run_dir"])) / CHECKPOINT_NAME)
    for path in candidates:
        if path.is_file():
            return path
    if not candidates:
        raise NoCheckpoint(f"{run} records no checkpoint (its training has not saved one)")
    raise NoCheckpoint(f"{run}: its checkpoint {candidates[0]} is gone (moved or deleted)")


def checkpoint_stamp(path: Path) -> float:
    """What changes when the checkpoint file is replaced: its modification time (part of a cache key)."""
    return os.stat(path).st_mtime


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------
def decode_image(data: bytes, name: str, max_bytes: int, image_size: int) -> Image.Image:
    """An uploaded or given file (bytes in memory) as RGB, exactly as evaluation decodes a dataset image.

    Refusals (``BadImage`` naming ``name``) are those of ``core.images.open_upload``: over ``max_bytes``,
    empty, not an image, truncated, a decompression bomb. A photo larger than the training job would
    decode (``MAX_PIXELS``) is decoded at a reduced JPEG scale, still at least ``image_size`` on each side;
    anything smaller is decoded in full, so a dataset file gives the very pixels the run evaluated.
    """
    hint = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        hint = image_size if w * h > MAX_PIXELS else None
    except Exception:  # open_upload below names the problem
        pass
    return open_upload(data, name, max_bytes, size_hint=hint)


# --------------------------------------------------------------------------------------------------
# Results as data
# --------------------------------------------------------------------------------------------------
def calibrated_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``logits / temperature`` (temperature scaling), float64."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    e = np.exp(z - z.max())
    return e / e.sum()


def top_table(result: "TryResult", classes: Sequence[str], temperature: Optional[float] = None) -> list[dict]:
    """The top-k rows: rank, class index and name, probability and, with a temperature, the calibrated one."""
    cal = calibrated_probs(result.logits, temperature) if temperature else None
    rows = []
    for rank, (i, p) in enumerate(zip(result.top_idx, result.top_prob), start=1):
        row = {"rank": rank, "index": int(i), "class": classes[i], "probability": round(float(p), 6)}
        if cal is not None:
            row["calibrated"] = round(float(cal[i]), 6)
        rows.append(row)
    return rows


def result_record(result: "TryResult", classes: Sequence[str], *, temperature: Optional[float] = None,
                  source: Optional[str] = None) -> dict[str, Any]:
    """One tried image as plain JSON-ready data: its name, where it came from, the top-k (with calibrated
    probabilities when the run has a temperature), the class picked to explain, and the methods."""
    picked = None
    if result.picked is not None:
        picked = {"index": int(result.picked), "class": classes[result.picked],
                  "probability": round(float(result.probs[result.picked]), 6)}
    return {
        "name": result.name,
        "source": source or "upload",
        "model_input": list(result.pixels.shape[:2]),
        "top1": {"index": int(result.top_idx[0]), "class": classes[result.top_idx[0]],
                 "probability": round(float(result.top_prob[0]), 6)},
        "top": top_table(result, classes, temperature),
        "temperature": temperature,
        "picked": picked,
        "methods": list(result.maps),
    }


# --------------------------------------------------------------------------------------------------
# Overlays and the sheet
# --------------------------------------------------------------------------------------------------
def scale_of(choice: str, cams: Sequence[np.ndarray]) -> Any:
    """``core.cammaps.overlay``'s ``normalize`` for a choice of ``SCALES`` and the maps shown together."""
    if choice == SCALES[1] and cams:
        peak = max(float(np.maximum(c, 0).max()) for c in cams)
        return ("fixed", peak) if peak > 0 else "image"
    if choice == SCALES[2]:
        return "none"
    if choice != SCALES[0]:
        raise ValueError(f"scale must be one of {SCALES}, got {choice!r}")
    return "image"


def overlays(result: "TryResult", which: str, methods: Sequence[str], *, colormap: str = DEFAULT_COLORMAP,
             alpha: float = DEFAULT_ALPHA, scale: str = SCALES[0]) -> list[tuple[str, np.ndarray]]:
    """``(method, uint8 image)`` of each method's map of ``which`` (``TOP1`` or ``PICKED``) over the model's
    view; methods without that map are left out. ``scale`` "shared" shares one scale among these maps."""
    cams = [(m, result.maps[m][which]) for m in methods if m in result.maps and which in result.maps[m]]
    normalize = scale_of(scale, [c for _, c in cams])
    return [(m, overlay(result.pixels, c, colormap=colormap, alpha=alpha, normalize=normalize)) for m, c in cams]


def result_sheet(results: Sequence["TryResult"], classes: Sequence[str], *, title: str,
                 colormap: str = DEFAULT_COLORMAP, alpha: float = DEFAULT_ALPHA, dpi: int = 150) -> Image.Image:
    """One row per image: the model's view, then each method's map of the top-1 class and, when a class
    was picked, of that class; the header names the image, its top-1 and the picked class."""
    tiles = []
    for r in results:
        header = [r.name, f"top-1: {classes[r.top_idx[0]]} ({r.top_prob[0]:.1%})"]
        panels = [(r.pixels, "model input")]
        methods = list(r.maps)
        panels += [(im, f"{METHOD_LABELS.get(m, m)} · top-1") for m, im in
                   overlays(r, TOP1, methods, colormap=colormap, alpha=alpha)]
        if r.picked is not None:
            header.append(f"picked: {classes[r.picked]} ({float(r.probs[r.picked]):.1%})")
            panels += [(im, f"{METHOD_LABELS.get(m, m)} · {classes[r.picked]}") for m, im in
                       overlays(r, PICKED, methods, colormap=colormap, alpha=alpha)]
        tiles.append(Tile(header=header, panels=panels))
    per_tile = max((len(t.panels) for t in tiles), default=1)
    width = max(int(4 * dpi), int(1.25 * dpi) * per_tile)
    return draw_sheet(title, tiles, width_px=width, per_row=1, panels_per_tile=per_tile, dpi=dpi,
                      legend=(colorbar_strip(colormap), "map: low", "its peak"))


def png_bytes(img: Image.Image | np.ndarray) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def bundle(records: Sequence[dict], sheet: Image.Image, *, run: Mapping[str, Any]) -> bytes:
    """A zip of ``predictions.json`` (the run and one record per image) and ``sheet.png``."""
    doc = {"run": dict(run), "images": list(records)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("predictions.json", json.dumps(doc, indent=2))
        zf.writestr("sheet.png", png_bytes(sheet))
    return buf.getvalue()
