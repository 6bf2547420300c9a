"""Computations on what the store returns: per-class metrics, confusions, faithfulness summaries, the
findings of a data audit per image, and the stored form of a logit vector.

Numpy and pandas only (no SQL, no torch, no scikit-learn), so that ``db``, the jobs, the pages and the
report export can all use them.
"""
from __future__ import annotations

import numpy as np

# Logits are stored as little-endian float16, one value per class.
_LOGIT_DTYPE = np.dtype("<f2")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def encode_logits(logits: np.ndarray) -> bytes:
    """One image's logit vector (C,) -> float16 bytes (2 * C); values beyond float16's range are clipped."""
    v = np.asarray(logits, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"logits must be a non-empty vector (C,), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("logits must be finite, got NaN or inf values")
    return np.clip(v, -_FLOAT16_MAX, _FLOAT16_MAX).astype(_LOGIT_DTYPE).tobytes()


def decode_logits(data: bytes, n_classes: int) -> np.ndarray:
    """Bytes from ``encode_logits`` -> float32 vector (n_classes,)."""
    expected = n_classes * _LOGIT_DTYPE.itemsize
    if len(data) != expected:
        raise ValueError(f"logits of {n_classes} classes must be {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=_LOGIT_DTYPE).astype(np.float32)
