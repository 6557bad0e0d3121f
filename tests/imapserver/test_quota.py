"""QUOTA (RFC 9208) with the plan's storage quota: GETQUOTA / GETQUOTAROOT, STATUS
DELETED / DELETED-STORAGE, NO [OVERQUOTA] for APPEND and COPY, SMTP RCPT 452 4.2.2
(or 552 5.2.2), reading still working, and the usage counter against the stored rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiosmtplib
import pytest

from mailstack.app import App
from tests.conftest import add_mailbox
from tests.imapserver.conftest import ADDR, PW, Raw, inbox_id, message

QUOTA = 6000


async def _app(app_factory: Callable[..., Any], **sections: Any) -> App:
    app: App = await app_factory(plans={"tiny": {"storage_quota": QUOTA,
                                                 "message_quota": 20}}, **sections)
    await add_mailbox(app, ADDR, PW, plan="tiny")
    return app


async def _true_usage(app: App) -> tuple[int, int]:
    assert app.store is not None
    addr = await app.store.get_address(ADDR)
    assert addr is not None
    total = count = 0
    for f in await app.store.list_folders(addr.id):
        for m in await app.store.list_messages(f.id):
            total += m.size
            count += 1
    assert await app.store.quota_usage(addr.id) == (total, count)  # the counter is right
    return total, count


async def test_quota_imap(app_factory: Callable[..., Any]) -> None:
    app = await _app(app_factory)
    assert app.store is not None
    fid = await inbox_id(app)
    one = message("q", "x" * 1900)
    for _ in range(2):
        await app.store.append(fid, one)
    used, _ = await _true_usage(app)
    raw = await Raw.connect(app.ports["imap"])
    await raw.login()
    caps = (await raw.cmd(b"c", b"CAPABILITY"))[0]
    assert b" QUOTA " in caps and b"QUOTA=RES-STORAGE" in caps and b"QUOTA=RES-MESSAGE" in caps
    out = await raw.cmd(b"r", b"GETQUOTAROOT INBOX")
    assert out[0] == b'* QUOTAROOT "INBOX" ""\r\n'
    assert out[1] == b'* QUOTA "" (STORAGE %d %d MESSAGE 2 20)\r\n' % (
        (used + 1023) // 1024, (QUOTA + 1023) // 1024), out
    out = await raw.cmd(b"q", b'GETQUOTA ""')
    assert out[0].startswith(b'* QUOTA "" (STORAGE ')
    assert (await raw.cmd(b"q2", b'GETQUOTA "other"'))[-1].startswith(b"q2 NO")
    assert (await raw.cmd(b"sq", b'SETQUOTA "" (STORAGE 99999)'))[-1].startswith(b"sq NO")
    # APPEND over quota: refused, nothing stored
    big = message("big", "y" * 2500)
    await raw.send(b"a APPEND INBOX {%d}\r\n" % len(big))
    assert (await raw.line()).startswith(b"+")
    await raw.send(big + b"\r\n")
    out = await raw.until(b"a")
    assert out[-1].startswith(b"a NO [OVERQUOTA]"), out
    assert await _true_usage(app) == (used, 2)
    # COPY over quota refused; MOVE within the account allowed
    await raw.cmd(b"s", b"SELECT INBOX")
    out = await raw.cmd(b"cp", b"COPY 1:2 Trash")
    assert out[-1].startswith(b"cp NO [OVERQUOTA]"), out
    out = await raw.cmd(b"mv", b"MOVE 2 Trash")
    assert out[-1].startswith(b"mv OK"), out
    assert await _true_usage(app) == (used, 2)
    # reading keeps working over quota
    out = await raw.cmd(b"f", b"FETCH 1 (BODY.PEEK[TEXT])")
    assert out[-1].startswith(b"f OK")
    # STATUS DELETED / DELETED-STORAGE; expunge frees space
    await raw.cmd(b"d", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    out = await raw.cmd(b"st", b"STATUS INBOX (DELETED DELETED-STORAGE)")
    assert out[0] == b'* STATUS "INBOX" (DELETED 1 DELETED-STORAGE %d)\r\n' % len(one), out
    await raw.cmd(b"x", b"EXPUNGE")
    assert await _true_usage(app) == (len(one), 1)
    await raw.cmd(b"u", b"UNSELECT")
    await raw.cmd(b"dl", b"DELETE Trash")
    assert await _true_usage(app) == (0, 0)
    await raw.close()


@pytest.mark.parametrize("permanent", [False, True])
async def test_quota_smtp_rcpt(app_factory: Callable[..., Any], permanent: bool) -> None:
    app = await _app(app_factory, quota={"over_quota_permanent": permanent,
                                         "warning_percent": 0})
    assert app.store is not None
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=app.ports["smtp"],
                               start_tls=False) as c:
        await c.ehlo()
        await c.sendmail("someone@example.org", [ADDR], message("one", "z\r\n" * 1400))
        await c.sendmail("someone@example.org", [ADDR], message("two", "z\r\n" * 1400))
        assert (await _true_usage(app))[1] == 2
        await c.mail("someone@example.org")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await c.rcpt(ADDR)
        code, text = refused.value.code, refused.value.message
        assert (code, text[:5]) == ((552, "5.2.2") if permanent else (452, "4.2.2")), text
        await c.rset()
    assert (await _true_usage(app))[1] == 2
