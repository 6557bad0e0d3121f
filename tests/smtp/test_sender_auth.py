"""Inbound sender authentication on the MX, over the wire (docs/behaviour.md §5
"sender authentication"): SPF (RFC 7208), DKIM (RFC 6376, RFC 8463), DMARC (RFC 7489),
ARC (RFC 8617) and the Authentication-Results field (RFC 8601).

DNS is the real rig (nsd + unbound on loopback, tests/dnsrig.py): the zones below carry
the SPF, DKIM and DMARC records; messages are signed for real with dkimpy; a mailing
list re-sends and ARC-seals for real. Each case sends with smtplib to the MX port and
checks the reply, the folder the message landed in, and our exact
Authentication-Results field.
"""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailstack.app import App
from tests.dnsrig import DnsRig, dns_rig  # noqa: F401  (the session fixture)
from tests.smtp.conftest import PASSWORD, Env, populate

HOST = "mail.example.net"  # our authserv-id (tests/conftest.py make_settings)
RCPT = "anna@example.com"


def _txt(value: str) -> str:
    """A TXT rdata, split into strings of at most 200 octets (RFC 1035 §3.3.14)."""
    return " ".join(f'"{value[i:i + 200]}"' for i in range(0, len(value), 200))


@dataclass
class Keys:
    rsa_pem: bytes
    rsa_record: str
    small_pem: bytes
    small_record: str
    ed_seed: bytes
    ed_record: str


def _rsa(bits: int, workdir: Path) -> tuple[bytes, str]:
    if bits >= 1024:
        key = rsa.generate_private_key(65537, bits)
    else:  # cryptography will not make keys this small; openssl still does
        pem_path = workdir / f"rsa{bits}.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(pem_path), str(bits)],
                       check=True, capture_output=True)
        loaded = serialization.load_pem_private_key(pem_path.read_bytes(), None,
                                                    unsafe_skip_rsa_key_validation=True)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        key = loaded
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def zones(dns_rig: DnsRig, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
          ) -> Iterator[Keys]:
    rsa_pem, rsa_record = _rsa(2048, tmp_path_factory.mktemp("keys"))
    small_pem, small_record = _rsa(512, tmp_path_factory.mktemp("keys"))
    ed = nacl.signing.SigningKey.generate()
    ed_record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(ed.verify_key)).decode()
    keys = [f"sel._domainkey IN TXT {_txt(rsa_record)}",
            f"small._domainkey IN TXT {_txt(small_record)}",
            f"ed._domainkey IN TXT {_txt(ed_record)}"]
    z = dns_rig.publish
    # SPF pass for 127.0.0.1, DMARC p=reject; news.pass.test for relaxed alignment
    z("pass.test", ['@ IN TXT "v=spf1 ip4:127.0.0.1 -all"',
                    '_dmarc IN TXT "v=DMARC1; p=reject"',
                    'news IN TXT "v=spf1 a:mx.pass.test -all"', "mx IN A 127.0.0.1", *keys],
      mode="unsigned")
    z("reject.test", ['@ IN TXT "v=spf1 ip4:192.0.2.1 -all"',
                      '_dmarc IN TXT "v=DMARC1; p=reject; rua=mailto:d@reject.test"', *keys],
      mode="unsigned")
    z("quar.test", ['@ IN TXT "v=spf1 ip4:192.0.2.1 ~all"',
                    '_dmarc IN TXT "v=DMARC1; p=quarantine"'], mode="unsigned")
    z("sub.test", ['_dmarc IN TXT "v=DMARC1; p=none; sp=reject"',
                   '@ IN TXT "v=spf1 -all"', 'mail IN TXT "v=spf1 -all"'], mode="unsigned")
    z("strict.test", ['_dmarc IN TXT "v=DMARC1; p=reject; aspf=s; adkim=s"',
                      '@ IN TXT "v=spf1 -all"',
                      'bounce IN TXT "v=spf1 ip4:127.0.0.0/8 -all"'], mode="unsigned")
    includes = " ".join(f"include:l{i}.loop.test" for i in range(1, 12))
    z("loop.test", [f'@ IN TXT "v=spf1 {includes} -all"',
                    *(f'l{i} IN TXT "v=spf1 ip4:192.0.2.{i} -all"' for i in range(1, 12))],
      mode="unsigned")
    z("list.test", ['@ IN TXT "v=spf1 ip4:127.0.0.1 -all"', *keys], mode="unsigned")
    z("rogue.test", ['@ IN TXT "v=spf1 ip4:127.0.0.1 -all"', *keys], mode="unsigned")
    dns_rig.blackhole("dead.test")
    yield Keys(rsa_pem, rsa_record, small_pem, small_record, bytes(ed), ed_record)


