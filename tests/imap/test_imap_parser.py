"""IMAP command parser: table tests per command, hostile input, and a fuzz test.

RFC 9051 §6 (commands), §9 (grammar); docs/behaviour.md §12 "literal and line bombs",
"parser edge cases".
"""

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.imap import fetch_items as fi
from mailstack.imap import search as s
from mailstack.imap import types as t
from mailstack.imap.parser import (
    CommandReader,
    Limits,
    NeedLiteral,
    ParseError,
    TooBig,
    is_idle_done,
    parse_command,
    parse_sasl_response,
)

BIG = Limits(max_literal=1 << 20, max_append_literal=1 << 20)


def p(data: bytes, **kw: object) -> t.Command:
    return parse_command(data + b"\r\n", BIG, **kw)  # type: ignore[arg-type]


def seq(*ranges: tuple[int | None, int | None]) -> t.SequenceSet:
    return t.SequenceSet(tuple(t.SeqRange(a, b) for a, b in ranges))


# ----------------------------------------------------------------- simple commands


@pytest.mark.parametrize(
    ("line", "cls"),
    [
        (b"a CAPABILITY", t.Capability),
        (b"a noop", t.Noop),
        (b"a LOGOUT", t.Logout),
        (b"a STARTTLS", t.StartTLS),
        (b"a NAMESPACE", t.Namespace),
        (b"a IDLE", t.Idle),
        (b"a CHECK", t.Check),
        (b"a CLOSE", t.Close),
        (b"a UNSELECT", t.Unselect),
        (b"a EXPUNGE", t.Expunge),
    ],
)
def test_no_argument_commands(line: bytes, cls: type) -> None:
    cmd = p(line)
    assert type(cmd) is cls
    assert cmd.tag == "a"
    with pytest.raises(ParseError) as err:
        p(line + b" extra")
    assert err.value.tag == "a"


def test_login_forms() -> None:
    assert p(b"A001 LOGIN joe secret") == t.Login(tag="A001", userid="joe", password="secret")
    cmd = p(b'A1 LOGIN "joe@x" "p\\"w\\\\d"')
    assert isinstance(cmd, t.Login) and cmd.password == 'p"w\\d'
    cmd = parse_command(b"A1 LOGIN {3}\r\njoe {4+}\r\npass\r\n")
    assert isinstance(cmd, t.Login) and (cmd.userid, cmd.password) == ("joe", "pass")
    assert "pass" not in repr(cmd)


def test_authenticate() -> None:
    assert p(b"a AUTHENTICATE plain") == t.Authenticate(tag="a", mechanism="PLAIN")
    cmd = p(b"a AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=")
    assert isinstance(cmd, t.Authenticate) and cmd.initial_response == b"\0joe\0secret"
    cmd = p(b"a AUTHENTICATE PLAIN =")
    assert isinstance(cmd, t.Authenticate) and cmd.initial_response == b""
    with pytest.raises(ParseError):
        p(b"a AUTHENTICATE PLAIN AGpvZ")
    assert parse_sasl_response(b"*\r\n") is None
    assert parse_sasl_response(b"AGpvZQBzZWNyZXQ=\r\n") == b"\0joe\0secret"
    with pytest.raises(ParseError):
        parse_sasl_response(b"!!!!\r\n")


def test_enable_id() -> None:
    assert p(b"a ENABLE CONDSTORE utf8=accept") == t.Enable(
        tag="a", capabilities=("CONDSTORE", "UTF8=ACCEPT")
    )
    assert p(b"a ID NIL") == t.Id(tag="a", params=None)
    assert p(b'a ID ("name" "x" "version" NIL)') == t.Id(
        tag="a", params=(("name", "x"), ("version", None))
    )
    assert p(b"a ID ()") == t.Id(tag="a", params=())
    with pytest.raises(ParseError):
        p(b"a ID (" + b" ".join(b'"k%d" "v"' % i for i in range(31)) + b")")


