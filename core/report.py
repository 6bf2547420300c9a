"""A run's figure set for a report: plots, image sheets, the tables behind them and a manifest.

Pure: the caller hands over DataFrames, arrays and two callbacks (one loads an image at a given size, one
returns raw Grad-CAM maps of some images); this module lays the files out in a folder. It reads no store
and draws no widgets, so ``jobs.export`` and the dashboard's Export page produce the same files.

What the set holds is the list :data:`SECTIONS`: each entry takes the run's data and the options and yields
artifacts (a plot, an image sheet or a table). A new figure is one more function in that list.

Plots are the dashboard's own figures (``core.figures``), written through plotly + kaleido by one headless
Chromium started once for the whole batch. Image sheets are drawn with Pillow at ``dpi`` (300 by default:
7 inches wide is 2,100 px). When no browser is available the plots are skipped, with one log line and a
note in the manifest, and everything else is still written.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
import unicodedata
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont

from core import figures
from core.cammaps import decode_maps, overlay

log = logging.getLogger("core.report")

FORMATS = ("png", "svg", "pdf")
DEFAULT_BROWSER = "/usr/bin/chromium"
CSS_DPI = 96  # plotly lays a figure out in CSS pixels, 96 to the inch

# (image_id list) -> {image_id: (classes, h, w, float16 bytes)}, the shape of ``db.queries.cams_for``
CamLoader = Callable[[Sequence[int]], Mapping[int, tuple[Sequence[int], int, int, bytes]]]
# (relpath, side in px) -> uint8 RGB (side, side, 3); raises OSError/ValueError when it cannot
ImageLoader = Callable[[str, int], np.ndarray]


# --------------------------------------------------------------------------- inputs and options

@dataclass(frozen=True)
class RunData:
    """What a figure set is drawn from. Frames have the columns of the ``db.queries`` function named."""

    run_id: int
    run_name: str
    names: tuple[str, ...]
    predictions: pd.DataFrame  # predictions_frame
    errors: pd.DataFrame  # errors_frame: most confident mistakes first
    cm: np.ndarray  # confusion_matrix
    per_class: pd.DataFrame  # per_class_metrics
    pairs: pd.DataFrame  # confused_pairs(limit=None)
    epochs: pd.DataFrame  # epochs_frame
    load_image: ImageLoader
    load_cams: CamLoader
    audit: Optional[dict[str, Any]] = None  # AuditRow.report
    leakage: Optional[pd.DataFrame] = None  # AuditRow.leakage_accuracy as a frame
    trust: Optional[pd.DataFrame] = None  # trust_frame(curves=False); None: the run has no scores
    trust_per_class: Optional[pd.DataFrame] = None  # trust_per_class of the predicted-class maps
    sanity: Optional[dict[str, Any]] = None  # sanity_check; None: the run has none


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = ("png",)
    sports: Optional[tuple[str, ...]] = None  # None: the sports with the most errors, up to max_sports
    max_sports: int = 10
    worst: int = 12  # errors in the worst-errors grid
    per_sheet: int = 12  # errors on each sport's sheet
    top_confused: int = 20  # classes in the "most confused" matrix
    max_groups: int = 12  # duplicate groups on the audit sheet
    dpi: int = 300
    width_in: float = 7.0
    splits: Optional[tuple[str, ...]] = None  # recorded in the manifest; the caller filtered the frames
    browser: Optional[str] = "auto"  # a Chromium path, "auto", or None for no plots

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"formats must be among {', '.join(FORMATS)}, got {', '.join(self.formats) or 'none'}")
        for name in ("max_sports", "worst", "per_sheet", "top_confused", "max_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 72 <= self.dpi <= 1200:
            raise ValueError(f"dpi must lie in 72..1200, got {self.dpi}")
        if not 2.0 <= self.width_in <= 20.0:
            raise ValueError(f"width_in must lie in 2..20 inches, got {self.width_in}")


# --------------------------------------------------------------------------- artifacts

@dataclass
class Plot:
    stem: str
    caption: str
    fig: go.Figure
    width_in: float


@dataclass
class Sheet:
    stem: str
    caption: str
    image: Image.Image


@dataclass
class Table:
    stem: str
    caption: str
    frame: pd.DataFrame


Artifact = Union[Plot, Sheet, Table]


@dataclass
class Manifest:
    run: dict[str, Any]
    filters: dict[str, Any]
    formats: list[str]
    dpi: int
    exported_at: str
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "exported_at": self.exported_at, "filters": self.filters, "formats": self.formats,
                "dpi": self.dpi, "files": self.files, "skipped": self.skipped, "seconds": round(self.seconds, 2)}


# --------------------------------------------------------------------------- names

def slug(text: str, max_len: int = 40) -> str:
    """A file-name part for any text: ASCII-folded, ``[a-z0-9-]``, plus 6 hex of the text's SHA-1 so that
    names that fold alike (``"a/b"`` and ``"a.b"``) stay distinct. Never empty, never ``.`` or ``..``."""
    folded = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    base = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")[:max_len].strip("-") or "x"
    return f"{base}-{hashlib.sha1(str(text).encode('utf-8')).hexdigest()[:6]}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- image sheets

_FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf")


def _font(px: int) -> ImageFont.ImageFont:
    for path in _FONT_FILES:
        if os.path.exists(path):
            return ImageFont.truetype(path, px)
    return ImageFont.load_default(size=px)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _placeholder(side: int, text: str, font) -> np.ndarray:
    im = Image.new("RGB", (side, side), (225, 225, 225))
    d = ImageDraw.Draw(im)
    d.text((side // 2, side // 2), _fit(d, text, font, side - 10), fill=(90, 90, 90), font=font, anchor="mm")
    return np.asarray(im)


def _spacing(dpi: int) -> tuple[int, int, int]:
    """Page margin, gap between panels of a tile and gap between tiles, in px."""
    return round(0.1 * dpi), round(0.03 * dpi), round(0.15 * dpi)


def panel_side(width_px: int, per_row: int, panels_per_tile: int, dpi: int) -> int:
    """The side of one square panel when ``per_row`` tiles of ``panels_per_tile`` panels fill the width."""
    margin, gap_panel, gap_tile = _spacing(dpi)
    usable = width_px - 2 * margin - (per_row - 1) * gap_tile
    return (usable // per_row - (panels_per_tile - 1) * gap_panel) // panels_per_tile


@dataclass
class Tile:
    """One group on a sheet: header lines above, panels (image, label under it) side by side."""

    header: list[str]
    panels: list[tuple[np.ndarray, str]]


def draw_sheet(title: str, tiles: Sequence[Tile], *, width_px: int, per_row: int, panels_per_tile: int,
               dpi: int) -> Image.Image:
    """Tiles in rows on a white page ``width_px`` wide; text sizes are set in points at ``dpi``."""
    pt = dpi / 72.0
    f_title, f_head, f_label = _font(round(11 * pt)), _font(round(7.5 * pt)), _font(round(6.5 * pt))
    margin, gap_panel, gap_tile = _spacing(dpi)
    side = panel_side(width_px, per_row, panels_per_tile, dpi)
    tile_w = panels_per_tile * side + (panels_per_tile - 1) * gap_panel
    head_h, label_h = round(9.5 * pt), round(8.5 * pt)
    n_head = max((len(t.header) for t in tiles), default=0)
    row_h = n_head * head_h + side + label_h + gap_tile
    rows = max(1, -(-len(tiles) // per_row))
    title_h = round(16 * pt)
    page = Image.new("RGB", (width_px, margin + title_h + rows * row_h + margin), "white")
    d = ImageDraw.Draw(page)
    d.text((margin, margin), _fit(d, title, f_title, width_px - 2 * margin), fill="black", font=f_title)
    if not tiles:
        d.text((margin, margin + title_h), "nothing to show", fill=(90, 90, 90), font=f_head)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, per_row)
        x0 = margin + c * (tile_w + gap_tile)
        y = margin + title_h + r * row_h
        for line in tile.header:
            d.text((x0, y), _fit(d, line, f_head, tile_w), fill="black", font=f_head)
            y += head_h
        y = margin + title_h + r * row_h + n_head * head_h
        for j, (rgb, label) in enumerate(tile.panels[:panels_per_tile]):
            x = x0 + j * (side + gap_panel)
            im = Image.fromarray(rgb)
            if im.size != (side, side):
                im = im.resize((side, side), Image.Resampling.BILINEAR)
            page.paste(im, (x, y))
            d.text((x, y + side + round(1.5 * pt)), _fit(d, label, f_label, side), fill=(60, 60, 60), font=f_label)
    return page


def _panel_image(data: RunData, relpath: str, side: int, font) -> tuple[Optional[np.ndarray], str]:
    try:
        return data.load_image(relpath, side), ""
    except (OSError, ValueError) as exc:
        log.warning("cannot load %s: %s", relpath, exc)
        return None, "image missing"


def error_tiles(data: RunData, rows: pd.DataFrame, side: int, dpi: int) -> list[Tile]:
    """Per error: the image, the predicted class's Grad-CAM and the true class's, with labels and confidence."""
    names = data.names
    cams = data.load_cams([int(i) for i in rows["image_id"]]) if len(rows) else {}
    font = _font(round(7 * dpi / 72))
    tiles = []
    for r in rows.itertuples():
        rgb, why = _panel_image(data, r.relpath, side, font)
        stored = cams.get(int(r.image_id))
        maps = decode_maps(stored[3], len(stored[0]), stored[1], stored[2]) if stored else None
        panels = [(rgb if rgb is not None else _placeholder(side, why, font), f"{r.split} · {r.relpath.rsplit('/', 1)[-1]}")]
        for cls, what in ((int(r.pred), "Grad-CAM: predicted"), (int(r.label), "Grad-CAM: true")):
            idx = list(stored[0]).index(cls) if stored and cls in stored[0] else None
            if rgb is None or maps is None or idx is None:
                panels.append((_placeholder(side, why or "no map stored", font), what))
            else:
                panels.append((overlay(rgb, maps[idx], alpha=0.5), what))
        tiles.append(Tile(header=[f"true: {names[int(r.label)]}",
                                  f"pred: {names[int(r.pred)]} ({float(r.confidence):.0%})"], panels=panels))
    return tiles


def _sheet_px(options: ExportOptions) -> int:
    return round(options.width_in * options.dpi)


def _error_sheet(data: RunData, title: str, rows: pd.DataFrame, options: ExportOptions) -> Image.Image:
    width, per_row, per_tile = _sheet_px(options), 2, 3
    side = panel_side(width, per_row, per_tile, options.dpi)
    return draw_sheet(title, error_tiles(data, rows, side, options.dpi), width_px=width, per_row=per_row,
                      panels_per_tile=per_tile, dpi=options.dpi)


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
    yield Table("confused-pairs", "Off-diagonal cells of the confusion matrix, most frequent first.",
                data.pairs.drop(columns=["true_idx", "pred_idx"], errors="ignore"))


def per_class_section(data: RunData, options: ExportOptions) -> Iterator[Artifact]:
    fig = figures.print_layout(figures.per_class_bars(data.per_class), "Precision, recall and F1 per class")
    yield Plot("per-class", "F1 per class (bars) with precision and recall (markers), worst F1 first.", fig,
               options.width_in)
    yield Table("per-class-metrics", "Precision, recall, F1, support and predicted count per class.",
                data.per_class.drop(columns=["class_idx"], errors="ignore"))


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
    font = _font(round(7 * options.dpi / 72))
    tiles = []
    for g in groups:
        members = list(g.get("members", []))
        panels = []
        for m in members[:per_tile]:
            rgb, why = _panel_image(data, m["relpath"], side, font)
            label = data.names[m["label"]] if 0 <= m["label"] < len(data.names) else str(m["label"])
            panels.append((rgb if rgb is not None else _placeholder(side, why, font), f"{m['split']} · {label}"))
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
    sanity_section,
]


# --------------------------------------------------------------------------- writing

def png_with_dpi(data: bytes, dpi: int) -> bytes:
    """PNG bytes with a ``pHYs`` chunk saying ``dpi`` (any earlier one dropped); pixels are not re-encoded."""
    sig = b"\x89PNG\r\n\x1a\n"
    if not data.startswith(sig):
        raise ValueError("not a PNG")
    ppm = round(dpi / 0.0254)
    body = struct.pack(">IIB", ppm, ppm, 1)
    phys = struct.pack(">I", len(body)) + b"pHYs" + body + struct.pack(">I", zlib.crc32(b"pHYs" + body))
    out, pos = [sig], len(sig)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos : pos + 12 + length]
        pos += 12 + length
        if kind == b"pHYs":
            continue
        out.append(chunk)
        if kind == b"IHDR":
            out.append(phys)
    return b"".join(out)


def _svg_embedding(png: bytes, w: int, h: int, dpi: int) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w / dpi:.3f}in" height="{h / dpi:.3f}in" '
            f'viewBox="0 0 {w} {h}"><image width="{w}" height="{h}" '
            f'href="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"/></svg>\n')


def _write_sheet(sheet: Sheet, out: Path, options: ExportOptions) -> list[Path]:
    written = []
    buf = io.BytesIO()
    sheet.image.save(buf, format="PNG", dpi=(options.dpi, options.dpi), compress_level=1)  # photos barely compress; level 1 is 5x faster
    png = buf.getvalue()
    for fmt in options.formats:
        path = out / f"{sheet.stem}.{fmt}"
        if fmt == "png":
            path.write_bytes(png)
        elif fmt == "pdf":
            sheet.image.save(path, format="PDF", resolution=float(options.dpi))
        else:
            path.write_text(_svg_embedding(png, *sheet.image.size, options.dpi), encoding="utf-8")
        written.append(path)
    return written


def find_browser(browser: Optional[str]) -> Optional[str]:
    """The Chromium to render plots with: an explicit path, or for ``"auto"`` ``$BROWSER_PATH`` (what kaleido
    itself honours), then Debian's ``/usr/bin/chromium``, then ``chromium``/``google-chrome`` on PATH."""
    if browser is None:
        return None
    if browser != "auto":
        return browser if os.path.isfile(browser) and os.access(browser, os.X_OK) else None
    for candidate in (os.environ.get("BROWSER_PATH"), DEFAULT_BROWSER, shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _run_coroutine(make: Callable[[], Any]) -> Any:
    """``asyncio.run`` here, or in a helper thread when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:  # handed back to the caller below
            box["error"] = exc

    t = threading.Thread(target=work, name="figure-export")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def render_plots(jobs: Sequence[tuple[go.Figure, dict[str, Any]]], browser: str, timeout: float = 120.0) -> list[Any]:
    """Render figures with one browser: ``jobs`` of (figure, kaleido opts); bytes or the exception, in order."""
    import kaleido

    async def batch() -> list[Any]:
        # mathjax=False: the default loads MathJax from a CDN, and no figure here uses LaTeX.
        async with kaleido.Kaleido(n=1, timeout=timeout, mathjax=False, path=browser) as k:
            return list(await asyncio.gather(*(k.calc_fig(fig, opts=opts) for fig, opts in jobs),
                                             return_exceptions=True))

    return _run_coroutine(batch)


def _plot_opts(plot: Plot, fmt: str, dpi: int) -> dict[str, Any]:
    css_w = round(plot.width_in * CSS_DPI)
    css_h = int(plot.fig.layout.height or 500)
    return {"format": fmt, "width": css_w, "height": css_h, "scale": dpi / CSS_DPI}


def _rendered_size(plot: Plot, fmt: str, dpi: int, data: bytes) -> tuple[int, int]:
    """Pixel size of a rendered plot: read from a PNG's header, else the size it was laid out at."""
    if fmt == "png":
        return struct.unpack(">II", data[16:24])
    opts = _plot_opts(plot, fmt, dpi)
    return int(opts["width"] * opts["scale"]), int(opts["height"] * opts["scale"])


def write_figure_set(data: RunData, out: str | os.PathLike, options: ExportOptions = ExportOptions()) -> Manifest:
    """Write the figure set of ``data`` into the folder ``out`` (created; files of the same names replaced)
    and return its manifest, also written as ``out/manifest.json``."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sports = chosen_sports(data, options)
    manifest = Manifest(
        run={"id": int(data.run_id), "name": data.run_name},
        filters={"splits": list(options.splits) if options.splits else "all", "sports": sports,
                 "sports_given": options.sports is not None, "worst_errors": options.worst,
                 "errors_per_sheet": options.per_sheet, "top_confused": options.top_confused},
        formats=list(options.formats),
        dpi=options.dpi,
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    artifacts = [a for section in SECTIONS for a in section(data, options)]
    stems = [a.stem for a in artifacts]
    # A table (.csv) may share its stem with the plot drawn from it; two of one kind would overwrite each other.
    keys = [(a.stem, isinstance(a, Table)) for a in artifacts]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two artifacts share a file name: {sorted({k[0] for k in keys if keys.count(k) > 1})}")

    def record(path: Path, art: Artifact, kind: str, **extra: Any) -> None:
        manifest.files.append({"file": path.name, "caption": art.caption, "kind": kind, **extra})

    # The browser renders the plots in its own process while this one draws the sheets.
    plots = [a for a in artifacts if isinstance(a, Plot)]
    jobs = [(p, fmt) for p in plots for fmt in options.formats]
    browser = find_browser(options.browser)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plots")
    pending = None
    if jobs and browser is not None:
        pending = pool.submit(render_plots, [(p.fig, _plot_opts(p, fmt, options.dpi)) for p, fmt in jobs], browser)
    try:
        for art in artifacts:
            if isinstance(art, Table):
                path = out / f"{art.stem}.csv"
                art.frame.to_csv(path, index=False, encoding="utf-8")
                record(path, art, "table", rows=len(art.frame))
            elif isinstance(art, Sheet):
                w, h = art.image.size
                for path in _write_sheet(art, out, options):
                    record(path, art, "sheet", width_px=w, height_px=h, dpi=options.dpi)
        if jobs and pending is None:
            why = ("plots not requested" if options.browser is None else
                   f"no Chromium found (tried {options.browser if options.browser != 'auto' else 'BROWSER_PATH, ' + DEFAULT_BROWSER + ', PATH'})")
            log.warning("%s: skipping %d plots; tables and image sheets are still written", why, len(plots))
            manifest.skipped += [{"item": p.stem, "reason": why} for p in plots]
        elif pending is not None:
            try:
                results = pending.result()
            except Exception as exc:  # a browser that does not start: the rest of the set is still useful
                log.warning("plot rendering failed (%s: %s); tables and image sheets are still written",
                            type(exc).__name__, exc)
                results = [exc] * len(jobs)
            for (plot, fmt), res in zip(jobs, results):
                path = out / f"{plot.stem}.{fmt}"
                if isinstance(res, BaseException):
                    manifest.skipped.append({"item": path.name, "reason": f"{type(res).__name__}: {res}"})
                    continue
                path.write_bytes(png_with_dpi(res, options.dpi) if fmt == "png" else res)
                w, h = _rendered_size(plot, fmt, options.dpi, res)
                record(path, plot, "plot", width_px=w, height_px=h, dpi=options.dpi, width_in=plot.width_in)
    finally:
        pool.shutdown(wait=True)

    order: dict[str, int] = {}
    for i, s in enumerate(stems):
        order.setdefault(s, i)
    manifest.files.sort(key=lambda f: (order.get(Path(f["file"]).stem, len(order)), f["file"]))
    manifest.seconds = time.perf_counter() - t0
    (out / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    return manifest


def zip_folder(folder: str | os.PathLike) -> bytes:
    """The files directly in ``folder`` as zip bytes, in name order (no sub-folders, no paths outside)."""
    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            # PNG and PDF are compressed already: storing them saves seconds and costs nothing.
            kind = zipfile.ZIP_STORED if path.suffix in (".png", ".pdf") else zipfile.ZIP_DEFLATED
            zf.write(path, arcname=path.name, compress_type=kind)
    return buf.getvalue()
