"""DANE authentication of an SMTP server's certificate chain (RFC 7672 §3, RFC 7671,
RFC 6698 §2.1), pure: no sockets, no DNS. docs/behaviour.md §6.

Invariants:
- Only DANE-TA(2) and DANE-EE(3) records are usable for SMTP; PKIX-TA(0) and PKIX-EE(1)
  are ignored (RFC 7672 §3.1.3), as are unknown selectors and matching types
  (RFC 6698 §4.1). ``usable()`` filters; a TLSA RRset with no usable record means
  "mandatory TLS, unauthenticated" (RFC 7672 §2.2), decided in ``tlspolicy``.
- DANE-EE matches the leaf certificate only and ignores its names, validity dates and
  issuer (RFC 7672 §3.1.1, RFC 7671 §5.1).
- DANE-TA matches a certificate the server sent (RFC 7671 §8.1: servers must send the TA
  certificate); every certificate below it must be issued and signed by the next one,
  be within its validity dates, and intermediates must be CAs; the leaf must carry the
  MX host name, its TLSA base domain or the destination domain (RFC 7672 §3.2.2;
  wildcards only as the whole left-most label, RFC 6125 §6.4.3). The TA certificate's
  own dates are not checked (it is trusted by the DNS, RFC 7671 §5.2.2).
- A verdict is ``None`` (authenticated) or a one-line reason for the delivery log.

The peer chain comes from the TLS client: ``peer_chain_der()`` gets the whole chain the
server sent from Python's ``ssl`` on 3.11 (see its docstring).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

DANE_TA, DANE_EE = 2, 3
SEL_CERT, SEL_SPKI = 0, 1
MATCH_FULL, MATCH_SHA256, MATCH_SHA512 = 0, 1, 2


@dataclass(frozen=True)
class TlsaRecord:
    """One TLSA record (RFC 6698 §2.1): usage, selector, matching type, data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return (self.usage in (DANE_TA, DANE_EE) and self.selector in (SEL_CERT, SEL_SPKI)
                and self.mtype in (MATCH_FULL, MATCH_SHA256, MATCH_SHA512))

    def text(self) -> str:
        """Presentation form, ``3 1 1 <hex>`` (RFC 6698 §2.2)."""
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    @classmethod
    def parse(cls, text: str) -> TlsaRecord:
        parts = text.split()
        if len(parts) < 4:
            raise ValueError(f"not a TLSA record: {text!r}")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]),
                   bytes.fromhex("".join(parts[3:])))


def usable(records: Sequence[TlsaRecord]) -> tuple[TlsaRecord, ...]:
    return tuple(r for r in records if r.usable)


def selected(cert: x509.Certificate, selector: int) -> bytes:
    """The bytes a TLSA selector names: the whole certificate (0) or its
    SubjectPublicKeyInfo (1), DER."""
    if selector == SEL_CERT:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def association(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    """The certificate association data for ``cert`` (RFC 6698 §2.1.3)."""
    data = selected(cert, selector)
    if mtype == MATCH_SHA256:
        return hashlib.sha256(data).digest()
    if mtype == MATCH_SHA512:
        return hashlib.sha512(data).digest()
    return data


def record_for(cert: x509.Certificate, usage: int = DANE_EE, selector: int = SEL_SPKI,
               mtype: int = MATCH_SHA256) -> TlsaRecord:
    return TlsaRecord(usage, selector, mtype, association(cert, selector, mtype))


def _matches(record: TlsaRecord, cert: x509.Certificate) -> bool:
    return association(cert, record.selector, record.mtype) == record.data


# --- names (RFC 6125 §6.4) -----------------------------------------------------------


def cert_names(cert: x509.Certificate) -> list[str]:
    """DNS names of the certificate: subjectAltName dNSName, else the subject CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
        if names:
            return [n.lower().rstrip(".") for n in names]
    except x509.ExtensionNotFound:
        pass
    return [str(a.value).lower().rstrip(".")
            for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


def name_matches(pattern: str, name: str) -> bool:
    """``*.example.com`` matches exactly one left-most label (RFC 6125 §6.4.3)."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern == name:
        return True
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        head, dot, rest = name.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return False


def cert_matches_any(cert: x509.Certificate, references: Sequence[str]) -> bool:
    names = cert_names(cert)
    return any(name_matches(p, r) for p in names for r in references if r)


# --- verification --------------------------------------------------------------------


def _not_before(c: x509.Certificate) -> dt.datetime:
    return c.not_valid_before_utc


def _not_after(c: x509.Certificate) -> dt.datetime:
    return c.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _chain_to(chain: list[x509.Certificate], ta_index: int, now: dt.datetime) -> str | None:
    """Check certificates 0..ta_index-1 up to the TA at ta_index; None if good."""
    for i in range(ta_index):
        cert, issuer = chain[i], chain[i + 1]
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError):
            return f"certificate {i} is not issued and signed by certificate {i + 1}"
        if not _not_before(cert) <= now <= _not_after(cert):
            return f"certificate {i} is outside its validity dates"
        if i > 0 and not _is_ca(cert):
            return f"certificate {i} is not a CA but issues certificate {i - 1}"
    if ta_index > 0 and not _is_ca(chain[ta_index]):
        return "the trust anchor certificate is not a CA"
    return None


