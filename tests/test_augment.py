"""Batch augmentation of the decoded cache against the JPEG path: the same crops, the same order, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core.augment import augment_batch, draw_crops, normalize, resized_crops
from core.cache import DecodedCache
from core.data import _sample_seed, augment, discover, to_tensor
from core.dist import DistEnv
from core.engine import Skipped, train_one_epoch
from core.feed import split_feed
from core.model import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import make_dataset

CPU = torch.device("cpu")
MEAN, STD = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)


def coordinate_image(w: int, h: int) -> np.ndarray:
    """Red = column, green = row: a crop of it says where it was taken from."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)


def box_of(view: np.ndarray) -> tuple[float, float, float, float, bool]:
    """(x0, y0, width, height, flipped) of the crop that gave ``view`` (size x size x 3, from a coordinate
    image): output pixel j samples x0 + (j + 1/2) * width / size, a pixel's value is its centre minus 1/2."""
    size = view.shape[0]
    row, col = view[..., 0].astype(float).mean(0), view[..., 1].astype(float).mean(1)
    flipped = row[0] > row[-1]
    if flipped:
        row = row[::-1]

    def span(v):
        length = (v[-1] - v[0]) * size / (size - 1)
        return v[0] + 0.5 - 0.5 * length / size, length

    (x0, cw), (y0, ch) = span(row), span(col)
    return x0, y0, cw, ch, bool(flipped)


def pixels_of(t: torch.Tensor) -> np.ndarray:
    """Normalised (3, H, W) back to uint8-valued (H, W, 3)."""
    return (t.permute(1, 2, 0).numpy() * STD + MEAN) * 255.0


@pytest.mark.parametrize("w,h", [(200, 200), (230, 170)])
def test_cache_crops_cover_the_same_part_of_the_picture_as_the_jpeg_path(w, h):
    """Both paths crop a coordinate image; the boxes read back from the outputs agree image by image."""
    size, side, n = 48, 200, 64
    img = Image.fromarray(coordinate_image(w, h))
    stored = np.asarray(img.resize((side, side), Image.BILINEAR)) if (w, h) != (side, side) else np.asarray(img)
    rels = [f"train/x/{k}.jpg" for k in range(n)]
    jpeg = [augment(img, size, np.random.default_rng(_sample_seed(3, 2, r))) for r in rels]
    batch = torch.from_numpy(np.repeat(stored[None], n, 0))
    cached = augment_batch(batch, rels, np.full((n, 2), (w, h)), 3, 2, size, IMAGENET_MEAN, IMAGENET_STD)
    assert cached.shape == (n, 3, size, size) and cached.dtype == torch.float32
    for k in range(n):
        a, b = box_of(jpeg[k].astype(float)), box_of(pixels_of(cached[k]))
        # The stored square holds, resampled, the original coordinates, so a box reads back in original
        # pixels; where the square was stretched the ramp bends at the border (clamped), hence more slack.
        tol = 1.5 if (w, h) == (side, side) else 2.5
        assert a[4] == b[4] and np.allclose(a[:4], b[:4], atol=tol), (k, a, b)


def test_crop_distribution_matches_the_jpeg_path_over_many_draws():
    """Boxes read back from the outputs of both paths on a fixed seed: the same ranges and means of area,
    aspect and flips (and, being the same draws, the same box for each image)."""
    side, size, n = 200, 24, 400
    rels = [f"train/c/{k:04d}.jpg" for k in range(n)]
    wh = np.full((n, 2), side)
    img = Image.fromarray(coordinate_image(side, side))
    jpeg = np.array([box_of(augment(img, size, np.random.default_rng(_sample_seed(11, 4, r))).astype(float))
                     for r in rels])
    batch = torch.from_numpy(np.repeat(coordinate_image(side, side)[None], n, 0))
    out = augment_batch(batch, rels, wh, 11, 4, size, IMAGENET_MEAN, IMAGENET_STD)
    cached = np.array([box_of(pixels_of(out[k])) for k in range(n)])
    stats = {}
    for name, rows in (("jpeg", jpeg), ("cache", cached)):
        area = rows[:, 2] * rows[:, 3] / side**2
        aspect = rows[:, 2] / rows[:, 3]
        assert area.min() > 0.57 and area.max() <= 1.02, name
        assert aspect.min() > 0.73 and aspect.max() < 1.37, name
        stats[name] = np.array([area.mean(), area.std(), np.log(aspect).mean(), np.log(aspect).std(),
                                rows[:, 4].mean()])
    assert 0.35 < stats["jpeg"][4] < 0.65 and 0.7 < stats["jpeg"][0] < 0.82
    assert np.allclose(stats["jpeg"], stats["cache"], atol=0.005), stats
    assert np.allclose(jpeg[:, :4], cached[:, :4], atol=1.5)
    draws = draw_crops(rels, wh, seed=11, epoch=4)  # the boxes are the JPEG path's own draws
    assert np.allclose(draws[:, :4], jpeg[:, :4], atol=1.5) and (draws[:, 4] == jpeg[:, 4]).all()


