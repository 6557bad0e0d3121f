"""``mailstack tls status`` on the real command line: names, issuer, expiry and a TLSA
3 1 1 record that matches what openssl computes from the certificate."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import cli_env, toml_str


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailstack", "--config", str(config), *args],
                          capture_output=True, text=True, env=cli_env(), timeout=60)


def openssl_spki_sha256(cert: Path) -> str:
    pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def test_tls_status(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[server]\ndata_dir = {toml_str(str(tmp_path / 'data'))}\n"
                      f"[tls]\ncert_file = {toml_str(str(tls_files[0]))}\n"
                      f"key_file = {toml_str(str(tls_files[1]))}\n")
    r = run(config, "tls", "status")
    assert r.returncode == 0, r.stderr
    assert "names:   mail.example.net, localhost, 127.0.0.1, ::1" in r.stdout
    assert "(self-signed)" in r.stdout and "days left" in r.stdout
    want = openssl_spki_sha256(tls_files[0])
    assert f"_25._tcp.mail.example.net. IN TLSA 3 1 1 {want}" in r.stdout
    assert "acme:      off" in r.stdout

    with config.open("a") as f:
        f.write("acme = true\n")
    r = run(config, "domain", "add", "example.com")
    assert r.returncode == 0, r.stderr
    r = run(config, "tls", "status")
    assert r.returncode == 0, r.stderr
    assert "wanted:  mail.example.net, autoconfig.example.com, autodiscover.example.com, " \
           "mta-sts.example.com" in r.stdout
    assert "renewal: due: self-signed certificate" in r.stdout
    assert "validation: http-01, then tls-alpn-01" in r.stdout  # RFC 8737 when 80 fails


def test_tls_status_without_certificate(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[server]\ndata_dir = {toml_str(str(tmp_path / 'data'))}\n")
    r = run(config, "tls", "status")
    assert r.returncode == 1
    assert "no readable certificate at" in r.stderr and "Traceback" not in r.stderr
