"""Data problems the model is not to blame for: duplicates, leakage between splits, suspect labels.

The input is a list of :class:`ImageRef` (split, path relative to a data root, class index). Nothing here
touches the model or the store; embeddings and predicted probabilities, where used, are arrays supplied by
the caller.

Duplicates
----------
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

Leakage and labels
------------------
An image of ``valid`` or ``test`` leaks when its group holds an image of an earlier split (``train``
before ``valid`` before ``test``). :func:`accuracy_without_leakage` recomputes accuracy per split with the
leaked images removed. A group whose members carry different labels is a label *conflict*.

Suspect labels come from confident learning (``cleanlab``) on *out-of-sample* predicted probabilities:
the probabilities of a model that never trained on those images. In this project those are the
``valid`` and ``test`` predictions of the trained model; its ``train`` predictions are in-sample (the
model has fitted, possibly memorised, those labels), so a mislabelled training image tends to get a
confident vote for its wrong label and would not be flagged. Train probabilities may be used only when
they come from cross-validation (each fold predicted by a model trained on the other folds); pass their
split in ``prob_splits`` then.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from PIL import Image

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "valid", "test")
THUMB = 32  # side of the stored RGB thumbnail
COARSE = 8  # side of the candidate descriptor
CANDIDATE_MIN_CORR = 0.75
HASH_MAX_BITS = 20
MAX_SHIFT = 2
MIN_SCORE = 0.90
MIN_DETAIL = 0.5
SUSPECT_MIN_EXAMPLES = 20  # fewer out-of-sample rows than this: self-confidence fallback
SUSPECT_MAX_SELF_CONF = 0.1  # fallback: flag an image whose given label gets less than this


@dataclass(frozen=True)
class ImageRef:
    """One image of the data set: its split, its path under the data root ('/'-separated), its class."""

    split: str
    relpath: str
    label: int
    image_id: Optional[int] = None  # the caller's id (the store's ``images.id``), carried through


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


# ---------------------------------------------------------------------------------------------- leakage
@dataclass
class Leak:
    """An image of a later split (``index``) and its duplicate in an earlier split (``other``)."""

    index: int
    other: int
    group: int
    kind: str  # 'exact' or 'near': of the pair when the two are a pair, else of the group
    score: float


def _split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def find_leakage(images: Sequence[ImageRef], groups: Iterable[Group], pairs: pd.DataFrame) -> list[Leak]:
    """Every valid/test image whose group holds an image of an earlier split, with its best match there."""
    edge = {
        (i, j): (k, s) for i, j, k, s in zip(pairs["i"].tolist(), pairs["j"].tolist(), pairs["kind"], pairs["score"])
    }
    leaks = []
    for g in groups:
        for m in g.members:
            earlier = [o for o in g.members if _split_rank(images[o].split) < _split_rank(images[m].split)]
            if not earlier:
                continue
            direct = [(edge[tuple(sorted((m, o)))], o) for o in earlier if tuple(sorted((m, o))) in edge]
            if direct:
                (kind, score), other = max(direct, key=lambda d: (d[0][1], -_split_rank(images[d[1]].split)))
            else:
                kind, score, other = g.kind, g.score, min(earlier, key=lambda o: _split_rank(images[o].split))
            leaks.append(Leak(m, other, g.id, kind, score))
    return leaks


def accuracy_without_leakage(
    predictions: pd.DataFrame, leaked: pd.DataFrame | Iterable[tuple[str, Any]], *, key: str = "relpath"
) -> pd.DataFrame:
    """Accuracy per split as measured and with leaked images removed, side by side.

    ``predictions``: columns ``split``, ``key`` (``relpath`` or ``image_id``), ``label``, ``pred``.
    ``leaked``: a DataFrame with columns ``split`` and ``key`` (``AuditReport.to_frames()["leakage"]``) or
    (split, key) tuples. Returns one row per split: n, accuracy, n_leaked, n_clean, accuracy_clean, change.
    """
    need = {"split", key, "label", "pred"}
    if not need <= set(predictions.columns):
        raise ValueError(f"predictions need columns {sorted(need)}, got {sorted(predictions.columns)}")
    if isinstance(leaked, pd.DataFrame):
        if not {"split", key} <= set(leaked.columns):
            raise ValueError(f"leaked needs columns ['split', {key!r}], got {sorted(leaked.columns)}")
        leaked_keys = set(zip(leaked["split"], leaked[key]))
    else:
        leaked_keys = set(map(tuple, leaked))
    df = predictions.assign(
        correct=(predictions["label"] == predictions["pred"]),
        leaked=[(s, k) in leaked_keys for s, k in zip(predictions["split"], predictions[key])],
    )
    rows = []
    for split, g in sorted(df.groupby("split", sort=False), key=lambda t: _split_rank(t[0])):
        clean = g[~g["leaked"]]
        acc = float(g["correct"].mean())
        acc_clean = float(clean["correct"].mean()) if len(clean) else float("nan")
        rows.append({"split": split, "n": len(g), "accuracy": acc, "n_leaked": int(g["leaked"].sum()),
                     "n_clean": len(clean), "accuracy_clean": acc_clean, "change": acc_clean - acc})
    return pd.DataFrame(rows, columns=["split", "n", "accuracy", "n_leaked", "n_clean", "accuracy_clean", "change"])


# ---------------------------------------------------------------------------------------------- labels
@dataclass
class Conflict:
    """A duplicate group whose members carry different labels."""

    group: int
    label_counts: dict[int, int]
    members: list[int]


def find_conflicts(images: Sequence[ImageRef], groups: Iterable[Group]) -> list[Conflict]:
    out = []
    for g in groups:
        counts: dict[int, int] = {}
        for m in g.members:
            counts[images[m].label] = counts.get(images[m].label, 0) + 1
        if len(counts) > 1:
            out.append(Conflict(g.id, counts, list(g.members)))
    return out


SUSPECT_COLUMNS = ["index", "given_label", "given_prob", "pred_label", "pred_prob", "method"]


def find_suspect_labels(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    min_examples: int = SUSPECT_MIN_EXAMPLES,
    max_self_confidence: float = SUSPECT_MAX_SELF_CONF,
) -> pd.DataFrame:
    """Images whose given label the (out-of-sample) probabilities disagree with, most suspect first.

    ``labels``: (N,) class indices; ``pred_probs``: (N, C) rows summing to 1, out of sample (see the module
    docstring). Uses ``cleanlab.filter.find_label_issues`` ranked by self-confidence (the probability of the
    given label). With fewer than ``min_examples`` rows or fewer than two distinct labels, where confident
    learning's per-class thresholds cannot be estimated, or if cleanlab rejects the input, it falls back to
    flagging rows whose self-confidence is below ``max_self_confidence`` and whose top class is another,
    ranked the same way. Classes absent from ``labels`` are allowed: cleanlab cannot flag an image whose
    predicted class nobody is labelled with, so such images are added by the same self-confidence rule.
    The ``method`` column says which rule flagged each row. Columns: index (row in the input), given_label, given_prob, pred_label, pred_prob, method.
    """
    labels = np.asarray(labels)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if pred_probs.ndim != 2 or labels.shape != (len(pred_probs),):
        raise ValueError(f"expected labels (N,) and pred_probs (N, C); got {labels.shape} and {pred_probs.shape}")
    if len(labels) == 0:
        return pd.DataFrame(columns=SUSPECT_COLUMNS)
    n_classes = pred_probs.shape[1]
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be integers in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    if not np.allclose(pred_probs.sum(axis=1), 1.0, atol=1e-3) or (pred_probs < 0).any():
        raise ValueError("pred_probs rows must be probabilities summing to 1 (apply softmax first)")

    self_conf = pred_probs[np.arange(len(labels)), labels]
    top = pred_probs.argmax(axis=1)
    low = (self_conf < max_self_confidence) & (top != labels)
    issues, method = None, np.array([], dtype=object)
    if len(labels) >= min_examples and len(np.unique(labels)) >= 2:
        from cleanlab.filter import find_label_issues

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "too few examples in class k": handled below
                issues = np.asarray(
                    find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence"), dtype=int
                )
        except (ValueError, ZeroDivisionError) as e:
            log.warning("cleanlab could not rank these labels (%s); using self-confidence", e)
    if issues is None:
        issues = np.flatnonzero(low)
        method = np.full(len(issues), "self_confidence", dtype=object)
    else:
        # confident learning has no threshold for a class nobody is labelled with, so an image the model
        # puts in such a class is never flagged by it: add those by the self-confidence rule
        absent = ~np.isin(top, labels)
        extra = np.setdiff1d(np.flatnonzero(low & absent), issues)
        method = np.array(["cleanlab"] * len(issues) + ["self_confidence"] * len(extra), dtype=object)
        issues = np.concatenate([issues, extra]).astype(int)
    order = np.argsort(self_conf[issues], kind="stable")
    issues, method = issues[order], method[order]
    pred = pred_probs[issues].argmax(axis=1)
    return pd.DataFrame(
        {
            "index": issues,
            "given_label": labels[issues].astype(int),
            "given_prob": self_conf[issues],
            "pred_label": pred.astype(int),
            "pred_prob": pred_probs[issues, pred],
            "method": method.astype(str),
        },
        columns=SUSPECT_COLUMNS,
    )


# ---------------------------------------------------------------------------------------------- report
@dataclass
class AuditReport:
    images: list[ImageRef]
    groups: list[Group]
    pairs: pd.DataFrame
    leakage: list[Leak]
    conflicts: list[Conflict]
    suspects: pd.DataFrame  # find_suspect_labels' columns; ``index`` is into ``images``
    skipped: list[tuple[int, str]]  # (index, reason) of unreadable images
    stats: dict[str, Any] = field(default_factory=dict)

    def _ref(self, i: int) -> dict[str, Any]:
        r = self.images[i]
        d = {"index": i, "split": r.split, "relpath": r.relpath, "label": r.label}
        if r.image_id is not None:
            d["image_id"] = r.image_id
        return d

    def to_dict(self) -> dict[str, Any]:
        return {
            "stats": self.stats,
            "groups": [
                {"id": g.id, "kind": g.kind, "score": round(g.score, 4), "members": [self._ref(m) for m in g.members]}
                for g in self.groups
            ],
            "leakage": [
                {"image": self._ref(lk.index), "duplicate_of": self._ref(lk.other), "group": lk.group,
                 "kind": lk.kind, "score": round(lk.score, 4)}
                for lk in self.leakage
            ],
            "conflicts": [
                {"group": c.group, "labels": {str(k): v for k, v in c.label_counts.items()}} for c in self.conflicts
            ],
            "suspects": [
                {**self._ref(int(r["index"])), "given_prob": round(float(r["given_prob"]), 4),
                 "pred_label": int(r["pred_label"]), "pred_prob": round(float(r["pred_prob"]), 4),
                 "method": r["method"]}
                for r in self.suspects.to_dict("records")
            ],
            "skipped": [{**self._ref(i), "reason": why} for i, why in self.skipped],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_frames(self) -> dict[str, pd.DataFrame]:
        """DataFrames: groups (one row per member), pairs, leakage, conflicts, suspects, skipped."""
        refs = pd.DataFrame([self._ref(i) for i in range(len(self.images))],
                            columns=["index", "split", "relpath", "label", "image_id"])
        refs["image_id"] = [r.image_id for r in self.images]
        groups = pd.DataFrame(
            [{"group": g.id, "kind": g.kind, "score": g.score, "size": len(g.members), "index": m}
             for g in self.groups for m in g.members],
            columns=["group", "kind", "score", "size", "index"],
        ).merge(refs, on="index", how="left")
        other = refs.add_prefix("other_")
        leakage = pd.DataFrame(
            [{"index": lk.index, "other_index": lk.other, "group": lk.group, "kind": lk.kind, "score": lk.score}
             for lk in self.leakage],
            columns=["index", "other_index", "group", "kind", "score"],
        ).merge(refs, on="index", how="left").merge(other, on="other_index", how="left")
        pairs = self.pairs.merge(refs.add_suffix("_i"), left_on="i", right_on="index_i", how="left").merge(
            refs.add_suffix("_j"), left_on="j", right_on="index_j", how="left"
        ).drop(columns=["index_i", "index_j"])
        conflicts = groups[groups["group"].isin([c.group for c in self.conflicts])].reset_index(drop=True)
        suspects = self.suspects.merge(refs.drop(columns="label"), on="index", how="left")
        skipped = pd.DataFrame(self.skipped, columns=["index", "reason"]).merge(refs, on="index", how="left")
        return {"groups": groups, "pairs": pairs, "leakage": leakage, "conflicts": conflicts,
                "suspects": suspects, "skipped": skipped}


def audit(
    data_root: str | Path,
    images: Sequence[ImageRef],
    *,
    pred_probs: Optional[np.ndarray] = None,
    prob_splits: Sequence[str] = ("valid", "test"),
    embeddings: Optional[np.ndarray] = None,
    min_score: float = MIN_SCORE,
    min_detail: float = MIN_DETAIL,
    min_embedding_cos: float = 0.8,
    workers: int = 1,
    hashes: Optional[ImageHashes] = None,
) -> AuditReport:
    """Duplicates, leakage, label conflicts and (given ``pred_probs``) suspect labels of ``images``.

    ``pred_probs``: (N, C) aligned with ``images``; only rows of ``prob_splits`` are used, because only
    those are out of sample (see the module docstring); other rows may hold anything (NaN included).
    ``embeddings``: optional (N, D) features that can veto near pairs (cosine below ``min_embedding_cos``).
    ``hashes``: a previous :func:`hash_images` result for the same list, to skip re-hashing.
    """
    images = list(images)
    if pred_probs is not None:
        pred_probs = np.asarray(pred_probs, dtype=np.float64)
        if pred_probs.ndim != 2 or len(pred_probs) != len(images):
            raise ValueError(f"pred_probs must have shape (N={len(images)}, C), got {pred_probs.shape}")
    if hashes is None:
        hashes = hash_images(data_root, images, workers=workers)
    elif len(hashes.ok) != len(images):
        raise ValueError(f"hashes are for {len(hashes.ok)} images, the list has {len(images)}")
    t0 = time.perf_counter()
    pairs = find_pairs(
        hashes, min_score=min_score, min_detail=min_detail, embeddings=embeddings, min_embedding_cos=min_embedding_cos
    )
    t_search = time.perf_counter() - t0
    groups = group_pairs(pairs, len(images))
    suspects = pd.DataFrame(columns=SUSPECT_COLUMNS)
    if pred_probs is not None:
        rows = np.flatnonzero([r.split in prob_splits for r in images])
        labels = np.array([images[i].label for i in rows], dtype=int)
        suspects = find_suspect_labels(labels, pred_probs[rows])
        suspects["index"] = rows[suspects["index"].to_numpy(int)]
    stats = {
        "n_images": len(images),
        "n_readable": int(hashes.ok.sum()),
        "hash_seconds": hashes.seconds,
        "images_per_second": hashes.images_per_second,
        "search_seconds": t_search,
        "n_candidates": pairs.attrs.get("n_candidates", 0),
        "candidate_seconds": pairs.attrs.get("candidate_seconds", 0.0),
        "verify_seconds": pairs.attrs.get("verify_seconds", 0.0),
        "n_pairs": len(pairs),
        "n_groups": len(groups),
    }
    return AuditReport(
        images=images,
        groups=groups,
        pairs=pairs,
        leakage=find_leakage(images, groups, pairs),
        conflicts=find_conflicts(images, groups),
        suspects=suspects.reset_index(drop=True),
        skipped=sorted(hashes.errors.items()),
        stats=stats,
    )
