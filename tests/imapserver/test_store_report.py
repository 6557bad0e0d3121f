"""STORE's FETCH responses come from the write transaction itself (no second read):
every listed message is reported with its flags after the change, also the ones that
did not change (RFC 9051 §6.4.6), none with .SILENT; the stored state matches. Driven
with imaplib."""

from __future__ import annotations

import re

from mailstack.app import App
from tests.imapserver.conftest import inbox_id, message, plain, run, seen_as_recent


def _flags(data: list[bytes]) -> dict[int, set[str]]:
    out = {}
    for item in data:
        m = re.match(rb"(\d+) \(FLAGS \(([^)]*)\)\)", item)
        assert m, data
        out[int(m.group(1))] = set(m.group(2).decode().split())
    return out


async def test_store_reports_every_listed_message(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    for i, fl in enumerate([[], ["\\Seen"], ["\\Flagged"], ["\\Seen", "Work"]]):
        await imap_app.store.append(fid, message(f"m{i}"), flags=fl)
    await seen_as_recent(imap_app)
    high = (await imap_app.store.folder_status(fid)).highestmodseq

    def go() -> tuple[list[bytes], list[bytes], list[bytes]]:
        c = plain(imap_app)
        c.select("INBOX")
        typ, first = c.store("1:4", "+FLAGS", "(\\Seen)")
        assert typ == "OK"
        typ, again = c.store("1:4", "+FLAGS", "(\\Seen)")  # nothing changes
        assert typ == "OK"
        typ, silent = c.store("2", "-FLAGS.SILENT", "(\\Seen)")
        assert typ == "OK"
        c.logout()
        return first, again, silent

    first, again, silent = await run(go)
    want = {1: {"\\Seen"}, 2: {"\\Seen"}, 3: {"\\Flagged", "\\Seen"},
            4: {"\\Seen", "Work"}}
    assert _flags(first) == want
    assert _flags(again) == want  # unchanged messages are reported too
    assert silent == [None]
    rows = {m.uid: m for m in await imap_app.store.list_messages(fid)}
    assert {u: set(m.flags) for u, m in rows.items()} == {**want, 2: set()}
    # two committed changes (1, 3 in the first STORE; 2 in the silent one), one MODSEQ each
    assert (await imap_app.store.folder_status(fid)).highestmodseq == high + 2
    assert rows[4].modseq <= high and {rows[1].modseq, rows[3].modseq} == {high + 1}


async def test_store_on_readonly_refused(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, message("m"))

    def go() -> tuple[str, list[bytes]]:
        c = plain(imap_app)
        c.select("INBOX", readonly=True)
        typ, data = c.store("1", "+FLAGS", "(\\Deleted)")
        c.logout()
        return typ, data

    typ, data = await run(go)
    assert typ == "NO" and b"read-only" in data[0]
    assert [m.flags for m in await imap_app.store.list_messages(fid)] == [frozenset()]
