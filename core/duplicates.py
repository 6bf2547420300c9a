"""Duplicate images: exact copies and near ones (re-encoded, resized, cropped, shifted, brighter).

*Exact* duplicates share their bytes (SHA-1 of the file) or, in another file, their decoded pixels (SHA-1
of the RGB array and its shape: a JPEG re-saved as PNG, a file with other metadata).

*Near* duplicates (re-encoded, resized, cropped or shifted by a few per cent, brighter or darker) are
found in two steps, both on a 32x32 RGB thumbnail kept per image (3 KB, 45 MB for 14,500 images):

1. Candidates: the thumbnail is box-filtered further to 8x8, each channel's mean is removed and the
   192-vector is scaled to unit length, so that a dot product is the Pearson correlation of two blurred
   colour layouts, invariant to a brightness gain. All pairs are compared by blocked matrix products
   (no Python loop over pairs). A pair is a candidate when that correlation is at least
   ``CANDIDATE_MIN_CORR`` = 0.75, or when the 64-bit ``imagehash`` phash and dhash (packed into uint64,
   compared with ``np.bitwise_count`` in the same blocks) differ in at most ``HASH_MAX_BITS`` = 20 bits
   together.
2. Verification: the two 32x32 thumbnails are correlated (per-channel mean removed, Pearson over all
   three channels) at every offset of up to ``MAX_SHIFT`` = 2 px (6 % of the side); the best value is
   the pair's similarity score, in [0, 1]. A pair is a near duplicate when the score is at least
   ``min_score`` (``MIN_SCORE`` = 0.90) and the same shift-tolerant correlation of the grey-level
   gradients (fine detail, which a different photo of a similar scene does not share) is at least
   ``min_detail`` (``MIN_DETAIL`` = 0.5). An optional (N, D) embedding array (the model's penultimate
   features, say) can veto near pairs whose cosine similarity is below ``min_embedding_cos``.

Why not perceptual hashes alone: measured on 660 generated images (textured backgrounds with shapes,
96-128 px, 20 planted copies of each kind, 60 look-alike pairs that share a background but not their
objects), phash+dhash distance (of 128 bits) reached 37 for copies shifted by 2-5 px and 27 for 3-5 %
crops, while pairs of *distinct* images went as low as 30 and 1,433 distinct pairs (0.66 %) were within
44 bits: greyscale hashes at 8x8 cannot tell a shifted copy from another picture with a similar layout.
The colour correlation at 8x8 kept every copy at >= 0.87 (shift), >= 0.94 (crop), >= 0.99 (re-encode,
resize, brightness), look-alikes at <= 0.36, and only 0.004 % of distinct pairs reached 0.7 (none 0.8).
The hash path stays as a second, cheap way in for copies whose colours changed.
Thresholds: after verification, planted copies scored >= 0.93 (crops lowest, shifts >= 0.96, the rest
>= 0.98) on two generated sets of 660 and 2,000 images, the best distinct candidate 0.853 (two large
shapes on similar backgrounds) and look-alikes <= 0.34; 0.90 sits in that gap. The detail test was set
on the real sports sample (224 px photos): true crops/zooms of one photo had gradient correlation
0.58-1.0, while two different rowing photos (water, tree line, a boat) passed the colour test at 0.910
but had 0.39; generated copies were all >= 0.62. That second threshold rests on few real pairs: recheck
it on the full data set. See ``python -m bench.audit`` for precision, recall and timing.

Cost: decoding dominates hashing (250-1,000 images/s on one shared core for 224 px and 96-128 px
JPEGs; two threads gained only ~10 % on the 2-core machine, so ``workers`` defaults to 1). The
all-pairs candidate search took 0.17 s for 2,000 images (~9 s extrapolated to 14,500, n^2) with memory
bounded by one 512-row block; verification costs ~2-3 ms per candidate pair (474 candidates on the
1,300-image real sample). Beyond ~10^5 images the search would need an index (multi-index hashing or an
approximate nearest-neighbour library); here exact all-pairs is cheaper than building one.

Pairs are joined into groups with union-find; a group's score is its weakest edge (the smallest
similarity among the pairs that hold it together), its kind ``exact`` when every edge is exact.
"""
from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import pandas as pd
from PIL import Image

if TYPE_CHECKING:
    from core.audit import ImageRef

log = logging.getLogger(__name__)

THUMB = 32  # side of the stored RGB thumbnail
COARSE = 8  # side of the candidate descriptor
CANDIDATE_MIN_CORR = 0.75
HASH_MAX_BITS = 20
MAX_SHIFT = 2
MIN_SCORE = 0.90
MIN_DETAIL = 0.5


# ---------------------------------------------------------------------------------------------- hashing
@dataclass
class ImageHashes:
    """What the search needs of each image; rows of unreadable images are zero and ``ok`` is False."""

    ok: np.ndarray  # (N,) bool
    sha1: list[Optional[str]]
    pixel_sha1: list[Optional[str]]
    phash: np.ndarray  # (N,) uint64
    dhash: np.ndarray  # (N,) uint64
    thumbs: np.ndarray  # (N, THUMB, THUMB, 3) uint8
    errors: dict[int, str]  # index -> why the image could not be read
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.ok) / self.seconds if self.seconds > 0 else float("inf")


