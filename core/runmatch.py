"""Which image of run A is which image of run B, and the checked frame of one run's predictions (pandas).

``prepare`` turns a run's predictions (labels and predictions as class names or indices) into one checked
frame of class names. ``match_images`` pairs the rows of two such frames: same file content (``sha256``)
and path first, then same content (copies of one file inside a run paired in path order), then the same
(split, relpath) where either side lacks a hash. Two files at one path with different hashes differ.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

REQUIRED = ("image_id", "split", "relpath", "label", "pred")


def prepare(df: pd.DataFrame, classes: Sequence[str], split: Optional[str], what: str) -> pd.DataFrame:
    """The rows of ``split`` (None: all) as columns image_id, split, relpath, sha256 (lower-case hex or None),
    confidence, label, pred (class names) and label_index, pred_index (positions in ``classes``).
    ``what`` names the run in error messages."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: predictions lack columns {missing}; expected at least "
                         f"{list(REQUIRED)}")
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"{what}: classes must be distinct names, got {len(classes)} names "
                         f"with {len(classes) - len(set(classes))} repeats")
    rows = df if split is None else df[df["split"] == split]
    if rows.empty:
        have = sorted(map(str, df["split"].unique()))
        raise ValueError(f"{what} has no predictions on split {split!r}; it has {have or 'none'}")
    out = pd.DataFrame({
        "image_id": rows["image_id"].astype(np.int64).to_numpy(),
        "split": rows["split"].astype(str).to_numpy(),
        "relpath": rows["relpath"].astype(str).to_numpy(),
        "sha256": (rows["sha256"] if "sha256" in rows else pd.Series(None, index=rows.index, dtype=object)).to_numpy(),
        "confidence": pd.to_numeric(rows["confidence"], errors="coerce").to_numpy() if "confidence" in rows
        else np.full(len(rows), np.nan),
    })
    out["sha256"] = out["sha256"].map(lambda h: h.strip().lower() if isinstance(h, str) and h.strip() else None)
    for col in ("label", "pred"):
        out[col] = _names(rows[col], classes, f"{what} column {col!r}")
        out[col + "_index"] = out[col].map({c: i for i, c in enumerate(classes)}).astype(np.int64)
    dup = out.duplicated(["split", "relpath"])
    if dup.any():
        first = out.loc[dup].iloc[0]
        raise ValueError(f"{what} lists {int(dup.sum())} images twice, e.g. "
                         f"{first['split']}/{first['relpath']}; expected one row per image")
    return out


def _names(values: pd.Series, classes: list[str], what: str) -> np.ndarray:
    """Class names from names or indices, checked against the class list."""
    if pd.api.types.is_integer_dtype(values):
        idx = values.to_numpy(np.int64)
        bad = (idx < 0) | (idx >= len(classes))
        if bad.any():
            raise ValueError(f"{what}: index {int(idx[bad][0])} outside the {len(classes)} classes")
        return np.asarray(classes, dtype=object)[idx]
    names = values.astype(str).to_numpy(dtype=object)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(f"{what}: {len(unknown)} names not in the class list, e.g. {unknown[0]!r}")
    return names


def match_images(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Pairs (row of ``a``, row of ``b``, how) of the same image; rows of ``a`` and of ``b`` left unmatched.

    Frames need columns sha256 (None where missing), split, relpath. Same content and path first, then same
    content (copies paired in path order), then same (split, relpath) where either hash is missing.
    """
    left = a.assign(ia=np.arange(len(a)))
    right = b.assign(ib=np.arange(len(b)))
    pairs = []

    def take(la: pd.DataFrame, rb: pd.DataFrame, on: list[str], how: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        m = la.merge(rb, on=on, suffixes=("", "_b"))[["ia", "ib"]]
        pairs.append(m.assign(how=how))
        return la[~la["ia"].isin(m["ia"])], rb[~rb["ib"].isin(m["ib"])]

    ha, hb = left[left["sha256"].notna()], right[right["sha256"].notna()]
    ha, hb = take(ha, hb, ["sha256", "split", "relpath"], "sha256")
    ha = ha.sort_values(["sha256", "split", "relpath"]).assign(k=lambda f: f.groupby("sha256").cumcount())
    hb = hb.sort_values(["sha256", "split", "relpath"]).assign(k=lambda f: f.groupby("sha256").cumcount())
    take(ha, hb, ["sha256", "k"], "sha256")
    done = pd.concat(pairs, ignore_index=True)
    la, rb = left[~left["ia"].isin(done["ia"])], right[~right["ib"].isin(done["ib"])]
    m = la.merge(rb, on=["split", "relpath"], suffixes=("", "_b"))
    m = m[m["sha256"].isna() | m["sha256_b"].isna()]
    pairs.append(m[["ia", "ib"]].assign(how="path"))
    done = pd.concat(pairs, ignore_index=True).sort_values("ia", ignore_index=True)
    return (done, np.setdiff1d(np.arange(len(a)), done["ia"].to_numpy()),
            np.setdiff1d(np.arange(len(b)), done["ib"].to_numpy()))
