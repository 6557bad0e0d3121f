"""mailstack.mime: ENVELOPE, BODYSTRUCTURE, section byte ranges, caps (RFC 3501 §6.4.5,
§7.4.2; RFC 9051 §7.5.2; docs/behaviour.md §12 "header and MIME bombs")."""

import json
import random
import sys

from mailstack.imap.structure import imap_string, render_body, render_envelope
from mailstack.mime import (
    Address,
    binary_section,
    decode_transfer_encoding,
    find_part,
    from_json,
    header_fields,
    header_fields_walk,
    parse_message,
    section_bytes,
    to_json,
)

NESTED = (
    b'From: "Joe Q. Public" <joe@example.com>\r\n'
    b'To: Team: a@b.example, "Bee" <c@d.example>;, solo@x.example\r\n'
    b"Cc: undisclosed-recipients:;\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= and\r\n more\r\n"
    b"Date: Thu, 1 Feb 2024 10:00:00 +0000\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"caf=C3=A9 line one=\r\n"
    b" continues\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>hi</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Description: forwarded\r\n"
    b"\r\n"
    b"From: inner@example.org\r\n"
    b"Subject: inner subject\r\n"
    b"Content-Type: multipart/mixed; boundary=deep\r\n"
    b"\r\n"
    b"--deep\r\n"
    b"\r\n"
    b"deep text\r\n"
    b"--deep\r\n"
    b'Content-Type: application/pdf; name="a b.pdf"\r\n'
    b'Content-Disposition: attachment; filename="a b.pdf"\r\n'
    b"Content-Language: en, de\r\n"
    b"Content-Location: http://x.example/a.pdf\r\n"
    b"Content-ID: <pdf@x>\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0x\r\nLjQ=\r\n"
    b"--deep--\r\n"
    b"--outer--\r\n"
    b"epilogue\r\n"
)


def test_nested_structure_and_ranges() -> None:
    msg = parse_message(NESTED)
    root = msg.root
    assert (root.type, root.subtype) == ("multipart", "mixed")
    assert len(root.children) == 2
    alt, fwd = root.children
    assert (alt.type, alt.subtype, len(alt.children)) == ("multipart", "alternative", 2)
    plain, html = alt.children
    assert NESTED[plain.body_start : plain.body_end] == b"caf=C3=A9 line one=\r\n continues"
    assert plain.lines == 2 and plain.size == len(b"caf=C3=A9 line one=\r\n continues")
    assert dict(plain.params)["charset"] == "utf-8"
    assert NESTED[html.header_start : html.body_start] == b"Content-Type: text/html\r\n\r\n"
    assert section_bytes(NESTED, msg, (1, 1)) == b"caf=C3=A9 line one=\r\n continues"
    assert section_bytes(NESTED, msg, (1, 2)) == b"<p>hi</p>"
    assert section_bytes(NESTED, msg, (1, 2), "MIME") == b"Content-Type: text/html\r\n\r\n"
    assert binary_section(NESTED, msg, (1, 1)) == b"caf\xc3\xa9 line one continues"
    # message/rfc822 part: BODY[2] is the whole encapsulated message.
    assert fwd.message is not None and fwd.description == "forwarded"
    inner = section_bytes(NESTED, msg, (2,))
    assert inner is not None and inner.startswith(b"From: inner@example.org\r\n")
    assert inner.endswith(b"--deep--")
    assert section_bytes(NESTED, msg, (2,), "HEADER") == (
        b"From: inner@example.org\r\nSubject: inner subject\r\n"
        b"Content-Type: multipart/mixed; boundary=deep\r\n\r\n"
    )
    text = section_bytes(NESTED, msg, (2,), "TEXT")
    assert text is not None and text.startswith(b"--deep\r\n")
    assert section_bytes(NESTED, msg, (2, 1)) == b"deep text"
    assert section_bytes(NESTED, msg, (2, 2)) == b"JVBERi0x\r\nLjQ="
    assert binary_section(NESTED, msg, (2, 2)) == b"%PDF-1.4"
    pdf = find_part(msg, (2, 2))
    assert pdf is not None and pdf.disposition == "attachment"
    assert pdf.language == ("en", "de") and pdf.location == "http://x.example/a.pdf"
    assert pdf.id == "<pdf@x>" and pdf.encoding == "BASE64"
    assert fwd.message.envelope.subject == "inner subject"
    # Missing sections.
    assert find_part(msg, (3,)) is None
    assert find_part(msg, (1, 1, 1)) is None
    assert section_bytes(NESTED, msg, (1,), "HEADER") is None
    assert section_bytes(NESTED, msg, (9,)) is None
    # Whole message / header / text.
    assert section_bytes(NESTED, msg) == NESTED
    hdr = section_bytes(NESTED, msg, (), "HEADER")
    assert hdr is not None and hdr.endswith(b"\r\n\r\n") and NESTED.startswith(hdr)
    assert section_bytes(NESTED, msg, (), "TEXT") == NESTED[len(hdr) :]


