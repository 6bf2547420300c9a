"""What a figure set is made of: the run's data it is drawn from, the options, the artifacts and the manifest.

``db.queries.run_data`` fills a :class:`RunData` for ``jobs.export`` and the dashboard's Export page alike;
``core.report_sections`` turns it into artifacts and ``core.report`` writes them.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from core.cammaps import StoredMaps

FORMATS = ("png", "svg", "pdf")
CSS_DPI = 96  # plotly lays a figure out in CSS pixels, 96 to the inch

# (image_id list) -> {image_id: StoredMaps} of one CAM method, as ``db.queries.maps_for`` returns them;
# images without maps are left out
CamLoader = Callable[[Sequence[int]], Mapping[int, StoredMaps]]
# (relpath, side in px) -> uint8 RGB (side, side, 3); raises OSError/ValueError when it cannot
ImageLoader = Callable[[str, int], np.ndarray]


# --------------------------------------------------------------------------- inputs and options

@dataclass(frozen=True)
class RunData:
    """What a figure set is drawn from. Frames have the columns of the function named (``db.queries``,
    ``core.metrics``)."""

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
    accuracy: Optional[pd.DataFrame] = None  # core.intervals.accuracy_table of the predictions
    calibration: Optional[dict[str, Any]] = None  # the stored calibration: temperature, bins, report, stale
    logits: Optional[tuple[pd.DataFrame, np.ndarray]] = None  # logits_for: (image_id, split, label, pred), logits
    method_ranking: Optional[Any] = None  # core.method_rank.MethodRanking; None: no CAM method scored


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
