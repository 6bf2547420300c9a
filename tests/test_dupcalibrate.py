"""The near-duplicate threshold measured per data set: look-alikes that run past the fixed threshold move it
to the end of their continuum, copies beyond it are still found, and a data set without look-alikes keeps
the fixed threshold."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from bench.audit import _background, _draw_objects
from core.audit import MIN_SCORE, ImageRef, audit, hash_images
from core.dupcalibrate import BAND, GAP, KINDS, Thresholds, calibrate, choose_score, expected_above, plant

SIZE = 64


def lookalike(rng: np.random.Generator) -> Image.Image:
    """One scene of a kind: a warm gradient, a blue disc near the middle, a square of any colour anywhere,
    light noise. Two of them are visibly different pictures, yet their thumbnails correlate up to ~0.96."""
    xx = np.mgrid[0:SIZE, 0:SIZE][1] / SIZE
    im = Image.fromarray((np.array([150, 110, 80]) + xx[..., None] * np.array([60, 40, 20])).astype(np.uint8))
    d = ImageDraw.Draw(im)
    cx, cy = rng.normal(0.5, 0.05, 2) * SIZE
    r = SIZE * rng.uniform(0.18, 0.28)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(40, 60, 150))
    q = SIZE * 0.2
    x0, y0 = rng.uniform(0, SIZE - q, 2)
    d.rectangle([x0, y0, x0 + q, y0 + q], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(im, dtype=np.float64) + rng.normal(0, rng.uniform(2, 8), (SIZE, SIZE, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def lookalikes(tmp_path_factory):
    """60 look-alikes, 3 near copies (re-encoded, brighter, re-encoded again) and 1 byte copy."""
    root = tmp_path_factory.mktemp("lookalikes")
    rng = np.random.default_rng(0)
    refs = []

    def save(im: Image.Image, name: str, quality: int = 92) -> None:
        (root / "train" / "c").mkdir(parents=True, exist_ok=True)
        im.save(root / "train" / "c" / name, quality=quality)
        refs.append(ImageRef("train", f"train/c/{name}", 0))

    for k in range(60):
        save(lookalike(rng), f"{k:03d}.jpg")
    originals = [Image.open(root / refs[k].relpath).convert("RGB") for k in range(4)]
    save(originals[0], "copy-reencoded.jpg", quality=60)
    save(ImageEnhance.Brightness(originals[1]).enhance(1.12), "copy-brighter.jpg")
    save(originals[2], "copy-reencoded-2.jpg", quality=70)
    (root / "train" / "c" / "copy-bytes.jpg").write_bytes((root / refs[3].relpath).read_bytes())
    refs.append(ImageRef("train", "train/c/copy-bytes.jpg", 0))
    planted = {frozenset((0, 60)), frozenset((1, 61)), frozenset((2, 62)), frozenset((3, 63))}
    return root, refs, planted


def found(report) -> set[frozenset]:
    return {frozenset(g.members) for g in report.groups}


def test_lookalikes_are_not_flagged_and_planted_copies_are(lookalikes):
    root, refs, planted = lookalikes
    hashes = hash_images(root, refs)
    fixed = audit(root, refs, hashes=hashes)
    assert found(fixed) - planted, "the fixed threshold reports look-alikes here (what this test is about)"
    measured = audit(root, refs, hashes=hashes, calibrate=True)
    t = measured.stats["thresholds"]
    assert t["calibrated"] and t["min_score"] > MIN_SCORE
    assert found(measured) == planted
    assert t["recall"]["reencode"] >= 0.9 and t["recall"]["brightness"] >= 0.9


def test_a_data_set_without_lookalikes_keeps_the_fixed_threshold(tmp_path):
    """Distinct scenes (the audit benchmark's textured backgrounds with shapes): nothing under the threshold to
    run past it."""
    rng = np.random.default_rng(1)
    refs = []
    for k in range(40):
        im = _draw_objects(rng, _background(rng, SIZE), 3)
        (tmp_path / "valid").mkdir(exist_ok=True)
        im.save(tmp_path / "valid" / f"{k}.png")
        refs.append(ImageRef("valid", f"valid/{k}.png", k % 4))
    im.resize((SIZE * 2, SIZE * 2)).save(tmp_path / "valid" / "big-copy.png")  # a resized copy of the last
    refs.append(ImageRef("valid", "valid/big-copy.png", 3))
    report = audit(tmp_path, refs, calibrate=True)
    assert report.stats["thresholds"]["min_score"] == MIN_SCORE
    assert found(report) == {frozenset((39, 40))}


# --------------------------------------------------------------------------- the choice, on scores alone

def test_a_continuum_through_the_threshold_moves_it_to_its_end():
    rng = np.random.default_rng(0)
    continuum = 0.95 - rng.exponential(0.03, 400)  # dense under 0.95, thinning out towards it
    continuum = continuum[continuum > 0.6]
    copies = np.array([0.99, 0.995])  # beyond a gap: real duplicates
    threshold, expected, in_band = choose_score(np.concatenate([continuum, copies]))
    top = continuum.max()
    assert expected >= 0.5 and in_band == int(((continuum >= MIN_SCORE - BAND) & (continuum < MIN_SCORE)).sum())
    assert top < threshold <= top + GAP / 2 + 1e-4  # (rounded to 4 decimals)
    assert (copies >= threshold).all()


def test_a_sparse_band_keeps_the_fixed_threshold():
    scores = np.array([0.62, 0.7, 0.81, 0.84, 0.911, 0.924, 0.983, 1.0])  # the real sports sample's shape
    assert choose_score(scores) == (MIN_SCORE, 0.0, 2)


def test_the_tail_fit_recovers_a_known_exponential():
    rng = np.random.default_rng(3)
    lo, rate = MIN_SCORE - BAND, 40.0
    scores = lo + rng.exponential(1 / rate, 20000)
    expected, _ = expected_above(scores, MIN_SCORE)
    truth = int((scores >= MIN_SCORE).sum())
    assert 0.8 * truth <= expected <= 1.2 * truth, (expected, truth)


@pytest.mark.parametrize("kind", KINDS)
def test_planted_copies_are_copies(kind):
    rgb = lookalike(np.random.default_rng(5))
    out = plant(rgb, kind, np.random.default_rng(0))
    assert out.mode == "RGB" and out.size != (0, 0)
    assert not np.array_equal(np.asarray(out.resize(rgb.size)), np.asarray(rgb))


def test_unknown_kind_and_bad_sample_are_value_errors(lookalikes):
    root, refs, _ = lookalikes
    with pytest.raises(ValueError, match="unknown kind of copy 'rotate'"):
        plant(lookalike(np.random.default_rng(0)), "rotate", np.random.default_rng(0))
    with pytest.raises(ValueError, match="sample must be 0 or more"):
        calibrate(root, refs, hash_images(root, refs[:2]), np.zeros(0), sample=-1)


def test_thresholds_round_trip_and_describe():
    t = Thresholds(0.948, 0.5, 30.2, 60, 15, {"reencode": 0.96, "crop": 0.48}, 200, 1.2,
                   samples={"copied": 50, "seed": 0})
    back = Thresholds.from_dict(t.to_dict())
    assert back == t and back.raised
    assert "score >= 0.948" in t.describe() and "raised from 0.90" in t.describe() and "crop 48%" in t.describe()