def test_select_qresync_params() -> None:
    """RFC 7162 §3.2.5 / §7 select-param QRESYNC."""
    q = p(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))")
    assert q == t.Select(tag="a", mailbox="INBOX", qresync=t.QResync(
        uidvalidity=67890007, modseq=20050715194045000,
        known_uids=seq((41, 41), (43, 211), (214, 541))))
    q = p(b"a EXAMINE INBOX (QRESYNC (7 5 1:* (1:3,5 10:12,20)) CONDSTORE)")
    assert isinstance(q, t.Select) and q.readonly and q.condstore and q.qresync is not None
    assert q.qresync.known_uids == seq((1, None))
    assert q.qresync.seq_match == (seq((1, 3), (5, 5)), seq((10, 12), (20, 20)))
    q = p(b"a SELECT INBOX (qresync (7 5 (1 10)))")
    assert isinstance(q, t.Select) and q.qresync == t.QResync(
        uidvalidity=7, modseq=5, seq_match=(seq((1, 1)), seq((10, 10))))
    assert p(b"a SELECT INBOX (QRESYNC (7 5))") == t.Select(
        tag="a", mailbox="INBOX", qresync=t.QResync(uidvalidity=7, modseq=5))
    for bad in (b"a SELECT INBOX (QRESYNC)", b"a SELECT INBOX (QRESYNC (0 5))",
                b"a SELECT INBOX (QRESYNC (7))", b"a SELECT INBOX (QRESYNC (7 5 $))",
                b"a SELECT INBOX (QRESYNC (7 5 1:3 (1)))", b"a SELECT INBOX (QRESYNC (7 5) ",
                b"a SELECT INBOX (CONDSTORE CONDSTORE)",
                b"a SELECT INBOX (QRESYNC (7 5) QRESYNC (7 5))",
                b"a SELECT INBOX (QRESYNC (7 99999999999999999999))"):
        with pytest.raises(ParseError):
            p(bad)


def test_select_examine() -> None:
    assert p(b"a SELECT inbox") == t.Select(tag="a", mailbox="INBOX")
    assert p(b"a EXAMINE Inbox") == t.Select(tag="a", mailbox="INBOX", readonly=True)
    assert p(b"a SELECT INBOX (CONDSTORE)") == t.Select(tag="a", mailbox="INBOX", condstore=True)
    assert p(b'a SELECT "Entw&APw-rfe"') == t.Select(tag="a", mailbox="Entwürfe")
    assert p(b'a SELECT "Entw\xc3\xbcrfe"', utf8=True) == t.Select(tag="a", mailbox="Entwürfe")
    assert p(b"a SELECT INBOX.sub") == t.Select(tag="a", mailbox="INBOX.sub")
    for bad in (b"a SELECT", b"a SELECT &", b"a SELECT INBOX (FOO)", b'a SELECT "caf\xc3\xa9"'):
        with pytest.raises(ParseError):
            p(bad)


def test_mailbox_commands() -> None:
    assert p(b"a CREATE foo") == t.Create(tag="a", mailbox="foo")
    assert p(b"a CREATE Sent (USE (\\Sent))") == t.Create(
        tag="a", mailbox="Sent", special_use=("\\Sent",)
    )
    assert p(b"a DELETE foo") == t.Delete(tag="a", mailbox="foo")
    assert p(b'a RENAME foo "bar baz"') == t.Rename(tag="a", mailbox="foo", new_name="bar baz")
    assert p(b"a SUBSCRIBE foo") == t.Subscribe(tag="a", mailbox="foo")
    assert p(b"a UNSUBSCRIBE foo") == t.Unsubscribe(tag="a", mailbox="foo")
    assert p(b"a STATUS INBOX (MESSAGES UIDNEXT unseen)") == t.Status(
        tag="a", mailbox="INBOX", items=("MESSAGES", "UIDNEXT", "UNSEEN")
    )
    with pytest.raises(ParseError):
        p(b"a STATUS INBOX (BOGUS)")
    with pytest.raises(ParseError):
        p(b"a STATUS INBOX ()")
    # Names as paths are the store's problem, but they must parse as plain strings.
    assert p(b'a CREATE "../../x"') == t.Create(tag="a", mailbox="../../x")


