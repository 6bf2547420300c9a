"""A small synthetic "sports" image set on disk, so the classifier can be trained and explained offline.

The pictures are drawn by ``core.drawings`` (one object per class on a textured background, its box
recorded). The files follow the Kaggle sports layout that ``core.data`` reads::

    <root>/train|valid|test/<class name>/<NNN>.jpg
    <root>/sports.csv      class id,filepaths,labels,data set
    <root>/boxes.json      relative path -> [x0, y0, x1, y1]
    <root>/manifest.json   the parameters and generator version, written last

The same seed gives byte-identical files: each image draws from its own ``numpy`` Generator seeded
with (seed, split, class, index), so images do not depend on the order they are made in.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np

from core.drawings import CLASS_NAMES, PALETTE, VERSION, render_example
from core.splits import SPLITS

__all__ = [
    "CLASS_NAMES", "PALETTE", "VERSION", "render_example", "SPLITS", "DEFAULT_COUNTS", "DEFAULT_IMAGE_SIZE",
    "JPEG_QUALITY", "example_rng", "default_demo_root", "generate_demo_dataset", "load_boxes",
]

DEFAULT_COUNTS = {"n_train": 150, "n_valid": 10, "n_test": 20}
DEFAULT_IMAGE_SIZE = 96
JPEG_QUALITY = 92

_OWN_NAMES = {*SPLITS, "sports.csv", "boxes.json", "manifest.json"}


def example_rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    """The Generator for one image, independent of every other image's."""
    return np.random.default_rng([seed, SPLITS.index(split), class_index, index])


# --------------------------------------------------------------------------------------------------
# The data set on disk
# --------------------------------------------------------------------------------------------------
def default_demo_root(seed: int = 0) -> Path:
    """``$SPORTS_CACHE`` when set, else ``~/.cache/sports-cam/demo-v<VERSION>-seed<seed>``."""
    env = os.environ.get("SPORTS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sports-cam" / f"demo-v{VERSION}-seed{seed}"


def _manifest(seed, n_classes, n_train, n_valid, n_test, image_size) -> dict:
    return {
        "version": VERSION,
        "seed": seed,
        "n_classes": n_classes,
        "n_train": n_train,
        "n_valid": n_valid,
        "n_test": n_test,
        "image_size": image_size,
    }


def _is_complete(root: Path, manifest: dict) -> bool:
    try:
        found = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if found != manifest or not (root / "sports.csv").is_file() or not (root / "boxes.json").is_file():
        return False
    per_class = manifest["n_train"] + manifest["n_valid"] + manifest["n_test"]
    return sum(1 for _ in root.glob("*/*/*.jpg")) == per_class * manifest["n_classes"]


def _write(root: Path, manifest: dict) -> None:
    seed, size = manifest["seed"], manifest["image_size"]
    counts = {s: manifest[f"n_{s}"] for s in SPLITS}
    width = max(3, len(str(max(counts.values()) - 1)))
    rows, boxes = [], {}
    for split in SPLITS:
        for c in range(manifest["n_classes"]):
            folder = root / split / CLASS_NAMES[c]
            folder.mkdir(parents=True)
            for i in range(counts[split]):
                img, box, _ = render_example(example_rng(seed, split, c, i), c, size)
                rel = f"{split}/{CLASS_NAMES[c]}/{i:0{width}d}.jpg"
                img.save(root / rel, format="JPEG", quality=JPEG_QUALITY)
                rows.append((c, rel, CLASS_NAMES[c], split))
                boxes[rel] = box
    with open(root / "sports.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["class id", "filepaths", "labels", "data set"])
        w.writerows(rows)
    (root / "boxes.json").write_text(json.dumps(boxes, indent=0, sort_keys=True))
    # Written last: its presence with matching parameters is what marks the set as complete.
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def generate_demo_dataset(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_classes: int = len(CLASS_NAMES),
    n_train: int = DEFAULT_COUNTS["n_train"],
    n_valid: int = DEFAULT_COUNTS["n_valid"],
    n_test: int = DEFAULT_COUNTS["n_test"],
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Path:
    """Make the demo set under ``root`` (counts are per class) and return ``root``.

    A complete set made with the same parameters is reused as it is. A partial one, or one made with
    other parameters or by another generator version, is replaced. The set is written to a temporary
    sibling folder and renamed into place, so an interrupted run never leaves a folder that looks
    complete. A folder holding anything other than a demo set is left alone (ValueError).
    """
    if not 2 <= n_classes <= len(CLASS_NAMES):
        raise ValueError(f"n_classes must be in [2, {len(CLASS_NAMES)}], got {n_classes}")
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if n < 1:
            raise ValueError(f"{name} must be at least 1, got {n}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    root = Path(root)
    manifest = _manifest(seed, n_classes, n_train, n_valid, n_test, image_size)
    if _is_complete(root, manifest):
        return root
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"demo data root {root} exists and is not a folder")
        strangers = sorted(p.name for p in root.iterdir() if p.name not in _OWN_NAMES)
        if strangers:
            raise ValueError(
                f"demo data root {root} holds files that are not part of a demo set "
                f"({', '.join(strangers[:3])}); expected an empty folder or an earlier demo set"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    old = root.with_name(f".{root.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write(tmp, manifest)
        if root.exists():
            os.replace(root, old)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return root


def load_boxes(root: str | os.PathLike) -> dict[str, list[float]]:
    """The object boxes of a demo set: relative image path -> [x0, y0, x1, y1] in pixels."""
    path = Path(root) / "boxes.json"
    if not path.is_file():
        raise ValueError(f"{path}: no such file; expected a demo set made by generate_demo_dataset")
    return {k: [float(v) for v in box] for k, box in json.loads(path.read_text()).items()}
