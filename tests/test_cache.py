"""The decoded cache: exact evaluation tensors, bad files, the content key, resume after a kill, fallbacks."""
from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import core.cache as cache_mod
from core.cache import CacheUnavailable, DecodedCache, build_split, cache_bytes, split_key
from core.cache import DecodedSplit
from core.data import ImageDataset, discover, open_rgb
from core.dist import DistEnv
from core.feed import CachedLoader, split_feed
from jobs.cache import get_args_parser, main as cache_main
from jobs.common import run_cli
from tests.conftest import make_dataset

CPU = torch.device("cpu")


def with_odd_files(root: Path) -> Path:
    """Add what real folders hold: a non-square photo, a PNG with alpha, an empty and a truncated file."""
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (30, 47, 3), dtype=np.uint8)).save(root / "valid/alpha/wide.jpg")
    rgba = rng.integers(0, 255, (40, 26, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "valid/beta/tall.png")
    (root / "valid/gamma/empty.jpg").write_bytes(b"")
    data = (root / "valid/alpha/000.jpg").read_bytes()
    (root / "valid/beta/cut.jpg").write_bytes(data[: len(data) // 3])
    return root


@pytest.fixture
def data(tmp_path):
    return with_odd_files(make_dataset(tmp_path / "data", per_split={"train": 5, "valid": 3}))


def batches(loader):
    return [(x, y, i, bad, sizes) for x, y, i, bad, sizes in loader]


@pytest.mark.parametrize("size", [32, 40])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_evaluation_through_the_cache_equals_the_jpeg_path(data, tmp_path, size, batch_size):
    index = discover(data)
    common = dict(train=False, size=size, batch_size=batch_size, env=DistEnv(), device=CPU, workers=0)
    jpeg = split_feed(index, "valid", **common)
    cached = split_feed(index, "valid", cache=DecodedCache(tmp_path / "c"), **common)
    assert isinstance(jpeg.dataset, ImageDataset) and isinstance(cached.dataset, DecodedSplit)
    a, b = batches(jpeg.loader), batches(cached.loader)
    assert len(a) == len(b) == len(cached.loader)
    for (xa, ya, ia, bada, sa), (xb, yb, ib, badb, sb) in zip(a, b):
        assert (xa is None) == (xb is None)
        if xa is not None:
            assert xa.dtype == xb.dtype and torch.equal(xa, xb)
            assert torch.equal(ya, yb) and torch.equal(ia, ib)
        assert bada == badb and sa == sb
    assert sum(len(bad) for *_, bad, _ in b) == 2


def test_bad_files_keep_their_reason(data, tmp_path):
    index = discover(data)
    samples = index.splits["valid"]
    done = build_split(tmp_path / "c", data, samples, "valid", 32)
    for s, reason, ok in zip(samples, done.reasons, done.ok):
        try:
            open_rgb(data / s.relpath)
            expected = ""
        except ValueError as exc:
            expected = str(exc)
        assert reason == expected and ok == (not expected)
    assert "empty file" in done.reasons[[s.relpath for s in samples].index("valid/gamma/empty.jpg")]
    wide = [s.relpath for s in samples].index("valid/alpha/wide.jpg")
    assert tuple(done.wh[wide]) == (47, 30)
    assert not done.pixels[~done.ok].any()  # a skipped file is a row of zeros


def test_the_array_is_a_plain_npy_of_the_expected_size(data, tmp_path):
    samples = discover(data).splits["train"]
    done = build_split(tmp_path / "c", data, samples, "train", 36)
    arr = np.load(done.folder / "pixels.npy", mmap_mode="r")
    assert arr.shape == (len(samples), 36, 36, 3) and arr.dtype == np.uint8
    assert arr.nbytes == cache_bytes(len(samples), 36)
    assert not (done.folder / "progress.log").exists()
    assert json.loads((done.folder / "index.json").read_text())["relpaths"] == [s.relpath for s in samples]


@pytest.mark.parametrize("change", ["rewrite", "touch", "remove"])
def test_a_changed_file_gives_a_fresh_cache(data, tmp_path, change):
    samples = discover(data).splits["train"]
    first = build_split(tmp_path / "c", data, samples, "train", 32)
    target = data / samples[2].relpath
    if change == "rewrite":
        Image.new("RGB", (32, 32), (255, 0, 0)).save(target)
    elif change == "touch":
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    else:
        target.unlink()
    second = build_split(tmp_path / "c", data, samples, "train", 32)
    assert second.folder != first.folder
    assert not first.folder.exists()  # the stale cache of the same folder, split and side is gone
    if change == "rewrite":
        assert np.abs(second.pixels[2].astype(int) - [255, 0, 0]).max() <= 2  # red, give or take the JPEG
    if change == "remove":
        assert second.reasons[2] == "file not found"
    assert np.array_equal(second.pixels[0], first.pixels[0])  # an unchanged file, the same pixels


def test_the_key_depends_on_side_split_and_labels(data):
    samples = discover(data).splits["train"]
    base = split_key(data, samples, "train", 32)
    assert base == split_key(data, samples, "train", 32)
    assert base != split_key(data, samples, "train", 33)
    assert base != split_key(data, samples, "valid", 32)
    S = namedtuple("S", "relpath label")
    relabelled = [S(s.relpath, (s.label + 1) % 3) for s in samples]
    assert base != split_key(data, relabelled, "train", 32)


def test_resume_after_a_kill_rebuilds_only_the_missing_chunks(data, tmp_path, monkeypatch):
    samples = discover(data).splits["train"]  # 15 images: 8 chunks of 2
    clean = build_split(tmp_path / "clean", data, samples, "train", 32, chunk=2)
    real = cache_mod.decode_chunk
    calls = []

    def dies_at_fourth(job):
        calls.append(job[1][0])
        if len(calls) == 4:
            raise KeyboardInterrupt  # a kill while the fourth chunk is being decoded
        return real(job)

    monkeypatch.setattr(cache_mod, "decode_chunk", dies_at_fourth)
    with pytest.raises(KeyboardInterrupt):
        build_split(tmp_path / "c", data, samples, "train", 32, chunk=2)
    folder = clean.folder.parent.parent / "c" / clean.folder.name
    assert not (folder / "index.json").exists()
    # A kill while appending the progress line leaves half a line: that chunk is redone, not trusted.
    with open(folder / "progress.log", "a") as fh:
        fh.write('{"chunk": 6, "reas')
    calls.clear()
    monkeypatch.setattr(cache_mod, "decode_chunk", lambda job: (calls.append(job[1][0]), real(job))[1])
    resumed = build_split(tmp_path / "c", data, samples, "train", 32, chunk=2)
    assert calls == [samples[k].relpath for k in (6, 8, 10, 12, 14)]  # chunks 3..7; 0..2 were kept
    assert np.array_equal(np.asarray(resumed.pixels), np.asarray(clean.pixels))
    assert resumed.reasons == clean.reasons and np.array_equal(resumed.wh, clean.wh)


def test_a_damaged_array_is_written_again_whole(data, tmp_path, monkeypatch):
    samples = discover(data).splits["train"]
    clean = build_split(tmp_path / "clean", data, samples, "train", 32, chunk=4)
    real = cache_mod.decode_chunk
    calls = []

    def dies_at_third(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(cache_mod, "decode_chunk", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        build_split(tmp_path / "c", data, samples, "train", 32, chunk=4)
    folder = tmp_path / "c" / clean.folder.name
    (folder / "pixels.npy").write_bytes(b"\x93NUMPY garbage")  # the header is gone, the log still lists 2 chunks
    monkeypatch.setattr(cache_mod, "decode_chunk", real)
    again = build_split(tmp_path / "c", data, samples, "train", 32, chunk=4)
    assert np.array_equal(np.asarray(again.pixels), np.asarray(clean.pixels))


def test_a_full_disk_falls_back_to_the_jpeg_path_with_one_warning(data, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: SimpleNamespace(free=100))
    index = discover(data)
    cache = DecodedCache(tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        feeds = [split_feed(index, split, train=split == "train", size=32, batch_size=4, env=DistEnv(),
                            device=CPU, workers=0, cache=cache) for split in ("train", "valid")]
    assert all(isinstance(f.dataset, ImageDataset) for f in feeds)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "disk has" in warnings[0].getMessage() and "JPEG" in warnings[0].getMessage()
    assert cache.unavailable


def test_a_disk_filling_up_midway_removes_the_partial_array(data, tmp_path, monkeypatch):
    samples = discover(data).splits["train"]
    writes, real = [], os.pwrite

    def pwrite(fd, buf, pos):
        writes.append(pos)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buf, pos)

    monkeypatch.setattr(cache_mod.os, "pwrite", pwrite, raising=True)
    with pytest.raises(CacheUnavailable, match="disk is full"):
        build_split(tmp_path / "c", data, samples, "train", 32, chunk=4)
    assert not list((tmp_path / "c").glob("*/pixels.npy"))


def test_a_read_only_cache_folder_falls_back(data, tmp_path, monkeypatch, caplog):
    def refuse(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    cache = DecodedCache(tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        assert cache.ensure(data, discover(data).splits["train"], "train", 32) is None
    assert "read-only" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_on_disk_falls_back(data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert DecodedCache(ro).ensure(data, discover(data).splits["train"], "train", 32) is None
    finally:
        ro.chmod(0o755)


def test_a_complete_cache_is_read_where_nothing_can_be_written(data, tmp_path, monkeypatch):
    samples = discover(data).splits["train"]
    build_split(tmp_path / "c", data, samples, "train", 32)
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "ro")))
    found = DecodedCache(tmp_path / "c").ensure(data, samples, "train", 32)
    assert found is not None and len(found) == len(samples)


def test_threads_decode_the_same_array_in_the_same_order(data, tmp_path):
    samples = discover(data).splits["valid"]
    one = build_split(tmp_path / "a", data, samples, "valid", 32, chunk=3)
    many = build_split(tmp_path / "b", data, samples, "valid", 32, chunk=3, workers=3)
    assert np.array_equal(np.asarray(one.pixels), np.asarray(many.pixels))
    assert one.reasons == many.reasons and np.array_equal(one.wh, many.wh)


@pytest.mark.parametrize("train", [False, True])
def test_reading_ahead_in_a_thread_changes_nothing_and_stops_with_the_loop(data, tmp_path, train):
    done = build_split(tmp_path / "c", data, discover(data).splits["valid"], "valid", 32)
    done.set_epoch(3)
    order = list(range(len(done)))[::-1]
    plain = list(CachedLoader(done, order, 3, CPU, train=train, seed=1, prefetch=0))
    ahead = list(CachedLoader(done, order, 3, CPU, train=train, seed=1, prefetch=2))
    assert len(plain) == len(ahead) == 5
    for a, b in zip(plain, ahead):
        assert (a[0] is None and b[0] is None) or torch.equal(a[0], b[0])
        assert a[3] == b[3]
    before = threading.active_count()
    for _ in CachedLoader(done, order, 1, CPU, train=train, prefetch=1):
        break  # the reader thread, blocked on a full queue, must end with the loop
    assert threading.active_count() == before


def test_loader_refuses_a_zero_batch(data, tmp_path):
    done = build_split(tmp_path / "c", data, discover(data).splits["train"], "train", 32)
    with pytest.raises(ValueError, match="batch_size"):
        CachedLoader(done, list(range(len(done))), 0, CPU, train=False)


def test_jobs_cache_writes_every_split_and_refuses_bad_flags(data, tmp_path, capsys):
    argv = ["--data", str(data), "--image-size", "32", "--cache-dir", str(tmp_path / "c"), "--workers", "0"]
    assert run_cli(cache_main, get_args_parser(), argv) == 0
    out = capsys.readouterr().out
    assert "train: 15 images, 0 skipped" in out and "valid: 13 images, 2 skipped" in out and "test: absent" in out
    assert len(list((tmp_path / "c").glob("*/index.json"))) == 2
    assert run_cli(cache_main, get_args_parser(), argv + ["--splits", "training"]) == 2
    assert "expected a comma-separated subset" in capsys.readouterr().err
