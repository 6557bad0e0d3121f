"""Hostile input (docs/behaviour.md §12) against the live IMAP server: every case is answered
cleanly, nothing is stored, and the server keeps serving another client."""

from __future__ import annotations

import ssl

from mailstack.app import App
from tests.imapserver.conftest import MESSAGE, Raw, folder_of, inbox_id


async def still_serving(app: App) -> None:
    other = await Raw.connect(app.ports["imap"])
    await other.login()
    out = await other.cmd(b"s", b"SELECT INBOX")
    assert out[-1].startswith(b"s OK")
    await other.close()


async def test_huge_literal_before_login_refused_before_reading(imap_app: App) -> None:
    raw = await Raw.connect(imap_app.ports["imap"])
    # RFC 9051 §7.5: no "+" continuation, so the client never sends the data.
    await raw.send(b"a LOGIN {4294967295}\r\n")
    line = await raw.line()
    assert line.startswith(b"a NO [TOOBIG]"), line
    # the session is still usable
    assert (await raw.cmd(b"b", b"NOOP"))[-1].startswith(b"b OK")
    # a non-synchronizing huge literal: BAD and the connection is closed (RFC 7888 §4)
    await raw.send(b"c LOGIN {999999999+}\r\n")
    assert (await raw.line()).startswith(b"c BAD [TOOBIG]")
    assert (await raw.line()).startswith(b"* BYE")
    await raw.close()
    await still_serving(imap_app)


async def test_small_literal_before_login_is_fine(imap_app: App) -> None:
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.send(b"a LOGIN {16}\r\n")
    assert (await raw.line()).startswith(b"+ ")
    await raw.send(b'anna@example.com "secret-pw"\r\n')
    out = await raw.until(b"a")
    assert out[-1].startswith(b"a OK"), out
    await raw.close()


async def test_ten_megabyte_line(imap_app: App) -> None:
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.send(b"a SEARCH SUBJECT " + b"x" * (10 * 1024 * 1024) + b"\r\n")
    line = await raw.line()
    assert line.startswith(b"* BAD"), line[:100]
    assert (await raw.cmd(b"b", b"NOOP"))[-1].startswith(b"b OK")
    await raw.close()
    await still_serving(imap_app)


async def test_deep_search_nesting(imap_app: App) -> None:
    fid = await inbox_id(imap_app)
    assert imap_app.store is not None
    await imap_app.store.append(fid, MESSAGE)
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    deep = b"(" * 5000 + b"ALL" + b")" * 5000
    out = await raw.cmd(b"a", b"SEARCH " + deep)
    assert out[-1].startswith(b"a BAD"), out[-1][:80]
    nots = b"NOT " * 5000 + b"ALL"
    out = await raw.cmd(b"b", b"SEARCH " + nots)
    assert out[-1].startswith(b"b BAD")
    ok = await raw.cmd(b"c", b"SEARCH " + b"(" * 10 + b"ALL" + b")" * 10)
    assert ok == [b"* SEARCH 1\r\n", ok[-1]] and ok[-1].startswith(b"c OK")
    await raw.close()
    await still_serving(imap_app)


async def test_nul_in_quoted_string_and_big_numbers(imap_app: App) -> None:
    raw = await Raw.connect(imap_app.ports["imap"])
    out = await raw.cmd(b"a", b'LOGIN "anna@example.com\x00" "x"')
    assert out[-1].startswith(b"a BAD")
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    for tag, cmd in ((b"b", b"UID FETCH 4294967296 FLAGS"), (b"c", b"FETCH 99999999999 FLAGS"),
                     (b"d", b"UID FETCH 1:4294967296 FLAGS")):
        out = await raw.cmd(tag, cmd)
        assert out[-1].startswith(tag + b" BAD"), out
    out = await raw.cmd(b"e", b"UID FETCH 4294967295 FLAGS")  # the largest UID: fine
    assert out[-1].startswith(b"e OK")
    out = await raw.cmd(b"f", b"FETCH 5 FLAGS")  # no message 5 in an empty mailbox
    assert out[-1].startswith(b"f BAD")
    await raw.close()
    await still_serving(imap_app)


