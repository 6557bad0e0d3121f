"""``mailstack user``: accounts with their own password, and grants on addresses
(docs/behaviour.md §2). Each refusal checks the exit code, the message and that nothing changed."""

from __future__ import annotations

from mailstack.store import Store
from tests.cli.conftest import Cli


async def users(store: Store) -> list[tuple[str, list[tuple[str, frozenset[str]]]]]:
    return await store.list_users()


def test_user_grant_and_revoke(cli: Cli) -> None:
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "shared@example.com")
    r = cli.ok("user", "add", "Boss@Remote.org", "--password-stdin",
               input="a long secret\n")
    assert "a long secret" not in r.both
    r = cli("user", "add", "boss@remote.org", "--password-stdin", input="another one\n")
    assert r.code == 1 and "exists" in r.err
    cli.ok("user", "grant", "boss@remote.org", "shared@example.com", "--perm", "read,send")
    assert cli.query(users) == [
        ("boss@remote.org", [("shared@example.com", frozenset({"read", "send"}))])]
    out = cli.ok("user", "list").out
    assert "boss@remote.org" in out and "shared@example.com (read,send)" in out

    # refusals change nothing
    r = cli("user", "grant", "boss@remote.org", "shared@example.com", "--perm", "root")
    assert r.code == 1 and "unknown permission root" in r.err
    r = cli("user", "grant", "nobody@remote.org", "shared@example.com", "--perm", "read")
    assert r.code == 1 and "no user" in r.err
    r = cli("user", "grant", "boss@remote.org", "ghost@example.com", "--perm", "read")
    assert r.code == 1 and "no address" in r.err
    r = cli("user", "add", "bad login@x.org", "--password-stdin", input="long enough\n")
    assert r.code == 1 and "position 4" in r.err
    assert len(cli.query(users)) == 1

    cli.ok("user", "revoke", "boss@remote.org", "shared@example.com")
    assert cli.query(users) == [("boss@remote.org", [])]
    r = cli("user", "revoke", "boss@remote.org", "shared@example.com")
    assert r.code == 1 and "holds no grant" in r.err


def test_gc_command(cli: Cli) -> None:
    import os
    import time

    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com")

    async def add_and_expunge(store: Store) -> str:
        a = await store.get_address("anna@example.com")
        assert a is not None
        inbox = await store.get_folder(a.id, "INBOX")
        assert inbox is not None
        m = await store.append(inbox.id, b"Subject: x\r\n\r\ny\r\n")
        await store.expunge(inbox.id, [m.uid], only_deleted=False)
        path = store.blobs.path_of(m.blob_id)
        os.utime(path, (time.time() - 7200,) * 2)
        return str(path)

    path = cli.query(add_and_expunge)
    r = cli("gc", "--min-age", "5")
    assert r.code == 1 and "at least 60" in r.err and os.path.exists(path)
    assert cli.ok("gc").out.startswith("1 unreferenced")
    assert not os.path.exists(path)
