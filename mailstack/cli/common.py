"""Helpers shared by every command module of ``mailstack``: the context a handler gets,
errors, store access, passwords from stdin, and the parser registration helpers.

Nothing here imports another module of this package: command modules import from
here, never from each other.

Invariants (for every command):
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
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy.engine import make_url

from ..config import Settings
from ..policy.passwords import Passwords, password_problem
from ..store import Address, Store


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
            store = await Store.open_from_settings(ctx.settings, listen=False)
            try:
                return await fn(ctx, store, args)
            finally:
                await store.close()

        return asyncio.run(go())

    run.__name__ = getattr(fn, "__name__", "handler")
    return run


# --- lookups shared by command modules ----------------------------------------------


async def need_address(store: Store, address: str) -> Address:
    found = await store.get_address(address)
    if found is None:
        raise CliError(f"no address {address} is hosted here")
    return found


def check_login(login: str) -> str:
    """A user's login: usually an email address, hosted here or anywhere."""
    login = login.strip()
    if not login or len(login) > 320:
        raise CliError("a login is 1 to 320 characters")
    for i, ch in enumerate(login, start=1):
        if ord(ch) <= 0x20 or ord(ch) == 0x7F or ch in '<>()[],;:\\"':
            raise CliError(f"login {login!r}: character {ch!r} at position {i} is not "
                           "allowed")
    return login.lower()


async def need_user(store: Store, login: str) -> int:
    user_id = await store.get_user_id(login)
    if user_id is None:
        raise CliError(f"no user {login}")
    return user_id


# --- passwords ---------------------------------------------------------------------


# one rule for the command line and the web pages (policy/passwords.py)
check_password = password_problem


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


def safe_url(url: str) -> str:
    """The database URL without its password, for printing."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


class Parsers:
    """Registration helpers handed to each command module's ``register``."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self._groups: dict[str, Any] = {}

    def cmd(self, parent: Any, name: str, handler: Handler, help_text: str
            ) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_text,
                                                        description=help_text)
        sp.set_defaults(handler=handler)
        return sp

    def group(self, name: str, help_text: str = "") -> Any:
        """The sub-commands of ``name``; a second module asking for a group that exists
        adds its commands to it (``help_text`` is used only when it is created)."""
        if name not in self._groups:
            gp = self.sub.add_parser(name, help=help_text, description=help_text)
            self._groups[name] = gp.add_subparsers(dest=f"{name}_command", metavar="ACTION",
                                                   required=True)
        return self._groups[name]


def read_csv_file(path: str) -> str:
    """A CSV file's text ('-': standard input), UTF-8 with or without a BOM; a file that
    cannot be read is a ``CliError`` naming it."""
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror}") from exc
