"""``mailstack autoresponder ...``: out-of-office responders of an address
(docs/behaviour.md §7, §10).

Every option is validated before anything is written (an unknown weekday, an end not
after the start, an unknown time zone, a malformed exclusion, a From the address may
not send as, an unreadable or empty body file): the error names the problem and
nothing is stored. Dates without an offset are read in the responder's time zone
(``--tz``, default UTC).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..autoreplies import from_allowed
from ..policy.autoresponder import (
    ResponderRuleError,
    check_schedule,
    parse_exclusions,
    parse_weekdays,
    parse_when,
    show_when,
    weekday_names,
    zone,
)
from ..policy.relay import address_key
from ..store import Address, AutoResponder, Store
from .common import CliError, Ctx, Parsers, with_store

MAX_NAME = 128
MAX_SUBJECT = 200


async def _address(store: Store, address: str) -> Address:
    found = await store.get_address(address)
    if found is None:
        raise CliError(f"no address {address} is hosted here")
    if found.kind == "no-reply":
        raise CliError(f"{found.email} is a no-reply address: it receives no mail to "
                       "answer")
    return found


async def _responder(store: Store, addr: Address, name: str) -> AutoResponder:
    found = await store.get_autoresponder(addr.id, name)
    if found is None:
        raise CliError(f"{addr.email} has no responder named {name!r} (see "
                       f"`mailstack autoresponder list {addr.email}`)")
    return found


def _read_text(path: str, what: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read the {what} file {path}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"the {what} file {path} is not UTF-8 text (byte {exc.start + 1})"
                       ) from exc
    if not text.strip():
        raise CliError(f"the {what} file {path} is empty")
    return text


def _check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise CliError(f"a responder name is 1 to {MAX_NAME} printable characters")
    return name


def _check_subject(subject: str) -> str:
    if len(subject) > MAX_SUBJECT or not subject.isprintable():
        raise CliError(f"the subject must be one line of at most {MAX_SUBJECT} printable "
                       "characters")
    return subject


async def _fields(store: Store, addr: Address, args: argparse.Namespace,
                  current: AutoResponder | None) -> dict[str, Any]:
    """The responder fields the options give, validated against each other and the
    current values (``edit``); raises ``CliError`` before anything is stored."""
    out: dict[str, Any] = {}
    try:
        tz = current.timezone if current else "UTC"
        if args.tz is not None:
            zone(args.tz)
            tz = out["timezone"] = args.tz
        if args.subject is not None:
            out["subject"] = _check_subject(args.subject)
        if args.body_file is not None:
            out["body"] = _read_text(args.body_file, "body")
        if getattr(args, "no_html", False):
            out["html"] = None
        elif args.html_file is not None:
            out["html"] = _read_text(args.html_file, "HTML")
        if args.start is not None:
            out["starts_at"] = parse_when(args.start, tz) if args.start else None
        if args.end is not None:
            out["ends_at"] = parse_when(args.end, tz) if args.end else None
        check_schedule(out.get("starts_at", current.starts_at if current else None),
                       out.get("ends_at", current.ends_at if current else None))
        if args.days is not None:
            out["weekdays"] = parse_weekdays(args.days)
        if args.exclude is not None:
            out["exclusions"] = parse_exclusions(args.exclude.split(","))
    except ResponderRuleError as exc:
        raise CliError(str(exc)) from exc
    if args.from_address is not None:
        if not args.from_address:
            out["from_address"] = None
        else:
            key = address_key(args.from_address)
            if key is None:
                raise CliError(f"--from {args.from_address!r} is not an address")
            if not await from_allowed(store, addr.email, args.from_address):
                raise CliError(f"{addr.email} may not send as {args.from_address} (only "
                               "itself, its aliases and addresses granted to it with "
                               "'send')")
            out["from_address"] = args.from_address.strip()
    return out


def _summary(r: AutoResponder) -> str:
    when = []
    if r.starts_at is not None or r.ends_at is not None:
        when.append(f"{show_when(r.starts_at, r.timezone)} .. "
                    f"{show_when(r.ends_at, r.timezone)}")
    if r.weekdays:
        when.append(weekday_names(r.weekdays))
    if when:
        when.append(r.timezone)
    return " ".join(when) or "always"


# --- handlers -----------------------------------------------------------------------


@with_store
async def add(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await _address(store, args.address)
    name = _check_name(args.name)
    if await store.get_autoresponder(addr.id, name) is not None:
        raise CliError(f"{addr.email} already has a responder named {name!r} (use edit)")
    fields = await _fields(store, addr, args, None)
    subject, body = fields.pop("subject"), fields.pop("body")
    r = await store.add_autoresponder(addr.id, name, subject=subject, body=body, **fields)
    ctx.print(f"responder {r.name!r} saved for {addr.email} (inactive; "
              f"`mailstack autoresponder activate {addr.email} {r.name}`)"
              if not args.activate else f"responder {r.name!r} saved for {addr.email}")
    if args.activate:
        await store.activate_autoresponder(addr.id, name)
        ctx.print(f"responder {name!r} is now the active one for {addr.email}")
    return 0


@with_store
async def edit(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await _address(store, args.address)
    current = await _responder(store, addr, args.name)
    fields = await _fields(store, addr, args, current)
    if not fields:
        raise CliError("nothing to change: give at least one option (see --help)")
    await store.update_autoresponder(addr.id, current.name, **fields)
    ctx.print(f"responder {current.name!r} of {addr.email} updated")
    return 0


@with_store
async def list_(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await _address(store, args.address)
    responders = await store.list_autoresponders(addr.id)
    if not responders:
        ctx.warn(f"{addr.email} has no responders; add one with `mailstack autoresponder "
                 f"add {addr.email} NAME --subject ... --body-file ...`")
    for r in responders:
        ctx.print(f"{r.name}\t{'active' if r.active else 'inactive'}\t{_summary(r)}\t"
                  f"{r.subject or '(Auto: original subject)'}")
    return 0


@with_store
async def show(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await _address(store, args.address)
    r = await _responder(store, addr, args.name)
    throttle = await store.autoreply_throttle(r.id)
    ctx.print(f"address:    {addr.email}")
    ctx.print(f"name:       {r.name}")
    ctx.print(f"active:     {'yes' if r.active else 'no'}")
    ctx.print(f"subject:    {r.subject or '(Auto: <original subject>)'}")
    ctx.print(f"from:       {r.from_address or addr.email}")
    ctx.print(f"start:      {show_when(r.starts_at, r.timezone)}")
    ctx.print(f"end:        {show_when(r.ends_at, r.timezone)}")
    ctx.print(f"weekdays:   {weekday_names(r.weekdays) or 'every day'}")
    ctx.print(f"time zone:  {r.timezone}")
    ctx.print(f"exclusions: {', '.join(r.exclusions) or '-'}")
    ctx.print(f"html:       {'yes' if r.html else 'no'}")
    ctx.print(f"answered:   {len(throttle)} sender(s) in the throttle records")
    ctx.print("")
    ctx.print(r.body.rstrip("\n"))
    return 0


@with_store
async def activate(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await _address(store, args.address)
    r = await _responder(store, addr, args.name)
    await store.activate_autoresponder(addr.id, r.name)
    ctx.print(f"responder {r.name!r} is now the active one for {addr.email}")
    return 0


@with_store
async def deactivate(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await _address(store, args.address)
    if args.name is not None:
        await _responder(store, addr, args.name)
    n = await store.deactivate_autoresponder(addr.id, args.name)
    if n:
        ctx.print(f"{addr.email}: no responder active")
    elif args.name is not None:
        ctx.print(f"{addr.email}: {args.name!r} was not the active responder; nothing "
                  "changed")
    else:
        ctx.print(f"{addr.email}: nothing was active")
    return 0


@with_store
async def remove(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await _address(store, args.address)
    r = await _responder(store, addr, args.name)
    await store.remove_autoresponder(addr.id, r.name)
    ctx.print(f"responder {r.name!r} of {addr.email} removed")
    return 0


@with_store
async def reset(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await _address(store, args.address)
    await store.reset_autoreply_throttle(addr.id)
    ctx.print(f"{addr.email}: every sender may get one reply again")
    return 0


def _options(sp: argparse.ArgumentParser, *, adding: bool) -> None:
    sp.add_argument("--subject", required=adding, metavar="S",
                    help="subject of the reply ('' : 'Auto: <original subject>')")
    sp.add_argument("--body-file", required=adding, metavar="FILE",
                    help="UTF-8 text of the reply ('-': standard input)")
    sp.add_argument("--html-file", metavar="FILE", help="optional HTML alternative")
    if not adding:
        sp.add_argument("--no-html", action="store_true", help="drop the HTML alternative")
    sp.add_argument("--start", metavar="ISO", help="answer from this date-time on "
                    "(e.g. 2026-12-24T17:00, in --tz unless it has an offset)"
                    + ("; '' clears it" if not adding else ""))
    sp.add_argument("--end", metavar="ISO", help="answer until this date-time (exclusive)"
                    + ("; '' clears it" if not adding else ""))
    sp.add_argument("--days", metavar="mon,tue,...", help="answer only on these weekdays "
                    "(in --tz)" + ("; '' means every day" if not adding else ""))
    sp.add_argument("--tz", metavar="ZONE", help="IANA time zone of the schedule "
                    "(default UTC), e.g. Europe/Zurich"
                    + ("; saved start/end times stay the same instants" if not adding
                       else ""))
    sp.add_argument("--from", dest="from_address", metavar="ADDR",
                    help="alternate From: an address this one may send as"
                    + ("; '' : the address itself" if not adding else ""))
    sp.add_argument("--exclude", metavar="a@b,@domain", help="senders never answered: "
                    "addresses and whole domains (@domain; subdomains only with "
                    "autoresponder.exclude_subdomains)"
                    + ("; replaces the list, '' clears it" if not adding else ""))


def register(p: Parsers) -> None:
    grp = p.group("autoresponder", "Out-of-office replies of an address (several saved, "
                  "at most one active; one reply per sender per week).")
    sp = p.cmd(grp, "add", add, "Save a responder for an address.")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", metavar="NAME")
    _options(sp, adding=True)
    sp.add_argument("--activate", action="store_true",
                    help="also make it the active one")
    sp = p.cmd(grp, "edit", edit, "Change a saved responder (only the options given).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", metavar="NAME")
    _options(sp, adding=False)
    sp = p.cmd(grp, "list", list_, "List an address's responders.")
    sp.add_argument("address", metavar="ADDRESS")
    sp = p.cmd(grp, "show", show, "Show one responder in full.")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", metavar="NAME")
    sp = p.cmd(grp, "activate", activate,
               "Make a responder the active one (the others are deactivated).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", metavar="NAME")
    sp = p.cmd(grp, "deactivate", deactivate, "Stop answering (NAME: only if it is the "
               "active one).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", nargs="?", metavar="NAME")
    sp = p.cmd(grp, "remove", remove, "Delete a saved responder.")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", metavar="NAME")
    sp = p.cmd(grp, "reset", reset, "Reset the throttle: every sender may get one reply "
               "again.")
    sp.add_argument("address", metavar="ADDRESS")
