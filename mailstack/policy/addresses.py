"""Rules for creating an address (docs/behaviour.md §3).

A local part is 1 to 64 characters of ``A-Z a-z 0-9 - _ .``; a dot may not be first,
last or next to another dot. Everything else (space, ``@ ! # $ % ^ & * ( ) = [ ] < > ,
" / ; ?``, any non-ASCII or control character) is refused, and the error names the
offending character and its 1-based position. These are stricter than RFC 5321's
dot-string on purpose: what we create must be typeable and unambiguous everywhere.

Addresses compare case-insensitively: ``address_key`` is the comparison form.
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass

import idna

ALLOWED = frozenset(string.ascii_letters + string.digits + "-_.")
MAX_LOCAL = 64


class AddressRuleError(ValueError):
    """An address may not be created; ``str()`` is the user-facing reason."""


def _describe(ch: str) -> str:
    code = ord(ch)
    if code < 0x20 or code == 0x7F:
        return f"control character U+{code:04X}"
    if ch == " ":
        return "space"
    if code > 0x7E:
        name = unicodedata.name(ch, "")
        return f"non-ASCII character {ch!r} (U+{code:04X}{' ' + name if name else ''})"
    return f"character {ch!r}"


def check_local_part(local: str) -> None:
    """Raise ``AddressRuleError`` if ``local`` may not be created."""
    if not local:
        raise AddressRuleError("the local part is empty (1 to 64 characters needed)")
    for i, ch in enumerate(local, start=1):
        if ch not in ALLOWED:
            raise AddressRuleError(f"{_describe(ch)} at position {i} is not allowed "
                                   "(allowed: letters, digits, '-', '_' and '.')")
    if len(local) > MAX_LOCAL:
        raise AddressRuleError(f"the local part has {len(local)} characters; "
                               f"at most {MAX_LOCAL} are allowed")
    if local[0] == ".":
        raise AddressRuleError("a dot at position 1 is not allowed: "
                               "the local part may not start with '.'")
    if local[-1] == ".":
        raise AddressRuleError(f"a dot at position {len(local)} is not allowed: "
                               "the local part may not end with '.'")
    pos = local.find("..")
    if pos >= 0:
        raise AddressRuleError(f"a dot at position {pos + 2} is not allowed "
                               "next to another dot")


def check_domain(domain: str) -> str:
    """Validate a hosted domain name; returns its lowercase A-label form.

    IDNA 2008 (RFC 5891, the ``idna`` package) with the UTS #46 mapping: a name written
    in Unicode (``Bücher.example``) becomes its A-label (``xn--bcher-kva.example``); an
    ``xn--`` label that does not decode to a valid U-label (``xn--zz``) is refused.
    """
    d = domain.strip().rstrip(".")
    if not d:
        raise AddressRuleError("the domain is empty")
    try:
        d = idna.encode(d, uts46=True, transitional=False).decode("ascii")
    except UnicodeError as exc:  # idna.IDNAError and its subclasses
        raise AddressRuleError(f"domain {domain!r} is not a valid host name "
                               f"(IDNA 2008: {exc})") from exc
    labels = d.split(".")
    if len(d) > 253 or len(labels) < 2:
        raise AddressRuleError(f"domain {domain!r} is not a valid host name "
                               "(needs at least two labels, at most 253 characters)")
    for label in labels:
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-" or any(
                c not in string.ascii_lowercase + string.digits + "-" for c in label):
            raise AddressRuleError(f"domain {domain!r} has an invalid label {label!r}")
    if labels[-1].isdigit():  # RFC 3696 §2: a top-level label is never all-numeric
        raise AddressRuleError(f"domain {domain!r} is not a host name (all-numeric "
                               "top-level label)")
    return d


@dataclass(frozen=True)
class NewAddress:
    local_part: str
    domain: str

    @property
    def email(self) -> str:
        return f"{self.local_part}@{self.domain}"


def parse_new_address(address: str) -> NewAddress:
    """Split and validate an address to be created (local part rules + domain)."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        raise AddressRuleError(f"{address!r} is not an address (no '@')")
    if "@" in local:
        pos = address.index("@") + 1
        raise AddressRuleError(f"character '@' at position {pos} is not allowed "
                               "(allowed: letters, digits, '-', '_' and '.')")
    check_local_part(local)
    return NewAddress(local, check_domain(domain))


def address_key(address: str) -> str:
    """The comparison form: addresses compare case-insensitively (docs/behaviour.md §3)."""
    return address.strip().lower()
