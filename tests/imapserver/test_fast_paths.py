"""The IMAP fast paths answer exactly what the general evaluator answers.

- SEARCH on system flags only goes to SQL; other metadata keys are decided from the
  rows; content keys load only the undecided messages' content in batches (header
  block only for header keys). Each query below is checked against the truth computed
  here from the data, and against forms of the same query that force the slower paths
  (``OR k k`` skips the SQL path; ``OR k BODY <nothing>`` forces full content loading).
- ``FETCH 1:* (FLAGS UID ...)`` renders from rows; adding ENVELOPE forces the general
  path, whose line must start with the same bytes.
- Structures computed by a FETCH are cached (one write per command) and a damaged cache
  entry is re-parsed.
Batch sizes are made tiny so several batches run.
"""

from __future__ import annotations

import base64
import re

import pytest

from mailstack import mime
from mailstack.app import App
from mailstack.imap import fetch as fetch_mod
from mailstack.imap import respond, search_exec
from mailstack.store import DeliveryTarget, flagcache
from tests.imapserver.conftest import Raw, inbox_id, seen_as_recent

N = 30
DAY = 86400.0
BASE = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def _msg(i: int) -> bytes:
    subject = f"topic{i % 4} number {i}"
    if i % 5 == 0:  # RFC 2047 encoded word: matched decoded
        subject = "=?utf-8?b?" + base64.b64encode(f"Grüße topic{i % 4}".encode()).decode() + "?="
    body = f"plain body {i}" + (" needle" if i % 3 == 0 else "")
    headers = (f"From: sender{i % 3}@example.org\r\nTo: anna@example.com\r\n"
               f"Subject: {subject}\r\nDate: Tue, {1 + i % 7} Jan 2024 10:00:00 +0000\r\n"
               f"Message-ID: <m{i}@example.org>\r\n")
    if i % 4 == 1:  # base64 text part: BODY matches decoded text
        return (headers + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n"
                + base64.b64encode(body.encode()).decode() + "\r\n").encode()
    return (headers + "\r\n" + body + "\r\n" + "x" * (i * 40) + "\r\n").encode()


def _flags(i: int) -> list[str]:
    out = []
    if i % 2:
        out.append("\\Seen")
    if i % 3 == 0:
        out.append("\\Flagged")
    if i % 7 == 2:
        out.append("\\Deleted")
    if i % 4 == 3:
        out.append("$Work")
    return out


@pytest.fixture(autouse=True)
def _small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_exec, "_BATCH", 4)
    monkeypatch.setattr(fetch_mod, "BATCH", 3)


async def _fill(app: App) -> int:
    assert app.store is not None
    fid = await inbox_id(app)
    for i in range(N):
        data = _msg(i)
        blob = await app.store.put_blob(data)
        prefix = b"Delivered-To: anna@example.com\r\n" if i % 2 == 0 else b""
        await app.store.deliver(blob, len(data), [DeliveryTarget(fid, prefix,
                                                                 frozenset(_flags(i)))],
                                internal_date=BASE + i * DAY)
    await seen_as_recent(app)
    return fid


def _numbers(lines: list[bytes]) -> list[int]:
    for line in lines:
        if line.startswith(b"* SEARCH"):
            return [int(x) for x in line.split()[2:]]
    raise AssertionError(lines)


def _size(i: int) -> int:
    data = _msg(i)
    return len(data) + (len(b"Delivered-To: anna@example.com\r\n") if i % 2 == 0 else 0)