def _pack(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def hash_one(path: Path) -> tuple[str, str, int, int, np.ndarray]:
    """SHA-1 of the bytes and of the decoded RGB pixels, phash, dhash and the 32x32 RGB thumbnail."""
    import imagehash

    data = path.read_bytes()
    with Image.open(path) as im:
        rgb = im.convert("RGB")  # convert() loads; a truncated or foreign file raises here
    arr = np.asarray(rgb)
    pix = hashlib.sha1(f"{arr.shape}".encode() + arr.tobytes()).hexdigest()
    gray = rgb.convert("L")
    ph = _pack(imagehash.phash(gray).hash)
    dh = _pack(imagehash.dhash(gray).hash)
    thumb = np.asarray(rgb.resize((THUMB, THUMB), Image.BOX))
    return hashlib.sha1(data).hexdigest(), pix, ph, dh, thumb


def hash_images(data_root: str | Path, images: Sequence[ImageRef], *, workers: int = 1) -> ImageHashes:
    """Hash every image under ``data_root``; unreadable ones are recorded in ``errors``, not raised.

    ``workers`` > 1 uses threads: Pillow releases the GIL while decoding and resizing.
    """
    root = Path(data_root)
    n = len(images)
    out = ImageHashes(
        ok=np.zeros(n, bool), sha1=[None] * n, pixel_sha1=[None] * n,
        phash=np.zeros(n, np.uint64), dhash=np.zeros(n, np.uint64),
        thumbs=np.zeros((n, THUMB, THUMB, 3), np.uint8), errors={}, seconds=0.0,
    )

    def work(i: int) -> None:
        try:
            s, p, ph, dh, th = hash_one(root / images[i].relpath)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            out.errors[i] = f"{type(e).__name__}: {e}"
            return
        out.sha1[i], out.pixel_sha1[i] = s, p
        out.phash[i], out.dhash[i], out.thumbs[i], out.ok[i] = ph, dh, th, True

    t0 = time.perf_counter()
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(n)))
    else:
        for i in range(n):
            work(i)
    out.seconds = time.perf_counter() - t0
    if out.errors:
        log.warning("%d of %d images could not be read", len(out.errors), n)
    return out


# ---------------------------------------------------------------------------------------------- search
def _coarse(thumbs: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, 192) float32 unit vectors of the mean-removed 8x8 colour layout."""
    f = THUMB // COARSE
    x = thumbs.astype(np.float32).reshape(len(thumbs), COARSE, f, COARSE, f, 3).mean(axis=(2, 4))
    x -= x.mean(axis=(1, 2), keepdims=True)
    x = x.reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def _candidates(hashes: ImageHashes, min_corr: float, max_bits: int, block: int = 512) -> np.ndarray:
    """Index pairs (i < j) of readable images that pass either the colour or the hash test."""
    idx = np.flatnonzero(hashes.ok)
    desc = _coarse(hashes.thumbs[idx])
    ph, dh = hashes.phash[idx], hashes.dhash[idx]
    found = []
    for s in range(0, len(idx), block):
        e = min(s + block, len(idx))
        corr = desc[s:e] @ desc[s:].T
        bits = np.bitwise_count(ph[s:e, None] ^ ph[None, s:]) + np.bitwise_count(dh[s:e, None] ^ dh[None, s:])
        hit = (corr >= min_corr) | (bits <= max_bits)
        hit &= np.arange(s, e)[:, None] < np.arange(s, len(idx))[None, :]  # upper triangle only
        r, c = np.nonzero(hit)
        found.append(np.stack([idx[r + s], idx[c + s]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), int)


def shift_correlation(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Best Pearson correlation of thumbnail pairs ``a[k]``, ``b[k]`` over offsets up to ``max_shift`` px.

    ``a``, ``b``: (P, H, W, 3). Per offset, only the overlap is compared and its channel means removed.
    """
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    n = a.shape[1]
    best = np.full(len(a), -1.0, np.float32)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            pa = a[:, max(0, dy) : n + min(0, dy), max(0, dx) : n + min(0, dx)]
            pb = b[:, max(0, -dy) : n + min(0, -dy), max(0, -dx) : n + min(0, -dx)]
            pa = pa - pa.mean(axis=(1, 2), keepdims=True)
            pb = pb - pb.mean(axis=(1, 2), keepdims=True)
            num = (pa * pb).sum(axis=(1, 2, 3))
            den = np.sqrt((pa * pa).sum(axis=(1, 2, 3)) * (pb * pb).sum(axis=(1, 2, 3)))
            best = np.maximum(best, num / np.maximum(den, 1e-6))
    return best


