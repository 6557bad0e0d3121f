"""Every command through real client libraries (imaplib, imapclient, aioimaplib) against
the live server, checking replies and the stored state."""

from __future__ import annotations

import imaplib
import ssl

import aioimaplib
from imapclient import IMAPClient

from mailstack.app import App
from tests.imapserver.conftest import (
    ADDR,
    MESSAGE,
    PW,
    Raw,
    folder_of,
    imaps,
    inbox_id,
    message,
    run,
)


async def test_login_failures_and_capabilities(imap_app: App, client_ssl: ssl.SSLContext) -> None:
    assert imap_app.store is not None

    def go() -> None:
        c = imaps(imap_app, client_ssl, login=False)
        assert "IMAP4REV2" in c.capabilities and "AUTH=PLAIN" in c.capabilities
        for user, pw in ((ADDR, "wrong"), ("nobody@example.com", PW)):
            try:
                c.login(user, pw)
                raise AssertionError("login succeeded")
            except imaplib.IMAP4.error as exc:
                assert "[AUTHENTICATIONFAILED]" in str(exc)
        c.authenticate("PLAIN", lambda _: f"\0{ADDR}\0{PW}".encode())
        _typ, data = c.namespace()
        assert data == [b'(("" "/")) NIL NIL']
        c.logout()

    await run(go)
    events = [e.event for e in await imap_app.store.list_activity(ADDR)]
    assert events.count("login_fail") == 1 and "login_ok" in events


async def test_core_flow_imaplib(imap_app: App, client_ssl: ssl.SSLContext) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, MESSAGE)
    await imap_app.store.append(fid, message("Second", "needle in here"))

    def go() -> None:
        c = imaps(imap_app, client_ssl)
        typ, data = c.select("INBOX")
        assert typ == "OK" and data == [b"2"]
        typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject)] FLAGS)")
        assert data[0][1] == b"Subject: Hello there\r\n\r\n"
        assert b"\\Seen" not in data[1]  # PEEK does not set \Seen
        typ, data = c.fetch("1", "(BODY[TEXT])")
        assert data[0][1] == b"Hello Anna,\r\nthis is the body.\r\n"
        # BODY[] set \Seen and says so; imaplib speaks IMAP4rev1: \Recent (RFC 3501 §2.3.2)
        assert b"FLAGS (\\Seen \\Recent)" in data[1]
        typ, data = c.fetch("1", "(BODY[]<0.4>)")
        assert data[0][0].endswith(b"BODY[]<0> {4}") and data[0][1] == b"From"
        typ, data = c.search(None, "BODY", "needle")
        assert data == [b"2"]
        typ, data = c.search(None, "UNSEEN")
        assert data == [b"2"]
        typ, data = c.search(None, "OR", "SUBJECT", "second", "FROM", '"Bob Sender"')
        assert data == [b"1 2"]
        typ, data = c.uid("SEARCH", "SENTON", "1-Jan-2024")
        assert data == [b"1"]
        typ, data = c.store("2", "+FLAGS", "(\\Flagged $Label1)")
        assert b"\\Flagged" in data[0] and b"$Label1" in data[0]
        typ, data = c.uid("STORE", "2", "-FLAGS.SILENT", "($Label1)")
        assert data == [None]
        typ, data = c.uid("COPY", "1:2", "Trash")
        assert b"COPYUID" in c.untagged_responses.get("COPYUID", [b""])[0] or typ == "OK"
        typ, data = c.copy("1", "Nowhere")
        assert typ == "NO"
        typ, data = c.status("Trash", "(MESSAGES UNSEEN SIZE UIDNEXT)")
        assert b"MESSAGES 2" in data[0] and b"UNSEEN 1" in data[0]
        c.store("1", "+FLAGS", "(\\Deleted)")
        typ, data = c.expunge()
        assert data == [b"1"]
        typ, data = c.fetch("1", "(UID FLAGS)")
        assert b"UID 2" in data[0] and b"\\Flagged" in data[0]
        c.close()
        c.logout()

    await run(go)
    msgs = await imap_app.store.list_messages(fid)
    assert [m.uid for m in msgs] == [2] and "\\Flagged" in msgs[0].flags
    assert "$Label1" not in msgs[0].flags
    trash = await imap_app.store.list_messages(await folder_of(imap_app, "Trash"))
    assert len(trash) == 2


