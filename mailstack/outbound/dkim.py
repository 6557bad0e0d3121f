"""DKIM signing of outgoing mail (RFC 6376; Ed25519 RFC 8463) with dkimpy.

Every domain has two keys, RSA-2048 (``rsa-sha256``) and Ed25519 (``ed25519-sha256``),
each under its own selector (``ms<yyyymm>r`` / ``ms<yyyymm>e``); a message gets one
signature per key, so receivers that know only RSA and those that prefer Ed25519 both
find one to verify (RFC 8463 §6).

Invariants:
- The signing domain is the domain of the first ``From:`` address (the DMARC identifier,
  RFC 7489 §3.1.1), so a passing signature is aligned. No key for it: no signature.
- Signed fields (``h=``): every occurrence of From, To, Cc, Subject, Date, Message-ID,
  Reply-To, In-Reply-To, References, MIME-Version, Content-Type and
  Content-Transfer-Encoding present in the message, and ``from`` once more
  (oversigning, RFC 6376 §8.15: a second ``From:`` added in transit breaks the
  signature). Canonicalization relaxed/relaxed (RFC 6376 §3.4.2, §3.4.4).
- ``DkimSigner.sign`` returns the ``DKIM-Signature`` lines to put in front of the
  message, CRLF-terminated, or b"" when the From domain has no active key; the message
  itself is never changed (the store keeps one shared blob, the lines go into the
  remote copies' prefix).
- The event loop never does the hashing or the RSA arithmetic (pure Python in
  dkimpy): small messages are signed in a thread; larger ones, where dkimpy's
  whole-message regular expressions would hold the interpreter lock for a long time,
  in a separate process.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import concurrent.futures.process
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..policy.envelope import AddressError, normalize_domain
from ..policy.headers import HeaderError, extract_from_addresses, header_fields, split_header

log = logging.getLogger("mailstack.outbound.dkim")

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
ALGORITHMS = (RSA, ED25519)
RSA_BITS = 2048
SIGNED_FIELDS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                 b"in-reply-to", b"references", b"mime-version", b"content-type",
                 b"content-transfer-encoding")
OVERSIGNED = (b"from",)
IN_THREAD_LIMIT = 256 * 1024  # octets; larger messages are signed in a worker process
TXT_STRING = 255  # RFC 1035 §3.3.14: one character-string holds at most 255 octets


class SigningError(Exception):
    """A key could not sign (a damaged key in the database, an unparsable header)."""


# --- keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedKey:
    algorithm: str
    private_key: str  # RSA: PKCS#1 PEM; Ed25519: base64 of the 32-octet seed
    public_key: str  # base64: the p= value of the DNS record


def generate_key(algorithm: str) -> GeneratedKey:
    """A new key (RSA-2048 or Ed25519) in the forms dkimpy and DNS want."""
    if algorithm == RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()).decode("ascii")
        public = key.public_key().public_bytes(  # SubjectPublicKeyInfo (RFC 6376 §3.6.1)
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return GeneratedKey(RSA, private, base64.b64encode(public).decode("ascii"))
    if algorithm == ED25519:
        ekey = ed25519.Ed25519PrivateKey.generate()
        seed = ekey.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
        raw = ekey.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)  # RFC 8463 §4.2
        return GeneratedKey(ED25519, base64.b64encode(seed).decode("ascii"),
                            base64.b64encode(raw).decode("ascii"))
    raise ValueError(f"unknown DKIM algorithm {algorithm!r}")


def new_selectors(now: float, taken: set[str]) -> dict[str, str]:
    """Selectors for a new key pair: ``ms<yyyymm>r`` / ``ms<yyyymm>e``, with a counter
    after the month when that month's names are taken (a second rotation)."""
    month = datetime.fromtimestamp(now, UTC).strftime("%Y%m")
    n = 1
    while True:
        base = f"ms{month}" if n == 1 else f"ms{month}n{n}"
        names = {RSA: f"{base}r", ED25519: f"{base}e"}
        if not set(names.values()) & taken:
            return names
        n += 1


