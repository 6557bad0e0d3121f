"""SPF (RFC 7208): ``check_host()`` over our own async resolver.

Why our own evaluator and not pyspf: pyspf (and ``authheaders``/``checkdmarc``, which
wrap it) does its DNS through a module-global, synchronous lookup function. Using it
would mean patching a global and running each check in a thread that blocks for up to
the whole DNS budget, a thread per message in flight. This module is sans-I/O apart
from ``Lookups`` (the injected resolver with the per-message budget), so all of an
MX's checks run concurrently on the event loop, and every DNS failure is a temperror.

Implemented: every mechanism (all, include, a, mx, ptr, ip4, ip6, exists) and modifier
(redirect, exp; unknown modifiers are ignored, §6), qualifiers, macros (§7, with the
``r`` transformer, digits, delimiters and URL-escaping of upper-case letters), the
10 DNS-mechanism limit and the 2 void-lookup limit (§4.6.4), the MX/PTR per-mechanism
limit of 10 names, domain validation (§4.3) and the ``exp=`` explanation (§6.2).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from .lookups import Answer, Lookups

SpfResult = Literal["none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"]
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
PREFIX = {"pass": "", "fail": "-", "softfail": "~", "neutral": "?"}
MAX_DNS_MECHANISMS = 10  # RFC 7208 §4.6.4
MAX_VOID_LOOKUPS = 2  # RFC 7208 §4.6.4
MAX_NAMES = 10  # RFC 7208 §4.6.4: MX and PTR names looked at per mechanism
DEFAULT_EXPLANATION = "SPF record of %{o} does not designate %{i} as permitted sender"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SpfOutcome:
    result: SpfResult
    domain: str  # the domain checked (the MAIL FROM domain or the HELO name)
    mechanism: str = ""  # the directive that matched
    explanation: str = ""  # for fail: the exp= text (RFC 7208 §6.2) or our default
    problem: str = ""  # why temperror / permerror


class _Perm(Exception):
    pass


class _Temp(Exception):
    """A DNS failure. Its text goes into our header fields, so it never carries the
    resolver's details (addresses of our own infrastructure)."""


@dataclass
class _State:
    ip: Address
    sender: str  # local@domain (postmaster@helo when the sender is empty, §2.4)
    helo: str
    lookups: Lookups
    receiver: str
    dns_terms: int = 0
    void: int = 0
    now: float = 0.0  # for %{t} in explanations

    def count_term(self) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_MECHANISMS:
            raise _Perm(f"more than {MAX_DNS_MECHANISMS} DNS-querying terms (RFC 7208 §4.6.4)")

    async def query(self, name: str, rdtype: str, *, void_counts: bool = True) -> Answer:
        ans = await self.lookups.query(name, rdtype)
        if ans.failed:
            raise _Temp(f"DNS lookup of {name} {rdtype} failed")
        if ans.void and void_counts:
            self.void += 1
            if self.void > MAX_VOID_LOOKUPS:
                raise _Perm(f"more than {MAX_VOID_LOOKUPS} void DNS lookups (RFC 7208 §4.6.4)")
        return ans


def normalize_ip(text: str) -> Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # RFC 7208 §5: an IPv4-mapped client is IPv4
    return ip


def valid_domain(domain: str) -> bool:
    """RFC 7208 §4.3: a fully qualified name of non-empty labels of at most 63 octets."""
    d = domain.rstrip(".")
    if not d or len(d) > 253 or "." not in d:
        return False
    return all(0 < len(label) <= 63 for label in d.split("."))