async def test_mailbox_names_as_paths_and_sql(imap_app: App) -> None:
    assert imap_app.store is not None
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    before = await raw.cmd(b"l0", b'LIST "" "*"')
    for tag, name in ((b"a", b'"../../x"'), (b"b", b'"a//b"'), (b"c", b'"."'),
                      (b"d", b'"/etc"'), (b"e", b'"x\x01y"')):
        out = await raw.cmd(tag, b"CREATE " + name)
        assert out[-1].startswith(tag + b" NO") or out[-1].startswith(tag + b" BAD"), out
    after = await raw.cmd(b"l1", b'LIST "" "*"')
    assert before[:-1] == after[:-1]
    # SQL and LIKE characters are plain characters
    for tag, name in ((b"f", b"\"x'; DROP TABLE messages; --\""), (b"g", b'"100%_off"')):
        assert (await raw.cmd(tag, b"CREATE " + name))[-1].startswith(tag + b" OK")
    out = await raw.cmd(b"h", b'LIST "" "100%_off"')
    assert [x for x in out if x.startswith(b"* LIST")] == [
        b'* LIST (\\HasNoChildren) "/" "100%_off"\r\n']
    out = await raw.cmd(b"i", b'LIST "" "1_0%"')  # "_" is not a wildcard
    assert not [x for x in out if x.startswith(b"* LIST")]
    fid = await folder_of(imap_app, "x'; DROP TABLE messages; --")
    await imap_app.store.append(fid, MESSAGE)
    await raw.cmd(b"s", b"SELECT \"x'; DROP TABLE messages; --\"")
    for tag, crit in ((b"j", b'SUBJECT "%"'), (b"k", b'SUBJECT "_ello"'),
                      (b"l", b"SUBJECT \"'; DELETE FROM messages; --\"")):
        out = await raw.cmd(tag, b"SEARCH " + crit)
        assert out[0] == b"* SEARCH\r\n" and out[-1].startswith(tag + b" OK"), out
    out = await raw.cmd(b"m", b'SEARCH SUBJECT "hello THERE"')
    assert out[0] == b"* SEARCH 1\r\n"
    await raw.close()


async def test_starttls_discards_pipelined_plaintext(imap_app: App,
                                                     client_ssl: ssl.SSLContext) -> None:
    """CVE-2011-0411 class: commands pipelined after STARTTLS must never run."""
    assert imap_app.store is not None
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.send(b"a STARTTLS\r\nb LOGIN anna@example.com secret-pw\r\n"
                   b'c CREATE "Injected"\r\n')
    assert (await raw.line()).startswith(b"a OK")
    await raw.writer.start_tls(client_ssl, server_hostname="mail.example.net")
    out = await raw.cmd(b"d", b"NOOP")
    assert out == [out[-1]] and out[-1].startswith(b"d OK")  # nothing from b or c
    out = await raw.cmd(b"e", b"CREATE Other")
    assert out[-1].startswith(b"e BAD")  # still not authenticated
    await raw.close()
    addr = await imap_app.store.get_address("anna@example.com")
    assert addr is not None
    assert await imap_app.store.get_folder(addr.id, "Injected") is None


async def test_login_disabled_before_tls(app_factory, client_ssl: ssl.SSLContext) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import add_mailbox
    app = await app_factory(server={"allow_plaintext_auth_on_loopback": False})
    await add_mailbox(app, "anna@example.com", "secret-pw")
    raw = await Raw.connect(app.ports["imap"])
    caps = await raw.cmd(b"a", b"CAPABILITY")
    assert b"LOGINDISABLED" in caps[0] and b"STARTTLS" in caps[0]
    assert b"AUTH=PLAIN" not in caps[0]
    out = await raw.cmd(b"b", b"LOGIN anna@example.com secret-pw")
    assert out[-1].startswith(b"b NO [PRIVACYREQUIRED]")
    out = await raw.cmd(b"c", b"AUTHENTICATE PLAIN AGFubmFAZXhhbXBsZS5jb20Ac2VjcmV0LXB3")
    assert out[-1].startswith(b"c NO [PRIVACYREQUIRED]")
    assert (await raw.cmd(b"d", b"STARTTLS"))[-1].startswith(b"d OK")
    await raw.writer.start_tls(client_ssl, server_hostname="mail.example.net")
    caps = await raw.cmd(b"e", b"CAPABILITY")
    assert b"LOGINDISABLED" not in caps[0] and b"STARTTLS" not in caps[0]
    assert (await raw.cmd(b"f", b"LOGIN anna@example.com secret-pw"))[-1].startswith(b"f OK")
    await raw.close()
