"""Dev mode as a new user meets it: the generated certificate names localhost (DNS),
127.0.0.1 and ::1 (IP), so curl, fetchmail, isync and offlineimap accept the host they
are given;
``mailstack client-settings`` prints the host and the ports actually in use."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailstack.app import App
from mailstack.tls import cert_names, ensure_self_signed, load_first_cert
from tests.cli.conftest import cli_env, toml_str
from tests.conftest import add_mailbox

from .conftest import ADDR


def test_dev_certificate_names(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    assert ensure_self_signed(cert, key, "mail.example.net")
    c = load_first_cert(cert)
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"mail.example.net", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert not ensure_self_signed(cert, key, "mail.example.net")  # kept as it is


def _self_signed(cert: Path, key: Path, names: list[x509.GeneralName], issuer: str) -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    c = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.net")]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(k.public_key()).serial_number(1).not_valid_before(now)
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.SubjectAlternativeName(names), critical=False)
         .sign(k, hashes.SHA256()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))


def test_old_dev_certificate_is_replaced_real_one_never(tmp_path: Path) -> None:
    """An older dev certificate (127.0.0.1 only, no ::1) is regenerated; a certificate
    issued by someone else is never touched."""
    old = [x509.DNSName("mail.example.net"), x509.DNSName("localhost"),
           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    _self_signed(cert, key, old, issuer="mail.example.net")
    assert ensure_self_signed(cert, key, "mail.example.net")
    assert "::1" in cert_names(load_first_cert(cert))
    real_cert, real_key = tmp_path / "rc.pem", tmp_path / "rk.pem"
    _self_signed(real_cert, real_key, old, issuer="Some CA")
    before = real_cert.read_bytes()
    assert not ensure_self_signed(real_cert, real_key, "mail.example.net")
    assert real_cert.read_bytes() == before


CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_curl_trusts_dev_certificate(app_factory: Callable[..., Any],
                                           tls_files: tuple[Path, Path], tmp_path: Path,
                                           host: str) -> None:
    """``curl --cacert`` (host name verification on) against IMAPS, SMTPS and POP3S."""
    app: App = await app_factory()
    await add_mailbox(app, ADDR)
    cert = str(tls_files[0])
    mail = tmp_path / "m.eml"
    mail.write_bytes(b"From: <anna@example.com>\r\nTo: <anna@example.com>\r\n"
                     b"Subject: curl\r\n\r\nhello\r\n")

    async def curl(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--cacert", cert, "--user", f"{ADDR}:secret", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    p = app.ports
    await curl(f"smtps://{host}:{p['submissions']}", "--mail-from", ADDR,
               "--mail-rcpt", ADDR, "--upload-file", str(mail))
    listing = await curl(f"imaps://{host}:{p['imaps']}/")
    assert "INBOX" in listing
    assert "curl" in await curl(f"imaps://{host}:{p['imaps']}/INBOX;UID=1")
    assert re.search(r"^1 \d+", await curl(f"pop3s://{host}:{p['pop3s']}/"), re.M)
    # and the HTTPS listener presents the same certificate
    assert "clientConfig" in await curl(
        f"https://{host}:{p['https']}/mail/config-v1.1.xml?emailaddress={ADDR}")


def write_config(path: Path, app: App) -> Path:
    s = app.settings
    path.write_text(
        f"[server]\ndata_dir = {toml_str(str(s.data_dir))}\n"
        f"database_url = {toml_str(s.database_url)}\n"
        "[web]\nadvertised_hostname = \"localhost\"\n", encoding="utf-8")
    return path


async def client_settings(config: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailstack", "--config", str(config), "client-settings",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=cli_env())
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def printed(out: str, label: str) -> tuple[str, int]:
    m = re.search(rf"{label}.*server (\S+)  port (\d+)  security SSL/TLS", out)
    assert m, out
    return m.group(1), int(m.group(2))


async def test_client_settings_dev_flag(app_factory: Callable[..., Any],
                                        tmp_path: Path) -> None:
    app: App = await app_factory()
    await add_mailbox(app, ADDR)
    config = tmp_path / "c.toml"
    config.write_text(f"[server]\ndata_dir = {toml_str(str(tmp_path / 'other'))}\n"
                      f"database_url = {toml_str(app.settings.database_url)}\n")
    out = await client_settings(config, ADDR, "--dev")
    assert printed(out, r"Incoming \(IMAP") == ("localhost", 10993)
    assert printed(out, r"Outgoing \(SMTP") == ("localhost", 10465)
    assert printed(out, r"Incoming \(POP3") == ("localhost", 10995)
    out = await client_settings(config, ADDR)
    assert printed(out, r"Incoming \(IMAP") == ("mail.example.net", 993)


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail is not installed")
async def test_client_settings_prints_ports_in_use_and_clients_use_them(
        app_factory: Callable[..., Any], tls_files: tuple[Path, Path],
        tmp_path: Path) -> None:
    """A running server records its ports; client-settings prints them with the host a
    client should use, and fetchmail and mbsync (isync), given exactly those and the
    certificate, with certificate checking on, fetch the mail."""
    app: App = await app_factory(web={"advertised_hostname": "localhost"})
    await add_mailbox(app, ADDR)
    assert app.store is not None
    inbox = next(f for f in await app.store.list_folders(
        (await app.store.get_address(ADDR)).id) if f.name == "INBOX")  # type: ignore[union-attr]
    await app.store.append(inbox.id, b"From: a@example.org\r\nSubject: fm\r\n\r\nhi\r\n")
    out = await client_settings(write_config(tmp_path / "c.toml", app), ADDR)
    assert "ports of the server running now" in out
    host, port = printed(out, r"Incoming \(POP3")
    assert (host, port) == ("localhost", app.ports["pop3s"])
    assert printed(out, r"Incoming \(IMAP") == ("localhost", app.ports["imaps"])

    home = tmp_path / "home"
    (home / "out").mkdir(parents=True)
    mda = home / "mda.sh"
    mda.write_text(f'#!/bin/sh\ncat > "$(mktemp {home}/out/mail.XXXXXX)"\n')
    mda.chmod(0o755)
    rc = home / "fetchmailrc"
    rc.write_text(f'poll {host} with proto POP3 port {port}\n'
                  f'  user "{ADDR}" there with password "secret"\n')
    rc.chmod(stat.S_IRUSR | stat.S_IWUSR)
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    proc = await asyncio.create_subprocess_exec(
        "fetchmail", "--fetchmailrc", str(rc), "--idfile", str(home / "ids"), "-N",
        "--nosyslog", "--keep", "--ssl", "--sslcertck", "--sslcertfile", str(tls_files[0]),
        "--mda", str(mda), "-v", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env)
    log, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, log.decode()
    assert any(b"Subject: fm" in p.read_bytes() for p in (home / "out").glob("mail.*"))

    if shutil.which("mbsync"):  # isync, with the printed IMAP host and port
        imap_host, imap_port = printed(out, r"Incoming \(IMAP")
        maildir = home / "Mail"
        maildir.mkdir()
        mbrc = home / "mbsyncrc"
        mbrc.write_text(f"IMAPAccount a\nHost {imap_host}\nPort {imap_port}\nUser {ADDR}\n"
                        f"Pass secret\nSSLType IMAPS\nCertificateFile {tls_files[0]}\n\n"
                        "IMAPStore r\nAccount a\n\n"
                        f"MaildirStore l\nPath {maildir}/\nInbox {maildir}/INBOX\n\n"
                        "Channel c\nFar :r:\nNear :l:\nPatterns INBOX\nCreate Near\n"
                        "SyncState *\n")
        mb = await asyncio.create_subprocess_exec(
            "mbsync", "-c", str(mbrc), "-a", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env)
        mlog, _ = await asyncio.wait_for(mb.communicate(), 60)
        assert mb.returncode == 0, mlog.decode()
        assert any(b"Subject: fm" in p.read_bytes()
                   for p in (maildir / "INBOX").glob("*/*"))
    await app.stop()
    assert not (app.settings.data_dir / "listening.json").exists()


def test_client_settings_without_running_server(tmp_path: Path) -> None:
    """A record left by a process that is gone is ignored."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "listening.json").write_text('{"pid": 999999999, "hostname": "x", '
                                         '"ports": {"imaps": 1}}')
    config = tmp_path / "c.toml"
    config.write_text(f"[server]\ndata_dir = {toml_str(str(data))}\n")
    env = cli_env()
    subprocess.run([sys.executable, "-m", "mailstack", "--config", str(config), "domain",
                    "add", "example.com"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "mailstack", "--config", str(config), "address",
                    "add", ADDR], env=env, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "mailstack", "--config", str(config),
                          "client-settings", ADDR], env=env, check=True, capture_output=True,
                         text=True).stdout
    assert printed(out, r"Incoming \(IMAP") == ("mail.example.net", 993)
    assert "running now" not in out