def _gradients(thumbs: np.ndarray) -> np.ndarray:
    """(P, 32, 32, 3) uint8 -> (P, 31, 31, 2) float32 horizontal and vertical grey-level differences."""
    g = thumbs.astype(np.float32).mean(axis=-1)
    return np.stack([np.diff(g, axis=2)[:, :-1], np.diff(g, axis=1)[:, :, :-1]], axis=-1)


def find_pairs(
    hashes: ImageHashes,
    *,
    min_score: float = MIN_SCORE,
    min_detail: float = MIN_DETAIL,
    embeddings: Optional[np.ndarray] = None,
    min_embedding_cos: float = 0.8,
    candidate_min_corr: float = CANDIDATE_MIN_CORR,
    hash_max_bits: int = HASH_MAX_BITS,
    chunk: int = 1024,
) -> pd.DataFrame:
    """All duplicate pairs: columns i, j (i < j), kind ('exact'/'near'), how ('bytes'/'pixels'/'near'),
    score in [0, 1] (colour-layout correlation), detail (edge correlation, 1 for exact pairs), hash_bits
    (phash + dhash distance), embedding_cos (NaN without embeddings)."""
    n = len(hashes.ok)
    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != n:
            raise ValueError(f"embeddings must have shape (N={n}, D), got {embeddings.shape}")
        embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    rows: dict[tuple[int, int], tuple[str, str, float, float]] = {}
    for how, keys in (("bytes", hashes.sha1), ("pixels", hashes.pixel_sha1)):
        by_key: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if k is not None:
                by_key.setdefault(k, []).append(i)
        for members in by_key.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    rows.setdefault((members[x], members[y]), ("exact", how, 1.0, 1.0))
    t0 = time.perf_counter()
    cand = _candidates(hashes, candidate_min_corr, hash_max_bits)
    t_cand = time.perf_counter() - t0
    cand = np.array([p for p in cand.tolist() if tuple(p) not in rows], dtype=int).reshape(-1, 2)
    for s in range(0, len(cand), chunk):
        c = cand[s : s + chunk]
        ta, tb = hashes.thumbs[c[:, 0]], hashes.thumbs[c[:, 1]]
        score = shift_correlation(ta, tb)
        keep = score >= min_score
        detail = np.zeros_like(score)
        if keep.any():
            detail[keep] = shift_correlation(_gradients(ta[keep]), _gradients(tb[keep]))
        for (i, j), sc, de in zip(c.tolist(), score.tolist(), detail.tolist()):
            if sc >= min_score and de >= min_detail:
                rows[(i, j)] = ("near", "near", min(1.0, max(0.0, sc)), de)
    pairs = sorted(rows)
    df = pd.DataFrame(
        {
            "i": [p[0] for p in pairs],
            "j": [p[1] for p in pairs],
            "kind": [rows[p][0] for p in pairs],
            "how": [rows[p][1] for p in pairs],
            "score": [rows[p][2] for p in pairs],
            "detail": [rows[p][3] for p in pairs],
        }
    )
    i, j = df["i"].to_numpy(int), df["j"].to_numpy(int)
    df["hash_bits"] = (
        np.bitwise_count(hashes.phash[i] ^ hashes.phash[j]) + np.bitwise_count(hashes.dhash[i] ^ hashes.dhash[j])
    ).astype(int)
    df["embedding_cos"] = np.nan
    if embeddings is not None and len(df):
        df["embedding_cos"] = (embeddings[i] * embeddings[j]).sum(axis=1)
        veto = (df["kind"] == "near") & (df["embedding_cos"] < min_embedding_cos)
        if veto.any():
            log.info("embeddings rejected %d near pairs", int(veto.sum()))
        df = df[~veto].reset_index(drop=True)
    df.attrs["n_candidates"] = len(cand)
    df.attrs["candidate_seconds"] = t_cand
    df.attrs["verify_seconds"] = time.perf_counter() - t0 - t_cand
    return df


# ---------------------------------------------------------------------------------------------- groups
@dataclass
class Group:
    id: int
    kind: str  # 'exact' when every edge is exact, else 'near'
    score: float  # weakest edge
    members: list[int]  # indices into the audited image list


def _find(parent: list[int], x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def group_pairs(pairs: pd.DataFrame, n: int) -> list[Group]:
    """Union-find over the pairs; groups sorted by size (largest first), then by first member."""
    parent = list(range(n))
    for i, j in zip(pairs["i"].tolist(), pairs["j"].tolist()):
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    comps: dict[int, dict[str, Any]] = {}
    for i, j, kind, score in zip(pairs["i"].tolist(), pairs["j"].tolist(), pairs["kind"], pairs["score"]):
        c = comps.setdefault(_find(parent, i), {"members": set(), "exact": True, "score": 1.0})
        c["members"].update((i, j))
        c["exact"] &= kind == "exact"
        c["score"] = min(c["score"], float(score))
    ordered = sorted(comps.values(), key=lambda c: (-len(c["members"]), min(c["members"])))
    return [
        Group(k, "exact" if c["exact"] else "near", c["score"], sorted(c["members"]))
        for k, c in enumerate(ordered)
    ]
