"""The store seen through the narrow interfaces the policy asks for.

``StoreDirectory`` implements ``mailstack.policy.relay.Directory`` over the Store (the
policy never sees SQL). ``allowed_senders`` lists what a login may send as (docs/behaviour.md §4):
the address itself, aliases pointing to it, and addresses granted to a user whose
login is this address with the ``send`` permission.
"""

from __future__ import annotations

from ..policy.relay import AddressFacts, AliasFacts
from ..store import Address, Domain, Store


class StoreDirectory:
    """``relay.Directory`` over the store, with a per-transaction domain cache: one
    directory lives as long as one mail transaction (its envelope), so every RCPT of a
    transaction looks a domain or an address up once, and the RCPT size check
    (``domain``) reuses the record routing fetched. ``prefetch`` gets a RCPT's domain,
    its address and that address's storage counter in one statement (the quota check
    of the same RCPT reads the counter from here, fetched at that moment)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._domains: dict[str, Domain | None] = {}
        self._addresses: dict[str, Address | None] = {}
        self._usage: dict[int, tuple[int, int]] = {}  # address id -> (octets, messages)

    async def prefetch(self, domain: str, key: str) -> None:
        """Fetch the domain and the address a RCPT names in one read (the two
        look-ups ``route_recipient`` starts with)."""
        if domain in self._domains and key in self._addresses:
            return
        found_domain, found_address, usage = await self.store.rcpt_facts(domain, key)
        self._domains[domain] = found_domain
        if found_domain is not None and (found_address is not None
                                         or key.rpartition("@")[2] == found_domain.name):
            self._addresses[key] = found_address
        if found_address is not None:
            self._usage[found_address.id] = usage

    async def quota_usage(self, address_id: int) -> tuple[int, int]:
        """(octets, messages) the address keeps: as read by ``prefetch`` in this
        transaction, else from the store (an alias's or forward's target)."""
        if address_id not in self._usage:
            self._usage[address_id] = await self.store.quota_usage(address_id)
        return self._usage[address_id]

    async def domain(self, name: str, /) -> Domain | None:
        if name not in self._domains:
            self._domains[name] = await self.store.get_domain(name)
        return self._domains[name]

    async def domain_exists(self, domain: str, /) -> bool:
        return await self.domain(domain) is not None

    async def get_address(self, key: str, /) -> AddressFacts | None:
        if key not in self._addresses:
            self._addresses[key] = await self.store.get_address(key)
        return self._addresses[key]

    async def get_alias(self, key: str, /) -> AliasFacts | None:
        return await self.store.get_alias(key)

    async def catchall_for(self, domain: str, /) -> AddressFacts | None:
        return await self.store.catchall_for(domain)


async def allowed_senders(store: Store, email: str) -> tuple[str, ...]:
    found = [email]
    found += [a.key for a in await store.aliases_pointing_to(email)]
    found += await store.addresses_granted_to(email, "send")
    return tuple(dict.fromkeys(found))


async def postmaster_domain(store: Store, hostname: str) -> str | None:
    """The domain whose postmaster receives ``RCPT TO:<Postmaster>`` (RFC 5321
    §4.1.1.3): the server's host name if hosted, else its parent domain, else the first
    hosted domain; None when nothing is hosted."""
    host = hostname.lower().rstrip(".")
    for candidate in (host, host.partition(".")[2]):
        if candidate and await store.get_domain(candidate) is not None:
            return candidate
    domains = await store.list_domains()
    return domains[0].name if domains else None
