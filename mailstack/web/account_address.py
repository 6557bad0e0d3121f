"""The per-address self-service pages (docs/behaviour.md §2, §7): overview, password
(with unification), app passwords and the app-passwords-only switch, autoresponders,
activity. ``/account/a/<address>/<page>``.

Invariants:
- Every page and action first asks ``policy.permissions.allowed`` with the grant the
  signed-in user holds on the address; a refusal (no grant, or a grant without the
  permission) is 403 and nothing is read or changed. An address the user was not
  granted looks exactly like one that does not exist (no enumeration).
- Credential changes go through the store methods that move the address's credential
  epoch (``CredentialsChanged``, logged for other processes in the change log): open
  IMAP/POP3/SMTP sessions of the address end at once, on every process and node.
- A new app password is shown once, in the answer to the POST that made it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..autoreplies import from_allowed
from ..policy import permissions
from ..policy.autoresponder import (
    WEEKDAYS,
    ResponderRuleError,
    check_schedule,
    parse_exclusions,
    parse_when,
    show_when,
    zone,
)
from ..policy.passwords import new_app_password, password_problem
from ..policy.relay import address_key
from ..store import Address, AlreadyExists, AutoResponder, Conflict, NotFound

if TYPE_CHECKING:
    from .account import AccountSite, Visit

MAX_NAME = 64
MAX_SUBJECT = 200
MAX_TEXT = 30_000  # the whole form is capped at 64 KiB (server.py)

AddressPage = Callable[["AccountSite", web.Request, "Visit", str, dict[str, str]],
                       Awaitable[web.StreamResponse]]


async def _granted(site: AccountSite, visit: Visit, email: str, action: str
                   ) -> tuple[Address, frozenset[str]]:
    """The address and the user's permissions on it, if ``action`` is allowed; else
    ``Forbidden`` (the same text whether the address exists or not)."""
    from .account import Forbidden

    perms: frozenset[str] | None = None
    addr = await site.store.get_address(email)
    if addr is not None:
        for g in await site.store.user_grants(visit.user.id):
            if g.address_id == addr.id:
                perms = g.permissions
    if addr is None or perms is None:
        raise Forbidden(f"You have no access to {email}.")
    if not permissions.allowed(perms, action):
        need = permissions.REQUIRED[action]
        raise Forbidden(f"Your access to {addr.email} does not include “{need}”; "
                        "nothing was changed.")
    return addr, perms


def _tabs(perms: frozenset[str]) -> dict[str, bool]:
    return {a: permissions.allowed(perms, a)
            for a in ("view", "password", "app-passwords", "autoresponder", "activity")}


async def overview(site: AccountSite, request: web.Request, visit: Visit, email: str,
                   form: dict[str, str]) -> web.StreamResponse:
    addr, perms = await _granted(site, visit, email, "view")
    if request.method == "POST":
        return site.refuse(visit, "Nothing to change here.", 405)
    responders = await site.store.list_autoresponders(addr.id)
    active = next((r.name for r in responders if r.active), None)
    grantees = await site.store.grants_for_address(addr.id)
    return site.render("address.html", visit=visit, addr=addr, tabs=_tabs(perms),
                       perms=sorted(perms), active=active, grantees=grantees,
                       apps=len(await site.store.list_app_passwords(addr.id)),
                       unified=visit.user.unified_address_id == addr.id)


# --- password and unification ---------------------------------------------------------


async def password(site: AccountSite, request: web.Request, visit: Visit, email: str,
                   form: dict[str, str]) -> web.StreamResponse:
    addr, perms = await _granted(site, visit, email, "password")
    store = site.store

    async def page(status: int = 200, **extra: Any) -> web.Response:
        grantees = await store.address_grantees(addr.id)
        verdict = permissions.unification(visit.user.login, addr.email, visit.user.id,
                                          grantees)
        ended = await store.last_event_at(addr.email, "unification_ended")
        return site.render("address_password.html", status, visit=visit, addr=addr,
                           tabs=_tabs(perms), verdict=verdict,
                           unified=visit.user.unified_address_id == addr.id,
                           ended=ended, **extra)

    if request.method != "POST":
        return await page()
    action = form.get("action", "change")
    if action == "end-unification":
        if visit.user.unified_address_id == addr.id:
            await store.end_unification(visit.user.id)
            await store.log_activity("unification_ended", address=addr.email,
                                     client_ip=visit.client_ip, protocol="web",
                                     detail=f"ended by {visit.user.login}")
            visit.user = await store.get_user_by_id(visit.user.id) or visit.user
        return await page(done="The two passwords are independent again (they stay "
                          "equal until one of them changes).")
    new, repeat = form.get("new", ""), form.get("repeat", "")
    problem = password_problem(new) or ("the two new passwords differ"
                                        if new != repeat else None)
    if problem:
        return await page(400, message=f"Not changed: {problem}.")
    unify = bool(form.get("unify"))
    if unify:
        verdict = permissions.unification(visit.user.login, addr.email, visit.user.id,
                                          await store.address_grantees(addr.id))
        if not verdict.allowed:
            return await page(403, message=f"Not changed: unification is not possible "
                              f"here ({verdict.reason}).")
    pw_hash = await site.services.passwords.hash(new)
    user_changed = False
    try:
        if unify:
            await store.unify(visit.user.id, addr.id, pw_hash)
            user_changed = True
        else:
            user_changed = await store.set_address_password_unified(addr.id, pw_hash) \
                is not None
    except Conflict as exc:
        return await page(409, message=f"Not changed: {exc}.")
    detail = f"by {visit.user.login}" + ("; unified" if user_changed else "")
    await store.log_activity("password_changed", address=addr.email,
                             client_ip=visit.client_ip, protocol="web", detail=detail)
    done = (f"The password of {addr.email} was changed; its open mail sessions were "
            "closed.")
    if user_changed:
        await store.log_activity("password_changed", address=visit.user.login,
                                 client_ip=visit.client_ip, protocol="web",
                                 detail=f"unified with {addr.email}")
        await site.reissue(visit)
        done += (" It is also your own password now (unified); your other browsers "
                 "were signed out.")
    return await page(done=done)


# --- app passwords ---------------------------------------------------------------------


async def app_passwords(site: AccountSite, request: web.Request, visit: Visit, email: str,
                        form: dict[str, str]) -> web.StreamResponse:
    addr, perms = await _granted(site, visit, email, "app-passwords")
    store = site.store
    status, extra = 200, dict[str, Any]()
    if request.method == "POST":
        action = form.get("action", "")
        name = form.get("name", "").strip()
        if action == "create":
            if not name or len(name) > MAX_NAME or not name.isprintable():
                status, extra = 400, {"message": f"Not created: a name is 1 to {MAX_NAME} "
                                      "printable characters."}
            else:
                secret = new_app_password()
                try:
                    await store.add_app_password(addr.id, name,
                                                 await site.services.passwords.hash(secret))
                except AlreadyExists as exc:
                    status, extra = 409, {"message": f"Not created: {exc}."}
                else:
                    await store.log_activity("app_password_added", address=addr.email,
                                             client_ip=visit.client_ip, protocol="web",
                                             detail=f"{name}; by {visit.user.login}")
                    extra = {"created": (name, secret)}
        elif action == "revoke":
            try:
                await store.revoke_app_password(addr.id, name)
            except NotFound as exc:
                status, extra = 404, {"message": f"Not revoked: {exc}."}
            else:
                await store.log_activity("app_password_revoked", address=addr.email,
                                         client_ip=visit.client_ip, protocol="web",
                                         detail=f"{name}; by {visit.user.login}")
                extra = {"done": f"App password {name!r} revoked; sessions that used it "
                                 "were closed."}
        elif action == "app-only":
            only = form.get("value") == "on"
            await store.set_app_passwords_only(addr.id, only)
            await store.log_activity("app_only_" + ("on" if only else "off"),
                                     address=addr.email, client_ip=visit.client_ip,
                                     protocol="web", detail=f"by {visit.user.login}")
            addr = await store.get_address_by_id(addr.id) or addr
            extra = {"done": "Only app passwords are accepted now; sessions that used the "
                             "main password were closed." if only else
                             "The main password is accepted again."}
        else:
            status, extra = 400, {"message": "Unknown action; nothing changed."}
    apps = await store.list_app_passwords(addr.id)
    return site.render("address_apps.html", status, visit=visit, addr=addr,
                       tabs=_tabs(perms), apps=apps, **extra)


# --- autoresponders ---------------------------------------------------------------------


def _responder_form(r: AutoResponder | None) -> dict[str, Any]:
    """The values of the edit form for ``r`` (None: a new responder)."""
    if r is None:
        return {"name": "", "subject": "", "body": "", "html": "", "start": "", "end": "",
                "days": set(), "timezone": "UTC", "from_address": "", "exclusions": "",
                "editing": False}

    def fmt(ts: float | None) -> str:
        return "" if ts is None else show_when(ts, r.timezone)[:16]  # datetime-local
    return {"name": r.name, "subject": r.subject, "body": r.body, "html": r.html or "",
            "start": fmt(r.starts_at), "end": fmt(r.ends_at), "days": set(r.weekdays),
            "timezone": r.timezone, "from_address": r.from_address or "",
            "exclusions": "\n".join(r.exclusions), "editing": True}


async def _responder_fields(site: AccountSite, addr: Address, form: dict[str, str]
                            ) -> dict[str, Any]:
    """Validated responder fields from the form; ``ResponderRuleError`` otherwise."""
    subject = form.get("subject", "").strip()
    if len(subject) > MAX_SUBJECT or not subject.isprintable():
        raise ResponderRuleError(f"the subject must be one line of at most {MAX_SUBJECT} "
                                 "printable characters")
    body = form.get("body", "").replace("\r\n", "\n")
    if not body.strip():
        raise ResponderRuleError("the text is empty")
    html = form.get("html", "").replace("\r\n", "\n").strip() or None
    if len(body) > MAX_TEXT or (html and len(html) > MAX_TEXT):
        raise ResponderRuleError(f"the text is longer than {MAX_TEXT} characters")
    tz = form.get("timezone", "").strip() or "UTC"
    zone(tz)
    starts = parse_when(form["start"], tz) if form.get("start", "").strip() else None
    ends = parse_when(form["end"], tz) if form.get("end", "").strip() else None
    check_schedule(starts, ends)
    days = frozenset(i for i, d in enumerate(WEEKDAYS) if form.get(f"day_{d}"))
    exclusions = parse_exclusions(form.get("exclusions", "").replace(",", "\n").splitlines())
    sender = form.get("from_address", "").strip() or None
    if sender is not None:
        if address_key(sender) is None:
            raise ResponderRuleError(f"{sender!r} is not an address")
        if not await from_allowed(site.store, addr.email, sender):
            raise ResponderRuleError(f"{addr.email} may not send as {sender} (only itself, "
                                     "its aliases and addresses granted to it with 'send')")
    return {"subject": subject, "body": body, "html": html, "starts_at": starts,
            "ends_at": ends, "weekdays": days, "timezone": tz, "from_address": sender,
            "exclusions": exclusions}


async def autoresponder(site: AccountSite, request: web.Request, visit: Visit, email: str,
                        form: dict[str, str]) -> web.StreamResponse:
    addr, perms = await _granted(site, visit, email, "autoresponder")
    store = site.store
    status, extra = 200, dict[str, Any]()
    editing = await store.get_autoresponder(addr.id, request.query.get("edit", "")) \
        if request.query.get("edit") else None
    values = _responder_form(editing)
    if request.method == "POST":
        action = form.get("action", "")
        name = form.get("name", "").strip()
        try:
            if action == "save":
                if not name or len(name) > MAX_NAME or not name.isprintable():
                    raise ResponderRuleError(f"a name is 1 to {MAX_NAME} printable "
                                             "characters")
                fields = await _responder_fields(site, addr, form)
                if form.get("original"):
                    if form["original"] != name:
                        raise ResponderRuleError("a responder cannot be renamed")
                    await store.update_autoresponder(addr.id, name, **fields)
                else:
                    await store.add_autoresponder(addr.id, name, **fields)
                extra["done"] = f"Responder {name!r} saved."
            elif action == "activate":
                await store.activate_autoresponder(addr.id, name)
                extra["done"] = f"Responder {name!r} is now the active one."
            elif action == "deactivate":
                await store.deactivate_autoresponder(addr.id, name)
                extra["done"] = f"Responder {name!r} is off."
            elif action == "remove":
                await store.remove_autoresponder(addr.id, name)
                extra["done"] = f"Responder {name!r} removed."
            elif action == "reset":
                await store.reset_autoreply_throttle(addr.id)
                extra["done"] = ("Every sender may get a reply again (the 7-day counters "
                                 "were reset).")
            else:
                raise ResponderRuleError("unknown action")
            await store.log_activity(f"autoresponder_{action}", address=addr.email,
                                     client_ip=visit.client_ip, protocol="web",
                                     detail=f"{name}; by {visit.user.login}")
        except (ResponderRuleError, NotFound, AlreadyExists) as exc:
            status = 404 if isinstance(exc, NotFound) else (
                409 if isinstance(exc, AlreadyExists) else 400)
            extra["message"] = f"Nothing changed: {exc}."
            if action == "save":  # keep what was typed
                values = {**_responder_form(None), **{k: form.get(k, "") for k in (
                    "name", "subject", "body", "html", "start", "end", "timezone",
                    "from_address", "exclusions")},
                    "days": {i for i, d in enumerate(WEEKDAYS) if form.get(f"day_{d}")},
                    "editing": bool(form.get("original"))}
    responders = await store.list_autoresponders(addr.id)
    return site.render("address_autoresponder.html", status, visit=visit, addr=addr,
                       tabs=_tabs(perms), responders=responders, f=values,
                       weekdays=WEEKDAYS, show_when=show_when, **extra)


# --- activity ---------------------------------------------------------------------------


async def activity(site: AccountSite, request: web.Request, visit: Visit, email: str,
                   form: dict[str, str]) -> web.StreamResponse:
    addr, perms = await _granted(site, visit, email, "activity")
    if request.method == "POST":
        return site.refuse(visit, "Nothing to change here.", 405)
    entries = await site.store.list_activity(addr.email, limit=100)
    return site.render("address_activity.html", visit=visit, addr=addr, tabs=_tabs(perms),
                       entries=entries)


PAGES: dict[str, AddressPage] = {
    "": overview,
    "password": password,
    "app-passwords": app_passwords,
    "autoresponder": autoresponder,
    "activity": activity,
}
