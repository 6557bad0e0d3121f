"""Migrations: a database created by the first release (schema version 1, kept in
``schema_v1.py``) is brought by ``Store.open`` to exactly the tables, columns and
indexes a fresh database gets from the current schema, on both backends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, inspect

from mailstack.store import Store
from mailstack.store import schema as current
from mailstack.store.db import LATEST, create_engine
from tests.store import schema_v1


def _shape(conn: Connection) -> dict[str, Any]:
    insp = inspect(conn)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        cols = {c["name"]: (str(c["type"]).split("(")[0], c["nullable"])
                for c in insp.get_columns(table)}
        indexes = sorted(tuple(i["column_names"]) for i in insp.get_indexes(table))
        out[table] = (cols, indexes)
    return out


async def _create_v1(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(schema_v1.metadata.create_all)
        await conn.execute(insert(schema_v1.schema_version),
                           [{"version": 1, "applied_at": time.time()}])
        await conn.execute(insert(schema_v1.counters),
                           [{"name": "uidvalidity", "value": 1}])
    await engine.dispose()


async def _shape_of(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    async with engine.connect() as conn:
        shape = await conn.run_sync(_shape)
    await engine.dispose()
    return shape


async def test_v1_database_upgrades_to_the_fresh_shape(db_url: str, tmp_path: Path,
                                                       backend: str) -> None:
    await _create_v1(db_url)
    store = Store(db_url, tmp_path / "blobs")
    assert await store.migrate() == 1  # it started from version 1
    await store.close()
    upgraded = await _shape_of(db_url)

    fresh_url = (f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}" if backend == "sqlite"
                 else None)
    if fresh_url is None:  # PostgreSQL: compare with the metadata itself
        expected_tables = sorted(current.metadata.tables)
        assert sorted(upgraded) == expected_tables
        for name, table in current.metadata.tables.items():
            assert sorted(upgraded[name][0]) == sorted(c.name for c in table.columns), name
        return
    fresh = Store(fresh_url, tmp_path / "blobs2")
    assert await fresh.migrate() == 0
    await fresh.close()
    assert upgraded == await _shape_of(fresh_url)
    assert LATEST >= 2
