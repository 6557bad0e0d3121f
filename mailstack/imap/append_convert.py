"""APPENDed messages with binary content (RFC 3516 §4.4 literal8): parts whose
Content-Transfer-Encoding is ``binary`` (or that hold NUL) are stored base64-encoded,
as Dovecot does, so every BODY[...] answer is an ordinary literal without NUL
(RFC 3501 §9: CHAR8 excludes NUL; literal8 is only for BINARY[...], RFC 3516 §4.2)
while BINARY[n] still returns the original octets. No I/O.

Invariants:
- Only leaf parts are rewritten (their header's Content-Transfer-Encoding field and
  their body); everything else keeps its bytes. A message that needs nothing is
  returned unchanged (the same object).
- Parsing is skipped entirely unless a cheap scan finds NUL or a ``binary`` CTE.
"""

from __future__ import annotations

import base64
import re

from mailstack import mime

_BINARY_CTE = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*binary[ \t]*\r?$")
_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding:[^\n]*\n(?:[ \t][^\n]*\n)*")


def needs_conversion(data: bytes) -> bool:
    return b"\x00" in data or _BINARY_CTE.search(data) is not None


def _leaves(part: mime.BodyPart) -> list[mime.BodyPart]:
    if part.children:
        return [leaf for c in part.children for leaf in _leaves(c)]
    if part.message is not None:
        return _leaves(part.message.root)
    return [part]


def _b64(body: bytes) -> bytes:
    return base64.encodebytes(body).replace(b"\n", b"\r\n").rstrip(b"\r\n")


def convert_binary(data: bytes) -> bytes:
    """The message with every binary leaf part re-encoded as base64."""
    if not needs_conversion(data):
        return data
    parsed = mime.parse_message(data)
    edits: list[tuple[int, int, bytes]] = []
    for leaf in _leaves(parsed.root):
        body = data[leaf.body_start:leaf.body_end]
        if leaf.encoding != "BINARY" and b"\x00" not in body:
            continue
        if leaf.encoding not in ("7BIT", "8BIT", "BINARY"):
            continue  # already encoded (NUL in base64 text is junk, left as it is)
        header = data[leaf.header_start:leaf.body_start]
        nl = b"\r\n" if b"\r\n" in header else b"\n"
        field = b"Content-Transfer-Encoding: base64" + nl
        new_header, n = _CTE_FIELD.subn(field.replace(b"\\", b"\\\\"), header, count=1)
        if n == 0 and not header.strip():  # a part without header fields
            new_header = field + header
        elif n == 0:  # no field (a NUL in a 7bit part): add one before the blank line
            end = len(header) - (2 if header.endswith(b"\r\n\r\n") else 1)
            new_header = header[:end] + field + header[end:]
        edits.append((leaf.header_start, leaf.body_end, new_header + _b64(body)))
    if not edits:
        return data
    out: list[bytes] = []
    pos = 0
    for start, end, repl in sorted(edits):
        out += [data[pos:start], repl]
        pos = end
    out.append(data[pos:])
    return b"".join(out)