def txt_record(algorithm: str, public_key: str) -> str:
    """The DKIM key record's text (RFC 6376 §3.6.1; k=ed25519 RFC 8463 §4.2)."""
    k = "rsa" if algorithm == RSA else "ed25519"
    return f"v=DKIM1; k={k}; p={public_key}"


def txt_strings(text: str, size: int = TXT_STRING) -> list[str]:
    """Split a TXT value into character-strings of at most ``size`` octets; a
    receiver joins them without separator (RFC 6376 §3.6.2.2)."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def zone_txt(strings: Sequence[str]) -> str:
    """Character-strings in zone-file syntax (RFC 1035 §5.1): quoted, ``"`` and ``\\``
    escaped."""
    return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings)


# --- signing -------------------------------------------------------------------------


class SigningKey(Protocol):
    @property
    def selector(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def private_key(self) -> str: ...


class KeySource(Protocol):
    async def dkim_signing_keys(self, domain: str) -> Sequence[SigningKey]: ...


def signing_domain(message: bytes) -> str | None:
    """The A-label domain of the first ``From:`` address, or None."""
    try:
        froms = extract_from_addresses(message)
    except HeaderError:
        return None
    if not froms:
        return None
    domain = froms[0].address.rpartition("@")[2]
    try:
        return normalize_domain(domain, smtputf8=True)[0]
    except AddressError:
        return None


def signed_field_list(message: bytes) -> list[bytes]:
    """``h=`` (see the module invariants): present fields, From oversigned."""
    names = [name for name, _ in header_fields(split_header(message)[0])]
    out: list[bytes] = []
    for field in SIGNED_FIELDS:
        out.extend([field] * names.count(field))
        if field in OVERSIGNED:
            out.append(field)
    return out


def sign_sync(message: bytes, domain: str,
              keys: Sequence[tuple[str, str, str]]) -> bytes:
    """The ``DKIM-Signature`` lines for ``message``: one per (selector, algorithm,
    private key). CPU-bound; runs in a thread or a worker process."""
    fields = signed_field_list(message)
    out = []
    for selector, algorithm, private_key in keys:
        try:
            out.append(dkim.sign(
                message, selector.encode("ascii"), domain.encode("ascii"),
                private_key.encode("ascii"), canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=algorithm.encode("ascii"), include_headers=fields))
        except (dkim.DKIMException, ValueError, UnicodeError) as exc:
            raise SigningError(f"{selector}._domainkey.{domain}: {exc}") from None
    return b"".join(out)


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _worker_pool() -> concurrent.futures.ProcessPoolExecutor:
    """One lazily started worker process for big messages ("spawn": a fresh
    interpreter, nothing of the server's threads or sockets is inherited)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def shutdown_worker_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=True, cancel_futures=True)
            _pool = None


class DkimSigner:
    """Signs messages with their From domain's active keys (see the module invariants).

    Reusable by anything that sends mail out (delivery reports, autoreplies): ``await
    signer.sign(message)`` gives the lines to prepend. Keys are read from the store on
    every call, so a new or rotated key applies at once on every node."""

    def __init__(self, keys: KeySource, *, in_thread_limit: int = IN_THREAD_LIMIT) -> None:
        self.keys = keys
        self.in_thread_limit = in_thread_limit

    async def sign(self, message: bytes) -> bytes:
        domain = signing_domain(message)
        if domain is None:
            return b""
        return await self.sign_as(domain, message)

    async def sign_as(self, domain: str, message: bytes) -> bytes:
        """Sign with ``domain``'s keys (b"" when it has none)."""
        keys = await self.keys.dkim_signing_keys(domain)
        if not keys:
            return b""
        triples = [(k.selector, k.algorithm, k.private_key) for k in keys]
        if len(message) <= self.in_thread_limit:
            return await asyncio.to_thread(sign_sync, message, domain, triples)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(_worker_pool(), sign_sync, message, domain,
                                              triples)
        except concurrent.futures.process.BrokenProcessPool:
            # The worker died (killed, out of memory): start a new one next time; this
            # message is signed in a thread rather than not at all.
            log.error("dkim: signing worker process died; restarting it")
            await asyncio.to_thread(shutdown_worker_pool)
            return await asyncio.to_thread(sign_sync, message, domain, triples)