TRUTH = {
    b"UNSEEN": lambda i: i % 2 == 0,
    b"SEEN FLAGGED": lambda i: i % 2 == 1 and i % 3 == 0,
    b"UNDELETED UNFLAGGED": lambda i: i % 7 != 2 and i % 3 != 0,
    b"NOT SEEN NOT DELETED": lambda i: i % 2 == 0 and i % 7 != 2,
    b"ALL": lambda i: True,
    b"OLD": lambda i: True,
    b"NEW": lambda i: False,
    b"KEYWORD $work": lambda i: i % 4 == 3,
    b"UNKEYWORD $Work SEEN": lambda i: i % 4 != 3 and i % 2 == 1,
    b"LARGER 600": lambda i: _size(i) > 600,
    b"SINCE 20-Nov-2023": lambda i: i >= 6,
    b"BEFORE 16-Nov-2023 UNSEEN": lambda i: i < 2 and i % 2 == 0,
    b"UID 3:7,20:*": lambda i: 3 <= i + 1 <= 7 or i + 1 >= 20,
    b"2,4,6:8 SEEN": lambda i: (i + 1 in (2, 4) or 6 <= i + 1 <= 8) and i % 2 == 1,
    b"SUBJECT topic1": lambda i: i % 4 == 1,
    b"SUBJECT \"gr\xc3\xbc\xc3\x9fe\"": lambda i: i % 5 == 0,
    b"FROM sender2 UNSEEN": lambda i: i % 3 == 2 and i % 2 == 0,
    b"HEADER Delivered-To anna": lambda i: i % 2 == 0,
    b"BODY needle": lambda i: i % 3 == 0,
    b"TEXT needle FLAGGED": lambda i: i % 3 == 0,
    b"TEXT sender1": lambda i: i % 3 == 1,
    b"OR SUBJECT topic2 BODY needle": lambda i: i % 4 == 2 or i % 3 == 0,
    b"NOT SUBJECT topic0 SEEN": lambda i: i % 4 != 0 and i % 2 == 1,
    b"SENTON 3-Jan-2024": lambda i: i % 7 == 2,
    b"SENTBEFORE 3-Jan-2024 DELETED": lambda i: i % 7 < 2 and i % 7 == 2,
}


@pytest.mark.parametrize("kept", [False, True], ids=["read", "kept"])
async def test_search_paths_agree_with_truth(imap_app: App, kept: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flagcache, "MIN_ROWS", 5 if kept else 10**9)  # store/flagcache.py
    await _fill(imap_app)
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    for n, (key, truth) in enumerate(TRUTH.items()):
        tag = b"q%d" % n
        prefix = b"SEARCH CHARSET UTF-8 " if b"\xc3" in key else b"SEARCH "
        got = _numbers(await raw.cmd(tag, prefix + key))
        expected = [i + 1 for i in range(N) if truth(i)]
        assert got == expected, (key, got, expected)
        forced = [b"OR (" + key + b") (" + key + b")",
                  b"OR (" + key + b") BODY no-such-text-anywhere"]
        for m, form in enumerate(forced):
            got2 = _numbers(await raw.cmd(tag + b"f%d" % m, prefix + form))
            assert got2 == expected, (form, got2, expected)
    await raw.close()


async def test_search_skips_messages_expunged_meanwhile(imap_app: App) -> None:
    fid = await _fill(imap_app)
    assert imap_app.store is not None
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    gone = await imap_app.store.expunge(fid)  # another session's EXPUNGE (\Deleted ones)
    assert gone == [i + 1 for i in range(N) if i % 7 == 2]
    out = await raw.cmd(b"a", b"SEARCH BODY needle")  # EXPUNGE not sent during SEARCH
    assert _numbers(out) == [i + 1 for i in range(N) if i % 3 == 0 and i % 7 != 2]
    out = await raw.cmd(b"b", b"UID SEARCH DELETED")
    assert [x for x in out if x.startswith(b"* SEARCH")] == [b"* SEARCH\r\n"]
    await raw.close()


async def test_fetch_row_path_matches_general_path(imap_app: App) -> None:
    await _fill(imap_app)
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    out = await raw.cmd(b"s", b"SELECT INBOX")
    assert b"* OK [UNSEEN 1] First unseen\r\n" in out
    fast = [x for x in await raw.cmd(b"a", b"FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)")
            if x.startswith(b"* ")]
    slow = [x for x in await raw.cmd(
        b"b", b"FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE)") if x.startswith(b"* ")]
    assert len(fast) == len(slow) == N
    for f, s in zip(fast, slow, strict=True):
        assert s.startswith(f[:-3] + b" ENVELOPE ("), (f, s)
    sizes = [re.findall(rb"RFC822.SIZE (\d+)", f) for f in fast]
    assert sizes == [[b"%d" % _size(i)] for i in range(N)]
    uid_fast = [x for x in await raw.cmd(b"c", b"UID FETCH 5:9 FLAGS") if x.startswith(b"* ")]
    assert uid_fast == [b"* %d FETCH (UID %d FLAGS %s)\r\n" % (
        u, u, respond.flag_list(_flags(u - 1)).encode()) for u in range(5, 10)]
    await raw.close()


