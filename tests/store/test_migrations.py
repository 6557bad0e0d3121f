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


async def test_sort_keys_move_from_json_to_columns(db_url: str, tmp_path: Path) -> None:
    """Migration 12 (imap-ext): SORT/THREAD keys cached as JSON become the new columns;
    a damaged entry is left for the first SORT to compute; re-running is harmless."""
    import json

    from sqlalchemy import select, update

    from mailstack.store.db import _m_imap_ext

    store = Store(db_url, tmp_path / "blobs")
    await store.open(listen=False)
    await store.add_domain("example.com", "standard")
    addr = await store.add_address("a", "example.com", password_hash="x")
    inbox = await store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    one = await store.append(inbox.id, b"Subject: a\r\n\r\nx\r\n")
    two = await store.append(inbox.id, b"Subject: b\r\n\r\ny\r\n")
    m = current.messages
    old = ["sk1", 1704103200.0, "HELLO\udce9\x00", True, "ANN", "BOB", "", "ANN X", "BOB",
           "<a@x>", ["<r1@x>", "<r2@x>"]]
    async with store.engine.begin() as conn:
        await conn.execute(update(m).where(m.c.id == one.id).values(sort_keys=json.dumps(old)))
        await conn.execute(update(m).where(m.c.id == two.id).values(sort_keys="damaged"))
        await conn.run_sync(_m_imap_ext)
        await conn.run_sync(_m_imap_ext)
        rows = {r.id: r for r in (await conn.execute(select(m))).all()}
    await store.close()
    r1, r2 = rows[one.id], rows[two.id]
    assert (r1.sort_date, r1.sort_subject, r1.sort_reply, r1.sort_from, r1.sort_to,
            r1.sort_cc, r1.sort_dfrom, r1.sort_dto, r1.thread_id, r1.thread_refs) == (
        1704103200.0, "HELLO\ufffd", 1, "ANN", "BOB", "", "ANN X", "BOB", "<a@x>",
        "<r1@x> <r2@x>")
    assert r1.sort_keys is None
    assert r2.sort_date is None and r2.sort_keys == "damaged"
