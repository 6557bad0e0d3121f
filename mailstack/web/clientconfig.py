"""What a mail client is told (docs/behaviour.md §11), in each client's format: pure
functions from settings and an address to bytes, no I/O.

- Thunderbird autoconfig, clientConfig version 1.1 (the format Thunderbird's ISPDB
  documents: ``emailProvider`` with ``incomingServer``/``outgoingServer``).
- Outlook autodiscover "POX" (``outlook/requestschema/2006`` in,
  ``outlook/responseschema/2006a`` out).
- Apple configuration profile (``.mobileconfig``, payload ``com.apple.mail.managed``),
  without any password.
- The MTA-STS policy file (RFC 8461 §3.2).

Invariants:
- The answer depends on the domain only, never on whether the local part exists (no
  address enumeration); the address a client sent is echoed only where the format
  wants the login name, after a syntax check.
- Request XML is parsed with defusedxml (no DTDs, no entity expansion, no external
  resources) and only after the caller capped its size; anything wrong is
  ``BadRequest``, never a traceback.
"""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from ..config import Settings
from ..policy.addresses import AddressRuleError, check_domain

MAX_REQUEST_XML = 64 * 1024

AUTODISCOVER_REQUEST_NS = ("http://schemas.microsoft.com/exchange/autodiscover/outlook/"
                           "requestschema/2006")
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
AUTODISCOVER_OUTLOOK_NS = ("http://schemas.microsoft.com/exchange/autodiscover/outlook/"
                           "responseschema/2006a")


class BadRequest(ValueError):
    """The request cannot be answered (HTTP 400); the text is safe to show."""


@dataclass(frozen=True)
class Endpoint:
    """One server a client connects to."""

    kind: str  # "imap" | "pop3" | "smtp"
    host: str
    port: int
    implicit_tls: bool  # True: SSL/TLS from the first byte; False: STARTTLS


@dataclass(frozen=True)
class ClientConfig:
    """The recommended endpoints, in preference order per kind."""

    hostname: str
    imap: Endpoint | None
    pop3: Endpoint | None
    smtp: Endpoint | None


def client_config(settings: Settings, bound_ports: Mapping[str, int] | None = None
                  ) -> ClientConfig:
    """Endpoints from the enabled listeners: the implicit-TLS one of each kind when it is
    enabled (IMAP 993, POP3 995, SMTP 465), else the STARTTLS one. A listener configured
    with port 0 (tests) is given with the port it actually bound (``bound_ports``)."""
    host = settings.client_hostname
    bound = bound_ports or {}

    def pick(kind: str, implicit: str, starttls: str) -> Endpoint | None:
        for name in (implicit, starttls):
            ls = getattr(settings.listeners, name)
            if ls.enabled and ls.tls != "none":
                port = ls.port or bound.get(name, 0)
                return Endpoint(kind, host, port, ls.tls == "implicit")
        return None

    return ClientConfig(host, pick("imap", "imaps", "imap"), pick("pop3", "pop3s", "pop3"),
                        pick("smtp", "submissions", "submission"))


def split_address(address: str) -> tuple[str, str]:
    """``(local, domain)`` of a plausible address (domain in A-label form), or
    ``BadRequest``. The local part is only checked for what could break the formats
    (controls, spaces, angle brackets), not against our own creation rules: the answer
    must not tell which local parts exist."""
    local, sep, domain = address.strip().rpartition("@")
    if not sep or not local or len(local) > 64 or len(address) > 320:
        raise BadRequest("not an email address")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c in '<>"\\' for c in local):
        raise BadRequest("not an email address")
    try:
        return local, check_domain(domain)
    except AddressRuleError:
        raise BadRequest("not an email address") from None


# --- Thunderbird ---------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _tb_server(parent: ET.Element, tag: str, ep: Endpoint) -> None:
    srv = _sub(parent, tag, type=ep.kind)
    _sub(srv, "hostname", ep.host)
    _sub(srv, "port", str(ep.port))
    _sub(srv, "socketType", "SSL" if ep.implicit_tls else "STARTTLS")
    _sub(srv, "authentication", "password-cleartext")  # only ever inside TLS
    _sub(srv, "username", "%EMAILADDRESS%")


