"""Process metrics for operators (docs/behaviour.md §10), in Prometheus form.

Front-ends and the store call the small functions here (one line at each place that
counts); ``mailstack.web`` serves ``REGISTRY`` at ``/metrics``. Other parts (the outbound
queue runner) add gauges computed at scrape time with ``register_gauge`` and count with
``delivery``.

Invariants:
- No address, user name, IP address or secret ever becomes a label value: labels are
  drawn from small fixed sets (protocol names, outcomes, reply classes). An unexpected
  value is folded into "other", so a client cannot grow the label space.
- Counting never raises into the caller and never blocks the event loop.
- One registry per process (``REGISTRY``); several apps in one process (tests) share the
  counters, and each app registers and removes its own gauge callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("mailstack.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

PROTOCOLS = frozenset({"smtp", "submission", "imap", "pop3", "http", "https"})
LOGIN_OUTCOMES = {"ok": "ok", "failed": "failed", "refused": "throttled"}
DELIVERY_OUTCOMES = frozenset({"delivered", "deferred", "bounced", "failed"})


def _protocol(name: str) -> str:
    name = name.lower()
    if name in PROTOCOLS:
        return name
    # listener names: submissions -> submission, imaps -> imap, pop3s -> pop3
    if name.endswith("s") and name[:-1] in PROTOCOLS:
        return name[:-1]
    return "other"


CONNECTIONS = Counter("mailstack_connections", "Connections accepted, by listener protocol.",
                      ["protocol"], registry=REGISTRY)
SESSIONS = Gauge("mailstack_sessions", "Sessions open now, by protocol.", ["protocol"],
                 registry=REGISTRY)
LOGINS = Counter("mailstack_logins", "Login attempts by protocol and outcome "
                 "(ok, failed, throttled).", ["protocol", "outcome"], registry=REGISTRY)
SMTP_REPLIES = Counter("mailstack_smtp_replies", "SMTP replies sent, by code class "
                       "(2xx, 3xx, 4xx, 5xx).", ["class"], registry=REGISTRY)
MESSAGES_ACCEPTED = Counter("mailstack_messages_accepted", "Messages accepted by SMTP "
                            "(after the store committed them).", registry=REGISTRY)
MESSAGE_BYTES = Counter("mailstack_message_bytes_accepted", "Octets of accepted messages.",
                        registry=REGISTRY)
DELIVERIES = Counter("mailstack_deliveries", "Outbound delivery attempts by outcome.",
                     ["outcome"], registry=REGISTRY)
STORE_TX = Histogram("mailstack_store_transaction_seconds", "Duration of store write "
                     "transactions (including waiting for the writer lock on SQLite).",
                     buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                     registry=REGISTRY)
LOOP_LAG = Gauge("mailstack_event_loop_lag_seconds", "How late the event loop ran a timer "
                 "at the last check (a blocked loop shows here).", registry=REGISTRY)
LOOP_LAG_MAX = Gauge("mailstack_event_loop_lag_max_seconds", "The largest event-loop lag "
                     "seen since start.", registry=REGISTRY)
CERT_EXPIRY = Gauge("mailstack_tls_certificate_expiry_timestamp_seconds", "When the "
                    "served certificate expires (Unix time).", registry=REGISTRY)


# --- counting: one call at each place that counts ------------------------------------


def connection_opened(protocol: str) -> None:
    p = _protocol(protocol)
    CONNECTIONS.labels(p).inc()
    SESSIONS.labels(p).inc()


def connection_closed(protocol: str) -> None:
    SESSIONS.labels(_protocol(protocol)).dec()


def login(protocol: str, status: str) -> None:
    """``status`` is ``AuthResult.status``: ok, failed or refused (throttled)."""
    LOGINS.labels(_protocol(protocol), LOGIN_OUTCOMES.get(status, "other")).inc()


def smtp_reply(status: object) -> None:
    """Count one SMTP reply by its first digit (anything else is not counted)."""
    if isinstance(status, bytes):
        status = status.decode("ascii", "replace")
    if isinstance(status, str) and status[:1] in ("2", "3", "4", "5"):
        SMTP_REPLIES.labels(f"{status[0]}xx").inc()


def message_accepted(octets: int) -> None:
    MESSAGES_ACCEPTED.inc()
    MESSAGE_BYTES.inc(octets)


def delivery(outcome: str) -> None:
    """For the outbound queue runner: one attempt's outcome (delivered, deferred,
    bounced, failed)."""
    DELIVERIES.labels(outcome if outcome in DELIVERY_OUTCOMES else "other").inc()


@contextlib.contextmanager
def store_transaction() -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        STORE_TX.observe(time.perf_counter() - t0)


def observe_store_transaction(seconds: float) -> None:
    STORE_TX.observe(seconds)


# --- gauges computed at scrape time ----------------------------------------------------

GaugeCallback = Callable[[], float | None]


class _CallbackGauges(Collector):
    """Gauges whose value a callback computes when scraped. Callbacks must be quick and
    non-blocking (return a cached number); one returning None or raising is skipped."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, GaugeCallback]] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (doc, fn) in sorted(self.gauges.items()):
            try:
                value = fn()
            except Exception:
                log.exception("metrics: gauge %s failed", name)
                continue
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


_CALLBACKS = _CallbackGauges()
REGISTRY.register(_CALLBACKS)


def register_gauge(name: str, doc: str, fn: GaugeCallback) -> Callable[[], None]:
    """Add a gauge ``name`` whose value ``fn()`` gives at each scrape (e.g. the outbound
    queue's size and oldest age). Returns a function that removes it again. A later
    registration of the same name replaces the earlier one."""
    if not name.startswith("mailstack_"):
        name = "mailstack_" + name
    entry = (doc, fn)
    _CALLBACKS.gauges[name] = entry

    def remove() -> None:
        if _CALLBACKS.gauges.get(name) is entry:
            del _CALLBACKS.gauges[name]

    return remove


# --- event-loop lag ------------------------------------------------------------------


async def watch_loop_lag(interval: float = 0.5,
                         clock: Callable[[], float] = time.monotonic) -> None:
    """Run forever: sleep ``interval`` and record how much later than asked we woke."""
    worst = 0.0
    while True:
        t0 = clock()
        await asyncio.sleep(interval)
        lag = max(0.0, clock() - t0 - interval)
        LOOP_LAG.set(lag)
        if lag > worst:
            worst = lag
            LOOP_LAG_MAX.set(lag)