async def check_host(lookups: Lookups, ip: str, domain: str, sender: str, helo: str,
                     receiver: str, now: float = 0.0) -> SpfOutcome:
    """RFC 7208 §4: the SPF result for ``domain`` with client ``ip``. ``sender`` is the
    MAIL FROM (``postmaster@<helo>`` for the HELO check or an empty MAIL FROM)."""
    domain = domain.rstrip(".").lower()
    if not valid_domain(domain):
        return SpfOutcome("none", domain, problem="not a valid domain name (RFC 7208 §4.3)")
    state = _State(normalize_ip(ip), sender, helo, lookups, receiver, now=now)
    try:
        result, mech, exp = await _check(state, domain, depth=0)
    except _Temp as exc:
        return SpfOutcome("temperror", domain, problem=str(exc))
    except _Perm as exc:
        return SpfOutcome("permerror", domain, problem=str(exc))
    return SpfOutcome(result, domain, mech, exp)


async def _record(state: _State, domain: str) -> str | None:
    """RFC 7208 §4.4-4.5: the one ``v=spf1`` TXT record of ``domain``, or None."""
    ans = await state.lookups.query(domain, "TXT")
    if ans.failed:
        raise _Temp(f"DNS lookup of {domain} TXT failed")
    found = [t for t in ans.texts() if re.match(r"v=spf1(?: |$)", t, re.IGNORECASE)]
    if len(found) > 1:
        raise _Perm(f"{domain} has {len(found)} SPF records (RFC 7208 §4.5)")
    return found[0] if found else None


TERM = re.compile(r"([+\-~?]?)([a-z][a-z0-9_.\-]*)([:/=].*)?$", re.IGNORECASE)


async def _check(state: _State, domain: str, depth: int
                 ) -> tuple[SpfResult, str, str]:
    if depth > MAX_DNS_MECHANISMS:  # an include/redirect loop is stopped by §4.6.4 anyway
        raise _Perm("include/redirect nesting too deep")
    record = await _record(state, domain)
    if record is None:
        return "none", "", ""
    redirect = exp = None
    directives: list[tuple[str, str, str]] = []
    for term in record.split()[1:]:
        m = TERM.match(term)
        if m is None:
            raise _Perm(f"bad term {term!r} in the SPF record of {domain}")
        qual, name, rest = m.group(1), m.group(2).lower(), m.group(3) or ""
        if rest.startswith("="):  # a modifier (§6)
            if qual:
                raise _Perm(f"bad term {term!r} in the SPF record of {domain}")
            if name == "redirect":
                if redirect is not None:
                    raise _Perm("two redirect= modifiers (RFC 7208 §6)")
                redirect = rest[1:]
            elif name == "exp":
                if exp is not None:
                    raise _Perm("two exp= modifiers (RFC 7208 §6)")
                exp = rest[1:]
            else:  # unknown modifiers are ignored, but must be syntactically valid
                _check_macro_syntax(rest[1:])
            continue
        if name not in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"):
            raise _Perm(f"unknown mechanism {name!r} in the SPF record of {domain}")
        directives.append((QUALIFIERS[qual or "+"], name, rest))
    for result, name, arg in directives:
        if await _matches(state, domain, name, arg, depth):
            mech = f"{PREFIX[result]}{name}{arg}"
            explanation = ""
            if result == "fail":
                explanation = await _explain(state, domain, exp)
            return result, mech, explanation  # type: ignore[return-value]
    if redirect is not None:  # §6.1: only when no mechanism matched
        state.count_term()
        target = await _expand_domain(state, redirect, domain)
        if not valid_domain(target):
            raise _Perm(f"redirect= to an invalid name {target!r}")
        result, mech, explanation = await _check(state, target, depth + 1)
        if result == "none":
            raise _Perm(f"redirect= to {target}, which has no SPF record (RFC 7208 §6.1)")
        return result, mech, explanation
    return "neutral", "", ""  # §4.7: no match, no redirect