def thunderbird_xml(domain: str, cfg: ClientConfig) -> bytes:
    """clientConfig version 1.1 for ``domain``: IMAP first, POP3 as the alternative,
    SMTP; user name ``%EMAILADDRESS%`` (Thunderbird substitutes the address)."""
    root = ET.Element("clientConfig", version="1.1")
    prov = _sub(root, "emailProvider", id=domain)
    _sub(prov, "domain", domain)
    _sub(prov, "displayName", f"Mail for {domain}")
    _sub(prov, "displayShortName", domain)
    for ep in (cfg.imap, cfg.pop3):
        if ep is not None:
            _tb_server(prov, "incomingServer", ep)
    if cfg.smtp is not None:
        _tb_server(prov, "outgoingServer", cfg.smtp)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# --- Outlook autodiscover (POX) --------------------------------------------------------


def parse_autodiscover_request(body: bytes) -> str:
    """The ``EMailAddress`` of an Outlook autodiscover request. Oversized, malformed or
    entity-laden XML, or a request without an address, is ``BadRequest``."""
    if len(body) > MAX_REQUEST_XML:
        raise BadRequest("request too large")
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise BadRequest("malformed XML") from None
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.rpartition("}")[2] == "EMailAddress":
            if el.text and el.text.strip():
                return el.text.strip()
    raise BadRequest("no EMailAddress in the request")


def autodiscover_xml(address: str, cfg: ClientConfig) -> bytes:
    """An ``outlook/responseschema/2006a`` answer with IMAP, SMTP and POP3 settings."""
    # Default namespaces written as xmlns attributes, the way Exchange writes them
    # (some clients compare prefixes, not namespaces).
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_NS)
    resp = _sub(root, "Response", xmlns=AUTODISCOVER_OUTLOOK_NS)
    acct = _sub(resp, "Account")
    _sub(acct, "AccountType", "email")
    _sub(acct, "Action", "settings")
    for ep in (cfg.imap, cfg.smtp, cfg.pop3):
        if ep is None:
            continue
        proto = _sub(acct, "Protocol")
        for tag, value in (("Type", ep.kind.upper()), ("Server", ep.host),
                           ("Port", str(ep.port)), ("DomainRequired", "off"),
                           ("LoginName", address), ("SPA", "off"), ("SSL", "on"),
                           ("Encryption", "SSL" if ep.implicit_tls else "TLS"),
                           ("AuthRequired", "on")):
            _sub(proto, tag, value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# --- Apple configuration profile ---------------------------------------------------------


def mobileconfig(address: str, cfg: ClientConfig) -> bytes:
    """An unsigned ``.mobileconfig`` (XML property list) with one
    ``com.apple.mail.managed`` payload: IMAP (or POP3) and SMTP with SSL, the address
    as user name, no password (the device asks for it). UUIDs are derived from the
    address and host, so downloading the profile again replaces the installed one."""
    incoming = cfg.imap or cfg.pop3
    if incoming is None or cfg.smtp is None:
        raise BadRequest("no incoming or outgoing server is enabled")
    host = cfg.hostname
    ident = ".".join(reversed(host.split(".")))
    mail_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailstack:{host}:mail:{address}")).upper()
    top_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailstack:{host}:profile:{address}")).upper()
    payload = {
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.kind == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": incoming.host,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": cfg.smtp.host,
        "OutgoingMailServerPortNumber": cfg.smtp.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PayloadDescription": f"Mail account {address}",
        "PayloadDisplayName": address,
        "PayloadIdentifier": f"{ident}.mailstack.mail.{mail_uuid}",
        "PayloadType": "com.apple.mail.managed",
        "PayloadUUID": mail_uuid,
        "PayloadVersion": 1,
    }
    profile = {
        "PayloadContent": [payload],
        "PayloadDescription": f"Sets up mail for {address} on {host}.",
        "PayloadDisplayName": f"Mail: {address}",
        "PayloadIdentifier": f"{ident}.mailstack.{top_uuid}",
        "PayloadOrganization": host,
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": top_uuid,
        "PayloadVersion": 1,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


# --- MTA-STS ---------------------------------------------------------------------------


def mta_sts_policy(settings: Settings) -> bytes:
    """The policy file (RFC 8461 §3.2): ``key: value`` lines separated by CRLF."""
    w = settings.web
    mx = [m.strip() for m in w.mta_sts_mx.split(",") if m.strip()] or [
        settings.server.hostname]
    lines = ["version: STSv1", f"mode: {w.mta_sts_mode}",
             *(f"mx: {m}" for m in mx), f"max_age: {w.mta_sts_max_age}"]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
