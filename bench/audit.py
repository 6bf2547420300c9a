"""Benchmark of the data audit: duplicate finding on a planted set, and a run on a real data folder.

``python -m bench.audit [--n 2000]`` writes ``n`` images into a temporary folder: originals (textured
backgrounds with random shapes), a planted copy of some of them of every kind (byte copy, same pixels in
another file, JPEG re-encode, resize, crop, shift, brightness), within and across splits, and look-alikes
(same background, different objects) that must not be reported. It prints precision and recall per kind,
the hashing and search times and an extrapolation to 14,500 images.

``python -m bench.audit --real PATH`` audits a folder laid out like the sports dataset (``sports.csv`` or
``<split>/<class>/<file>``) and prints the duplicate groups and the train/valid leakage it finds.

The generator ``make_planted_set`` is also used by ``tests/test_audit.py``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from core.audit import ImageRef, audit, hash_images, find_pairs
from core.dupcalibrate import Thresholds
from core.splits import SPLITS

log = logging.getLogger(__name__)

PLANT_KINDS = ("bytes", "pixels", "reencode", "resize", "crop", "shift", "brightness")
FULL_DATASET = 14_500


# ---------------------------------------------------------------------------------------------- generator
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour gradient plus blurred noise at two scales: a texture, not a flat field."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 215, 3)
    slope = rng.uniform(-60, 60, (2, 3))
    img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    for cells, amp in ((6, 45.0), (24, 20.0)):
        noise = rng.normal(0, 1, (cells, cells, 3))
        up = Image.fromarray(((noise + 3) * 40).clip(0, 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC
        )
        img = img + (np.asarray(up, dtype=np.float64) - 120) / 120 * amp
    img = img + rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def _draw_objects(rng: np.random.Generator, bg: np.ndarray, n_objects: int) -> Image.Image:
    """Draw ``n_objects`` random ellipses, boxes and polygons of 20-50 % of the side onto ``bg``."""
    im = Image.fromarray(bg)
    size = bg.shape[0]
    draw = ImageDraw.Draw(im)
    for _ in range(n_objects):
        w, h = rng.uniform(0.2, 0.5, 2) * size
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        elif shape == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            pts = [(x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(5)]
            draw.polygon(pts, fill=colour)
    return im.filter(ImageFilter.GaussianBlur(0.6))


def _transform(rng: np.random.Generator, im: Image.Image, kind: str) -> tuple[Image.Image, int, str]:
    """Return (image, JPEG quality, format) of a planted near or exact copy of ``im``."""
    w, h = im.size
    if kind == "reencode":
        return im, int(rng.integers(30, 61)), "JPEG"
    if kind == "resize":
        f = float(rng.choice([rng.uniform(0.5, 0.85), rng.uniform(1.15, 1.5)]))
        return im.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BICUBIC), 90, "JPEG"
    if kind == "crop":
        f = rng.uniform(0.03, 0.05)
        cw, ch = round(w * f), round(h * f)
        left, top = int(rng.integers(0, cw + 1)), int(rng.integers(0, ch + 1))
        return im.crop((left, top, w - (cw - left), h - (ch - top))), 90, "JPEG"
    if kind == "shift":
        dx, dy = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(2, 6, 2))
        a = np.pad(np.asarray(im), ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
        a = a[abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w]
        return Image.fromarray(a), 90, "JPEG"
    if kind == "brightness":
        f = float(rng.choice([rng.uniform(0.85, 0.9), rng.uniform(1.1, 1.15)]))
        return ImageEnhance.Brightness(im).enhance(f), 90, "JPEG"
    raise ValueError(f"unknown transform {kind!r}; expected one of {PLANT_KINDS[2:]}")


@dataclass
class PlantedSet:
    """A generated data folder and what was planted in it (indices into ``images``)."""

    root: Path
    images: list[ImageRef]
    duplicates: dict[tuple[int, int], str]  # (original, copy) -> planted kind
    lookalikes: list[tuple[int, int]]  # pairs that share a background only
    conflicts: list[tuple[int, int]]  # planted copies that carry another label than their original


def make_planted_set(
    root: str | Path,
    n_originals: int,
    *,
    copies_per_kind: int = 2,
    n_lookalikes: int = 4,
    n_conflicts: int = 1,
    n_classes: int = 5,
    size_range: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> PlantedSet:
    """Write originals, planted copies of every kind and look-alike pairs under ``root``.

    Copies alternate between the original's split and another one, so both within-split and cross-split
    duplicates are planted. The first ``n_conflicts`` planted copies get a label other than their original's.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    images: list[ImageRef] = []
    pil: list[Image.Image] = []
    counter = iter(range(10**9))

    def save(im: Image.Image, split: str, label: int, quality: int = 90, fmt: str = "JPEG", **kw) -> int:
        ext = "jpg" if fmt == "JPEG" else "png"
        rel = f"{split}/class{label}/{next(counter):06d}.{ext}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "JPEG":
            im.save(path, "JPEG", quality=quality, **kw)
        else:
            im.save(path, "PNG", **kw)
        images.append(ImageRef(split, rel, label))
        pil.append(im)
        return len(images) - 1

    def random_original(bg: np.ndarray | None = None) -> Image.Image:
        size = int(rng.integers(size_range[0], size_range[1] + 1))
        if bg is None or bg.shape[0] != size:
            bg = _background(rng, size)
        return _draw_objects(rng, bg, int(rng.integers(2, 5)))

    for _ in range(n_originals):
        split = SPLITS[int(rng.choice(3, p=[0.7, 0.15, 0.15]))]
        im = random_original()
        fmt = "PNG" if rng.random() < 0.1 else "JPEG"
        save(im, split, int(rng.integers(n_classes)), fmt=fmt)

    duplicates: dict[tuple[int, int], str] = {}
    conflicts: list[tuple[int, int]] = []
    # distinct originals for every planted copy, so that the expected groups are exactly the planted pairs
    sources = rng.permutation(n_originals)[: copies_per_kind * len(PLANT_KINDS)]
    for k, src in enumerate(sources):
        src = int(src)
        kind = PLANT_KINDS[k % len(PLANT_KINDS)]
        ref = images[src]
        split = ref.split if (k // len(PLANT_KINDS)) % 2 == 0 else SPLITS[(SPLITS.index(ref.split) + 1) % 3]
        label = ref.label
        if len(conflicts) < n_conflicts:
            label = (label + 1) % n_classes
        if kind == "bytes":
            rel = f"{split}/class{label}/{next(counter):06d}{Path(ref.relpath).suffix}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / ref.relpath, root / rel)
            images.append(ImageRef(split, rel, label))
            pil.append(pil[src])
            dst = len(images) - 1
        elif kind == "pixels":
            # decode the original and store the very same pixels losslessly (other bytes, same RGB array)
            with Image.open(root / ref.relpath) as f:
                decoded = f.convert("RGB")
            dst = save(decoded, split, label, fmt="PNG", compress_level=int(rng.integers(1, 9)))
        else:
            im, quality, fmt = _transform(rng, pil[src], kind)
            dst = save(im, split, label, quality=quality, fmt=fmt)
        duplicates[(src, dst)] = kind
        if label != ref.label:
            conflicts.append((src, dst))

    lookalikes: list[tuple[int, int]] = []
    for _ in range(n_lookalikes):
        size = int(rng.integers(size_range[0], size_range[1] + 1))
        bg = _background(rng, size)
        a = save(random_original(bg), "train", int(rng.integers(n_classes)))
        b = save(random_original(bg), SPLITS[int(rng.integers(3))], int(rng.integers(n_classes)))
        lookalikes.append((a, b))
    return PlantedSet(root, images, duplicates, lookalikes, conflicts)


# ---------------------------------------------------------------------------------------------- scoring
def score_planted(planted: PlantedSet, found_pairs: set[tuple[int, int]]) -> list[dict]:
    """Precision and recall of ``found_pairs`` (index pairs, any order) against the planted duplicates."""
    found = {tuple(sorted(p)) for p in found_pairs}
    truth = {tuple(sorted(p)): kind for p, kind in planted.duplicates.items()}
    rows = []
    for kind in (*PLANT_KINDS, "all"):
        planted_k = {p for p, k in truth.items() if kind in (k, "all")}
        tp = len(planted_k & found)
        rows.append({"kind": kind, "planted": len(planted_k), "found": tp, "recall": tp / max(1, len(planted_k))})
    false = found - set(truth)
    rows[-1]["false_pairs"] = len(false)
    rows[-1]["precision"] = len(found & set(truth)) / max(1, len(found))
    rows[-1]["lookalikes_reported"] = sum(tuple(sorted(p)) in found for p in planted.lookalikes)
    return rows


# ---------------------------------------------------------------------------------------------- real data
def images_from_folder(root: Path) -> tuple[list[ImageRef], list[str]]:
    """The images of a sports-style folder: from ``sports.csv`` when present, else ``split/class/file``."""
    index = root / "sports.csv"
    refs: list[ImageRef] = []
    if index.is_file():
        with index.open(newline="") as f:
            rows = list(csv.DictReader(f))
        names = sorted({r["labels"] for r in rows})
        by_name = {n: i for i, n in enumerate(names)}
        for r in rows:
            refs.append(ImageRef(r["data set"].strip(), r["filepaths"].replace("\\", "/"), by_name[r["labels"]]))
        return refs, names
    names = sorted({p.name for s in SPLITS if (root / s).is_dir() for p in (root / s).iterdir() if p.is_dir()})
    by_name = {n: i for i, n in enumerate(names)}
    for s in SPLITS:
        for p in sorted((root / s).glob("*/*")) if (root / s).is_dir() else []:
            if p.is_file():
                refs.append(ImageRef(s, p.relative_to(root).as_posix(), by_name[p.parent.name]))
    if not refs:
        raise ValueError(f"no sports.csv and no <split>/<class>/<file> images under {root}")
    return refs, names


def run_real(root: Path, workers: int) -> None:
    refs, names = images_from_folder(root)
    t0 = time.perf_counter()
    report = audit(root, refs, workers=workers, calibrate=True)
    dt = time.perf_counter() - t0
    frames = report.to_frames()
    print(f"real data: {root}  images={len(refs)} classes={len(names)}  audit {dt:.1f} s")
    print(Thresholds.from_dict(report.stats["thresholds"]).describe())
    print(f"hashing: {report.stats['hash_seconds']:.1f} s ({report.stats['images_per_second']:.0f} img/s), "
          f"search: {report.stats['search_seconds']:.2f} s ({report.stats['n_candidates']} candidates), "
          f"skipped: {len(report.skipped)}")
    groups = frames["groups"]
    print(f"duplicate groups: {report.stats['n_groups']} "
          f"(exact {int((groups.drop_duplicates('group').kind == 'exact').sum()) if len(groups) else 0})")
    for g in report.groups:
        members = ", ".join(f"{refs[m].split}:{refs[m].relpath} [{names[refs[m].label]}]" for m in g.members)
        print(f"  #{g.id} {g.kind} score={g.score:.3f}: {members}")
    print(f"leaked images: {len(frames['leakage'])}")
    for _, r in frames["leakage"].iterrows():
        print(f"  {r.split}:{r.relpath} == {r.other_split}:{r.other_relpath} ({r.kind}, {r.score:.3f})")
    print(f"conflicting-label groups: {len(report.conflicts)}")
    for c in report.conflicts:
        print(f"  #{c.group}: " + "; ".join(f"{names[lbl]} x{n}" for lbl, n in sorted(c.label_counts.items())))


# ---------------------------------------------------------------------------------------------- main
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="images in the planted set (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="hashing threads (default 1)")
    p.add_argument("--real", type=Path, default=None, help="audit this data folder instead (default: none)")
    return p


def run_planted(n: int, seed: int, workers: int) -> None:
    copies = max(1, n // 40)  # ~17 % of the images are planted copies
    n_look = max(2, n // 40)
    n_orig = n - copies * len(PLANT_KINDS) - 2 * n_look
    if n_orig < copies * len(PLANT_KINDS):
        raise ValueError(f"--n {n} is too small; use at least 100")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        planted = make_planted_set(tmp, n_orig, copies_per_kind=copies, n_lookalikes=n_look,
                                   n_conflicts=copies, seed=seed)
        print(f"planted set: {len(planted.images)} images ({n_orig} originals, {copies} copies of each of "
              f"{len(PLANT_KINDS)} kinds, {n_look} look-alike pairs), written in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        hashes = hash_images(tmp, planted.images, workers=workers)
        t_hash = time.perf_counter() - t0
        t0 = time.perf_counter()
        pairs = find_pairs(hashes)
        t_search = time.perf_counter() - t0
        report = audit(tmp, planted.images, hashes=hashes)
        found = {(int(i), int(j)) for i, j in zip(pairs["i"], pairs["j"])}
        rows = score_planted(planted, found)
    print(f"{'kind':<11}{'planted':>8}{'found':>7}{'recall':>8}")
    for r in rows:
        print(f"{r['kind']:<11}{r['planted']:>8}{r['found']:>7}{r['recall']:>8.3f}")
    last = rows[-1]
    print(f"precision {last['precision']:.3f}  false pairs {last['false_pairs']}  "
          f"look-alike pairs reported {last['lookalikes_reported']}/{n_look}")
    print(f"groups {report.stats['n_groups']}, leaked images {len(report.leakage)}, "
          f"conflicting groups {len(report.conflicts)} (planted {copies})")
    n_img = len(planted.images)
    rate = n_img / t_hash
    t_cand, t_verify = pairs.attrs["candidate_seconds"], pairs.attrs["verify_seconds"]
    n_cand = pairs.attrs["n_candidates"]
    # the candidate search is all-pairs (grows with n^2); verification grows with the candidates, taken
    # here to grow with n^2 too (chance look-alikes), which overstates it for a set of planted pairs
    ratio = FULL_DATASET / n_img
    print(f"hashing {t_hash:.1f} s ({rate:.0f} img/s, {workers} worker(s)); search {t_search:.2f} s = "
          f"candidates {t_cand:.2f} s + verification of {n_cand} pairs {t_verify:.2f} s "
          f"({1000 * t_verify / max(1, n_cand):.1f} ms/pair)")
    print(f"extrapolated to {FULL_DATASET} images: hashing {FULL_DATASET / rate:.0f} s at this image size, "
          f"candidates {t_cand * ratio**2:.0f} s, verification at most {t_verify * ratio**2:.0f} s")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.real is not None:
            run_real(args.real, args.workers)
        else:
            run_planted(args.n, args.seed, args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