def test_list_forms() -> None:
    assert p(b'a LIST "" *') == t.List(tag="a", reference="", patterns=("*",))
    assert p(b"a LIST ~/Mail/ %") == t.List(tag="a", reference="~/Mail/", patterns=("%",))
    cmd = p(
        b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" foo/%) '
        b"RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))"
    )
    assert cmd == t.List(
        tag="a",
        reference="",
        patterns=("INBOX", "foo/%"),
        selection=frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
        return_options=frozenset({"CHILDREN", "SPECIAL-USE", "STATUS"}),
        status_items=("MESSAGES", "UNSEEN"),
        extended=True,
    )
    cmd = p(b'a LIST "" % RETURN (SPECIAL-USE)')
    assert isinstance(cmd, t.List) and cmd.return_options == {"SPECIAL-USE"}
    assert p(b'a LSUB "" news.*') == t.Lsub(tag="a", reference="", pattern="news.*")
    for bad in (
        b'a LIST (RECURSIVEMATCH) "" *',
        b'a LIST "" * RETURN (BOGUS)',
        b'a LIST (FOO) "" *',
        b'a LIST ""',
    ):
        with pytest.raises(ParseError):
            p(bad)


def test_append_single_multi_literal8() -> None:
    msg = b"From: a@b\r\n\r\nhi\r\n"
    cmd = parse_command(b"a APPEND INBOX {%d}\r\n" % len(msg) + msg + b"\r\n", BIG)
    assert cmd == t.Append(
        tag="a",
        mailbox="INBOX",
        messages=(t.AppendMessage(flags=(), internal_date=None, data=msg),),
    )
    wire = (
        b'a APPEND Drafts (\\Seen \\draft $Label) " 1-Feb-2024 10:20:30 -0500" {2+}\r\nAB'
        b" ~{3}\r\nX\x00Y (\\Flagged) {1}\r\nZ\r\n"
    )
    cmd = parse_command(wire, BIG)
    assert isinstance(cmd, t.Append) and len(cmd.messages) == 3
    first, second, third = cmd.messages
    assert first.flags == ("\\Seen", "\\Draft", "$Label")
    tz = datetime.timezone(-datetime.timedelta(hours=5))
    assert first.internal_date == datetime.datetime(2024, 2, 1, 10, 20, 30, tzinfo=tz)
    assert (second.data, second.binary) == (b"X\x00Y", True)
    assert third.flags == ("\\Flagged",) and third.data == b"Z"
    for bad in (
        b"a APPEND INBOX",
        b'a APPEND INBOX "1-Feb-2024" {1}\r\nx',
        b"a APPEND INBOX {3}\r\na\x00b",
        b"a APPEND INBOX hello",
    ):
        with pytest.raises(ParseError):
            parse_command(bad + b"\r\n", BIG)


def test_idle_done() -> None:
    assert is_idle_done(b"DONE\r\n") and is_idle_done(b"done\r\n")
    assert not is_idle_done(b"a NOOP\r\n")


# ----------------------------------------------------------------- message commands


def test_sequence_sets() -> None:
    cmd = p(b"a FETCH 1,3:5,7:*,*:2 FLAGS")
    assert isinstance(cmd, t.Fetch)
    assert cmd.sequence == seq((1, 1), (3, 5), (7, None), (None, 2))
    assert cmd.sequence.intervals(10) == [(1, 10)]
    assert cmd.sequence.contains(4, 10)
    assert list(seq((2, 4), (9, None)).iter_existing(12, [1, 3, 4, 8, 11, 12])) == [3, 4, 11, 12]
    assert p(b"a UID FETCH $ FLAGS") == t.Fetch(
        tag="a", uid=True, sequence=t.SequenceSet(saved=True), items=(fi.Simple("FLAGS"),)
    )
    assert seq((1, 4294967295)).intervals(5) == [(1, 4294967295)]


@pytest.mark.parametrize(
    "bad",
    [
        b"a FETCH 0 FLAGS",
        b"a FETCH 4294967296 FLAGS",
        b"a UID FETCH 4294967296 FLAGS",
        b"a UID FETCH 1:4294967296 FLAGS",
        b"a FETCH 99999999999999999999999999999 FLAGS",
        b"a FETCH 1, FLAGS",
        b"a FETCH 1:2:3 FLAGS",
        b"a FETCH 1,$ FLAGS",
        b"a FETCH -1 FLAGS",
        b"a FETCH 1 (FLAGS",
        b"a FETCH 1 ()",
        b"a FETCH 1 (ALL)",
        b"a FETCH 1 BOGUS",
        b"a FETCH 1 BODY[",
        b"a FETCH 1 BODY[0]",
        b"a FETCH 1 BODY[MIME]",
        b"a FETCH 1 BODY[1.FOO]",
        b"a FETCH 1 BODY[HEADER.FIELDS ()]",
        b"a FETCH 1 BODY[]<1>",
        b"a FETCH 1 BODY[]<1.0>",
        b"a FETCH 1 FLAGS (CHANGEDSINCE)",
        b"a FETCH 1 FLAGS (VANISHED)",
    ],
)
def test_fetch_refused(bad: bytes) -> None:
    with pytest.raises(ParseError) as err:
        p(bad)
    assert err.value.tag == "a"