@pytest.fixture
async def mx(app_factory: Callable[..., Any], client_ssl: Any, dns_rig: DnsRig,  # noqa: F811
             zones: Keys) -> Env:
    host, port = dns_rig.resolver
    app: App = await app_factory(
        sender_auth={"enabled": True, "dns_budget_seconds": 4.0,
                     "trusted_arc_sealers": "list.test"},
        outbound_tls={"dns_resolver": f"{host}:{port}", "dns_timeout_seconds": 3.0})
    await populate(app)
    return Env(app, client_ssl)


def message(sender: str, subject: str = "hello", extra: str = "",
            body: str = "hello there\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {RCPT}\r\nSubject: {subject}\r\n{extra}"
            f"Message-ID: <{abs(hash(subject + sender))}@test>\r\n\r\n{body}").encode()


def sign(msg: bytes, domain: str, keys: Keys, selector: str = "sel", **kw: Any) -> bytes:
    pem = {"sel": keys.rsa_pem, "small": keys.small_pem}.get(selector)
    if selector == "ed":
        kw["signature_algorithm"] = b"ed25519-sha256"
        pem = base64.b64encode(keys.ed_seed)
    assert pem is not None
    return dkim.sign(msg, selector.encode(), domain.encode(), pem,
                     include_headers=[b"from", b"to", b"subject", b"message-id"], **kw) + msg


def b_of(signed: bytes) -> str:
    """header.b: the first 8 characters of the signature's b= (RFC 8601 §2.7.1)."""
    m = re.search(rb"\bb=([A-Za-z0-9+/=\s]+)", signed.split(b"DKIM-Signature:")[1])
    assert m is not None
    return re.sub(rb"\s+", b"", m.group(1))[:8].decode()


async def send(env: Env, mail_from: str, msg: bytes, helo: str = "client.test",
               rcpts: tuple[str, ...] = (RCPT,)) -> tuple[int, str]:
    """smtplib on the MX port (in a thread: the server runs on this event loop)."""
    def run() -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", env.port("smtp"), local_hostname=helo,
                          timeout=30) as s:
            try:
                s.sendmail(mail_from, list(rcpts), msg)
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error.decode()
        return 250, ""
    return await asyncio.to_thread(run)


async def folder(env: Env, name: str, email: str = RCPT) -> list[bytes]:
    addr = await env.store.get_address(email)
    f = await env.store.get_folder(addr.id, name)
    return [await env.store.message_bytes(m) for m in await env.store.list_messages(f.id)]


def header_fields(raw: bytes, name: str) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    field = re.compile(rf"^{name}:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*",
                       re.IGNORECASE | re.MULTILINE)
    return [m.group(0) for m in field.finditer(head)]


def ours(raw: bytes) -> str:
    """Our one Authentication-Results field, unfolded; and it must be the only one."""
    found = [f for f in header_fields(raw, "Authentication-Results")
             if re.match(rf"Authentication-Results:\s*{re.escape(HOST)};", f, re.I)]
    assert len(found) == 1, found
    return re.sub(r"\r\n\t", " ", found[0])


IPREV = "iprev=pass policy.iprev=127.0.0.1 (localhost)"


def ar(*methods: str) -> str:
    return f"Authentication-Results: {HOST}; " + "; ".join([IPREV, *methods])


async def only_in(env: Env, name: str) -> bytes:
    inbox, junk = await folder(env, "INBOX"), await folder(env, "Junk")
    assert len(inbox) + len(junk) == 1, (len(inbox), len(junk))
    got = inbox if name == "INBOX" else junk
    assert len(got) == 1, f"expected the message in {name}"
    return got[0]


# --- SPF ---------------------------------------------------------------------------


async def test_spf_pass_and_dkim_pass_aligned_is_dmarc_pass(mx: Env, zones: Keys) -> None:
    msg = sign(message("a@pass.test"), "pass.test", zones)
    assert (await send(mx, "a@pass.test", msg))[0] == 250
    raw = await only_in(mx, "INBOX")
    assert ours(raw) == ar(
        "spf=pass smtp.mailfrom=a@pass.test",
        f"dkim=pass header.d=pass.test header.s=sel header.b={b_of(msg)}",
        "dmarc=pass (p=reject) header.from=pass.test", "arc=none")
    spf = header_fields(raw, "Received-SPF")
    assert len(spf) == 1 and spf[0].startswith(
        f"Received-SPF: pass ({HOST}: domain of a@pass.test designates 127.0.0.1 as "
        "permitted sender)")
    assert "client-ip=127.0.0.1;" in spf[0] and "identity=mailfrom;" in spf[0]
    # RFC 7208 §9.1 / RFC 8601 §5: ours sit above our Received:, which names the
    # forward-confirmed reverse DNS of the client
    lines = raw.decode().split("\r\n")
    first = [i for i, line in enumerate(lines) if line.startswith(
        ("Authentication-Results:", "Received-SPF:", "Received:"))]
    assert [lines[i].split(":")[0] for i in first] == [
        "Authentication-Results", "Received-SPF", "Received"]
    assert "Received: from client.test (localhost [127.0.0.1])" in raw.decode()


