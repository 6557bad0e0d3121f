"""What a message submission agent adds to a message (RFC 6409 §8; docs/behaviour.md §4).

Pure: the caller passes the login, the host name, the time and a unique token.

Invariants:
- Only missing fields are added; a field the client sent is never changed or repeated.
- ``Date:`` (RFC 6409 §8.2, RFC 5322 §3.3 format, UTC) and ``Message-ID:`` (RFC 6409
  §8.3, ``<token@host>``) when absent; ``From:`` = the authenticated address when the
  message has no ``From:`` field at all (a scanner's minimal message). A ``From:`` field
  that is present but empty or not allowed is left for the sender check to refuse.
- The added fields go in front of the header; a message without any header section
  gets the empty separator line too, so its first line stays body.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from .headers import _scan_header, header_fields

__all__ = ["has_field", "msa_additions"]


def _field_names(message: bytes) -> set[bytes]:
    hend, _ = _scan_header(message)
    return {name for name, _ in header_fields(message[:hend])}


def has_field(message: bytes, name: bytes) -> bool:
    """True if the header section holds a field called ``name`` (case-insensitive)."""
    return name.lower() in _field_names(message)


def msa_additions(message: bytes, *, login: str, hostname: str, now: float,
                  unique: str) -> bytes:
    """The header lines to put in front of ``message`` (b"" when nothing is missing)."""
    names = _field_names(message)
    lines: list[str] = []
    if b"from" not in names:
        lines.append(f"From: {login}")
    if b"date" not in names:
        lines.append("Date: " + format_datetime(datetime.fromtimestamp(now, UTC)))
    if b"message-id" not in names:
        lines.append(f"Message-ID: <{unique}@{hostname}>")
    if not lines:
        return b""
    out = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    if not names and not message.startswith(b"\r\n"):
        out += b"\r\n"  # no header section at all: the message is all body
    return out
