"""What a user may do with an address it was granted (docs/behaviour.md §2): the one
place that decides. Every web page and action asks ``allowed`` before it reads or
changes anything; a refusal is answered 403 and changes nothing.

Permissions of a grant:
- ``read``: see the address's settings and its activity log;
- ``passwd``: change the address's password, manage its app passwords and the
  app-passwords-only switch;
- ``autoresponder``: manage its out-of-office responders;
- ``send``: send as the address (checked by submission, policy/envelope.py).

Unification (docs/behaviour.md §2): offered only when the user's login equals the address, that
user is the only one with access to it, and holds ``passwd``. Never implicit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PERMISSIONS = ("read", "passwd", "autoresponder", "send")


# action (a page or a form) -> the permission it needs
REQUIRED: dict[str, str] = {
    "view": "read",
    "activity": "read",
    "password": "passwd",
    "app-passwords": "passwd",
    "app-only": "passwd",
    "autoresponder": "autoresponder",
    "send": "send",
}


def allowed(permissions: Iterable[str] | None, action: str) -> bool:
    """May a user holding ``permissions`` on an address (None: no grant) do
    ``action`` (a key of ``REQUIRED``)? Unknown actions are refused."""
    if permissions is None:
        return False
    need = REQUIRED.get(action)
    return need is not None and need in set(permissions)


@dataclass(frozen=True)
class UnifyVerdict:
    allowed: bool
    reason: str = ""


def unification(login: str, address: str, user_id: int,
                grantees: Iterable[tuple[int, Iterable[str]]]) -> UnifyVerdict:
    """May the user ``login`` (id ``user_id``) unify its password with ``address``,
    whose grants are ``grantees`` (``(user_id, permissions)``)? docs/behaviour.md §2."""
    everyone = list(grantees)
    if login.strip().lower() != address.strip().lower():
        return UnifyVerdict(False, "your login is not this address")
    mine = [set(p) for uid, p in everyone if uid == user_id]
    if not mine:
        return UnifyVerdict(False, "you have no access to this address")
    if len(everyone) != 1:
        return UnifyVerdict(False, "other users also have access to this address")
    if "passwd" not in mine[0]:
        return UnifyVerdict(False, "you may not change this address's password")
    return UnifyVerdict(True)