def test_fetch_max_number_ok() -> None:
    cmd = p(b"a UID FETCH 4294967295 UID")
    assert isinstance(cmd, t.Fetch) and cmd.sequence == seq((4294967295, 4294967295))


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (b"ALL", ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")),
        (b"fast", ("FLAGS", "INTERNALDATE", "RFC822.SIZE")),
        (b"FULL", ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")),
        (
            b"(UID RFC822.SIZE BODYSTRUCTURE BODY MODSEQ)",
            ("UID", "RFC822.SIZE", "BODYSTRUCTURE", "BODY", "MODSEQ"),
        ),
        (b"(RFC822 RFC822.HEADER RFC822.TEXT)", ("RFC822", "RFC822.HEADER", "RFC822.TEXT")),
        (b"BODY[]", ("BODY[]",)),
        (b"BODY.PEEK[]<0.1024>", ("BODY[]<0>",)),
        (b"BODY[HEADER]", ("BODY[HEADER]",)),
        (b"BODY[TEXT]", ("BODY[TEXT]",)),
        (
            b"body.peek[header.fields (From To Message-ID)]",
            ("BODY[HEADER.FIELDS (From To Message-ID)]",),
        ),
        (b"BODY[HEADER.FIELDS.NOT (Received)]", ("BODY[HEADER.FIELDS.NOT (Received)]",)),
        (b"BODY[1.2.3]", ("BODY[1.2.3]",)),
        (b"BODY[1.2.MIME]", ("BODY[1.2.MIME]",)),
        (b"BODY[2.HEADER]", ("BODY[2.HEADER]",)),
        (b"BODY[1.TEXT]<10.20>", ("BODY[1.TEXT]<10>",)),
        (
            b"(BINARY[1] BINARY.PEEK[1.2]<0.5> BINARY.SIZE[2] BINARY[])",
            ("BINARY[1]", "BINARY[1.2]<0>", "BINARY.SIZE[2]", "BINARY[]"),
        ),
    ],
)
def test_fetch_items(items: bytes, expected: tuple[str, ...]) -> None:
    cmd = p(b"a FETCH 1:* " + items)
    assert isinstance(cmd, t.Fetch)
    assert tuple(i.response_name() for i in cmd.items) == expected


def test_fetch_item_details() -> None:
    cmd = p(
        b"a UID FETCH 1 (BODY.PEEK[1.2.HEADER.FIELDS (a b)]<5.6> BODY[1]) "
        b"(CHANGEDSINCE 12345 VANISHED)"
    )
    assert isinstance(cmd, t.Fetch)
    assert cmd.items[0] == fi.BodySection(
        peek=True, part=(1, 2), text="HEADER.FIELDS", fields=("a", "b"), partial=(5, 6)
    )
    assert not cmd.items[0].marks_seen and cmd.items[1].marks_seen
    assert cmd.changedsince == 12345 and cmd.vanished
    assert fi.Simple("RFC822.TEXT").marks_seen and not fi.Simple("RFC822.HEADER").marks_seen
    assert not fi.Binary(size_only=True).marks_seen


def test_store() -> None:
    assert p(b"a STORE 2:4 +FLAGS (\\Deleted)") == t.Store(
        tag="a", sequence=seq((2, 4)), mode="+", silent=False, flags=("\\Deleted",)
    )
    assert p(b"a UID STORE 1 -flags.silent \\seen $Junk") == t.Store(
        tag="a",
        uid=True,
        sequence=seq((1, 1)),
        mode="-",
        silent=True,
        flags=("\\Seen", "$Junk"),
    )
    assert p(b"a STORE 1 (UNCHANGEDSINCE 7) FLAGS ()") == t.Store(
        tag="a", sequence=seq((1, 1)), mode="", silent=False, flags=(), unchangedsince=7
    )
    for bad in (
        b"a STORE 1 FLAGS",
        b"a STORE 1 *FLAGS (x)",
        b"a STORE 1 FLAGS (\\)",
        b"a STORE 1 FLAGS (a b",
        b"a STORE 1 (FOO 1) FLAGS (x)",
    ):
        with pytest.raises(ParseError):
            p(bad)