async def test_mailbox_management_imapclient(imap_app: App, client_ssl: ssl.SSLContext) -> None:
    assert imap_app.store is not None

    def go() -> None:
        with IMAPClient("127.0.0.1", port=imap_app.ports["imaps"], ssl_context=client_ssl) as c:
            c.login(ADDR, PW)
            c.create_folder("Projects/2024")
            names = {f[2] for f in c.list_folders()}
            assert {"Projects", "Projects/2024", "INBOX", "Sent", "Trash"} <= names
            flags = {f[2]: f[0] for f in c.list_folders()}
            assert b"\\HasChildren" in flags["Projects"]
            assert b"\\Trash" in flags["Trash"]
            c.rename_folder("Projects", "Work")
            assert c.folder_exists("Work/2024") and not c.folder_exists("Projects")
            c.subscribe_folder("Work")
            assert "Work" in {f[2] for f in c.list_sub_folders()}
            c.unsubscribe_folder("Work")
            assert "Work" not in {f[2] for f in c.list_sub_folders()}
            c.create_folder("Ünïcode")  # modified UTF-7 on the wire
            assert "Ünïcode" in {f[2] for f in c.list_folders()}
            for bad in ("INBOX", "Work"):
                try:
                    c.create_folder(bad)
                    raise AssertionError("created twice")
                except IMAPClient.Error as exc:
                    assert "ALREADYEXISTS" in str(exc)
            try:
                c.delete_folder("INBOX")
                raise AssertionError("deleted INBOX")
            except IMAPClient.Error:
                pass
            c.delete_folder("Work/2024")
            assert not c.folder_exists("Work/2024")
            uid = c.append("Drafts", message("Draft one"), flags=[b"\\Draft"])
            assert b"APPENDUID" in uid
            st = c.folder_status("Drafts", ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "SIZE"])
            assert st[b"MESSAGES"] == 1 and st[b"UIDNEXT"] == 2
            c.select_folder("Drafts", readonly=True)
            try:
                c.add_flags([1], [b"\\Seen"])
                raise AssertionError("read-only store")
            except IMAPClient.Error:
                pass
            res = c.fetch([1], ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "INTERNALDATE"])
            assert res[1][b"ENVELOPE"].subject == b"Draft one"
            c.unselect_folder()
            c.select_folder("Drafts")
            c.move([1], "Trash")
            assert c.search() == []
            c.unselect_folder()
            assert c.enable("UTF8=ACCEPT") == [b"UTF8=ACCEPT"]
            c.folder_encode = False  # RFC 6855: names are now UTF-8 on the wire
            names = {f[2] for f in c.list_folders()}
            assert "Ünïcode".encode() in names
            c.logout()

    await run(go)
    addr = await imap_app.store.get_address(ADDR)
    assert addr is not None
    names = {f.name for f in await imap_app.store.list_folders(addr.id)}
    assert "Ünïcode" in names and "Work" in names and "Work/2024" not in names
    trash = await imap_app.store.list_messages(await folder_of(imap_app, "Trash"))
    assert len(trash) == 1 and "\\Draft" in trash[0].flags


async def test_esearch_searchres_binary(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    for i in range(5):
        await imap_app.store.append(fid, message(f"m{i}", "ZmFrZQ=="),
                                    flags=["\\Seen"] if i % 2 else [])
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    out = await raw.cmd(b"a", b"UID SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
    assert out[0] == b'* ESEARCH (TAG "a") UID MIN 1 MAX 5 ALL 1,3,5 COUNT 3\r\n'
    out = await raw.cmd(b"b", b"SEARCH RETURN (SAVE) SEEN")
    assert out == [out[-1]] and out[-1].startswith(b"b OK")
    out = await raw.cmd(b"c", b"FETCH $ (UID)")
    assert [x for x in out if x.startswith(b"* ")] == [b"* 2 FETCH (UID 2)\r\n",
                                                 b"* 4 FETCH (UID 4)\r\n"]
    out = await raw.cmd(b"d", b"SEARCH RETURN (COUNT) SUBJECT nothing-like-this")
    assert out[0] == b'* ESEARCH (TAG "d") COUNT 0\r\n'
    out = await raw.cmd(b"e", b"FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])")
    assert b"BINARY.SIZE[1] 10" in out[0]
    out = await raw.cmd(b"f", b"ENABLE IMAP4rev2")
    assert out[-1].startswith(b"f BAD")  # not in the selected state (RFC 5161 §3.1)
    await raw.cmd(b"u", b"UNSELECT")
    out = await raw.cmd(b"g", b"ENABLE IMAP4rev2")
    assert out[0] == b"* ENABLED IMAP4rev2\r\n"
    await raw.cmd(b"s2", b"SELECT INBOX")
    out = await raw.cmd(b"h", b"SEARCH SEEN")
    assert out[0] == b'* ESEARCH (TAG "h") ALL 2,4\r\n'  # rev2: always ESEARCH
    out = await raw.cmd(b"i", b"ID NIL")
    assert out[0].startswith(b'* ID ("name" "mailstack"')
    await raw.close()


async def test_aioimaplib_flow(imap_app: App, client_ssl: ssl.SSLContext) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, MESSAGE)
    client = aioimaplib.IMAP4_SSL("127.0.0.1", imap_app.ports["imaps"], ssl_context=client_ssl)
    await client.wait_hello_from_server()
    assert (await client.login(ADDR, PW)).result == "OK"
    assert (await client.select("INBOX")).result == "OK"
    res = await client.uid("fetch", "1", "(UID RFC822)")
    assert res.result == "OK"
    assert any(isinstance(x, bytearray | bytes) and b"this is the body" in x for x in res.lines)
    res = await client.append(message("via aioimaplib"), mailbox="Sent", flags="(\\Seen)")
    assert res.result == "OK"
    assert (await client.logout()).result == "OK"
    sent = await imap_app.store.list_messages(await folder_of(imap_app, "Sent"))
    assert len(sent) == 1 and sent[0].flags == frozenset({"\\Seen"})
    msgs = await imap_app.store.list_messages(fid)
    assert "\\Seen" in msgs[0].flags  # RFC822 sets \Seen


async def test_append_limits(app_factory) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import add_mailbox
    app = await app_factory(plans={"standard": {"max_message_size": 2048}})
    await add_mailbox(app, ADDR, PW)
    raw = await Raw.connect(app.ports["imap"])
    await raw.login()
    await raw.send(b"a APPEND INBOX {4096}\r\n")
    assert (await raw.line()).startswith(b"a NO [TOOBIG]")
    out = await raw.cmd(b"b", b"APPEND Nowhere {5+}\r\nHello")
    assert out[-1].startswith(b"b NO [TRYCREATE]")
    out = await raw.cmd(b"c", b'APPEND INBOX (\\Seen) " 1-Feb-2024 10:00:00 +0100" {15+}\r\n'
                        b"Subject: x\r\n\r\nY")
    assert out[-1].startswith(b"c OK [APPENDUID ")
    await raw.close()
    assert app.store is not None
    msgs = await app.store.list_messages(await inbox_id(app))
    assert len(msgs) == 1 and msgs[0].internal_date == 1706778000.0

