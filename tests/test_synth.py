"""The synthetic demo set: deterministic, in the Kaggle layout, cached, and with honest boxes."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import drawings, synth

SMALL = dict(seed=3, n_classes=4, n_train=3, n_valid=1, n_test=2, image_size=48)


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return synth.generate_demo_dataset(tmp_path_factory.mktemp("demo") / "set", **SMALL)


def test_same_seed_gives_byte_identical_files(small_set, tmp_path):
    again = synth.generate_demo_dataset(tmp_path / "again", **SMALL)
    assert _hashes(again) == _hashes(small_set)


def test_other_seed_gives_other_images(small_set, tmp_path):
    other = synth.generate_demo_dataset(tmp_path / "other", **{**SMALL, "seed": 4})
    a, b = _hashes(small_set), _hashes(other)
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != b[k] for k in jpgs)


def test_layout_and_csv_agree_with_files(small_set):
    with open(small_set / "sports.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["class id", "filepaths", "labels", "data set"]
        rows = list(reader)
    on_disk = sorted(p.relative_to(small_set).as_posix() for p in small_set.rglob("*.jpg"))
    assert sorted(r["filepaths"] for r in rows) == on_disk
    per_split = {"train": SMALL["n_train"], "valid": SMALL["n_valid"], "test": SMALL["n_test"]}
    assert len(rows) == sum(per_split.values()) * SMALL["n_classes"]
    for r in rows:
        split, label, name = r["filepaths"].split("/")
        assert r["data set"] == split and r["labels"] == label
        assert synth.CLASS_NAMES[int(r["class id"])] == label
        assert name.endswith(".jpg")
    labels = {r["labels"] for r in rows}
    assert labels == set(synth.CLASS_NAMES[: SMALL["n_classes"]])
    assert all(label.isascii() for label in labels)
    with Image.open(small_set / rows[0]["filepaths"]) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
        assert im.size == (SMALL["image_size"], SMALL["image_size"])


def test_boxes_cover_every_image_within_bounds(small_set):
    boxes = synth.load_boxes(small_set)
    on_disk = {p.relative_to(small_set).as_posix() for p in small_set.rglob("*.jpg")}
    assert set(boxes) == on_disk
    size = SMALL["image_size"]
    for x0, y0, x1, y1 in boxes.values():
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        # The object spans roughly a third to three quarters of the image side.
        assert 0.25 * size <= max(x1 - x0, y1 - y0) <= 0.8 * size


@pytest.mark.parametrize("class_index", range(len(synth.CLASS_NAMES)))
def test_box_is_tight_around_the_drawn_object(class_index):
    rng = np.random.default_rng(class_index)
    image, (x0, y0, x1, y1), mask = synth.render_example(rng, class_index, 64)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    # Outside the mask the image is the background drawn by the same generator, pixel for pixel.
    rng = np.random.default_rng(class_index)
    bg = np.round(drawings._background(rng, 64)).astype(np.uint8)
    pixels = np.asarray(image)
    assert np.array_equal(pixels[~mask], bg[~mask])
    assert not np.array_equal(pixels[mask], bg[mask])


def test_second_call_reuses_the_cache(small_set):
    before = {p: p.stat().st_mtime_ns for p in small_set.rglob("*")}
    assert synth.generate_demo_dataset(small_set, **SMALL) == small_set
    assert {p: p.stat().st_mtime_ns for p in small_set.rglob("*")} == before


def test_partial_folder_is_regenerated(small_set, tmp_path):
    root = tmp_path / "partial"
    (root / "train" / "demo ball").mkdir(parents=True)
    (root / "train" / "demo ball" / "000.jpg").write_bytes(b"half a picture")
    (root / "sports.csv").write_text("class id,filepaths,labels,data set\n")
    synth.generate_demo_dataset(root, **SMALL)
    assert _hashes(root) == _hashes(small_set)
    assert not any(p.name.startswith(".partial.") for p in tmp_path.iterdir())


def test_set_with_other_parameters_is_replaced(tmp_path):
    root = tmp_path / "set"
    synth.generate_demo_dataset(root, **{**SMALL, "image_size": 32})
    synth.generate_demo_dataset(root, **SMALL)
    assert json.loads((root / "manifest.json").read_text())["image_size"] == SMALL["image_size"]
    with Image.open(next(root.rglob("*.jpg"))) as im:
        assert im.size == (SMALL["image_size"],) * 2


def test_missing_image_makes_the_set_incomplete(tmp_path):
    root = synth.generate_demo_dataset(tmp_path / "set", **SMALL)
    victim = next(root.rglob("*.jpg"))
    victim.unlink()
    synth.generate_demo_dataset(root, **SMALL)
    assert victim.is_file()


def test_interrupted_generation_never_looks_complete(tmp_path, monkeypatch):
    root = tmp_path / "set"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "render_example", boom)
    with pytest.raises(KeyboardInterrupt):
        synth.generate_demo_dataset(root, **SMALL)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []


def test_folder_with_other_content_is_left_alone(tmp_path):
    (tmp_path / "thesis.txt").write_text("do not delete")
    with pytest.raises(ValueError, match="not part of a demo set"):
        synth.generate_demo_dataset(tmp_path, **SMALL)
    assert (tmp_path / "thesis.txt").read_text() == "do not delete"


def test_classes_look_different():
    size, n = 48, 24
    means = []
    for c in range(len(synth.CLASS_NAMES)):
        masks = [synth.render_example(synth.example_rng(0, "train", c, i), c, size)[2] for i in range(n)]
        # The average object silhouette, centred on its box, is a fingerprint of the shape.
        crops = []
        for m in masks:
            ys, xs = np.nonzero(m)
            crop = Image.fromarray(m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255)
            crops.append(np.asarray(crop.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32) / 255)
        means.append(np.mean(crops, axis=0))
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert np.abs(means[i] - means[j]).mean() > 0.05, (synth.CLASS_NAMES[i], synth.CLASS_NAMES[j])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_classes": 11}, "n_classes"), ({"n_train": 0}, "n_train"), ({"image_size": 16}, "image_size")],
)
def test_bad_parameters_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.generate_demo_dataset(tmp_path / "set", **{**SMALL, **kwargs})


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SPORTS_CACHE", str(tmp_path / "cache"))
    assert synth.default_demo_root() == tmp_path / "cache"
    monkeypatch.delenv("SPORTS_CACHE")
    root = synth.default_demo_root(seed=5)
    assert root.name == f"demo-v{synth.VERSION}-seed5" and root.parent.name == "sports-cam"


def test_load_boxes_without_a_set(tmp_path):
    with pytest.raises(ValueError, match="boxes.json"):
        synth.load_boxes(tmp_path)
