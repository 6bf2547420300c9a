"""Stored CAM maps: one ``StoredMaps`` per image and method, and which methods a run has maps of."""
from __future__ import annotations

from typing import Iterable

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.cammaps import DEFAULT_METHOD, METHOD_NAMES, TARGETS, StoredMaps, check_method
from db.models import CamMap
from db.queries.frames import ID_CHUNK


def _maps_stmt(image_ids: list[int], method: str):
    """The maps of some images for one method, looked up by the primary key (image_id, method, target).

    The run is checked on the rows, not in the WHERE clause: with ``run_id = ?`` there, SQLite (without
    statistics) prefers the (run_id, method) index and reads every map of the run's method to keep a page's
    25 (about 50 ms at 14.5k images against 0.05 ms; ``bench.cam_storage``). An image id belongs to one run.
    """
    return select(CamMap.image_id, CamMap.run_id, CamMap.target, CamMap.class_index, CamMap.h, CamMap.w,
                  CamMap.data).where(CamMap.image_id.in_(image_ids), CamMap.method == method)


def maps_for(session: Session, run_id: int, image_ids: Iterable[int],
             method: str = DEFAULT_METHOD) -> dict[int, StoredMaps]:
    """The stored ``method`` maps of several images, ``{image_id: StoredMaps}`` with the targets in
    ``core.cammaps.TARGETS`` order; images without such maps (or of another run) are left out."""
    check_method(method)
    ids = sorted({int(i) for i in image_ids})
    found: dict[int, list] = {}
    for lo in range(0, len(ids), ID_CHUNK):
        for row in session.execute(_maps_stmt(ids[lo:lo + ID_CHUNK], method)).all():
            if row.run_id == run_id:
                found.setdefault(int(row.image_id), []).append(row)
    out = {}
    for image_id, rows in found.items():
        rows.sort(key=lambda r: TARGETS.index(r.target) if r.target in TARGETS else len(TARGETS))
        sizes = {(r.h, r.w) for r in rows}
        if len(sizes) != 1:
            raise ValueError(f"run {run_id}, image {image_id}: {method} maps of different sizes {sorted(sizes)}")
        (h, w), = sizes
        out[image_id] = StoredMaps(image_id=image_id, method=method, targets=tuple(r.target for r in rows),
                                   classes=tuple(int(r.class_index) for r in rows), h=int(h), w=int(w),
                                   data=tuple(bytes(r.data) for r in rows))
    return out


def ordered_methods(names: Iterable[str]) -> list[str]:
    """Method names without repeats, in ``METHOD_NAMES`` order, unknown ones after them."""
    names = set(names)
    return [m for m in METHOD_NAMES if m in names] + sorted(names - set(METHOD_NAMES))


def stored_methods(session: Session, run_id: int) -> list[str]:
    """The CAM methods the run has maps of, in ``core.cammaps.METHOD_NAMES`` order."""
    return ordered_methods(session.scalars(select(CamMap.method).where(CamMap.run_id == run_id).distinct()))


def maps_query_plan(session: Session, image_ids: Iterable[int], method: str = DEFAULT_METHOD) -> list[str]:
    """How the database answers :func:`maps_for` for one page of images: the lines of SQLite's ``EXPLAIN QUERY
    PLAN`` (or PostgreSQL's ``EXPLAIN``). A search by the primary key (image_id, method), one lookup per
    image, is what keeps a page's maps cheap however many the store holds."""
    ids = sorted({int(i) for i in image_ids})[:ID_CHUNK]
    stmt = _maps_stmt(ids, method)
    dialect = session.get_bind().dialect
    sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    prefix = "EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN "
    return [str(row[-1]) for row in session.execute(text(prefix + sql)).all()]