def test_normalize_is_to_tensor_bit_for_bit():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)
    ref = torch.stack([to_tensor(a) for a in u8])
    assert torch.equal(normalize(torch.from_numpy(u8), IMAGENET_MEAN, IMAGENET_STD), ref)


def test_bad_batches_are_refused():
    x = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        normalize(x.float(), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="boxes"):
        resized_crops(x, torch.zeros(3, 4), torch.zeros(2, dtype=torch.bool), 4, IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture
def data(tmp_path):
    root = make_dataset(tmp_path / "data", per_split={"train": 6, "valid": 2})
    (root / "train/beta/broken.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def feeds(data, cache_root, batch_size=4, seed=5):
    index = discover(data)
    common = dict(train=True, size=32, batch_size=batch_size, env=DistEnv(), device=CPU, seed=seed, workers=0)
    return split_feed(index, "train", **common), split_feed(index, "train", cache=DecodedCache(cache_root), **common)


def epoch_batches(feed, epoch):
    feed.sampler.set_epoch(epoch)
    feed.dataset.set_epoch(epoch)
    return list(feed.loader)


def test_training_batches_follow_the_jpeg_path(data, tmp_path):
    """Same images, labels and skipped files in the same order; pixels within rounding of PIL's."""
    jpeg, cached = feeds(data, tmp_path / "c")
    for epoch in (0, 1):
        a, b = epoch_batches(jpeg, epoch), epoch_batches(cached, epoch)
        assert len(a) == len(b) == len(cached.loader)
        for (xa, ya, ia, bada, _), (xb, yb, ib, badb, _) in zip(a, b):
            assert torch.equal(ia, ib) and torch.equal(ya, yb) and bada == badb
            diff = np.abs(np.stack([pixels_of(t) for t in xa]) - np.stack([pixels_of(t) for t in xb]))
            assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 3.01
        assert sum(len(bad) for *_, bad, _ in b) == 1


def test_draws_repeat_per_epoch_and_change_between_epochs(data, tmp_path):
    _, cached = feeds(data, tmp_path / "c", batch_size=32)
    (x0, *_), = epoch_batches(cached, 0)
    (x0_again, *_), = epoch_batches(cached, 0)
    (x1, *_), = epoch_batches(cached, 1)
    assert torch.equal(x0, x0_again)
    assert not torch.equal(x0, x1)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x, frozen_base=False):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def train(data, cache_root, epochs, start=0, state=None):
    _, cached = feeds(data, cache_root)
    torch.manual_seed(0)
    model, skipped = Tiny(), Skipped()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    for g in range(start, epochs):
        cached.sampler.set_epoch(g)
        cached.dataset.set_epoch(g)
        train_one_epoch(model, cached.loader, opt, CPU, frozen_base=False, scaler=None, env=DistEnv(),
                        skipped=skipped)
    return {"model": model.state_dict(), "opt": opt.state_dict()}


def test_a_resumed_run_ends_with_the_same_weights(data, tmp_path):
    whole = train(data, tmp_path / "c", 3)
    first = train(data, tmp_path / "c", 1)
    resumed = train(data, tmp_path / "c", 3, start=1, state=first)
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert not torch.equal(first["model"]["fc.weight"], whole["model"]["fc.weight"])
