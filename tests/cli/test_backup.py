"""``mailstack backup`` / ``mailstack restore`` (docs/behaviour.md §10): a backup taken from
a running server, while mail keeps arriving, restores into a fresh data directory from
which a new server serves every message of the snapshot, byte for byte, with its flags
and folder, over IMAP. Refusals: a non-empty target, a database in use, PostgreSQL."""

from __future__ import annotations

import asyncio
import imaplib
import json
import re
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path

from mailstack.app import App
from mailstack.importer.secret import load_key
from tests.conftest import make_settings

from .conftest import Cli, make_cli, write_config

PASSWORD = "backup-secret-1"
ADDRESSES = ("anna@example.com", "bob@example.com")
Mailbox = dict[str, list[tuple[int, str, bytes]]]  # folder -> [(uid, flags, bytes)]


def send(port: int, to: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = "someone@remote.example"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"body of {subject}\n" * 20)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(msg)


def read_all(port: int, ctx: ssl.SSLContext, address: str) -> Mailbox:
    """Every folder's messages over IMAP: (UID, sorted flags, RFC822 bytes)."""
    out: Mailbox = {}
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=30) as imap:
        imap.login(address, PASSWORD)
        typ, lines = imap.list()
        assert typ == "OK"
        names = [re.search(rb'"([^"]*)"$', line).group(1).decode()  # type: ignore[union-attr]
                 for line in lines if isinstance(line, bytes)]
        for name in names:
            assert imap.select(f'"{name}"', readonly=True)[0] == "OK"
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            assert typ == "OK"
            msgs = []
            for item in data:
                if not isinstance(item, tuple):
                    continue
                head = item[0].decode()
                uid = int(re.search(r"UID (\d+)", head).group(1))  # type: ignore[union-attr]
                flags = re.search(r"FLAGS \(([^)]*)\)", head).group(1)  # type: ignore[union-attr]
                msgs.append((uid, " ".join(sorted(flags.split())), item[1]))
            out[name] = sorted(msgs)
    return out


async def start_app(tmp_path: Path, data_dir: Path, tls_files: tuple[Path, Path]) -> App:
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{data_dir / 'mailstack.db'}",
                             tls_files, server={"data_dir": str(data_dir)})
    app = App(settings)
    await app.start()
    return app


def cli_for(tmp_path: Path, name: str, data_dir: Path) -> Cli:
    config = write_config(tmp_path / f"{name}.toml", data_dir)
    work = tmp_path / f"cwd-{name}"
    work.mkdir(exist_ok=True)
    return Cli(config, work, "", data_dir)


async def test_backup_running_server_restore_and_read_back(
        tmp_path: Path, tls_files: tuple[Path, Path], client_ssl: ssl.SSLContext) -> None:
    source_dir, restored_dir, backup_dir = (tmp_path / "data", tmp_path / "restored",
                                            tmp_path / "backup")
    app = await start_app(tmp_path, source_dir, tls_files)
    restored: App | None = None
    try:
        assert app.store is not None and app.services is not None
        await app.store.add_domain("example.com", "standard")
        pw_hash = await app.services.passwords.hash(PASSWORD)
        for address in ADDRESSES:
            await app.store.add_address(address.split("@")[0], "example.com",
                                        password_hash=pw_hash)
        mx = app.ports["smtp"]
        for i in range(6):
            await asyncio.to_thread(send, mx, ADDRESSES[i % 2], f"before {i}")
        await asyncio.to_thread(send, mx, ", ".join(ADDRESSES), "to both")  # one blob

        def organise() -> None:  # flags and another folder survive too
            with imaplib.IMAP4_SSL("127.0.0.1", app.ports["imaps"], ssl_context=client_ssl,
                                   timeout=30) as imap:
                imap.login("anna@example.com", PASSWORD)
                imap.select("INBOX")
                imap.uid("STORE", "1", "+FLAGS", "(\\Flagged \\Seen)")
                imap.uid("MOVE", "2", "Archive")
        await asyncio.to_thread(organise)
        before = {a: await asyncio.to_thread(read_all, app.ports["imaps"], client_ssl, a)
                  for a in ADDRESSES}

        load_key(source_dir, create=True)  # as `mailstack import start` makes it

        # back up while mail keeps arriving
        source_cli = cli_for(tmp_path, "source", source_dir)
        stop = asyncio.Event()

        async def keep_sending() -> int:
            n = 0
            while not stop.is_set():
                await asyncio.to_thread(send, mx, ADDRESSES[n % 2], f"during {n}")
                n += 1
            return n
        sender = asyncio.create_task(keep_sending())
        r = await asyncio.to_thread(source_cli.ok, "backup", str(backup_dir))
        stop.set()
        await sender
        assert "message files" in r.out
        manifest = json.loads((backup_dir / "MANIFEST.json").read_text())
        assert manifest["messages"] >= 8 and manifest["format"] == 1
        assert "importer.key" in manifest["extra_files"]  # decrypts import passwords

        # refusals, each leaving things as they were
        r = await asyncio.to_thread(source_cli, "backup", str(backup_dir))
        assert r.code == 1 and "not empty" in r.err
        r = await asyncio.to_thread(source_cli, "restore", str(backup_dir))
        assert r.code == 1 and "--force" in r.err
        r = await asyncio.to_thread(source_cli, "restore", str(backup_dir), "--force")
        assert r.code == 1 and "in use" in r.err
        after = {a: await asyncio.to_thread(read_all, app.ports["imaps"], client_ssl, a)
                 for a in ADDRESSES}

        # restore into a fresh data directory and serve it
        target_cli = cli_for(tmp_path, "target", restored_dir)
        r = await asyncio.to_thread(target_cli.ok, "restore", str(backup_dir))
        assert f"{manifest['messages']} messages" in r.out
        r = await asyncio.to_thread(target_cli, "restore", str(backup_dir))
        assert r.code == 1 and "already holds" in r.err
        key = restored_dir / "importer.key"
        assert key.read_bytes() == (source_dir / "importer.key").read_bytes()
        assert key.stat().st_mode & 0o077 == 0
        restored = await start_app(tmp_path, restored_dir, tls_files)
        total = 0
        for address in ADDRESSES:
            got = await asyncio.to_thread(read_all, restored.ports["imaps"], client_ssl,
                                          address)
            assert set(got) == set(after[address])  # the same folders
            for folder, msgs in got.items():
                # everything acknowledged before the backup began is there, unchanged;
                # the rest is a prefix of what arrived during it (one snapshot moment)
                assert msgs[:len(before[address][folder])] == before[address][folder]
                assert msgs == after[address][folder][:len(msgs)]
                total += len(msgs)
        assert total == manifest["messages"]
        flagged = before["anna@example.com"]["INBOX"][0]
        assert flagged[1] == "\\Flagged \\Seen"
        assert len(before["anna@example.com"]["Archive"]) == 1
    finally:
        await app.stop(grace=0)
        if restored is not None:
            await restored.stop(grace=0)


def test_postgresql_says_pg_dump(tmp_path: Path) -> None:
    cli = make_cli(tmp_path, "postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    for args in (("backup", str(tmp_path / "b")), ("restore", str(tmp_path / "b"))):
        r = cli(*args)
        assert r.code == 1 and "pg_dump" in r.err, r
    assert not (tmp_path / "b").exists()


def test_restore_refuses_what_is_not_a_backup(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "mailstack.db").write_text("not a database")
    r = cli("restore", str(tmp_path / "junk"))
    assert r.code == 1 and "not a finished mailstack backup" in r.err
    assert not (cli.data_dir / "mailstack.db").exists()