async def test_spf_fail_with_dmarc_reject_is_refused_after_data(mx: Env) -> None:
    code, text = await send(mx, "ceo@reject.test", message("ceo@reject.test"))
    assert code == 550 and text.startswith("5.7.1") and "reject.test" in text
    assert await mx.total_stored() == 0


async def test_spf_softfail_with_dmarc_quarantine_goes_to_junk(mx: Env) -> None:
    assert (await send(mx, "x@quar.test", message("x@quar.test")))[0] == 250
    raw = await only_in(mx, "Junk")
    assert ours(raw) == ar("spf=softfail smtp.mailfrom=x@quar.test", "dkim=none",
                           "dmarc=fail (p=quarantine; dis=quarantine) header.from=quar.test",
                           "arc=none")


async def test_spf_permerror_too_many_lookups(mx: Env) -> None:
    assert (await send(mx, "x@loop.test", message("x@loop.test")))[0] == 250
    raw = await only_in(mx, "INBOX")
    assert ours(raw) == ar(
        "spf=permerror (more than 10 DNS-querying terms, RFC 7208 section 4.6.4) "
        "smtp.mailfrom=x@loop.test", "dkim=none", "dmarc=none header.from=loop.test",
        "arc=none")


async def test_spf_temperror_from_a_zone_that_times_out_never_rejects(mx: Env) -> None:
    assert (await send(mx, "x@dead.test", message("x@dead.test")))[0] == 250
    raw = await only_in(mx, "INBOX")
    # a real timeout: the rig's server for dead.test never answers
    assert ours(raw) == ar(
        "spf=temperror (DNS lookup of dead.test TXT failed) smtp.mailfrom=x@dead.test",
        "dkim=none", "dmarc=temperror (DMARC record lookup failed) header.from=dead.test",
        "arc=none")
    assert header_fields(raw, "Received-SPF")[0].startswith("Received-SPF: temperror")


async def test_null_sender_is_checked_on_the_helo_name(mx: Env) -> None:
    assert (await send(mx, "", message("x@list.test"), helo="list.test"))[0] == 250
    raw = await only_in(mx, "INBOX")
    assert ours(raw) == ar("spf=pass smtp.helo=postmaster@list.test", "dkim=none",
                           "dmarc=none header.from=list.test", "arc=none")


# --- DMARC policies and alignment -----------------------------------------------------


async def test_subdomain_policy_sp_applies_to_subdomains_only(mx: Env) -> None:
    code, _ = await send(mx, "x@mail.sub.test", message("x@mail.sub.test"))
    assert code == 550
    assert await mx.total_stored() == 0
    assert (await send(mx, "x@sub.test", message("x@sub.test")))[0] == 250
    raw = await only_in(mx, "INBOX")
    assert ours(raw) == ar("spf=fail smtp.mailfrom=x@sub.test", "dkim=none",
                           "dmarc=fail (p=none; dis=none) header.from=sub.test", "arc=none")


async def test_relaxed_alignment_passes_for_a_subdomain_bounce_address(mx: Env) -> None:
    assert (await send(mx, "b@news.pass.test", message("a@pass.test")))[0] == 250
    raw = await only_in(mx, "INBOX")
    assert ours(raw) == ar("spf=pass smtp.mailfrom=b@news.pass.test", "dkim=none",
                           "dmarc=pass (p=reject) header.from=pass.test", "arc=none")


async def test_strict_alignment_fails_for_a_subdomain_bounce_address(mx: Env) -> None:
    code, text = await send(mx, "b@bounce.strict.test", message("a@strict.test"))
    assert code == 550 and "strict.test" in text
    assert await mx.total_stored() == 0


async def test_per_domain_override_mark_delivers_a_p_reject_failure(mx: Env) -> None:
    await mx.store.set_dmarc_action("example.com", "mark")
    assert (await send(mx, "ceo@reject.test", message("ceo@reject.test")))[0] == 250
    raw = await only_in(mx, "INBOX")
    assert "dmarc=fail (p=reject; dis=reject) header.from=reject.test" in ours(raw)
    await mx.store.set_dmarc_action("example.com", "quarantine")
    assert (await send(mx, "ceo@reject.test", message("ceo@reject.test", "second")))[0] == 250
    assert len(await folder(mx, "Junk")) == 1


