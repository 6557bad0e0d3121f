"""An authenticated SMTP session ends with 421 4.7.0 when the login's password changes
or its address is deleted (docs/behaviour.md §2), like IMAP and POP3 sessions."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import PASSWORD, Env, Raw, message, plain_auth


async def login(env: Env, user: str = "anna@example.com") -> Raw:
    raw = await Raw.open(env.port("submissions"), env.client_ssl)
    assert (await raw.cmd("EHLO client.example"))[0] == 250
    assert (await raw.cmd("AUTH PLAIN " + plain_auth(user, PASSWORD)))[0] == 235
    return raw


async def told_and_closed(raw: Raw) -> tuple[int, str]:
    reply = await asyncio.wait_for(raw.reply(), 10)
    assert await asyncio.wait_for(raw.reader.read(), 10) == b""  # then EOF
    return reply


@pytest.mark.parametrize("mid_transaction", [False, True])
async def test_password_change_ends_session(env: Env, mid_transaction: bool) -> None:
    raw = await login(env)
    other = await login(env, "bob@example.com")
    try:
        if mid_transaction:
            assert (await raw.cmd("MAIL FROM:<anna@example.com>"))[0] == 250
            assert (await raw.cmd("RCPT TO:<x@remote.example>"))[0] == 250
        addr = await env.store.get_address("anna@example.com")
        await env.store.set_password(addr.id, await env.app.services.passwords.hash("new pw!"))
        code, text = await told_and_closed(raw)
        assert (code, text[:5]) == (421, "4.7.0")
        # another login's session is not affected
        assert (await other.cmd("NOOP"))[0] == 250
    finally:
        await raw.close()
        await other.close()
    assert await env.total_stored() == 0


async def test_address_deleted_ends_session(env: Env) -> None:
    raw = await login(env, "carl@example.com")
    try:
        addr = await env.store.get_address("carl@example.com")
        await env.store.remove_address(addr.id)
        code, _ = await told_and_closed(raw)
        assert code == 421
    finally:
        await raw.close()


async def test_session_keeps_working_without_change(env: Env) -> None:
    """The watcher does not disturb a session whose credentials stay the same, also
    when another address's password changes."""
    raw = await login(env)
    try:
        bob = await env.store.get_address("bob@example.com")
        await env.store.set_password(bob.id, await env.app.services.passwords.hash("other pw"))
        assert (await raw.cmd("MAIL FROM:<anna@example.com>"))[0] == 250
        assert (await raw.cmd("RCPT TO:<carl@example.com>"))[0] == 250
        assert (await raw.cmd("DATA"))[0] == 354
        await raw.send(message("anna@example.com", "carl@example.com") + b".\r\n")
        assert (await raw.reply())[0] == 250
    finally:
        await raw.close()
    assert len(await env.inbox("carl@example.com")) == 1