def test_single_part_message_is_part_one() -> None:
    data = b"Subject: x\r\n\r\nhello\r\nworld\r\n"
    msg = parse_message(data)
    assert (msg.root.type, msg.root.subtype) == ("text", "plain")
    assert msg.root.params == (("charset", "us-ascii"),)
    assert section_bytes(data, msg, (1,)) == b"hello\r\nworld\r\n"
    assert msg.root.lines == 2
    assert find_part(msg, (2,)) is None
    assert render_body(msg.root) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 14 2 NIL NIL NIL NIL)'
    )
    assert render_body(msg.root, extensible=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 14 2)'
    )


def test_envelope_groups_and_defaults() -> None:
    msg = parse_message(NESTED)
    env = msg.envelope
    joe = Address("Joe Q. Public", None, "joe", "example.com")
    assert env.from_ == (joe,)
    assert env.sender == (joe,) and env.reply_to == (joe,)  # RFC 3501 §7.4.2 defaults
    assert env.to == (
        Address(None, None, "Team", None),
        Address(None, None, "a", "b.example"),
        Address("Bee", None, "c", "d.example"),
        Address(None, None, None, None),
        Address(None, None, "solo", "x.example"),
    )
    assert env.cc == (
        Address(None, None, "undisclosed-recipients", None),
        Address(None, None, None, None),
    )
    assert env.subject == "=?utf-8?q?caf=C3=A9?= and more"  # raw, unfolded
    assert env.message_id == "<m1@example.com>"
    assert env.bcc is None and env.in_reply_to is None
    rendered = render_envelope(env)
    assert rendered.startswith(
        b'("Thu, 1 Feb 2024 10:00:00 +0000" "=?utf-8?q?caf=C3=A9?= and more"'
    )
    assert b'((NIL NIL "Team" NIL)(NIL NIL "a" "b.example")' in rendered
    assert rendered.endswith(b' NIL NIL "<m1@example.com>")')


def test_envelope_missing_fields() -> None:
    msg = parse_message(b"\r\nbody only")
    assert render_envelope(msg.envelope) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    msg = parse_message(b"From: a@b\r\nSender:\r\nReply-To: r@s\r\nTo: broken\r\n\r\n")
    assert msg.envelope.sender == msg.envelope.from_
    assert msg.envelope.reply_to == (Address(None, None, "r", "s"),)
    assert msg.envelope.to == (Address(None, None, "broken", "MISSING_DOMAIN"),)
    # No blank line at all: everything is header.
    data = b"Subject: only header"
    msg = parse_message(data)
    assert msg.envelope.subject == "only header" and msg.root.size == 0


def test_address_forms() -> None:
    msg = parse_message(
        b'From: joe@x (Joe Comment), "Q\\"uote" <@route1,@route2:q@y>, <bare@z>\r\n\r\n'
    )
    assert msg.envelope.from_ == (
        Address("Joe Comment", None, "joe", "x"),
        Address('Q"uote', "@route1,@route2", "q", "y"),
        Address(None, None, "bare", "z"),
    )


def test_comments_name_their_own_address() -> None:
    msg = parse_message(b"To: a@b (Ann), c@d (Cy), e@f\r\n\r\n")
    assert msg.envelope.to == (
        Address("Ann", None, "a", "b"),
        Address("Cy", None, "c", "d"),
        Address(None, None, "e", "f"),
    )
    # Nested comments are dropped rather than guessed at.
    msg = parse_message(b"To: e@f (x (nested)), g@h\r\n\r\n")
    assert msg.envelope.to == (Address(None, None, "e", "f"), Address(None, None, "g", "h"))


