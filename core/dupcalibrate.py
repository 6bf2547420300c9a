"""The near-duplicate score threshold, measured on the data set itself.

The fixed thresholds of :mod:`core.duplicates` (score 0.90, detail 0.5) were set on photographs, and there
they are right: on the real sports sample no pair of different photos scores between 0.85 and 0.90, so the
few pairs above 0.90 stand out (crops and re-encodes of one photo). On the synthetic demo, where the images
of a class share a coloured object on a random texture, different images form a continuum of scores that
runs straight through 0.90 (35 candidate pairs in 0.85-0.875, 15 in 0.875-0.90, 12 in 0.90-0.925, 5 above)
and 15 pairs of visibly different images were reported. Random pairs do not show this (20,000 random demo
pairs scored at most 0.87): what matters is the tail of the *most similar* different pairs, which are the
candidate pairs the search verifies anyway.

So, per data set:

1. **Look-alikes**: the verified candidate pairs that score below the fixed threshold, in a band of
   ``BAND`` under it, are fitted with an exponential tail (the excess over the band's start); the fit
   says how many different pairs are to be expected at or above the threshold. Pairs *above* the
   threshold do not enter the fit, so real duplicates cannot push it up.
2. **Choice**: below ``EXPECTED_MAX`` expected look-alikes the fixed threshold stays. Otherwise the
   look-alikes reach past it, and the threshold moves to the end of their continuum: walking up the
   sorted scores from the fixed threshold, the first gap of at least ``GAP`` between two scores ends it,
   and the threshold goes ``GAP / 2`` above its last score. A copy that scores beyond the gap is still
   found; a copy inside the continuum cannot be told from a look-alike by these measures.
3. **Planted copies** say what the choice costs: a seeded sample of the data set's own images is copied
   in memory, one copy of each kind in :data:`KINDS` (JPEG re-encoded at quality 40-60, resized by
   0.5-0.85 or 1.15-1.5, cropped by 3-5 % of each side, brighter or darker by 10-15 %), each scored against
   its original as the search scores a pair, and the share found at the chosen threshold is reported per
   kind (on the demo, crops of the fine texture score like look-alikes and are mostly given up).
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from core.duplicates import MIN_DETAIL, MIN_SCORE, THUMB, ImageHashes, _gradients, shift_correlation

if TYPE_CHECKING:
    from core.audit import ImageRef

KINDS = ("reencode", "resize", "crop", "brightness")
BAND = 0.10  # the look-alike tail is fitted on candidate scores in [threshold - BAND, threshold)
MIN_BAND_PAIRS = 5  # fewer pairs in the band: no tail to speak of, the fixed threshold stays
EXPECTED_MAX = 0.5  # expected look-alikes at or above the fixed threshold that it tolerates
GAP = 0.02  # an empty stretch of scores this wide ends the look-alike continuum


@dataclass
class Thresholds:
    """The chosen near-duplicate thresholds, and what they rest on."""

    min_score: float
    min_detail: float
    expected_lookalikes: float  # at or above the fixed score threshold, from the tail fit
    band_pairs: int  # candidate pairs in the band under the fixed threshold (the fit's data)
    above_fixed: int  # candidate pairs at or above the fixed threshold (score only)
    recall: dict[str, float]  # planted copies found at the chosen thresholds, per kind
    n_copies: int
    seconds: float
    floor: tuple[float, float] = (MIN_SCORE, MIN_DETAIL)
    samples: dict[str, Any] = field(default_factory=dict)

    @property
    def raised(self) -> bool:
        return self.min_score > self.floor[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["floor"] = list(self.floor)
        d["calibrated"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Thresholds":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "floor": tuple(d.get("floor", (MIN_SCORE, MIN_DETAIL)))})

    def describe(self) -> str:
        found = ", ".join(f"{k} {v:.0%}" for k, v in self.recall.items()) or "none planted"
        lo = self.floor[0] - BAND
        why = (f"raised from {self.floor[0]:.2f}: the {self.band_pairs} candidate pairs scoring {lo:.2f}-"
               f"{self.floor[0]:.2f} run on past it, so {self.above_fixed} pairs above it were look-alikes"
               if self.raised else f"{self.band_pairs} candidate pairs score {lo:.2f}-{self.floor[0]:.2f}, too few "
               "to reach past it")
        return (f"near duplicates: score >= {self.min_score:.3f}, detail >= {self.min_detail:.2f} ({why}); "
                f"planted copies of {self.samples.get('copied', 0)} images found: {found}")


def plant(rgb: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One in-memory copy of ``rgb`` of ``kind`` (see the module docstring), as RGB."""
    w, h = rgb.size
    if kind == "reencode":
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=int(rng.integers(40, 61)))
        buf.seek(0)
        with Image.open(buf) as im:
            return im.convert("RGB")
    if kind == "resize":
        f = float(rng.choice([rng.uniform(0.5, 0.85), rng.uniform(1.15, 1.5)]))
        return rgb.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BICUBIC)
    if kind == "crop":
        f = rng.uniform(0.03, 0.05)
        cw, ch = round(w * f), round(h * f)
        left, top = int(rng.integers(0, cw + 1)), int(rng.integers(0, ch + 1))
        return rgb.crop((left, top, w - (cw - left), h - (ch - top)))
    if kind == "brightness":
        gain = float(rng.choice([rng.uniform(0.85, 0.9), rng.uniform(1.1, 1.15)]))
        return ImageEnhance.Brightness(rgb).enhance(gain)
    raise ValueError(f"unknown kind of copy {kind!r}; expected one of {', '.join(KINDS)}")


