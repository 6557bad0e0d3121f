"""NOTIFY (RFC 5465) on the wire: unsolicited updates for the selected mailbox and the
other personal mailboxes while the client sends nothing, STATUS at NOTIFY SET STATUS,
mailbox name and subscription changes, and the refusals."""

from __future__ import annotations

import re

from mailstack.app import App
from tests.imapserver.conftest import MESSAGE, Raw, folder_of, inbox_id, message


async def _session(app: App, select: bool = True) -> Raw:
    raw = await Raw.connect(app.ports["imap"])
    await raw.login()
    if select:
        assert (await raw.cmd(b"s", b"SELECT INBOX"))[-1].startswith(b"s OK")
    return raw


async def test_notify_selected_and_personal(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, message("old"))
    a = await _session(imap_app)
    assert b" NOTIFY" in (await a.cmd(b"c", b"CAPABILITY"))[0]
    out = await a.cmd(b"n", b"NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS "
                            b"(Subject)]) MessageExpunge FlagChange)) (personal (MessageNew "
                            b"MessageExpunge MailboxName SubscriptionChange))")
    assert out[-1].startswith(b"n OK"), out
    # delivery to the selected mailbox: told at once, with the asked-for FETCH
    await imap_app.store.append(fid, MESSAGE)
    assert await a.line() == b"* 2 EXISTS\r\n"
    line = await a.line()
    while not line.startswith(b"* 2 FETCH"):
        line = await a.line()  # "* n RECENT" / FLAGS for an IMAP4rev1 session
    assert b"UID 2" in line and b"BODY[HEADER.FIELDS (Subject)]" in line, line
    assert await a.line() == b"Subject: Hello there\r\n"
    assert await a.line() == b"\r\n"
    assert await a.line() == b")\r\n"
    # another mailbox: STATUS
    await imap_app.store.append(await folder_of(imap_app, "Trash"), message("t"))
    line = await a.line()
    assert re.fullmatch(rb'\* STATUS "Trash" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ '
                        rb'UNSEEN 1\)\r\n', line), line
    # flag change and expunge in the selected mailbox by another session
    b = await _session(imap_app)
    await b.cmd(b"f", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert re.fullmatch(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Deleted.*\)\)\r\n", await a.line())
    await b.cmd(b"x", b"EXPUNGE")
    assert await a.line() == b"* 1 EXPUNGE\r\n"
    # mailbox names and subscriptions
    await b.cmd(b"c1", b"CREATE Projects")
    assert await a.line() == b'* LIST () "/" "Projects"\r\n'
    await b.cmd(b"c2", b"SUBSCRIBE Projects")
    assert await a.line() == b'* LIST (\\Subscribed) "/" "Projects"\r\n'
    await b.cmd(b"c3", b"RENAME Projects Work")
    assert await a.line() == b'* LIST (\\Subscribed) "/" "Work" ("OLDNAME" ("Projects"))\r\n'
    await b.cmd(b"c4", b"DELETE Work")
    assert await a.line() == b'* LIST (\\NonExistent) "/" "Work"\r\n'
    # NOTIFY NONE: quiet again (the next command sees the normal updates)
    assert (await a.cmd(b"nn", b"NOTIFY NONE"))[-1].startswith(b"nn OK")
    await imap_app.store.append(await folder_of(imap_app, "Trash"), message("t2"))
    await imap_app.store.append(fid, message("new"))
    out = await a.cmd(b"z", b"NOOP")
    assert not any(x.startswith(b"* STATUS") for x in out) and b"* 2 EXISTS\r\n" in out, out
    await a.close()
    await b.close()


async def test_notify_set_status_and_refusals(imap_app: App) -> None:
    assert imap_app.store is not None
    await imap_app.store.append(await folder_of(imap_app, "Trash"), message("t"))
    a = await _session(imap_app)
    out = await a.cmd(b"n", b"NOTIFY SET STATUS (personal (MessageNew MessageExpunge))")
    assert out[-1].startswith(b"n OK"), out
    statuses = [x for x in out if x.startswith(b"* STATUS")]
    assert any(x.startswith(b'* STATUS "Trash" (MESSAGES 1 ') for x in statuses), out
    assert not any(b'"INBOX"' in x for x in statuses)  # the selected one is left out
    out = await a.cmd(b"e1", b"NOTIFY SET (personal (MessageNew MessageExpunge "
                             b"AnnotationChange))")
    assert out[-1].startswith(b"e1 NO [BADEVENT (MessageNew MessageExpunge FlagChange "
                              b"MailboxName SubscriptionChange)]"), out
    out = await a.cmd(b"e2", b"NOTIFY SET (personal (MessageNew))")
    assert out[-1].startswith(b"e2 BAD"), out
    out = await a.cmd(b"e3", b"NOTIFY SET (personal (MessageNew (UID) MessageExpunge))")
    assert out[-1].startswith(b"e3 BAD"), out
    out = await a.cmd(b"e4", b"NOTIFY SET (nowhere (MessageNew MessageExpunge))")
    assert out[-1].startswith(b"e4 BAD"), out
    # subtree / mailboxes filters: only the named ones
    out = await a.cmd(b"n2", b'NOTIFY SET (mailboxes (Drafts) (MessageNew MessageExpunge))')
    assert out[-1].startswith(b"n2 OK"), out
    await imap_app.store.append(await folder_of(imap_app, "Trash"), message("t2"))
    await imap_app.store.append(await folder_of(imap_app, "Drafts"), message("d"))
    line = await a.line()
    assert line.startswith(b'* STATUS "Drafts" (MESSAGES 1 '), line
    await a.close()
