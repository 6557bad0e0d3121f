"""DKIM signing (RFC 6376, RFC 8463): two signatures that dkimpy verifies as a receiver
would, the DMARC-relevant From oversigned, no signature without a key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dkim
import pytest

from mailstack.outbound.dkim import (
    ED25519,
    RSA,
    DkimSigner,
    SigningError,
    generate_key,
    new_selectors,
    signing_domain,
    txt_record,
    txt_strings,
)


@dataclass(frozen=True)
class Key:
    selector: str
    algorithm: str
    private_key: str
    public_key: str


class Keys:
    def __init__(self, keys: dict[str, list[Key]]) -> None:
        self.keys = keys

    async def dkim_signing_keys(self, domain: str) -> Sequence[Key]:
        return self.keys.get(domain, [])


def make_keys(domain: str) -> dict[str, list[Key]]:
    out = []
    for sel, alg in (("ms202601r", RSA), ("ms202601e", ED25519)):
        g = generate_key(alg)
        out.append(Key(sel, alg, g.private_key, g.public_key))
    return {domain: out}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys({**make_keys("example.com"), **make_keys("xn--bcher-kva.example")})


def dns_for(keys: Keys):  # type: ignore[no-untyped-def]
    records = {f"{k.selector}._domainkey.{d}.".encode():
               txt_record(k.algorithm, k.public_key).encode()
               for d, ks in keys.keys.items() for k in ks}
    return lambda name, timeout=5: records.get(name)


def verify_all(message: bytes, keys: Keys) -> list[bool]:
    n = message.count(b"DKIM-Signature:")
    out = []
    for i in range(n):
        try:
            out.append(bool(dkim.DKIM(message).verify(idx=i, dnsfunc=dns_for(keys))))
        except dkim.DKIMException:
            out.append(False)
    return out


MSG = (b"Received: from client by mail.example.net; Mon, 1 Jan 2024 10:00:00 +0000\r\n"
       b"From: Anna <anna@example.com>\r\nTo: bob@remote.example\r\n"
       b"Cc: c1@remote.example\r\nCc: c2@remote.example\r\n"
       b"Subject: hello   there\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
       b"Message-ID: <1@example.com>\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\nX-Mailer: test\r\n\r\n"
       b"Hello  Bob,\r\n\r\nbye \r\n\r\n\r\n")


def h_tag(prefix: bytes) -> list[list[str]]:
    out = []
    for sig in prefix.split(b"DKIM-Signature:")[1:]:
        flat = b"".join(sig.split()).decode()
        tags = dict(t.split("=", 1) for t in flat.split(";") if "=" in t)
        out.append(tags["h"].split(":"))
    return out


async def test_two_signatures_verify(keys: Keys) -> None:
    prefix = await DkimSigner(keys).sign(MSG)
    assert prefix.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in prefix and b"a=ed25519-sha256" in prefix
    assert b"c=relaxed/relaxed" in prefix and b"d=example.com" in prefix
    assert prefix.endswith(b"\r\n") and b"\n" not in prefix.replace(b"\r\n", b"")
    assert verify_all(prefix + MSG, keys) == [True, True]


async def test_signed_header_set_from_oversigned(keys: Keys) -> None:
    prefix = await DkimSigner(keys).sign(MSG)
    for h in h_tag(prefix):
        assert h == ["from", "from", "to", "cc", "cc", "subject", "date", "message-id",
                     "mime-version", "content-type"]


@pytest.mark.parametrize(("change", "still_valid"), [
    (lambda m: b"From: Mallory <m@evil.example>\r\n" + m, False),  # a second From added
    (lambda m: m + b"more\r\n", False),  # body changed
    (lambda m: m.replace(b"Subject: hello", b"Subject: HELLO"), False),
    (lambda m: b"Reply-To: m@evil.example\r\n" + m, True),  # not present when signed
    (lambda m: b"X-Spam: no\r\n" + m, True),  # unsigned field added
    (lambda m: m.replace(b"Subject: hello   there", b"Subject: hello\r\n there"), True),
    (lambda m: m.replace(b"bye \r\n", b"bye\r\n"), True),  # relaxed body
    (lambda m: m.replace(b"Received: from", b"Received:  from"), True),
])
async def test_changes_in_transit(keys: Keys, change, still_valid: bool) -> None:  # type: ignore[no-untyped-def]
    prefix = await DkimSigner(keys).sign(MSG)
    assert verify_all(prefix + change(MSG), keys) == [still_valid, still_valid]


async def test_no_key_no_signature(keys: Keys) -> None:
    signer = DkimSigner(keys)
    assert await signer.sign(MSG.replace(b"anna@example.com", b"anna@nokeys.example")) == b""
    assert await signer.sign(b"Subject: no from\r\n\r\nx\r\n") == b""
    assert await signer.sign(b"From: not an address\r\n\r\nx\r\n") == b""


async def test_idn_from_domain_signs_with_a_label(keys: Keys) -> None:
    msg = MSG.replace(b"anna@example.com", "anna@bücher.example".encode())
    assert signing_domain(msg) == "xn--bcher-kva.example"
    prefix = await DkimSigner(keys).sign(msg)
    assert b"d=xn--bcher-kva.example" in prefix
    assert verify_all(prefix + msg, keys) == [True, True]


async def test_big_message_signed_in_worker_process(keys: Keys) -> None:
    """Past the in-thread limit the work goes to a worker process; same result."""
    big = MSG + b"".join(b"line %d with some text\r\n" % i for i in range(5000))
    prefix = await DkimSigner(keys, in_thread_limit=1024).sign(big)
    assert verify_all(prefix + big, keys) == [True, True]


async def test_damaged_key_raises_signing_error() -> None:
    bad = Keys({"example.com": [Key("s1", RSA, "not a pem key", "")]})
    with pytest.raises(SigningError):
        await DkimSigner(bad).sign(MSG)


def test_txt_strings_split() -> None:
    g = generate_key(RSA)
    text = txt_record(RSA, g.public_key)
    parts = txt_strings(text)
    assert len(parts) == 2 and all(len(p) <= 255 for p in parts)
    assert "".join(parts) == text
    short = txt_record(ED25519, generate_key(ED25519).public_key)
    assert len(short) < 255 and txt_strings(short) == [short]
    assert txt_strings("a" * 510) == ["a" * 255, "a" * 255]


def test_selectors() -> None:
    jan = 1_704_067_200.0  # 2024-01-01
    assert new_selectors(jan, set()) == {RSA: "ms202401r", ED25519: "ms202401e"}
    assert new_selectors(jan, {"ms202401r", "ms202401e"}) == {
        RSA: "ms202401n2r", ED25519: "ms202401n2e"}
    assert new_selectors(jan, {"ms202401e", "ms202401n2r"})[RSA] == "ms202401n3r"
