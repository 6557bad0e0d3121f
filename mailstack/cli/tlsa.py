"""``mailstack tlsa``: the TLSA records to publish for our own SMTP server
(RFC 7672 §3.1.1 "3 1 1", RFC 7671 §8.1 key rollover). docs/behaviour.md §6, §10.

It reads the configured certificate (``tls.cert_file``) and, when ``tls.next_key_file``
is set, the key the certificate will move to, and prints one zone-file line for each,
so the operator publishes both before a rollover and the old one after it.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..outbound.dane import MATCH_SHA256, SEL_SPKI, TlsaRecord, association
from .common import CliError, Ctx, Parsers


def spki_record(spki_der: bytes) -> TlsaRecord:
    return TlsaRecord(3, SEL_SPKI, MATCH_SHA256, hashlib.sha256(spki_der).digest())


def record_line(hostname: str, port: int, record: TlsaRecord, note: str) -> str:
    return f"_{port}._tcp.{hostname.rstrip('.')}. IN TLSA {record.text()}  ; {note}"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read the {what} {path}: {exc.strerror}") from exc


def cmd_tlsa(ctx: Ctx, args: argparse.Namespace) -> int:
    s = ctx.settings
    cert_path = s.cert_path
    if not cert_path.exists():
        raise CliError(f"no certificate at {cert_path}: set tls.cert_file (or run "
                       "`mailstack serve --dev` once to make a self-signed one)")
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path, "certificate"))
    except ValueError as exc:
        raise CliError(f"{cert_path} is not a PEM certificate") from exc
    ctx.print(record_line(s.server.hostname, args.port,
                          TlsaRecord(3, SEL_SPKI, MATCH_SHA256,
                                     association(cert, SEL_SPKI, MATCH_SHA256)),
                          f"current key ({cert_path})"))
    if s.tls.next_key_file:
        key_path = Path(s.tls.next_key_file)
        try:
            key = serialization.load_pem_private_key(_read(key_path, "next key"), None)
        except (ValueError, TypeError) as exc:
            raise CliError(f"{key_path} is not an unencrypted PEM private key") from exc
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ctx.print(record_line(s.server.hostname, args.port, spki_record(spki),
                              f"next key ({key_path}): publish now, keep both until "
                              "the certificate uses it"))
    return 0


def register(p: Parsers) -> None:
    sp = p.cmd(p.sub, "tlsa", cmd_tlsa,
               "Print the DANE TLSA record (3 1 1) of the server's certificate, and of "
               "tls.next_key_file when set, for the MX host name.")
    sp.add_argument("--port", type=int, default=25,
                    help="the TCP port the record is for (default 25, the MX port)")
