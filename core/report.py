"""A run's figure set for a report: plots, image sheets, the tables behind them and a manifest.

Pure: the caller hands over a :class:`RunData` (DataFrames, arrays and two callbacks: one loads an image at
a given size, one returns the stored maps of some images); this module lays the files out in a folder. It
reads no store and draws no widgets, so ``jobs.export`` and the dashboard's Export page produce the same
files. The parts live beside it and their names are importable from here:

- :mod:`core.report_parts`: :class:`RunData`, :class:`ExportOptions`, the artifacts and the manifest;
- :mod:`core.report_sections`: :data:`SECTIONS`, what the set holds, one function per figure or table;
- :mod:`core.sheets`: the image sheets' layout (tiles of labelled panels), drawn with Pillow.

Plots are the dashboard's own figures (``core.figures``), written through plotly + kaleido by one headless
Chromium started once for the whole batch. Image sheets are drawn with Pillow at ``dpi`` (300 by default:
7 inches wide is 2,100 px). When no browser is available the plots are skipped, with one log line and a
note in the manifest, and everything else is still written.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import shutil
import struct
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import plotly.graph_objects as go

from core.report_parts import (
    CSS_DPI,
    FORMATS,
    Artifact,
    CamLoader,
    ExportOptions,
    ImageLoader,
    Manifest,
    Plot,
    RunData,
    Sheet,
    Table,
    slug,
)
from core.report_sections import SECTIONS, chosen_sports, error_tiles
from core.sheets import Tile, draw_sheet, panel_side

__all__ = [
    "CSS_DPI", "FORMATS", "Artifact", "CamLoader", "ExportOptions", "ImageLoader", "Manifest", "Plot", "RunData",
    "Sheet", "Table", "slug", "SECTIONS", "chosen_sports", "error_tiles", "Tile", "draw_sheet", "panel_side",
    "DEFAULT_BROWSER", "png_with_dpi", "find_browser", "render_plots", "write_artifacts", "write_figure_set",
    "zip_folder",
]

log = logging.getLogger("core.report")

DEFAULT_BROWSER = "/usr/bin/chromium"


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
    return write_artifacts(artifacts, out, options, manifest, started=t0)


def write_artifacts(artifacts: Sequence[Artifact], out: str | os.PathLike, options: ExportOptions,
                    manifest: Manifest, started: Optional[float] = None) -> Manifest:
    """Write ``artifacts`` into the folder ``out`` (created): tables as CSV, sheets and plots in every format
    of ``options``; record each file in ``manifest`` and write it as ``out/manifest.json``. Any figure set
    (a run's, a comparison's) is written by this."""
    t0 = time.perf_counter() if started is None else started
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
