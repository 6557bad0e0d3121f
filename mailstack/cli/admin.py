"""Operator sub-commands over the store: domains, addresses, aliases, forwarding,
app passwords, the activity log and client settings (docs/behaviour.md §3, §10, §11).

Every handler validates its input with ``mailstack.policy.addresses`` before it
touches the store, so a refused address is reported with the offending character and
its position, and nothing is written. Store refusals (``StoreError``) carry their own
clear text and are printed by ``cli.main``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from ..config import dev_settings
from ..policy.addresses import AddressRuleError, address_key, check_domain, parse_new_address
from ..policy.envelope import AddressError, parse_mailbox
from ..policy.passwords import new_app_password
from ..store import NotFound, Store
from .common import (
    CliError,
    Ctx,
    Parsers,
    check_login,
    need_address,
    need_user,
    read_password,
    with_store,
)

# --- helpers -------------------------------------------------------------------------


def check_target(target: str) -> str:
    """An alias or forwarding target, local or remote (docs/behaviour.md §3): exactly what
    the SMTP router accepts when it expands the alias or forwarding (RFC 5321 §4.1.2
    syntax via ``parse_mailbox``), minus address literals, which are never a destination.
    Returns the canonical spelling (lowercase A-label domain)."""
    text = target.strip()
    try:
        addr = parse_mailbox(text, smtputf8=True)
    except AddressError as exc:
        raise CliError(f"target {target!r} is not a deliverable address: {exc.text}") from exc
    if addr.is_literal:
        raise CliError(f"target {target!r}: an address literal is never a destination; "
                       "use a domain name")
    try:
        check_domain(addr.domain)
    except AddressRuleError as exc:
        raise CliError(f"target {target!r}: {exc}") from exc
    return str(addr)


async def check_targets(store: Store, targets: list[str], *, not_self: str) -> list[str]:
    """Validate targets; a target on a hosted domain must exist here."""
    out: list[str] = []
    seen: set[str] = set()
    for raw in targets:
        target = check_target(raw)
        key = address_key(target)
        if key == address_key(not_self):
            raise CliError(f"{target} cannot point to itself")
        if key in seen:
            continue
        seen.add(key)
        domain = target.rpartition("@")[2]
        if await store.get_domain(domain) is not None and (
                await store.get_address(target) is None
                and await store.get_alias(target) is None):
            raise CliError(f"target {target} is on hosted domain {domain} but does not "
                           "exist; create it first")
        out.append(target)
    return out


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --- domains -------------------------------------------------------------------------


@with_store
async def domain_add(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    name = check_domain(args.domain)
    plan = args.plan or ctx.settings.smtp.default_plan
    if plan not in ctx.settings.plans:
        raise CliError(f"no plan {plan!r} (plans: {', '.join(ctx.settings.plans)})")
    dom = await store.add_domain(name, plan)
    ctx.print(f"domain {dom.name} added (plan {dom.plan})")
    return 0


@with_store
async def domain_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    domains = await store.list_domains()
    actions = await store.dmarc_actions([d.name for d in domains])
    if not domains:
        ctx.warn("no domains; add one with `mailstack domain add DOMAIN`")
    for d in domains:
        n = len(await store.list_addresses(d.name))
        cap = ctx.settings.plan(d.plan).max_addresses
        ctx.print(f"{d.name}\tplan={d.plan}\taddresses={n}/{cap}"
                  f"\tdmarc={actions.get(d.name, 'default')}")
    return 0


@with_store
async def domain_remove(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    name = check_domain(args.domain)
    await store.remove_domain(name)
    ctx.print(f"domain {name} removed")
    return 0


@with_store
async def domain_dmarc_action(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    """docs/behaviour.md §5 "sender authentication": what a DMARC failure of mail to
    this domain does; ``default`` goes back to [sender_auth] dmarc_action."""
    name = check_domain(args.domain)
    action = None if args.action == "default" else args.action
    try:
        await store.set_dmarc_action(name, action)
    except NotFound as exc:
        raise CliError(f"{exc}; add it first with `mailstack domain add {name}`") from exc
    if action is None:
        ctx.print(f"domain {name}: DMARC action is the server default "
                  f"({ctx.settings.sender_auth.dmarc_action})")
    else:
        ctx.print(f"domain {name}: DMARC action {action}")
    return 0


# --- addresses -----------------------------------------------------------------------


@with_store
async def address_add(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    new = parse_new_address(args.address)
    dom = await store.get_domain(new.domain)
    if dom is None:
        raise CliError(f"domain {new.domain} is not hosted here; add it first with "
                       f"`mailstack domain add {new.domain}`")
    password = read_password(ctx, args, required=False)
    pw_hash = await ctx.passwords().hash(password) if password is not None else None
    addr = await store.add_address(new.local_part, dom.name, kind=args.kind,
                                   password_hash=pw_hash, display_name=args.name,
                                   max_addresses=ctx.settings.plan(dom.plan).max_addresses)
    await store.log_activity("address_created", address=addr.email, protocol="cli",
                             detail=addr.kind)
    ctx.print(f"address {addr.email} added ({addr.kind})")
    if pw_hash is None:
        ctx.warn(f"note: {addr.email} has no password and cannot log in until "
                 "`mailstack address passwd ADDRESS --password-stdin`")
    return 0


@with_store
async def address_passwd(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await need_address(store, args.address)
    password = read_password(ctx, args, required=True)
    assert password is not None
    pw_hash = await ctx.passwords().hash(password)
    # docs/behaviour.md §2: a unified user's password changes with it
    unified = await store.set_address_password_unified(addr.id, pw_hash)
    await store.log_activity("password_changed", address=addr.email, protocol="cli")
    ctx.print(f"password of {addr.email} changed; open sessions are cut off"
              + ("; the unified user's password too" if unified is not None else ""))
    return 0


@with_store
async def address_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    domain = None
    if args.domain:
        domain = check_domain(args.domain)
        if await store.get_domain(domain) is None:
            raise CliError(f"domain {domain} is not hosted here")
    for a in await store.list_addresses(domain):
        extra = []
        if a.display_name:
            extra.append(f"name={a.display_name!r}")
        if a.password_hash is None:
            extra.append("no-password")
        if a.forward_to:
            extra.append("forward=" + ",".join(a.forward_to)
                         + (" (keep copy)" if a.keep_copy else ""))
        ctx.print("\t".join([a.email, a.kind, *extra]))
    return 0


@with_store
async def address_remove(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await need_address(store, args.address)
    folders = await store.list_folders(addr.id)
    messages = 0
    for f in folders:
        messages += (await store.folder_status(f.id)).messages
    if not args.yes:
        raise CliError(f"not removed: removing {addr.email} destroys its {len(folders)} "
                       f"folders and {messages} messages for good; run again with --yes "
                       "to confirm", code=2)
    await store.remove_address(addr.id)
    await store.log_activity("address_removed", address=addr.email, protocol="cli",
                             detail=f"{len(folders)} folders, {messages} messages")
    # its files go now if old enough, the rest with the server's periodic collector
    await store.collect_garbage(ctx.settings.server.blob_gc_min_age_seconds)
    ctx.print(f"address {addr.email} removed ({len(folders)} folders, {messages} messages)")
    return 0


# --- aliases and forwarding ---------------------------------------------------------------


@with_store
async def alias_add(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    new = parse_new_address(args.alias)
    if await store.get_domain(new.domain) is None:
        raise CliError(f"domain {new.domain} is not hosted here; add it first")
    targets = await check_targets(store, args.targets, not_self=new.email)
    alias = await store.add_alias(new.local_part, new.domain, targets)
    ctx.print(f"alias {alias.local_part}@{alias.domain} -> {', '.join(alias.targets)}")
    return 0


@with_store
async def alias_remove(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    await store.remove_alias(args.alias)
    ctx.print(f"alias {args.alias} removed")
    return 0


@with_store
async def alias_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    domain = check_domain(args.domain) if args.domain else None
    for a in await store.list_aliases(domain):
        ctx.print(f"{a.local_part}@{a.domain}\t-> {', '.join(a.targets)}")
    return 0


@with_store
async def forward_set(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await need_address(store, args.address)
    targets = await check_targets(store, args.targets, not_self=addr.email)
    await store.set_forwarding(addr.id, targets, args.keep_copy)
    copy = "keeping a copy" if args.keep_copy else "without keeping a copy"
    ctx.print(f"{addr.email} forwards to {', '.join(targets)} ({copy})")
    return 0


@with_store
async def forward_clear(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await need_address(store, args.address)
    await store.set_forwarding(addr.id, [], True)
    ctx.print(f"{addr.email} no longer forwards")
    return 0


# --- app passwords -----------------------------------------------------------------------


@with_store
async def app_password_add(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await need_address(store, args.address)
    name = args.name.strip()
    if not name or len(name) > 64 or any(ord(c) < 0x20 for c in name):
        raise CliError("the app password name must be 1 to 64 printable characters")
    secret = new_app_password()  # the web pages' generator too
    await store.add_app_password(addr.id, name, await ctx.passwords().hash(secret))
    await store.log_activity("app_password_added", address=addr.email, protocol="cli",
                             detail=name)
    ctx.print(f"app password {name!r} for {addr.email} (shown once, now): {secret}")
    return 0


@with_store
async def app_password_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await need_address(store, args.address)
    for name, created, used in await store.list_app_passwords(addr.id):
        ctx.print(f"{name}\tcreated {when(created)}\tlast used {when(used)}")
    return 0


@with_store
async def app_password_revoke(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await need_address(store, args.address)
    try:
        await store.revoke_app_password(addr.id, args.name)
    except NotFound as exc:
        raise CliError(f"{addr.email}: {exc}") from exc
    await store.log_activity("app_password_revoked", address=addr.email, protocol="cli",
                             detail=args.name)
    ctx.print(f"app password {args.name!r} of {addr.email} revoked")
    return 0


# --- activity, client settings -------------------------------------------------------------


ACTIVITY_COLUMNS = ("when", "address", "client", "protocol", "event", "detail")


@with_store
async def activity(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    """The activity log, newest first: a header line and tab-separated rows, or one JSON
    array with ``--json``. An address that is not hosted, not a user's login and never
    logged is a mistake (a typo): "no such address", exit 1."""
    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    entries = await store.list_activity(args.address, limit=args.limit)
    if args.address and not entries and await store.get_address(args.address) is None \
            and await store.get_user_id(args.address) is None:
        raise CliError(f"no such address: {args.address} is not hosted here, is no "
                       "user's login and has no logged activity")
    if args.json:
        ctx.print(json.dumps([{
            "at": e.at, "when": when(e.at), "address": e.address, "client": e.client_ip,
            "protocol": e.protocol, "event": e.event, "detail": e.detail,
            "count": e.count}
            for e in entries], indent=2))
        return 0
    ctx.print("\t".join(ACTIVITY_COLUMNS))
    for e in entries:
        ctx.print("\t".join([when(e.at), e.address or "-", e.client_ip or "-",
                             e.protocol or "-", e.event,
                             (e.detail or "-") + (f" (x{e.count} this minute)"
                                                  if e.count > 1 else "")]))
    if not entries:
        ctx.warn("(no activity logged yet)")
    return 0


@with_store
async def client_settings(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    """What a client needs (docs/behaviour.md §11): IMAP 993 SSL/TLS, SMTP 465 SSL/TLS,
    POP3 995, with the ports actually in use: those a running server recorded in
    <data_dir>/listening.json, else the configured ones (+10000 with ``--dev``)."""
    from ..app import read_listening

    addr = await need_address(store, args.address)
    s = dev_settings(ctx.settings) if args.dev else ctx.settings
    running = read_listening(s)
    ports: dict[str, int] = {}
    host = s.client_hostname
    if running is not None:
        ports = {str(k): int(v) for k, v in running["ports"].items()}
        host = str(running.get("hostname") or host)
    ctx.print(f"Mail client settings for {addr.email}")
    ctx.print(f"  user name: {addr.email}  (the full address)")
    ctx.print("  password:  the address's password, or one of its app passwords")
    rows = (("imaps", "Incoming (IMAP, recommended)"),
            ("submissions", "Outgoing (SMTP, recommended)"),
            ("pop3s", "Incoming (POP3, alternative)"),
            ("imap", "Incoming (IMAP, alternative)"),
            ("submission", "Outgoing (SMTP, alternative)"))
    for name, label in rows:
        ls = getattr(s.listeners, name)
        if not ls.enabled or (running is not None and name not in ports):
            continue
        security = "SSL/TLS" if ls.tls == "implicit" else (
            "STARTTLS" if ls.tls == "starttls" else "none")
        port = ports.get(name, ls.port)
        ctx.print(f"  {label:30} server {host}  port {port}  security {security}")
    if running is not None:
        ctx.print(f"  (ports of the server running now, process {running['pid']})")
    if s.listeners.https.enabled:
        https = ports.get("https", s.listeners.https.port)
        base = f"https://{host}" + ("" if https == 443 else f":{https}")
        ctx.print(f"  automatic set-up: {base}/mobileconfig?address={addr.email} (Apple); "
                  "Thunderbird and Outlook find it by themselves")
    if s.cert_path.exists() and args.dev:
        ctx.print(f"  trust this certificate: {s.cert_path}")
    if addr.kind == "no-reply":
        ctx.print("  (a no-reply address sends only: it has no incoming mail)")
    return 0


# --- users and grants (docs/behaviour.md §2) ----------------------------------------------------

PERMISSIONS = ("read", "passwd", "autoresponder", "send")


def check_permissions(text: str) -> list[str]:
    perms = [p.strip().lower() for p in text.split(",") if p.strip()]
    unknown = [p for p in perms if p not in PERMISSIONS]
    if unknown or not perms:
        raise CliError(f"unknown permission {', '.join(unknown) or '(none)'}; "
                       f"choose from {', '.join(PERMISSIONS)}")
    return sorted(set(perms))


@with_store
async def user_add(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    login = check_login(args.login)
    password = read_password(ctx, args, required=True)
    assert password is not None
    await store.add_user(login, await ctx.passwords().hash(password))
    await store.log_activity("user_created", address=login, protocol="cli")
    ctx.print(f"user {login} added (its password is independent of any address's)")
    return 0


@with_store
async def user_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    for login, grants in await store.list_users():
        shown = "; ".join(f"{a} ({','.join(sorted(p))})" for a, p in grants) or "no grants"
        ctx.print(f"{login}\t{shown}")
    return 0


@with_store
async def user_grant(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    user_id = await need_user(store, check_login(args.login))
    addr = await need_address(store, args.address)
    perms = check_permissions(args.perm)
    await store.grant(user_id, addr.id, perms)
    await store.log_activity("grant", address=addr.email, protocol="cli",
                             detail=f"{args.login.lower()}: {','.join(perms)}")
    ctx.print(f"{args.login.lower()} may now {', '.join(perms)} on {addr.email}")
    return 0


@with_store
async def user_revoke(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    user_id = await need_user(store, check_login(args.login))
    addr = await need_address(store, args.address)
    try:
        await store.revoke_grant(user_id, addr.id)
    except NotFound as exc:
        raise CliError(f"{args.login.lower()} holds no grant on {addr.email}") from exc
    await store.log_activity("grant_revoked", address=addr.email, protocol="cli",
                             detail=args.login.lower())
    ctx.print(f"{args.login.lower()} no longer has access to {addr.email}")
    return 0


@with_store
async def gc(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    min_age = ctx.settings.server.blob_gc_min_age_seconds if args.min_age is None \
        else args.min_age
    if min_age < 60:  # a running server may hold younger blobs not yet committed
        raise CliError("--min-age must be at least 60 seconds")
    removed = await store.collect_garbage(min_age)
    ctx.print(f"{removed} unreferenced message files removed")
    return 0


def register(p: Parsers) -> None:
    from .csv_import import import_csv

    dom = p.group("domain", "Hosted domains.")
    sp = p.cmd(dom, "add", domain_add, "Host a new domain.")
    sp.add_argument("domain", metavar="DOMAIN")
    sp.add_argument("--plan", metavar="NAME", help="plan from the config's [plans] "
                    "(default: smtp.default_plan)")
    p.cmd(dom, "list", domain_list, "List hosted domains with plan and counts.")
    sp = p.cmd(dom, "remove", domain_remove,
             "Stop hosting a domain (it must hold no addresses or aliases).")
    sp.add_argument("domain", metavar="DOMAIN")
    sp = p.cmd(dom, "dmarc-action", domain_dmarc_action,
               "What a DMARC failure of mail to this domain does: reject (follow the "
               "sender's policy), quarantine (to Junk), mark (only the "
               "Authentication-Results), default (the server's [sender_auth] setting).")
    sp.add_argument("domain", metavar="DOMAIN")
    sp.add_argument("action", choices=("reject", "quarantine", "mark", "default"))

    adr = p.group("address", "Mail addresses (mailboxes, no-reply, catchall).")
    sp = p.cmd(adr, "add", address_add, "Create an address.")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--kind", choices=("mailbox", "no-reply", "catchall"), default="mailbox")
    sp.add_argument("--name", metavar="NAME", default="", help="display name")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password as one line from standard input (without it "
                         "you are prompted on a terminal; otherwise no password is set)")
    sp = p.cmd(adr, "passwd", address_passwd,
             "Set an address's password (open sessions are cut off).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password as one line from standard input")
    sp = p.cmd(adr, "list", address_list, "List addresses.")
    sp.add_argument("domain", nargs="?", metavar="DOMAIN")
    sp = p.cmd(adr, "remove", address_remove,
             "Delete an address and ALL its mail (needs --yes).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--yes", action="store_true",
                    help="confirm: the address's folders and messages are destroyed")
    sp = p.cmd(adr, "import-csv", import_csv,
             "Create addresses from a CSV file: address,password[,name] per line.")
    sp.add_argument("file", metavar="FILE", help="CSV file ('-' for standard input)")
    sp.add_argument("--valid-only", action="store_true",
                    help="create the valid rows even if some are bad (default: nothing "
                         "is created unless every row is valid)")

    ali = p.group("alias", "Aliases: an address that redirects to one or more others.")
    sp = p.cmd(ali, "add", alias_add, "Create an alias.")
    sp.add_argument("alias", metavar="ALIAS")
    sp.add_argument("targets", nargs="+", metavar="TARGET",
                    help="local or remote addresses")
    sp = p.cmd(ali, "remove", alias_remove, "Delete an alias.")
    sp.add_argument("alias", metavar="ALIAS")
    sp = p.cmd(ali, "list", alias_list, "List aliases.")
    sp.add_argument("domain", nargs="?", metavar="DOMAIN")

    fwd = p.group("forward", "Forwarding of all incoming mail of an address.")
    sp = p.cmd(fwd, "set", forward_set, "Forward an address's incoming mail.")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("targets", nargs="+", metavar="TARGET")
    sp.add_argument("--keep-copy", action="store_true",
                    help="also keep a copy in the address's own INBOX")
    sp = p.cmd(fwd, "clear", forward_clear, "Stop forwarding.")
    sp.add_argument("address", metavar="ADDRESS")

    app = p.group("app-password", "App passwords: named, revocable, per address.")
    sp = p.cmd(app, "add", app_password_add,
             "Generate an app password (printed once).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", metavar="NAME", help="e.g. 'phone' or 'scanner'")
    sp = p.cmd(app, "list", app_password_list, "List an address's app passwords.")
    sp.add_argument("address", metavar="ADDRESS")
    sp = p.cmd(app, "revoke", app_password_revoke,
             "Revoke an app password (sessions using it are cut off).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", metavar="NAME")

    usr = p.group("user", "Users: accounts with their own password, granted access to "
                "addresses (read, passwd, autoresponder, send).")
    sp = p.cmd(usr, "add", user_add, "Create a user (login: usually an email "
             "address, hosted here or anywhere).")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password as one line from standard input")
    p.cmd(usr, "list", user_list, "List users with their grants.")
    sp = p.cmd(usr, "grant", user_grant,
             "Grant a user permissions on an address (replaces earlier ones).")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--perm", required=True, metavar="LIST",
                    help="comma list of: read, passwd, autoresponder, send")
    sp = p.cmd(usr, "revoke", user_revoke, "Take a user's access to an address.")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("address", metavar="ADDRESS")

    sp = p.cmd(p.sub, "gc", gc, "Remove message files nothing refers to any more "
             "(the server also does this every server.blob_gc_interval_seconds).")
    sp.add_argument("--min-age", type=float, metavar="SECONDS",
                    help="only files older than this (default: "
                         "server.blob_gc_min_age_seconds)")

    sp = p.cmd(p.sub, "activity", activity,
             "Recent logins, failures and password changes.")
    sp.add_argument("address", nargs="?", metavar="ADDRESS")
    sp.add_argument("--limit", type=int, default=50, metavar="N")
    sp.add_argument("--json", action="store_true",
                    help="print a JSON array of entries instead of a table")
    sp = p.cmd(p.sub, "client-settings", client_settings,
             "Print what a mail client needs to connect as ADDRESS.")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--dev", action="store_true",
                    help="the ports of `serve --dev` (configured + 10000) and host localhost")