def test_string_rendering() -> None:
    assert imap_string("plain") == b'"plain"'
    assert imap_string('a"b\\c') == b'"a\\"b\\\\c"'
    assert imap_string("caf\u00e9") == b"{5}\r\ncaf\xc3\xa9"
    assert imap_string("caf\u00e9", utf8=True) == b'"caf\xc3\xa9"'
    assert imap_string(b"a\r\nb") == b"{4}\r\na\r\nb"
    assert imap_string(b"a\x00b") == b'"ab"'
    # Raw 8-bit header values in an envelope go out as literals.
    msg = parse_message(b"Subject: \xe9t\xe9\r\n\r\n")
    assert b"{3}\r\n\xe9t\xe9" in render_envelope(msg.envelope)


def test_bodystructure_extension_data() -> None:
    msg = parse_message(NESTED)
    bs = render_body(msg.root)
    assert bs.startswith(b'((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" ')
    assert b'"ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)' in bs
    assert (
        b'("APPLICATION" "PDF" ("NAME" "a b.pdf") "<pdf@x>" NIL "BASE64" 14 NIL '
        b'("ATTACHMENT" ("FILENAME" "a b.pdf")) ("en" "de") "http://x.example/a.pdf")' in bs
    )
    assert b'"MESSAGE" "RFC822" NIL NIL "forwarded" "7BIT"' in bs
    assert bs.endswith(b' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)')
    body = render_body(msg.root, extensible=False)
    assert b"BOUNDARY" not in body and body.endswith(b' "MIXED")')
    assert bs.count(b"(") == bs.count(b")")


def test_header_fields() -> None:
    data = b"From: a@b\r\nX-Long: one\r\n two\r\nto: c@d\r\nSubject: s\r\n\r\nbody From: x\r\n"
    assert header_fields(data, ["FROM", "To"]) == b"From: a@b\r\nto: c@d\r\n\r\n"
    assert header_fields(data, ["x-long"]) == b"X-Long: one\r\n two\r\n\r\n"
    assert header_fields(data, ["from", "to"], negate=True) == (
        b"X-Long: one\r\n two\r\nSubject: s\r\n\r\n"
    )
    assert header_fields(data, ["nope"]) == b"\r\n"
    msg = parse_message(data)
    assert section_bytes(data, msg, (), "HEADER.FIELDS", ("subject",)) == b"Subject: s\r\n\r\n"


def test_header_fields_pattern_matches_the_line_walk() -> None:
    """HEADER.FIELDS by pattern gives the line walk's bytes on random header blocks:
    folding with spaces and tabs, CRLF and bare LF, white space before the colon, lines
    without a colon, no blank line, no final newline, a body that looks like fields."""
    rng = random.Random(7)
    names = ["Subject", "FROM", "to", "X-Long", "Sub ject", "Date", "x-a.b+c"]
    pieces = [b"Subject", b"subject ", b"FROM", b"From\t", b"To", b"X-Long", b"Sub ject",
              b"Subject-Extra", b"Date", b"x-a.b+c", b"X-A.B+C\x0c", b"no colon here",
              b"Subj\xc9ct", b""]
    for _ in range(3000):
        lines = []
        for _ in range(rng.randrange(0, 8)):
            name = rng.choice(pieces)
            line = name + (b": value" if b"colon" not in name else b"") + b" %d" % rng.randrange(99)
            lines.append(line)
            for _ in range(rng.choice((0, 0, 1, 2))):
                lines.append(rng.choice((b" ", b"\t")) + b"more")
            if rng.random() < 0.1:
                lines.append(b" leading continuation")
        eol = rng.choice((b"\r\n", b"\n"))
        data = eol.join(lines)
        ending = rng.randrange(4)
        if ending == 0:
            data += eol + eol + b"Subject: in the body" + eol
        elif ending == 1:
            data += eol
        elif ending == 2:
            data = eol + data
        wanted = rng.sample(names, rng.randrange(1, 4))
        assert header_fields(data, wanted) == header_fields_walk(data, wanted), (data, wanted)
    assert header_fields(b"A: 1\r\n:x\r\n\r\n", [""]) == b"\r\n"  # empty name: walk
    assert header_fields(b"\xc9: 1\r\n\r\n", ["\xe9"]) == b"\xc9: 1\r\n\r\n"  # latin-1