def verify_dane(records: Sequence[TlsaRecord], chain_der: Sequence[bytes],
                references: Sequence[str], now: dt.datetime) -> str | None:
    """Authenticate the peer chain (DER, leaf first) against the TLSA RRset.

    ``references`` are the names DANE-TA accepts (MX host, TLSA base domain, destination
    domain). Returns None when some usable record authenticates the peer, else why not.
    """
    recs = usable(records)
    if not recs:
        return "no usable TLSA record"
    if not chain_der:
        return "the server sent no certificate"
    chain: list[x509.Certificate] = []
    for i, der in enumerate(chain_der):
        try:
            chain.append(x509.load_der_x509_certificate(bytes(der)))
        except ValueError:
            if i == 0:
                return "the server's certificate cannot be parsed"
            break  # keep what parses: a junk extra certificate cannot help a match
    leaf = chain[0]
    for rec in recs:
        if rec.usage == DANE_EE and _matches(rec, leaf):
            return None  # names and dates ignored: RFC 7672 §3.1.1
    problems: list[str] = []
    for rec in recs:
        if rec.usage != DANE_TA:
            continue
        for idx, cert in enumerate(chain):
            if not _matches(rec, cert):
                continue
            bad = _chain_to(chain, idx, now)
            if bad is None and not cert_matches_any(leaf, references):
                bad = (f"certificate names {', '.join(cert_names(leaf)) or '(none)'} do not "
                       f"match {', '.join(r for r in references if r)}")
            if bad is None:
                return None
            problems.append(f"DANE-TA {rec.usage} {rec.selector} {rec.mtype}: {bad}")
            break
    if problems:
        return "; ".join(problems)
    return "no TLSA record matches the server's certificate chain"


def make_verifier(records: Sequence[TlsaRecord], extra_names: Sequence[str],
                  clock: Callable[[], float]) -> Callable[[Sequence[bytes], str], str | None]:
    """A ``transport.Verifier`` for DANE: the MX host name the client passes plus
    ``extra_names`` (TLSA base domain, destination domain) are the DANE-TA references."""
    recs = tuple(records)
    names = tuple(extra_names)

    def verify(chain_der: Sequence[bytes], mx_host: str) -> str | None:
        now = dt.datetime.fromtimestamp(clock(), dt.UTC)
        reason = verify_dane(recs, chain_der, (mx_host, *names), now)
        return None if reason is None else f"DANE: {reason}"

    return verify


# --- the peer chain from Python's ssl -------------------------------------------------


def peer_chain_der(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """Every certificate the server sent, DER, leaf first, as received (not verified).

    Python 3.13 has the public ``get_unverified_chain()``. On 3.10-3.12 the same C
    method exists on the private ``_sslobj`` (``_ssl._SSLSocket.get_unverified_chain``,
    added with bpo-18233 in 3.10, made public in 3.13): it returns ``_ssl.Certificate``
    objects, whose ``public_bytes(_ssl.ENCODING_DER)`` is the DER. It wraps OpenSSL's
    ``SSL_get_peer_cert_chain`` and works with ``CERT_NONE`` contexts, which DANE needs
    (the certificate is authenticated by the TLSA records, not by a CA store). Only if
    neither exists do we fall back to the leaf (``getpeercert(True)``), which is enough
    for DANE-EE but not for DANE-TA with an intermediate TA.
    """
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:  # Python >= 3.13
        return [_der(c) for c in public() or []]
    inner = getattr(ssl_object, "_sslobj", None)
    private = getattr(inner, "get_unverified_chain", None)
    if private is not None:
        return [_der(c) for c in private() or []]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _der(cert: object) -> bytes:
    if isinstance(cert, bytes | bytearray):
        return bytes(cert)
    public_bytes = cert.public_bytes  # type: ignore[attr-defined]
    return bytes(public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
