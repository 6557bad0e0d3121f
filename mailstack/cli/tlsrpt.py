"""``mailstack tlsrpt list ADDRESS``: the TLS reports (RFC 8460) other servers sent to
one of our addresses, the ``rua`` of the ``_smtp._tls`` record ``mailstack dns`` prints,
as a readable summary (docs/behaviour.md §6, §10).

Every message in the address's folders (or ``--folder``) that carries a report (a
``application/tlsrpt+gzip`` or ``+json`` part, RFC 8460 §5.3) is listed with the
period, the reporting organization and, per policy, the session counts and failures.
A report that cannot be read is named with the reason; the others are still listed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

from ..outbound.tlsrpt import ReportError, reports_in_message, summarize
from ..store import Store
from .common import CliError, Ctx, Parsers, with_store

MAX_MESSAGE = 32 * 1024 * 1024  # a report message is small; bigger ones are skipped


@with_store
async def tlsrpt_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    address = await store.get_address(args.address)
    if address is None:
        raise CliError(f"no address {args.address} here (see `mailstack address list`)")
    folders = await store.list_folders(address.id)
    if args.folder:
        folders = [f for f in folders if f.name.lower() == args.folder.lower()]
        if not folders:
            raise CliError(f"{args.address} has no folder {args.folder!r}")
    shown = 0
    for folder in folders:
        for msg in await store.list_messages(folder.id):
            if msg.size > MAX_MESSAGE:
                continue
            raw = await store.message_bytes(msg)
            if b"tlsrpt" not in raw[:MAX_MESSAGE].lower():
                continue  # cheap filter before a MIME parse
            when = dt.datetime.fromtimestamp(msg.internal_date, dt.UTC).strftime(
                "%Y-%m-%d %H:%M")
            where = f"{folder.name} UID {msg.uid} (received {when}Z)"
            try:
                reports = await asyncio.to_thread(reports_in_message, raw)
            except ReportError as exc:
                ctx.print(f"{where}: unreadable report: {exc}")
                shown += 1
                continue
            for report in reports:
                ctx.print(f"{where}:")
                for line in summarize(report):
                    ctx.print(f"  {line}")
                shown += 1
    if not shown:
        ctx.print(f"no TLS reports in {args.address}")
    return 0


def register(p: Parsers) -> None:
    group = p.group("tlsrpt", "TLS reports (RFC 8460) received from other servers.")
    sp = p.cmd(group, "list", tlsrpt_list,
               "Summarize the TLS reports in an address's mailbox (the rua address of "
               "the _smtp._tls record).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--folder", metavar="NAME", help="only this folder (default: all)")
