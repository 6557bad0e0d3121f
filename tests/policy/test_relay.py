"""Recipient routing and sender checks (docs/behaviour.md §4, §5) over an in-memory Directory."""

from __future__ import annotations

import pytest

from mailstack.policy.envelope import AddressError, parse_mail_from, parse_rcpt_to
from mailstack.policy.relay import (
    AddressInfo,
    AliasInfo,
    Directory,
    RcptVerdict,
    check_envelope_sender,
    check_header_senders,
    merge_destinations,
    route_recipient,
)

HOSTED = "hosted.example"
OTHER = "other.example"  # hosted, no catchall


class MemoryDirectory:
    """In-memory Directory: the test double the policy is written against."""

    def __init__(
        self, domains: set[str], addresses: list[AddressInfo], aliases: list[AliasInfo]
    ) -> None:
        self.domains = domains
        self.addresses = {a.key: a for a in addresses}
        self.aliases = {a.key: a for a in aliases}
        self.calls = 0

    async def domain_exists(self, domain: str, /) -> bool:
        self.calls += 1
        return domain in self.domains

    async def get_address(self, key: str, /) -> AddressInfo | None:
        self.calls += 1
        return self.addresses.get(key)

    async def get_alias(self, key: str, /) -> AliasInfo | None:
        self.calls += 1
        return self.aliases.get(key)

    async def catchall_for(self, domain: str, /) -> AddressInfo | None:
        self.calls += 1
        for a in self.addresses.values():
            if a.kind == "catchall" and a.key.endswith("@" + domain):
                return a
        return None


def make_directory() -> MemoryDirectory:
    return MemoryDirectory(
        {HOSTED, OTHER, "xn--bcher-kva.example"},
        [
            AddressInfo("anna@hosted.example"),
            AddressInfo("bob@hosted.example"),
            AddressInfo("noreply@hosted.example", kind="no-reply"),
            AddressInfo("all@hosted.example", kind="catchall"),
            AddressInfo("fwd@hosted.example", forward_to=("far@remote.example",), keep_copy=False),
            AddressInfo(
                "fwdkeep@hosted.example",
                forward_to=("Far@Remote.example", "bob@hosted.example"),
                keep_copy=True,
            ),
            AddressInfo("carl@other.example"),
            AddressInfo("user@xn--bcher-kva.example"),
        ],
        [
            AliasInfo(
                "team@hosted.example",
                (
                    "anna@hosted.example",
                    "Bob@Hosted.Example",
                    "anna@hosted.example",
                    "x@remote.example",
                ),
            ),
            AliasInfo("nested@hosted.example", ("team@hosted.example", "carl@other.example")),
            AliasInfo("loop1@other.example", ("loop2@other.example", "carl@other.example")),
            AliasInfo("loop2@other.example", ("loop1@other.example",)),
            AliasInfo("selfloop@other.example", ("selfloop@other.example",)),
            AliasInfo(
                "dead@other.example",
                ("gone@other.example", "noreply@hosted.example", "not an address", "x@[10.0.0.1]"),
            ),
            AliasInfo("toliteral@other.example", ("x@[10.0.0.1]",)),
            AliasInfo("chain0@other.example", ("chain1@other.example",)),
            *[
                AliasInfo(f"chain{i}@other.example", (f"chain{i + 1}@other.example",))
                for i in range(1, 20)
            ],
            AliasInfo("chain20@other.example", ("carl@other.example",)),
            AliasInfo("big@other.example", tuple(f"r{i}@remote.example" for i in range(50))),
        ],
    )


def _directory_is_a_directory() -> Directory:
    return make_directory()  # mypy: MemoryDirectory satisfies the protocol


async def route(arg: str, authenticated: bool = False, **kw: int) -> RcptVerdict:
    rcpt = parse_rcpt_to(arg, smtputf8=True).recipient
    return await route_recipient(rcpt, authenticated, make_directory(), **kw)


# --- open relay: every spelling from docs/behaviour.md §12, unauthenticated --------------------

