"""Client auto-configuration over real HTTP(S) (docs/behaviour.md §11): Thunderbird's
autoconfig, Outlook's autodiscover POX, Apple's .mobileconfig and the MTA-STS policy,
from a real aiohttp client against the real listeners."""

from __future__ import annotations

import asyncio
import plistlib
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp
import pytest

from mailstack.app import App

from .conftest import ADDR, url

TB_PATH = "/.well-known/autoconfig/mail/config-v1.1.xml"
SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
AUTH_METHODS = {"password-cleartext", "password-encrypted", "NTLM", "GSAPI",
                "client-IP-address", "TLS-client-cert", "OAuth2", "none"}


def check_thunderbird(body: bytes) -> dict[str, list[dict[str, str]]]:
    """Check ``body`` against the clientConfig 1.1 structure Thunderbird documents and
    return the servers: {"incomingServer": [...], "outgoingServer": [...]}."""
    root = ET.fromstring(body)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    providers = root.findall("emailProvider")
    assert len(providers) == 1 and providers[0].get("id")
    prov = providers[0]
    assert [d.text for d in prov.findall("domain")]
    assert prov.findtext("displayName") and prov.findtext("displayShortName")
    out: dict[str, list[dict[str, str]]] = {"incomingServer": [], "outgoingServer": []}
    for tag, kinds in (("incomingServer", {"imap", "pop3"}), ("outgoingServer", {"smtp"})):
        for srv in prov.findall(tag):
            assert srv.get("type") in kinds
            fields = {child.tag: child.text or "" for child in srv}
            assert {"hostname", "port", "socketType", "username", "authentication"} <= set(
                fields)
            assert fields["socketType"] in SOCKET_TYPES
            assert fields["authentication"] in AUTH_METHODS
            assert 0 < int(fields["port"]) < 65536
            out[tag].append({"type": srv.get("type") or "", **fields})
    assert out["incomingServer"] and out["outgoingServer"]
    return out


async def test_thunderbird_autoconfig(web_app: App, http: aiohttp.ClientSession) -> None:
    ports = web_app.ports
    for listener in ("https", "http"):
        async with http.get(url(web_app, listener, TB_PATH),
                            params={"emailaddress": ADDR}) as r:
            assert r.status == 200, await r.text()
            assert r.content_type == "application/xml"
            servers = check_thunderbird(await r.read())
        imap, pop3 = servers["incomingServer"]
        (smtp,) = servers["outgoingServer"]
        # IMAP 993 SSL first, POP3 995 the alternative, SMTP 465 SSL (here: the ports the
        # test listeners bound), the host name, the full address as user name.
        assert (imap["type"], int(imap["port"]), imap["socketType"]) == (
            "imap", ports["imaps"], "SSL")
        assert (pop3["type"], int(pop3["port"]), pop3["socketType"]) == (
            "pop3", ports["pop3s"], "SSL")
        assert (smtp["type"], int(smtp["port"]), smtp["socketType"]) == (
            "smtp", ports["submissions"], "SSL")
        for srv in (imap, pop3, smtp):
            assert srv["hostname"] == "mail.example.net"
            assert srv["username"] == "%EMAILADDRESS%"
            assert srv["authentication"] == "password-cleartext"


async def test_autoconfig_by_host_name(web_app: App, http: aiohttp.ClientSession) -> None:
    """autoconfig.<domain>/mail/config-v1.1.xml, without the query parameter."""
    async with http.get(url(web_app, "http", "/mail/config-v1.1.xml"),
                        headers={"Host": "autoconfig.example.com"}) as r:
        assert r.status == 200
        assert ET.fromstring(await r.read()).find("emailProvider").get(  # type: ignore
            "id") == "example.com"
    async with http.get(url(web_app, "http", "/mail/config-v1.1.xml"),
                        headers={"Host": "autoconfig.other.example"}) as r:
        assert r.status == 404


async def test_no_enumeration_and_only_hosted_domains(web_app: App,
                                                      http: aiohttp.ClientSession) -> None:
    """An existing and a non-existing local part get the same answer; another domain
    gets 404 with the same text as any unknown thing."""
    bodies = []
    for who in (ADDR, "nobody-here@example.com", "NOBODY@EXAMPLE.COM"):
        async with http.get(url(web_app, "https", TB_PATH), params={"emailaddress": who}) as r:
            assert r.status == 200
            bodies.append(await r.read())
    assert bodies[0] == bodies[1] == bodies[2]
    texts = set()
    for who in ("anna@example.org", "x@sub.example.com"):
        async with http.get(url(web_app, "https", TB_PATH), params={"emailaddress": who}) as r:
            assert r.status == 404
            texts.add(await r.text())
    async with http.get(url(web_app, "https", "/no/such/thing")) as r:
        assert r.status == 404
        texts.add(await r.text())
    assert len(texts) == 1
    for bad in ("no-at-sign", "a b@example.com", "@example.com", "x@bad_domain!"):
        async with http.get(url(web_app, "https", TB_PATH), params={"emailaddress": bad}) as r:
            assert r.status == 400


