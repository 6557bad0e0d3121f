"""Change events the store publishes after each commit.

Invariant: commit first, then publish (a subscriber that reacts by reading the store
always sees the change). Publishing never blocks: each subscriber has an unbounded
queue it drains at its own pace; a subscriber that fell behind simply reads the store.

Subscriptions are keyed by address id (an IMAP session selects folders of one
address; POP3 and credential changes are per address too).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    address_id: int


@dataclass(frozen=True)
class MessagesAdded(Event):
    folder_id: int
    uids: tuple[int, ...]


@dataclass(frozen=True)
class FlagsChanged(Event):
    folder_id: int
    uids: tuple[int, ...]
    modseq: int


@dataclass(frozen=True)
class MessagesExpunged(Event):
    folder_id: int
    uids: tuple[int, ...]
    modseq: int


@dataclass(frozen=True)
class FolderChanged(Event):
    """A folder was created, renamed or deleted."""

    folder_id: int
    kind: str  # created | renamed | deleted | subscribed (subscription changed)


@dataclass(frozen=True)
class CredentialsChanged(Event):
    """The address's password or app passwords changed: sessions must re-check."""

    epoch: int


@dataclass(frozen=True)
class AddressDeleted(Event):
    pass


@dataclass(frozen=True)
class CredentialRevoked(Event):
    """One credential of the address stopped working without the others changing: an
    app password was revoked (``app_password_id``), or the address was set to accept
    app passwords only (``app_password_id`` 0: the main password). Only the sessions
    that logged in with that credential end (docs/behaviour.md §2)."""

    app_password_id: int


@dataclass(frozen=True)
class SendersChanged(Event):
    """What the login ``address_id`` may send as changed (a grant with ``send`` of the
    user whose login is this address): SMTP sessions read it again."""


@dataclass(frozen=True)
class AutorespondersChanged(Event):
    """A responder of the address was created, changed, (de)activated or removed:
    processes drop their cached list of who has an active responder."""


@dataclass(frozen=True)
class Resync(Event):
    """Events may have been missed (the cross-node channel was down for a while):
    every session must treat what it holds as possibly stale, re-check the credential
    epoch and re-read its mailbox view. Local only, sent to every subscription
    (``address_id`` is 0)."""


@dataclass(eq=False)  # hashable by identity: kept in sets
class Subscription:
    address_id: int
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    _hub: EventHub | None = None

    def close(self) -> None:
        if self._hub is not None:
            self._hub.unsubscribe(self)
            self._hub = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    def __init__(self) -> None:
        self._subs: dict[int, set[Subscription]] = defaultdict(set)

    def subscribe(self, address_id: int) -> Subscription:
        sub = Subscription(address_id, _hub=self)
        self._subs[address_id].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.address_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.address_id]

    def publish(self, event: Event) -> None:
        for sub in list(self._subs.get(event.address_id, ())):
            sub.queue.put_nowait(event)

    def publish_all(self, event: Event) -> None:
        """Give ``event`` to every subscription, whatever its address (``Resync``)."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.queue.put_nowait(event)

    def subscriber_count(self, address_id: int) -> int:
        return len(self._subs.get(address_id, ()))


# --- across nodes (PostgreSQL LISTEN/NOTIFY) ---------------------------------------

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls for cls in (MessagesAdded, FlagsChanged, MessagesExpunged,
                                  FolderChanged, CredentialsChanged, AddressDeleted,
                                  CredentialRevoked, SendersChanged, AutorespondersChanged)
}


def encode_event(node: str, event: Event) -> str:
    """JSON payload for pg_notify (limit 8000 bytes: long UID lists are cut to the
    first 500, receivers then re-read the folder, which they do anyway)."""
    import dataclasses
    import json

    body = dataclasses.asdict(event)
    if "uids" in body and len(body["uids"]) > 500:
        body["uids"] = body["uids"][:500]
    return json.dumps({"node": node, "type": type(event).__name__, "body": body})


def decode_event(payload: str) -> tuple[str, Event] | None:
    import json

    try:
        data = json.loads(payload)
        cls = EVENT_TYPES[data["type"]]
        body = data["body"]
        if "uids" in body:
            body["uids"] = tuple(body["uids"])
        return str(data["node"]), cls(**body)
    except (ValueError, KeyError, TypeError):
        return None
