"""``mailstack address import-csv``: bulk creation of addresses (docs/behaviour.md §3).

Each row is ``address,password[,name]``; a first row whose first cell is ``address``
is a header and skipped; blank lines are skipped. Every row is validated first,
against the rules, the file itself and the store:

- the address (local-part rules: the error names the character and its position),
- the password (present, long enough; never echoed),
- duplicates within the file (case-insensitive, docs/behaviour.md §3),
- already existing as an address or alias, unknown domain,
- the domain's plan cap (``max_addresses``), counting earlier valid rows.

Every bad row is reported with its line number. Unless ``--valid-only``, nothing is
created when any row is bad. Passwords are hashed in a small thread pool (Argon2 is
CPU- and memory-hungry: at most ``_HASH_WORKERS`` at a time). The valid rows are then
created in ONE store transaction (``Store.add_addresses``): should that fail half-way
(another process raced us, the database failed, the process was killed), nothing of
this run is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..policy.addresses import AddressRuleError, address_key, parse_new_address
from ..store import Address, NewAddressRecord, Store, StoreError
from .common import CliError, Ctx, check_password, read_csv_file, with_store

_HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Row:
    line: int
    local_part: str
    domain: str
    password: str
    name: str

    @property
    def email(self) -> str:
        return f"{self.local_part}@{self.domain}"


@dataclass(frozen=True)
class BadRow:
    line: int
    problem: str


def read_rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) for each non-blank row; the line is where the row starts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    start = 1
    for cells in reader:
        if cells and any(c.strip() for c in cells):
            rows.append((start, cells))
        start = reader.line_num + 1
    if rows and rows[0][1][0].strip().lower() in ("address", "email", "e-mail"):
        rows = rows[1:]
    return rows


async def validate(ctx: Ctx, store: Store, rows: list[tuple[int, list[str]]]
                   ) -> tuple[list[Row], list[BadRow]]:
    good: list[Row] = []
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    domains: dict[str, tuple[int, int] | None] = {}  # name -> (existing count, cap)
    for line, cells in rows:
        if len(cells) not in (2, 3):
            bad.append(BadRow(line, f"expected 2 or 3 columns (address,password[,name]), "
                                    f"found {len(cells)}"))
            continue
        raw_address = cells[0].strip()
        password = cells[1]
        name = cells[2].strip() if len(cells) == 3 else ""
        try:
            new = parse_new_address(raw_address)
        except AddressRuleError as exc:
            bad.append(BadRow(line, f"{raw_address!r}: {exc}"))
            continue
        key = address_key(new.email)
        if key in first_line:
            bad.append(BadRow(line, f"{new.email} is a duplicate of line {first_line[key]}"))
            continue
        first_line[key] = line
        if not password:
            bad.append(BadRow(line, f"{new.email}: the password is missing"))
            continue
        problem = check_password(password)
        if problem:
            bad.append(BadRow(line, f"{new.email}: {problem}"))
            continue
        if new.domain not in domains:
            dom = await store.get_domain(new.domain)
            domains[new.domain] = None if dom is None else (
                len(await store.list_addresses(dom.name)),
                ctx.settings.plan(dom.plan).max_addresses)
        info = domains[new.domain]
        if info is None:
            bad.append(BadRow(line, f"{new.email}: domain {new.domain} is not hosted here"))
            continue
        if await store.get_address(new.email) or await store.get_alias(new.email):
            bad.append(BadRow(line, f"{new.email} already exists"))
            continue
        count, cap = info
        if count >= cap:
            bad.append(BadRow(line, f"{new.email}: domain {new.domain} would exceed its "
                                    f"plan's limit of {cap} addresses"))
            continue
        domains[new.domain] = (count + 1, cap)
        good.append(Row(line, new.local_part, new.domain, password, name))
    return good, bad


async def hash_all(ctx: Ctx, rows: list[Row]) -> list[str]:
    passwords = ctx.passwords()
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=_HASH_WORKERS,
                            thread_name_prefix="argon2") as pool:
        return list(await asyncio.gather(
            *(loop.run_in_executor(pool, passwords.hash_sync, r.password) for r in rows)))


async def create(ctx: Ctx, store: Store, rows: list[Row], hashes: list[str]) -> list[Address]:
    """Every row in ONE store transaction (addresses, folders, activity entries): a
    failure or a crash half-way leaves nothing of this run."""
    caps: dict[str, int] = {}
    for row in rows:
        dom = await store.get_domain(row.domain)
        if dom is not None:
            caps[dom.name] = ctx.settings.plan(dom.plan).max_addresses
    records = [NewAddressRecord(row.local_part, row.domain, pw_hash, row.name)
               for row, pw_hash in zip(rows, hashes, strict=True)]
    return await store.add_addresses(records, max_addresses=caps,
                                     activity_detail="import-csv")


@with_store
async def import_csv(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    text = await asyncio.to_thread(read_csv_file, args.file)
    rows = read_rows(text)
    if not rows:
        raise CliError(f"{args.file}: no rows (expected address,password[,name] per line)")
    good, bad = await validate(ctx, store, rows)
    for b in sorted(bad, key=lambda b: b.line):
        ctx.warn(f"{args.file}:{b.line}: {b.problem}")
    if bad and not args.valid_only:
        ctx.warn(f"{len(bad)} of {len(rows)} rows are bad; nothing was created "
                 "(fix them, or pass --valid-only to create the valid rows)")
        return 1
    if not good:
        ctx.warn("no valid rows; nothing was created")
        return 1
    hashes = await hash_all(ctx, good)
    try:
        created = await create(ctx, store, good, hashes)
    except StoreError as exc:  # e.g. another process created one of them meanwhile
        raise CliError(f"{exc}; nothing was created (the rows are created in one "
                       "transaction)") from exc
    for addr in created:
        ctx.print(f"created {addr.email}")
    skipped = len(rows) - len(created)
    ctx.print(f"{len(created)} addresses created"
              + (f", {skipped} bad rows skipped" if skipped else ""))
    return 0
