"""Indexes a store's existing tables lack: ``create_all`` makes missing tables with their indexes but adds
none to a table that exists, so an index added to the models later reaches older stores here (called by
``db.store.ensure_schema`` when it may write, and by ``db.upgrade`` after its steps)."""
from __future__ import annotations

from sqlalchemy import Connection, inspect

from db.models import Base


def add_missing_indexes(conn: Connection) -> list[str]:
    """Create the models' indexes missing from tables that exist (``CREATE INDEX`` each); returns their names."""
    made = []
    insp = inspect(conn)
    present = set(insp.get_table_names())
    for table in Base.metadata.sorted_tables:
        if table.name not in present or not table.indexes:
            continue
        have = {ix["name"] for ix in insp.get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda ix: ix.name):
            if index.name not in have:
                index.create(conn)
                made.append(index.name)
    return made