def test_copy_move_expunge() -> None:
    assert p(b"a COPY 1:2 Trash") == t.Copy(tag="a", sequence=seq((1, 2)), mailbox="Trash")
    assert p(b"a UID MOVE 5 inbox") == t.Move(
        tag="a", uid=True, sequence=seq((5, 5)), mailbox="INBOX"
    )
    assert p(b"a UID COPY 1 x") == t.Copy(tag="a", uid=True, sequence=seq((1, 1)), mailbox="x")
    assert p(b"a UID EXPUNGE 3:5") == t.Expunge(tag="a", uids=seq((3, 5)))
    with pytest.raises(ParseError):
        p(b"a UID EXPUNGE")
    with pytest.raises(ParseError):
        p(b"a UID NOOP")


# ----------------------------------------------------------------- search


def search_key(args: bytes) -> s.SearchKey:
    cmd = p(b"a SEARCH " + args)
    assert isinstance(cmd, t.Search)
    return cmd.key


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (b"ALL", s.All()),
        (b"ANSWERED", s.Flag("\\Answered")),
        (b"unseen", s.Flag("\\Seen", False)),
        (b"DELETED", s.Flag("\\Deleted")),
        (b"UNDRAFT", s.Flag("\\Draft", False)),
        (b"FLAGGED", s.Flag("\\Flagged")),
        (b"RECENT", s.Flag("\\Recent")),
        (b"NEW", s.And((s.Flag("\\Recent"), s.Flag("\\Seen", False)))),
        (b"OLD", s.Flag("\\Recent", False)),
        (b"KEYWORD $Junk", s.Flag("$Junk")),
        (b"UNKEYWORD foo", s.Flag("foo", False)),
        (b"FROM joe", s.Header("From", "joe")),
        (b'TO "a b"', s.Header("To", "a b")),
        (b"CC x", s.Header("Cc", "x")),
        (b"BCC x", s.Header("Bcc", "x")),
        (b"SUBJECT {3}\r\nhi!", s.Header("Subject", "hi!")),
        (b'HEADER X-Spam ""', s.Header("X-Spam", "")),
        (b"BODY foo", s.Body("foo")),
        (b"TEXT foo", s.Text("foo")),
        (b"BEFORE 1-Feb-2024", s.Date("internal", "before", datetime.date(2024, 2, 1))),
        (b'ON "15-mar-2023"', s.Date("internal", "on", datetime.date(2023, 3, 15))),
        (b"SINCE 01-Jan-2000", s.Date("internal", "since", datetime.date(2000, 1, 1))),
        (b"SENTBEFORE 1-Feb-2024", s.Date("sent", "before", datetime.date(2024, 2, 1))),
        (b"SENTON 1-Feb-2024", s.Date("sent", "on", datetime.date(2024, 2, 1))),
        (b"SENTSINCE 1-Feb-2024", s.Date("sent", "since", datetime.date(2024, 2, 1))),
        (b"LARGER 100", s.Size("larger", 100)),
        (b"SMALLER 5", s.Size("smaller", 5)),
        (b"OLDER 3600", s.Within("older", 3600)),
        (b"YOUNGER 60", s.Within("younger", 60)),
        (b"1:3,5", s.Sequence(seq((1, 3), (5, 5)))),
        (b"*", s.Sequence(seq((None, None)))),
        (b"$", s.Sequence(t.SequenceSet(saved=True))),
        (b"UID 10:*", s.Sequence(seq((10, None)), uid=True)),
        (b"NOT SEEN", s.Not(s.Flag("\\Seen"))),
        (b"OR SEEN FLAGGED", s.Or(s.Flag("\\Seen"), s.Flag("\\Flagged"))),
        (b"(SEEN)", s.Flag("\\Seen")),
        (
            b"(SEEN FLAGGED) DELETED",
            s.And((s.And((s.Flag("\\Seen"), s.Flag("\\Flagged"))), s.Flag("\\Deleted"))),
        ),
        (
            b"OR (FROM a TO b) NOT (1:2)",
            s.Or(
                s.And((s.Header("From", "a"), s.Header("To", "b"))), s.Not(s.Sequence(seq((1, 2))))
            ),
        ),
        (b"MODSEQ 620162338", s.ModSeq(620162338)),
        (b'MODSEQ "/flags/\\\\draft" all 620162338', s.ModSeq(620162338, "/flags/\\draft", "all")),
    ],
)
def test_search_keys(args: bytes, key: s.SearchKey) -> None:
    assert search_key(args) == key


