"""The ``mailstack`` command: everything an operator does (SPEC §10).

Layout: this module builds the argument parser (one sub-command per operator task, each
with ``--help``), loads the settings and dispatches; the handlers live in
``cli_admin`` (domains, addresses, aliases, forwarding, app passwords, activity,
client settings) and ``cli_csv`` (bulk import). ``serve`` is here.

Invariants:
- A password never appears in argv, stdout, stderr or logs: it comes from
  ``--password-stdin`` (one line) or an interactive prompt; generated secrets (demo
  password, app passwords) are printed once, on stdout, and nowhere else.
- Errors are caught once, in ``main``: a user error (bad input, refused by the store)
  prints one clear line on stderr and exits 1; a refused confirmation exits 2 (like a
  usage error); a bad config file exits 1 naming the key, the value and the problem.
- All store work runs in one ``asyncio.run`` per command; Argon2 hashing runs off the
  event loop (``Passwords.hash`` uses a thread).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import secrets
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy.engine import make_url

from . import __version__
from .config import (
    ConfigError,
    Settings,
    dev_settings,
    find_config_file,
    load_settings,
    render_example,
)
from .policy.addresses import AddressRuleError
from .policy.passwords import Passwords
from .store import Store, StoreError

log = logging.getLogger("mailstack")

MIN_PASSWORD_LENGTH = 8
DEMO_DOMAIN = "example.test"
DEMO_ADDRESS = f"demo@{DEMO_DOMAIN}"


class CliError(Exception):
    """A user error: printed as one line on stderr, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Ctx:
    """What a handler gets: settings, where they came from, and the three streams."""

    settings: Settings
    config_path: str | None
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def print(self, *parts: object) -> None:
        print(*parts, file=self.out, flush=True)

    def warn(self, *parts: object) -> None:
        print(*parts, file=self.err, flush=True)

    def passwords(self) -> Passwords:
        a = self.settings.auth
        return Passwords(a.argon2_time_cost, a.argon2_memory_kib, a.argon2_parallelism)


Handler = Callable[[Ctx, argparse.Namespace], int]
StoreHandler = Callable[[Ctx, Store, argparse.Namespace], Awaitable[int]]


def with_store(fn: StoreHandler) -> Handler:
    """Wrap an async handler: open the store (migrations applied), run, close."""

    def run(ctx: Ctx, args: argparse.Namespace) -> int:
        async def go() -> int:
            store = await Store.open_from_settings(ctx.settings)
            try:
                return await fn(ctx, store, args)
            finally:
                await store.close()

        return asyncio.run(go())

    run.__name__ = getattr(fn, "__name__", "handler")
    return run


# --- passwords ---------------------------------------------------------------------


def check_password(password: str) -> str | None:
    """Why ``password`` may not be used, or None. Never echoes the password."""
    if not password:
        return "the password is empty"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password is shorter than {MIN_PASSWORD_LENGTH} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        return "the password contains a control character"
    return None


def read_password(ctx: Ctx, args: argparse.Namespace, *, required: bool,
                  what: str = "password") -> str | None:
    """The new password from ``--password-stdin`` (one line) or a prompt on a terminal.

    Returns None when no source is available and ``required`` is false.
    """
    if getattr(args, "password_stdin", False):
        line = ctx.stdin.readline()
        password = line.rstrip("\r\n")
    elif ctx.stdin.isatty():
        password = getpass.getpass(f"New {what}: ")
        if getpass.getpass(f"Repeat the {what}: ") != password:
            raise CliError("the two passwords differ; nothing changed")
    elif required:
        raise CliError("no password given: pass it on standard input with "
                       "--password-stdin (never on the command line)")
    else:
        return None
    problem = check_password(password)
    if problem:
        raise CliError(f"{problem}; nothing changed")
    return password


# --- init, config ------------------------------------------------------------------


