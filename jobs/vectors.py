"""Feature vectors as the jobs store and use them: rows for the store, the run's neighbour index, and the
data audit's neighbour-label signal."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from core.lookalikes import neighbour_suspect_records
from core.neighbours import NeighbourIndex, encode_vector
from db.queries.embed import StoredVectors, stored_vectors

# Neighbours the audit consults per image, and the share of them that must agree on another label.
AUDIT_K = 10
AUDIT_MIN_SHARE = 0.7


def vector_rows(vectors: Optional[np.ndarray], image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Store rows (image_id, dim, data) of one batch's vectors (N, D); none when ``vectors`` is None."""
    if vectors is None:
        return []
    if len(vectors) != len(image_ids):
        raise ValueError(f"{len(vectors)} vectors for {len(image_ids)} images")
    return [dict(image_id=int(i), dim=int(v.shape[0]), data=encode_vector(v)) for i, v in zip(image_ids, vectors)]


def load_index(session, run_id: int) -> tuple[StoredVectors, NeighbourIndex]:
    """The run's stored vectors and an exact cosine index over them (rows in the same order)."""
    stored = stored_vectors(session, run_id)
    return stored, NeighbourIndex(stored.vectors if len(stored) else np.empty((0, 1), np.float32))


def neighbour_audit(session, run_id: int, *, k: int = AUDIT_K,
                    min_share: float = AUDIT_MIN_SHARE) -> Optional[tuple[list[dict], dict]]:
    """The neighbour-label suspects of the run with their evidence, and the audit's settings
    (``core.lookalikes.neighbour_suspect_records``); ``None`` when the run has no vectors."""
    stored, index = load_index(session, run_id)
    if len(stored) < 2:
        return None
    return neighbour_suspect_records(stored.images, index, k=k, min_share=min_share)


def neighbour_findings(session, run_id: int) -> dict[str, Any]:
    """What the data audit adds to its report: ``neighbour_suspects`` (records, empty without vectors) and
    ``neighbour_audit`` (settings and size; ``None`` when the run has no vectors to search)."""
    found = neighbour_audit(session, run_id)
    if found is None:
        return {"neighbour_suspects": [], "neighbour_audit": None}
    records, stats = found
    return {"neighbour_suspects": records, "neighbour_audit": stats}
