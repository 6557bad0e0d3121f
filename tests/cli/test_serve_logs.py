"""The server log of ``mailstack serve`` (docs/behaviour.md §10): one line per connection
event with session id, client, TLS, login and result; aiosmtpd's own chatter (e.g.
"Connection lost during _handle_client()" after every normal QUIT) only with
``--debug``; ``logging.format = "json"`` gives one JSON object per line. Never a
password."""

from __future__ import annotations

import imaplib
import json
import re
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cli_env, make_cli, toml_str

PASSWORD = "log-secret-12345"
LISTENERS = ("smtp", "submissions", "submission", "imaps", "imap", "pop3s", "pop3")


def run_server(tmp_path: Path, tls_files: tuple[Path, Path], ctx: ssl.SSLContext,
               fmt: str, debug: bool) -> str:
    extra = (f"[tls]\ncert_file = {toml_str(str(tls_files[0]))}\n"
             f"key_file = {toml_str(str(tls_files[1]))}\n"
             f"[logging]\nformat = \"{fmt}\"\n"
             + "".join(f"[listeners.{n}]\naddress = \"127.0.0.1\"\nport = 0\n"
                       for n in LISTENERS))
    cli = make_cli(tmp_path, extra=extra)
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com", "--password-stdin", input=PASSWORD + "\n")
    cmd = [sys.executable, "-m", "mailstack", "--config", str(cli.config), "serve",
           *(["--debug"] if debug else [])]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=cli.cwd, env=cli_env())
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        ports: dict[str, int] = {}
        while len(ports) < len(LISTENERS):
            line = proc.stderr.readline()
            assert line, f"serve ended early: {lines}"
            lines.append(line)
            m = re.search(r"listening: (\w+) on 127\.0\.0\.1:(\d+)", line)
            if m:
                ports[m.group(1)] = int(m.group(2))

        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as mx:
            mx.starttls(context=ctx)
            mx.sendmail("x@remote.example", ["anna@example.com"],
                        b"Subject: hi\r\n\r\nhello\r\n")
        with smtplib.SMTP_SSL("127.0.0.1", ports["submissions"], context=ctx,
                              timeout=30) as sub:
            sub.login("anna@example.com", PASSWORD)
        with imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=ctx,
                               timeout=30) as imap:
            imap.login("anna@example.com", PASSWORD)
            imap.logout()
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return "".join(lines) + rest


def conn_events(log: str, fmt: str) -> list[dict[str, str]]:
    out = []
    for line in log.splitlines():
        if fmt == "json":
            record = json.loads(line)  # every line is one JSON object
            if record["logger"] == "mailstack.conn":
                out.append(record)
        elif " mailstack.conn: " in line:
            fields = line.split(" mailstack.conn: ", 1)[1]
            out.append(dict(kv.split("=", 1) for kv in fields.split()))
    return out


@pytest.mark.parametrize("fmt,debug", [("text", False), ("json", False), ("text", True)])
def test_one_line_per_connection_event(tmp_path: Path, tls_files: tuple[Path, Path],
                                       client_ssl: ssl.SSLContext, fmt: str,
                                       debug: bool) -> None:
    log = run_server(tmp_path, tls_files, client_ssl, fmt, debug)
    assert PASSWORD not in log
    chatter = "Connection lost during _handle_client()" in log or "mail.log" in log
    assert chatter == debug, log  # aiosmtpd's INFO lines only with --debug

    events = conn_events(log, fmt)
    by_session: dict[str, list[dict[str, str]]] = {}
    for e in events:
        assert set(e) >= {"listener", "session", "client", "event", "tls", "login", "result"}
        assert e["client"] == "127.0.0.1"
        by_session.setdefault(e["session"], []).append(e)
    closes = {}
    for evs in by_session.values():
        assert [e["event"] for e in evs] == ["connect", "close"], evs  # one line each
        closes[evs[0]["listener"]] = evs[1]
    assert set(closes) == {"smtp", "submissions", "imaps"}, closes
    mx, sub, imap = closes["smtp"], closes["submissions"], closes["imaps"]
    assert mx["tls"].startswith("TLSv1.") and mx["login"] == "-" and mx["result"] == "quit"
    assert sub["tls"].startswith("TLSv1.") and sub["login"] == "anna@example.com"
    assert sub["result"] == "quit"
    assert imap["tls"].startswith("TLSv1.") and imap["login"] == "anna@example.com"
    assert imap["result"] == "closed"
