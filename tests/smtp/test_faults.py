"""Faults on the SMTP path (docs/behaviour.md §12 "Faults", "Slow clients").

- The database refuses the write in the middle of the acceptance transaction (a real
  failure raised by the database itself, through a trigger): 451 4.3.0, and nothing of
  the message is stored: no local copy, no queued remote copy, no send-log entry.
- A client that stops talking before or during DATA is cut off by the command and data
  timeouts; a half-sent message is not stored.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from sqlalchemy import text

from tests.smtp.conftest import PASSWORD, Env, Raw, message, populate


async def _break_message_inserts(env: Env) -> tuple[str, ...]:
    """Install a trigger that aborts every insert into ``messages``; returns the SQL
    that removes it again."""
    if env.store.is_sqlite:
        create = ("CREATE TRIGGER fail_insert BEFORE INSERT ON messages BEGIN "
                  "SELECT RAISE(ABORT, 'simulated database failure'); END",)
        drop: tuple[str, ...] = ("DROP TRIGGER fail_insert",)
    else:
        create = ("CREATE FUNCTION fail_insert() RETURNS trigger AS $$ BEGIN "
                  "RAISE EXCEPTION 'simulated database failure'; END $$ LANGUAGE plpgsql",
                  "CREATE TRIGGER fail_insert BEFORE INSERT ON messages "
                  "FOR EACH ROW EXECUTE FUNCTION fail_insert()")
        drop = ("DROP TRIGGER fail_insert ON messages", "DROP FUNCTION fail_insert()")
    async with env.store.engine.begin() as conn:
        for stmt in create:
            await conn.execute(text(stmt))
    return drop


async def _submit(raw: Raw, body: bytes) -> tuple[int, str]:
    await raw.cmd("MAIL FROM:<anna@example.com>")
    assert (await raw.cmd("RCPT TO:<bob@example.com>"))[0] == 250
    assert (await raw.cmd("RCPT TO:<someone@remote.example>"))[0] == 250
    assert (await raw.cmd("DATA"))[0] == 354
    await raw.send(body + b".\r\n")
    return await raw.reply()


async def test_database_failure_mid_transaction_stores_nothing(env: Env) -> None:
    anna = await env.store.get_address("anna@example.com")
    drop = await _break_message_inserts(env)
    raw = await Raw.open(env.port("submissions"), env.client_ssl)
    body = message("anna@example.com", "bob@example.com, someone@remote.example")
    try:
        await raw.cmd("EHLO client.example")
        auth = base64.b64encode(f"\0anna@example.com\0{PASSWORD}".encode()).decode()
        assert (await raw.cmd(f"AUTH PLAIN {auth}"))[0] == 235
        code, text_ = await _submit(raw, body)
        assert (code, text_[:5]) == (451, "4.3.0")
        assert await env.total_stored() == 0  # no local copy, nothing queued
        assert await env.store.sends_since(anna.id, 0) == []  # not counted either
        async with env.store.engine.begin() as conn:
            for stmt in drop:
                await conn.execute(text(stmt))
        code, _ = await _submit(raw, body)  # the same session recovers
        assert code == 250
    finally:
        await raw.close()
    assert len(await env.inbox("bob@example.com")) == 1
    assert [q.recipient for q in await env.store.list_queue()] == ["someone@remote.example"]
    assert [n for _, n in await env.store.sends_since(anna.id, 0)] == [2]


async def _closed_by_server(raw: Raw) -> list[bytes]:
    """Read until the server closes the connection; returns the lines it sent."""
    lines = []
    while True:
        line = await asyncio.wait_for(raw.reader.readline(), 30)
        if not line:
            return lines
        lines.append(line)


async def test_silent_client_cut_off_by_command_timeout(app_factory: Any) -> None:
    app = await app_factory(smtp={"command_timeout": 1.0})
    raw = await Raw.open(app.ports["smtp"])
    try:
        await raw.cmd("EHLO slow.example")
        lines = await _closed_by_server(raw)  # we say nothing more
    finally:
        await raw.close()
    assert lines and lines[-1].startswith(b"421 4.4.2")


async def test_stalled_data_cut_off_and_not_stored(app_factory: Any,
                                                   client_ssl: Any) -> None:
    app = await app_factory(smtp={"data_timeout": 1.0})
    await populate(app)
    env = Env(app, client_ssl)
    raw = await Raw.open(app.ports["smtp"])
    try:
        await raw.cmd("EHLO slow.example")
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        assert (await raw.cmd("DATA"))[0] == 354
        await raw.send(b"Subject: half\r\n\r\nthe first half of a mess")  # then nothing
        lines = await _closed_by_server(raw)
    finally:
        await raw.close()
    assert lines and lines[-1].startswith(b"421 4.4.2")
    assert await env.total_stored() == 0