def test_search_options() -> None:
    cmd = p(b'a UID SEARCH RETURN (MIN MAX COUNT SAVE) CHARSET utf-8 SUBJECT "caf\xc3\xa9"')
    assert isinstance(cmd, t.Search)
    assert cmd.uid and cmd.charset == "UTF-8"
    assert cmd.return_options == {"MIN", "MAX", "COUNT", "SAVE"}
    assert cmd.key == s.Header("Subject", "café")
    with pytest.raises(ParseError):
        p(b"a SEARCH SUBJECT caf\xc3\xa9")  # 8-bit is not an atom char
    cmd = p(b"a SEARCH RETURN () ALL")
    assert isinstance(cmd, t.Search) and cmd.return_options == frozenset()
    cmd = parse_command(b"a SEARCH CHARSET ISO-8859-1 BODY {4}\r\ncaf\xe9\r\n", BIG)
    assert isinstance(cmd, t.Search) and cmd.key == s.Body("café")
    assert s.modseq_required(search_key(b"OR ALL NOT MODSEQ 5"))
    assert not s.modseq_required(search_key(b"ALL"))


def test_search_bad_charset_is_no() -> None:
    with pytest.raises(ParseError) as err:
        p(b"a SEARCH CHARSET X-BOGUS ALL")
    assert err.value.no and err.value.code is not None and "BADCHARSET" in err.value.code
    with pytest.raises(ParseError) as err:
        p(b"a SEARCH CHARSET base64 ALL")
    assert err.value.no


@pytest.mark.parametrize(
    "bad",
    [
        b"a SEARCH",
        b"a SEARCH BOGUS",
        b"a SEARCH FROM",
        b"a SEARCH (SEEN",
        b"a SEARCH ()",
        b"a SEARCH OR SEEN",
        b"a SEARCH BEFORE 32-Jan-2024",
        b"a SEARCH BEFORE 1-Foo-2024",
        b"a SEARCH BEFORE 2024-01-01",
        b"a SEARCH LARGER x",
        b"a SEARCH LARGER 99999999999999999999",
        b"a SEARCH UID 4294967296",
        b"a SEARCH 0",
        b"a SEARCH RETURN (BOGUS) ALL",
        b'a SEARCH SUBJECT "unterminated',
        b'a SEARCH SUBJECT "a\\qb"',
        b"a SEARCH YOUNGER 0",
        b'a SEARCH MODSEQ "x" bogus 5',
    ],
)
def test_search_refused(bad: bytes) -> None:
    with pytest.raises(ParseError) as err:
        p(bad)
    assert err.value.tag == "a"


def test_search_deep_nesting_refused() -> None:
    depth = 10000
    wide = Limits(max_line=100000)
    with pytest.raises(ParseError):
        parse_command(b"a SEARCH " + b"(" * depth + b"ALL" + b")" * depth + b"\r\n", wide)
    with pytest.raises(ParseError):
        parse_command(b"a SEARCH " + b"NOT " * depth + b"ALL\r\n", wide)
    with pytest.raises(ParseError):
        parse_command(b"a SEARCH " + b"OR ALL " * 100 + b"ALL\r\n")
    ok = b"a SEARCH " + b"(" * 20 + b"ALL" + b")" * 20 + b"\r\n"
    assert isinstance(parse_command(ok), t.Search)


# ----------------------------------------------------------------- lexical hostility


