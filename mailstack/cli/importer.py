"""``mailstack import``: move a mailbox in from another provider over IMAP
(docs/behaviour.md §9). The commands only record jobs; ``mailstack serve`` (any node)
runs them in the background, so they go on after the terminal closes.

The source password comes from ``--password-stdin`` (or a prompt on a terminal), is
stored encrypted (``importer.key`` in the data dir) and deleted when the job ends.
CSV files (``import csv``) are checked row by row first: every bad row is reported with
its line number and no job is recorded unless all rows are good.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import ipaddress
import re
import time

from ..importer import secret
from ..importer.source import TLS_MODES
from ..policy.addresses import address_key
from ..store import ImportJob, NewImportJob, Store
from .common import CliError, Ctx, Parsers, read_csv_file, with_store

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
DEFAULT_PORTS = {"implicit": 993, "starttls": 143, "none": 143}


def check_host(host: str) -> str:
    """A host name or an IP address literal, lowercased."""
    host = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not host or len(host) > 253 or not all(_HOST_LABEL.match(x) for x in host.split(".")):
        raise CliError(f"{host!r} is not a host name or IP address")
    return host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_source(host: str, port: str | int | None, tls: str | None) -> tuple[str, int, str]:
    h = check_host(host)
    mode = (tls or "implicit").strip().lower()
    if mode not in TLS_MODES:
        raise CliError(f"TLS mode {tls!r}: must be one of {', '.join(TLS_MODES)}")
    if mode == "none" and not is_loopback(h):
        raise CliError(f"TLS mode 'none' is only allowed for a source on this machine "
                       f"(loopback), not {h}: a password must not cross a network in clear")
    if port in (None, ""):
        number = DEFAULT_PORTS[mode]
    else:
        try:
            number = int(str(port).strip())
        except ValueError:
            raise CliError(f"port {port!r} is not a number") from None
        if not 1 <= number <= 65535:
            raise CliError(f"port {number} is out of range (1-65535)")
    return h, number, mode


async def _target(store: Store, address: str) -> int:
    addr = await store.get_address(address)
    if addr is None:
        raise CliError(f"no address {address} is hosted here")
    if addr.kind != "mailbox":
        raise CliError(f"{addr.email} is a {addr.kind} address and has no mailbox to import "
                       "into")
    return addr.id


def _source_password(ctx: Ctx, args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = ctx.stdin.readline().rstrip("\r\n")
    elif ctx.stdin.isatty():
        password = getpass.getpass(f"Password of {args.user} at {args.host}: ")
    else:
        raise CliError("no source password given: pass it on standard input with "
                       "--password-stdin (never on the command line)")
    if not password:
        raise CliError("the source password is empty")
    return password


@with_store
async def import_start(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    host, port, tls = check_source(args.host, args.port, args.tls)
    address_id = await _target(store, args.address)
    if not args.user.strip():
        raise CliError("--user must not be empty")
    password = _source_password(ctx, args)
    folders = tuple(f.strip() for f in (args.folders or "").split(",") if f.strip())
    (job_id,) = await store.create_import_jobs([NewImportJob(
        address_id, host, port, tls, args.user.strip(),
        secret.seal(ctx.settings.data_dir, password), folders)])
    ctx.print(f"import {job_id} queued: {args.user} at {host}:{port} ({tls}) -> "
              f"{args.address}")
    ctx.print(f"the server runs it in the background; `mailstack import show {job_id}` "
              "shows its progress")
    return 0


@with_store
async def import_csv(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    text = read_csv_file(args.file)
    jobs: list[NewImportJob] = []
    errors: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or (line_no == 1 and cells and cells[0].lower() == "target"):
            continue
        if len(cells) < 4 or len(cells) > 6:
            errors.append(f"line {line_no}: expected target,host,user,password[,port,tls] "
                          f"({len(cells)} fields)")
            continue
        target, host, user, password = cells[:4]
        try:
            h, port, tls = check_source(host, cells[4] if len(cells) > 4 else None,
                                        cells[5] if len(cells) > 5 else None)
            address_id = await _target(store, target)
            if not user:
                raise CliError("the user is empty")
            if not password:
                raise CliError("the password is empty")
            key = (address_key(target), h, user.lower())
            if key in seen:
                raise CliError(f"the same import ({user} at {h} -> {target}) is already in "
                               "the file")
            seen.add(key)
        except CliError as exc:
            errors.append(f"line {line_no}: {exc}")
            continue
        jobs.append(NewImportJob(address_id, h, port, tls, user,
                                 secret.seal(ctx.settings.data_dir, password)))
    if errors:
        for e in errors:
            ctx.warn(e)
        raise CliError(f"{len(errors)} bad row(s); no import was started")
    if not jobs:
        raise CliError("the file holds no import rows")
    ids = await store.create_import_jobs(jobs)
    ctx.print(f"{len(ids)} import(s) queued: {', '.join(map(str, ids))}")
    return 0


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


@with_store
async def import_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    jobs = await store.list_import_jobs()
    ctx.print("id\tstate\ttarget\tsource\tcopied/total\tskipped\tstarted\terror")
    for j in jobs:
        ctx.print("\t".join([str(j.id), j.state, j.address, f"{j.username}@{j.host}",
                             f"{j.copied}/{j.total}", str(j.skipped), _when(j.started_at),
                             j.last_error[:80] or "-"]))
    return 0


def render_job(job: ImportJob, now: float) -> list[str]:
    elapsed = ((job.finished_at or now) - job.started_at) if job.started_at else 0.0
    rate = job.copied / elapsed if elapsed > 0 else 0.0
    done_folders = sum(1 for p in job.progress if p.done)
    lines = [f"import {job.id}: {job.state}",
             f"  source:  {job.username} at {job.host}:{job.port} ({job.tls})",
             f"  target:  {job.address}",
             f"  folders: {done_folders} of {len(job.progress)} done",
             f"  messages: {job.copied} copied of {job.total} at the source, "
             f"{job.skipped} skipped",
             f"  data:    {job.bytes / 1_048_576:.1f} MiB, {rate:.1f} messages/s",
             f"  created {_when(job.created_at)}, started {_when(job.started_at)}, "
             f"ended {_when(job.finished_at)}"]
    if job.last_error:
        lines.append(f"  last error: {job.last_error}")
    for p in job.progress:
        mark = "done" if p.done else "..."
        lines.append(f"  {p.source} -> {p.target}: {p.copied}/{p.total}"
                     + (f", {p.skipped} skipped" if p.skipped else "") + f" [{mark}]")
    for folder, uid, why in job.skipped_detail[:20]:
        lines.append(f"  skipped: {folder} UID {uid}: {why}")
    return lines


@with_store
async def import_show(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    job = await store.get_import_job(args.id)
    if job is None:
        raise CliError(f"no import job {args.id}")
    if ctx.out.isatty():
        from rich.console import Console
        from rich.progress_bar import ProgressBar

        console = Console(file=ctx.out)
        console.print(ProgressBar(total=max(job.total, 1), completed=job.copied + job.skipped,
                                  width=50))
    for line in render_job(job, time.time()):
        ctx.print(line)
    return 0


@with_store
async def import_cancel(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    job = await store.get_import_job(args.id)
    if job is None:
        raise CliError(f"no import job {args.id}")
    if not await store.cancel_import_job(args.id):
        raise CliError(f"import {args.id} has already ended ({job.state})")
    ctx.print(f"import {args.id} cancelled (messages copied so far stay)")
    return 0


def register(p: Parsers) -> None:
    imp = p.group("import", "Move mailboxes in from another provider over IMAP (run by "
                  "`mailstack serve` in the background).")
    sp = p.cmd(imp, "start", import_start, "Import the whole mailbox of one source account "
               "into ADDRESS.")
    sp.add_argument("address", metavar="ADDRESS", help="the hosted address to fill")
    sp.add_argument("--host", required=True, help="the source IMAP server")
    sp.add_argument("--port", help="default 993 (implicit TLS) or 143")
    sp.add_argument("--tls", choices=TLS_MODES, default="implicit",
                    help="implicit (default), starttls, or none (loopback only)")
    sp.add_argument("--user", required=True, help="the user name at the source")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the source password as one line from standard input")
    sp.add_argument("--folders", metavar="LIST",
                    help="comma list of source folders to copy (with their children); "
                         "default: all")
    sp = p.cmd(imp, "csv", import_csv, "Queue one import per row of a CSV file: "
               "target,host,user,password[,port,tls].")
    sp.add_argument("file", metavar="FILE", help="CSV file ('-' for standard input)")
    p.cmd(imp, "list", import_list, "List import jobs with their state and counts.")
    sp = p.cmd(imp, "show", import_show, "Progress of one import job, folder by folder.")
    sp.add_argument("id", type=int, metavar="ID")
    sp = p.cmd(imp, "cancel", import_cancel, "Cancel an import job (what was copied stays).")
    sp.add_argument("id", type=int, metavar="ID")