def _split_cidr(arg: str) -> tuple[str, int | None, int | None]:
    """``:domain/24//64`` -> (domain-spec, 24, 64); missing parts None (RFC 7208 §5.6)."""
    if arg.startswith(":"):
        m = re.match(r"^(.*?)((?:/\d+)?(?://\d+)?)$", arg[1:])
        assert m is not None  # the pattern matches every string
        spec, rest = m.group(1), m.group(2)
        if not spec:
            raise _Perm(f"empty domain-spec in {arg!r}")
    elif not arg or arg.startswith("/"):
        spec, rest = "", arg
    else:
        raise _Perm(f"bad mechanism argument {arg!r}")
    m = re.fullmatch(r"(?:/(\d+))?(?://(\d+))?", rest)
    if m is None:
        raise _Perm(f"bad CIDR length in {arg!r}")
    c4 = int(m.group(1)) if m.group(1) else None
    c6 = int(m.group(2)) if m.group(2) else None
    if (c4 is not None and c4 > 32) or (c6 is not None and c6 > 128):
        raise _Perm(f"bad CIDR length in {arg!r}")
    return spec, c4, c6


def _in_net(ip: Address, addr: str, c4: int | None, c6: int | None) -> bool:
    try:
        other = normalize_ip(addr)
    except ValueError:
        return False
    if ip.version != other.version:
        return False
    length = (c4 if c4 is not None else 32) if ip.version == 4 else (
        c6 if c6 is not None else 128)
    return ip in ipaddress.ip_network(f"{other}/{length}", strict=False)


async def _addresses(state: _State, name: str) -> list[str]:
    rdtype = "A" if state.ip.version == 4 else "AAAA"
    ans = await state.query(name, rdtype)
    return [str(getattr(r, "address", "")) for r in ans.rdata]


async def _matches(state: _State, domain: str, name: str, arg: str, depth: int) -> bool:
    ip = state.ip
    if name == "all":
        if arg:
            raise _Perm("'all' takes no argument")
        return True
    if name in ("ip4", "ip6"):
        if not arg.startswith(":"):
            raise _Perm(f"{name} needs an address")
        net_text = arg[1:]
        try:
            net = ipaddress.ip_network(net_text, strict=False)
        except ValueError as exc:
            raise _Perm(f"bad {name} value {net_text!r}") from exc
        if (name == "ip4") != (net.version == 4):
            raise _Perm(f"bad {name} value {net_text!r}")
        return ip.version == net.version and ip in net
    state.count_term()  # every other mechanism queries DNS (§4.6.4)
    if name == "include":
        if not arg.startswith(":") or len(arg) < 2:
            raise _Perm("include needs a domain")
        target = await _expand_domain(state, arg[1:], domain)
        result, _, _ = await _check(state, target, depth + 1)
        if result == "pass":
            return True
        if result in ("fail", "softfail", "neutral"):
            return False
        if result == "temperror":
            raise _Temp(f"include:{target} gave temperror")
        raise _Perm(f"include:{target} gave {result} (RFC 7208 §5.2)")
    if name == "exists":
        if not arg.startswith(":") or len(arg) < 2:
            raise _Perm("exists needs a domain")
        target = await _expand_domain(state, arg[1:], domain)
        return bool((await state.query(target, "A")).rdata)  # §5.7: always A
    spec, c4, c6 = _split_cidr(arg)
    target = await _expand_domain(state, spec, domain) if spec else domain
    if name == "a":
        return any(_in_net(ip, a, c4, c6) for a in await _addresses(state, target))
    if name == "mx":
        mx = await state.query(target, "MX")
        hosts = [str(getattr(r, "exchange", "")).rstrip(".") for r in mx.rdata]
        if len(hosts) > MAX_NAMES:
            raise _Perm(f"more than {MAX_NAMES} MX names for {target} (RFC 7208 §4.6.4)")
        for host in hosts:
            if host and any(_in_net(ip, a, c4, c6) for a in await _addresses(state, host)):
                return True
        return False
    if name == "ptr":
        if c4 is not None or c6 is not None:
            raise _Perm("ptr takes no CIDR length")
        return any(n == target or n.endswith("." + target)
                   for n in await _validated_names(state, target))
    raise _Perm(f"unknown mechanism {name!r}")  # pragma: no cover - filtered above