def test_reload_refuses_a_mismatched_pair_and_keeps_the_live_certificate(
        tmp_path: Path) -> None:
    import ssl

    from mailstack.tls import reload_context, server_context

    a_cert, a_key = tmp_path / "a.pem", tmp_path / "ak.pem"
    b_cert, b_key = tmp_path / "b.pem", tmp_path / "bk.pem"
    ensure_self_signed(a_cert, a_key, "a.example")
    ensure_self_signed(b_cert, b_key, "b.example")
    ctx = server_context(a_cert, a_key)
    with pytest.raises(ssl.SSLError):
        reload_context(ctx, b_cert, a_key)  # certificate and key do not belong together
    client = ssl.create_default_context(cafile=str(a_cert))
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(srv.getsockname()) as raw, \
            client.wrap_socket(raw, server_hostname="a.example") as tls:
        tls.sendall(b"x")  # the handshake succeeded with the old pair
    t.join(10)
    srv.close()


async def test_offlineimap_accepts_the_dev_certificate_with_the_printed_host(
        app_factory: Callable[..., Any], tls_files: tuple[Path, Path],
        tmp_path: Path) -> None:
    """offlineimap (Debian's offlineimap3), checking the certificate against the CA file
    and the host name, syncs INBOX with the host and port client-settings prints.
    (offlineimap compares only the certificate's DNS names, never IP-address SANs: with
    it the printed host `localhost` is the one that works, not 127.0.0.1.)"""
    app: App = await app_factory(web={"advertised_hostname": "localhost"})
    await add_mailbox(app, ADDR)
    assert app.store is not None
    address = await app.store.get_address(ADDR)
    assert address is not None
    inbox = next(f for f in await app.store.list_folders(address.id) if f.name == "INBOX")
    await app.store.append(inbox.id, b"From: a@example.org\r\nSubject: oi\r\n\r\nhi\r\n")
    out = await client_settings(write_config(tmp_path / "c.toml", app), ADDR)
    host, port = printed(out, r"Incoming \(IMAP")
    assert (host, port) == ("localhost", app.ports["imaps"])
    home = tmp_path / "home"
    maildir = home / "Mail"
    maildir.mkdir(parents=True)
    rc = home / "offlineimaprc"
    rc.write_text(
        f"[general]\naccounts = a\nmetadata = {home}/meta\n\n"
        "[Account a]\nlocalrepository = l\nremoterepository = r\n\n"
        f"[Repository l]\ntype = Maildir\nlocalfolders = {maildir}\n\n"
        f"[Repository r]\ntype = IMAP\nremotehost = {host}\nremoteport = {port}\n"
        f"remoteuser = {ADDR}\nremotepass = secret\nssl = yes\n"
        f"sslcacertfile = {tls_files[0]}\nfolderfilter = lambda f: f == 'INBOX'\n")
    proc = await asyncio.create_subprocess_exec(
        "offlineimap", "-c", str(rc), "-o", "-u", "basic", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "HOME": str(home)})
    log, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = log.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "does not match" not in text and "ERROR" not in text, text
    assert any(b"Subject: oi" in p.read_bytes() for p in (maildir / "INBOX").glob("*/*")), text
