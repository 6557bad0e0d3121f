"""Strict parsing of SMTP envelope addresses and ESMTP parameters (pure, no I/O).

What it parses: the argument of ``MAIL FROM:`` / ``RCPT TO:`` (RFC 5321 §4.1.1.2,
§4.1.1.3, grammar §4.1.2 and §4.1.3), the ESMTP parameters after the path (SIZE
RFC 1870, BODY RFC 6152, SMTPUTF8 RFC 6531, RET/ENVID/NOTIFY/ORCPT RFC 3461, AUTH
RFC 4954 §5) and the EHLO/HELO argument (RFC 5321 §4.1.1.1).

Invariants (every caller may rely on them):
- A returned ``EnvelopeAddress`` contains no control character (C0, DEL, C1), no
  space outside a quoted local part, no lone surrogate; ``domain`` is lowercase, in
  A-label form (IDNA 2008) or a normalised address literal; ``key`` is the one
  canonical spelling used for lookups (``local.lower() + "@" + domain``).
- The local part is never interpreted: ``%``, ``!`` and a quoted ``@`` are literal
  characters of a mailbox at ``domain``. Nothing here ever yields a "next hop" other
  than ``domain``; ``user%evil.com@hosted.example`` is a (probably nonexistent) local
  mailbox of hosted.example. A quoted local part is kept quoted in ``local`` (so the
  key never contains a second unquoted ``@``); a quoted local part that is a valid
  dot-string is unquoted, ``"anna"@x`` == ``anna@x`` (RFC 5321 §4.1.2).
- Source routes ``<@a,@b:user@c>`` are syntax-checked and dropped: RFC 5321 §4.1.1.3
  and Appendix C say servers MUST accept the syntax and SHOULD ignore the route, so
  only the final mailbox ``user@c`` counts (and goes through relay checks).
- Decoded parameter values (xtext RFC 3461 §4, utf-8-addr-xtext RFC 6533 §3) never
  contain CR, LF, NUL or other controls: ``+0D+0A`` is refused, not decoded.
- Every refusal is an ``AddressError`` carrying the SMTP reply to send.

Decisions (documented once here, tested in tests/policy/test_envelope.py):
- Trailing dot in a domain (``user@hosted.example.``): refused with 501. RFC 5321
  §4.1.2 ``Domain = sub-domain *("." sub-domain)`` has no trailing dot, and refusing
  keeps exactly one spelling per domain (no relay check can be dodged by it).
- Missing angle brackets (``MAIL FROM:user@x``, sent by printers and scripts): accepted
  for a plain mailbox (like Postfix's default ``strict_rfc821_envelopes = no``); a
  source route still needs brackets. A space after the colon is tolerated too.
- A bare dotted IP as domain (``user@1.2.3.4``): refused (an all-numeric top label is
  no host name, RFC 3696 §2); address literals must be bracketed.
- Address literals: IPv4 and ``IPv6:`` literals are parsed and normalised
  (``is_literal``); general literals (``[tag:...]``) are refused with 553. IPv6 zone
  ids (``%eth0``) are refused: the RFC 5321 §4.1.3 grammar has none.
- Non-ASCII in a path without the SMTPUTF8 parameter: 553 5.6.7 (RFC 6531 §3.5,
  RFC 6533). With SMTPUTF8, U-label domains are converted to A-labels.
- Enhanced codes (RFC 3463): sender syntax 5.1.7, recipient syntax 5.1.3, parameter
  problems 5.5.4, command syntax 5.5.2.
- ``RCPT TO:<Postmaster>`` without a domain is accepted when the caller passes
  ``postmaster_domain`` (RFC 5321 §4.1.1.3 requires servers to accept it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .replies import SmtpRefusal

try:  # IDNA 2008; the stdlib codec (IDNA 2003) is the fallback.
    import idna as _idna
except ImportError:  # pragma: no cover - idna is installed in every supported setup
    _idna = None  # type: ignore[assignment]

__all__ = [
    "AddressError",
    "EnvelopeAddress",
    "HeloName",
    "MailFrom",
    "MailParams",
    "RcptParams",
    "RcptTo",
    "check_helo_name",
    "normalize_domain",
    "parse_forward_path",
    "parse_mail_from",
    "parse_mailbox",
    "parse_params",
    "parse_rcpt_to",
    "parse_reverse_path",
    "split_params",
    "xtext_decode",
]

# RFC 5321 §4.5.3.1.1-3 (octets).
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_LABEL = 63  # RFC 1035 §2.3.4
MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ORCPT = 500  # RFC 3461 §4.2

# RFC 5322 §3.2.3 atext.
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}\Z")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*\Z")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
_UNICODE_ESC = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")


class AddressError(SmtpRefusal):
    """A refusal with the SMTP reply to send: ``code enhanced text``."""


@dataclass(frozen=True)
class EnvelopeAddress:
    """A parsed mailbox: ``local`` as sent (canonical quoting), normalised ``domain``."""

    local: str
    domain: str
    is_literal: bool = False

    @property
    def key(self) -> str:
        """The lookup key: addresses compare case-insensitively (docs/behaviour.md §3)."""
        return f"{self.local.lower()}@{self.domain}"

    @property
    def needs_smtputf8(self) -> bool:
        return not self.local.isascii()

    @property
    def domain_unicode(self) -> str:
        """The domain for display (U-labels); the A-label form if it cannot decode."""
        if self.is_literal or "xn--" not in self.domain:
            return self.domain
        try:
            return _to_unicode(self.domain)
        except (UnicodeError, ValueError):
            return self.domain

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True)
class MailParams:
    size: int | None = None
    body: str | None = None  # "7BIT" | "8BITMIME" | "BINARYMIME"
    smtputf8: bool = False
    ret: str | None = None  # "FULL" | "HDRS"
    envid: str | None = None  # decoded xtext
    auth: str | None = None  # decoded xtext, "<>" when the client sent AUTH=<>


@dataclass(frozen=True)
class RcptParams:
    notify: frozenset[str] | None = None  # {"NEVER"} or a subset of SUCCESS/FAILURE/DELAY
    orcpt: tuple[str, str] | None = None  # (addr-type lowercased, decoded address)


@dataclass(frozen=True)
class MailFrom:
    sender: EnvelopeAddress | None  # None is the null reverse-path <>
    params: MailParams


@dataclass(frozen=True)
class RcptTo:
    recipient: EnvelopeAddress
    params: RcptParams


@dataclass(frozen=True)
class HeloName:
    name: str  # as sent (checked: no controls, no spaces, not overlong)
    is_literal: bool  # bracketed literal or a bare IP address
    valid_syntax: bool  # strictly a Domain or address-literal (RFC 5321 §4.1.1.1)


# --- small helpers -------------------------------------------------------------------


def _has_control(text: str) -> bool:
    for ch in text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF:
            return True
    return False


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_controls(text: str, what: str) -> None:
    if _has_control(text):
        raise AddressError(501, "5.5.2", f"Control characters are not allowed in {what}")


def _to_unicode(domain: str) -> str:
    if _idna is not None:
        return str(_idna.decode(domain))
    return domain.encode("ascii").decode("idna")


def _label_to_ascii(label: str) -> str:
    """A U-label (already lowercased) to its A-label, IDNA 2008 strict."""
    if _idna is not None:
        return bytes(_idna.encode(label, uts46=False)).decode("ascii")
    return label.encode("idna").decode("ascii")  # pragma: no cover


def _syntax(sender: bool, text: str) -> AddressError:
    return AddressError(501, "5.1.7" if sender else "5.1.3", text)


# --- domains -------------------------------------------------------------------------


def _parse_literal(text: str, *, sender: bool) -> str:
    """``[1.2.3.4]`` / ``[IPv6:...]`` (RFC 5321 §4.1.3) -> normalised literal."""
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        v6 = inner[5:]
        if not v6 or "%" in v6 or not re.fullmatch(r"[0-9A-Fa-f:.]+", v6):
            raise _syntax(sender, "Invalid IPv6 address literal")
        try:
            addr6 = ipaddress.IPv6Address(v6)
        except ValueError:
            raise _syntax(sender, "Invalid IPv6 address literal") from None
        return f"[IPv6:{addr6.compressed}]"
    if _IPV4.match(inner):
        try:
            addr4 = ipaddress.IPv4Address(inner)
        except ValueError:
            raise _syntax(sender, "Invalid IPv4 address literal") from None
        return f"[{addr4}]"
    if re.fullmatch(r"[A-Za-z0-9-]*[A-Za-z0-9]:[!-Z^-~]+", inner):
        raise AddressError(
            553, "5.1.3" if not sender else "5.1.7", "General address literals are not supported"
        )
    raise _syntax(sender, "Invalid address literal")


def normalize_domain(
    text: str, *, smtputf8: bool = True, sender: bool = False, allow_literal: bool = True
) -> tuple[str, bool]:
    """Check a domain (RFC 5321 §4.1.2 Domain / §4.1.3 address-literal, RFC 6531 §3.3).

    Returns ``(normalised, is_literal)``; raises ``AddressError``.
    """
    if not text:
        raise _syntax(sender, "Missing domain")
    if text.startswith("[") and text.endswith("]") and len(text) > 2:
        if not allow_literal:
            raise _syntax(sender, "Address literal not allowed here")
        return _parse_literal(text, sender=sender), True
    if text.endswith("."):
        # RFC 5321 §4.1.2: Domain has no trailing dot; one spelling per domain.
        raise _syntax(sender, "Trailing dot in domain is not allowed")
    labels = text.split(".")
    out: list[str] = []
    for label in labels:
        if not label:
            raise _syntax(sender, "Empty label in domain")
        if label.isascii():
            if not _LDH_LABEL.match(label) or len(label) > MAX_LABEL:
                raise _syntax(sender, "Invalid domain")
            low = label.lower()
            if low.startswith("xn--"):
                try:  # a fake A-label is not a second spelling of anything
                    _to_unicode(low)
                except (UnicodeError, ValueError):
                    raise _syntax(sender, "Invalid IDN label in domain") from None
            out.append(low)
        else:
            if not smtputf8:
                raise AddressError(
                    553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"
                )
            try:
                a_label = _label_to_ascii(label.lower())
            except (UnicodeError, ValueError):
                raise _syntax(sender, "Invalid internationalised domain") from None
            if "." in a_label:  # U+3002/U+FF0E/U+FF61 are not label separators in SMTP
                raise _syntax(sender, "Invalid internationalised domain")
            out.append(a_label)
    if out[-1].isdigit():
        # RFC 3696 §2: a top-level label is never all-numeric; bracket IP literals.
        raise _syntax(sender, "Bare IP address as domain; use an address literal [a.b.c.d]")
    domain = ".".join(out)
    if len(domain) > MAX_DOMAIN:  # RFC 5321 §4.5.3.1.2
        raise _syntax(sender, "Domain too long")
    return domain, False


# --- local parts ---------------------------------------------------------------------


def _is_dot_string(text: str, smtputf8: bool) -> bool:
    if not text:
        return False
    for atom in text.split("."):
        if not atom:
            return False
        for ch in atom:
            if ch not in _ATEXT and not (smtputf8 and ord(ch) >= 0x80):
                return False
    return True


def _scan_quoted(text: str, start: int, *, smtputf8: bool, sender: bool) -> tuple[str, int]:
    """Parse a Quoted-string at ``text[start] == '"'`` (RFC 5321 §4.1.2).

    Returns (dequoted content, index after the closing quote).
    """
    i = start + 1
    content: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(content), i + 1
        if ch == "\\":
            if i + 1 >= len(text):
                break
            nxt = text[i + 1]
            if not (0x20 <= ord(nxt) <= 0x7E):  # quoted-pairSMTP = %d92 %d32-126
                raise _syntax(sender, "Invalid quoted pair in local part")
            content.append(nxt)
            i += 2
            continue
        o = ord(ch)
        if o >= 0x80:
            if not smtputf8:
                raise AddressError(
                    553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"
                )
        elif not (o == 32 or o == 33 or 35 <= o <= 91 or 93 <= o <= 126):  # qtextSMTP
            raise _syntax(sender, "Invalid character in quoted local part")
        content.append(ch)
        i += 1
    raise _syntax(sender, "Unterminated quoted local part")


def _canonical_local(content: str, smtputf8: bool) -> str:
    """Dot-string if possible, else a minimally escaped quoted string."""
    if _is_dot_string(content, smtputf8):
        return content
    escaped = content.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def parse_mailbox(text: str, *, smtputf8: bool = True, sender: bool = False) -> EnvelopeAddress:
    """Parse ``Mailbox = Local-part "@" ( Domain / address-literal )`` (RFC 5321 §4.1.2).

    ``text`` has no angle brackets. Also used for addresses read from the store.
    """
    _check_controls(text, "addresses")
    if not text:
        raise _syntax(sender, "Empty address")
    if text.startswith('"'):
        content, end = _scan_quoted(text, 0, smtputf8=smtputf8, sender=sender)
        if end >= len(text) or text[end] != "@":
            raise _syntax(sender, "Expected @ after quoted local part")
        local_raw = text[:end]
        local = _canonical_local(content, smtputf8)
        domain_text = text[end + 1 :]
    else:
        at = text.find("@")
        if at < 0:
            raise _syntax(sender, "Address has no @domain")
        local_raw = local = text[:at]
        domain_text = text[at + 1 :]
        if not _is_dot_string(local, True):
            raise _syntax(sender, "Invalid local part")
        if not smtputf8 and not local.isascii():
            raise AddressError(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
    if not local or (local.startswith('"') and local == '""'):
        raise _syntax(sender, "Empty local part")
    if _octets(local_raw) > MAX_LOCAL_PART or _octets(local) > MAX_LOCAL_PART:
        raise _syntax(sender, "Local part too long (RFC 5321 §4.5.3.1.1: 64 octets)")
    domain, literal = normalize_domain(domain_text, smtputf8=smtputf8, sender=sender)
    return EnvelopeAddress(local, domain, literal)


# --- paths ---------------------------------------------------------------------------


def _path_end(text: str) -> int:
    """Index of the ``>`` closing the path that starts at ``text[0] == '<'``."""
    i = 1
    in_quotes = False
    while i < len(text):
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == ">":
            return i
        i += 1
    raise AddressError(501, "5.5.2", "Unterminated path: missing >")


def _parse_path(
    path: str, *, smtputf8: bool, sender: bool, postmaster_domain: str | None = None
) -> EnvelopeAddress | None:
    _check_controls(path, "paths")
    raw_len = _octets(path) + (0 if path.startswith("<") else 2)
    if raw_len > MAX_PATH:  # RFC 5321 §4.5.3.1.3, brackets included
        raise _syntax(sender, "Path too long (RFC 5321 §4.5.3.1.3: 256 octets)")
    if path.startswith("<"):
        if not path.endswith(">") or _path_end(path) != len(path) - 1:
            raise AddressError(501, "5.5.2", "Malformed path")
        inner = path[1:-1]
        if inner == "":
            return None  # the caller decides whether <> is allowed
        if inner.startswith("@"):
            # A-d-l ":" Mailbox (RFC 5321 §4.1.2); the route is checked, then ignored
            # (RFC 5321 §4.1.1.3, Appendix C): only the final mailbox counts.
            colon = inner.find(":")
            if colon < 0:
                raise _syntax(sender, "Malformed source route")
            for hop in inner[:colon].split(","):
                if not hop.startswith("@"):
                    raise _syntax(sender, "Malformed source route")
                normalize_domain(hop[1:], smtputf8=smtputf8, sender=sender)
            inner = inner[colon + 1 :]
    else:
        inner = path  # lenient: no brackets (printers send MAIL FROM:user@x)
        if inner.startswith("@"):
            raise _syntax(sender, "Source route requires angle brackets")
    if postmaster_domain is not None and inner.lower() == "postmaster":
        # RFC 5321 §4.1.1.3: RCPT TO:<Postmaster> without a domain MUST be accepted.
        return EnvelopeAddress("postmaster", postmaster_domain.lower())
    return parse_mailbox(inner, smtputf8=smtputf8, sender=sender)


def parse_reverse_path(path: str, *, smtputf8: bool = False) -> EnvelopeAddress | None:
    """MAIL FROM path (RFC 5321 §4.1.2 Reverse-path); ``None`` is the null path ``<>``."""
    return _parse_path(path.strip(" "), smtputf8=smtputf8, sender=True)


def parse_forward_path(
    path: str, *, smtputf8: bool = False, postmaster_domain: str | None = None
) -> EnvelopeAddress:
    """RCPT TO path (RFC 5321 §4.1.2 Forward-path); ``<>`` is refused."""
    addr = _parse_path(
        path.strip(" "), smtputf8=smtputf8, sender=False, postmaster_domain=postmaster_domain
    )
    if addr is None:
        raise AddressError(501, "5.1.3", "The null path <> is not a valid recipient")
    return addr


# --- parameters ----------------------------------------------------------------------


def split_params(text: str) -> tuple[str, dict[str, str | None]]:
    """Split ``<path> KEY=value KEY`` into the path and the parameters.

    Keys are uppercased; a keyword given twice is refused. Accepts a leading space
    (``MAIL FROM: <x>``) and a path without brackets, as many clients send them.
    """
    _check_controls(text, "commands")
    s = text.lstrip(" ")
    if not s:
        raise AddressError(501, "5.5.2", "Missing path")
    if s.startswith("<"):
        end = _path_end(s) + 1
    else:
        end, in_quotes, i = len(s), False, 0
        while i < len(s):
            ch = s[i]
            if in_quotes and ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_quotes = not in_quotes
            elif ch == " " and not in_quotes:
                end = i
                break
            i += 1
    path, rest = s[:end], s[end:]
    if rest and not rest.startswith(" "):
        raise AddressError(501, "5.5.2", "Expected a space between path and parameters")
    return path, parse_params(rest.split(" "))


def parse_params(tokens: Iterable[str]) -> dict[str, str | None]:
    """``esmtp-param = esmtp-keyword ["=" esmtp-value]`` (RFC 5321 §4.1.2)."""
    params: dict[str, str | None] = {}
    for token in tokens:
        if not token:
            continue
        _check_controls(token, "parameters")
        key, eq, value = token.partition("=")
        if not _ESMTP_KEYWORD.match(key):
            raise AddressError(501, "5.5.4", "Invalid parameter keyword")
        if eq and (not value or "=" in value):
            # esmtp-value = 1*(%d33-60 / %d62-126 / UTF8-non-ascii): no "=", not empty
            raise AddressError(501, "5.5.4", f"Invalid value for parameter {key.upper()}")
        ukey = key.upper()
        if ukey in params:
            raise AddressError(501, "5.5.4", f"Parameter {ukey} given twice")
        params[ukey] = value if eq else None
    return params


def xtext_decode(value: str) -> str:
    """Decode xtext (RFC 3461 §4); refuse anything decoding to a control character."""
    if not _XTEXT.match(value):
        raise AddressError(501, "5.5.4", "Invalid xtext encoding")

    def repl(m: re.Match[str]) -> str:
        o = int(m.group(1), 16)
        if o < 0x20 or o >= 0x7F:
            raise AddressError(501, "5.5.4", "Encoded control or 8-bit character in parameter")
        return chr(o)

    return _HEXCHAR.sub(repl, value)


def _utf8_addr_decode(value: str) -> str:
    """utf-8-addr-xtext / unitext (RFC 6533 §3): ``\\x{HEX}`` escapes, no controls."""

    def repl(m: re.Match[str]) -> str:
        o = int(m.group(1), 16)
        if o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF or o > 0x10FFFF:
            raise AddressError(501, "5.5.4", "Encoded control character in parameter")
        return chr(o)

    if "+" in value:
        raise AddressError(501, "5.5.4", "Invalid utf-8-addr-xtext encoding")
    out = _UNICODE_ESC.sub(repl, value)
    if "\\" in _UNICODE_ESC.sub("", value):
        raise AddressError(501, "5.5.4", "Invalid utf-8-addr-xtext escape")
    return out


def _need(params: Mapping[str, str | None], key: str) -> str:
    value = params[key]
    if value is None:
        raise AddressError(501, "5.5.4", f"Parameter {key} needs a value")
    return value


def _unknown(key: str) -> AddressError:
    # RFC 5321 §4.1.1.11 / §4.3.2: 555 for parameters not recognised or not implemented.
    return AddressError(555, "5.5.4", f"Parameter {key} not recognised or not implemented")


def mail_params(
    params: Mapping[str, str | None],
    *,
    max_size: int | None = None,
    smtputf8_enabled: bool = True,
    dsn_enabled: bool = True,
    binarymime_enabled: bool = False,
) -> MailParams:
    """Validate MAIL FROM parameters."""
    size = body = ret = envid = auth = None
    smtputf8 = False
    for key in params:
        if key == "SIZE":  # RFC 1870 §3: size-value = 1*20DIGIT
            value = _need(params, key)
            if not value.isascii() or not value.isdigit() or len(value) > 20:
                raise AddressError(501, "5.5.4", "Invalid SIZE value")
            size = int(value)
            if max_size is not None and size > max_size:  # RFC 1870 §6.1
                raise AddressError(
                    552, "5.3.4", f"Message size exceeds fixed maximum of {max_size} octets"
                )
        elif key == "BODY":  # RFC 6152 §2, RFC 3030 §3
            value = _need(params, key).upper()
            allowed = {"7BIT", "8BITMIME"} | ({"BINARYMIME"} if binarymime_enabled else set())
            if value not in allowed:
                raise AddressError(501, "5.5.4", "Invalid BODY value")
            body = value
        elif key == "SMTPUTF8":  # RFC 6531 §3.4: no value
            if not smtputf8_enabled:
                raise _unknown(key)
            if params[key] is not None:
                raise AddressError(501, "5.5.4", "SMTPUTF8 takes no value")
            smtputf8 = True
        elif key == "RET" and dsn_enabled:  # RFC 3461 §4.3
            value = _need(params, key).upper()
            if value not in ("FULL", "HDRS"):
                raise AddressError(501, "5.5.4", "Invalid RET value")
            ret = value
        elif key == "ENVID" and dsn_enabled:  # RFC 3461 §4.4
            envid = xtext_decode(_need(params, key))
            if len(envid) > MAX_ENVID:
                raise AddressError(501, "5.5.4", "ENVID too long")
        elif key == "AUTH":  # RFC 4954 §5: informative, decoded and kept
            value = _need(params, key)
            auth = value if value == "<>" else xtext_decode(value)
        else:
            raise _unknown(key)
    return MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid, auth=auth)


def rcpt_params(params: Mapping[str, str | None], *, dsn_enabled: bool = True) -> RcptParams:
    """Validate RCPT TO parameters (NOTIFY and ORCPT, RFC 3461 §4.1-4.2)."""
    notify: frozenset[str] | None = None
    orcpt: tuple[str, str] | None = None
    for key in params:
        if key == "NOTIFY" and dsn_enabled:
            values = frozenset(v.upper() for v in _need(params, key).split(","))
            if not values or "" in values:
                raise AddressError(501, "5.5.4", "Invalid NOTIFY value")
            if "NEVER" in values and len(values) > 1:
                raise AddressError(501, "5.5.4", "NOTIFY=NEVER cannot be combined")
            if not values <= {"NEVER", "SUCCESS", "FAILURE", "DELAY"}:
                raise AddressError(501, "5.5.4", "Invalid NOTIFY value")
            notify = values
        elif key == "ORCPT" and dsn_enabled:
            value = _need(params, key)
            if len(value) > MAX_ORCPT:
                raise AddressError(501, "5.5.4", "ORCPT too long")
            addr_type, semi, addr = value.partition(";")
            if (
                not semi
                or not addr
                or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+", addr_type)
            ):
                raise AddressError(501, "5.5.4", "Invalid ORCPT value")
            addr_type = addr_type.lower()
            # RFC 6533 §3: utf-8 addresses use \x{HEX}; everything else is xtext.
            decoded = _utf8_addr_decode(addr) if addr_type == "utf-8" else xtext_decode(addr)
            orcpt = (addr_type, decoded)
        else:
            raise _unknown(key)
    return RcptParams(notify=notify, orcpt=orcpt)


def _strip_verb(arg: str, verb: str) -> str:
    head = arg[: len(verb)]
    if head.upper() == verb:
        return arg[len(verb) :]
    return arg


def parse_mail_from(
    arg: str,
    *,
    max_size: int | None = None,
    smtputf8_enabled: bool = True,
    dsn_enabled: bool = True,
    binarymime_enabled: bool = False,
) -> MailFrom:
    """Parse the argument of MAIL (with or without the leading ``FROM:``)."""
    path, params = split_params(_strip_verb(arg, "FROM:"))
    parsed = mail_params(
        params,
        max_size=max_size,
        smtputf8_enabled=smtputf8_enabled,
        dsn_enabled=dsn_enabled,
        binarymime_enabled=binarymime_enabled,
    )
    sender = parse_reverse_path(path, smtputf8=parsed.smtputf8)
    return MailFrom(sender, parsed)


def parse_rcpt_to(
    arg: str,
    *,
    smtputf8: bool = False,
    dsn_enabled: bool = True,
    postmaster_domain: str | None = None,
) -> RcptTo:
    """Parse the argument of RCPT (with or without ``TO:``); ``smtputf8`` is the
    transaction's MAIL FROM SMTPUTF8 flag (RFC 6531 §3.4)."""
    path, params = split_params(_strip_verb(arg, "TO:"))
    parsed = rcpt_params(params, dsn_enabled=dsn_enabled)
    rcpt = parse_forward_path(path, smtputf8=smtputf8, postmaster_domain=postmaster_domain)
    return RcptTo(rcpt, parsed)