def safe_url(url: str) -> str:
    """The database URL without its password, for printing."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


def cmd_init(ctx: Ctx, args: argparse.Namespace) -> int:
    async def go() -> None:
        store = await Store.open_from_settings(ctx.settings)
        await store.close()

    asyncio.run(go())
    ctx.print(f"data dir: {ctx.settings.data_dir}")
    ctx.print(f"database: {safe_url(ctx.settings.database_url)} (schema up to date)")
    return 0


def cmd_check_config(ctx: Ctx, args: argparse.Namespace) -> int:
    """Only a marker for the parser: ``main`` runs ``check_config`` before any settings
    are loaded, because the file to check is the argument, not the settings in force."""
    return check_config(args.file or ctx.config_path, ctx.out, ctx.err)


def check_config(path: str | None, out: TextIO, err: TextIO) -> int:
    try:
        load_settings(path)
    except ConfigError as exc:
        print(f"{path or '(defaults)'}: {exc}", file=err)
        return 1
    print(f"OK: {path}" if path else "OK: no config file; the built-in defaults apply",
          file=out)
    return 0


def cmd_config_example(ctx: Ctx, args: argparse.Namespace) -> int:
    ctx.out.write(render_example())
    return 0


# --- serve -------------------------------------------------------------------------


async def ensure_demo(ctx: Ctx, store: Store) -> str | None:
    """On an empty store, create the demo domain and address; return its password."""
    if await store.list_domains():
        return None
    plan = ctx.settings.smtp.default_plan
    await store.add_domain(DEMO_DOMAIN, plan)
    password = secrets.token_urlsafe(12)
    pw_hash = await ctx.passwords().hash(password)
    local = DEMO_ADDRESS.split("@")[0]
    await store.add_address(local, DEMO_DOMAIN, password_hash=pw_hash,
                            display_name="Demo", max_addresses=ctx.settings.plan(plan)
                            .max_addresses)
    await store.log_activity("address_created", address=DEMO_ADDRESS, protocol="cli",
                             detail="serve --dev demo")
    return password


def dev_instructions(ctx: Ctx, ports: dict[str, int], password: str | None) -> list[str]:
    s = ctx.settings
    lines = ["", "mailstack is running in dev mode (self-signed certificate, 127.0.0.1 only)."]
    if password is not None:
        lines += [f"Demo address created: {DEMO_ADDRESS}",
                  f"Its password (shown once, now): {password}"]
    else:
        lines += [f"Demo address (if you kept it): {DEMO_ADDRESS}; set a new password with "
                  "`mailstack address passwd ADDRESS --password-stdin`"]
    lines.append("Connect a mail client with:")
    for name, label, role in (("imaps", "IMAP", "incoming mail"),
                              ("submissions", "SMTP", "outgoing mail"),
                              ("pop3s", "POP3", "alternative to IMAP")):
        ls = getattr(s.listeners, name)
        if not ls.enabled:
            continue
        port = ports.get(name, ls.port)
        state = "" if name in ports else "   (not listening yet: no server in this build)"
        lines.append(f"  {label:4} server 127.0.0.1  port {port}  SSL/TLS  ({role}){state}")
    lines += ["  user name: the full address; password: the address's password",
              f"  trust this certificate: {s.cert_path}",
              f"  (it names {s.server.hostname}, localhost and 127.0.0.1)",
              "Stop with Ctrl-C.", ""]
    return lines


def cmd_serve(ctx: Ctx, args: argparse.Namespace) -> int:
    from .app import App

    settings = dev_settings(ctx.settings) if args.dev else ctx.settings
    ctx.settings = settings

    async def go() -> int:
        password = None
        if args.dev:
            store = await Store.open_from_settings(settings)
            try:
                password = await ensure_demo(ctx, store)
            finally:
                await store.close()

        def started(app: App) -> None:
            if args.dev:
                for line in dev_instructions(ctx, app.ports, password):
                    ctx.print(line)
            else:
                log.info("serving %s with %d listeners", settings.server.hostname,
                         len(app.ports))

        try:
            await App(settings, generate_cert=args.dev).run_until_signal(started)
        except RuntimeError as exc:  # e.g. TLS listeners without certificate files
            raise CliError(str(exc)) from exc
        log.info("stopped")
        return 0

    return asyncio.run(go())


# --- the parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import cli_admin, cli_csv

    p = argparse.ArgumentParser(
        prog="mailstack", description="Run and administer a mailstack mail server.")
    p.add_argument("--config", metavar="FILE",
                   help="config file (default: $MAILSTACK_CONFIG, else ./mailstack.toml, "
                        "else built-in defaults)")
    p.add_argument("--version", action="version", version=f"mailstack {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(parent: Any, name: str, handler: Handler, help_text: str
            ) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_text,
                                                        description=help_text)
        sp.set_defaults(handler=handler)
        return sp

    def group(name: str, help_text: str) -> Any:
        gp = sub.add_parser(name, help=help_text, description=help_text)
        return gp.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)

    cmd(sub, "init", cmd_init, "Create the data directory and apply database migrations.")
    sp = cmd(sub, "serve", cmd_serve, "Run the mail server until SIGTERM/SIGINT.")
    sp.add_argument("--dev", action="store_true",
                    help="dev mode: 127.0.0.1 only, standard ports + 10000, self-signed "
                         "certificate, a demo address on first run")
    sp = cmd(sub, "check-config", cmd_check_config,
             "Validate a config file: print OK, or the bad key and exit 1.")
    sp.add_argument("file", nargs="?", metavar="FILE",
                    help="file to check (default: the one --config/MAILSTACK_CONFIG/"
                         "./mailstack.toml selects)")
    cmd(sub, "config-example", cmd_config_example,
        "Print the annotated example config (every setting with its default).")

    dom = group("domain", "Hosted domains.")
    sp = cmd(dom, "add", cli_admin.domain_add, "Host a new domain.")
    sp.add_argument("domain", metavar="DOMAIN")
    sp.add_argument("--plan", metavar="NAME", help="plan from the config's [plans] "
                    "(default: smtp.default_plan)")
    cmd(dom, "list", cli_admin.domain_list, "List hosted domains with plan and counts.")
    sp = cmd(dom, "remove", cli_admin.domain_remove,
             "Stop hosting a domain (it must hold no addresses or aliases).")
    sp.add_argument("domain", metavar="DOMAIN")

    adr = group("address", "Mail addresses (mailboxes, no-reply, catchall).")
    sp = cmd(adr, "add", cli_admin.address_add, "Create an address.")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--kind", choices=("mailbox", "no-reply", "catchall"), default="mailbox")
    sp.add_argument("--name", metavar="NAME", default="", help="display name")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password as one line from standard input (without it "
                         "you are prompted on a terminal; otherwise no password is set)")
    sp = cmd(adr, "passwd", cli_admin.address_passwd,
             "Set an address's password (open sessions are cut off).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password as one line from standard input")
    sp = cmd(adr, "list", cli_admin.address_list, "List addresses.")
    sp.add_argument("domain", nargs="?", metavar="DOMAIN")
    sp = cmd(adr, "remove", cli_admin.address_remove,
             "Delete an address and ALL its mail (needs --yes).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--yes", action="store_true",
                    help="confirm: the address's folders and messages are destroyed")
    sp = cmd(adr, "import-csv", cli_csv.import_csv,
             "Create addresses from a CSV file: address,password[,name] per line.")
    sp.add_argument("file", metavar="FILE", help="CSV file ('-' for standard input)")
    sp.add_argument("--valid-only", action="store_true",
                    help="create the valid rows even if some are bad (default: nothing "
                         "is created unless every row is valid)")

    ali = group("alias", "Aliases: an address that redirects to one or more others.")
    sp = cmd(ali, "add", cli_admin.alias_add, "Create an alias.")
    sp.add_argument("alias", metavar="ALIAS")
    sp.add_argument("targets", nargs="+", metavar="TARGET",
                    help="local or remote addresses")
    sp = cmd(ali, "remove", cli_admin.alias_remove, "Delete an alias.")
    sp.add_argument("alias", metavar="ALIAS")
    sp = cmd(ali, "list", cli_admin.alias_list, "List aliases.")
    sp.add_argument("domain", nargs="?", metavar="DOMAIN")

    fwd = group("forward", "Forwarding of all incoming mail of an address.")
    sp = cmd(fwd, "set", cli_admin.forward_set, "Forward an address's incoming mail.")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("targets", nargs="+", metavar="TARGET")
    sp.add_argument("--keep-copy", action="store_true",
                    help="also keep a copy in the address's own INBOX")
    sp = cmd(fwd, "clear", cli_admin.forward_clear, "Stop forwarding.")
    sp.add_argument("address", metavar="ADDRESS")

    app = group("app-password", "App passwords: named, revocable, per address.")
    sp = cmd(app, "add", cli_admin.app_password_add,
             "Generate an app password (printed once).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", metavar="NAME", help="e.g. 'phone' or 'scanner'")
    sp = cmd(app, "list", cli_admin.app_password_list, "List an address's app passwords.")
    sp.add_argument("address", metavar="ADDRESS")
    sp = cmd(app, "revoke", cli_admin.app_password_revoke,
             "Revoke an app password (sessions using it are cut off).")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("name", metavar="NAME")

    usr = group("user", "Users: accounts with their own password, granted access to "
                "addresses (read, passwd, autoresponder, send).")
    sp = cmd(usr, "add", cli_admin.user_add, "Create a user (login: usually an email "
             "address, hosted here or anywhere).")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password as one line from standard input")
    cmd(usr, "list", cli_admin.user_list, "List users with their grants.")
    sp = cmd(usr, "grant", cli_admin.user_grant,
             "Grant a user permissions on an address (replaces earlier ones).")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("--perm", required=True, metavar="LIST",
                    help="comma list of: read, passwd, autoresponder, send")
    sp = cmd(usr, "revoke", cli_admin.user_revoke, "Take a user's access to an address.")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("address", metavar="ADDRESS")

    sp = cmd(sub, "gc", cli_admin.gc, "Remove message files nothing refers to any more "
             "(the server also does this every server.blob_gc_interval_seconds).")
    sp.add_argument("--min-age", type=float, metavar="SECONDS",
                    help="only files older than this (default: "
                         "server.blob_gc_min_age_seconds)")

    sp = cmd(sub, "activity", cli_admin.activity,
             "Recent logins, failures and password changes.")
    sp.add_argument("address", nargs="?", metavar="ADDRESS")
    sp.add_argument("--limit", type=int, default=50, metavar="N")
    sp = cmd(sub, "client-settings", cli_admin.client_settings,
             "Print what a mail client needs to connect as ADDRESS.")
    sp.add_argument("address", metavar="ADDRESS")
    return p


# --- main --------------------------------------------------------------------------


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    if handler is cmd_check_config:
        return check_config(args.file or find_config_file(args.config), sys.stdout,
                            sys.stderr)
    if handler is cmd_config_example:
        sys.stdout.write(render_example())
        return 0
    config_path = find_config_file(args.config)
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        print(f"mailstack: {config_path}: {exc}", file=sys.stderr)
        return 1
    setup_logging(verbose=handler is cmd_serve)
    ctx = Ctx(settings, config_path)
    try:
        return handler(ctx, args)
    except CliError as exc:
        print(f"mailstack: {exc}", file=sys.stderr)
        return exc.code
    except (StoreError, AddressRuleError) as exc:
        print(f"mailstack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mailstack: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"mailstack: {exc}", file=sys.stderr)
        return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
