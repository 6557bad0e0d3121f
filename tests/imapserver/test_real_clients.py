"""Real client programs from Debian against the live server: mbsync (isync) syncing a
mailbox down to a local Maildir and back up unchanged, and curl fetching over imaps."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import pytest

from mailstack.app import App
from tests.imapserver.conftest import ADDR, MESSAGE, PW, folder_of, inbox_id, message

pytestmark = pytest.mark.skipif(not (shutil.which("mbsync") and shutil.which("curl")),
                                reason="mbsync and curl are needed")


async def _exec(*argv: str, cwd: Path | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=str(cwd) if cwd else None)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out, err


def _mbsyncrc(tmp: Path, port: int, cert: Path) -> Path:
    rc = tmp / "mbsyncrc"
    maildir = tmp / "Mail"
    maildir.mkdir()
    rc.write_text(f"""
IMAPAccount acc
Host localhost
Port {port}
User {ADDR}
Pass {PW}
SSLType IMAPS
CertificateFile {cert}

IMAPStore remote
Account acc

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel ch
Far :remote:
Near :local:
Patterns INBOX Sent
Create Both
Expunge Both
SyncState *
""")
    return rc


def _norm(data: bytes) -> bytes:
    """mbsync stores LF line ends locally and tags messages with X-TUID."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    return b"\n".join(x for x in lines if not x.startswith(b"X-TUID: "))


def _maildir_files(root: Path, folder: str) -> dict[str, bytes]:
    d = root / "Mail" / folder
    return {p.name: p.read_bytes() for sub in ("cur", "new") for p in (d / sub).glob("*")}


async def test_mbsync_down_and_back_up(imap_app: App, tmp_path: Path,
                                       tls_files: tuple[Path, Path]) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, MESSAGE, flags=["\\Seen"])
    await imap_app.store.append(fid, message("two", "x" * 5000), flags=["\\Flagged"])
    before = [(m.uid, m.flags, m.size) for m in await imap_app.store.list_messages(fid)]
    rc = _mbsyncrc(tmp_path, imap_app.ports["imaps"], tls_files[0])
    code, _out, err = await _exec("mbsync", "-c", str(rc), "-a")
    assert code == 0, err.decode()
    files = _maildir_files(tmp_path, "INBOX")
    assert sorted(_norm(v) for v in files.values()) == sorted(
        _norm(m) for m in (MESSAGE, message("two", "x" * 5000)))
    assert any(name.endswith(",S") for name in files) and any("F" in n.split(",")[-1]
                                                              for n in files)
    # a second run changes nothing on either side
    code, _out, err = await _exec("mbsync", "-c", str(rc), "-a")
    assert code == 0, err.decode()
    assert _maildir_files(tmp_path, "INBOX") == files
    after = [(m.uid, m.flags, m.size) for m in await imap_app.store.list_messages(fid)]
    assert after == before
    # a message written locally goes up unchanged
    new = tmp_path / "Mail" / "Sent" / "new"
    new.mkdir(parents=True, exist_ok=True)
    sent_msg = message("written offline")
    (new / "1700000000.1_1.host").write_bytes(sent_msg.replace(b"\r\n", b"\n"))
    code, _out, err = await _exec("mbsync", "-c", str(rc), "-a")
    assert code == 0, err.decode()
    sent = await imap_app.store.list_messages(await folder_of(imap_app, "Sent"))
    assert len(sent) == 1
    assert _norm(await imap_app.store.message_bytes(sent[0])) == _norm(sent_msg)


async def test_curl_fetches_over_imaps(imap_app: App, tls_files: tuple[Path, Path],
                                       client_ssl: ssl.SSLContext) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, MESSAGE)
    url = f"imaps://127.0.0.1:{imap_app.ports['imaps']}/INBOX;UID=1"
    code, out, err = await _exec("curl", "-sS", "--cacert", str(tls_files[0]), url,
                                 "-u", f"{ADDR}:{PW}")
    assert code == 0, err.decode()
    assert out == MESSAGE
    code, out, err = await _exec("curl", "-sS", "--cacert", str(tls_files[0]), url,
                                 "-u", f"{ADDR}:wrong")
    assert code != 0 and out == b""
