"""The store's writes of feature vectors and of a run's 2-D map (``db.store`` exports them, so the jobs
call ``store.put_vectors`` and ``store.replace_map``). Like every write, they take a session and never
commit."""
from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import delete
from sqlalchemy.orm import Session

from db.models import FeatureVector, MapInfo, MapPoint, utcnow


def put_vectors(session: Session, run_id: int, rows: Iterable[dict[str, Any]]) -> int:
    """Store feature vectors: dicts of image_id, dim and data (float16 bytes of ``dim`` values, as
    ``core.neighbours.encode_vector`` writes them). An image's earlier vector is replaced. Returns how many."""
    rows = [dict(image_id=int(r["image_id"]), run_id=run_id, dim=int(r["dim"]), data=r["data"]) for r in rows]
    for r in rows:
        if r["dim"] < 1 or len(r["data"]) != 2 * r["dim"]:
            raise ValueError(f"vector of image {r['image_id']}: {len(r['data'])} bytes for dim {r['dim']}, "
                             f"expected {2 * r['dim']} (float16)")
    ids = [r["image_id"] for r in rows]
    for lo in range(0, len(ids), 500):
        session.execute(delete(FeatureVector).where(FeatureVector.image_id.in_(ids[lo:lo + 500])))
    if rows:
        session.execute(FeatureVector.__table__.insert(), rows)
    return len(rows)


def replace_map(session: Session, run_id: int, image_ids: Iterable[int], xy, *, method: str, seed: int,
                params: dict[str, Any], seconds: float) -> None:
    """Keep one 2-D map per run, the latest: the (x, y) of every image in ``image_ids`` (``xy`` (N, 2), in
    the same order) and how it was made."""
    ids = [int(i) for i in image_ids]
    if len(xy) != len(ids) or any(len(p) != 2 for p in xy):
        raise ValueError(f"the map needs one (x, y) per image: {len(ids)} images, {len(xy)} points")
    session.execute(delete(MapPoint).where(MapPoint.run_id == run_id))
    session.execute(delete(MapInfo).where(MapInfo.run_id == run_id))
    if ids:
        session.execute(MapPoint.__table__.insert(), [
            dict(image_id=i, run_id=run_id, x=float(p[0]), y=float(p[1])) for i, p in zip(ids, xy)])
    session.add(MapInfo(run_id=run_id, method=method, seed=int(seed), params=dict(params), n_points=len(ids),
                        seconds=float(seconds), created_at=utcnow()))
