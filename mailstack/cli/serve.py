"""``mailstack init``, ``serve``, ``check-config`` and ``config-example``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import secrets
import socket
from typing import TextIO

from ..config import (
    ConfigError,
    ServerSettings,
    Settings,
    dev_settings,
    load_settings,
    render_example,
)
from ..store import Store
from .common import CliError, Ctx, Parsers, safe_url

log = logging.getLogger("mailstack")

DEMO_DOMAIN = "example.test"
DEMO_ADDRESS = f"demo@{DEMO_DOMAIN}"
DEMO_HOST = f"mail.{DEMO_DOMAIN}"  # the dev server's name: banner, certificate, greetings


def cmd_init(ctx: Ctx, args: argparse.Namespace) -> int:
    async def go() -> None:
        store = await Store.open_from_settings(ctx.settings, listen=False)
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
        for e in exc.errors:  # every bad key, one line each
            print(f"{path or '(defaults)'}: {e.line}", file=err)
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
        if name in ports:
            lines.append(f"  {label:4} server 127.0.0.1  port {ports[name]}  SSL/TLS  ({role})")
    lines += ["  user name: the full address; password: the address's password",
              f"  trust this certificate: {s.cert_path}",
              f"  (it names {s.server.hostname}, localhost and 127.0.0.1)",
              "Stop with Ctrl-C.", ""]
    return lines


def cmd_serve(ctx: Ctx, args: argparse.Namespace) -> int:
    from ..app import App
    from ..workers import default_workers

    settings = ctx.settings
    if args.dev:
        settings = dev_settings(settings)
        if settings.server.hostname == ServerSettings().hostname:  # not chosen: the demo's
            settings = dataclasses.replace(settings, server=dataclasses.replace(
                settings.server, hostname=DEMO_HOST))
    ctx.settings = settings
    workers = args.workers if args.workers is not None else settings.server.workers
    workers = workers or default_workers()
    if workers > 1:
        return serve_workers(ctx, args, settings, workers)

    async def go() -> int:
        password = None
        if args.dev:
            store = await Store.open_from_settings(settings, listen=False)
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


def serve_workers(ctx: Ctx, args: argparse.Namespace, settings: Settings,
                  workers: int) -> int:
    """``serve --workers N`` (N > 1): prepare once (migrations, the dev demo address,
    the certificate, the listening sockets), then a supervisor forks the workers
    (mailstack/workers.py, docs/behaviour.md §10)."""
    from ..app import App, remove_listening, write_listening
    from ..tls import ensure_self_signed
    from ..workers import Supervisor, WorkerInfo, bind_listeners, signals_noted

    s = settings

    async def prepare() -> str | None:
        store = await Store.open_from_settings(s, listen=False)
        try:
            password = await ensure_demo(ctx, store) if args.dev else None
            node = s.server.node_name or socket.gethostname()
            # the whole previous run's maildrop locks (every worker slot's)
            await store.drop_node_pop3_locks(f"{node}/", keep_prefix="\0")
            return password
        finally:
            await store.close()

    def run_worker(info: WorkerInfo) -> int:
        async def go() -> None:
            await App(s, generate_cert=args.dev, worker=info).run_until_signal()

        asyncio.run(go())
        return 0

    with signals_noted() as noted:  # a stop asked for during start-up ends it cleanly
        password = asyncio.run(prepare())
        if args.dev or (s.tls.acme and not (s.cert_path.exists() and s.key_path.exists())):
            ensure_self_signed(s.cert_path, s.key_path, s.server.hostname)
        has_cert = s.cert_path.exists() and s.key_path.exists()
        for f in dataclasses.fields(s.listeners):
            ls = getattr(s.listeners, f.name)
            if ls.enabled and ls.tls != "none" and not has_cert:
                raise CliError(f"listener {f.name} needs TLS but {s.cert_path} / "
                               f"{s.key_path} do not exist (use --dev to generate a "
                               "self-signed certificate)")
        try:
            sockets = bind_listeners(s, workers)
        except RuntimeError as exc:
            raise CliError(str(exc)) from exc

        def started(sup: Supervisor) -> None:
            write_listening(s, sup.ports)
            if args.dev:
                for line in dev_instructions(ctx, sup.ports, password):
                    ctx.print(line)
            else:
                log.info("serving %s with %d listeners in %d workers", s.server.hostname,
                         len(sup.ports), workers)

        try:
            return Supervisor(s, workers, run_worker, sockets).run(started, noted=noted)
        finally:
            remove_listening(s)


def register(p: Parsers) -> None:
    p.cmd(p.sub, "init", cmd_init, "Create the data directory and apply database migrations.")
    sp = p.cmd(p.sub, "serve", cmd_serve, "Run the mail server until SIGTERM/SIGINT.")
    sp.add_argument("--dev", action="store_true",
                    help="dev mode: 127.0.0.1 only, standard ports + 10000, self-signed "
                         "certificate, a demo address on first run")
    sp.add_argument("--workers", type=int, metavar="N", default=None,
                    help="server processes sharing the ports (default: [server] workers, "
                         "0 there meaning one per CPU core; 1: a single process)")
    sp.add_argument("--debug", action="store_true",
                    help="log everything, including the SMTP library's own per-connection "
                         "detail (hidden otherwise)")
    sp = p.cmd(p.sub, "check-config", cmd_check_config,
             "Validate a config file: print OK, or the bad key and exit 1.")
    sp.add_argument("file", nargs="?", metavar="FILE",
                    help="file to check (default: the one --config/MAILSTACK_CONFIG/"
                         "./mailstack.toml selects)")
    p.cmd(p.sub, "config-example", cmd_config_example,
        "Print the annotated example config (every setting with its default).")
