"""Bulk creation of addresses is one transaction (docs/behaviour.md §3): a failure, or the
process being killed half-way, leaves nothing of the run: no address, no folder, no
activity entry. On both backends; the kill test on PostgreSQL, where a trigger can hold
the transaction open (``pg_sleep``) while the test looks and then kills the importer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select, text

from mailstack.store import AlreadyExists, LimitReached, NewAddressRecord, Store
from mailstack.store import schema as t
from tests.cli.conftest import cli_env, make_cli
from tests.conftest import PG_DSN

pytestmark = pytest.mark.asyncio


async def counts(store: Store) -> tuple[int, int, int]:
    async with store.engine.connect() as conn:
        return tuple([(await conn.execute(select(func.count()).select_from(tbl)))
                      .scalar_one() for tbl in (t.addresses, t.folders, t.activity)])  # type: ignore[return-value]


def records(n: int, domain: str = "example.com") -> list[NewAddressRecord]:
    return [NewAddressRecord(f"user{i}", domain, "hash", f"User {i}") for i in range(n)]


async def test_all_created_with_folders_and_activity(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    made = await store.add_addresses(records(3), activity_detail="import-csv")
    assert [a.email for a in made] == ["user0@example.com", "user1@example.com",
                                       "user2@example.com"]
    assert await counts(store) == (3, 18, 3)
    assert [e.detail for e in await store.list_activity("user1@example.com")] == [
        "import-csv"]


async def test_refusal_on_the_last_record_stores_nothing(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    await store.add_alias("user2", "example.com", ["x@remote.example"])
    before = await counts(store)
    with pytest.raises(AlreadyExists, match=r"^user2@example\.com is already an alias"):
        await store.add_addresses(records(3))
    with pytest.raises(LimitReached, match=r"^zed@example\.com: .* allows 2 addresses"):
        await store.add_addresses([*records(2), NewAddressRecord("zed", "example.com")],
                                  max_addresses={"example.com": 2})
    assert await counts(store) == before


async def test_database_failure_half_way_stores_nothing(store: Store) -> None:
    """The database itself refuses the third insert (a trigger): the two before it
    are rolled back with it."""
    await store.add_domain("example.com", "standard")
    if store.is_sqlite:
        create = ["CREATE TRIGGER fail3 BEFORE INSERT ON addresses WHEN NEW.local_part = "
                  "'user2' BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"]
    else:
        create = ["CREATE FUNCTION fail3() RETURNS trigger AS $$ BEGIN IF NEW.local_part = "
                  "'user2' THEN RAISE EXCEPTION 'simulated failure'; END IF; RETURN NEW; "
                  "END $$ LANGUAGE plpgsql",
                  "CREATE TRIGGER fail3 BEFORE INSERT ON addresses FOR EACH ROW "
                  "EXECUTE FUNCTION fail3()"]
    async with store.engine.begin() as conn:
        for stmt in create:
            await conn.execute(text(stmt))
    with pytest.raises(Exception, match=r"simulated failure|already exists"):
        await store.add_addresses(records(4))
    assert await counts(store) == (0, 0, 0)


# PostgreSQL only: it needs a trigger that holds the importer's transaction open.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_importer_killed_half_way_leaves_nothing(backend: str, db_url: str,
                                                       tmp_path: Path) -> None:
    cli = make_cli(tmp_path, db_url)
    await asyncio.to_thread(cli.ok, "domain", "add", "example.com")
    schema = db_url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(
            "CREATE FUNCTION hold() RETURNS trigger AS $$ BEGIN IF NEW.local_part = 'c' "
            "THEN PERFORM pg_sleep(120); END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
        await conn.execute("CREATE TRIGGER hold BEFORE INSERT ON addresses FOR EACH ROW "
                           "EXECUTE FUNCTION hold()")
        path = tmp_path / "in.csv"
        path.write_text("a@example.com,password1\nb@example.com,password2\n"
                        "c@example.com,password3\nd@example.com,password4\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailstack", "--config", str(cli.config), "address",
            "import-csv", str(path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=cli_env(), cwd=cli.cwd)
        try:
            pid = None
            for _ in range(1200):  # until the importer sits in the trigger, on row 3
                pid = await conn.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                    "AND query ILIKE '%INSERT INTO addresses%'")
                if pid is not None or proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
            assert pid is not None, "the importer never reached the third row"
            # half-way: a and b are inserted in the open transaction, invisible outside
            assert await conn.fetchval("SELECT count(*) FROM addresses") == 0
            os.kill(proc.pid, signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        # the server notices its client is gone (here: at once) and rolls back
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
        for table in ("addresses", "folders", "activity"):
            where = " WHERE event = 'address_created'" if table == "activity" else ""
            assert await conn.fetchval(f"SELECT count(*) FROM {table}{where}") == 0, table
    finally:
        await conn.close()