def test_transfer_decoding() -> None:
    assert decode_transfer_encoding(b"aGVs\r\nbG8=\r\n", "base64") == b"hello"
    assert decode_transfer_encoding(b"aGVsbG", "BASE64") == b"hel"  # truncated: best effort
    assert decode_transfer_encoding(b"a=3Db=\r\nc\r\nd", "Quoted-Printable") == b"a=bc\r\nd"
    assert decode_transfer_encoding(b"x", None) == b"x"
    assert decode_transfer_encoding(b"x", "x-uuencode") is None


def test_multipart_edge_cases() -> None:
    # Missing close delimiter, boundary prefix lookalikes, bare LF line ends.
    data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--bx\n--b \n\ntwo\n"
    msg = parse_message(data)
    assert [section_bytes(data, msg, (i,)) for i in (1, 2)] == [b"one\n--bx", b"two\n"]
    # No delimiter at all: one empty text/plain part keeps BODYSTRUCTURE valid.
    data = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno parts here\r\n"
    msg = parse_message(data)
    assert len(msg.root.children) == 1 and msg.root.children[0].size == 0
    # Multipart without boundary is an opaque leaf.
    msg = parse_message(b"Content-Type: multipart/mixed\r\n\r\nx")
    assert (msg.root.type, msg.root.subtype) == ("application", "octet-stream")
    # multipart/digest children default to message/rfc822.
    data = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
        b"--d\r\n\r\nSubject: in\r\n\r\nb\r\n--d--"
    )
    msg = parse_message(data)
    child = msg.root.children[0]
    assert (child.type, child.subtype) == ("message", "rfc822")
    assert child.message is not None and child.message.envelope.subject == "in"


def test_json_roundtrip() -> None:
    for data in (NESTED, b"Subject: \xff\xfe\r\n\r\nx", b""):
        msg = parse_message(data)
        again = from_json(json.loads(json.dumps(to_json(msg))))
        assert again == msg
        assert render_body(again.root) == render_body(msg.root)
        assert render_envelope(again.envelope) == render_envelope(msg.envelope)


# ----------------------------------------------------------------- bombs


def test_deep_multipart_bomb() -> None:
    depth = 10000
    parts = [b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"]
    for i in range(1, depth):
        parts.append(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i))
    parts.append(b"--b%d\r\n\r\nleaf\r\n" % (depth - 1))
    data = b"".join(parts)
    limit = sys.getrecursionlimit()
    msg = parse_message(data)
    assert sys.getrecursionlimit() == limit
    assert msg.truncated
    level, cur = 0, msg.root
    while cur.children:
        cur = cur.children[0]
        level += 1
    assert level <= 50
    assert render_body(msg.root)  # renders without RecursionError
    assert from_json(json.loads(json.dumps(to_json(msg)))) == msg


def test_deep_message_rfc822_bomb() -> None:
    data = b"Content-Type: message/rfc822\r\n\r\n" * 10000 + b"Subject: end\r\n\r\nx"
    msg = parse_message(data)
    assert msg.truncated
    assert render_body(msg.root).count(b"MESSAGE") <= 51


def test_many_parts_bomb() -> None:
    n = 50000
    data = (
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
        + b"--x\r\n\r\np\r\n" * n
        + b"--x--\r\n"
    )
    msg = parse_message(data, max_parts=10000)
    assert msg.truncated
    assert len(msg.root.children) < 10000
    assert section_bytes(data, msg, (5,)) == b"p"


def test_header_line_bomb() -> None:
    data = b"X-A: 1\r\n" * 200000 + b"Subject: late\r\n\r\nbody"
    msg = parse_message(data)
    assert msg.envelope.subject is None  # beyond max_header_lines: ignored
    assert section_bytes(data, msg, (), "TEXT") == b"body"
    giant = b"Subject: " + b"a" * 2_000_000 + b"\r\n\r\nx"
    msg = parse_message(giant)
    assert msg.envelope.subject is not None and len(msg.envelope.subject) == 2_000_000
