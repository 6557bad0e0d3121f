"""IMAP wire forms of a parsed message (RFC 9051 §7.5.2, RFC 3501 §7.4.2): ENVELOPE,
BODY and BODYSTRUCTURE (with extension data), and IMAP strings (quoted when possible,
else a literal). The parsing itself is protocol-neutral and lives in ``mailstack.mime``.
"""

from __future__ import annotations

import re

from mailstack.mime import Address, BodyPart, Envelope


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")


def imap_string(value: str | bytes, utf8: bool = False) -> bytes:
    """Quoted string when possible, else a literal (RFC 9051 §4.3).

    8-bit text is quoted only with ``utf8`` (UTF8=ACCEPT, RFC 6855 §3) and valid UTF-8.
    NUL is never sent (CHAR8 excludes it) and is dropped.
    """
    raw = _bytes(value) if isinstance(value, str) else value
    if b"\x00" in raw:
        raw = raw.replace(b"\x00", b"")
    plain = _QUOTABLE.fullmatch(raw) is not None
    if not plain and utf8 and b"\r" not in raw and b"\n" not in raw:
        try:
            raw.decode("utf-8")
            plain = True
        except UnicodeDecodeError:
            plain = False
    if plain and len(raw) <= 4096:
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def imap_nstring(value: str | bytes | None, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else imap_string(value, utf8)


def _addr_list(addrs: tuple[Address, ...] | None, utf8: bool) -> bytes:
    if not addrs:
        return b"NIL"
    out = [b"("]
    for a in addrs:
        out.append(
            b"("
            + b" ".join(imap_nstring(x, utf8) for x in (a.name, a.adl, a.mailbox, a.host))
            + b")"
        )
    out.append(b")")
    return b"".join(out)


def render_envelope(env: Envelope, utf8: bool = False) -> bytes:
    """RFC 9051 §7.5.2 ENVELOPE: (date subject from sender reply-to to cc bcc irt mid)."""
    s = [imap_nstring(env.date, utf8), imap_nstring(env.subject, utf8)]
    s += [
        _addr_list(x, utf8) for x in (env.from_, env.sender, env.reply_to, env.to, env.cc, env.bcc)
    ]
    s += [imap_nstring(env.in_reply_to, utf8), imap_nstring(env.message_id, utf8)]
    return b"(" + b" ".join(s) + b")"


def _params(params: tuple[tuple[str, str], ...], utf8: bool) -> bytes:
    if not params:
        return b"NIL"
    return (
        b"("
        + b" ".join(imap_string(k.upper(), utf8) + b" " + imap_string(v, utf8) for k, v in params)
        + b")"
    )


def _disposition(part: BodyPart, utf8: bool) -> bytes:
    if part.disposition is None:
        return b"NIL"
    return (
        b"("
        + imap_string(part.disposition.upper(), utf8)
        + b" "
        + _params(part.disposition_params, utf8)
        + b")"
    )


def _language(part: BodyPart, utf8: bool) -> bytes:
    if not part.language:
        return b"NIL"
    if len(part.language) == 1:
        return imap_string(part.language[0], utf8)
    return b"(" + b" ".join(imap_string(x, utf8) for x in part.language) + b")"


def render_body(part: BodyPart, extensible: bool = True, utf8: bool = False) -> bytes:
    """BODYSTRUCTURE (``extensible``) or BODY (RFC 9051 §7.5.2, §9 body)."""
    if part.is_multipart:
        kids = b"".join(render_body(c, extensible, utf8) for c in part.children)
        out = kids + b" " + imap_string(part.subtype.upper(), utf8)
        if extensible:  # body-ext-mpart
            out += b" " + b" ".join(
                (
                    _params(part.params, utf8),
                    _disposition(part, utf8),
                    _language(part, utf8),
                    imap_nstring(part.location, utf8),
                )
            )
        return b"(" + out + b")"
    fields = [
        imap_string(part.type.upper(), utf8),
        imap_string(part.subtype.upper(), utf8),
        _params(part.params, utf8),
        imap_nstring(part.id, utf8),
        imap_nstring(part.description, utf8),
        imap_string(part.encoding, utf8),
        b"%d" % part.size,
    ]
    if part.message is not None:  # body-type-msg
        fields.append(render_envelope(part.message.envelope, utf8))
        fields.append(render_body(part.message.root, extensible, utf8))
        fields.append(b"%d" % (part.lines or 0))
    elif part.type == "text":  # body-type-text
        fields.append(b"%d" % (part.lines or 0))
    if extensible:  # body-ext-1part
        fields += [
            imap_nstring(part.md5, utf8),
            _disposition(part, utf8),
            _language(part, utf8),
            imap_nstring(part.location, utf8),
        ]
    return b"(" + b" ".join(fields) + b")"
