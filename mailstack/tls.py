"""SSL contexts for the listeners, and the self-signed certificate of dev mode."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEV_DNS_NAMES = ("localhost",)
DEV_IPS = ("127.0.0.1", "::1")


def _covers_dev_names(cert_path: Path, hostname: str) -> bool:
    """True unless ``cert_path`` is a self-signed certificate of ours that lacks a name
    dev mode promises (older versions left out ::1)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return True  # not ours to judge; leave it alone
    if cert.issuer != cert.subject:
        return True  # a real certificate: never replaced
    names = set(cert_names(cert))
    return {hostname, *DEV_DNS_NAMES, *DEV_IPS} <= names


def ensure_self_signed(cert_path: Path, key_path: Path, hostname: str) -> bool:
    """Create a self-signed certificate for ``hostname`` plus the DNS name localhost and
    the IP addresses 127.0.0.1 and ::1 (so clients that match the host they were given
    against DNS names only, like fetchmail and isync, accept ``localhost``), unless both
    files exist and already name all of those. Returns True if it created them."""
    if cert_path.exists() and key_path.exists() and _covers_dev_names(cert_path, hostname):
        return False
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    dns = [hostname, *(n for n in DEV_DNS_NAMES if n != hostname)]
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in dns]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in DEV_IPS])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return True


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically (temp file, fsync, rename) with ``mode`` from the start,
    so a reader never sees a half-written key or certificate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate's SAN extension lists."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


def tlsa_311(cert: x509.Certificate) -> str:
    """The TLSA 3 1 1 association data (RFC 6698 §2.1, RFC 7671 §5.1): SHA-256 of the
    certificate's DER SubjectPublicKeyInfo, in hex."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def load_first_cert(path: Path) -> x509.Certificate:
    """The leaf (first) certificate of a PEM chain file."""
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def server_context(cert_path: Path, key_path: Path, min_version: str = "TLSv1.2"
                   ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if min_version == "TLSv1.3"
                           else ssl.TLSVersion.TLSv1_2)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def reload_context(ctx: ssl.SSLContext, cert_path: Path, key_path: Path) -> None:
    """Swap the certificate of a live server context: connections made from now on get
    the new one; open connections keep theirs (their SSL objects copied it at creation).
    The pair is tried on a scratch context first, so a bad file (or a key that does not
    match) raises before the live context is touched."""
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    ctx.load_cert_chain(cert_path, key_path)


def client_context_trusting(cert_path: Path) -> ssl.SSLContext:
    """A client context that trusts exactly our (self-signed) certificate: for tests
    and for printing how a client connects in dev mode."""
    ctx = ssl.create_default_context(cafile=str(cert_path))
    return ctx


def tls_summary(obj: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' for Received headers and logs."""
    if obj is None:
        return ""
    cipher = obj.cipher()
    return f"{obj.version()} {cipher[0] if cipher else ''}".strip()


def sign_profile(data: bytes, cert_path: Path, key_path: Path) -> bytes:
    """``data`` signed as CMS SignedData (DER, content attached) with the server's
    certificate and key, the chain's other certificates included: what Apple devices
    show as a verified configuration profile."""
    from cryptography.hazmat.primitives.serialization import pkcs7

    chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(
        chain[0], key, hashes.SHA256())  # type: ignore[arg-type]
    for extra in chain[1:]:
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.DER, [])
