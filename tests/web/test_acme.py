"""ACME against a real ACME server: Debian's ``pebble`` (Let's Encrypt's test server),
started here with its DNS pointed at a tiny resolver this test runs (dnslib on
loopback, every name -> 127.0.0.1), so HTTP-01 is really validated by pebble fetching
the key authorization from our port-80 listener (RFC 8555 §8.3).

Then a renewal, forced by pebble's short validity (one hour) and a manager clock moved
past two thirds of it: an IMAP session opened before the swap keeps working, a new one
sees the new certificate, and a second node sharing the store picks it up."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mailstack.app import App
from mailstack.tls import cert_names, ensure_self_signed, load_first_cert
from mailstack.web.acme import renewal_due, wanted_names
from mailstack.web.tlsalpn import (
    ACME_IDENTIFIER,
    ClientHello,
    NotTls,
    parse_client_hello,
)
from mailstack.workers import DNS_NAME, DirChallenges
from tests.conftest import add_mailbox

from .conftest import ADDR

PEBBLE = shutil.which("pebble")
VALIDITY = 3600


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def loopback_dns() -> Iterator[int]:
    """A DNS server on 127.0.0.1 answering A 127.0.0.1 for every name."""
    from dnslib import QTYPE, RR, A
    from dnslib.server import BaseResolver, DNSServer

    class Everything(BaseResolver):  # type: ignore[misc]
        def resolve(self, request: Any, handler: Any) -> Any:
            reply = request.reply()
            if request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("127.0.0.1"), ttl=5))
            return reply

    port = free_port(socket.SOCK_DGRAM)
    server = DNSServer(Everything(), port=port, address="127.0.0.1")
    server.start_thread()
    try:
        yield port
    finally:
        server.stop()


class Pebble:
    def __init__(self, tmp: Path, dns_port: int, http_port: int, tls_port: int = 0) -> None:
        self.cert, key = tmp / "pebble-cert.pem", tmp / "pebble-key.pem"
        ensure_self_signed(self.cert, key, "localhost")
        self.port, self.mgmt = free_port(), free_port()
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(self.cert), "privateKey": str(key),
            "httpPort": http_port, "tlsPort": tls_port or free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": VALIDITY}}
        (tmp / "pebble.json").write_text(json.dumps(config))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}
        self.log = open(tmp / "pebble.log", "w")
        self.proc = subprocess.Popen(
            [str(PEBBLE), "-config", str(tmp / "pebble.json"), "-dnsserver",
             f"127.0.0.1:{dns_port}"], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.ctx = ssl.create_default_context(cafile=str(self.cert))
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert self.proc.poll() is None, (tmp / "pebble.log").read_text()
                time.sleep(0.05)
        raise AssertionError("pebble did not start")

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def root_pem(self) -> bytes:
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt}/roots/0",
                                    context=self.ctx, timeout=10) as r:
            return bytes(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Imap:
    """A raw IMAP session over TLS, verifying the server as mail.example.net."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.n = reader, writer, 0

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> Imap:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                             server_hostname="mail.example.net")
        assert (await r.readline()).startswith(b"* OK")
        return cls(r, w)

    def peer(self) -> x509.Certificate:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)

    async def cmd(self, text: str) -> bytes:
        self.n += 1
        tag = f"t{self.n}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        await self.writer.drain()
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 30)
            assert line, "connection closed"
            if line.startswith(tag + b" "):
                return line

    async def close(self) -> None:
        self.writer.close()


def test_renewal_decision() -> None:
    """Pure: what makes a certificate due (no pebble needed)."""
    names = wanted_names("mail.example.net", ["b.example", "a.example"])
    assert names[:4] == ["mail.example.net", "autoconfig.a.example", "autodiscover.a.example",
                         "mta-sts.a.example"]
    assert len(names) == 7
    assert renewal_due(None, names, 0, 30).reason == "no certificate"