# --- EHLO / HELO ---------------------------------------------------------------------


def check_helo_name(arg: str, *, max_length: int = MAX_DOMAIN) -> HeloName:
    """Check the EHLO/HELO argument (RFC 5321 §4.1.1.1).

    Lenient like Postfix about *what* the name is (Windows host names with ``_``,
    bare IPs, unqualified names are common), strict about what would be dangerous to
    log or copy into ``Received:``: controls, spaces, overlong names are refused
    with 501 5.5.2. ``valid_syntax`` tells whether it is a strict Domain/literal.
    """
    name = arg.strip(" ")
    if not name:
        raise AddressError(501, "5.5.2", "EHLO/HELO requires a domain name or address literal")
    _check_controls(name, "the EHLO/HELO name")
    if " " in name:
        raise AddressError(501, "5.5.2", "EHLO/HELO name must not contain spaces")
    if _octets(name) > max_length:
        raise AddressError(501, "5.5.2", "EHLO/HELO name too long")
    if name.startswith("[") and name.endswith("]"):
        try:
            _parse_literal(name, sender=False)
        except AddressError:
            return HeloName(name, True, False)
        return HeloName(name, True, True)
    try:
        ipaddress.ip_address(name)
        return HeloName(name, True, False)
    except ValueError:
        pass
    try:
        normalize_domain(name, smtputf8=True, allow_literal=False)
    except AddressError:
        return HeloName(name, False, False)
    return HeloName(name, False, True)