async def test_mixed_recipient_domains_refuse_only_when_all_would(mx: Env) -> None:
    """docs/behaviour.md §5: one recipient's domain marks, the other follows p=reject:
    the message is accepted; the marking domain's copy is in INBOX, the other in Junk."""
    other = "frida@free.example"
    await mx.store.set_dmarc_action("free.example", "mark")
    code, _ = await send(mx, "ceo@reject.test", message("ceo@reject.test"),
                         rcpts=(RCPT, other))
    assert code == 250
    assert len(await folder(mx, "Junk")) == 1 and await folder(mx, "INBOX") == []
    [raw] = await folder(mx, "INBOX", other)
    assert await folder(mx, "Junk", other) == []
    assert "dmarc=fail (p=reject; dis=reject) header.from=reject.test" in ours(raw)


# --- DKIM -----------------------------------------------------------------------------


async def test_dkim_pass_rescues_spf_fail_and_ed25519_verifies(mx: Env, zones: Keys) -> None:
    msg = sign(message("boss@reject.test"), "reject.test", zones, selector="ed")
    assert (await send(mx, "boss@reject.test", msg))[0] == 250
    raw = await only_in(mx, "INBOX")
    assert ours(raw) == ar(
        "spf=fail smtp.mailfrom=boss@reject.test",
        f"dkim=pass header.d=reject.test header.s=ed header.b={b_of(msg)}",
        "dmarc=pass (p=reject) header.from=reject.test", "arc=none")


async def test_small_rsa_key_fails_and_body_length_limit_does_not_count(
        mx: Env, zones: Keys) -> None:
    small = sign(message("boss@reject.test", "small"), "reject.test", zones,
                 selector="small")
    assert (await send(mx, "boss@reject.test", small))[0] == 550
    limited = sign(message("boss@reject.test", "limited"), "reject.test", zones,
                   length=True)
    assert (await send(mx, "boss@reject.test", limited))[0] == 550
    assert await mx.total_stored() == 0
    # the same two delivered when the domain only marks: the results say why
    await mx.store.set_dmarc_action("example.com", "mark")
    assert (await send(mx, "boss@reject.test", small))[0] == 250
    assert (await send(mx, "boss@reject.test", limited + b"appended by someone else\r\n"))[0] == 250
    got = [ours(r) for r in await folder(mx, "INBOX")]
    assert (f"dkim=fail (key shorter than 1024 bits) header.d=reject.test header.s=small "
            f"header.b={b_of(small)}") in got[0]
    assert (f"dkim=policy (l= body length limit: unsigned content may follow) "
            f"header.d=reject.test header.s=sel header.b={b_of(limited)}") in got[1]
    assert all("dmarc=fail" in g for g in got)


async def test_broken_signature_fails(mx: Env, zones: Keys) -> None:
    msg = sign(message("a@pass.test"), "pass.test", zones).replace(b"hello there",
                                                                     b"hello tamper")
    assert (await send(mx, "a@pass.test", msg))[0] == 250  # SPF still passes, aligned
    raw = await only_in(mx, "INBOX")
    assert (f"dkim=fail (body hash did not verify) header.d=pass.test header.s=sel "
            f"header.b={b_of(msg)}") in ours(raw)


# --- forged results ---------------------------------------------------------------------


async def test_forged_authentication_results_are_removed(mx: Env) -> None:
    forged = (f"Authentication-Results: {HOST}; dkim=pass header.d=reject.test;\r\n"
              "\tdmarc=pass header.from=reject.test\r\n"
              f"Authentication-Results: (trust me) {HOST.upper()}; spf=pass\r\n"
              "Authentication-Results: other.example; spf=pass smtp.mailfrom=x@quar.test\r\n")
    assert (await send(mx, "x@quar.test", message("x@quar.test", extra=forged)))[0] == 250
    raw = await only_in(mx, "Junk")
    fields = header_fields(raw, "Authentication-Results")
    assert len(fields) == 2  # ours and the other ADMD's
    assert ours(raw).startswith(ar("spf=softfail"))
    assert "dkim=pass" not in raw.decode() and "trust me" not in raw.decode()
    assert any(f.startswith("Authentication-Results: other.example;") for f in fields)