RELAY_TABLE = [
    # (RCPT argument, expected: "refused" or the tuple of final mailboxes)
    ("<user%evil.com@hosted.example>", ("all@hosted.example",)),  # catchall, local
    ("<user%evil.com@other.example>", "550 5.1.1"),
    ("<evil.com!user@other.example>", "550 5.1.1"),
    ("<evil.com!user@hosted.example>", ("all@hosted.example",)),
    ("<@hosted.example:user@evil.com>", "550 5.7.1"),
    ("<@evil.com:anna@hosted.example>", ("anna@hosted.example",)),
    ("<@hosted.example,@other.example:victim@evil.com>", "550 5.7.1"),
    ('<"victim@evil.com"@other.example>', "550 5.1.1"),
    ('<"victim@evil.com"@hosted.example>', ("all@hosted.example",)),
    ('<"anna"@hosted.example>', ("anna@hosted.example",)),
    ("<victim@[1.2.3.4]>", "550 5.7.1"),
    ("<victim@[IPv6:::1]>", "550 5.7.1"),
    ("<victim@[127.0.0.1]>", "550 5.7.1"),
    ("<anna@HOSTED.EXAMPLE>", ("anna@hosted.example",)),
    ("<ANNA@Hosted.Example>", ("anna@hosted.example",)),
    ("<user@bücher.example>", ("user@xn--bcher-kva.example",)),
    ("<user@BÜCHER.example>", ("user@xn--bcher-kva.example",)),
    ("<victim@evil.com>", "550 5.7.1"),
    ("<victim@hosted.example.evil.com>", "550 5.7.1"),
    ("<victim@evil-hosted.example>", "550 5.7.1"),
    ("<victim@sub.hosted.example>", "550 5.7.1"),
    ("victim@evil.com", "550 5.7.1"),  # no brackets
    ("<postmaster@evil.com>", "550 5.7.1"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("arg", "expected"), RELAY_TABLE)
async def test_no_open_relay(arg: str, expected: str | tuple[str, ...]) -> None:
    v = await route(arg, authenticated=False)
    if isinstance(expected, str):
        assert not v.accepted
        assert f"{v.code} {v.enhanced}" == expected
    else:
        assert v.accepted and v.code == 250
        assert v.mailboxes == expected
    assert v.remote == ()  # nothing is ever queued for the internet without AUTH


REFUSED_BY_PARSER = [
    "<victim@evil.com@hosted.example>",
    "<victim@hosted.example.>",
    "<victim@1.2.3.4>",
    "<@hosted.example:victim>",
    "<victim%hosted.example>",
    "<user@hosted.example\r\n>",
]


@pytest.mark.parametrize("arg", REFUSED_BY_PARSER)
def test_relay_spellings_refused_by_parser(arg: str) -> None:
    with pytest.raises(AddressError):
        parse_rcpt_to(arg, smtputf8=True)


# --- authenticated -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_authenticated_remote_is_queued() -> None:
    v = await route("<Someone@Remote.Example>", authenticated=True)
    assert v.accepted and v.remote == ("Someone@remote.example",) and v.mailboxes == ()


@pytest.mark.asyncio
async def test_authenticated_literal_refused() -> None:
    v = await route("<x@[10.0.0.1]>", authenticated=True)
    assert (v.accepted, v.code, v.enhanced) == (False, 550, "5.7.1")


@pytest.mark.asyncio
async def test_authenticated_unknown_local_is_550_511() -> None:
    v = await route("<nobody@other.example>", authenticated=True)
    assert (v.code, v.enhanced) == (550, "5.1.1")


# --- routing order -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_existing_address() -> None:
    v = await route("<anna@hosted.example>")
    assert v.accepted and v.mailboxes == ("anna@hosted.example",) and not v.via_catchall
    assert v.reply == "250 2.1.5 OK"


@pytest.mark.asyncio
async def test_no_reply_refused_clearly() -> None:
    v = await route("<NoReply@hosted.example>")
    assert (v.accepted, v.code, v.enhanced) == (False, 550, "5.7.1")
    assert "no-reply" in v.text


@pytest.mark.asyncio
async def test_catchall_only_for_missing_addresses() -> None:
    v = await route("<whoever@hosted.example>")
    assert v.accepted and v.mailboxes == ("all@hosted.example",) and v.via_catchall
    v = await route("<all@hosted.example>")  # the catchall address itself
    assert v.mailboxes == ("all@hosted.example",) and not v.via_catchall
    v = await route("<whoever@other.example>")
    assert (v.code, v.enhanced) == (550, "5.1.1")


@pytest.mark.asyncio
async def test_alias_expansion_dedupes_and_mixes_remote() -> None:
    v = await route("<team@hosted.example>")
    assert v.accepted
    assert v.mailboxes == ("anna@hosted.example", "bob@hosted.example")
    assert v.remote == ("x@remote.example",)  # an alias may point outside (not a relay)


@pytest.mark.asyncio
async def test_nested_alias() -> None:
    v = await route("<nested@hosted.example>")
    assert v.mailboxes == ("anna@hosted.example", "bob@hosted.example", "carl@other.example")


@pytest.mark.asyncio
async def test_alias_loops_terminate() -> None:
    v = await route("<loop1@other.example>")
    assert v.accepted and v.mailboxes == ("carl@other.example",)
    v = await route("<selfloop@other.example>")
    assert (v.accepted, v.code, v.enhanced) == (False, 550, "5.1.1")


@pytest.mark.asyncio
async def test_alias_depth_cap() -> None:
    v = await route("<chain0@other.example>")
    assert (v.accepted, v.code, v.enhanced) == (False, 550, "5.4.6")
    v = await route("<chain0@other.example>", max_depth=30)
    assert v.mailboxes == ("carl@other.example",)


@pytest.mark.asyncio
async def test_alias_fan_out_cap() -> None:
    assert (await route("<big@other.example>")).accepted
    v = await route("<big@other.example>", max_destinations=10)
    assert (v.accepted, v.code) == (False, 550)


@pytest.mark.asyncio
async def test_alias_with_only_dead_targets() -> None:
    v = await route("<dead@other.example>")
    assert (v.accepted, v.code, v.enhanced) == (False, 550, "5.1.1")
    v = await route("<toliteral@other.example>")
    assert not v.accepted


@pytest.mark.asyncio
async def test_forwarding_without_copy() -> None:
    v = await route("<fwd@hosted.example>")
    assert v.accepted and v.mailboxes == () and v.remote == ("far@remote.example",)


@pytest.mark.asyncio
async def test_forwarding_with_copy() -> None:
    v = await route("<fwdkeep@hosted.example>")
    assert v.mailboxes == ("fwdkeep@hosted.example", "bob@hosted.example")
    assert v.remote == ("Far@remote.example",)


@pytest.mark.asyncio
async def test_merge_destinations_one_copy_per_mailbox() -> None:
    verdicts = [
        await route(a)
        for a in (
            "<team@hosted.example>",
            "<anna@hosted.example>",
            "<ANNA@hosted.example>",
            "<ghost@hosted.example>",
            "<noreply@hosted.example>",
        )
    ]
    d = merge_destinations(verdicts)
    assert d.mailboxes == ("anna@hosted.example", "bob@hosted.example", "all@hosted.example")
    assert d.remote == ("x@remote.example",)
    assert d.catchall_only == frozenset({"all@hosted.example"})


# --- sender checks -------------------------------------------------------------------

ALLOWED = ["anna@hosted.example", "Team@Hosted.Example", "granted@other.example"]


@pytest.mark.parametrize(
    ("mail_from", "ok"),
    [
        ("<anna@hosted.example>", True),
        ("<ANNA@HOSTED.EXAMPLE>", True),
        ("<team@hosted.example>", True),
        ("<granted@other.example>", True),
        ("<bob@hosted.example>", False),
        ("<anna@evil.example>", False),
        ("<@evil.example:anna@hosted.example>", True),  # route ignored
        ('<"anna"@hosted.example>', True),
        ('<"anna@hosted.example"@evil.example>', False),
    ],
)
def test_envelope_sender(mail_from: str, ok: bool) -> None:
    sender = parse_mail_from(mail_from).sender
    v = check_envelope_sender(sender, ALLOWED)
    assert v.allowed is ok
    if not ok:
        assert (v.code, v.enhanced) == (553, "5.7.1")


def test_null_sender_on_submission() -> None:
    assert check_envelope_sender(None, ALLOWED).allowed
    v = check_envelope_sender(None, ALLOWED, allow_null_sender=False)
    assert (v.allowed, v.code, v.enhanced) == (False, 553, "5.7.1")


@pytest.mark.parametrize(
    ("from_addrs", "code"),
    [
        (["anna@hosted.example"], 250),
        (["Anna@Hosted.Example", "team@hosted.example"], 250),
        (["anna@hosted.example", "bob@hosted.example"], 553),
        (["bob@hosted.example"], 553),
        (["not an address"], 553),
        ([], 550),
    ],
)
def test_header_senders(from_addrs: list[str], code: int) -> None:
    v = check_header_senders(from_addrs, ALLOWED)
    assert v.code == code and v.allowed is (code == 250)
