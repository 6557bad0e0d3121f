"""Typed IMAP command objects produced by :mod:`mailstack.imap.parser`.

Invariants:
- Every class is a frozen dataclass; a parsed command never changes after parsing.
- Mailbox names are Unicode ``str`` (modified UTF-7 already decoded, or UTF-8 when the
  session enabled UTF8=ACCEPT); "INBOX" in any case is normalised to "INBOX"
  (RFC 9051 §5.1).
- Numbers were range-checked by the parser: message numbers and UIDs fit in 32 bits
  (RFC 9051 §9 nz-number), mod-sequences in 63 bits (RFC 7162 §7).
- System flags are normalised to their canonical spelling (``\\Seen``); keywords keep
  the client's spelling (they compare case-insensitively, RFC 9051 §2.3.2).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import ClassVar

from mailstack.imap.fetch_items import FetchAtt
from mailstack.imap.search import SearchKey
from mailstack.imap.sequence import SeqRange as SeqRange  # re-exported
from mailstack.imap.sequence import SequenceSet

# --------------------------------------------------------------------------- base


@dataclass(frozen=True, kw_only=True)
class Command:
    """Base of all commands; ``NAME`` is the command as the client spelled it, upper-cased."""

    NAME: ClassVar[str] = ""
    tag: str


@dataclass(frozen=True, kw_only=True)
class Capability(Command):
    NAME: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True, kw_only=True)
class Noop(Command):
    NAME: ClassVar[str] = "NOOP"


@dataclass(frozen=True, kw_only=True)
class Logout(Command):
    NAME: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True, kw_only=True)
class StartTLS(Command):
    NAME: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True, kw_only=True)
class Namespace(Command):
    NAME: ClassVar[str] = "NAMESPACE"


@dataclass(frozen=True, kw_only=True)
class Idle(Command):
    """RFC 9051 §6.3.13: the server answers "+ idling" and waits for a ``DONE`` line."""

    NAME: ClassVar[str] = "IDLE"


@dataclass(frozen=True, kw_only=True)
class Check(Command):
    NAME: ClassVar[str] = "CHECK"


@dataclass(frozen=True, kw_only=True)
class Close(Command):
    NAME: ClassVar[str] = "CLOSE"


@dataclass(frozen=True, kw_only=True)
class Unselect(Command):
    NAME: ClassVar[str] = "UNSELECT"


@dataclass(frozen=True, kw_only=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE when ``uids`` is set (RFC 9051 §6.4.9)."""

    NAME: ClassVar[str] = "EXPUNGE"
    uids: SequenceSet | None = None


@dataclass(frozen=True, kw_only=True)
class Login(Command):
    NAME: ClassVar[str] = "LOGIN"
    userid: str
    password: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Authenticate(Command):
    """``initial_response`` is the decoded SASL-IR (RFC 4959); ``b""`` for "=", None if absent."""

    NAME: ClassVar[str] = "AUTHENTICATE"
    mechanism: str
    initial_response: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class Enable(Command):
    NAME: ClassVar[str] = "ENABLE"
    capabilities: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Id(Command):
    """RFC 2971; ``params`` is None for ``ID NIL``."""

    NAME: ClassVar[str] = "ID"
    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, kw_only=True)
