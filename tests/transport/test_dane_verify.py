"""DANE verification without sockets (RFC 7672 §3, RFC 7671, RFC 6698 §2.1), plus the
3.11 way of getting the whole peer chain from Python's ssl (one real handshake)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ssl
from pathlib import Path

import pytest

from mailstack.outbound.dane import (
    TlsaRecord,
    association,
    make_verifier,
    name_matches,
    peer_chain_der,
    record_for,
    usable,
    verify_dane,
)
from tests.transport.certs import NOW, Pki, issue, make_pki, write_chain


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki("Unit")


def test_record_text_round_trip_and_usability() -> None:
    rec = TlsaRecord.parse("3 1 1 " + "AB" * 32)
    assert rec.text() == "3 1 1 " + "ab" * 32
    records = [TlsaRecord(u, s, m, b"x") for u in range(4) for s in range(3) for m in range(4)]
    good = usable(records)
    # Only DANE-TA/DANE-EE with selector 0/1 and matching type 0/1/2 (RFC 7672 §3.1.3).
    assert {(r.usage, r.selector, r.mtype) for r in good} == {
        (u, s, m) for u in (2, 3) for s in (0, 1) for m in (0, 1, 2)}
    with pytest.raises(ValueError):
        TlsaRecord.parse("3 1")


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_matches_every_selector_and_matching_type(selector: int, mtype: int) -> None:
    leaf = issue("mx.example.test", names=("mx.example.test",))
    rec = TlsaRecord(3, selector, mtype, association(leaf.cert, selector, mtype))
    assert verify_dane([rec], [leaf.der], ["mx.example.test"], NOW) is None
    other = issue("mx.example.test", names=("mx.example.test",))
    assert verify_dane([rec], [other.der], ["mx.example.test"], NOW) is not None


def test_dane_ee_ignores_names_and_expiry() -> None:
    old = issue("nothing.like.it", names=("nothing.like.it",),
                not_before=NOW - dt.timedelta(days=900), not_after=NOW - dt.timedelta(days=1))
    rec = record_for(old.cert)
    assert verify_dane([rec], [old.der], ["mx.example.test"], NOW) is None


def test_spki_record_survives_certificate_renewal_with_same_key() -> None:
    first = issue("mx.k.test", names=("mx.k.test",))
    renewed = issue("mx.k.test", names=("mx.k.test",), key=first.key)
    rec = record_for(first.cert, 3, 1, 1)
    assert verify_dane([rec], [renewed.der], [], NOW) is None
    assert verify_dane([record_for(first.cert, 3, 0, 1)], [renewed.der], [], NOW) is not None


def test_pkix_usages_alone_never_authenticate(pki: Pki) -> None:
    leaf = pki.leaf("mx.p.test")
    recs = [TlsaRecord(1, 1, 1, association(leaf.cert, 1, 1)),
            TlsaRecord(0, 0, 1, association(pki.inter.cert, 0, 1))]
    assert verify_dane(recs, [leaf.der, pki.inter.der], ["mx.p.test"], NOW) == \
        "no usable TLSA record"


@pytest.mark.parametrize("selector,mtype", [(0, 1), (1, 1), (1, 2), (0, 0)])
def test_dane_ta_intermediate(pki: Pki, selector: int, mtype: int) -> None:
    leaf = pki.leaf("mx.ta.test")
    rec = TlsaRecord(2, selector, mtype, association(pki.inter.cert, selector, mtype))
    assert verify_dane([rec], [leaf.der, pki.inter.der], ["mx.ta.test"], NOW) is None


def test_dane_ta_root_in_chain(pki: Pki) -> None:
    leaf = pki.leaf("mx.ta.test")
    rec = record_for(pki.root.cert, 2, 0, 1)
    chain = [leaf.der, pki.inter.der, pki.root.der]
    assert verify_dane([rec], chain, ["mx.ta.test"], NOW) is None
    # The TA must be sent by the server (RFC 7671 §8.1): without it, no match.
    assert verify_dane([rec], chain[:2], ["mx.ta.test"], NOW) is not None


def test_dane_ta_name_rules(pki: Pki) -> None:
    rec = record_for(pki.inter.cert, 2, 1, 1)
    wild = pki.leaf("*.ta.test")
    chain = [wild.der, pki.inter.der]
    assert verify_dane([rec], chain, ["mx.ta.test"], NOW) is None
    reason = verify_dane([rec], chain, ["a.mx.ta.test"], NOW)
    assert reason and "do not match" in reason
    # The destination domain is an accepted reference identifier (RFC 7672 §3.2.2).
    dom = pki.leaf("ta.test")
    assert verify_dane([rec], [dom.der, pki.inter.der], ["mx.other.test", "ta.test"],
                       NOW) is None
    assert not name_matches("*.ta.test", "ta.test")
    assert not name_matches("m*.ta.test", "mx.ta.test")
    assert name_matches("MX.TA.TEST.", "mx.ta.test")


def test_dane_ta_checks_dates_signatures_and_ca_flags(pki: Pki) -> None:
    rec = record_for(pki.inter.cert, 2, 1, 1)
    expired = pki.leaf("mx.ta.test", not_before=NOW - dt.timedelta(days=10),
                       not_after=NOW - dt.timedelta(days=1))
    reason = verify_dane([rec], [expired.der, pki.inter.der], ["mx.ta.test"], NOW)
    assert reason and "validity" in reason
    forged = issue("mx.ta.test", names=("mx.ta.test",))  # self-signed, not from the TA
    reason = verify_dane([rec], [forged.der, pki.inter.der], ["mx.ta.test"], NOW)
    assert reason and "not issued and signed" in reason
    # An end-entity certificate posing as an intermediate CA.
    fake_ca = pki.leaf("fake-ca")
    below = issue("mx.ta.test", issuer=fake_ca, names=("mx.ta.test",))
    reason = verify_dane([rec], [below.der, fake_ca.der, pki.inter.der], ["mx.ta.test"], NOW)
    assert reason and "not a CA" in reason


def test_bad_input_chains() -> None:
    rec = TlsaRecord(3, 1, 1, b"\0" * 32)
    assert verify_dane([rec], [], ["x"], NOW) == "the server sent no certificate"
    assert "cannot be parsed" in (verify_dane([rec], [b"junk"], ["x"], NOW) or "")


def test_verifier_uses_the_clock_for_dane_ta_only(pki: Pki) -> None:
    leaf = pki.leaf("mx.c.test")
    chain = [leaf.der, pki.inter.der]
    later = (NOW + dt.timedelta(days=400)).timestamp()
    ta = make_verifier([record_for(pki.inter.cert, 2, 1, 1)], ["c.test"], lambda: later)
    assert "validity" in (ta(chain, "mx.c.test") or "")
    ee = make_verifier([record_for(leaf.cert)], [], lambda: later)
    assert ee(chain, "mx.c.test") is None


async def test_peer_chain_der_returns_the_whole_chain_on_this_python(
        pki: Pki, tmp_path: Path) -> None:
    """With a CERT_NONE context (as DANE uses), the client gets leaf + intermediate."""
    leaf = pki.leaf("mx.chain.test")
    cert, key = write_chain(tmp_path, "chain", leaf, pki.inter)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    cctx = ssl.create_default_context()
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)
    chain = peer_chain_der(writer.get_extra_info("ssl_object"))
    writer.write(b"x")
    writer.close()
    server.close()
    await server.wait_closed()
    assert chain == [leaf.der, pki.inter.der]
    assert hashlib.sha256(chain[1]).digest() == association(pki.inter.cert, 0, 1)
