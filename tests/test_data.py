"""Dataset discovery (folder and CSV layouts), dataset-level errors, and safe decoding of bad files."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from core.data import (
    BadImage,
    DatasetError,
    ImageDataset,
    collate,
    discover,
    model_pixels,
    open_rgb,
    read_image_header,
)
from tests.conftest import make_dataset


def test_folder_layout(dataset):
    idx = discover(dataset)
    assert idx.layout == "folders"
    assert idx.classes == ["alpha", "beta", "gamma"]
    assert {s: len(v) for s, v in idx.splits.items()} == {"train": 12, "valid": 6, "test": 6}
    assert idx.absent == {}
    assert all(s.relpath.startswith("valid/") for s in idx.splits["valid"])


@pytest.mark.parametrize("class_id_column", [True, False])
def test_csv_layout_matches_folders(tmp_path, class_id_column):
    root = make_dataset(tmp_path / "d", csv_index=True, class_id_column=class_id_column)
    by_csv = discover(root)
    assert by_csv.layout == "sports.csv"
    (root / "sports.csv").unlink()
    by_folders = discover(root)
    assert by_csv.classes == by_folders.classes
    assert by_csv.splits == by_folders.splits


def test_csv_only_describes_the_split(tmp_path):
    """With sports.csv present, the CSV is the index: a file outside it is not used."""
    root = make_dataset(tmp_path / "d", csv_index=True)
    Image.new("RGB", (8, 8)).save(root / "train" / "alpha" / "extra.jpg")
    assert not any(s.relpath.endswith("extra.jpg") for s in discover(root).splits["train"])


def test_missing_split_is_reported_absent(tmp_path):
    root = make_dataset(tmp_path / "d", per_split={"train": 3, "valid": 2})
    idx = discover(root)
    assert set(idx.splits) == {"train", "valid"}
    assert "test" in idx.absent and "test" in idx.absent["test"]


def test_class_in_valid_not_in_train_is_an_error(tmp_path):
    root = make_dataset(tmp_path / "d")
    shutil.copytree(root / "valid" / "beta", root / "valid" / "delta")
    with pytest.raises(DatasetError, match="valid holds classes that train does not: 'delta'"):
        discover(root)


def test_empty_class_folder_warns_and_is_left_out(tmp_path, caplog):
    root = make_dataset(tmp_path / "d", per_split={"train": 3, "valid": 1})
    (root / "train" / "omega").mkdir()
    with caplog.at_level(logging.WARNING):
        idx = discover(root)
    assert "omega" not in idx.classes
    assert any("omega" in w and "empty" in w for w in idx.warnings)
    assert "omega" in caplog.text


def test_no_classes(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no classes with training images"):
        discover(tmp_path / "d")


def test_data_is_a_file(tmp_path):
    f = tmp_path / "x.zip"
    f.write_bytes(b"PK")
    with pytest.raises(DatasetError, match=r"x\.zip: is a file"):
        discover(f)


def test_data_missing(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        discover(tmp_path / "nope")


def test_csv_paths_that_do_not_exist(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "sports.csv").write_text("class id,filepaths,labels,data set\n0,train/a/1.jpg,a,train\n")
    with pytest.raises(DatasetError, match=r"sports\.csv: none of its 1 file paths exist"):
        discover(root)


def test_csv_with_wrong_columns(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "sports.csv").write_text("path,label\nx.jpg,a\n")
    with pytest.raises(DatasetError, match="expected columns"):
        discover(root)


def test_odd_names_work(tmp_path):
    root = make_dataset(tmp_path / "d", classes=["tug of war", "o'neil \"quoted\"", "ski jümp"],
                        per_split={"train": 2, "valid": 1})
    idx = discover(root)
    assert idx.classes == sorted(["tug of war", "o'neil \"quoted\"", "ski jümp"])
    ds = ImageDataset(root, idx.splits["valid"], 32, train=False)
    x, y, i, bad, _ = collate([ds[k] for k in range(len(ds))])
    assert bad == [] and x.shape == (3, 3, 32, 32)


# --------------------------------------------------------------------------- bad files

@pytest.fixture
def bad_files(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(good, quality=95)
    data = good.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"this is not an image\n",
    }
    out = {}
    for name, blob in files.items():
        p = tmp_path / f"{name}.jpg"
        p.write_bytes(blob)
        out[name] = p
    # A PNG header claiming 20000x20000 pixels: must be refused before any decoding.
    big = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(big)
    out["huge"] = big
    return out


@pytest.mark.parametrize("kind,reason", [
    ("truncated", "cannot decode"),
    ("empty", "empty file"),
    ("text", "cannot decode"),
    ("huge", "too large"),
])
def test_bad_file_gives_a_reason(bad_files, kind, reason):
    with pytest.raises(BadImage, match=reason):
        open_rgb(bad_files[kind])


def test_huge_image_header_is_refused(bad_files):
    size, reason = read_image_header(bad_files["huge"])
    assert reason is not None and "too large" in reason


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA"])
def test_other_modes_load_as_rgb(tmp_path, mode):
    ext = "jpg" if mode in ("L", "CMYK") else "png"
    p = tmp_path / f"img.{ext}"
    Image.new(mode, (20, 10)).save(p)
    im = open_rgb(p)
    assert im.mode == "RGB" and im.size == (20, 10)
    assert model_pixels(im, 16).shape == (16, 16, 3)


def test_dataset_skips_bad_files_and_keeps_going(tmp_path, bad_files):
    from core.data import Sample

    root = tmp_path
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "ok.jpg")
    samples = [Sample("ok.jpg", 0)] + [Sample(p.name, 0) for p in bad_files.values()]
    ds = ImageDataset(root, samples, 32, train=True)
    x, y, idx, bad, sizes = collate([ds[i] for i in range(len(ds))])
    assert x.shape == (1, 3, 32, 32) and idx.tolist() == [0]
    assert sorted(i for i, _ in bad) == [1, 2, 3, 4]
    assert sizes == {0: (40, 40)}


def test_augmentation_is_deterministic_per_seed_and_epoch(dataset):
    idx = discover(dataset)
    ds = ImageDataset(dataset, idx.splits["train"], 24, train=True, seed=3)
    a = ds[0][0]
    assert (ds[0][0] == a).all()
    ds.set_epoch(1)
    assert not (ds[0][0] == a).all()