def _lines(out: list[bytes]) -> list[bytes]:
    return [x for x in out if x.startswith(b"* ") and b" FETCH (" in x]


@pytest.mark.parametrize("kept", [False, True], ids=["read", "kept"])
async def test_flag_lines_match_row_path(imap_app: App, kept: bool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """FETCH of only UID/FLAGS/MODSEQ (narrow rows, one format per message) answers
    byte for byte what the metadata row path answers (RFC822.SIZE added forces it):
    any item order, part of the view, \\Recent of an IMAP4rev1 session, CHANGEDSINCE,
    and a view still holding messages another session expunged. ``kept``: the rows
    come from the flags kept in memory (store/flagcache.py), as for a big folder."""
    monkeypatch.setattr(flagcache, "MIN_ROWS", 5 if kept else 10**9)
    fid = await _fill(imap_app)
    assert imap_app.store is not None
    for i in (N, N + 1):  # new, so \Recent for the session below
        data = _msg(i)
        await imap_app.store.deliver(await imap_app.store.put_blob(data), len(data),
                                     [DeliveryTarget(fid, b"", frozenset(_flags(i)))])
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    changed = _lines(await raw.cmd(b"t", b"STORE 4,9 +FLAGS.SILENT ($Late)"))
    assert changed == []
    size = re.compile(rb" RFC822\.SIZE \d+")
    commands = [b"FETCH 1:* (FLAGS UID)", b"UID FETCH 3:20 (MODSEQ FLAGS)",
                b"FETCH 2,5:7,31:* (UID MODSEQ FLAGS)", b"FETCH 32 (FLAGS)",
                b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 31)"]

    async def agree(commands: list[bytes]) -> None:
        for n, command in enumerate(commands):
            fast = _lines(await raw.cmd(b"f%d" % n, command))
            slow = [size.sub(b"", x) for x in _lines(await raw.cmd(
                b"g%d" % n, command.replace(b"FLAGS", b"FLAGS RFC822.SIZE", 1)))]
            assert fast == slow, (command, fast, slow)
            assert fast and all(b"FLAGS (" in x for x in fast)

    await agree(commands)
    gone = await imap_app.store.expunge(fid)  # not told to this session until a UID
    assert gone  # command or NOOP (FETCH by number must not, RFC 9051 §7.5.1)
    await agree([c for c in commands if not c.startswith(b"UID")])
    full = _lines(await raw.cmd(b"h", b"FETCH 1:* (UID FLAGS)"))
    assert len(full) == N + 2 - len(gone)  # expunged ones skipped, numbers unchanged
    by_uid = {int(x.split()[4]): x for x in full}
    assert b"\\Recent" in by_uid[N + 2] and b"\\Recent" not in by_uid[1]
    assert b"$Late" in by_uid[4] and 3 not in by_uid
    assert (imap_app.store.flag_cache.since(fid) is not None) == kept
    await raw.close()


@pytest.mark.parametrize("command", [b"FETCH 1:* (UID FLAGS)", b"FETCH 1:* FLAGS",
                                     b"UID FETCH 1:* (FLAGS MODSEQ)",
                                     b"FETCH 2:4 (FLAGS RFC822.SIZE INTERNALDATE EMAILID)"])
async def test_metadata_fetch_never_loads_message_records(
        imap_app: App, monkeypatch: pytest.MonkeyPatch, command: bytes) -> None:
    """Metadata-only FETCH (FLAGS included) takes the row path: no Message records, no
    blobs. (A shadowed item set once sent FLAGS down the general path: 4.8x slower.)"""
    await _fill(imap_app)
    assert imap_app.store is not None
    calls: list[str] = []
    real_get, real_read = imap_app.store.get_messages, imap_app.store.read_messages

    async def get_messages(*a: object, **kw: object) -> object:
        calls.append("get_messages")
        return await real_get(*a, **kw)  # type: ignore[arg-type]

    async def read_messages(*a: object, **kw: object) -> object:
        calls.append("read_messages")
        return await real_read(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(imap_app.store, "get_messages", get_messages)
    monkeypatch.setattr(imap_app.store, "read_messages", read_messages)
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    # (MODSEQ enables CONDSTORE: "* OK [HIGHESTMODSEQ n]" first, RFC 7162 §3.1)
    out = [x for x in await raw.cmd(b"a", command)
           if x.startswith(b"* ") and not x.startswith(b"* OK [HIGHESTMODSEQ ")]
    assert out and all(b" FETCH (" in x and b"FLAGS (" in x for x in out)
    assert calls == []
    await raw.close()


async def test_structures_cached_in_bulk_and_damage_reparsed(imap_app: App) -> None:
    fid = await _fill(imap_app)
    assert imap_app.store is not None
    store = imap_app.store
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    first = await raw.cmd(b"a", b"FETCH 1:* (BODYSTRUCTURE)")
    rows = await store.message_rows(fid)
    cached = await store.cached_structures([r.id for r in rows])
    assert all(cached[r.id][0] == fetch_mod.CACHE_VERSION for r in rows)
    await store.set_cached_structures([(rows[0].id, fetch_mod.CACHE_VERSION, "{broken")])
    second = await raw.cmd(b"b", b"FETCH 1:* (BODYSTRUCTURE)")
    assert first[:-1] == second[:-1] and second[-1].startswith(b"b OK")
    again = await store.cached_structures([rows[0].id])
    assert again[rows[0].id][1] != "{broken"
    hdr = await raw.cmd(b"c", b"FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert hdr[1] == b"Subject: topic1 number 1\r\n"
    await raw.close()


def _literals(lines: list[bytes], name: bytes) -> list[bytes]:
    blob = b"".join(lines)
    out = []
    for m in re.finditer(re.escape(name) + rb" \{(\d+)\}\r\n", blob):
        out.append(blob[m.end():m.end() + int(m.group(1))])
    return out


async def test_header_fields_without_structure_match_general_sections(imap_app: App) -> None:
    await _fill(imap_app)
    full = [(b"Delivered-To: anna@example.com\r\n" if i % 2 == 0 else b"") + _msg(i)
            for i in range(N)]
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    for text, fields in (("HEADER.FIELDS", ("SUBJECT", "FROM", "DELIVERED-TO")),
                         ("HEADER.FIELDS.NOT", ("SUBJECT", "TO"))):
        name = f"BODY[{text} ({' '.join(fields)})]".encode()
        want = [mime.section_bytes(d, mime.parse_message(d), (), text, fields) for d in full]
        for n, extra in enumerate((b"", b" BODYSTRUCTURE", b" BODY.PEEK[TEXT]")):
            cmd = b"FETCH 1:* (BODY.PEEK[" + name[5:] + extra + b")"
            out = await raw.cmd(b"h%d" % n, cmd)
            assert out[-1].startswith(b"h%d OK" % n), out[-1]
            assert _literals(out, name) == want, (cmd, text)
    await raw.close()


async def test_header_search_reads_long_headers_across_chunks(imap_app: App) -> None:
    """A header block longer than one read chunk, with the blank line split between
    the per-copy prefix and the blob in the second message."""
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    long_value = " ".join(f"w{i}" for i in range(12000)) + " tail-marker"
    first = (f"Subject: long one\r\nX-Long: {long_value}\r\n\r\nbody tail-marker\r\n").encode()
    second = b"\r\nSubject: not a header, this is the body\r\n"
    for data, prefix in ((first, b""), (second, b"Subject: prefix only\r\n")):
        blob = await imap_app.store.put_blob(data)
        await imap_app.store.deliver(blob, len(data), [DeliveryTarget(fid, prefix)])
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    assert _numbers(await raw.cmd(b"a", b"SEARCH HEADER X-Long tail-marker")) == [1]
    assert _numbers(await raw.cmd(b"b", b"SEARCH SUBJECT body")) == []
    assert _numbers(await raw.cmd(b"c", b"SEARCH SUBJECT prefix")) == [2]
    assert _numbers(await raw.cmd(b"d", b"SEARCH TEXT tail-marker")) == [1]
    out = await raw.cmd(b"e", b"FETCH 1:2 (BODY.PEEK[HEADER.FIELDS (X-LONG SUBJECT)])")
    want = [mime.header_fields(first, ("X-LONG", "SUBJECT")),
            mime.header_fields(b"Subject: prefix only\r\n" + second, ("X-LONG", "SUBJECT"))]
    assert _literals(out, b"BODY[HEADER.FIELDS (X-LONG SUBJECT)]") == want
    await raw.close()
