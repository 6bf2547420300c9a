"""The dataset: discovery of the Kaggle layout, safe image decoding, and deterministic transforms.

Two layouts describe the same data and both work:
- folders: ``<root>/{train,valid,test}/<sport>/<image>.jpg``;
- an index: ``<root>/sports.csv`` with ``class id,filepaths,labels,data set`` (older copies lack
  ``class id``), paths relative to the root.
When both are present the CSV is the index. Classes come from the train split, in sorted order (which is
the order of the Kaggle ``class id`` column), with the dataset's own spellings.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from core.images import MAX_PIXELS, BadImage, model_pixels, open_rgb, read_image_header  # noqa: F401
from core.model import IMAGENET_MEAN, IMAGENET_STD
from core.splits import SPLIT_ALIASES, SPLITS, TRAIN

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DatasetError(ValueError):
    """The dataset as a whole cannot be used; the message names the path and the problem."""


@dataclass(frozen=True)
class Sample:
    relpath: str  # '/'-separated, relative to the data root
    label: int
    bbox: Optional[tuple[float, float, float, float]] = None


@dataclass
class DatasetIndex:
    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    absent: dict[str, str] = field(default_factory=dict)  # split -> why it is absent
    warnings: list[str] = field(default_factory=list)
    layout: str = "folders"

    def summary(self) -> str:
        parts = [f"{len(self.classes)} classes ({self.layout} layout)"]
        parts += [f"{s}: {len(v)} images" for s, v in self.splits.items()]
        parts += [f"{s}: absent" for s in self.absent]
        return ", ".join(parts)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


def _scan_folders(root: Path) -> dict[str, dict[str, list[str]]]:
    """split -> class -> sorted relpaths, for the split folders that exist."""
    found: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        sdir = root / split
        if not sdir.is_dir():
            continue
        classes: dict[str, list[str]] = {}
        for cdir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            classes[cdir.name] = sorted(
                p.relative_to(root).as_posix() for p in cdir.rglob("*") if _is_image(p)
            )
        found[split] = classes
    return found


def _read_csv(path: Path) -> dict[str, dict[str, list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = {c.strip().lower(): c for c in reader.fieldnames or []}
            need = {"filepaths", "labels", "data set"}
            if not need <= set(cols):
                raise DatasetError(
                    f"{path}: expected columns 'class id,filepaths,labels,data set' "
                    f"(class id optional), found {reader.fieldnames}"
                )
            found: dict[str, dict[str, list[str]]] = {}
            for lineno, row in enumerate(reader, start=2):
                split_raw = (row[cols["data set"]] or "").strip().lower()
                split = SPLIT_ALIASES.get(split_raw)
                if split is None:
                    raise DatasetError(f"{path}:{lineno}: unknown data set {split_raw!r}, expected train/valid/test")
                rel = (row[cols["filepaths"]] or "").strip().replace("\\", "/")
                label = (row[cols["labels"]] or "").strip()
                if not rel or not label:
                    raise DatasetError(f"{path}:{lineno}: empty filepath or label")
                found.setdefault(split, {}).setdefault(label, []).append(rel)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot be read as CSV ({exc})") from exc
    return found


def discover(root: str | Path, boxes: Optional[dict[str, Sequence[float]]] = None) -> DatasetIndex:
    """Index a dataset folder; raise DatasetError for problems that make training meaningless."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"--data {root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"--data {root}: is a file, expected the dataset folder holding train/ valid/ test/ or sports.csv")
    csv_path = root / "sports.csv"
    warns: list[str] = []
    if csv_path.is_file():
        layout = "sports.csv"
        found = _read_csv(csv_path)
        listed = [rel for cl in found.values() for rels in cl.values() for rel in rels]
        missing = [rel for rel in listed if not (root / rel).is_file()]
        if listed and len(missing) == len(listed):
            raise DatasetError(
                f"{csv_path}: none of its {len(listed)} file paths exist under {root} (first: {missing[0]!r})"
            )
        if missing:
            warns.append(f"{csv_path}: {len(missing)} listed files do not exist (first: {missing[0]!r}); they are skipped")
    else:
        layout = "folders"
        found = _scan_folders(root)
        if not found:
            raise DatasetError(f"--data {root}: holds neither sports.csv nor any of the folders train/ valid/ test/")
    train = found.get(TRAIN, {})
    empty = sorted(c for c, rels in train.items() if not rels)
    for c in empty:
        warns.append(f"{root / TRAIN / c}: class folder is empty; the class is left out")
    classes = sorted(c for c, rels in train.items() if rels)
    if not classes:
        raise DatasetError(f"--data {root}: no classes with training images (train split empty or absent)")
    cindex = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    absent: dict[str, str] = {}
    for split in SPLITS:
        if split not in found:
            absent[split] = f"no {split}/ folder" if layout == "folders" else f"no '{split}' rows in sports.csv"
            continue
        unknown = sorted(c for c, rels in found[split].items() if rels and c not in cindex)
        if unknown:
            raise DatasetError(
                f"--data {root}: {split} holds classes that train does not: {', '.join(map(repr, unknown[:5]))}"
                + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            )
        samples = []
        for c, rels in found[split].items():
            for rel in rels:
                bb = boxes.get(rel) if boxes else None
                samples.append(Sample(rel, cindex[c], tuple(bb) if bb else None))
        samples.sort(key=lambda s: s.relpath)
        if not samples:
            absent[split] = f"{split} split holds no images"
            continue
        splits[split] = samples
    for w in warns:
        log.warning(w)
    return DatasetIndex(root=root, classes=classes, splits=splits, absent=absent, warnings=warns, layout=layout)