class QResync:
    """The QRESYNC select parameter (RFC 7162 §3.2.5): what the client last knew.

    ``known_uids`` limits what is reported; ``seq_match`` is the optional pair
    (message numbers, their UIDs) a server without full expunge history may use."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, kw_only=True)
class Select(Command):
    """SELECT, or EXAMINE when ``readonly`` (RFC 9051 §6.3.2, §6.3.3; RFC 7162 §3.1.8,
    §3.2.5)."""

    NAME: ClassVar[str] = "SELECT"
    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True, kw_only=True)
class Create(Command):
    """``special_use`` from ``CREATE x (USE (\\Drafts))`` (RFC 6154 §3)."""

    NAME: ClassVar[str] = "CREATE"
    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Delete(Command):
    NAME: ClassVar[str] = "DELETE"
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class Rename(Command):
    NAME: ClassVar[str] = "RENAME"
    mailbox: str
    new_name: str


@dataclass(frozen=True, kw_only=True)
class Subscribe(Command):
    NAME: ClassVar[str] = "SUBSCRIBE"
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class Unsubscribe(Command):
    NAME: ClassVar[str] = "UNSUBSCRIBE"
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class List(Command):
    """LIST with LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), SPECIAL-USE (RFC 6154).

    ``selection`` and ``return_options`` are upper-cased option names; ``status_items``
    is set when ``RETURN (STATUS (...))`` was given. ``extended`` is True when the client
    used any extended syntax (the reply may then carry CHILDINFO etc.).
    """

    NAME: ClassVar[str] = "LIST"
    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    return_options: frozenset[str] = frozenset()
    status_items: tuple[str, ...] | None = None
    extended: bool = False


@dataclass(frozen=True, kw_only=True)
class Lsub(Command):
    NAME: ClassVar[str] = "LSUB"
    reference: str
    pattern: str


@dataclass(frozen=True, kw_only=True)
class Status(Command):
    NAME: ClassVar[str] = "STATUS"
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class AppendMessage:
    """One message of an APPEND (several with MULTIAPPEND, RFC 3502)."""

    flags: tuple[str, ...]
    internal_date: datetime.datetime | None
    data: bytes = field(repr=False)
    binary: bool = False  # sent as literal8 ~{n} (RFC 3516 §4.4)
    # CATENATE (RFC 4469 §5): ("TEXT", bytes) and ("URL", str) parts, in order
    catenate: tuple[tuple[str, bytes | str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Append(Command):
    NAME: ClassVar[str] = "APPEND"
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, kw_only=True)
class Search(Command):
    """SEARCH / UID SEARCH. ``return_options`` is None without a RETURN clause (ESEARCH,
    RFC 4731); otherwise the upper-cased options, empty meaning ALL (RFC 9051 §6.4.4)."""

    NAME: ClassVar[str] = "SEARCH"
    uid: bool = False
    return_options: frozenset[str] | None = None
    charset: str | None = None
    key: SearchKey
    partial: tuple[int, int] | None = None  # RETURN (PARTIAL low:high), RFC 5267 §4.4


@dataclass(frozen=True, kw_only=True)
class Fetch(Command):
    NAME: ClassVar[str] = "FETCH"
    uid: bool = False
    sequence: SequenceSet
    items: tuple[FetchAtt, ...]
    changedsince: int | None = None  # RFC 7162 §3.1.4.1
    vanished: bool = False  # RFC 7162 §3.2.6


@dataclass(frozen=True, kw_only=True)
class Store(Command):
    """``mode`` is "+" (add), "-" (remove) or "" (replace) (RFC 9051 §6.4.6)."""

    NAME: ClassVar[str] = "STORE"
    uid: bool = False
    sequence: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None  # RFC 7162 §3.1.3


@dataclass(frozen=True, kw_only=True)
class Copy(Command):
    NAME: ClassVar[str] = "COPY"
    uid: bool = False
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class Move(Command):
    NAME: ClassVar[str] = "MOVE"
    uid: bool = False
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class Sort(Command):
    """SORT / UID SORT (RFC 5256 §3); ``criteria`` are (key, reverse) pairs;
    ``return_options`` is None without RETURN, else ESORT options (RFC 5267 §3)."""

    NAME: ClassVar[str] = "SORT"
    uid: bool = False
    criteria: tuple[tuple[str, bool], ...]
    charset: str
    key: SearchKey
    return_options: frozenset[str] | None = None
    partial: tuple[int, int] | None = None  # RETURN (PARTIAL low:high), RFC 5267 §4.4


@dataclass(frozen=True, kw_only=True)
class CancelUpdate(Command):
    """CANCELUPDATE "tag" ... (RFC 5267 §4.3.5): stop the updates of those contexts."""

    NAME: ClassVar[str] = "CANCELUPDATE"
    tags: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Thread(Command):
    """THREAD / UID THREAD (RFC 5256 §4): ``algorithm`` is ORDEREDSUBJECT or REFERENCES."""

    NAME: ClassVar[str] = "THREAD"
    uid: bool = False
    algorithm: str
    charset: str
    key: SearchKey


@dataclass(frozen=True, kw_only=True)
class Compress(Command):
    """COMPRESS mechanism (RFC 4978 §3); only DEFLATE exists."""

    NAME: ClassVar[str] = "COMPRESS"
    mechanism: str


@dataclass(frozen=True, kw_only=True)
class GetMetadata(Command):
    """GETMETADATA (RFC 5464 §4.2); ``mailbox`` "" names the server."""

    NAME: ClassVar[str] = "GETMETADATA"
    mailbox: str
    entries: tuple[str, ...]
    maxsize: int | None = None
    depth: str = "0"  # "0", "1" or "infinity"


@dataclass(frozen=True, kw_only=True)
class SetMetadata(Command):
    """SETMETADATA (RFC 5464 §4.3); a None value removes the entry."""

    NAME: ClassVar[str] = "SETMETADATA"
    mailbox: str
    items: tuple[tuple[str, bytes | None], ...] = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class NotifyGroup:
    """One event group of NOTIFY SET (RFC 5465 §6): a mailbox filter and its events."""

    filter: str  # selected, selected-delayed, inboxes, personal, subscribed, subtree,
    # mailboxes (lower-case)
    mailboxes: tuple[str, ...] = ()
    events: tuple[str, ...] = ()  # canonical spelling, e.g. "MessageNew"; () = NONE
    fetch: tuple[FetchAtt, ...] = ()  # MessageNew (fetch-att ...)


@dataclass(frozen=True, kw_only=True)
class Notify(Command):
    """NOTIFY NONE (``groups`` None) or NOTIFY SET [STATUS] groups (RFC 5465 §3)."""

    NAME: ClassVar[str] = "NOTIFY"
    groups: tuple[NotifyGroup, ...] | None
    status: bool = False


@dataclass(frozen=True, kw_only=True)
class GetQuota(Command):
    """GETQUOTA quota-root (RFC 9208 §4.2)."""

    NAME: ClassVar[str] = "GETQUOTA"
    root: str


@dataclass(frozen=True, kw_only=True)
class GetQuotaRoot(Command):
    """GETQUOTAROOT mailbox (RFC 9208 §4.3)."""

    NAME: ClassVar[str] = "GETQUOTAROOT"
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class SetQuota(Command):
    """SETQUOTA (RFC 9208 §4.1): parsed to be refused; limits come from the plan."""

    NAME: ClassVar[str] = "SETQUOTA"
    root: str
