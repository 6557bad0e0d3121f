"""Live state across sessions (docs/behaviour.md §8): changes made by one session or by delivery
reach the others: during IDLE at once, otherwise at the next command where RFC 9051
§7.5.1 allows (never EXPUNGE during FETCH, STORE or SEARCH)."""

from __future__ import annotations

import ssl

from imapclient import IMAPClient

from mailstack.app import App
from mailstack.store import DeliveryTarget
from tests.imapserver.conftest import ADDR, MESSAGE, PW, Raw, folder_of, inbox_id, message, run


async def _two(app: App) -> tuple[Raw, Raw]:
    a = await Raw.connect(app.ports["imap"])
    b = await Raw.connect(app.ports["imap"])
    for r in (a, b):
        await r.login()
        await r.cmd(b"s", b"SELECT INBOX")
    return a, b


async def test_flags_expunge_new_mail_reach_other_session(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    for i in range(3):
        await imap_app.store.append(fid, message(f"m{i}"))
    a, b = await _two(imap_app)
    # flags set by A reach B at its next NOOP
    await a.cmd(b"f", b"STORE 2 +FLAGS.SILENT (\\Flagged)")
    out = await b.cmd(b"n", b"NOOP")
    assert b"* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n" in out
    # A expunges message 1; B must not hear EXPUNGE during FETCH / STORE / SEARCH
    await a.cmd(b"d", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    out = await a.cmd(b"x", b"EXPUNGE")
    assert out[0] == b"* 1 EXPUNGE\r\n"
    out = await b.cmd(b"f1", b"FETCH 1:3 (UID)")
    assert not any(b"EXPUNGE" in x for x in out)
    assert b"* 1 FETCH" not in b"".join(out)  # the expunged message has no data
    out = await b.cmd(b"s1", b"SEARCH ALL")
    assert not any(b"EXPUNGE" in x for x in out) and out[0] == b"* SEARCH 2 3\r\n"
    out = await b.cmd(b"n2", b"NOOP")
    assert out[0] == b"* 1 EXPUNGE\r\n"
    out = await b.cmd(b"f2", b"FETCH 1 (UID)")
    assert out[0] == b"* 1 FETCH (UID 2)\r\n"  # numbers moved down after the EXPUNGE
    # new mail (delivery) reaches B as EXISTS
    blob = await imap_app.store.put_blob(MESSAGE)
    await imap_app.store.deliver(blob, len(MESSAGE), [DeliveryTarget(fid, b"Delivered-To: "
                                                                     b"anna@example.com\r\n")])
    out = await b.cmd(b"n3", b"NOOP")
    assert out[0] == b"* 3 EXISTS\r\n"
    assert out[1] == b"* 1 RECENT\r\n"  # B (IMAP4rev1) is the first to see it
    # B's own STORE answers with FETCH once, not again as an unsolicited update
    out = await b.cmd(b"st", b"STORE 3 +FLAGS (\\Seen)")
    assert out[0] == b"* 3 FETCH (FLAGS (\\Seen \\Recent))\r\n"
    out = await b.cmd(b"n4", b"NOOP")
    assert out == [out[-1]]
    # UID FETCH may carry an EXPUNGE (RFC 9051 §7.5.1 only forbids the non-UID forms)
    await a.cmd(b"n5", b"NOOP")
    await a.cmd(b"mv", b"UID MOVE 2 Trash")
    out = await b.cmd(b"uf", b"UID FETCH 1:* (FLAGS)")
    assert b"* 1 EXPUNGE\r\n" in out
    await a.close()
    await b.close()


async def test_idle_wakes_on_delivery_and_other_sessions(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, message("first"))
    a, b = await _two(imap_app)
    await b.send(b"i IDLE\r\n")
    assert (await b.line()).startswith(b"+ ")
    await imap_app.store.append(fid, MESSAGE)  # what SMTP delivery does
    assert await b.line() == b"* 2 EXISTS\r\n"
    assert await b.line() == b"* 1 RECENT\r\n"  # RFC 3501 §7.3.2, IMAP4rev1 session
    await a.cmd(b"f", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert await b.line() == b"* 1 FETCH (UID 1 FLAGS (\\Deleted))\r\n"
    await a.cmd(b"x", b"EXPUNGE")
    assert await b.line() == b"* 1 EXPUNGE\r\n"  # at once during IDLE
    await b.send(b"DONE\r\n")
    assert (await b.line()).startswith(b"i OK")
    await a.close()
    await b.close()


async def test_password_change_cuts_open_sessions(imap_app: App) -> None:
    assert imap_app.store is not None and imap_app.services is not None
    a = await Raw.connect(imap_app.ports["imap"])
    await a.login()
    await a.cmd(b"s", b"SELECT INBOX")
    await a.send(b"i IDLE\r\n")
    await a.line()
    addr = await imap_app.store.get_address(ADDR)
    assert addr is not None
    await imap_app.store.set_password(addr.id, await imap_app.services.passwords.hash("new"))
    assert (await a.line()).startswith(b"* BYE")
    assert await a.line() == b""  # closed
    await a.close()


async def test_thunderbird_style_flow(imap_app: App, client_ssl: ssl.SSLContext) -> None:
    """List folders, read, flag, move to Trash, expunge, append to Sent, IDLE wake-up."""
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, MESSAGE)
    await imap_app.store.append(fid, message("Newsletter"))

    def go() -> None:
        with IMAPClient("127.0.0.1", port=imap_app.ports["imaps"], ssl_context=client_ssl) as c:
            c.login(ADDR, PW)
            c.id_({"name": "Thunderbird", "version": "128"})
            folders = c.list_folders()
            specials = {f[2]: f[0] for f in folders}
            assert b"\\Sent" in specials["Sent"] and b"\\Trash" in specials["Trash"]
            c.select_folder("INBOX")
            uids = c.search(["ALL"])
            assert uids == [1, 2]
            data = c.fetch(uids, ["UID", "RFC822.SIZE", "FLAGS", "BODY.PEEK[HEADER.FIELDS "
                                  "(From To Cc Bcc Subject Date Message-ID Priority "
                                  "X-Priority References Newsgroups In-Reply-To "
                                  "Content-Type Reply-To)]"])
            assert all(b"\\Seen" not in d[b"FLAGS"] for d in data.values())
            body = c.fetch([1], ["BODY.PEEK[]"])[1][b"BODY[]"]
            assert body == MESSAGE
            c.add_flags([1], [b"\\Seen", b"\\Flagged"])
            c.move([2], "Trash")
            c.select_folder("Trash")
            c.add_flags([1], [b"\\Deleted"])
            c.expunge()
            res = c.append("Sent", message("My reply"), flags=[b"\\Seen"])
            assert b"APPENDUID" in res
            c.select_folder("INBOX")
            c.idle()
            return_value = c.idle_check(timeout=0.05)  # nothing yet
            assert return_value == []
            c.idle_done()

    await run(go)
    inbox = await imap_app.store.list_messages(fid)
    assert [m.uid for m in inbox] == [1] and {"\\Seen", "\\Flagged"} <= inbox[0].flags
    assert await imap_app.store.list_messages(await folder_of(imap_app, "Trash")) == []
    sent = await imap_app.store.list_messages(await folder_of(imap_app, "Sent"))
    assert len(sent) == 1


async def test_imapclient_idle_wakeup(imap_app: App, client_ssl: ssl.SSLContext) -> None:
    import asyncio
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    loop = asyncio.get_running_loop()

    def go() -> list:  # type: ignore[type-arg]
        with IMAPClient("127.0.0.1", port=imap_app.ports["imaps"], ssl_context=client_ssl) as c:
            c.login(ADDR, PW)
            c.select_folder("INBOX")
            c.idle()
            asyncio.run_coroutine_threadsafe(imap_app.store.append(fid, MESSAGE), loop)
            got: list = []  # type: ignore[type-arg]
            while not got:
                got = c.idle_check(timeout=30)
            c.idle_done()
            return got

    got = await run(go)
    assert (1, b"EXISTS") in got
