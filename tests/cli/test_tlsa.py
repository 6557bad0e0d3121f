"""``mailstack tlsa``: the 3 1 1 record of our certificate and of the next key
(RFC 7672 §3.1.1, RFC 7671 §8.1), checked against openssl's own digest."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailstack.tls import ensure_self_signed
from tests.cli.conftest import make_cli, toml_str


def spki_sha256_hex(cert: Path) -> str:
    """The digest computed by openssl when present (an independent implementation)."""
    if shutil.which("openssl"):
        pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
                             capture_output=True, check=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                             capture_output=True, check=True).stdout
        return hashlib.sha256(der).hexdigest()
    from cryptography import x509

    c = x509.load_pem_x509_certificate(cert.read_bytes())
    return hashlib.sha256(c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def test_tlsa_prints_current_and_next_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_self_signed(cert, key, "mx.example.org")
    nxt = ec.generate_private_key(ec.SECP256R1())
    next_path = tmp_path / "next.pem"
    next_path.write_bytes(nxt.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    cli = make_cli(tmp_path, extra=(
        f"[tls]\ncert_file = {toml_str(str(cert))}\nkey_file = {toml_str(str(key))}\n"
        f"next_key_file = {toml_str(str(next_path))}\n"))
    cli.config.write_text(cli.config.read_text().replace(
        "[server]\n", '[server]\nhostname = "mx.example.org"\n'))
    out = cli.ok("tlsa").out.splitlines()
    assert len(out) == 2
    assert out[0].startswith(
        f"_25._tcp.mx.example.org. IN TLSA 3 1 1 {spki_sha256_hex(cert)}  ; current key")
    next_hex = hashlib.sha256(nxt.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    assert out[1].startswith(f"_25._tcp.mx.example.org. IN TLSA 3 1 1 {next_hex}  ; next key")
    assert cli.ok("tlsa", "--port", "465").out.startswith("_465._tcp.mx.example.org.")


def test_tlsa_without_certificate_or_with_a_bad_next_key(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    r = cli("tlsa")
    assert r.code == 1 and "no certificate at" in r.err and r.out == ""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_self_signed(cert, key, "mail.example.net")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    (tmp_path / "two").mkdir()
    cli2 = make_cli(tmp_path / "two", extra=(
        f"[tls]\ncert_file = {toml_str(str(cert))}\n"
        f"next_key_file = {toml_str(str(bad))}\n"))
    r = cli2("tlsa")
    assert r.code == 1 and "not an unencrypted PEM private key" in r.err
