"""Routing (RFC 5321 §5.1 MX order and implicit MX, RFC 7505 null MX, transport map)
and the retry/outcome decisions (RFC 5321 §4.5.4.1), without I/O."""

from __future__ import annotations

import random

import pytest

from mailstack.config import TransportRoute
from mailstack.outbound.decide import AttemptResult, Schedule, decide
from mailstack.outbound.hostport import parse_host_port
from mailstack.outbound.routing import (
    DnsNoDomain,
    DnsTemporary,
    MxAnswer,
    Route,
    RouteFailure,
    resolve_route,
    route_from_mx,
)
from mailstack.store.queue import QueueRow


def test_mx_order_and_equal_preference_shuffle() -> None:
    answer = MxAnswer(((20, "c.example"), (10, "b.example"), (10, "a.example")))
    seen = set()
    for seed in range(30):
        route = route_from_mx("d.example", answer, random.Random(seed))
        assert isinstance(route, Route)
        hosts = [h.host for h in route.hops]
        assert hosts[2] == "c.example" and set(hosts[:2]) == {"a.example", "b.example"}
        seen.add(tuple(hosts[:2]))
    assert len(seen) == 2  # both orders happen


def test_implicit_and_null_mx() -> None:
    route = route_from_mx("d.example", MxAnswer(()), random.Random(0))
    assert isinstance(route, Route) and route.implicit
    assert [h.host for h in route.hops] == ["d.example"]
    null = route_from_mx("d.example", MxAnswer(((0, ""),)), random.Random(0))
    assert isinstance(null, RouteFailure) and null.permanent and null.status == "5.1.10"


class Dns:
    def __init__(self, result: MxAnswer | Exception) -> None:
        self.result = result

    async def mx(self, domain: str) -> MxAnswer:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    async def addresses(self, host: str) -> list[str]:
        return []


async def test_nxdomain_bounces_servfail_defers_transport_wins() -> None:
    nx = await resolve_route("d.example", {}, Dns(DnsNoDomain("x")), random.Random(0))
    assert isinstance(nx, RouteFailure) and nx.permanent and nx.status == "5.1.2"
    tmp = await resolve_route("d.example", {}, Dns(DnsTemporary("x")), random.Random(0))
    assert isinstance(tmp, RouteFailure) and not tmp.permanent
    smart = {"*": TransportRoute(host="[::1]:2525", auth_user="u", auth_password_file="f")}
    route = await resolve_route("d.example", smart, Dns(DnsNoDomain("x")), random.Random(0))
    assert isinstance(route, Route) and route.hops[0].host == "::1"
    assert route.hops[0].port == 2525 and route.require_tls and route.auth_user == "u"


@pytest.mark.parametrize("text,expected", [
    ("mx.example", ("mx.example", 25)), ("MX.example.:2525", ("mx.example", 2525)),
    ("[::1]:26", ("::1", 26)), ("127.0.0.1:1", ("127.0.0.1", 1))])
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["", "::1:25", "h:0", "h:x", "a b:25", "[::1"])
def test_host_port_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def row(**kw: object) -> QueueRow:
    base: dict[str, object] = dict(
        id=1, created_at=0.0, sender="a@x.example", recipient="b@y.example",
        domain="y.example", blob_id="0" * 64, prefix=b"", size=10, next_attempt_at=0.0,
        attempts=0, last_error="", expires_at=5 * 86400.0, delay_notified=False,
        dsn_ret="", dsn_envid="", dsn_notify="", dsn_orcpt="", state="queued",
        claimed_by="n", lease_until=1.0, finished_at=0.0, history=(), status="",
        remote_mta="", report_action="")
    base.update(kw)
    return QueueRow(**base)  # type: ignore[arg-type]


SCHEDULE = Schedule((300.0, 600.0, 1200.0, 2400.0), 3600.0, 4 * 3600.0)