@pytest.mark.parametrize(
    "bad",
    [
        b'a LOGIN "jo\x00e" x',  # NUL in quoted
        b'a LOGIN "joe x',  # unterminated quote
        b'a LOGIN "joe\\',  # escape at end
        b"a LOGIN joe",  # missing argument
        b"a LOGIN  joe x",  # empty atom (double space)
        b"a LOGIN joe x ",  # trailing space
        b"a LOGIN \xff x",  # 8-bit atom
        b"a  NOOP",
        b" a NOOP",
        b"a",
        b"",
        b"+ NOOP",
        b"a BOGUS",
        b"a LOGIN {3}x",  # literal not at end of line
        b"a NOOP\x00",
        b"a LOGIN jo\x7fe x",
    ],
)
def test_lexical_refusals(bad: bytes) -> None:
    with pytest.raises(ParseError):
        p(bad)


def test_unknown_command_carries_tag() -> None:
    with pytest.raises(ParseError) as err:
        p(b"tag42 FROBNICATE now")
    assert err.value.tag == "tag42"
    with pytest.raises(ParseError) as err:
        p(b"tag42 UID FROB 1")
    assert err.value.tag == "tag42"


def test_nul_in_plain_literal_refused() -> None:
    with pytest.raises(ParseError):
        parse_command(b"a LOGIN {3}\r\na\x00b x\r\n")


def test_bare_cr_in_line_refused() -> None:
    with pytest.raises(ParseError):
        parse_command(b"a LOGIN jo\re x\r\n")


# ----------------------------------------------------------------- limits


def test_literal_refused_before_data() -> None:
    reader = CommandReader(Limits(max_literal=100))
    with pytest.raises(TooBig) as err:
        reader.feed_line(b"a LOGIN {4294967296}\r\n")
    assert err.value.tag == "a" and err.value.kind == "literal" and err.value.synchronizing
    with pytest.raises(TooBig) as err:
        reader.feed_line(b"b LOGIN {101+}\r\n")
    assert not err.value.synchronizing and err.value.tag == "b"
    with pytest.raises(TooBig):
        reader.feed_line(b"c LOGIN {" + b"9" * 5000 + b"}\r\n")
    # The reader is reset and usable after a refusal.
    need = reader.feed_line(b"d LOGIN {100}\r\n")
    assert need == NeedLiteral(100, True, False, "d", "LOGIN")
    reader.feed_literal(b"x" * 100)
    cmd = reader.feed_line(b" pw\r\n")
    assert isinstance(cmd, t.Login) and cmd.userid == "x" * 100


def test_append_literal_limit_separate() -> None:
    reader = CommandReader(Limits(max_literal=10, max_append_literal=1000))
    assert isinstance(reader.feed_line(b"a APPEND INBOX {500}\r\n"), NeedLiteral)
    reader.reset()
    with pytest.raises(TooBig):
        reader.feed_line(b"a APPEND INBOX {1001}\r\n")
    with pytest.raises(TooBig):
        reader.feed_line(b"a LOGIN {11}\r\n")
    need = reader.feed_line(b"a UID APPEND x {5}\r\n")  # parse error later, size ok
    assert isinstance(need, NeedLiteral)


def test_literal_minus() -> None:
    reader = CommandReader(Limits(max_literal=10000, literal_plus=False))
    with pytest.raises(TooBig):
        reader.feed_line(b"a LOGIN {4097+}\r\n")
    assert isinstance(reader.feed_line(b"a LOGIN {4097}\r\n"), NeedLiteral)


def test_too_many_literals() -> None:
    reader = CommandReader(Limits(max_literals=3))
    reader.feed_line(b"a SEARCH TEXT {1}\r\n")
    for _ in range(2):
        reader.feed_literal(b"x")
        assert isinstance(reader.feed_line(b" TEXT {1}\r\n"), NeedLiteral)
    reader.feed_literal(b"x")
    with pytest.raises(TooBig) as err:
        reader.feed_line(b" TEXT {1}\r\n")
    assert err.value.kind == "literals" and err.value.tag == "a"


def test_total_literal_limit() -> None:
    reader = CommandReader(Limits(max_literal=100, max_total_literal=150))
    reader.feed_line(b"a LOGIN {100}\r\n")
    reader.feed_literal(b"u" * 100)
    with pytest.raises(TooBig) as err:
        reader.feed_line(b" {100}\r\n")
    assert err.value.kind == "total"


