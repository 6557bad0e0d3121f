"""``mailstack auth``: look at and lift login lockouts (docs/behaviour.md §2, §10).

``auth unlock ADDRESS`` forgets the failures and locks of that address from every
client network; ``auth unlock NETWORK`` (``198.51.100.0/24``, ``2001:db8::/64`` or one
IP, widened to the configured network size) forgets those of that network for every
address. ``auth list`` shows what is counted and locked now.
"""

from __future__ import annotations

import argparse
import ipaddress
import time

from ..policy.auth import client_network
from ..store import Store
from .common import CliError, Ctx, Parsers, with_store


def _network_of(ctx: Ctx, text: str) -> str:
    """A network in the guard's own spelling (prefix from ``auth.ipv4_prefix`` /
    ``auth.ipv6_prefix``) from a network or a single address."""
    a = ctx.settings.auth
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise CliError(f"{text!r} is neither an address (user@domain) nor an IP "
                       "network") from None
    return client_network(str(net.network_address), a.ipv4_prefix, a.ipv6_prefix)


@with_store
async def unlock(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    target: str = args.target.strip()
    if "@" in target:
        n = await store.unlock_logins(address=target.lower())
        what = target.lower()
    else:
        what = _network_of(ctx, target)
        n = await store.unlock_logins(network=what)
    await store.log_activity("login_unlocked", address=what if "@" in what else None,
                             protocol="cli", detail=what)
    ctx.print(f"{what}: {n} failure record{'s' if n != 1 else ''} cleared; "
              "logins are accepted again" if n else f"{what}: nothing was locked")
    return 0


@with_store
async def show(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    now = time.time()
    for network, address, failures, until in await store.list_login_throttle():
        state = (f"locked until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))}"
                 if until > now else "counting")
        who = "(whole network)" if address == "*" else address
        ctx.print(f"{network}\t{who}\t{failures} failures\t{state}")
    return 0


def register(p: Parsers) -> None:
    grp = p.group("auth", "Login lockouts: list them, lift one.")
    sp = p.cmd(grp, "unlock", unlock,
               "Lift the lockout of an address (from every network) or of a client "
               "network (for every address).")
    sp.add_argument("target", metavar="ADDRESS|NETWORK")
    p.cmd(grp, "list", show, "Client networks and addresses with counted failures or "
          "locks.")
