"""``mailstack serve --dev`` in a subprocess: it creates the demo address once, prints
how to connect, answers on every listener (TLS with a certificate naming
``mail.example.test`` on the ports it prints, plaintext greetings on the STARTTLS ports)
and exits cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import imaplib
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

from mailstack.policy.passwords import Passwords
from mailstack.store import Store

from .conftest import cli_env, write_config

LISTENERS = ("smtp", "submissions", "submission", "imaps", "imap", "pop3s", "pop3", "https",
             "http", "metrics")
DEV_OFFSET = 10000  # serve --dev listens on the configured port + 10000


def free_dev_ports() -> dict[str, int]:
    """Configured base ports whose dev port (+10000) is free now: below the ephemeral
    range, random, so parallel runs do not clash."""
    chosen: dict[str, int] = {}
    while len(chosen) < len(LISTENERS):
        port = random.randrange(20000, 30000)
        if port in chosen.values():
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen[LISTENERS[len(chosen)]] = port
    return {name: port - DEV_OFFSET for name, port in chosen.items()}


def read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        line = proc.stdout.readline()
        assert line, f"serve exited before printing {marker!r}: {lines}"
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines


DEV_HOST = "mail.example.test"  # the demo domain's host: banner, certificate, greeting
IMPLICIT = {"submissions": b"220 " + DEV_HOST.encode(), "imaps": b"* OK",
            "pop3s": b"+OK"}
PLAIN = {"smtp": b"220 " + DEV_HOST.encode(), "submission": b"220 " + DEV_HOST.encode(),
         "imap": b"* OK", "pop3": b"+OK"}


def greeting(port: int, ctx: ssl.SSLContext | None) -> bytes:
    """The first line a listener sends; over TLS verified against ``DEV_HOST``."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        if ctx is None:
            return raw.recv(512)
        with ctx.wrap_socket(raw, server_hostname=DEV_HOST) as tls:
            return tls.recv(512)


def test_serve_dev(tmp_path: Path) -> None:
    ports = free_dev_ports()
    extra = "".join(f"[listeners.{name}]\nport = {port}\n" for name, port in ports.items())
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "dev.toml", data_dir, "", extra)
    cmd = [sys.executable, "-m", "mailstack", "--config", str(config), "serve", "--dev"]
    with open(tmp_path / "stderr.log", "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=tmp_path, env=cli_env())
        try:
            out = read_until(proc, "Stop with Ctrl-C")
            text = "\n".join(out)
            m = re.search(r"Demo address created: (\S+)\nIts password \(shown once, now\): "
                          r"(\S+)", text)
            assert m, text
            assert m.group(1) == "demo@example.test"
            password = m.group(2)
            cert = data_dir / "tls" / "cert.pem"
            assert f"trust this certificate: {cert}" in text
            assert "user name: the full address" in text
            shown = {label: int(port) for label, port in re.findall(
                r"(IMAP|SMTP|POP3) server 127\.0\.0\.1  port (\d+)  SSL/TLS", text)}
            assert shown == {"IMAP": ports["imaps"] + DEV_OFFSET,
                             "SMTP": ports["submissions"] + DEV_OFFSET,
                             "POP3": ports["pop3s"] + DEV_OFFSET}

            assert f"(it names {DEV_HOST}, localhost and 127.0.0.1)" in text
            assert "not listening" not in text

            # every listener answers on its dev port: the three printed ones over TLS
            # (certificate verified for DEV_HOST), the STARTTLS ones in plaintext
            ctx = ssl.create_default_context(cafile=str(cert))
            for name, expected in IMPLICIT.items():
                line = greeting(ports[name] + DEV_OFFSET, ctx)
                assert line.startswith(expected), (name, line)
            for name, expected in PLAIN.items():
                line = greeting(ports[name] + DEV_OFFSET, None)
                assert line.startswith(expected), (name, line)
            # the printed instructions work: the full address and the printed password
            with imaplib.IMAP4_SSL("127.0.0.1", shown["IMAP"],
                                   ssl_context=ctx) as imap:
                assert imap.login("demo@example.test", password)[0] == "OK"
                assert imap.select("INBOX")[0] == "OK"

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
    log = (tmp_path / "stderr.log").read_text()
    assert "shutting down" in log
    assert password not in log

    async def demo_hash() -> str | None:
        store = Store(f"sqlite+aiosqlite:///{data_dir / 'mailstack.db'}", data_dir / "blobs")
        await store.open()
        try:
            a = await store.get_address("demo@example.test")
            return a.password_hash if a else None
        finally:
            await store.close()
    stored = asyncio.run(demo_hash())
    assert stored and Passwords(1, 64, 1)._verify_sync(stored, password)


def test_serve_without_certificate_explains(tmp_path: Path) -> None:
    """Plain ``serve`` (not --dev) with TLS listeners but no certificate stops with a
    message naming the missing files and the way out, exit 1, before listening."""
    config = write_config(tmp_path / "c.toml", tmp_path / "data", "",
                          "".join(f"[listeners.{n}]\naddress = \"127.0.0.1\"\nport = 0\n"
                                  for n in LISTENERS))
    proc = subprocess.run([sys.executable, "-m", "mailstack", "--config", str(config),
                           "serve"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, cwd=tmp_path, env=cli_env(), timeout=60)
    assert proc.returncode == 1
    assert "cert.pem" in proc.stderr and "--dev" in proc.stderr
