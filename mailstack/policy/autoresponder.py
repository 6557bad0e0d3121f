"""When an out-of-office responder answers a message (RFC 3834 §2, docs/behaviour.md §7).

Pure: facts about one delivered message, the responder, its throttle state and the clock
in; a frozen verdict (reply or not, and why) out. No SQL, no sockets. The store runs
``decide`` inside the transaction that records the reply, so two deliveries of one
sender arriving together produce one reply.

Never reply (each rule has its reason string, ``REASONS``):
- the message reached the address only through the catchall for a local part that
  does not exist (``via_catchall``);
- ``Auto-Submitted`` present with any value other than ``no`` (RFC 3834 §5);
- ``Precedence: bulk|list|junk`` (and ``auto_reply``, which some responders send);
  ``X-Auto-Response-Suppress`` naming ``All`` or ``OOF`` (what Exchange sends);
- any ``List-Id`` (RFC 2919), ``List-Unsubscribe`` or ``List-Post`` (RFC 2369) field;
- the message is a report: ``multipart/report`` (RFC 6522: delivery status, MDN) or a
  top-level ``message/delivery-status``;
- an empty return path (RFC 3834 §2: replies go to the return path, none here), or
  one of a mail system: ``MAILER-DAEMON``, ``LISTSERV``, ``majordomo``, ``owner-*``,
  ``*-owner``, ``*-request`` (local part, case-insensitive);
- a return path with a non-ASCII address (a reply would need SMTPUTF8 end to end);
- neither the address nor one of its aliases is in ``To:``/``Cc:`` (RFC 3834 §2: a
  Bcc or a list expansion is not personal mail);
- the sender is the address itself or one of its aliases;
- the sender is excluded: an exact address, or ``@domain`` (that domain; its
  subdomains too only with ``ThrottleRules.exclude_subdomains``);
- outside the schedule: before ``starts_at``, at or after ``ends_at`` (epoch seconds),
  or on a weekday not chosen, the weekday taken in the responder's time zone;
- the throttle: this sender got a reply less than ``window`` seconds ago
  (``last_reply_at``: the store gives only replies since the responder's last reset or
  activation);
- the address already sent ``hourly_cap`` replies in the last hour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.utils import getaddresses
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .relay import address_key

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOUR = 3600.0
DAY = 86400.0

REASONS = {
    "reply": "reply",
    "catchall": "reached the address only through the catchall",
    "auto-submitted": "Auto-Submitted other than no (RFC 3834 §5)",
    "precedence": "Precedence bulk/list/junk",
    "suppress": "X-Auto-Response-Suppress",
    "list": "mailing list header (List-Id/List-Unsubscribe/List-Post)",
    "report": "delivery or disposition report",
    "null-sender": "empty return path",
    "system-sender": "return path of a mail system (MAILER-DAEMON, owner-, -request)",
    "utf8-sender": "non-ASCII return path",
    "not-addressed": "address not in To/Cc",
    "self": "sender is the address itself",
    "excluded": "sender excluded",
    "schedule": "outside the schedule",
    "inactive": "responder not active",
    "throttled": "sender already answered within the throttle window",
    "hourly-cap": "hourly reply cap reached",
}


class ResponderRuleError(ValueError):
    """A responder setting the operator gave is invalid (the text says which and why)."""


# --- what the decision needs -----------------------------------------------------------


class ResponderRules(Protocol):
    """A saved responder (the store's ``AutoResponder`` satisfies this)."""

    @property
    def active(self) -> bool: ...
    @property
    def starts_at(self) -> float | None: ...
    @property
    def ends_at(self) -> float | None: ...
    @property
    def weekdays(self) -> frozenset[int]: ...  # 0 = Monday; empty: every day
    @property
    def timezone(self) -> str: ...
    @property
    def exclusions(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ThrottleRules:
    window: float = 7 * DAY  # seconds between two replies to one sender
    hourly_cap: int = 30  # replies per address per hour
    exclude_subdomains: bool = False  # "@domain" also matches "a@sub.domain"


@dataclass(frozen=True)
class MessageFacts:
    """What the decision knows about one delivered message, for one receiving address.

    ``sender``: the return path's key (lowercase domain and local part) or "" for
    ``<>``; ``sender_raw``: as written; ``addressed``: address keys found in ``To:`` and
    ``Cc:``; ``own_keys``: the receiving address and its aliases (keys)."""

    sender: str
    sender_raw: str
    own_keys: frozenset[str]
    addressed: frozenset[str]
    via_catchall: bool = False
    auto_submitted: str = ""
    precedence: str = ""
    suppress: str = ""
    list_header: bool = False
    report: bool = False


@dataclass(frozen=True)
class AutoreplyVerdict:
    reply: bool
    reason: str  # a key of REASONS

    @property
    def text(self) -> str:
        return REASONS[self.reason]


def _no(reason: str) -> AutoreplyVerdict:
    return AutoreplyVerdict(False, reason)


REPLY = AutoreplyVerdict(True, "reply")


# --- facts from a message --------------------------------------------------------------


def _header(msg: Message, name: str) -> str:
    value = msg.get(name)
    return "" if value is None else " ".join(str(value).split())


def message_facts(headers: Message, sender: str | None, own_keys: Iterable[str], *,
                  via_catchall: bool = False) -> MessageFacts:
    """Facts from a parsed header block (``email.parser.BytesHeaderParser`` with the
    compat32 policy: values as written). ``sender``: the envelope return path or None
    for ``<>``."""
    addressed: set[str] = set()
    for name in ("To", "Cc"):
        values = [str(v) for v in headers.get_all(name) or []]
        for _display, addr in getaddresses(values):
            key = address_key(addr) if addr else None
            if key:
                addressed.add(key)
    ctype = headers.get_content_type()
    raw = sender or ""
    return MessageFacts(
        sender=(address_key(raw) or raw.lower()) if raw else "",
        sender_raw=raw,
        own_keys=frozenset(k.lower() for k in own_keys),
        addressed=frozenset(addressed),
        via_catchall=via_catchall,
        auto_submitted=_header(headers, "Auto-Submitted"),
        precedence=_header(headers, "Precedence"),
        suppress=_header(headers, "X-Auto-Response-Suppress"),
        list_header=any(headers.get(h) is not None
                        for h in ("List-Id", "List-Unsubscribe", "List-Post")),
        report=ctype in ("multipart/report", "message/delivery-status",
                         "message/disposition-notification"),
    )


# --- the rules -------------------------------------------------------------------------

_SYSTEM_LOCALS = {"mailer-daemon", "listserv", "majordomo"}


def is_system_sender(sender: str) -> bool:
    """A return path of a mail system or list manager (RFC 3834 §2), by local part."""
    local = sender.rpartition("@")[0].lower().strip('"')
    return (local in _SYSTEM_LOCALS or local.startswith("owner-")
            or local.endswith(("-request", "-owner")))


def matches_exclusion(sender: str, exclusions: Iterable[str], *,
                      subdomains: bool = False) -> bool:
    """``sender`` (a key) is listed exactly, or its domain is (``@domain``)."""
    domain = sender.rpartition("@")[2].lower()
    for entry in exclusions:
        e = entry.lower()
        if e.startswith("@"):
            d = e[1:]
            if domain == d or (subdomains and domain.endswith("." + d)):
                return True
        elif (address_key(e) or e) == sender:
            return True
    return False


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ResponderRuleError(f"unknown time zone {name!r} (use an IANA name such "
                                 "as Europe/Zurich)") from exc


def in_schedule(r: ResponderRules, now: float) -> bool:
    """Inside [starts_at, ends_at) and on a chosen weekday in the responder's zone."""
    if r.starts_at is not None and now < r.starts_at:
        return False
    if r.ends_at is not None and now >= r.ends_at:
        return False
    if r.weekdays:
        try:
            tz = zone(r.timezone)
        except ResponderRuleError:
            return False  # an unknown zone (removed from tzdata): never guess
        if datetime.fromtimestamp(now, tz).weekday() not in r.weekdays:
            return False
    return True


def _keyword(value: str) -> str:
    """The first token of a structured field value, comments (RFC 5322 §3.2.2) removed:
    ``No (a comment); x=y`` -> ``no``."""
    while True:
        stripped = _COMMENT.sub(" ", value)
        if stripped == value:
            break
        value = stripped
    return value.split(";")[0].strip().lower()


_COMMENT = re.compile(r"\([^()]*\)")


def decide(facts: MessageFacts, r: ResponderRules, *, now: float,
           last_reply_at: float | None = None, replies_last_hour: int = 0,
           rules: ThrottleRules = ThrottleRules()) -> AutoreplyVerdict:
    """Reply or not, with the reason (the first rule that refuses, in the order of the
    module docstring)."""
    if not r.active:
        return _no("inactive")
    if facts.via_catchall:
        return _no("catchall")
    if facts.auto_submitted and _keyword(facts.auto_submitted) != "no":
        return _no("auto-submitted")
    if facts.precedence.lower() in ("bulk", "list", "junk", "auto_reply"):
        return _no("precedence")
    if {v.strip().lower() for v in facts.suppress.split(",")} & {"all", "oof"}:
        return _no("suppress")
    if facts.list_header:
        return _no("list")
    if facts.report:
        return _no("report")
    if not facts.sender:
        return _no("null-sender")
    if is_system_sender(facts.sender):
        return _no("system-sender")
    if not facts.sender_raw.isascii():
        return _no("utf8-sender")
    if not facts.addressed & facts.own_keys:
        return _no("not-addressed")
    if facts.sender in facts.own_keys:
        return _no("self")
    if matches_exclusion(facts.sender, r.exclusions, subdomains=rules.exclude_subdomains):
        return _no("excluded")
    if not in_schedule(r, now):
        return _no("schedule")
    if last_reply_at is not None and now - last_reply_at < rules.window:
        return _no("throttled")
    if replies_last_hour >= rules.hourly_cap:
        return _no("hourly-cap")
    return REPLY


# --- validating what an operator saves -------------------------------------------------


def parse_weekdays(text: str) -> frozenset[int]:
    """``mon,tue,...`` (case-insensitive, three-letter names) -> weekday numbers
    (0 = Monday). "" means every day (the empty set)."""
    days: set[int] = set()
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in WEEKDAYS:
            raise ResponderRuleError(f"unknown weekday {part.strip()!r} (use "
                                     f"{','.join(WEEKDAYS)})")
        days.add(WEEKDAYS.index(name))
    return frozenset(days)


def weekday_names(days: Iterable[int]) -> str:
    return ",".join(WEEKDAYS[d] for d in sorted(days))


_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _check_domain(domain: str, entry: str) -> str:
    d = domain.lower().rstrip(".")
    try:
        d = d.encode("idna").decode("ascii") if not d.isascii() else d
    except UnicodeError as exc:
        raise ResponderRuleError(f"exclusion {entry!r}: {domain!r} is not a domain") from exc
    labels = d.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ResponderRuleError(f"exclusion {entry!r}: {domain!r} is not a domain")
    return d


def parse_exclusions(items: Sequence[str]) -> tuple[str, ...]:
    """Validate exclusions: ``name@domain`` or ``@domain``; returned lowercase,
    deduplicated, in order. Anything else is refused naming the entry."""
    out: dict[str, None] = {}
    for raw in items:
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith("@"):
            out["@" + _check_domain(entry[1:], entry)] = None
            continue
        key = None if any(c in entry for c in '<> \t"') else address_key(entry)
        if key is None or entry.count("@") != 1:
            raise ResponderRuleError(f"exclusion {entry!r} is neither an address "
                                     "(name@domain) nor a domain (@domain)")
        local, _, domain = key.rpartition("@")
        out[f"{local}@{_check_domain(domain, entry)}"] = None
    return tuple(out)


def check_schedule(starts_at: float | None, ends_at: float | None) -> None:
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise ResponderRuleError("the end must be after the start")


def parse_when(text: str, tz_name: str) -> float:
    """An ISO 8601 date or date-time; without an offset it is read in ``tz_name``."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ResponderRuleError(f"{text!r} is not an ISO 8601 date-time (e.g. "
                                 "2026-12-24T17:00 or 2026-12-24T17:00+01:00)") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone(tz_name))
    return when.timestamp()


def show_when(ts: float | None, tz_name: str) -> str:
    if ts is None:
        return "-"
    try:
        tz = zone(tz_name)
    except ResponderRuleError:
        tz = ZoneInfo("UTC")
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="minutes")
