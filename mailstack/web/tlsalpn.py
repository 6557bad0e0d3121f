"""ACME TLS-ALPN-01 validation (RFC 8737) on the https listener, for servers whose port 80
the ACME server cannot reach.

The ACME server opens TLS to port 443 with the name being validated as SNI and only
``acme-tls/1`` as ALPN (RFC 8737 §3); it expects a self-signed certificate for that one
name carrying the critical acmeIdentifier extension (the SHA-256 of the key
authorization). Python's ``ssl`` cannot pick a certificate by the client's ALPN offer
(``sni_callback`` runs before ALPN is known, and the context is shared with the mail
listeners), so while a challenge is pending the https listener peeks at each
connection's ClientHello (``MSG_PEEK`` on a duplicate of the socket: nothing is consumed)
and starts TLS itself with the challenge context or the server's own.

Invariants:
- Only a ClientHello that offers ``acme-tls/1`` AND names a pending challenge gets the
  challenge certificate; every other client gets the server's certificate, as without
  ACME. With no challenge pending nothing is peeked at all.
- A connection that negotiated ``acme-tls/1`` is closed right after the handshake
  (RFC 8737 §3: no application data follows).
- The peek waits at most the handshake timeout and reads at most ``MAX_HELLO`` octets; a
  client that sends garbage gets the normal TLS handshake, which refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

log = logging.getLogger("mailstack.acme")

ACME_TLS_1 = b"acme-tls/1"
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier, §6.1
MAX_HELLO = 16384 + 5  # one TLS record
PEEK_PAUSE = 0.01  # seconds between peeks while a ClientHello is still arriving


# --- the challenge certificate (RFC 8737 §3) ---------------------------------------------


def challenge_cert(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): self-signed, one dNSName SAN ``name``, the critical
    acmeIdentifier extension holding the DER OCTET STRING of SHA-256(key authorization)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(
                ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@functools.lru_cache(maxsize=32)
def _cached_context(name: str, key_authorization: str) -> ssl.SSLContext:
    """One context per pending challenge, made on the first validation handshake (the
    CA connects several times, from several places)."""
    return challenge_context(name, key_authorization)


def challenge_context(name: str, key_authorization: str) -> ssl.SSLContext:
    """A server context presenting the challenge certificate and speaking only
    ``acme-tls/1`` over TLS 1.2 or later (RFC 8737 §4). Blocking (files): call it in a
    thread."""
    cert_pem, key_pem = challenge_cert(name, key_authorization)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ACME_TLS_1.decode()])
    with tempfile.TemporaryDirectory(prefix="mailstack-acme-") as d:  # 0700
        path = os.path.join(d, "challenge.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem + cert_pem)
        ctx.load_cert_chain(path)
    return ctx


# --- the ClientHello (RFC 8446 §4.1.2, RFC 6066 §3 SNI, RFC 7301 §3.1 ALPN) --------------


@dataclass(frozen=True)
class ClientHello:
    server_name: str
    alpn: tuple[bytes, ...]


class NotTls(ValueError):
    pass


def parse_client_hello(data: bytes) -> ClientHello | None:
    """SNI and ALPN of the ClientHello at the start of ``data``; None while incomplete.
    Raises ``NotTls`` when the bytes are not a TLS ClientHello. Pure."""
    if len(data) < 5:
        return None
    if data[0] != 0x16 or data[1] != 0x03:
        raise NotTls("not a TLS handshake record")
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return None
    body = data[5:end]
    if len(body) < 4 or body[0] != 0x01:
        raise NotTls("not a ClientHello")
    hello_end = 4 + int.from_bytes(body[1:4], "big")
    if hello_end > len(body):  # fragmented over several records: look no further
        raise NotTls("ClientHello longer than one record")
    pos = 4 + 2 + 32  # legacy_version, random

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > hello_end:
            raise NotTls("truncated ClientHello")
        out = body[pos:pos + n]
        pos += n
        return out

    take(take(1)[0])  # legacy_session_id
    take(int.from_bytes(take(2), "big"))  # cipher_suites
    take(take(1)[0])  # legacy_compression_methods
    name = ""
    alpn: tuple[bytes, ...] = ()
    if pos == hello_end:
        return ClientHello(name, alpn)
    ext_end = pos + 2 + int.from_bytes(take(2), "big")
    while pos < min(ext_end, hello_end):
        ext_type = int.from_bytes(take(2), "big")
        ext = take(int.from_bytes(take(2), "big"))
        if ext_type == 0 and len(ext) >= 5 and ext[2] == 0:  # server_name, host_name
            n = int.from_bytes(ext[3:5], "big")
            name = ext[5:5 + n].decode("ascii", "replace").lower().rstrip(".")
        elif ext_type == 16 and len(ext) >= 2:  # application_layer_protocol_negotiation
            protos, i = [], 2
            while i < len(ext):
                n = ext[i]
                protos.append(bytes(ext[i + 1:i + 1 + n]))
                i += 1 + n
            alpn = tuple(protos)
    return ClientHello(name, alpn)


# --- the accepting side ---------------------------------------------------------------


async def peek_client_hello(sock_fd: int, timeout: float) -> ClientHello | None:
    """Peek (without consuming) at the ClientHello on the socket ``sock_fd``; None when
    it does not come in time, the peer closed, or it is not TLS."""
    loop = asyncio.get_running_loop()
    dup = socket.socket(fileno=os.dup(sock_fd))
    dup.setblocking(False)
    deadline = loop.time() + timeout
    try:
        seen = -1
        while True:
            try:
                data = dup.recv(MAX_HELLO, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data == b"":
                return None
            if data:
                try:
                    hello = parse_client_hello(data)
                except NotTls:
                    return None
                if hello is not None:
                    return hello
                if len(data) >= MAX_HELLO:
                    return None
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            if data and len(data) == seen:  # readable but incomplete: wait a little
                await asyncio.sleep(min(PEEK_PAUSE, remaining))
                continue
            seen = len(data) if data else -1
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(dup.fileno(), _resolve, ready)
            try:
                await asyncio.wait_for(ready, remaining)
            except TimeoutError:
                return None
            finally:
                loop.remove_reader(dup.fileno())
    finally:
        dup.close()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AlpnRouter(asyncio.Protocol):
    """The protocol of one https connection while ACME may use TLS-ALPN-01: chooses the
    TLS context from the ClientHello, runs the handshake, then hands the TLS connection
    to ``app_factory()`` (aiohttp's protocol), exactly as ``create_server(ssl=...)``
    would."""

    def __init__(self, app_factory: Callable[[], asyncio.Protocol],
                 server_ctx: ssl.SSLContext, challenges: Mapping[str, str],
                 handshake_timeout: float) -> None:
        self.app_factory = app_factory
        self.server_ctx = server_ctx
        self.challenges = challenges
        self.timeout = handshake_timeout
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()  # the bytes stay in the socket for the peek and TLS
        self.task = asyncio.get_running_loop().create_task(self._start())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _start(self) -> None:
        transport = self.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        ctx, acme_name = self.server_ctx, ""
        try:
            if self.challenges:
                sock = transport.get_extra_info("socket")
                hello = await peek_client_hello(sock.fileno(), self.timeout)
                authz = (self.challenges.get(hello.server_name)
                         if hello is not None and ACME_TLS_1 in hello.alpn else None)
                if hello is not None and authz:
                    ctx = await asyncio.to_thread(_cached_context, hello.server_name, authz)
                    acme_name = hello.server_name
            app = asyncio.Protocol() if acme_name else self.app_factory()
            tls = await loop.start_tls(transport, app, ctx, server_side=True,
                                       ssl_handshake_timeout=self.timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, RuntimeError):
            transport.abort()
            return
        if tls is None:
            transport.abort()
            return
        if acme_name:  # RFC 8737 §3: the validation is the handshake itself
            log.info("acme: TLS-ALPN-01 handshake for %s", acme_name)
            with contextlib.suppress(Exception):
                tls.close()
            return
        app.connection_made(tls)
