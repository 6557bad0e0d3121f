"""``mailstack backup DIR`` and ``mailstack restore DIR`` (docs/behaviour.md §10).

Backup runs while the server runs: the SQLite database is copied with the online
backup API and every message file it refers to is copied next to it (the work is in
``mailstack.store.backup``). With PostgreSQL, ``pg_dump`` is the tool: the command says
so and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from ..store import backup as bk
from .common import CliError, Ctx, Parsers


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def cmd_backup(ctx: Ctx, args: argparse.Namespace) -> int:
    s = ctx.settings
    target = Path(args.dir).expanduser().resolve()
    try:
        summary = asyncio.run(asyncio.to_thread(bk.backup, s.database_url, s.data_dir,
                                                target))
    except bk.BackupError as exc:
        raise CliError(str(exc)) from exc
    ctx.print(f"backup in {target}: database (schema version {summary.schema_version}, "
              f"{summary.messages} messages, {summary.queued} queued deliveries) and "
              f"{summary.blobs} message files ({_size(summary.blob_bytes)})")
    return 0


def cmd_restore(ctx: Ctx, args: argparse.Namespace) -> int:
    s = ctx.settings
    source = Path(args.dir).expanduser().resolve()
    try:
        summary = asyncio.run(asyncio.to_thread(bk.restore, source, s.database_url,
                                                s.data_dir, force=args.force))
    except bk.BackupError as exc:
        raise CliError(str(exc)) from exc
    ctx.print(f"restored {source} into {s.data_dir}: {summary.messages} messages, "
              f"{summary.queued} queued deliveries, {summary.blobs} message files; "
              "migrations run when the server starts (or `mailstack init`)")
    return 0


def register(p: Parsers) -> None:
    sp = p.cmd(p.sub, "backup", cmd_backup,
               "Copy the SQLite database (a consistent snapshot, while the server runs) "
               "and the message files it refers to into DIR.")
    sp.add_argument("dir", metavar="DIR", help="a new or empty directory")
    sp = p.cmd(p.sub, "restore", cmd_restore,
               "Put a backup made by `mailstack backup` into the configured data "
               "directory (stop the server first).")
    sp.add_argument("dir", metavar="DIR", help="the backup directory")
    sp.add_argument("--force", action="store_true",
                    help="replace the database of a data directory that already has one")
