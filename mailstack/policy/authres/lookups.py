"""DNS for the sender checks of one message: one resolver, one time budget, one cache.

Invariants:
- Every query goes through the injected resolver (``DnsResolver``: the same
  ``SecureResolver`` outbound uses, asking the configured resolver only); this module
  opens no socket itself.
- One ``Lookups`` object per message. All its queries share a deadline (the per-message
  budget, ``[sender_auth] dns_budget_seconds``): a query still unanswered when the
  budget is spent counts as a DNS failure (a temperror to SPF, DKIM and DMARC; RFC 7208
  §4.6.4 asks for such a bound), never as "no record".
- The same (name, type) asked twice in one message (SPF and DMARC both reading the
  same TXT, an MX host asked by two mechanisms) is sent once; concurrent askers share
  the one query.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Status = Literal["records", "nodata", "nxdomain", "failure"]


class DnsAnswerLike(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def rdata(self) -> tuple[object, ...]: ...


class DnsResolver(Protocol):
    """What the checks need from a resolver (``outbound.dnssec.SecureResolver``)."""

    async def query(self, name: str, rdtype: str) -> Any: ...


@dataclass(frozen=True)
class Answer:
    status: Status
    rdata: tuple[Any, ...] = ()
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failure"

    @property
    def void(self) -> bool:
        """No records: RFC 7208 §4.6.4 counts these as void lookups."""
        return self.status in ("nodata", "nxdomain")

    def texts(self) -> list[str]:
        """TXT records, each one's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        out = []
        for r in self.rdata:
            strings: Sequence[bytes] = getattr(r, "strings", ())
            out.append(b"".join(strings).decode("utf-8", "replace"))
        return out

    def raw_texts(self) -> list[bytes]:
        return [b"".join(getattr(r, "strings", ())) for r in self.rdata]


class CachingResolver:
    """A process-wide cache in front of the resolver for the sender checks: the same
    SPF, DMARC, key and PTR records are asked for message after message from the same
    senders, and each query costs the event loop a socket and a parse. Answers are kept
    for their TTL (at most ``max_ttl``; negative answers ``negative_ttl``); failures
    are never kept. Concurrent askers of one name share one query. Bounded in size
    (oldest entries dropped first)."""

    def __init__(self, resolver: DnsResolver, *, max_entries: int = 10_000,
                 max_ttl: float = 300.0, negative_ttl: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.resolver = resolver
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.monotonic = monotonic
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def query(self, name: str, rdtype: str) -> Any:
        key = (name.rstrip(".").lower(), rdtype.upper())
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > self.monotonic():
                return hit[1]
            del self._cache[key]
        task = self._pending.get(key)
        if task is None:
            # its own task: an asker that gives up (budget spent) does not cancel the
            # query for the others waiting on it
            task = asyncio.ensure_future(self._fetch(key))
            self._pending[key] = task
        return await asyncio.shield(task)

    async def _fetch(self, key: tuple[str, str]) -> Any:
        try:
            ans = await self.resolver.query(*key)
        except Exception as exc:
            return Answer("failure", detail=f"{type(exc).__name__}: {exc}")
        finally:
            self._pending.pop(key, None)
        status = getattr(ans, "status", "failure")
        if status == "records":
            ttl = min(float(getattr(ans, "ttl", 0) or self.negative_ttl), self.max_ttl)
        elif status in ("nodata", "nxdomain"):
            ttl = self.negative_ttl
        else:
            return ans  # failures are never kept
        if len(self._cache) >= self.max_entries:
            for old in list(self._cache)[: max(1, self.max_entries // 10)]:
                del self._cache[old]
        self._cache[key] = (self.monotonic() + ttl, ans)
        return ans


class Lookups:
    def __init__(self, resolver: DnsResolver, budget: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.resolver = resolver
        self.monotonic = monotonic
        self.deadline = monotonic() + budget
        self._cache: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        self.queries = 0

    def remaining(self) -> float:
        return self.deadline - self.monotonic()

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (name.rstrip(".").lower(), rdtype.upper())
        fut = self._cache.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._ask(*key))
            self._cache[key] = fut
        return await asyncio.shield(fut)

    async def _ask(self, name: str, rdtype: str) -> Answer:
        left = self.remaining()
        if left <= 0:
            return Answer("failure", detail="DNS time budget spent")
        self.queries += 1
        try:
            ans = await asyncio.wait_for(self.resolver.query(name, rdtype), left)
        except TimeoutError:
            return Answer("failure", detail="DNS time budget spent")
        except Exception as exc:  # a malformed name, a resolver bug: a DNS failure
            return Answer("failure", detail=f"{type(exc).__name__}: {exc}")
        status: Status = "failure"
        if ans.status in ("records", "nodata", "nxdomain"):
            status = ans.status
        return Answer(status, tuple(ans.rdata) if status == "records" else (),
                      getattr(ans, "detail", ""))

    def close(self) -> None:
        """Cancel queries nobody waits for any more (budget spent, check done)."""
        for fut in self._cache.values():
            if not fut.done():
                fut.cancel()
