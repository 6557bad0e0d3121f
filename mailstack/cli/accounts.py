"""Support commands for accounts (docs/behaviour.md §2, §10): a user's password, removing
a user, the "app passwords only" switch of an address, a domain's plan, and the plans
the config defines.

Invariants:
- A refusal (unknown user, address, domain or plan; a missing ``--yes``) changes
  nothing: every check runs before the one store call that writes.
- What a running server must notice reaches it through the store's change events
  (store/changes.py on SQLite, LISTEN/NOTIFY on PostgreSQL): "app passwords only"
  ends the sessions that logged in with the address's password, at once.
"""

from __future__ import annotations

import argparse

from ..config import PlanSettings
from ..policy.addresses import check_domain
from ..store import Store
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

# --- users ----------------------------------------------------------------------------


@with_store
async def user_passwd(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    login = check_login(args.login)
    user_id = await need_user(store, login)
    password = read_password(ctx, args, required=True)
    assert password is not None
    await store.set_user_password(user_id, await ctx.passwords().hash(password))
    await store.log_activity("user_password_changed", address=login, protocol="cli")
    ctx.print(f"password of user {login} changed; the user's web sessions are signed out "
              "(the addresses' own passwords are unchanged)")
    return 0


@with_store
async def user_remove(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    login = check_login(args.login)
    user_id = await need_user(store, login)
    if not args.yes:
        grants = dict(await store.list_users()).get(login, [])
        raise CliError(f"not removed: removing user {login} takes away its access to "
                       f"{len(grants)} address{'es' if len(grants) != 1 else ''} (the "
                       "addresses and their mail stay); run again with --yes to confirm",
                       code=2)
    addresses = await store.remove_user(user_id)
    await store.log_activity("user_removed", address=login, protocol="cli",
                             detail=", ".join(addresses))
    ctx.print(f"user {login} removed; its grants on "
              f"{', '.join(addresses) if addresses else 'no address'} are gone "
              "(the addresses are kept)")
    return 0


# --- addresses ------------------------------------------------------------------------


@with_store
async def address_app_only(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    addr = await need_address(store, args.address)
    only = args.state == "on"
    changed = await store.set_app_passwords_only(addr.id, only)
    if changed:
        await store.log_activity("app_only_" + args.state, address=addr.email,
                                 protocol="cli")
    if not only:
        ctx.print(f"{addr.email} accepts its password and its app passwords"
                  + ("" if changed else " (unchanged)"))
        return 0
    ctx.print(f"{addr.email} accepts app passwords only"
              + ("; sessions that logged in with the password are cut off" if changed
                 else " (unchanged)"))
    if not await store.list_app_passwords(addr.id):
        ctx.warn(f"note: {addr.email} has no app password: no client can log in until "
                 f"`mailstack app-password add {addr.email} NAME`")
    return 0


# --- plans ----------------------------------------------------------------------------


def need_plan(ctx: Ctx, name: str) -> str:
    if name not in ctx.settings.plans:
        raise CliError(f"no plan {name!r} in the config (plans: "
                       f"{', '.join(sorted(ctx.settings.plans))}); nothing changed")
    return name


@with_store
async def domain_set_plan(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    name = check_domain(args.domain)
    dom = await store.get_domain(name)
    if dom is None:
        raise CliError(f"domain {name} is not hosted here; nothing changed")
    plan = need_plan(ctx, args.plan)
    if plan == dom.plan:
        ctx.print(f"domain {dom.name} already has plan {plan}")
        return 0
    await store.set_domain_plan(dom.name, plan)
    await store.log_activity("domain_plan", address=dom.name, protocol="cli",
                             detail=f"{dom.plan} -> {plan}")
    ctx.print(f"domain {dom.name}: plan {dom.plan} -> {plan}")
    count = len(await store.list_addresses(dom.name))
    cap = ctx.settings.plans[plan].max_addresses
    if count > cap:
        ctx.warn(f"note: {dom.name} holds {count} addresses, more than plan {plan} allows "
                 f"({cap}): they stay, but no new one can be added")
    return 0


def size(n: int) -> str:
    """Octets for people: 25 MiB, 1 GiB, 0 is "no limit"."""
    if n == 0:
        return "no limit"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


PLAN_COLUMNS = ("plan", "addresses/domain", "recipients/message", "recipients/day",
                "message size", "storage/address", "messages/address", "domains")


def plan_row(name: str, p: PlanSettings, domains: int, default: bool) -> tuple[str, ...]:
    return (name + (" (default)" if default else ""), str(p.max_addresses),
            str(p.max_recipients_per_message), str(p.daily_recipients),
            size(p.max_message_size), size(p.storage_quota),
            str(p.message_quota) if p.message_quota else "no limit", str(domains))


@with_store
async def plan_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    """Each plan of the config with its limits and how many domains use it."""
    using: dict[str, int] = {}
    for d in await store.list_domains():
        using[d.plan] = using.get(d.plan, 0) + 1
    default = ctx.settings.smtp.default_plan
    rows = [PLAN_COLUMNS] + [plan_row(n, p, using.get(n, 0), n == default)
                             for n, p in sorted(ctx.settings.plans.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(PLAN_COLUMNS))]
    for r in rows:
        ctx.print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    unknown = sorted(set(using) - set(ctx.settings.plans))
    for name in unknown:
        ctx.warn(f"note: {using[name]} domain(s) use plan {name!r}, which the config does "
                 f"not define (they get the limits of {default}); fix with "
                 "`mailstack domain set-plan DOMAIN PLAN`")
    return 0


def register(p: Parsers) -> None:
    usr = p.group("user")
    sp = p.cmd(usr, "passwd", user_passwd,
               "Set a user's own password (signs the user out of the web pages; the "
               "addresses' passwords are not touched).")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password as one line from standard input")
    sp = p.cmd(usr, "remove", user_remove,
               "Remove a user and its grants; the addresses stay (needs --yes).")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("--yes", action="store_true", help="confirm")

    adr = p.group("address")
    sp = p.cmd(adr, "app-only", address_app_only,
               "Accept only app passwords for ADDRESS (on), or its password too (off). "
               "Turning it on cuts off the sessions that logged in with the password.")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("state", choices=("on", "off"))

    dom = p.group("domain")
    sp = p.cmd(dom, "set-plan", domain_set_plan, "Move a domain to another plan.")
    sp.add_argument("domain", metavar="DOMAIN")
    sp.add_argument("plan", metavar="PLAN", help="a plan of the config's [plans]")

    pln = p.group("plan", "Plans: the limits a domain and its addresses get (config "
                  "[plans]).")
    p.cmd(pln, "list", plan_list, "List the plans with their limits.")