async def _validated_names(state: _State, prefer: str = "") -> list[str]:
    """RFC 7208 §5.5: PTR names of the client whose address records include it
    (at most 10 names looked at). A PTR lookup failure is no match, not an error."""
    ans = await state.lookups.query(_reverse_name(state.ip), "PTR")
    names = [str(getattr(r, "target", "")).rstrip(".").lower() for r in ans.rdata]
    names.sort(key=lambda n: not (n == prefer or n.endswith("." + prefer)))
    found = []
    for n in names[:MAX_NAMES]:
        rdtype = "A" if state.ip.version == 4 else "AAAA"
        addrs = await state.lookups.query(n, rdtype)
        if any(_in_net(state.ip, str(getattr(r, "address", "")), None, None)
               for r in addrs.rdata):
            found.append(n)
    return found


def _reverse_name(ip: Address) -> str:
    return ip.reverse_pointer


async def _explain(state: _State, domain: str, exp: str | None) -> str:
    """RFC 7208 §6.2: the exp= TXT, macro-expanded; any problem -> our default text."""
    default = await _expand(state, DEFAULT_EXPLANATION, domain, explain=True)
    if not exp:
        return default
    try:
        target = await _expand_domain(state, exp, domain)
        ans = await state.lookups.query(target, "TXT")
        texts = ans.texts()
        if len(texts) != 1:
            return default
        text = await _expand(state, texts[0], domain, explain=True)
        return text if text.isascii() and text.isprintable() else default
    except (_Perm, _Temp):
        return default


MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|(%)|(_)|(-))")


def _check_macro_syntax(text: str) -> None:
    rest = MACRO.sub("", text)
    if "%" in rest:
        raise _Perm(f"bad macro in {text!r} (RFC 7208 §7.1)")


async def _expand_domain(state: _State, spec: str, domain: str) -> str:
    out = (await _expand(state, spec, domain)).rstrip(".")
    # RFC 7208 §7.3: longer than 253 octets -> drop labels from the left.
    while len(out) > 253 and "." in out:
        out = out.split(".", 1)[1]
    return out.lower()


async def _expand(state: _State, text: str, domain: str, explain: bool = False) -> str:
    _check_macro_syntax(text)
    out: list[str] = []
    pos = 0
    for m in MACRO.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        if m.group(5):
            out.append("%")
        elif m.group(6):
            out.append(" ")
        elif m.group(7):
            out.append("%20")
        else:
            letter, digits, reverse, delims = m.groups()[:4]
            value = await _macro_value(state, letter.lower(), domain, explain)
            parts = re.split("[" + re.escape(delims or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                n = int(digits)
                if n == 0:
                    raise _Perm("macro with 0 labels (RFC 7208 §7.3)")
                parts = parts[-n:]
            value = ".".join(parts)
            if letter.isupper():
                value = urllib.parse.quote(value, safe="")
            out.append(value)
    out.append(text[pos:])
    return "".join(out)


async def _macro_value(state: _State, letter: str, domain: str, explain: bool) -> str:
    local, _, sender_domain = state.sender.rpartition("@")
    ip = state.ip
    if letter == "s":
        return state.sender
    if letter == "l":
        return local or "postmaster"
    if letter == "o":
        return sender_domain
    if letter == "d":
        return domain
    if letter == "i":
        if ip.version == 4:
            return str(ip)
        return ".".join(ip.exploded.replace(":", ""))
    if letter == "p":
        names = await _validated_names(state, domain)
        return names[0] if names else "unknown"
    if letter == "v":
        return "in-addr" if ip.version == 4 else "ip6"
    if letter == "h":
        return state.helo
    if letter in "crt":
        if not explain:
            raise _Perm(f"macro %{{{letter}}} outside exp= (RFC 7208 §7.2)")
        if letter == "c":
            return str(ip)
        if letter == "r":
            return state.receiver
        return str(int(state.now))
    raise _Perm(f"unknown macro letter {letter!r}")  # pragma: no cover