AD_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{addr}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>
"""
AD_NS = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
OL_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


@pytest.mark.parametrize("path", ["/autodiscover/autodiscover.xml",
                                  "/Autodiscover/Autodiscover.xml",
                                  "/AUTODISCOVER/AUTODISCOVER.XML"])
async def test_outlook_autodiscover(web_app: App, http: aiohttp.ClientSession,
                                    path: str) -> None:
    body = AD_REQUEST.format(addr=ADDR).encode()
    async with http.post(url(web_app, "https", path), data=body,
                         headers={"Content-Type": "text/xml"}) as r:
        assert r.status == 200
        root = ET.fromstring(await r.read())
    assert root.tag == f"{AD_NS}Autodiscover"
    account = root.find(f"{OL_NS}Response/{OL_NS}Account")
    assert account is not None
    assert account.findtext(f"{OL_NS}AccountType") == "email"
    assert account.findtext(f"{OL_NS}Action") == "settings"
    protos = {p.findtext(f"{OL_NS}Type"): p for p in account.findall(f"{OL_NS}Protocol")}
    assert list(protos) == ["IMAP", "SMTP", "POP3"]
    ports = web_app.ports
    for kind, listener in (("IMAP", "imaps"), ("SMTP", "submissions"), ("POP3", "pop3s")):
        p = protos[kind]
        assert p.findtext(f"{OL_NS}Server") == "mail.example.net"
        assert p.findtext(f"{OL_NS}Port") == str(ports[listener])
        assert p.findtext(f"{OL_NS}SSL") == "on"
        assert p.findtext(f"{OL_NS}LoginName") == ADDR
        assert p.findtext(f"{OL_NS}AuthRequired") == "on"


LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Autodiscover><Request><EMailAddress>&lol3;@example.com</EMailAddress></Request></Autodiscover>
"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>
"""


@pytest.mark.parametrize("body", [
    b"", b"not xml at all", b"<Autodiscover><Request>", LAUGHS.encode(), EXTERNAL.encode(),
    b"<Autodiscover><Request></Request></Autodiscover>",
    AD_REQUEST.format(addr="anna@example.com" + " " * 70000).encode(),  # > 64 KiB
    b"\xff\xfe<\x00a\x00",
], ids=["empty", "text", "unclosed", "laughs", "external", "no-address", "oversized",
        "bad-encoding"])
async def test_autodiscover_refuses_bad_xml(web_app: App, http: aiohttp.ClientSession,
                                           body: bytes) -> None:
    async with http.post(url(web_app, "https", "/autodiscover/autodiscover.xml"),
                         data=body) as r:
        assert r.status == 400
        text = await r.text()
    assert "Traceback" not in text and "root:" not in text and len(text) < 200


async def test_autodiscover_oversized_chunked_and_other_domain(
        web_app: App, http: aiohttp.ClientSession) -> None:
    async def chunks():  # no Content-Length: the cap applies to what is read
        for _ in range(40):
            yield b"<a>" + b"x" * 4096 + b"</a>"

    async with http.post(url(web_app, "https", "/autodiscover/autodiscover.xml"),
                         data=chunks()) as r:
        assert r.status == 400
    async with http.post(url(web_app, "https", "/autodiscover/autodiscover.xml"),
                         data=AD_REQUEST.format(addr="x@elsewhere.example").encode()) as r:
        assert r.status == 404
    async with http.get(url(web_app, "https", "/autodiscover/autodiscover.xml")) as r:
        assert r.status == 405