def test_line_limit() -> None:
    reader = CommandReader(Limits(max_line=100))
    with pytest.raises(TooBig) as err:
        reader.feed_line(b"a LOGIN " + b"x" * 200 + b" y\r\n")
    assert err.value.kind == "line" and err.value.tag == "a"


def test_literal8_outside_append_refused() -> None:
    with pytest.raises(ParseError):
        parse_command(b"a LOGIN ~{1}\r\nx y\r\n")


def test_reader_misuse() -> None:
    reader = CommandReader()
    with pytest.raises(RuntimeError):
        reader.feed_literal(b"x")
    reader.feed_line(b"a LOGIN {1}\r\n")
    assert reader.pending is not None
    with pytest.raises(RuntimeError):
        reader.feed_line(b"x")
    with pytest.raises(RuntimeError):
        reader.feed_literal(b"xx")


# ----------------------------------------------------------------- fuzz

TOKENS = [
    b"a",
    b"A1",
    b" ",
    b"(",
    b")",
    b"[",
    b"]",
    b"<",
    b">",
    b".",
    b"*",
    b"%",
    b"$",
    b":",
    b",",
    b"\\",
    b'"',
    b"{",
    b"}",
    b"+",
    b"~",
    b"-",
    b"\x00",
    b"\r",
    b"\n",
    b"\xff",
    b"{3}\r\nabc",
    b"{2+}\r\nxy",
    b"~{1}\r\n\x00",
    b"{99999999999}\r\n",
    b"NIL",
    b"0",
    b"1",
    b"4294967295",
    b"4294967296",
    b"1:*",
    b"UID",
    b"FETCH",
    b"SEARCH",
    b"STORE",
    b"APPEND",
    b"LIST",
    b"LOGIN",
    b"SELECT",
    b"STATUS",
    b"BODY",
    b"BODY.PEEK[",
    b"HEADER",
    b"HEADER.FIELDS",
    b"TEXT",
    b"MIME",
    b"BINARY[",
    b"OR",
    b"NOT",
    b"CHARSET",
    b"RETURN",
    b"FLAGS",
    b"+FLAGS.SILENT",
    b"1-Feb-2024",
    b'" 1-Feb-2024 10:00:00 +0100"',
    b"INBOX",
    b"&AOk-",
    b"&",
    b"MODSEQ",
    b"CHANGEDSINCE",
    b"UNCHANGEDSINCE",
    b"ID",
    b"ENABLE",
    b"AUTHENTICATE",
    b"=",
    b"ALL",
    b"FULL",
]
FUZZ_LIMITS = Limits(
    max_line=200,
    max_literal=64,
    max_append_literal=64,
    max_literals=4,
    max_depth=8,
    max_total_literal=128,
)


def drive(data: bytes) -> None:
    """Feed wire bytes the way the server would; only ParseError/TooBig may escape."""
    reader = CommandReader(FUZZ_LIMITS)
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        line = data[pos:] if nl < 0 else data[pos : nl + 1]
        pos += len(line)
        try:
            result = reader.feed_line(line)
            while isinstance(result, NeedLiteral):
                assert result.size <= 64
                chunk = data[pos : pos + result.size]
                if len(chunk) < result.size:
                    return
                reader.feed_literal(chunk)
                pos += result.size
                nl = data.find(b"\n", pos)
                line = data[pos:] if nl < 0 else data[pos : nl + 1]
                pos += len(line)
                result = reader.feed_line(line)
            assert isinstance(result, t.Command)
        except TooBig as exc:
            assert exc.kind in ("line", "literal", "literals", "total")
        except ParseError as exc:
            assert isinstance(exc.message, str)
        assert reader.pending is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    drive(b"a " + data)
    drive(data)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_fuzz_token_soup(tokens: list[bytes]) -> None:
    drive(b"t1 " + b"".join(tokens) + b"\r\n")
    drive(b"t1 " + b" ".join(tokens) + b"\r\n")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            b"FETCH 1 ",
            b"UID SEARCH ",
            b"SEARCH ",
            b"STORE 1 ",
            b"LIST ",
            b"APPEND INBOX ",
            b"STATUS INBOX ",
        ]
    ),
    st.lists(st.sampled_from(TOKENS), max_size=30),
)
def test_fuzz_command_args(prefix: bytes, tokens: list[bytes]) -> None:
    drive(b"t " + prefix + b" ".join(tokens) + b"\r\n")
