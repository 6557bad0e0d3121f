"""Faults and limits: a store failure is a temporary NO [UNAVAILABLE] and the session
survives; throttled logins get NO [UNAVAILABLE]; auto-logout; shutdown says BYE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailstack.app import App
from tests.conftest import add_mailbox
from tests.imapserver.conftest import ADDR, MESSAGE, PW, Raw, inbox_id, seen_as_recent


async def test_missing_blob_is_unavailable_and_session_survives(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    msg = await imap_app.store.append(fid, MESSAGE)
    imap_app.store.blobs.path_of(msg.blob_id).unlink()  # the disk lost the file
    await seen_as_recent(imap_app)
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    out = await raw.cmd(b"a", b"FETCH 1 BODY.PEEK[]")
    assert out[-1].startswith(b"a NO [UNAVAILABLE]")
    out = await raw.cmd(b"b", b"FETCH 1 (UID FLAGS)")  # metadata still served
    assert out[0] == b"* 1 FETCH (UID 1 FLAGS ())\r\n" and out[-1].startswith(b"b OK")
    await raw.close()


async def test_throttled_login_is_unavailable(app_factory: Callable[..., Any]) -> None:
    app: App = await app_factory(auth={"lock_after_failures": 2, "slow_after_failures": 5})
    await add_mailbox(app, ADDR, PW)
    raw = await Raw.connect(app.ports["imap"])
    for tag in (b"a", b"b"):
        out = await raw.cmd(tag, f"LOGIN {ADDR} wrong".encode())
        assert out[-1].startswith(tag + b" NO [AUTHENTICATIONFAILED]")
    out = await raw.cmd(b"c", f"LOGIN {ADDR} {PW}".encode())
    assert out[-1].startswith(b"c NO [UNAVAILABLE]")
    await raw.close()


async def test_autologout_after_idle_timeout(app_factory: Callable[..., Any]) -> None:
    app: App = await app_factory(imap={"idle_timeout_seconds": 1})
    await add_mailbox(app, ADDR, PW)
    raw = await Raw.connect(app.ports["imap"])
    await raw.login()
    line = await raw.line()  # no command sent: the server gives up
    assert line.startswith(b"* BYE")
    assert await raw.line() == b""
    await raw.close()


async def test_shutdown_says_bye(imap_app: App) -> None:
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await imap_app.stop(grace=0)
    assert (await raw.line()).startswith(b"* BYE")
    await raw.close()
