"""``mailstack user 2fa reset LOGIN``: support turns a user's two-factor sign-in off
(lost phone and lost emergency codes). The user's TOTP secret and emergency codes are
deleted and every browser signed in to the account is signed out at once (the web
sessions live in the store, so this reaches running servers on every node).

The other ``user`` actions are in ``admin.py``; this module adds to the same group.
"""

from __future__ import annotations

import argparse

from ..store import Store
from .common import CliError, Ctx, Parsers, with_store


@with_store
async def user_2fa_reset(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    login = args.login.strip().lower()
    user = await store.get_user(login)
    if user is None:
        raise CliError(f"no user {login}")
    had = user.two_factor
    await store.reset_totp(user.id)
    await store.log_activity("2fa_reset", address=login, protocol="cli",
                             detail="was on" if had else "was already off")
    if had:
        ctx.print(f"two-factor of {login} is off; its emergency codes are gone and every "
                  "browser signed in to it was signed out")
    else:
        ctx.print(f"two-factor of {login} was already off; every browser signed in to it "
                  "was signed out")
    return 0


def register(p: Parsers) -> None:
    usr = p.group("user", "Users: accounts with their own password, granted access to "
                  "addresses (read, passwd, autoresponder, send).")
    tf = usr.add_parser("2fa", help="Two-factor sign-in of a user.",
                        description="Two-factor sign-in of a user.")
    actions = tf.add_subparsers(dest="user_2fa_command", metavar="ACTION", required=True)
    sp = p.cmd(actions, "reset", user_2fa_reset,
               "Turn a user's two-factor off (secret and emergency codes deleted) and sign "
               "it out everywhere.")
    sp.add_argument("login", metavar="LOGIN")