def test_schedule() -> None:
    rand = random.Random(1)
    assert [SCHEDULE.next_attempt(n, 0.0, rand) for n in (1, 2, 3, 4)] == [
        300.0, 600.0, 1200.0, 2400.0]
    later = [SCHEDULE.next_attempt(5, 0.0, rand) for _ in range(50)]
    assert all(3600 <= x <= 4 * 3600 for x in later) and len(set(later)) > 1


def test_decisions() -> None:
    rand = random.Random(0)
    ok = AttemptResult(250, "2.0.0", "250 ok", remote_mta="mx")
    assert decide(row(), ok, now=1.0, schedule=SCHEDULE, rand=rand).report_action == ""
    relayed = decide(row(dsn_notify="SUCCESS"), ok, now=1.0, schedule=SCHEDULE, rand=rand)
    assert relayed.state == "delivered" and relayed.report_action == "relayed"
    with_dsn = AttemptResult(250, "2.0.0", "250 ok", dsn_relayed=True)
    assert decide(row(dsn_notify="SUCCESS"), with_dsn, now=1.0, schedule=SCHEDULE,
                  rand=rand).report_action == ""
    bad = AttemptResult(550, "5.1.1", "550 no")
    failed = decide(row(), bad, now=1.0, schedule=SCHEDULE, rand=rand)
    assert failed.state == "failed" and failed.report_action == "failed"
    assert decide(row(sender=""), bad, now=1.0, schedule=SCHEDULE,
                  rand=rand).report_action == ""  # never a report about a report
    assert decide(row(dsn_notify="NEVER"), bad, now=1.0, schedule=SCHEDULE,
                  rand=rand).report_action == ""
    tmp = AttemptResult(451, "4.3.0", "451 later")
    waiting = decide(row(), tmp, now=1.0, schedule=SCHEDULE, rand=rand)
    assert waiting.state == "queued" and waiting.next_attempt_at == 301.0
    last = decide(row(expires_at=200.0), tmp, now=1.0, schedule=SCHEDULE, rand=rand)
    assert last.state == "queued" and last.next_attempt_at == 200.0  # at the deadline
    expired = decide(row(expires_at=200.0), tmp, now=200.0, schedule=SCHEDULE, rand=rand)
    assert expired.state == "expired" and expired.report_action == "failed"
    dns = AttemptResult(0, "5.1.10", "null MX", permanent=True)
    assert decide(row(), dns, now=1.0, schedule=SCHEDULE, rand=rand).state == "failed"


@pytest.mark.parametrize("outbound,key,fragment", [
    ({"transport": {"x.example": "a b:25"}}, "outbound.transport.x.example.host",
     "host:port"),
    ({"transport": {"x.example": "h:99999"}}, "outbound.transport.x.example.host", "port"),
    ({"transport": {"a@b": "h:25"}}, "outbound.transport.a@b", "domain"),
    ({"transport": {"*": {"host": "h:25", "auth_user": "u"}}},
     "outbound.transport.*.auth_password_file", "needed"),
    ({"transport": {"*": {"hots": "h:25"}}}, "outbound.transport.*.hots", "unknown"),
    ({"retry_schedule_minutes": "5,x"}, "outbound.retry_schedule_minutes", "positive"),
    ({"retry_min_hours": 5.0}, "outbound.retry_max_hours", "at least"),
])
def test_outbound_config_errors(outbound: dict, key: str, fragment: str) -> None:
    from mailstack.config import ConfigError, settings_from_dict

    with pytest.raises(ConfigError) as err:
        settings_from_dict({"outbound": outbound})
    assert err.value.key == key and fragment in str(err.value)


def test_outbound_config_transport_forms() -> None:
    from mailstack.config import settings_from_dict

    s = settings_from_dict({"outbound": {"transport": {
        "Partner.Example.": "mx.partner.example:2525",
        "*": {"host": "smtp.provider.example:587", "auth_user": "me",
              "auth_password_file": "/etc/pw"}}}})
    t = s.outbound.transport
    assert t["partner.example"].host == "mx.partner.example:2525"
    assert t["*"].auth_user == "me" and not t["*"].require_tls  # forced by routing
    assert s.outbound.retry_schedule() == (300.0, 600.0, 1200.0, 2400.0)