@pytest.mark.skipif(PEBBLE is None, reason="pebble is not installed (apt-get install pebble)")
async def test_acme_obtains_renews_and_hot_swaps(
        app_factory: Callable[..., Any], loopback_dns: int, tmp_path: Path) -> None:
    http_port = free_port()
    pebble_dir = tmp_path / "pebble"
    pebble_dir.mkdir()
    pebble = await asyncio.to_thread(Pebble, pebble_dir, loopback_dns, http_port)
    try:
        acme = {"cert_file": "", "key_file": "", "acme": True,
                "acme_directory_url": pebble.directory, "acme_ca_file": str(pebble.cert),
                "acme_contact": "postmaster@example.net",
                "acme_check_interval_seconds": 3600}
        app: App = await app_factory(tls=acme, listeners={"http": {"port": http_port}})
        assert app.acme is not None and app.store is not None
        await add_mailbox(app, ADDR)
        for _ in range(3):  # the first round may run before the domain existed
            if await app.acme.check() == "fresh":
                break
        s = app.settings
        first = load_first_cert(s.cert_path)
        assert "Pebble" in first.issuer.rfc4514_string()
        assert set(cert_names(first)) == {"mail.example.net", "autoconfig.example.com",
                                          "autodiscover.example.com", "mta-sts.example.com"}
        for f in (s.key_path, s.cert_path, s.acme_dir / "account.pem"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert not app.services.acme_challenges  # type: ignore[union-attr]
        log = (pebble_dir / "pebble.log").read_text()
        assert f"validate w/ HTTP: http://autoconfig.example.com:{http_port}/" in log

        root = await asyncio.to_thread(pebble.root_pem)
        client = ssl.create_default_context(cadata=root.decode())
        old = await Imap.open(app.ports["imaps"], client)
        assert old.peer().serial_number == first.serial_number
        assert b"OK" in await old.cmd(f"LOGIN {ADDR} secret")

        # Renewal: the manager's clock is moved past two thirds of the short validity.
        assert await app.acme.check() == "fresh"
        app.acme.clock = lambda: time.time() + VALIDITY * 0.7
        assert (await app.acme.check()).startswith("obtained")
        second = load_first_cert(s.cert_path)
        assert second.serial_number != first.serial_number

        # the session opened before the swap goes on, with the certificate it had
        assert b"OK" in await old.cmd("SELECT INBOX")
        assert b"OK" in await old.cmd("NOOP")
        assert old.peer().serial_number == first.serial_number
        new = await Imap.open(app.ports["imaps"], client)
        assert new.peer().serial_number == second.serial_number
        assert b"OK" in await new.cmd(f"LOGIN {ADDR} secret")
        # HTTPS and SMTP (implicit TLS) present the new one too
        for name in ("https", "submissions"):
            _r, w = await asyncio.open_connection("127.0.0.1", app.ports[name], ssl=client,
                                                  server_hostname="mail.example.net")
            der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert x509.load_der_x509_certificate(der).serial_number == second.serial_number
            w.close()
        await old.close()
        await new.close()

        # A second node sharing the store picks the certificate up, without asking pebble.
        data2 = tmp_path / "node2"
        node2: App = await app_factory(
            tls=acme, server={"data_dir": str(data2)},
            listeners={"http": {"port": 0}})
        assert node2.acme is not None
        result = await node2.acme.check()
        assert result in ("fresh", "picked up the certificate another node obtained")
        assert load_first_cert(node2.settings.cert_path).serial_number == (
            second.serial_number)
        other = await Imap.open(node2.ports["imaps"], client)
        assert other.peer().serial_number == second.serial_number
        await other.close()
    finally:
        await asyncio.to_thread(pebble.stop)


async def test_renewal_lock_one_node_at_a_time(store: Any) -> None:
    clock = [1000.0]
    store.clock = lambda: clock[0]
    assert await store.acquire_cert_lock("acme", "node-a", 60)
    assert not await store.acquire_cert_lock("acme", "node-b", 60)
    assert await store.acquire_cert_lock("acme", "node-a", 60)  # its own: extended
    clock[0] += 61
    assert await store.acquire_cert_lock("acme", "node-b", 60)  # a's lock expired
    assert not await store.acquire_cert_lock("acme", "node-a", 60)
    await store.release_cert_lock("acme", "node-a")  # not a's to release
    assert not await store.acquire_cert_lock("acme", "node-a", 60)
    await store.release_cert_lock("acme", "node-b")
    assert await store.acquire_cert_lock("acme", "node-a", 60)
    await store.save_certificate("acme", "CERT", "KEY")
    saved = await store.load_certificate("acme")
    assert (saved.cert_pem, saved.key_pem, saved.holder) == ("CERT", "KEY", "node-a")


@pytest.mark.skipif(PEBBLE is None, reason="pebble is not installed (apt-get install pebble)")
async def test_acme_tls_alpn_01_when_port_80_is_unreachable(
        app_factory: Callable[..., Any], loopback_dns: int, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Pebble validates HTTP-01 against a port where nothing listens (port 80 blocked):
    that fails, and the same check goes on with TLS-ALPN-01 (RFC 8737) on our https
    listener, which pebble reaches with SNI = each name and ALPN acme-tls/1."""
    https_port, dead_http = free_port(), free_port()
    pebble_dir = tmp_path / "pebble"
    pebble_dir.mkdir()
    pebble = await asyncio.to_thread(Pebble, pebble_dir, loopback_dns, dead_http, https_port)
    try:
        acme = {"cert_file": "", "key_file": "", "acme": True,
                "acme_directory_url": pebble.directory, "acme_ca_file": str(pebble.cert),
                "acme_check_interval_seconds": 3600}
        caplog.set_level(logging.INFO, logger="mailstack.acme")
        app: App = await app_factory(tls=acme, listeners={"https": {"port": https_port}})
        assert app.acme is not None and app.services is not None
        await add_mailbox(app, ADDR)
        results = []
        for _ in range(3):  # the server's own first round may run before the domain existed
            results.append(await app.acme.check())
            if results[-1] == "fresh":
                break
        # obtained by this check or by the server's own round (which logs its result)
        assert any("obtained a certificate for 4 names (tls-alpn-01)" in r
                   for r in results + caplog.messages), (results, caplog.messages)
        cert = load_first_cert(app.settings.cert_path)
        assert "Pebble" in cert.issuer.rfc4514_string()
        names = {"mail.example.net", "autoconfig.example.com", "autodiscover.example.com",
                 "mta-sts.example.com"}
        assert set(cert_names(cert)) == names
        log = " ".join(caplog.messages)
        assert "http-01 validation failed" in log  # port 80 unreachable: tried first
        for name in names:  # pebble's validation handshakes reached the https listener
            assert f"TLS-ALPN-01 handshake for {name}" in log
        assert not app.services.acme_alpn  # challenge certificates gone

        # an ordinary HTTPS client gets the new certificate and its answer
        root = await asyncio.to_thread(pebble.root_pem)
        client = ssl.create_default_context(cadata=root.decode())
        r, w = await asyncio.open_connection("127.0.0.1", https_port, ssl=client,
                                             server_hostname="autoconfig.example.com")
        w.write(b"GET /mail/config-v1.1.xml?emailaddress=anna@example.com HTTP/1.1\r\n"
                b"Host: autoconfig.example.com\r\nConnection: close\r\n\r\n")
        body = await asyncio.wait_for(r.read(), 30)
        assert body.startswith(b"HTTP/1.1 200") and b"<clientConfig" in body
        w.close()
    finally:
        await asyncio.to_thread(pebble.stop)


def client_hello(server_name: str, alpn: list[str]) -> bytes:
    """The ClientHello Python's own ssl sends (captured through memory BIOs)."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_client_hello_parser() -> None:
    data = client_hello("Mta-Sts.Example.com", ["acme-tls/1", "http/1.1"])
    hello = parse_client_hello(data)
    assert hello == ClientHello("mta-sts.example.com", (b"acme-tls/1", b"http/1.1"))
    assert parse_client_hello(data[:3]) is None  # still arriving
    assert parse_client_hello(data[:-1]) is None
    assert parse_client_hello(client_hello("x.example", [])) == ClientHello("x.example", ())
    for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
                    b"\x16\x03\x01\x00\x08\x01\x00\x00\x40" + b"\x03\x03\x00\x00"):
        with pytest.raises(NotTls):
            parse_client_hello(garbage)


async def test_alpn_router_serves_the_challenge_only_to_acme_tls_1(
        app_factory: Callable[..., Any], client_ssl: ssl.SSLContext) -> None:
    """With a challenge pending for a name, only a ClientHello offering acme-tls/1 for
    that name gets the challenge certificate (and the connection ends after the
    handshake); browsers and mail clients asking for the same name get the server's
    certificate and their answer."""
    app: App = await app_factory(tls={"acme": True, "acme_directory_url":
                                      "https://127.0.0.1:9/unreachable/dir",
                                      "acme_check_interval_seconds": 3600})
    assert app.services is not None
    await add_mailbox(app, ADDR)
    port = app.ports["https"]
    authz = "tokentokentoken.thumbprintthumbprint"
    app.services.acme_alpn["autoconfig.example.com"] = authz
    # what another worker of `serve --workers N` (or a node sharing the data dir) put
    # there: the pending challenges are files, so this listener answers it too
    other = DirChallenges(app.settings.acme_dir / "alpn", DNS_NAME)
    other["mta-sts.example.com"] = "othertoken.thumbprintthumbprint"

    async def handshake(name: str, alpn: list[str]) -> tuple[x509.Certificate, str | None,
                                                             asyncio.StreamReader]:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(alpn)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                             server_hostname=name)
        obj = w.get_extra_info("ssl_object")
        cert = x509.load_der_x509_certificate(obj.getpeercert(binary_form=True))
        return cert, obj.selected_alpn_protocol(), r

    cert, chosen, reader = await handshake("autoconfig.example.com", ["acme-tls/1"])
    assert chosen == "acme-tls/1"
    assert cert_names(cert) == ["autoconfig.example.com"]
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(authz.encode()).digest()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed after the handshake
    cert, chosen, _ = await handshake("mta-sts.example.com", ["acme-tls/1"])
    assert chosen == "acme-tls/1" and cert_names(cert) == ["mta-sts.example.com"]
    assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER).value.value == (
        b"\x04\x20" + hashlib.sha256(b"othertoken.thumbprintthumbprint").digest())
    del other["mta-sts.example.com"]

    server_serial = load_first_cert(app.settings.cert_path).serial_number
    for name, alpn in (("autoconfig.example.com", ["http/1.1"]),  # not ACME
                       ("mail.example.net", ["acme-tls/1"]),  # no challenge for it
                       ("autoconfig.example.com", [])):
        cert, chosen, _ = await handshake(name, alpn)
        assert cert.serial_number == server_serial and chosen != "acme-tls/1", (name, alpn)

    # a verifying client, during the challenge, for the challenged name: a real answer
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as s:
        async with s.get(f"https://127.0.0.1:{port}/.well-known/autoconfig/mail/"
                         f"config-v1.1.xml?emailaddress={ADDR}",
                         server_hostname="mail.example.net") as resp:
            assert resp.status == 200 and "<clientConfig" in await resp.text()
    # garbage instead of a ClientHello: refused, the listener goes on
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\n\r\n")
    assert await asyncio.wait_for(r.read(), 10) == b""
    w.close()