async def test_a_spooled_message_is_checked_whole_and_loses_forged_results(
        app_factory: Callable[..., Any], client_ssl: Any, dns_rig: DnsRig,  # noqa: F811
        zones: Keys) -> None:
    """A message past smtp.spool_threshold_bytes arrives in a spool file
    (docs/behaviour.md §12): DKIM is verified over all of it, and the forged results are
    removed from the stored header all the same."""
    host, port = dns_rig.resolver
    app: App = await app_factory(
        sender_auth={"enabled": True, "dns_budget_seconds": 4.0},
        outbound_tls={"dns_resolver": f"{host}:{port}", "dns_timeout_seconds": 3.0},
        smtp={"spool_threshold_bytes": 4096})
    await populate(app)
    env = Env(app, client_ssl)
    forged = f"Authentication-Results: {HOST}; dmarc=pass header.from=reject.test\r\n"
    body = "".join(f"line {i} of a long message\r\n" for i in range(20000))
    msg = sign(message("a@pass.test", extra=forged, body=body), "pass.test", zones)
    assert len(msg) > 4096 * 100
    assert (await send(env, "a@pass.test", msg))[0] == 250
    raw = await only_in(env, "INBOX")
    assert ours(raw) == ar(
        "spf=pass smtp.mailfrom=a@pass.test",
        f"dkim=pass header.d=pass.test header.s=sel header.b={b_of(msg)}",
        "dmarc=pass (p=reject) header.from=pass.test", "arc=none")
    assert "reject.test" not in raw.decode()
    assert raw.endswith(body.encode())
    assert not [p for p in (Path(app.settings.server.data_dir) / "blobs" / "tmp").rglob("*")
                if p.is_file()]


# --- ARC ----------------------------------------------------------------------------------


def list_resend(keys: Keys, sealer: str) -> bytes:
    """A mailing list got a DKIM-signed p=reject message, checked it, changed the
    subject and body (breaking the signature) and sealed the result (RFC 8617 §5.1)."""
    original = sign(message("a@pass.test", "news"), "pass.test", keys)
    changed = (original.replace(b"Subject: news", b"Subject: [list] news")
               + b"-- \r\nlist footer\r\n")
    checked = (f"Authentication-Results: {sealer}; dkim=pass header.d=pass.test; "
               "dmarc=pass header.from=pass.test\r\n").encode() + changed
    seal = dkim.arc_sign(checked, b"sel", sealer.encode(), keys.rsa_pem, sealer.encode())
    return b"".join(seal) + checked


async def test_trusted_forwarder_arc_overrides_dmarc_failure(mx: Env, zones: Keys) -> None:
    msg = list_resend(zones, "list.test")
    assert (await send(mx, "bounce@list.test", msg))[0] == 250
    raw = await only_in(mx, "INBOX")
    assert ours(raw) == ar(
        "spf=pass smtp.mailfrom=bounce@list.test",
        f"dkim=fail (body hash did not verify) header.d=pass.test header.s=sel "
        f"header.b={b_of(msg)}",
        "dmarc=fail (p=reject; dis=reject; policy not applied: valid ARC chain sealed by "
        "trusted list.test) header.from=pass.test",
        "arc=pass (i=1 sealed by list.test)")


async def test_arc_from_an_untrusted_forwarder_does_not_override(mx: Env,
                                                                zones: Keys) -> None:
    code, _ = await send(mx, "bounce@rogue.test", list_resend(zones, "rogue.test"))
    assert code == 550
    assert await mx.total_stored() == 0


async def test_submission_is_not_checked(mx: Env) -> None:
    def run() -> None:
        with smtplib.SMTP("127.0.0.1", mx.port("submission"), timeout=30) as s:
            s.starttls(context=mx.client_ssl)
            s.login(RCPT, PASSWORD)
            s.sendmail(RCPT, ["bob@example.com"], message(RCPT))
    await asyncio.to_thread(run)
    got = await folder(mx, "INBOX", "bob@example.com")
    assert len(got) == 1 and b"Authentication-Results" not in got[0]


async def test_bdat_gets_the_same_checks(mx: Env) -> None:
    """RFC 3030 CHUNKING ends in the same place as DATA: the refusal comes after the
    LAST chunk, and nothing is stored."""
    from tests.smtp.conftest import Raw

    raw = await Raw.open(mx.port("smtp"))
    try:
        assert (await raw.cmd("EHLO client.test"))[0] == 250
        assert (await raw.cmd("MAIL FROM:<ceo@reject.test>"))[0] == 250
        assert (await raw.cmd(f"RCPT TO:<{RCPT}>"))[0] == 250
        body = message("ceo@reject.test", "chunked")
        await raw.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
        code, text = await raw.reply()
        assert code == 550 and text.startswith("5.7.1")
    finally:
        await raw.close()
    assert await mx.total_stored() == 0