def planted_copies(data_root: str | Path, images: Sequence[ImageRef], hashes: ImageHashes, rows: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, detail, kind) of one copy of each kind of every image in ``rows``, against its thumbnail."""
    originals, copies, kinds = [], [], []
    for i in (int(r) for r in rows):
        try:
            with Image.open(Path(data_root) / images[i].relpath) as im:
                rgb = im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # readable when hashed, gone since: the others suffice
        for kind in KINDS:
            originals.append(hashes.thumbs[i])
            copies.append(np.asarray(plant(rgb, kind, rng).resize((THUMB, THUMB), Image.BOX)))  # as hash_one
            kinds.append(kind)
    if not kinds:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), np.array([], dtype=object)
    a, b = np.stack(originals), np.stack(copies)
    return shift_correlation(a, b), shift_correlation(_gradients(a), _gradients(b)), np.array(kinds, dtype=object)


def expected_above(scores: np.ndarray, threshold: float) -> tuple[float, int]:
    """Different pairs expected at or above ``threshold``, from an exponential fit of the candidate scores in
    ``[threshold - BAND, threshold)`` (the excess over the band's start, truncated at the threshold), and
    the number of scores in that band."""
    lo = threshold - BAND
    band = np.asarray(scores, dtype=np.float64)
    band = band[(band >= lo) & (band < threshold)]
    if len(band) < MIN_BAND_PAIRS:
        return 0.0, int(len(band))
    mean_excess = float(np.mean(band - lo))
    # A truncated exponential's mean excess is below its scale; solve for the scale on a grid of rates.
    rates = np.linspace(0.1, 500.0, 5000)
    means = 1.0 / rates - BAND / np.expm1(rates * BAND)
    rate = float(rates[np.argmin(np.abs(means - mean_excess))])
    # Of all pairs from lo up, the band holds 1 - exp(-rate * BAND); the rest lie above the threshold.
    tail = np.exp(-rate * BAND)
    return float(len(band) * tail / (1.0 - tail)), int(len(band))


def choose_score(scores: np.ndarray, floor: float = MIN_SCORE) -> tuple[float, float, int]:
    """(threshold, expected look-alikes at ``floor``, pairs in the band) for candidate ``scores``."""
    expected, in_band = expected_above(scores, floor)
    if expected < EXPECTED_MAX:
        return floor, expected, in_band
    above = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(scores) >= floor])
    last = floor - GAP / 2
    for s in above:
        if s - last >= GAP:
            break
        last = float(s)
    return round(min(1.0, last + GAP / 2), 4), expected, in_band


def calibrate(data_root: str | Path, images: Sequence[ImageRef], hashes: ImageHashes, candidate_scores: np.ndarray,
              *, sample: int = 50, seed: int = 0, floor: tuple[float, float] = (MIN_SCORE, MIN_DETAIL)) -> Thresholds:
    """Thresholds for this data set from the verified scores of its near-duplicate candidate pairs (exact
    pairs left out), and the planted copies of ``sample`` of its images that say what they cost."""
    if sample < 0:
        raise ValueError(f"sample must be 0 or more images, got {sample}")
    t0 = time.perf_counter()
    scores = np.asarray(candidate_scores, dtype=np.float64)
    min_score, expected, in_band = choose_score(scores, floor[0])
    ok = np.flatnonzero(hashes.ok)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(ok, size=min(sample, len(ok)), replace=False)) if len(ok) else ok
    c_score, c_detail, c_kind = planted_copies(data_root, images, hashes, rows, rng)
    found = (c_score >= min_score) & (c_detail >= floor[1])
    return Thresholds(
        min_score=min_score, min_detail=floor[1], expected_lookalikes=round(expected, 3), band_pairs=in_band,
        above_fixed=int((scores >= floor[0]).sum()),
        recall={k: round(float(found[c_kind == k].mean()), 4) for k in KINDS if (c_kind == k).any()},
        n_copies=int(len(c_kind)), seconds=round(time.perf_counter() - t0, 3), floor=floor,
        samples=dict(copied=int(len(rows)), seed=seed),
    )