async def test_apple_mobileconfig(web_app: App, http: aiohttp.ClientSession) -> None:
    async with http.get(url(web_app, "https", "/mobileconfig"), params={"address": ADDR}) as r:
        assert r.status == 200
        assert r.content_type == "application/x-apple-aspen-config"
        raw = await r.read()
    profile = plistlib.loads(raw)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    (mail,) = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["EmailAddress"] == ADDR
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"],
            mail["IncomingMailServerUseSSL"]) == ("mail.example.net", web_app.ports["imaps"],
                                                  True)
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"],
            mail["OutgoingMailServerUseSSL"]) == ("mail.example.net",
                                                  web_app.ports["submissions"], True)
    assert mail["IncomingMailServerUsername"] == mail["OutgoingMailServerUsername"] == ADDR
    assert b"Password</key>" not in raw.replace(b"OutgoingPasswordSameAsIncomingPassword", b"")
    # the same for a local part that does not exist (apart from the address itself)
    async with http.get(url(web_app, "https", "/mobileconfig"),
                        params={"address": "ghost@example.com"}) as r:
        assert r.status == 200
        assert plistlib.loads(await r.read())["PayloadContent"][0]["EmailAddress"] == (
            "ghost@example.com")
    async with http.get(url(web_app, "https", "/mobileconfig"),
                        params={"address": "anna@example.org"}) as r:
        assert r.status == 404
    async with http.get(url(web_app, "https", "/mobileconfig")) as r:
        assert r.status == 404


async def test_signed_mobileconfig(app_factory, http: aiohttp.ClientSession,
                                   tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.conftest import add_mailbox
    app = await app_factory(web={"mobileconfig_sign": True})
    await add_mailbox(app, ADDR)
    async with http.get(url(app, "https", "/mobileconfig"), params={"address": ADDR}) as r:
        assert r.status == 200
        signed = await r.read()
    (tmp_path / "p.der").write_bytes(signed)
    cmd = ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "p.der"),
           "-CAfile", str(tls_files[0]), "-purpose", "any"]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert plistlib.loads(proc.stdout)["PayloadContent"][0]["EmailAddress"] == ADDR


async def test_mta_sts_policy(web_app: App, http: aiohttp.ClientSession) -> None:
    path = "/.well-known/mta-sts.txt"
    async with http.get(url(web_app, "https", path),
                        headers={"Host": "mta-sts.example.com"}) as r:
        assert r.status == 200 and r.content_type == "text/plain"
        body = await r.read()
    # RFC 8461 §3.2: CRLF-separated key: value lines
    assert body == (b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.net\r\n"
                    b"max_age: 604800\r\n")
    for host in ("mta-sts.example.org", "mail.example.net", "example.com"):
        async with http.get(url(web_app, "https", path), headers={"Host": host}) as r:
            assert r.status == 404, host


async def test_mta_sts_settings(app_factory, http: aiohttp.ClientSession) -> None:
    from tests.conftest import add_mailbox
    app = await app_factory(web={"mta_sts_mode": "testing", "mta_sts_max_age": 86400,
                                 "mta_sts_mx": "mx1.example.net, *.mx.example.net"})
    await add_mailbox(app, ADDR)
    async with http.get(url(app, "https", "/.well-known/mta-sts.txt"),
                        headers={"Host": "mta-sts.example.com:443"}) as r:
        assert (await r.read()).split(b"\r\n") == [
            b"version: STSv1", b"mode: testing", b"mx: mx1.example.net",
            b"mx: *.mx.example.net", b"max_age: 86400", b""]


async def test_http_redirects_and_serves_acme_challenges(
        web_app: App, http: aiohttp.ClientSession) -> None:
    async with http.get(url(web_app, "http", "/some/page?x=1"), allow_redirects=False) as r:
        assert r.status == 308
        assert r.headers["Location"] == (
            f"https://127.0.0.1:{web_app.ports['https']}/some/page?x=1")
    assert web_app.services is not None
    web_app.services.acme_challenges["tok-EN_1"] = "tok-EN_1.thumbprint"
    async with http.get(url(web_app, "http", "/.well-known/acme-challenge/tok-EN_1")) as r:
        assert r.status == 200 and await r.text() == "tok-EN_1.thumbprint"
    async with http.get(url(web_app, "http", "/.well-known/acme-challenge/tok-en_1")) as r:
        assert r.status == 404  # tokens are case-sensitive
    async with http.get(url(web_app, "https", "/.well-known/acme-challenge/tok-EN_1")) as r:
        assert r.status == 404  # only on port 80


async def test_oversized_headers_refused_and_server_keeps_serving(
        web_app: App, http: aiohttp.ClientSession) -> None:
    """A header line bomb is refused by the HTTP parser (4xx), never a traceback, and the
    listener goes on answering."""
    r, w = await asyncio.open_connection("127.0.0.1", web_app.ports["http"])
    w.write(b"GET /mail/config-v1.1.xml HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000
            + b"\r\n\r\n")
    await w.drain()
    status = await asyncio.wait_for(r.readline(), 30)
    assert status.split()[1].startswith(b"4"), status
    w.close()
    async with http.get(url(web_app, "https", TB_PATH), params={"emailaddress": ADDR}) as resp:
        assert resp.status == 200