def file_sha256(path: Path, chunk: int = 1 << 20) -> Optional[str]:
    """Hex SHA-256 of a file's bytes (its identity across runs and copies of the data); None when it cannot
    be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


# --------------------------------------------------------------------------- decoding

def to_tensor(pixels: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    t = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (t - m) / s


def _sample_seed(seed: int, epoch: int, relpath: str) -> int:
    h = hashlib.blake2b(f"{seed}:{epoch}:{relpath}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF


def draw_crop(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int, bool]:
    """One random resized crop of a ``w`` x ``h`` image: (x0, y0, crop width, crop height, flip).

    Area 60-100 % of the image, aspect 3/4-4/3 (log-uniform), ten tries before the whole image; then a
    horizontal flip with probability 1/2. The batch augmentation of the decoded cache (core.augment) makes
    the same draws from the same generator, so both paths crop every image alike.
    """
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(0.6, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0 = int(rng.integers(0, w - cw + 1))
            y0 = int(rng.integers(0, h - ch + 1))
            break
    else:
        cw, ch, x0, y0 = w, h, 0, 0
    return x0, y0, cw, ch, bool(rng.random() < 0.5)


def augment(img: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop (scale 0.6-1, aspect 3/4-4/3) and horizontal flip, from an explicit generator.

    Drawing from a per-(seed, epoch, image) generator makes the augmentation independent of the number of
    data-loader workers and of the rank, which is what makes resumed and distributed runs reproducible.
    """
    x0, y0, cw, ch, flip = draw_crop(*img.size, rng)
    img = img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.uint8)


class ImageDataset(torch.utils.data.Dataset):
    """Samples of one split. Items are ``(tensor, label, index, reason, size)``: ``reason`` is "" for a good
    file, whose ``size`` is its original (width, height); a bad file gives a zero tensor, a reason string
    and size (0, 0), so the batch goes on and the file is recorded as skipped."""

    def __init__(self, root: Path, samples: Sequence[Sample], size: int, train: bool, seed: int = 0,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.root, self.samples, self.size, self.train, self.seed = Path(root), list(samples), size, train, seed
        self.mean, self.std = mean, std
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            img = open_rgb(self.root / s.relpath)
        except BadImage as exc:
            return torch.zeros(3, self.size, self.size), s.label, i, str(exc), (0, 0)
        if self.train:
            rng = np.random.default_rng(_sample_seed(self.seed, self.epoch, s.relpath))
            pixels = augment(img, self.size, rng)
        else:
            pixels = model_pixels(img, self.size)
        return to_tensor(pixels, self.mean, self.std), s.label, i, "", img.size


def collate(batch):
    """Stack the good items; return ``(images, labels, indices, bad, sizes)`` with ``bad`` = [(index,
    reason)] and ``sizes`` = {index: (width, height)} of the good ones. A batch of bad files only gives
    ``(None, None, None, bad, {})``."""
    good = [b for b in batch if not b[3]]
    bad = [(b[2], b[3]) for b in batch if b[3]]
    sizes = {b[2]: b[4] for b in good}
    if not good:
        return None, None, None, bad, sizes
    x = torch.stack([b[0] for b in good])
    y = torch.tensor([b[1] for b in good], dtype=torch.long)
    idx = torch.tensor([b[2] for b in good], dtype=torch.long)
    return x, y, idx, bad, sizes
