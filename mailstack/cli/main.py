"""The ``mailstack`` command: everything an operator does (docs/behaviour.md §10).

This package builds the argument parser from one module per command group (each has a
``register(p: Parsers)``), loads the settings and dispatches. Shared helpers live in
``common``, which imports nothing from this package.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import ConfigError, find_config_file, load_settings, render_example
from ..logs import setup_logging
from ..policy.addresses import AddressRuleError
from ..store import StoreError
from . import (
    accounts,
    admin,
    auth,
    autoresponder,
    backup,
    dns,
    importer,
    queue,
    serve,
    tls,
    tlsa,
    tlsrpt,
    user,
)
from .common import CliError, Ctx, Handler, Parsers
from .serve import check_config, cmd_check_config, cmd_config_example, cmd_serve

# One module per command group, registered in this order (the order of --help).
COMMAND_MODULES = (serve, admin, accounts, user, importer, autoresponder, auth, dns, tls,
                   tlsa, tlsrpt, backup, queue)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mailstack", description="Run and administer a mailstack mail server.")
    p.add_argument("--config", metavar="FILE",
                   help="config file (default: $MAILSTACK_CONFIG, else ./mailstack.toml, "
                        "else built-in defaults)")
    p.add_argument("--version", action="version", version=f"mailstack {__version__}")
    parsers = Parsers(p.add_subparsers(dest="command", metavar="COMMAND", required=True))
    for module in COMMAND_MODULES:
        module.register(parsers)
    return p


# --- main --------------------------------------------------------------------------


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
        for e in exc.errors:  # every bad key, one line each
            print(f"mailstack: {config_path}: {e.line}", file=sys.stderr)
        return 1
    setup_logging(verbose=handler is cmd_serve, debug=getattr(args, "debug", False),
                  fmt=settings.logging.format)
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
